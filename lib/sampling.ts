/**
 * Token sampling from one row of logits, with vLLM's parameters and order: repetition,
 * presence and frequency penalties on the raw logits; temperature 0 is greedy; otherwise
 * logits / temperature, then top-k, top-p (nucleus) and min-p filtering of the softmax, and a
 * draw from a seeded generator (the same seed gives the same tokens). Optional logprobs are
 * those of the final distribution (log-softmax after penalties and temperature).
 *
 * This runs on the host over logits the device returned; the CUDA issue moves it on the device
 * so that only the sampled ids cross.
 *
 * @example
 * const rng = samplerRng(42);
 * const id = sampleToken(logits, { temperature: 0.8, topP: 0.95 }, rng, { history: generated });
 */
import { InvalidArgumentError } from './errors';

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

/** Samples one token from `logits` [vocabSize] (not modified). */
export function sampleToken(logits: Float32Array, params: SamplingParams, rng: Rng, context: SampleContext = {}): Sample {
  const p = checkSamplingParams(params);
  const V = logits.length;
  if (V === 0) throw new InvalidArgumentError('sampling: empty logits');
  const x = Float64Array.from(logits);
  // Penalties (vLLM order: repetition on prompt + output, then presence / frequency on output).
  const counts = new Map<number, number>();
  for (const t of Array.from(context.output ?? [])) counts.set(t, (counts.get(t) ?? 0) + 1);
  if (p.repetitionPenalty !== 1) {
    const seen = new Set<number>([...Array.from(context.prompt ?? []), ...counts.keys()]);
    for (const t of seen) if (t >= 0 && t < V) x[t] = x[t]! > 0 ? x[t]! / p.repetitionPenalty : x[t]! * p.repetitionPenalty;
  }
  for (const [t, n] of counts) if (t >= 0 && t < V) x[t] = x[t]! - p.frequencyPenalty * n - p.presencePenalty;

  if (p.temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (x[i]! > x[best]!) best = i;
    return { tokenId: best, logprob: logSoftmaxAt(x, best) };
  }
  for (let i = 0; i < V; i++) x[i] = x[i]! / p.temperature;
  const logprobOf = (id: number): number => logSoftmaxAt(x, id);
  // Candidates by descending logit, then the filters.
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => x[b]! - x[a]! || a - b);
  let keep = p.topK > 0 ? Math.min(p.topK, V) : V;
  const max = x[order[0]!]!;
  const probs = new Float64Array(keep);
  let sum = 0;
  for (let i = 0; i < keep; i++) sum += probs[i] = Math.exp(x[order[i]!]! - max);
  if (p.topP < 1) {
    let cumulative = 0;
    for (let i = 0; i < keep; i++) {
      cumulative += probs[i]! / sum;
      if (cumulative >= p.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p.minP > 0) {
    const floor = p.minP * probs[0]!;  // probs[0] is the largest
    let k = 1;
    while (k < keep && probs[k]! >= floor) k++;
    keep = k;
  }
  let total = 0;
  for (let i = 0; i < keep; i++) total += probs[i]!;
  let u = rng() * total;
  for (let i = 0; i < keep; i++) {
    u -= probs[i]!;
    if (u < 0) return { tokenId: order[i]!, logprob: logprobOf(order[i]!) };
  }
  return { tokenId: order[keep - 1]!, logprob: logprobOf(order[keep - 1]!) };
}

function logSoftmaxAt(x: Float64Array, id: number): number {
  let max = -Infinity;
  for (const v of x) if (v > max) max = v;
  let sum = 0;
  for (const v of x) sum += Math.exp(v - max);
  return x[id]! - max - Math.log(sum);
}
