/**
 * Paged attention speed (issue: paged attention kernels):
 *
 *   (a) the kernels: drives the native benchmark (benchmarks/native/attention_bench.cpp,
 *       built with the addon as build/pagedllm_bench_attention) on the CPU and, when a
 *       GPU is present, on CUDA. Each case reports the bytes the kernel must read over
 *       its median time, as a fraction of the memory bandwidth measured in the same
 *       run (CPU: a threaded read of 1 GiB; CUDA: a device-to-device copy, bytes read +
 *       written, L2 flushed before every repetition). Prefill cases add TFLOP/s.
 *   (b) the TypeScript path: `pagedAttention()` for the CPU decode target (batch 8 ×
 *       2048) through KvCache and host metadata, timed with tinybench, beside the
 *       native time of the same case: the cost of validation, metadata upload and N-API.
 *
 *   npm run bench:attention                # prints tables, writes benchmarks/results/attention-<device>-<date>.json
 *   PAGEDLLM_BENCH_BIN=path/to/pagedllm_bench_attention npm run bench:attention
 *
 * On a GPU machine without Node, run the native benchmark alone:
 *   cmake -S . -B build-gpu -DPAGEDLLM_CUDA_ARCHS=90 && cmake --build build-gpu -j --target pagedllm_bench_attention
 *   build-gpu/pagedllm_bench_attention --device cuda
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { devices, KvCache, pagedAttention, Tensor } from '../dist';
import { gitCommit, nativeBenchBinary } from './common';

interface NativeCase {
  name: string;
  numSeqs: number;
  seqLen: number;
  qLen: number;
  numHeads: number;
  numKvHeads: number;
  headSize: number;
  blockSize: number;
  dtype: string;
  kvDtype: string;
  contiguous: boolean;
  bytes: number;
  medianUs: number;
  minUs: number;
  bytesPerSecond: number;
  fractionOfBandwidth: number;
  tflops: number;
}

interface NativeRun {
  device: string;
  threads: number;
  bandwidth: { what: string; bytesPerSecond: number };
  cases: NativeCase[];
}



function runNative(device: string): NativeRun {
  const out = execFileSync(nativeBenchBinary(), ['--device', device], { encoding: 'utf8', maxBuffer: 16 << 20, stdio: ['ignore', 'pipe', 'inherit'] });
  return JSON.parse(out) as NativeRun;
}

function table(run: NativeRun): void {
  console.log(`\n${run.device}${run.threads ? ` (${run.threads} threads)` : ''}: ${run.bandwidth.what} = ${(run.bandwidth.bytesPerSecond / 1e9).toFixed(1)} GB/s`);
  console.table(run.cases.map((c) => ({
    case: c.name,
    shape: `${c.numSeqs}×${c.seqLen}${c.qLen > 1 ? ` (${c.qLen} new)` : ''}, ${c.numHeads}/${c.numKvHeads} heads`,
    'q / kv': `${c.dtype} / ${c.kvDtype}`,
    'median µs': Number(c.medianUs.toFixed(1)),
    'GB/s': Number((c.bytesPerSecond / 1e9).toFixed(1)),
    'of bandwidth': `${(100 * c.fractionOfBandwidth).toFixed(1)} %`,
    ...(c.qLen > 1 ? { 'TFLOP/s': Number(c.tflops.toFixed(3)) } : {}),
  })));
}

/** The CPU decode target through the TypeScript API (random cache, host metadata). */
async function typescriptPath(): Promise<{ medianUs: number; meanUs: number; samples: number }> {
  const { Bench } = await import('tinybench');
  const numSeqs = 8, seqLen = 2048, numHeads = 32, headSize = 128, blockSize = 16;
  const blocksPerSeq = seqLen / blockSize;
  const cache = new KvCache({ numLayers: 1, numBlocks: numSeqs * blocksPerSeq, numKvHeads: numHeads, blockSize, headSize, kvDtype: 'float16' });
  // Random K/V through writeKv (every slot), in chunks.
  const chunk = 4096;
  for (let start = 0; start < numSeqs * seqLen; start += chunk) {
    const kv = Tensor.fromArray(Float32Array.from({ length: chunk * numHeads * headSize }, () => Math.random() * 4 - 2), [chunk, numHeads, headSize]);
    const slots = Tensor.fromArray(Int32Array.from({ length: chunk }, (_, i) => start + i));
    cache.writeKv(0, kv, kv, slots);
    kv.dispose();
    slots.dispose();
  }
  const order = Array.from({ length: numSeqs * blocksPerSeq }, (_, i) => i).sort(() => Math.random() - 0.5);
  const blockTables = Int32Array.from(order);
  const seqLens = new Int32Array(numSeqs).fill(seqLen);
  const query = Tensor.fromArray(Float32Array.from({ length: numSeqs * numHeads * headSize }, () => Math.random() - 0.5), [numSeqs, numHeads, headSize]);
  const bench = new Bench({ iterations: 10, warmupIterations: 2 });
  bench.add('pagedAttention (TypeScript, CPU, 8 × 2048)', async () => {
    const out = pagedAttention(query, cache, 0, { blockTables, seqLens });
    await cache.stream.synchronize();
    out.dispose();
  });
  await bench.run();
  const result = bench.tasks[0]!.result;
  cache.dispose();
  query.dispose();
  if (result.state !== 'completed') throw new Error(`TypeScript path: ${result.state}`);
  return { medianUs: result.latency.p50 * 1e3, meanUs: result.latency.mean * 1e3, samples: result.latency.samplesCount };
}

async function main(): Promise<void> {
  const report = devices();
  const runs: NativeRun[] = [runNative('cpu')];
  if (report.cuda.available) runs.push(runNative(report.cuda.devices.find((d) => d.supported)!.device));
  else console.log(`GPU cases skipped: ${report.cuda.reason}`);
  for (const run of runs) table(run);

  const ts = await typescriptPath();
  const native = runs[0]!.cases.find((c) => c.name === 'cpu_decode_mha_b8_l2048')!;
  console.log(`\n(b) TypeScript path, CPU decode 8 × 2048: median ${(ts.medianUs / 1e3).toFixed(2)} ms vs native kernel ${(native.medianUs / 1e3).toFixed(2)} ms`);

  const device = runs[runs.length - 1]!.device || report.cpu.modelName || report.cpu.arch;
  const date = new Date().toISOString();
  const out = {
    benchmark: 'attention',
    device,
    cpu: report.cpu.modelName,
    cuda: report.cuda.available ? { driver: report.cuda.driverVersion, runtime: report.cuda.runtimeVersion } : { note: report.cuda.reason },
    commit: gitCommit(),
    date,
    command: 'npm run bench:attention',
    node: process.version,
    host: os.hostname(),
    native: runs,
    typescriptPath: { case: 'cpu_decode_mha_b8_l2048', ...ts, nativeMedianUs: native.medianUs },
  };
  const dir = path.resolve(__dirname, '..', 'benchmarks', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `attention-${device.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '')}-${date.slice(0, 10)}.json`);
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
