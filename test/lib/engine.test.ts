// The continuous-batching Engine on the CPU over a small random model: the same greedy tokens
// however requests are batched, chunked, cached, preempted (recompute and swap) or forked;
// aborts, stop conditions, bad input, disposal; 64 concurrent requests with random aborts all
// settle and leave the block manager and the pool where they started.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';

import { Engine, makeTestModel, memoryReport, Model, Tokenizer, type EngineOptions, type EngineStep, type GenerationOptions } from '../../lib';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-engine-'));
const dir = path.join(tmp, 'llama');
let model: Model;
let tokenizer: Tokenizer;

beforeAll(async () => {
  await makeTestModel({ out: dir, hidden: 128, layers: 2, heads: 2, kvHeads: 1, intermediate: 256, vocab: 512, maxPositionEmbeddings: 256, initStd: 0.1, seed: 3 });
  model = await Model.load(dir, { device: 'cpu' });
  tokenizer = await Tokenizer.fromFolder(dir);
});
afterAll(() => {
  model?.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function engine(options: Partial<EngineOptions> = {}): Promise<Engine> {
  return Engine.create({ model, tokenizer, logger: null, maxModelLen: 128, maxNumSeqs: 8, ...options });
}

// Deterministic prompts of mixed lengths, with no special tokens (ids ≥ 3).
function prompts(count: number, seed: number, minLength = 3, maxLength = 40): number[][] {
  let s = seed;
  const next = (): number => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8);
  return Array.from({ length: count }, () => Array.from({ length: minLength + (next() % (maxLength - minLength + 1)) }, () => 3 + (next() % 500)));
}

const greedy: GenerationOptions = { maxTokens: 12, temperature: 0, ignoreEos: true };

async function oneAtATime(e: Engine, ps: number[][], options = greedy): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of ps) out.push(await e.generate({ promptTokenIds: p }, options).tokenIds());
  return out;
}

async function together(e: Engine, ps: number[][], options = greedy): Promise<number[][]> {
  return Promise.all(ps.map((p) => e.generate({ promptTokenIds: p }, options).tokenIds()));
}

test('batched requests give the tokens each gives alone; the engine is back at its start state afterwards', async () => {
  const ps = prompts(6, 1);
  const e = await engine({ prefixCaching: false });
  try {
    const alone = await oneAtATime(e, ps);
    const batched = await together(e, ps);
    expect(batched).toEqual(alone);
    expect(alone.every((t) => t.length === 12)).toBe(true);
    const m = e.metrics();
    expect(m.requests).toMatchObject({ waiting: 0, running: 0, swapped: 0, finished: 12, aborted: 0, failed: 0 });
    expect(m.tokens.generated).toBe(12 * 12);
    expect(m.kv.usedBlocks).toBe(0);
    expect(m.kv.sequences).toBe(0);
  } finally {
    e.dispose();
  }
});

test('greedy output matches the single-request path token for token', async () => {
  const ps = prompts(3, 2);
  const e = await engine();
  try {
    for (const p of ps) {
      const { generate } = await import('../../lib');
      const ref = await generate(model, p, { maxTokens: 12 });
      const got = await e.generate({ promptTokenIds: p }, { maxTokens: 12, temperature: 0 }).result();
      expect(got.choices[0]!.tokenIds).toEqual(ref.tokenIds);
      expect(got.choices[0]!.finishReason).toBe(ref.finishReason);
    }
  } finally {
    e.dispose();
  }
});

test('a prefix-cache hit computes only the new tokens and changes nothing in the output', async () => {
  const [system] = prompts(1, 7, 40, 40);
  const suffixes = prompts(3, 8, 2, 9);
  const ps = suffixes.map((s) => [...system!, ...s]);
  const cold = await engine({ prefixCaching: false });
  const warm = await engine({ prefixCaching: true, blockSize: 8 });
  try {
    const expected = await oneAtATime(cold, ps);
    const results = [];
    for (const p of ps) results.push(await warm.generate({ promptTokenIds: p }, greedy).result());
    expect(results.map((r) => r.choices[0]!.tokenIds)).toEqual(expected);
    expect(results[0]!.usage.cachedPromptTokens).toBe(0);
    // The 40-token prefix holds 5 full blocks of 8: later requests find them.
    expect(results[1]!.usage.cachedPromptTokens).toBe(40);
    expect(results[2]!.usage.cachedPromptTokens).toBe(40);
    const m = warm.metrics();
    expect(m.tokens.promptCached).toBe(80);
    expect(m.tokens.promptComputed).toBe(m.tokens.prompt - 80);
    expect(m.kv.prefixCache.hitRate).toBeGreaterThan(0);
    // A different salt shares nothing.
    const salted = await warm.generate({ promptTokenIds: ps[0]! }, { ...greedy, cacheSalt: 'tenant-b' }).result();
    expect(salted.usage.cachedPromptTokens).toBe(0);
    expect(salted.choices[0]!.tokenIds).toEqual(expected[0]);
  } finally {
    cold.dispose();
    warm.dispose();
  }
});

test.each(['recompute', 'swap'] as const)('a tiny KV budget forces preemption (%s) and the output is unchanged', async (preemption) => {
  const ps = prompts(5, 3, 20, 30);
  const options = { ...greedy, maxTokens: 30 };
  const roomy = await engine({ prefixCaching: false });
  // 64-token sequences need 8 blocks of 8; 18 blocks hold two at most.
  const tight = await engine({ prefixCaching: false, preemption, blockSize: 8, maxModelLen: 64, budget: { numBlocks: 18 }, watermark: 0 });
  try {
    const expected = await oneAtATime(roomy, ps, options);
    const steps: EngineStep[] = [];
    const got = await together(tight, ps, options);
    expect(got).toEqual(expected);
    const m = tight.metrics();
    expect(m.preemptions[preemption]).toBeGreaterThan(0);
    if (preemption === 'swap') expect(tight.memoryReport().swap!.blocks).toBeGreaterThan(0);
    expect(m.kv.usedBlocks).toBe(0);
    expect(m.kv.host.usedBlocks).toBe(0);
    void steps;
  } finally {
    roomy.dispose();
    tight.dispose();
  }
});

test('chunked prefill (8 tokens a step) gives the unchunked output', async () => {
  const ps = prompts(4, 4, 30, 60);
  const whole = await engine({ prefixCaching: false });
  const steps: EngineStep[] = [];
  const chunked = await engine({ prefixCaching: false, maxNumBatchedTokens: 8, onStep: (s) => steps.push(s) });
  try {
    expect(await together(chunked, ps)).toEqual(await oneAtATime(whole, ps));
    expect(Math.max(...steps.map((s) => s.prefillTokens + s.decodeTokens))).toBeLessThanOrEqual(8);
    // Prefill chunks and decode tokens shared steps.
    expect(steps.some((s) => s.prefillTokens > 0 && s.decodeTokens > 0)).toBe(true);
  } finally {
    whole.dispose();
    chunked.dispose();
  }
});

test('n > 1 forks the prompt: greedy choices are equal, seeded choices are reproducible, and forks share blocks', async () => {
  const [p] = prompts(1, 5, 21, 21);
  const e = await engine({ blockSize: 8 });
  try {
    const single = await e.generate({ promptTokenIds: p! }, greedy).tokenIds();
    const three = await e.generate({ promptTokenIds: p! }, { ...greedy, n: 3 }).result();
    expect(three.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    for (const c of three.choices) expect(c.tokenIds).toEqual(single);
    expect(three.usage.completionTokens).toBe(36);
    const sampled = { maxTokens: 10, temperature: 1.5, seed: 11, n: 2, ignoreEos: true };
    const a = await e.generate({ promptTokenIds: p! }, sampled).result();
    const b = await e.generate({ promptTokenIds: p! }, sampled).result();
    expect(b.choices.map((c) => c.tokenIds)).toEqual(a.choices.map((c) => c.tokenIds));
    expect(a.choices[0]!.tokenIds).not.toEqual(a.choices[1]!.tokenIds);
    // While 4 choices decode, the prompt's 2 full blocks are held once, not 4 times.
    const steps: EngineStep[] = [];
    const shared = await Engine.create({ model, tokenizer, logger: null, maxModelLen: 128, blockSize: 8, prefixCaching: false, onStep: (s) => steps.push(s) });
    try {
      await shared.generate({ promptTokenIds: p! }, { ...greedy, maxTokens: 3, n: 4 }).result();
      // 21 + 3 tokens: 3 blocks each; shared: 2 full prompt blocks + 4 own last blocks = 6 (unshared: 12).
      expect(Math.max(...steps.map((s) => s.kv.usedBlocks))).toBe(6);
    } finally {
      shared.dispose();
    }
  } finally {
    e.dispose();
  }
});

test('streaming: chunks arrive token by token, their text adds up, and logprobs come with them', async () => {
  const e = await engine();
  try {
    const stream = e.generate('the paged cache', { maxTokens: 8, temperature: 0, ignoreEos: true, logprobs: true });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const result = await stream.result();
    expect(chunks.map((c) => c.tokenIds[0])).toEqual(result.choices[0]!.tokenIds);
    expect(chunks.map((c) => c.text).join('')).toBe(result.choices[0]!.text);
    expect(result.choices[0]!.text).toBe(tokenizer.decode(result.choices[0]!.tokenIds, { skipSpecialTokens: true }));
    expect(chunks.at(-1)!.finishReason).toBe('length');
    expect(chunks.slice(0, -1).every((c) => c.finishReason === null)).toBe(true);
    expect(result.choices[0]!.logprobs!.every((l) => l <= 0 && Number.isFinite(l))).toBe(true);
    expect(result.usage.promptTokens).toBe(tokenizer.encode('the paged cache').length);
    expect(result.timings.timeToFirstTokenMs).toBeGreaterThan(0);
    await expect((async () => {
      for await (const _ of stream) void _;
    })()).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  } finally {
    e.dispose();
  }
});

test('stop token ids and stop strings end a choice with finishReason "stop"', async () => {
  const e = await engine();
  try {
    const [p] = prompts(1, 9, 10, 10);
    const full = await e.generate({ promptTokenIds: p! }, { ...greedy, maxTokens: 16 }).result();
    const ids = full.choices[0]!.tokenIds;
    const stopAt = ids.findIndex((id, i) => i >= 2 && ids.indexOf(id) === i);
    const stopped = await e.generate({ promptTokenIds: p! }, { ...greedy, maxTokens: 16, stopTokenIds: [ids[stopAt]!] }).result();
    expect(stopped.choices[0]!.tokenIds).toEqual(ids.slice(0, stopAt + 1));
    expect(stopped.choices[0]!.finishReason).toBe('stop');

    const text = full.choices[0]!.text;
    const stop = [...text].slice(6, 8).join('');
    expect(stop.length).toBeGreaterThan(0);
    const byText = e.generate({ promptTokenIds: p! }, { ...greedy, maxTokens: 16, stop: [stop, 'a string that never appears'] });
    const chunks = [];
    for await (const c of byText) chunks.push(c);
    const r = await byText.result();
    expect(r.choices[0]!.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(r.choices[0]!.finishReason).toBe('stop');
    expect(chunks.map((c) => c.text).join('')).toBe(r.choices[0]!.text);
  } finally {
    e.dispose();
  }
});

test('an aborted request rejects with ERR_ABORTED at the next step and frees its blocks; the others finish', async () => {
  const e = await engine();
  try {
    const ps = prompts(3, 10);
    const controller = new AbortController();
    const doomed = e.generate({ promptTokenIds: ps[0]! }, { ...greedy, maxTokens: 100, signal: controller.signal });
    const others = ps.slice(1).map((p) => e.generate({ promptTokenIds: p }, greedy).tokenIds());
    let seen = 0;
    await expect((async () => {
      for await (const _ of doomed) if (++seen === 2) controller.abort();
    })()).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await expect(doomed.result()).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect((await Promise.all(others)).every((t) => t.length === 12)).toBe(true);
    await e.idle();
    expect(e.metrics().requests.aborted).toBe(1);
    expect(e.metrics().kv.usedBlocks).toBe(0);
    const pre = new AbortController();
    pre.abort();
    await expect(e.generate({ promptTokenIds: ps[0]! }, { signal: pre.signal }).result()).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  } finally {
    e.dispose();
  }
});

test('64 concurrent requests with random aborts all settle; blocks and pool return to their start; the event loop stays responsive', async () => {
  const e = await engine({ maxNumSeqs: 16, blockSize: 8, budget: { numBlocks: 40 } });
  try {
    await e.generate({ promptTokenIds: [5, 6, 7] }, greedy).result();  // warm the pool
    const before = memoryReport('cpu');
    const ps = prompts(64, 12, 3, 50);
    let s = 99;
    const rand = (): number => (s = (Math.imul(s, 48271) >>> 0) % 2147483647) / 2147483647;
    const lag = monitorEventLoopDelay({ resolution: 1 });
    lag.enable();
    const settled = await Promise.allSettled(ps.map((p, i) => {
      const controller = new AbortController();
      if (rand() < 0.3) setTimeout(() => controller.abort(), rand() * 400);
      return e.generate({ promptTokenIds: p }, { maxTokens: 4 + (i % 40), temperature: i % 2 ? 0 : 0.9, seed: i, n: i % 7 === 0 ? 2 : 1, signal: controller.signal }).result();
    }));
    lag.disable();
    const rejected = settled.filter((r) => r.status === 'rejected');
    expect(rejected.every((r) => (r as PromiseRejectedResult).reason.code === 'ERR_ABORTED')).toBe(true);
    expect(settled.length).toBe(64);
    await e.idle();
    const m = e.metrics();
    expect(m.requests.finished + m.requests.aborted).toBe(65);
    expect(m.requests.aborted).toBe(rejected.length);
    expect(m.kv.usedBlocks).toBe(0);
    expect(m.kv.sequences).toBe(0);
    expect(m.preemptions.recompute).toBeGreaterThan(0);  // 40 blocks of 8 cannot hold 16 growing sequences
    const after = memoryReport('cpu');
    for (const c of ['activations', 'workspace', 'kv-cache', 'weights'] as const) expect(after.categories![c].current).toBe(before.categories![c].current);
    // p99 of the event loop's delay while 64 requests generate (the CPU forward runs on the stream's thread).
    const p99 = lag.percentile(99) / 1e6;
    console.log(`event loop delay during generation: p50 ${(lag.percentile(50) / 1e6).toFixed(2)} ms, p99 ${p99.toFixed(2)} ms, max ${(lag.max / 1e6).toFixed(2)} ms`);
    // The target is 20 ms (the decode benchmark reports it on a quiet machine); a shared 2-core CI runner, with the
    // stream thread and the CPU thread pool competing for the cores, gets this looser bound.
    expect(p99).toBeLessThan(50);
  } finally {
    e.dispose();
  }
});

test('bad requests and options are typed errors; dispose rejects pending requests', async () => {
  const e = await engine();
  const bad = (prompt: Parameters<Engine['generate']>[0], options: GenerationOptions = {}): (() => unknown) => () => e.generate(prompt, options);
  expect(bad({ promptTokenIds: [] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  expect(bad({ promptTokenIds: [1, 512] })).toThrow(/not a token id/);
  expect(bad({ promptTokenIds: [1, 2] }, { maxTokens: 0 })).toThrow(/maxTokens/);
  expect(bad({ promptTokenIds: [1, 2] }, { maxTokens: 127 })).toThrow(/exceeds maxModelLen 128/);
  expect(bad({ promptTokenIds: [1, 2] }, { n: 0 })).toThrow(/n must be/);
  expect(bad({ promptTokenIds: [1, 2] }, { stop: [''] })).toThrow(/stop/);
  expect(bad({ promptTokenIds: [1, 2] }, { topP: 0 })).toThrow(/topP/);
  expect(bad({ promptTokenIds: [1, 2] }, { stopTokenIds: [-1] })).toThrow(/stopTokenIds/);
  expect(bad(42 as never)).toThrow(/prompt must be/);
  const pending = e.generate({ promptTokenIds: [1, 2, 3] }, { maxTokens: 50 });
  e.dispose();
  await expect(pending.result()).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
  expect(bad({ promptTokenIds: [1] })).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
  await e.idle();

  await expect(engine({ blockSize: 12 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  await expect(engine({ maxModelLen: 4096 })).rejects.toThrow(/max_position_embeddings/);
  await expect(engine({ budget: { numBlocks: 4 } })).rejects.toThrow(/needs/);
  await expect(engine({ maxNumBatchedTokens: 4 })).rejects.toThrow(/maxNumBatchedTokens/);
  await expect(engine({ preemption: 'later' as never })).rejects.toThrow(/preemption/);
  const noTokenizer = await Engine.create({ model, logger: null, maxModelLen: 128 });
  expect(() => noTokenizer.generate('text')).toThrow(/tokenizer/);
  noTokenizer.dispose();
});

test('a model folder: Engine.create loads it, logs the plan and reports memory by category', async () => {
  const lines: string[] = [];
  const e = await Engine.create({ model: dir, device: 'cpu', logger: (l) => lines.push(l), maxModelLen: 128, maxNumSeqs: 4 });
  try {
    expect(lines.join('\n')).toMatch(/KV cache: \d+ blocks × 16 tokens/);
    const text = await e.generate('hello', { maxTokens: 4, temperature: 0 }).text();
    expect(typeof text).toBe('string');
    const report = e.memoryReport();
    expect(report.plan.numBlocks).toBeGreaterThan(0);
    expect(report.device.categories!['kv-cache'].current).toBeGreaterThanOrEqual(report.plan.kvCacheBytes);
    expect(report.device.categories!.weights.current).toBeGreaterThan(0);
  } finally {
    e.dispose();
  }
});

test('`pagedllm demo` serves its workload through the engine and writes an HTML report with the plots', () => {
  const report = path.join(tmp, 'demo.html');
  const cli = path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
  const run = spawnSync(process.execPath, [cli, 'demo', '--device', 'cpu', '--requests', '10', '--report', report], { encoding: 'utf8' });
  expect(run.stderr).toBe('');
  expect(run.status).toBe(0);
  expect(run.stdout).toMatch(/10 requests \(9 finished, 1 aborted\)/);
  expect(run.stdout).toMatch(/memory plan \(numBlocks\): weights/);
  expect(run.stdout).toMatch(/prefix cache: hit rate [1-9]/);
  expect(run.stdout).toMatch(/kv-cache +3\.50 MiB/);
  const html = fs.readFileSync(report, 'utf8');
  expect(html.match(/<svg /g)).toHaveLength(3);
  expect(html).toContain('Memory by category');
  expect(html).toContain('KV cache blocks');
  expect(html).toMatch(/<polygon points="[0-9., ]+"/);
});
