/**
 * The CPU backend's end-to-end speed (issue: CPU backend at memory-bandwidth speed) on the
 * issue's model shape: a random Llama (hidden 1024, 8 layers, 16 heads / 4 KV heads,
 * intermediate 2816, vocab 32000) with float16 weights, and the same model quantized to AWQ int4
 * (group 128; embeddings and lm_head stay float16, as llama.cpp's Q4_0 comparison keeps them).
 * One request: a 128-token prompt, then 64 decoded tokens (greedy), on PAGEDLLM_THREADS threads
 * (default 2).
 *
 * Decode tokens/s is wall-clock, from the first token to the last as the caller receives them
 * (scheduling, sampling and the event loop included), best of --reps runs; the fraction beside it
 * is weight bytes per token × tokens/s ÷ the read bandwidth measured just before that run (every
 * weight but the embedding table, which is only gathered, is read once per decoded token; the
 * bandwidth is measured before each run because on a shared VM it moves by a fifth or more within
 * minutes, so one figure for the whole run would flatter some runs and wrong others). Prefill is
 * the time to the first token (the 128-token forward, its sampling and the Engine around it).
 *
 *   npm run bench:cpu-decode
 *   options: --reps 3 --prompt 128 --gen 64 --variants f16,int4 --out <file>
 *            --models <dir>: keep the random models there and reuse them in later runs
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

process.env.PAGEDLLM_THREADS ??= '2';  // before the addon loads (it is loaded on first use)

import { devices, Engine, makeTestModel } from '../dist';
import { arg, gitCommit, readBandwidth, resultsFile } from './common';

const SHAPE = { hidden: 1024, layers: 8, heads: 16, kvHeads: 4, intermediate: 2816, vocab: 32000 };
// llama.cpp through node-llama-cpp 3.22.1, 2 threads, this model shape on this machine kind (the
// issue's figures, not measured here: node-llama-cpp is not a dependency).
const LLAMA_CPP = { f16: { decodeTokensPerSecond: 63, prefillMs: 165 }, int4: { decodeTokensPerSecond: 67, prefillMs: 165, format: 'Q4_0' } };

interface Run {
  prefillMs: number;
  decodeTokensPerSecond: number;
  stepMs: number;
  /** The read bandwidth measured just before this run (bytes/s): this VM's moves by 20–30 % within minutes. */
  bandwidth: number;
}

async function measure(dir: string, promptLen: number, genLen: number, reps: number, bandwidth: () => number): Promise<{ weightBytesPerToken: number; weightsBytes: number; runs: Run[] }> {
  // `started`: when the step began, so that a step of the warm-up still finishing when a run starts
  // (its end delayed by the bandwidth measurement, which blocks the event loop) is not counted.
  const steps: Array<{ durationMs: number; prefillTokens: number; started: number }> = [];
  const engine = await Engine.create({
    model: dir, device: 'cpu', logger: null, maxNumSeqs: 1, maxModelLen: promptLen + genLen + 16,
    maxNumBatchedTokens: Math.max(promptLen, 256), prefixCaching: false, onStep: (s) => steps.push({ durationMs: s.durationMs, prefillTokens: s.prefillTokens, started: performance.now() - s.durationMs }),
  });
  try {
    const c = engine.model.config;
    // The embedding table is stored as float16 in both variants (2 bytes per entry).
    const embedBytes = c.tieWordEmbeddings ? 0 : c.vocabSize * c.hiddenSize * 2;
    const weightsBytes = engine.plan.weightsBytes;
    const weightBytesPerToken = weightsBytes - embedBytes;
    const prompt = (seed: number): number[] => Array.from({ length: promptLen }, (_, j) => 3 + ((seed * 7919 + j * 104729) % (c.vocabSize - 3)));
    await engine.generate({ promptTokenIds: prompt(999) }, { maxTokens: 4, ignoreEos: true }).result();  // warm-up
    const runs: Run[] = [];
    for (let r = 0; r < reps; r++) {
      const bytesPerSecond = bandwidth();
      steps.length = 0;
      const times: number[] = [];
      const t0 = performance.now();
      for await (const chunk of engine.generate({ promptTokenIds: prompt(r) }, { maxTokens: genLen, ignoreEos: true, temperature: 0 })) {
        for (let i = 0; i < chunk.tokenIds.length; i++) times.push(performance.now());
      }
      if (times.length !== genLen) throw new Error(`expected ${genLen} tokens, got ${times.length}`);
      const decodeSteps = steps.filter((s) => s.prefillTokens === 0 && s.started >= t0);
      runs.push({
        prefillMs: times[0]! - t0,
        decodeTokensPerSecond: ((genLen - 1) * 1000) / (times[genLen - 1]! - times[0]!),
        stepMs: decodeSteps.reduce((a, s) => a + s.durationMs, 0) / decodeSteps.length,
        bandwidth: bytesPerSecond,
      });
    }
    return { weightBytesPerToken, weightsBytes, runs };
  } finally {
    engine.dispose();
  }
}

async function main(): Promise<void> {
  const reps = Number(arg('reps', '3'));
  const promptLen = Number(arg('prompt', '128'));
  const genLen = Number(arg('gen', '64'));
  const variants = arg('variants', 'f16,int4').split(',') as Array<'f16' | 'int4'>;
  const info = devices();
  const threads = Number(process.env.PAGEDLLM_THREADS);
  console.log(`cpu: ${info.cpu.modelName || info.cpu.arch}, ${threads} threads, SIMD path ${info.cpu.simdPath} (features: ${info.cpu.simd.join(' ')})`);
  const keep = arg('models', '');
  const tmp = keep || fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-cpu-decode-'));
  const rows = [];
  let what = '';
  const bandwidths: number[] = [];
  const bandwidth = (): number => {
    const b = readBandwidth('cpu');
    what = b.what;
    bandwidths.push(b.bytesPerSecond);
    return b.bytesPerSecond;
  };
  try {
    for (const variant of variants) {
      const dir = path.join(tmp, variant);
      const t = performance.now();
      if (!fs.existsSync(path.join(dir, 'config.json'))) await makeTestModel({ out: dir, ...SHAPE, dtype: 'float16', maxPositionEmbeddings: 1024, initStd: 0.02, awq: variant === 'int4' ? { groupSize: 128, alphaGrid: 1 } : undefined });
      else console.log(`${variant}: reusing ${dir}`);
      console.log(`${variant}: model ready in ${((performance.now() - t) / 1000).toFixed(1)} s`);
      // Each run's fraction is of the bandwidth measured just before it.
      const m = await measure(dir, promptLen, genLen, reps, bandwidth);
      const fraction = (r: Run): number => (m.weightBytesPerToken * r.decodeTokensPerSecond) / r.bandwidth;
      console.log(`${variant}: ${m.runs.map((r) => `decode ${r.decodeTokensPerSecond.toFixed(1)} tok/s (${(100 * fraction(r)).toFixed(1)} % of ${(r.bandwidth / 1e9).toFixed(1)} GB/s), prefill ${r.prefillMs.toFixed(0)} ms`).join('; ')}`);
      const best = m.runs.reduce((a, b) => (b.decodeTokensPerSecond > a.decodeTokensPerSecond ? b : a));
      const median = [...m.runs].sort((a, b) => a.decodeTokensPerSecond - b.decodeTokensPerSecond)[Math.floor(m.runs.length / 2)]!;
      const medianFraction = m.runs.map(fraction).sort((a, b) => a - b)[Math.floor(m.runs.length / 2)]!;
      const bestPrefill = Math.min(...m.runs.map((r) => r.prefillMs));
      const ref = LLAMA_CPP[variant];
      rows.push({
        variant, weightsBytes: m.weightsBytes, weightBytesPerToken: m.weightBytesPerToken,
        decodeTokensPerSecond: Number(best.decodeTokensPerSecond.toFixed(1)), decodeBandwidthFraction: Number(fraction(best).toFixed(3)),
        decodeTokensPerSecondMedian: Number(median.decodeTokensPerSecond.toFixed(1)), decodeBandwidthFractionMedian: Number(medianFraction.toFixed(3)),
        decodeStepMs: Number(best.stepMs.toFixed(2)),
        prefillMs: Number(bestPrefill.toFixed(1)), prefillTokensPerSecond: Number(((promptLen * 1000) / bestPrefill).toFixed(1)),
        llamaCpp: ref, runs: m.runs.map((r) => ({
          prefillMs: Number(r.prefillMs.toFixed(1)), decodeTokensPerSecond: Number(r.decodeTokensPerSecond.toFixed(1)), stepMs: Number(r.stepMs.toFixed(2)),
          bandwidthBytesPerSecond: Math.round(r.bandwidth), decodeBandwidthFraction: Number(fraction(r).toFixed(3)),
        })),
      });
    }
  } finally {
    if (!keep) fs.rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`read bandwidth: ${what}, before each run: ${bandwidths.map((b) => (b / 1e9).toFixed(1)).join(', ')} GB/s`);
  console.table(rows.map((r) => ({
    weights: r.variant, 'MB/token': (r.weightBytesPerToken / 1e6).toFixed(1),
    'decode tok/s (best)': r.decodeTokensPerSecond, 'of bandwidth': `${(100 * r.decodeBandwidthFraction).toFixed(1)} %`,
    'decode tok/s (median)': r.decodeTokensPerSecondMedian, 'of bandwidth (median)': `${(100 * r.decodeBandwidthFractionMedian).toFixed(1)} %`, 'step ms': r.decodeStepMs,
    'prefill ms': r.prefillMs, 'prefill tok/s': r.prefillTokensPerSecond,
    'llama.cpp decode tok/s': r.llamaCpp.decodeTokensPerSecond, 'llama.cpp prefill ms': r.llamaCpp.prefillMs,
  })));
  const date = new Date().toISOString().slice(0, 10);
  const out = arg('out', resultsFile('cpu-decode', info.cpu.modelName || info.cpu.arch, date));
  fs.writeFileSync(out, `${JSON.stringify({
    benchmark: 'cpu-decode', device: info.cpu.modelName || info.cpu.arch, threads, simdPath: info.cpu.simdPath, commit: gitCommit(), date,
    command: `PAGEDLLM_THREADS=${threads} node build-bench/cpu-decode.bench.js ${process.argv.slice(2).join(' ')}`.trim(),
    model: { ...SHAPE, dtype: 'float16', awq: 'int4, group 128, zero points (GEMM layout); embed_tokens and lm_head float16' },
    promptTokens: promptLen, generatedTokens: genLen, reps,
    bandwidth: { what: `${what}, measured before each run; each run's fraction is of its own`, bytesPerSecond: bandwidths.map(Math.round) }, rows,
    note: 'llamaCpp figures are the issue\'s reference (node-llama-cpp 3.22.1, 2 threads, this shape), not measured in this run',
  }, null, 2)}\n`);
  console.log(`results: ${out}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
