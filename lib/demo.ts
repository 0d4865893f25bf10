/**
 * `pagedllm demo` (what `npm start` runs): makes a small random Llama-shaped model, plans memory,
 * and serves a workload of concurrent requests through the Engine — a shared system prefix
 * (prefix caching), n > 1 (copy-on-write forks), mixed prompt and output lengths, staggered
 * arrivals (continuous batching), one request aborted — with a KV cache small enough that the
 * scheduler has to queue and preempt. Prints the plan, memory by category, KV usage, the
 * prefix-cache hit rate, preemptions and tokens/s, and writes an HTML report with plots.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { type DeviceSpec } from './device';
import { Engine, type EngineStep, type GenerationResult } from './engine';
import { MEMORY_CATEGORIES } from './memory';
import { renderReport } from './report';
import { makeTestModel } from './test-model';

export interface DemoOptions {
  device: DeviceSpec;
  /** Where the HTML report goes. */
  report: string;
  requests?: number;
  log?: (line: string) => void;
}

export interface DemoResult {
  results: PromiseSettledResult<GenerationResult>[];
  steps: EngineStep[];
  report: string;
}

// A deterministic generator for the workload (the same demo every run).
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const log = options.log ?? ((line: string) => console.log(line));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-demo-'));
  const steps: EngineStep[] = [];
  const lines: string[] = [];
  const say = (line: string): void => {
    lines.push(line);
    log(line);
  };
  try {
    const shape = { arch: 'llama' as const, hidden: 256, layers: 4, heads: 4, kvHeads: 2, intermediate: 704, vocab: 2048, dtype: 'float16' as const, initStd: 0.05, seed: 1, maxPositionEmbeddings: 512 };
    say(`pagedllm demo on ${options.device}: a random Llama-shaped model (hidden ${shape.hidden}, ${shape.layers} layers, ${shape.heads} heads / ${shape.kvHeads} KV heads, vocab ${shape.vocab}, ${shape.dtype} weights); the weights are random, so the text is noise`);
    await makeTestModel({ ...shape, out: dir });
    // 56 blocks of 16 tokens: fewer than the workload wants at its peak, so requests queue and get preempted.
    let abortAt: { step: number; controller: AbortController } | null = null;
    const engine = await Engine.create({
      model: dir, device: options.device, maxModelLen: 256, maxNumSeqs: 16, maxNumBatchedTokens: 256, blockSize: 16,
      budget: { numBlocks: 56 }, prefixCaching: true, preemption: 'recompute', logger: (line) => say(line),
      onStep: (s) => {
        steps.push(s);
        // The aborted request is cancelled 8 steps after it arrives, mid-generation (120 tokens asked),
        // however fast the machine: a wall-clock timer let it finish first on a fast one.
        if (abortAt !== null && steps.length >= abortAt.step) {
          abortAt.controller.abort();
          abortAt = null;
        }
      },
    });
    try {
      const rand = lcg(7);
      const ids = (n: number): number[] => Array.from({ length: n }, () => 3 + Math.floor(rand() * (shape.vocab - 3)));
      const system = ids(64);  // a shared system prompt: 4 full blocks, cached after the first request
      const count = options.requests ?? 24;
      const started = performance.now();
      const pending: Promise<GenerationResult>[] = [];
      for (let i = 0; i < count; i++) {
        const shared = i % 4 !== 3;
        const prompt = shared ? [...system, ...ids(4 + Math.floor(rand() * 40))] : ids(8 + Math.floor(rand() * 120));
        const n = i % 8 === 5 ? 3 : 1;
        const controller = new AbortController();
        const aborted = i === 6;
        const maxTokens = aborted ? 120 : 16 + Math.floor(rand() * 64);
        await new Promise((resolve) => setTimeout(resolve, rand() * 15));  // staggered arrivals
        const stream = engine.generate({ promptTokenIds: prompt }, {
          maxTokens, n, signal: controller.signal, ignoreEos: true, ...(n > 1 ? { temperature: 0.8, topP: 0.95, seed: i } : { temperature: 0 }),
        });
        if (aborted) abortAt = { step: steps.length + 8, controller };
        pending.push(stream.result());
      }
      const results = await Promise.allSettled(pending);
      const seconds = (performance.now() - started) / 1000;
      const m = engine.metrics();
      const report = engine.memoryReport();
      const MiB = (b: number): string => `${(b / 2 ** 20).toFixed(2)} MiB`;
      const done = results.filter((r) => r.status === 'fulfilled') as PromiseFulfilledResult<GenerationResult>[];
      say('');
      say(`${count} requests (${done.length} finished, ${results.length - done.length} aborted) in ${seconds.toFixed(2)} s over ${m.steps} steps`);
      say(`tokens: ${m.tokens.prompt} prompt (${m.tokens.promptCached} from the prefix cache, ${m.tokens.promptComputed} computed), ${m.tokens.generated} generated`);
      say(`throughput: ${(m.tokens.generated / seconds).toFixed(1)} generated tokens/s, ${(m.tokens.promptComputed / seconds).toFixed(1)} prompt tokens/s; time to first token p50 ${m.timeToFirstTokenMs!.p50.toFixed(0)} ms, p99 ${m.timeToFirstTokenMs!.p99.toFixed(0)} ms`);
      say(`prefix cache: hit rate ${(m.kv.prefixCache.hitRate * 100).toFixed(1)} % of prompt tokens looked up; preemptions: ${m.preemptions.recompute} recompute, ${m.preemptions.swap} swap`);
      const peakUsed = Math.max(...steps.map((s) => s.kv.usedBlocks));
      say(`KV blocks: ${m.kv.totalBlocks} usable, peak ${peakUsed} in use (${((peakUsed / m.kv.totalBlocks) * 100).toFixed(0)} %), ${m.kv.cachedBlocks} cached now`);
      say(`memory on ${options.device} (${report.device.kind}): current / peak by category`);
      for (const c of MEMORY_CATEGORIES) {
        const u = report.device.categories?.[c];
        if (u && u.peak > 0) say(`  ${c.padEnd(12)} ${MiB(u.current).padStart(12)} / ${MiB(u.peak)}`);
      }
      if (report.device.pool) say(`  pool reserved ${MiB(report.device.pool.reserved)}, in use ${MiB(report.device.pool.inUse)}, largest free extent ${MiB(report.device.pool.largestFreeExtent)}`);
      const sample = done.find((r) => r.value.choices.length > 1);
      if (sample) say(`an n = 3 request: ${sample.value.choices.map((c) => `[${c.tokenIds.slice(0, 6).join(', ')}, …]`).join(' ')}`);
      fs.writeFileSync(options.report, renderReport({ title: 'pagedllm demo', steps, summary: lines }));
      log(`report: ${options.report}`);
      return { results, steps, report: options.report };
    } finally {
      engine.dispose();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
