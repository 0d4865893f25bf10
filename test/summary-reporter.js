// Prints "N passed, N failed, N skipped" for jest's run and, when
// PAGEDLLM_TEST_SUMMARY names a file, writes the counts there as JSON for
// scripts/test.js to add to the native runner's.
const fs = require('node:fs');

class SummaryReporter {
  onRunComplete(_contexts, results) {
    const counts = {
      passed: results.numPassedTests,
      failed: results.numFailedTests + results.numRuntimeErrorTestSuites,
      skipped: results.numPendingTests + results.numTodoTests,
    };
    process.stdout.write(`jest: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped\n`);
    if (process.env.PAGEDLLM_TEST_SUMMARY) fs.writeFileSync(process.env.PAGEDLLM_TEST_SUMMARY, JSON.stringify(counts));
  }
}

module.exports = SummaryReporter;
