/**
 * Token sampling from one row of logits, with vLLM's parameters and order: repetition,
 * presence and frequency penalties on the raw logits; temperature 0 is greedy; otherwise
 * logits / temperature, then top-k, top-p (nucleus) and min-p filtering of the softmax, and a
 * draw from a seeded generator (the same seed gives the same tokens). Optional logprobs are
 * those of the final distribution (log-softmax after penalties and temperature).
 *
 * `sampleToken` runs on the host over one row of logits; `sampleTokens` runs the same algorithm on
 * the logits' device (include/pagedllm/sampling.h: float64 on the CPU, decision for decision the
 * same as `sampleToken`; float32 on CUDA) for a batch of rows, so that only the ids cross — what
 * the Engine uses. Both take the real-valued parameters at float32 precision (the device op's), and
 * the draw as u ∈ [0, 1) rounded down to a multiple of 2^−32 (the seeded generator's are exact).
 *
 * @example
 * const rng = samplerRng(42);
 * const id = sampleToken(logits, { temperature: 0.8, topP: 0.95 }, rng, { output: generated });
 * const { tokenIds } = await sampleTokens(logitsTensor, [{ row: 0, params: { temperature: 0.8 }, draw: rng() }]);
 */
import { InvalidArgumentError } from './errors';
import { native } from './native';
import { Tensor } from './tensor';

export interface SamplingParams {
  /** 0: greedy. Default 1. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 or −1: all. */
  topK?: number;
  /** Keep the smallest set whose probability reaches topP (0 < topP ≤ 1). Default 1. */
  topP?: number;
  /** Drop tokens whose probability is below minP × the largest. Default 0. */
  minP?: number;
  /** > 1 discourages tokens already in the prompt or output (CTRL / HF semantics). Default 1. */
  repetitionPenalty?: number;
  /** Subtracted once from the logit of every token that appeared in the output. Default 0. */
  presencePenalty?: number;
  /** Subtracted per occurrence in the output. Default 0. */
  frequencyPenalty?: number;
  /** Seed of the generator; omitted: Math.random. */
  seed?: number;
}

/** A uniform [0, 1) generator: mulberry32 seeded, or Math.random. */
export type Rng = () => number;

export function samplerRng(seed?: number): Rng {
  if (seed === undefined) return Math.random;
  if (!Number.isSafeInteger(seed)) throw new InvalidArgumentError(`sampling: seed must be an integer, got ${String(seed)}`);
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Checks a parameter set and fills its defaults (exact messages for bad values). */
export function checkSamplingParams(p: SamplingParams = {}): Required<Omit<SamplingParams, 'seed'>> & { seed?: number } {
  const num = (name: keyof SamplingParams, fallback: number, ok: (v: number) => boolean, rule: string): number => {
    const v = p[name] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new InvalidArgumentError(`sampling: ${name} must be ${rule}, got ${String(p[name])}`);
    return v;
  };
  return {
    temperature: num('temperature', 1, (v) => v >= 0, 'a number ≥ 0'),
    topK: num('topK', 0, (v) => Number.isInteger(v) && v >= -1, 'an integer ≥ −1 (0 or −1: off)'),
    topP: num('topP', 1, (v) => v > 0 && v <= 1, 'in (0, 1]'),
    minP: num('minP', 0, (v) => v >= 0 && v <= 1, 'in [0, 1]'),
    repetitionPenalty: num('repetitionPenalty', 1, (v) => v > 0, 'a number > 0'),
    presencePenalty: num('presencePenalty', 0, () => true, 'a finite number'),
    frequencyPenalty: num('frequencyPenalty', 0, () => true, 'a finite number'),
    ...(p.seed === undefined ? {} : { seed: p.seed }),
  };
}

export interface SampleContext {
  /** Prompt token ids (count for the repetition penalty). */
  prompt?: ArrayLike<number>;
  /** Generated token ids so far (all penalties). */
  output?: ArrayLike<number>;
}

export interface Sample {
  tokenId: number;
  /** log p(tokenId) under the final distribution. */
  logprob: number;
}

/**
 * Samples one token from `logits` [vocabSize] (not modified). O(vocab) plus a sort of the
 * candidates only: top-k selects its k by quickselect, top-p sorts just the tokens that can be
 * in the nucleus (found from a histogram of the probabilities by powers of two), and plain
 * temperature / min-p sampling sorts nothing — a 128k vocabulary costs about a millisecond,
 * not a full sort per token. `wantLogprob` false skips the log-softmax (NaN is returned).
 */
export function sampleToken(logits: Float32Array, params: SamplingParams, rng: Rng, context: SampleContext = {}, wantLogprob = true): Sample {
  const p = atFloat32(checkSamplingParams(params));
  const V = logits.length;
  if (V === 0) throw new InvalidArgumentError('sampling: empty logits');
  const penalized = p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
  if (p.temperature === 0 && !penalized) {  // greedy on the logits as they are: no float64 copy
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i]! > logits[best]!) best = i;
    return { tokenId: best, logprob: wantLogprob ? logSoftmaxAt(logits, best) : NaN };
  }
  const x = workingCopy(logits);
  // Penalties (vLLM order: repetition on prompt + output, then presence / frequency on output).
  if (penalized) {
    const history = penaltyHistory(p, context);
    if (p.repetitionPenalty !== 1) {
      for (const t of history.keys()) if (t >= 0 && t < V) x[t] = x[t]! > 0 ? x[t]! / p.repetitionPenalty : x[t]! * p.repetitionPenalty;
    }
    for (const [t, n] of history) if (n > 0 && t >= 0 && t < V) x[t] = x[t]! - p.frequencyPenalty * n - p.presencePenalty;
  }

  if (p.temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (x[i]! > x[best]!) best = i;
    return { tokenId: best, logprob: wantLogprob ? logSoftmaxAt(x, best) : NaN };
  }
  let max = -Infinity;
  for (let i = 0; i < V; i++) if ((x[i] = x[i]! / p.temperature) > max) max = x[i]!;
  // x becomes the unnormalized probabilities e = exp(x − max) ∈ (0, 1], the largest exactly 1;
  // mass[b] sums those in (2^−(b+1), 2^−b] (for the top-p bound).
  const mass = new Float64Array(MASS_BUCKETS);
  let all = 0;
  for (let i = 0; i < V; i++) {
    const d = max - x[i]!;
    const e = (x[i] = Math.exp(-d));
    all += e;
    const b = d * Math.LOG2E < MASS_BUCKETS - 1 ? (d * Math.LOG2E) | 0 : MASS_BUCKETS - 1;  // the last bucket takes everything below 2^−63 (and −Infinity logits)
    mass[b] = mass[b]! + e;
  }
  const e = x;
  const logprobOf = (id: number): number => (wantLogprob ? Math.log(e[id]! / all) : NaN);
  const k = p.topK > 0 ? Math.min(p.topK, V) : V;

  let ids: Int32Array;  // the kept tokens, in id order
  if (k < V || p.topP < 1) {
    // Only tokens with e ≥ floor can survive: the k-th largest for top-k; for top-p alone, two
    // buckets below the one where the descending cumulative mass reaches topP (a margin for rounding).
    let floor = 0;
    if (k < V) {
      floor = kthLargest(e, k);
    } else {
      let cumulative = 0;
      let b = 0;
      while (b < MASS_BUCKETS - 1 && (cumulative += mass[b]!) < p.topP * all) b++;
      floor = b + 2 >= MASS_BUCKETS ? 0 : 2 ** -(b + 2);
    }
    const order = descending(e, floor);
    let keep = Math.min(k, order.length);
    if (p.topP < 1) {
      let sum = 0;
      if (k < V) for (let i = 0; i < keep; i++) sum += e[order[i]!]!;
      else sum = all;
      let cumulative = 0;
      for (let i = 0; i < keep; i++) {
        cumulative += e[order[i]!]! / sum;
        if (cumulative >= p.topP) {
          keep = i + 1;
          break;
        }
      }
    }
    ids = order.slice(0, keep).sort();
  } else {
    ids = new Int32Array(V);
    for (let i = 0; i < V; i++) ids[i] = i;
  }
  // min-p: relative to the most likely token (e = 1), which every filter keeps.
  let total = 0;
  let last = -1;
  for (let i = 0; i < ids.length; i++) if (e[ids[i]!]! >= p.minP) total += e[ids[i]!]!;
  let u = drawOf(rng()) * total;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!(e[id]! >= p.minP)) continue;  // (NaN too)
    last = id;
    u -= e[id]!;
    if (u < 0) return { tokenId: id, logprob: logprobOf(id) };
  }
  return { tokenId: last, logprob: logprobOf(last) };
}

const MASS_BUCKETS = 64;

/**
 * The tokens the penalties touch, distinct: each output token with its count, then (for the
 * repetition penalty) each other prompt token with 0 — the history `sample_tokens` takes.
 */
function penaltyHistory(p: { repetitionPenalty: number }, context: SampleContext): Map<number, number> {
  const counts = new Map<number, number>();
  const output = context.output ?? [];
  for (let i = 0; i < output.length; i++) counts.set(output[i]!, (counts.get(output[i]!) ?? 0) + 1);
  if (p.repetitionPenalty !== 1) {
    const prompt = context.prompt ?? [];
    for (let i = 0; i < prompt.length; i++) if (!counts.has(prompt[i]!)) counts.set(prompt[i]!, 0);
  }
  return counts;
}

/** The real-valued parameters rounded to float32, as the device op receives them. */
function atFloat32<T extends Required<Omit<SamplingParams, 'seed'>>>(p: T): T {
  return {
    ...p, temperature: Math.fround(p.temperature), topP: Math.fround(p.topP), minP: Math.fround(p.minP),
    repetitionPenalty: Math.fround(p.repetitionPenalty), presencePenalty: Math.fround(p.presencePenalty), frequencyPenalty: Math.fround(p.frequencyPenalty),
  };
}

/** u ∈ [0, 1) as the device op receives it: floor(u · 2^32) (and back to [0, 1)). */
function drawBits(u: number): number {
  if (!(u >= 0 && u < 1)) throw new InvalidArgumentError(`sampling: a draw must be in [0, 1), got ${String(u)}`);
  return Math.min(0xffffffff, Math.floor(u * 4294967296));
}
function drawOf(u: number): number {
  return drawBits(u) / 4294967296;
}
const f32 = new Float32Array(1);
const f32Bits = new Uint32Array(f32.buffer);

/**
 * Ids with e ≥ floor, most likely first (ties: lower id first), by one native sort of numeric
 * keys: the inverted float32 bits of e (monotone in e) times 2^20 plus the id — exact in a
 * double's 53 bits for vocabularies up to 2^20. Values closer than float32 resolves sort as ties.
 */
function descending(e: Float64Array, floor: number): Int32Array {
  if (e.length > 2 ** 20) throw new InvalidArgumentError(`sampling: vocabularies above ${2 ** 20} tokens are not supported, got ${e.length}`);
  let n = 0;
  for (let i = 0; i < e.length; i++) if (e[i]! >= floor) n++;
  const keys = new Float64Array(n);
  n = 0;
  for (let i = 0; i < e.length; i++) {
    if (e[i]! < floor) continue;
    f32[0] = e[i]!;
    keys[n++] = (0xffffffff - f32Bits[0]!) * 2 ** 20 + i;
  }
  keys.sort();
  const ids = new Int32Array(n);
  for (let i = 0; i < n; i++) ids[i] = keys[i]! % 2 ** 20;
  return ids;
}

/** The k-th largest value of `values` (1-based), by quickselect on a copy. */
function kthLargest(values: Float64Array, k: number): number {
  const a = Float64Array.from(values);
  let lo = 0;
  let hi = a.length - 1;
  const target = k - 1;  // index in descending order
  while (lo < hi) {
    const pivot = a[(lo + hi) >>> 1]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! > pivot) i++;
      while (a[j]! < pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i++] = a[j]!;
        a[j--] = t;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else break;
  }
  return a[target]!;
}

/**
 * `logits` as float64 in a buffer kept between calls (sampleToken's scratch: it runs every step
 * for every sequence, and a fresh 256 KiB-1 MiB array each time is garbage for the collector).
 */
let scratch = new Float64Array(0);
function workingCopy(logits: Float32Array): Float64Array {
  if (scratch.length !== logits.length) scratch = new Float64Array(logits.length);
  scratch.set(logits);
  return scratch;
}

function logSoftmaxAt(x: Float64Array | Float32Array, id: number): number {
  const n = x.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i]! > max) max = x[i]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(x[i]! - max);
  return x[id]! - max - Math.log(sum);
}

// ---- on the device -------------------------------------------------------------------------------

/** One draw of `sampleTokens`. */
export interface SampleRequest {
  /** The row of the logits to draw from (several draws may share a row: n > 1 choices). */
  row: number;
  params: SamplingParams;
  /** u ∈ [0, 1): the generator's next value (unused, and may be 0, when greedy). */
  draw: number;
  /** Prompt and output so far, for the penalties. */
  context?: SampleContext;
}

/**
 * Samples every request's token from `logits` (float32 [rows, vocabSize], rows contiguous) on
 * the logits' device and stream; only the ids (and logprobs when asked) come back. Each request's
 * result is what `sampleToken(logits row, params, () => draw, context)` returns (CPU: the same
 * decisions; CUDA: float32 arithmetic, see include/pagedllm/sampling.h). NaN logits give
 * ERR_INVALID_ARGUMENT naming the row.
 */
export async function sampleTokens(
  logits: Tensor, requests: readonly SampleRequest[], options: { logprobs?: boolean } = {},
): Promise<{ tokenIds: Int32Array; logprobs: Float32Array | null }> {
  const op = 'sampleTokens';
  if (!(logits instanceof Tensor)) throw new InvalidArgumentError(`${op}: logits must be a Tensor`);
  logits.nativeRegion();  // ERR_DISPOSED
  if (logits.dtype !== 'float32' || logits.ndim !== 2) throw new InvalidArgumentError(`${op}: logits must be float32 [rows, vocabSize], got ${logits.dtype} [${logits.shape.join(', ')}]`);
  const [rows, vocab] = logits.shape as [number, number];
  if (vocab === 0) throw new InvalidArgumentError('sampling: empty logits');
  if (vocab > 2 ** 20) throw new InvalidArgumentError(`sampling: vocabularies above ${2 ** 20} tokens are not supported, got ${vocab}`);
  if ((vocab > 1 && logits.strides[1] !== 1) || (rows > 1 && logits.strides[0]! < vocab)) {
    throw new InvalidArgumentError(`${op}: logits must have contiguous rows, got strides [${logits.strides.join(', ')}]`);
  }
  const S = requests.length;
  if (S === 0) return { tokenIds: new Int32Array(0), logprobs: options.logprobs ? new Float32Array(0) : null };
  const packed = new Int32Array(12 * S);
  const floats = new Float32Array(packed.buffer);
  const history: number[] = [];
  requests.forEach((r, i) => {
    if (!Number.isInteger(r.row) || r.row < 0 || r.row >= rows) throw new InvalidArgumentError(`${op}: request ${i} row ${String(r.row)} is outside the logits (${rows} rows)`);
    const p = atFloat32(checkSamplingParams(r.params));
    const penalized = p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
    const begin = history.length / 2;
    if (penalized) for (const [t, n] of penaltyHistory(p, r.context ?? {})) history.push(t, n);
    floats[12 * i] = p.temperature;
    floats[12 * i + 1] = p.topP;
    floats[12 * i + 2] = p.minP;
    floats[12 * i + 3] = p.repetitionPenalty;
    floats[12 * i + 4] = p.presencePenalty;
    floats[12 * i + 5] = p.frequencyPenalty;
    packed[12 * i + 6] = p.topK;
    packed[12 * i + 7] = r.row;
    packed[12 * i + 8] = begin;
    packed[12 * i + 9] = history.length / 2;
    packed[12 * i + 10] = p.temperature === 0 ? 0 : drawBits(r.draw) | 0;
    packed[12 * i + 11] = 0;
  });
  const on = { stream: logits.stream, dtype: 'int32' as const };
  const params = Tensor.fromArray(packed, [S, 12], on);
  const hist = history.length > 0 ? Tensor.fromArray(Int32Array.from(history), [history.length / 2, 2], on) : null;
  const ids = Tensor.empty([S], on);
  const lp = options.logprobs ? Tensor.empty([S], { stream: logits.stream, dtype: 'float32' }) : null;
  try {
    const [histHandle, histOffset] = hist ? hist.nativeRegion() : [null, 0];
    const [lpHandle, lpOffset] = lp ? lp.nativeRegion() : [null, 0];
    native().sampleTokens(
      ...logits.nativeRegion(), ...params.nativeRegion(), histHandle, histOffset, ...ids.nativeRegion(), lpHandle, lpOffset,
      { numRows: rows, logitsStride: rows > 1 ? logits.strides[0]! : vocab, vocabSize: vocab, numSamples: S, numHistory: history.length / 2 },
      logits.stream.handle,
    );
    const tokenIds = (await ids.toArray()) as Int32Array;
    const logprobs = lp ? ((await lp.toArray()) as Float32Array) : null;
    tokenIds.forEach((id, i) => {
      if (id < 0) throw new InvalidArgumentError(`${op}: logits row ${requests[i]!.row} holds NaN: nothing to sample`);
    });
    return { tokenIds, logprobs };
  } finally {
    params.dispose();
    hist?.dispose();
    ids.dispose();
    lp?.dispose();
  }
}
