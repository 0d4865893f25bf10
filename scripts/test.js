#!/usr/bin/env node
// npm test (the README's test command; `npm run build` runs first as pretest).
//
// Runs the native test runner (C++ and CUDA tests; CUDA tests skip with the
// reason where no GPU exists) and jest, and ends with one line adding them up:
// "N passed, N failed, N skipped".
//
// With PAGEDLLM_TEST_VARIANTS=1 (set by .ci/run) it also builds and tests the
// other two builds against the same suites: the CMake build with
// PAGEDLLM_CUDA=OFF, and the node-gyp build (binding.gyp, built in a temporary
// copy so it does not clobber build/).
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const totals = { passed: 0, failed: 0, skipped: 0 };
const summaryLine = /^(\d+) passed, (\d+) failed, (\d+) skipped$/m;

function add(label, counts) {
  totals.passed += counts.passed;
  totals.failed += counts.failed;
  totals.skipped += counts.skipped;
  console.log(`[${label}] ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
}

function fail(label, why) {
  console.log(`[${label}] FAILED: ${why}`);
  add(label, { passed: 0, failed: 1, skipped: 0 });
}

function run(command, args, options = {}) {
  return spawnSync(command, args, { cwd: root, encoding: 'utf8', stdio: 'inherit', ...options });
}

function nativeTests(label, executable, env = {}) {
  if (!fs.existsSync(executable)) return fail(label, `${path.relative(root, executable)} was not built`);
  const result = run(executable, [], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  process.stdout.write(result.stdout ?? '');
  const match = summaryLine.exec(result.stdout ?? '');
  if (!match) return fail(label, `no summary line (exit ${result.status}, signal ${result.signal})`);
  add(label, { passed: +match[1], failed: +match[2], skipped: +match[3] });
  if (result.status !== 0 && +match[2] === 0) fail(label, `exit ${result.status}`);
}

function jestTests(label, env = {}, extraArgs = []) {
  const summary = path.join(os.tmpdir(), `pagedllm-jest-${process.pid}-${label.replace(/\W+/g, '_')}.json`);
  fs.rmSync(summary, { force: true });
  const result = run(process.execPath, [path.join(root, 'node_modules', 'jest', 'bin', 'jest.js'), ...extraArgs], {
    env: { ...process.env, ...env, PAGEDLLM_TEST_SUMMARY: summary },
  });
  if (!fs.existsSync(summary)) return fail(label, `jest wrote no summary (exit ${result.status})`);
  const counts = JSON.parse(fs.readFileSync(summary, 'utf8'));
  fs.rmSync(summary, { force: true });
  add(label, counts);
  if (result.status !== 0 && counts.failed === 0) fail(label, `jest exit ${result.status}`);
}

function buildStep(label, command, args, options) {
  console.log(`[${label}] ${command} ${args.join(' ')}`);
  const result = run(command, args, options);
  if (result.status !== 0) {
    fail(label, `build failed (exit ${result.status})`);
    return false;
  }
  return true;
}

// Whether the CPU has the avx512 path's features (cpu/cpu_info.cpp; Linux's flags, else no).
function cpuHasAvx512() {
  let info = '';
  try {
    info = fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return false;
  }
  const flags = new Set((/^flags\s*:(.*)$/m.exec(info)?.[1] ?? '').trim().split(/\s+/));
  return ['avx2', 'fma', 'f16c', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni'].every((f) => flags.has(f));
}

// The main build: `npm run build` (cmake-js; CUDA compiled when nvcc exists).
nativeTests('native', path.join(root, 'build', 'pagedllm_tests'));
// Every CPU op again on the portable kernels (the run above takes the best path this CPU has), and
// on an AVX-512 CPU on the avx2 kernels too (the kernel grids test every path either way; this also
// runs the decoder and the other ops that take the chosen path on avx2).
nativeTests('native, PAGEDLLM_SIMD=portable', path.join(root, 'build', 'pagedllm_tests'), { PAGEDLLM_SIMD: 'portable' });
if (cpuHasAvx512()) nativeTests('native, PAGEDLLM_SIMD=avx2', path.join(root, 'build', 'pagedllm_tests'), { PAGEDLLM_SIMD: 'avx2' });
jestTests('jest');

if (process.env.PAGEDLLM_TEST_VARIANTS === '1') {
  const variantJestArgs = ['--testPathIgnorePatterns', 'package\\.test\\.ts'];
  // CMake, CPU only.
  const cmakeJs = path.join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
  if (buildStep('cpu-only build', process.execPath, [cmakeJs, 'compile', '--log-level', 'warn', '--out', 'build-cpu', '--CDPAGEDLLM_CUDA=OFF'])) {
    nativeTests('native, PAGEDLLM_CUDA=OFF', path.join(root, 'build-cpu', 'pagedllm_tests'));
    jestTests('jest, PAGEDLLM_CUDA=OFF', { PAGEDLLM_ADDON: path.join(root, 'build-cpu', 'Release', 'pagedllm.node') }, variantJestArgs);
  }
  // node-gyp, CPU only, in a scratch copy of the sources.
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-gyp-'));
  for (const entry of ['binding.gyp', 'package.json', 'cpu', 'addon', 'include']) {
    fs.cpSync(path.join(root, entry), path.join(scratch, entry), { recursive: true });
  }
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(scratch, 'node_modules'));
  const nodeDir = process.env.npm_config_nodedir || path.resolve(process.execPath, '..', '..');
  const nodeGyp = path.join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (buildStep('node-gyp build', process.execPath, [nodeGyp, 'rebuild', `--nodedir=${nodeDir}`, '--loglevel=warn'], { cwd: scratch })) {
    jestTests('jest, node-gyp build', { PAGEDLLM_ADDON: path.join(scratch, 'build', 'Release', 'pagedllm.node') }, variantJestArgs);
  }
  fs.rmSync(scratch, { recursive: true, force: true });
}

console.log(`${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
process.exitCode = totals.failed === 0 ? 0 : 1;
