#!/usr/bin/env node
// npm run prebuild: builds the release binary (CPU + CUDA, release CUDA
// architectures unless PAGEDLLM_CUDA_ARCHS narrows them) and places it in the
// prebuildify layout, prebuilds/<platform>-<arch>/pagedllm.node, with a
// pagedllm.json beside it saying what is inside. node-gyp-build loads it at run
// time: installing the package needs no script, compiler or network.
//
//   node scripts/prebuild.js                  # build with cmake-js through prebuildify
//   node scripts/prebuild.js --from FILE.node # package an existing build (tests, CI)
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const outDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const target = path.join(outDir, 'pagedllm.node');

function buildWithPrebuildify() {
  const result = spawnSync(
    path.join(root, 'node_modules', '.bin', 'prebuildify'),
    ['--napi', '--strip', '-t', process.versions.node, '--node-gyp', path.join(root, 'scripts', 'prebuild-cmake.sh')],
    { cwd: root, stdio: 'inherit' },
  );
  if (result.status !== 0) throw new Error(`prebuildify failed (exit ${result.status})`);
  if (!fs.existsSync(target)) throw new Error(`prebuildify did not produce ${target}`);
}

function packageExisting(file) {
  fs.mkdirSync(outDir, { recursive: true });
  fs.copyFileSync(file, target);
  execFileSync('strip', ['--strip-all', target]);
}

function writeMetadata() {
  const binding = require(target);
  const build = binding.buildInfo();
  const cuda = binding.cudaInfo();
  const report = process.report.getReport();
  const meta = {
    name: 'pagedllm',
    version: build.version,
    napiVersion: 8,
    platform: process.platform,
    arch: process.arch,
    // The glibc this binary was linked against: the oldest it can load on.
    glibc: report.header.glibcVersionRuntime ?? null,
    cuda: build.cuda,
    cudaArchitectures: build.cuda ? cuda.archs : null,
    cudaRuntime: build.cuda ? `${Math.floor(cuda.runtimeVersion / 1000)}.${(cuda.runtimeVersion % 1000) / 10}` : null,
    bytes: fs.statSync(target).size,
  };
  fs.writeFileSync(path.join(outDir, 'pagedllm.json'), JSON.stringify(meta, null, 2) + '\n');
  return meta;
}

const fromIndex = process.argv.indexOf('--from');
if (fromIndex >= 0) packageExisting(path.resolve(process.argv[fromIndex + 1]));
else buildWithPrebuildify();
const meta = writeMetadata();
console.log(`prebuild: ${path.relative(root, target)} (${(meta.bytes / 2 ** 20).toFixed(1)} MiB, CUDA ${meta.cuda ? meta.cudaArchitectures : 'off'})`);
