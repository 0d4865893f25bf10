// jest + ts-jest over test/**/*.test.ts. One worker: native memory and (on a
// GPU machine) one CUDA context per process. The summary reporter prints the
// plain "N passed, N failed, N skipped" line that scripts/test.js adds up.
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json' }] },
  maxWorkers: 1,
  testTimeout: 120000,
  reporters: ['default', '<rootDir>/test/summary-reporter.js'],
};
