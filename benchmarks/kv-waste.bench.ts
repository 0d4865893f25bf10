/**
 * KV-cache memory waste and BlockManager speed (issue: KV-cache block manager):
 *
 *   (a) waste: one mixed serving workload — prompt and output lengths from
 *       wide log-normal distributions, shared system prompts, n > 1 samples
 *       per request — run by a continuous-batching loop over
 *       - the paged BlockManager (block sizes 8, 16, 32; prefix caching on;
 *         n > 1 via fork; preemption by recompute when a decode step does not fit), and
 *       - contiguous per-sequence allocation, reserving the maximum model length
 *         (the pre-vLLM default), and prompt + max_tokens (Orca's scheme) beside it,
 *       under the same KV budget. Reported: KV bytes reserved vs bytes holding
 *       a token, time-averaged over the run's steps (waste = 1 − holding/reserved),
 *       the batch size each scheme sustains, and the steps it needs.
 *   (b) speed: one decode step for 256 running sequences — 256 ×
 *       `allocateSlots(seq, 1, { tokenIds })`, staggered lengths so that about
 *       one sequence in blockSize fills (and hashes) a block per step — with and
 *       without prefix caching; and the admission of a 2048-token prompt
 *       (128 block hashes and look-ups). Timed with tinybench.
 *
 *   npm run bench:kv-waste            # prints tables, writes benchmarks/results/kv-waste-<cpu>-<date>.json
 *
 * Bytes: a Llama-2-7B-shaped fp16 KV, 2 (K, V) × 32 layers × 32 kv heads ×
 * 128 head size × 2 bytes = 512 KiB per token; the budget is 40 GiB (80 Ki tokens).
 * Waste ratios do not depend on these; the bytes are printed for scale.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { BlockManager, devices, type SequenceId } from '../dist';
import { gitCommit } from './common';

const BYTES_PER_TOKEN = 2 * 32 * 32 * 128 * 2;
const KV_BUDGET_BYTES = 40 * 2 ** 30;
const BUDGET_TOKENS = KV_BUDGET_BYTES / BYTES_PER_TOKEN;
const MAX_MODEL_LEN = 4096;
const MAX_NUM_SEQS = 256;
const NUM_REQUESTS = 1500;
const SAMPLE_EVERY_STEPS = 4;

// ---- the workload ----------------------------------------------------------------------------

/** mulberry32: a small deterministic PRNG. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Request {
  prompt: number[];
  /** The most tokens a sample may generate (the request's max_tokens). */
  maxTokens: number;
  /** Tokens each sample generates before it stops (≤ maxTokens); n = outputs.length. */
  outputs: number[];
}

interface WorkloadSummary {
  requests: number;
  samples: number;
  promptTokens: { median: number; p90: number; max: number };
  outputTokens: { median: number; p90: number; max: number };
  withSharedPrefix: number;
  systemPromptTokens: number[];
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/**
 * Prompts: log-normal lengths (median 256, σ = 1.1, 4 … 3072 tokens); half of
 * them start with one of 8 system prompts (32 … 1024 tokens, Zipf-like
 * popularity). Outputs: log-normal (median 128, σ = 1.2), cut at max_tokens ∈
 * {256, 512, 1024, 2048}. n = 1 (75%), 2 (15%) or 4 (10%).
 */
function makeWorkload(seed: number): { requests: Request[]; summary: WorkloadSummary } {
  const random = rng(seed);
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  const logNormal = (median: number, sigma: number, lo: number, hi: number): number =>
    Math.max(lo, Math.min(hi, Math.round(median * Math.exp(sigma * normal()))));
  let nextToken = 1;
  const freshTokens = (count: number): number[] => Array.from({ length: count }, () => (nextToken = (nextToken * 48271) % 2147483647) % 32000);
  const systemPrompts = Array.from({ length: 8 }, () => freshTokens(Math.round(32 * 32 ** random())));
  const requests: Request[] = [];
  let withSharedPrefix = 0;
  for (let r = 0; r < NUM_REQUESTS; r++) {
    const maxTokens = [256, 512, 1024, 2048][Math.floor(random() * 4)]!;
    const u = random();
    const n = u < 0.75 ? 1 : u < 0.9 ? 2 : 4;
    const outputs = Array.from({ length: n }, () => Math.min(maxTokens, logNormal(128, 1.2, 1, 2048)));
    let length = logNormal(256, 1.1, 4, Math.min(3072, MAX_MODEL_LEN - maxTokens));
    let prompt: number[] = [];
    if (random() < 0.5) {
      const system = systemPrompts[Math.min(7, Math.floor(-Math.log2(1 - random() * 0.996)))]!; // 0 most popular
      prompt = system.slice(0, Math.min(system.length, length - 1));
      length = Math.max(length, prompt.length + 1);
      withSharedPrefix++;
    }
    prompt.push(...freshTokens(length - prompt.length));
    requests.push({ prompt, maxTokens, outputs });
  }
  const prompts = requests.map((r) => r.prompt.length).sort((a, b) => a - b);
  const outputs = requests.flatMap((r) => r.outputs).sort((a, b) => a - b);
  return {
    requests,
    summary: {
      requests: requests.length,
      samples: outputs.length,
      promptTokens: { median: quantile(prompts, 0.5), p90: quantile(prompts, 0.9), max: prompts[prompts.length - 1]! },
      outputTokens: { median: quantile(outputs, 0.5), p90: quantile(outputs, 0.9), max: outputs[outputs.length - 1]! },
      withSharedPrefix,
      systemPromptTokens: systemPrompts.map((p) => p.length),
    },
  };
}

// ---- the serving loop ------------------------------------------------------------------------

/** One sample of a request while it runs. */
interface Sample {
  seq: SequenceId;
  /** Tokens generated so far (kept across preemption: recompute re-admits prompt + generated). */
  generated: number[];
  target: number;
}

interface RunningRequest {
  request: Request;
  samples: Sample[];
}

/** What the serving loop asks of a KV allocator. */
interface KvScheme {
  readonly name: string;
  /** Admits all unfinished samples of a request (fresh, or resumed after preemption), or returns false. */
  admit(running: RunningRequest): boolean;
  /** Room for one more token of a sample; false when it does not fit. */
  append(sample: Sample, token: number): boolean;
  free(sample: Sample): void;
  /** Token slots reserved, and slots holding a token, right now. */
  measure(running: readonly RunningRequest[]): { reservedSlots: number; holdingSlots: number };
}

class PagedScheme implements KvScheme {
  readonly name: string;
  readonly blocks: BlockManager;
  private readonly blockSize: number;

  constructor(blockSize: number) {
    this.name = `paged (BlockManager, block size ${blockSize})`;
    this.blockSize = blockSize;
    this.blocks = new BlockManager({ numBlocks: BUDGET_TOKENS / blockSize + 1, blockSize });
  }

  admit(running: RunningRequest): boolean {
    const { request, samples } = running;
    const fresh = samples.every((s) => s.generated.length === 0);
    if (fresh) {
      // n > 1: prefill the prompt once, fork the other samples (they share every block).
      const first = samples[0]!;
      if (this.blocks.allocateSlots(first.seq, request.prompt.length, { tokenIds: request.prompt }) === null) return false;
      for (const s of samples.slice(1)) this.blocks.fork(first.seq, s.seq);
      return true;
    }
    // Resumed after preemption: each sample recomputes prompt + its output, sharing cached blocks.
    const admitted: Sample[] = [];
    for (const s of samples) {
      const tokens = [...request.prompt, ...s.generated];
      if (this.blocks.allocateSlots(s.seq, tokens.length, { tokenIds: tokens }) === null) {
        for (const a of admitted) this.blocks.free(a.seq);
        return false;
      }
      admitted.push(s);
    }
    return true;
  }

  append(sample: Sample, token: number): boolean {
    return this.blocks.allocateSlots(sample.seq, 1, { tokenIds: [token] }) !== null;
  }

  free(sample: Sample): void {
    this.blocks.free(sample.seq);
  }

  /** Scans every table: a block counts once however many sequences share it, filled up to its longest user. */
  measure(running: readonly RunningRequest[]): { reservedSlots: number; holdingSlots: number } {
    const filled = new Map<number, number>();
    for (const { samples } of running) {
      for (const s of samples) {
        const table = this.blocks.blockTable(s.seq);
        const numTokens = this.blocks.numTokens(s.seq);
        for (let i = 0; i < table.length; i++) {
          const inBlock = Math.max(0, Math.min(this.blockSize, numTokens - i * this.blockSize));
          filled.set(table[i]!, Math.max(filled.get(table[i]!) ?? 0, inBlock));
        }
      }
    }
    let holdingSlots = 0;
    for (const count of filled.values()) holdingSlots += count;
    const stats = this.blocks.stats();
    if (stats.usedBlocks !== filled.size) throw new Error(`measure: ${stats.usedBlocks} used blocks, ${filled.size} in tables`);
    return { reservedSlots: stats.usedBlocks * this.blockSize, holdingSlots };
  }
}

/**
 * Contiguous KV per sequence, reserved at admission for the whole sequence:
 * `maxModelLen` tokens, or (Orca) prompt + max_tokens. Samples of one request
 * each reserve their own region (the prompt is copied n times). Fragmentation
 * between regions is ignored (in its favour).
 */
class ContiguousScheme implements KvScheme {
  readonly name: string;
  private freeSlots = BUDGET_TOKENS;
  private readonly reservedBySeq = new Map<SequenceId, number>();

  constructor(private readonly reserve: 'max-model-len' | 'prompt+max_tokens') {
    this.name = reserve === 'max-model-len' ? `contiguous, max length (${MAX_MODEL_LEN})` : 'contiguous, prompt + max_tokens (Orca)';
  }

  admit(running: RunningRequest): boolean {
    const { request, samples } = running;
    const each = this.reserve === 'max-model-len' ? MAX_MODEL_LEN : request.prompt.length + request.maxTokens;
    if (each * samples.length > this.freeSlots) return false;
    for (const s of samples) this.reservedBySeq.set(s.seq, each);
    this.freeSlots -= each * samples.length;
    return true;
  }

  append(): boolean {
    return true; // the region was sized for the whole sequence
  }

  free(sample: Sample): void {
    this.freeSlots += this.reservedBySeq.get(sample.seq)!;
    this.reservedBySeq.delete(sample.seq);
  }

  measure(running: readonly RunningRequest[]): { reservedSlots: number; holdingSlots: number } {
    let holdingSlots = 0;
    for (const { request, samples } of running) for (const s of samples) holdingSlots += request.prompt.length + s.generated.length;
    return { reservedSlots: BUDGET_TOKENS - this.freeSlots, holdingSlots };
  }
}

interface WasteResult {
  scheme: string;
  steps: number;
  preemptions: number;
  meanRunningSequences: number;
  meanReservedBytes: number;
  meanHoldingBytes: number;
  /** 1 − Σ holding / Σ reserved over sampled steps. */
  waste: number;
  prefixCacheHitRate?: number;
}

/**
 * Continuous batching, one token per running sample per step: admit waiting
 * requests in order while the scheme and MAX_NUM_SEQS allow; then decode,
 * preempting the most recently admitted request (recompute) when a token
 * does not fit; samples that reach their length are freed.
 */
function serve(scheme: KvScheme, requests: readonly Request[]): WasteResult {
  const waiting: RunningRequest[] = requests.map((request, r) => ({
    request,
    samples: request.outputs.map((target, i) => ({ seq: `${r}/${i}`, generated: [], target })),
  }));
  const running: RunningRequest[] = [];
  let runningSeqs = 0;
  let steps = 0;
  let preemptions = 0;
  let sumReserved = 0;
  let sumHolding = 0;
  let sumRunning = 0;
  let samples = 0;
  let nextToken = 7;
  while (waiting.length > 0 || running.length > 0) {
    while (waiting.length > 0 && runningSeqs + waiting[0]!.samples.length <= MAX_NUM_SEQS && scheme.admit(waiting[0]!)) {
      const admitted = waiting.shift()!;
      running.push(admitted);
      runningSeqs += admitted.samples.length;
    }
    if (running.length === 0) throw new Error(`${scheme.name}: a request can never be admitted`);
    for (let r = 0; r < running.length; r++) {
      const group = running[r]!;
      for (let i = 0; i < group.samples.length; i++) {
        const sample = group.samples[i]!;
        nextToken = (nextToken * 48271) % 2147483647;
        const token = nextToken % 32000;
        while (!scheme.append(sample, token)) {
          const victim = running.pop()!; // the youngest request: free it, queue it first (recompute)
          for (const s of victim.samples) scheme.free(s);
          runningSeqs -= victim.samples.length;
          waiting.unshift(victim);
          preemptions++;
          if (victim === group) break;
        }
        if (running[r] !== group) break; // this request was preempted
        sample.generated.push(token);
      }
    }
    steps++;
    if (steps % SAMPLE_EVERY_STEPS === 0) {
      const { reservedSlots, holdingSlots } = scheme.measure(running);
      sumReserved += reservedSlots;
      sumHolding += holdingSlots;
      sumRunning += runningSeqs;
      samples++;
    }
    for (let r = running.length - 1; r >= 0; r--) {
      const group = running[r]!;
      const done = group.samples.filter((s) => s.generated.length >= s.target);
      for (const s of done) scheme.free(s);
      group.samples = group.samples.filter((s) => s.generated.length < s.target);
      runningSeqs -= done.length;
      if (group.samples.length === 0) running.splice(r, 1);
    }
  }
  const result: WasteResult = {
    scheme: scheme.name,
    steps,
    preemptions,
    meanRunningSequences: sumRunning / samples,
    meanReservedBytes: (sumReserved / samples) * BYTES_PER_TOKEN,
    meanHoldingBytes: (sumHolding / samples) * BYTES_PER_TOKEN,
    waste: 1 - sumHolding / sumReserved,
  };
  if (scheme instanceof PagedScheme) result.prefixCacheHitRate = scheme.blocks.stats().prefixCache.hitRate;
  return result;
}

// ---- decode-step timing ----------------------------------------------------------------------

const DECODE_SEQS = 256;
const DECODE_MAX_STEPS = 4000;

/** 256 running sequences with prompts of 256 … 767 tokens (staggered block fill). */
function decodeState(enablePrefixCaching: boolean): { blocks: BlockManager; tokenIds: number[] } {
  const blockSize = 16;
  const numBlocks = DECODE_SEQS * Math.ceil((768 + DECODE_MAX_STEPS + 300) / blockSize) + 1;
  const blocks = new BlockManager({ numBlocks, blockSize, enablePrefixCaching });
  const random = rng(11);
  for (let seq = 0; seq < DECODE_SEQS; seq++) {
    const prompt = Array.from({ length: 256 + Math.floor(random() * 512) }, () => Math.floor(random() * 32000));
    if (blocks.allocateSlots(seq, prompt.length, { tokenIds: prompt }) === null) throw new Error('decodeState: does not fit');
  }
  return { blocks, tokenIds: [0] };
}


const GiB = 2 ** 30;
const percent = (x: number): string => `${(100 * x).toFixed(2)}%`;

async function main(): Promise<void> {
  const { Bench } = await import('tinybench');

  // (a) waste
  const { requests, summary } = makeWorkload(2024);
  console.log(
    `\n(a) KV waste: ${summary.requests} requests, ${summary.samples} samples; prompt tokens median ${summary.promptTokens.median}, ` +
      `p90 ${summary.promptTokens.p90}, max ${summary.promptTokens.max}; output tokens median ${summary.outputTokens.median}, ` +
      `p90 ${summary.outputTokens.p90}, max ${summary.outputTokens.max}; ${summary.withSharedPrefix} share a system prompt ` +
      `(${summary.systemPromptTokens.join(', ')} tokens); KV ${BYTES_PER_TOKEN / 1024} KiB/token, budget ${KV_BUDGET_BYTES / GiB} GiB, ` +
      `max ${MAX_NUM_SEQS} sequences`,
  );
  const schemes: KvScheme[] = [
    new PagedScheme(8),
    new PagedScheme(16),
    new PagedScheme(32),
    new ContiguousScheme('max-model-len'),
    new ContiguousScheme('prompt+max_tokens'),
  ];
  const wasteResults: WasteResult[] = [];
  for (const scheme of schemes) {
    const started = performance.now();
    const result = serve(scheme, requests);
    wasteResults.push(result);
    console.log(`  ${scheme.name}: ${result.steps} steps in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
  console.table(
    wasteResults.map((r) => ({
      scheme: r.scheme,
      'reserved GiB (mean)': +(r.meanReservedBytes / GiB).toFixed(2),
      'holding tokens GiB (mean)': +(r.meanHoldingBytes / GiB).toFixed(2),
      waste: percent(r.waste),
      'running seqs (mean)': +r.meanRunningSequences.toFixed(1),
      steps: r.steps,
      preemptions: r.preemptions,
      'prefix hit rate': r.prefixCacheHitRate === undefined ? '-' : percent(r.prefixCacheHitRate),
    })),
  );

  // (b) speed
  // A fixed number of samples (time 0: tinybench's time and iterations are both minimums), so the
  // decode sequences grow by at most DECODE_MAX_STEPS tokens after each phase's beforeAll reset.
  const bench = new Bench({ name: 'BlockManager', time: 0, iterations: DECODE_MAX_STEPS - 200, warmupTime: 0, warmupIterations: 200 });
  for (const enablePrefixCaching of [true, false]) {
    let state = decodeState(enablePrefixCaching);
    bench.add(
      `decode step: 256 × allocateSlots(seq, 1), prefix caching ${enablePrefixCaching ? 'on (hashes full blocks)' : 'off'}`,
      () => {
        const { blocks, tokenIds } = state;
        for (let seq = 0; seq < DECODE_SEQS; seq++) {
          tokenIds[0] = (tokenIds[0]! + 7919) % 32000;
          if (blocks.allocateSlots(seq, 1, { tokenIds }) === null) throw new Error('decode step: out of blocks');
        }
      },
      { beforeAll: () => void (state = decodeState(enablePrefixCaching)) },
    );
  }
  const longPrompt = Array.from({ length: 2048 }, (_, i) => (i * 7919) % 32000);
  let admitted = 0;
  let admitBlocks = new BlockManager({ numBlocks: 4097, blockSize: 16 });
  bench.add(
    'admit a 2048-token prompt (128 block hashes + look-ups, cache cold) and free it',
    () => {
      const seq = admitted++;
      longPrompt[0] = seq % 32000; // a different first block: no hits
      if (admitBlocks.allocateSlots(seq, 2048, { tokenIds: longPrompt }) === null) throw new Error('admit: does not fit');
      admitBlocks.free(seq);
    },
    { beforeAll: () => void (admitBlocks = new BlockManager({ numBlocks: 4097, blockSize: 16 })) },
  );
  await bench.run();
  const speedResults: { task: string; meanUs: number; p50Us: number; p99Us: number; samples: number; perCallNs?: number }[] = [];
  for (const task of bench.tasks) {
    const result = task.result;
    if (result.state !== 'completed') throw new Error(`${task.name}: ${result.state}`, { cause: (result as { error?: unknown }).error });
    const row = {
      task: task.name,
      meanUs: result.latency.mean * 1000,
      p50Us: result.latency.p50 * 1000,
      p99Us: result.latency.p99 * 1000,
      samples: result.latency.samplesCount,
      perCallNs: task.name.startsWith('decode') ? (result.latency.mean * 1e6) / DECODE_SEQS : undefined,
    };
    speedResults.push(row);
  }
  console.log('\n(b) BlockManager speed (target: a 256-sequence decode step ≤ 50 µs)');
  console.table(
    speedResults.map((r) => ({
      task: r.task,
      'mean µs': +r.meanUs.toFixed(1),
      'p50 µs': +r.p50Us.toFixed(1),
      'p99 µs': +r.p99Us.toFixed(1),
      'ns per call': r.perCallNs === undefined ? '-' : +r.perCallNs.toFixed(0),
      samples: r.samples,
    })),
  );

  const report = devices();
  const device = report.cpu.modelName || os.cpus()[0]?.model || report.cpu.arch;
  const date = new Date().toISOString();
  const out = {
    benchmark: 'kv-waste',
    device,
    cpu: report.cpu.modelName,
    commit: gitCommit(),
    date,
    command: 'npm run bench:kv-waste',
    node: process.version,
    host: os.hostname(),
    model: { bytesPerToken: BYTES_PER_TOKEN, note: 'Llama-2-7B-shaped fp16 KV: 2 × 32 layers × 32 kv heads × 128 × 2 B' },
    budget: { bytes: KV_BUDGET_BYTES, tokens: BUDGET_TOKENS, maxModelLen: MAX_MODEL_LEN, maxNumSeqs: MAX_NUM_SEQS, sampledEverySteps: SAMPLE_EVERY_STEPS },
    workload: summary,
    waste: wasteResults,
    speed: speedResults,
  };
  const dir = path.resolve(__dirname, '..', 'benchmarks', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `kv-waste-${device.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '')}-${date.slice(0, 10)}.json`);
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
