// Sampling: greedy, temperature, top-k, top-p, min-p and the penalties against distributions
// computed here by hand, seeded determinism, empirical frequencies, and exact errors; and the
// device op sampleTokens (on the CPU) token for token against sampleToken.
import { checkSamplingParams, InvalidArgumentError, sampleToken, sampleTokens, samplerRng, Tensor, type SampleRequest, type SamplingParams } from '../../lib';

const logits = Float32Array.from([2.0, 1.0, 0.5, 3.0, -1.0]);

function softmax(x: number[]): number[] {
  const m = Math.max(...x);
  const e = x.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function frequencies(params: Parameters<typeof sampleToken>[1], n = 20000, context = {}): number[] {
  const rng = samplerRng(123);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[sampleToken(logits, params, rng, context).tokenId]!++;
  return counts.map((c) => c / n);
}

test('temperature 0 is greedy, with the logprob of the full softmax', () => {
  const s = sampleToken(logits, { temperature: 0 }, samplerRng(1));
  expect(s.tokenId).toBe(3);
  expect(s.logprob).toBeCloseTo(Math.log(softmax([...logits])[3]!), 6);
});

test('temperature 1 draws from the softmax; temperature scales it', () => {
  const f = frequencies({ temperature: 1 });
  softmax([...logits]).forEach((p, i) => expect(Math.abs(f[i]! - p)).toBeLessThan(0.015));
  const hot = frequencies({ temperature: 2 });
  softmax([...logits].map((v) => v / 2)).forEach((p, i) => expect(Math.abs(hot[i]! - p)).toBeLessThan(0.015));
});

test('top-k, top-p and min-p keep exactly the tokens they should', () => {
  // Sorted: 3 (3.0), 0 (2.0), 1 (1.0), 2 (0.5), 4 (-1.0); p ≈ .610 .224 .083 .050 .034
  const topK = frequencies({ topK: 2 });
  expect(topK[1]).toBe(0);
  expect(topK[2]).toBe(0);
  const pk = softmax([3, 2]);
  expect(Math.abs(topK[3]! - pk[0]!)).toBeLessThan(0.015);
  const topP = frequencies({ topP: 0.8 });  // .610 < .8 ≤ .834: tokens 3 and 0
  expect(topP[1]! + topP[2]! + topP[4]!).toBe(0);
  const minP = frequencies({ minP: 0.1 });  // floor .061: keeps 3, 0, 1
  expect(minP[2]! + minP[4]!).toBe(0);
  expect(minP[1]!).toBeGreaterThan(0);
});

test('on a large vocabulary the candidate shortcuts keep exactly the brute-force sets (top-k by quickselect, top-p by the mass histogram)', () => {
  const V = 2000;
  const rand = samplerRng(5);
  // Heavy-tailed logits with ties, so nucleus and top-k boundaries fall inside the histogram's buckets.
  const big = Float32Array.from({ length: V }, (_, i) => (i % 97 === 0 ? 4 : Math.round(Math.log(rand() + 1e-9) * -1.5 * 8) / 8 - 6));
  const probs = softmax([...big]);
  const order = probs.map((q, i) => [q, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]).map(([, i]) => i);
  const nucleus = (topP: number, from: number[]): Set<number> => {
    const mass = from.reduce((a, i) => a + probs[i]!, 0);
    let c = 0;
    const kept = new Set<number>();
    for (const i of from) {
      kept.add(i);
      if ((c += probs[i]! / mass) >= topP) break;
    }
    return kept;
  };
  const cases: Array<[Parameters<typeof sampleToken>[1], Set<number>]> = [
    [{ topK: 40 }, new Set(order.slice(0, 40))],
    [{ topP: 0.3 }, nucleus(0.3, order)],
    [{ topP: 0.9 }, nucleus(0.9, order)],
    [{ topK: 200, topP: 0.5 }, nucleus(0.5, order.slice(0, 200))],
  ];
  for (const [params, kept] of cases) {
    const rng = samplerRng(9);
    const seen = new Set<number>();
    for (let n = 0; n < 1000; n++) seen.add(sampleToken(big, params, rng, {}, false).tokenId);
    for (const id of seen) expect(kept.has(id)).toBe(true);
    // Every kept token with a fair chance shows up.
    const mass = [...kept].reduce((a, i) => a + probs[i]!, 0);
    for (const id of kept) if (probs[id]! / mass > 0.01) expect(seen.has(id)).toBe(true);
  }
  expect(Number.isNaN(sampleToken(big, { temperature: 0 }, samplerRng(1), {}, false).logprob)).toBe(true);
  const s = sampleToken(big, { temperature: 1, topK: 5 }, samplerRng(2));
  expect(s.logprob).toBeCloseTo(Math.log(probs[s.tokenId]!), 6);
});

test('penalties follow vLLM: repetition divides positive / multiplies negative logits, presence and frequency subtract', () => {
  const greedy = (params: object, context: object): number => sampleToken(logits, { temperature: 0, ...params }, samplerRng(1), context).tokenId;
  expect(greedy({ repetitionPenalty: 2 }, { prompt: [3] })).toBe(0);  // 3.0 / 2 = 1.5 < 2.0
  expect(greedy({ repetitionPenalty: 1.4 }, { prompt: [3] })).toBe(3);  // 3.0 / 1.4 = 2.14 > 2.0
  expect(greedy({ presencePenalty: 1.5 }, { output: [3] })).toBe(0);  // 1.5 < 2.0
  expect(greedy({ frequencyPenalty: 0.6 }, { output: [3] })).toBe(3);  // 2.4 > 2.0
  expect(greedy({ frequencyPenalty: 0.6 }, { output: [3, 3] })).toBe(0);  // 1.8 < 2.0
  // The prompt counts only for the repetition penalty.
  expect(greedy({ presencePenalty: 5 }, { prompt: [3] })).toBe(3);
});

test('the same seed gives the same tokens; different seeds differ', () => {
  const draw = (seed: number): number[] => {
    const rng = samplerRng(seed);
    return Array.from({ length: 50 }, () => sampleToken(logits, { temperature: 1.5 }, rng).tokenId);
  };
  expect(draw(7)).toEqual(draw(7));
  expect(draw(7)).not.toEqual(draw(8));
});

test('bad parameters get exact errors', () => {
  expect(() => checkSamplingParams({ temperature: -1 })).toThrow(new InvalidArgumentError('sampling: temperature must be a number ≥ 0, got -1'));
  expect(() => checkSamplingParams({ topP: 0 })).toThrow('sampling: topP must be in (0, 1], got 0');
  expect(() => checkSamplingParams({ topK: 1.5 })).toThrow('sampling: topK must be an integer ≥ −1 (0 or −1: off), got 1.5');
  expect(() => checkSamplingParams({ repetitionPenalty: 0 })).toThrow('sampling: repetitionPenalty must be a number > 0, got 0');
  expect(() => samplerRng(1.5)).toThrow('sampling: seed must be an integer, got 1.5');
  expect(() => sampleToken(new Float32Array(0), {}, samplerRng(1))).toThrow('sampling: empty logits');
});

describe('sampleTokens (on the device: the CPU here)', () => {
  // A batch of rows with repeated values (ties), a grid of parameters, draws from a seeded generator
  // and penalty histories; each request's token must be sampleToken's with the same draw.
  function cases(V: number, seed: number): { logits: Float32Array; rows: number; requests: SampleRequest[] } {
    const r = samplerRng(seed);
    const rows = 3;
    const logits = Float32Array.from({ length: rows * V }, (_, i) => (i % 7 === 0 ? Math.round(r() * 8 - 4) : (r() + r() + r() - 1.5) * 4));
    const requests: SampleRequest[] = [];
    for (const temperature of [0, 0.7, 1.3])
      for (const topK of [0, 1, 5, 50])
        for (const topP of [1, 0.9, 0.5])
          for (const minP of [0, 0.05])
            for (const penalties of [false, true]) {
              const params: SamplingParams = { temperature, topK, topP, minP, ...(penalties ? { repetitionPenalty: 1.3, presencePenalty: 0.5, frequencyPenalty: 0.25 } : {}) };
              const context = penalties
                ? { prompt: Array.from({ length: 5 }, () => Math.floor(r() * V)), output: Array.from({ length: 6 }, () => Math.floor(r() * V)) }
                : undefined;
              requests.push({ row: requests.length % rows, params, draw: r(), ...(context ? { context } : {}) });
            }
    return { logits, rows, requests };
  }

  test.each([1, 7, 1000, 32000])('vocabulary %i: the same tokens and logprobs as sampleToken', async (V) => {
    const { logits, rows, requests } = cases(V, V);
    const t = Tensor.fromArray(logits, [rows, V]);
    const got = await sampleTokens(t, requests, { logprobs: true });
    t.dispose();
    requests.forEach((req, i) => {
      const want = sampleToken(logits.subarray(req.row * V, (req.row + 1) * V), req.params, () => req.draw, req.context);
      if (got.tokenIds[i] !== want.tokenId) throw new Error(`request ${i} (${JSON.stringify(req.params)}): token ${got.tokenIds[i]}, want ${want.tokenId}`);
      expect(Math.abs(got.logprobs![i]! - want.logprob)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(want.logprob)));
    });
  });

  test('strided rows, no logprobs, and typed errors', async () => {
    const wide = Tensor.fromArray(Float32Array.from([9, 1, 5, 2, 0, 3, 7, 4, 1, 1]), [2, 5]);
    const view = wide.slice(1, 1, 4);  // [[1, 5, 2], [7, 4, 1]], row stride 5
    const out = await sampleTokens(view, [{ row: 1, params: { temperature: 0 }, draw: 0 }, { row: 0, params: { temperature: 0 }, draw: 0 }]);
    expect(Array.from(out.tokenIds)).toEqual([0, 1]);
    expect(out.logprobs).toBeNull();
    await expect(sampleTokens(view, [{ row: 2, params: {}, draw: 0.5 }])).rejects.toThrow('sampleTokens: request 0 row 2 is outside the logits (2 rows)');
    await expect(sampleTokens(view, [{ row: 0, params: {}, draw: 1 }])).rejects.toThrow('sampling: a draw must be in [0, 1), got 1');
    await expect(sampleTokens(view, [{ row: 0, params: { topP: 0 }, draw: 0.5 }])).rejects.toThrow(InvalidArgumentError);
    await expect(sampleTokens(Tensor.zeros([2, 3], { dtype: 'float16' }), [])).rejects.toThrow('sampleTokens: logits must be float32 [rows, vocabSize], got float16 [2, 3]');
    const nan = Tensor.fromArray(Float32Array.from([NaN, NaN]), [1, 2]);
    await expect(sampleTokens(nan, [{ row: 0, params: {}, draw: 0.5 }])).rejects.toThrow('sampleTokens: logits row 0 holds NaN: nothing to sample');
    nan.dispose();
    wide.dispose();
  });
});
