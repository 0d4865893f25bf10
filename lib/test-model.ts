/**
 * Small random models in the Hugging Face layout, so tests, benchmarks and the
 * demo need no download (issue 7 item 8). `makeTestModel` writes a folder that
 * a loader treats like a real Llama / Mistral / Qwen2 checkpoint:
 *
 *     config.json              architectures, sizes, rms_norm_eps, rope_theta, rope_scaling, tie_word_embeddings, ...
 *     generation_config.json   bos_token_id, eos_token_id (a list for qwen2, as Qwen2 checkpoints have)
 *     model.safetensors        or model-0000i-of-0000n.safetensors + model.safetensors.index.json
 *     tokenizer.json           a byte-level BPE of exactly `vocab` ids (any UTF-8 text encodes)
 *     tokenizer_config.json
 *
 * Tensor names and shapes are HF's (formats.md §5.3; nn.Linear weights are
 * [out_features, in_features]); Qwen2 adds q/k/v biases, tied embeddings
 * leave out `lm_head.weight`. Weights are N(0, initStd²) (biases too), norm
 * weights N(1, 0.05²), like a trained model's scale, so forward passes stay
 * finite. Every tensor's values depend only on the seed and its name, so the
 * same seed gives the same weights however the model is sharded or stored
 * (up to the dtype's rounding).
 *
 * Differences between architectures follow their config classes: Llama
 * (rope_theta 10000, eps 1e-5; 500000 with llama3 scaling), Mistral
 * (`sliding_window`, null unless given), Qwen2 (q/k/v bias, rope_theta 1e6,
 * eps 1e-6, `use_sliding_window` false). `rope_scaling` "llama3" is written
 * the Llama 3.1 way (`rope_type`), "linear" the older way (`type`), so a
 * loader meets both spellings.
 *
 * `awq` makes an AWQ int4 variant: the float model is written to a temporary
 * folder and quantized into `out` by the quantizer (lib/quantize.ts, seeded
 * random calibration tokens), so `out` holds an AutoAWQ GEMM checkpoint
 * (qweight / qzeros / scales, float16 elsewhere, `quantization_config`).
 *
 * @example
 * const model = await makeTestModel({ out: '/tmp/tiny-llama', arch: 'llama', layers: 2, dtype: 'bfloat16' });
 * // node scripts/make-test-model.js --out /tmp/tiny-qwen --arch qwen2 --shards 2
 * const awq = await makeTestModel({ out: '/tmp/tiny-awq', hidden: 128, intermediate: 256, awq: { groupSize: 64 } });
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { float32ToBfloat16, float32ToFloat16 } from './dtype';
import { AWQ_GROUP_SIZES } from './awq';
import { InvalidArgumentError } from './errors';
import { quantizeModel, type QuantizeReport } from './quantize';
import { SafetensorsCheckpoint, dtypeToSafetensors, writeSafetensors, type SafetensorsDType, type SafetensorsTensorData } from './safetensors';

export type TestModelArch = 'llama' | 'mistral' | 'qwen2';
export type TestModelDType = 'float32' | 'float16' | 'bfloat16';
export type TestModelRopeScaling = 'llama3' | 'linear';

export interface TestModelOptions {
  /** The folder to write (created if missing; earlier weight files in it are replaced). */
  out: string;
  /** Default 'llama'. */
  arch?: TestModelArch;
  /** hidden_size, default 64. */
  hidden?: number;
  /** num_hidden_layers, default 2. */
  layers?: number;
  /** num_attention_heads, default 4. */
  heads?: number;
  /** num_key_value_heads, default 2 (must divide heads). */
  kvHeads?: number;
  /** head_dim; written to config.json only when given (default hidden / heads). Must be even (RoPE). */
  headDim?: number;
  /** intermediate_size, default 128. */
  intermediate?: number;
  /** vocab_size = the tokenizer's size, default 512 (at least 259: 3 special tokens and 256 bytes). */
  vocab?: number;
  /** Storage dtype of every tensor, default 'float32'. */
  dtype?: TestModelDType;
  /** tie_word_embeddings: no lm_head.weight. Default false. */
  tie?: boolean;
  /** Mistral only: sliding_window (default null = full attention). */
  slidingWindow?: number;
  ropeScaling?: TestModelRopeScaling;
  /** Default by architecture (see above). */
  ropeTheta?: number;
  /** Default 2048. */
  maxPositionEmbeddings?: number;
  /** Number of safetensors files; > 1 writes an index. Default 1. */
  shards?: number;
  /** Default 0. */
  seed?: number;
  /** Standard deviation of the random weights, default 0.02. */
  initStd?: number;
  /**
   * Quantize to AWQ int4 through the quantizer. groupSize: default the largest of 128, 64, 32
   * dividing every linear's input size (else −1); alphaGrid: the scale search's grid (default 20).
   */
  awq?: { groupSize?: number; alphaGrid?: number };
}

export interface TestModel {
  dir: string;
  /** What config.json holds. */
  config: Record<string, unknown>;
  /** Every file written, relative to `dir`. */
  files: string[];
  /** Every tensor's safetensors dtype and shape, by name. */
  tensors: Record<string, { dtype: SafetensorsDType; shape: number[] }>;
  /** With `awq`: the quantizer's report (AWQ vs round-to-nearest errors). */
  awq?: QuantizeReport;
}

const ARCHITECTURES: Record<TestModelArch, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
};

export const TEST_MODEL_SPECIAL_TOKENS = Object.freeze({ unk: '<unk>', bos: '<s>', eos: '</s>' });
/** Token ids of the special tokens (and so config.json's bos_token_id / eos_token_id). */
export const TEST_MODEL_SPECIAL_IDS = Object.freeze({ unk: 0, bos: 1, eos: 2 });
const SPECIALS = [TEST_MODEL_SPECIAL_TOKENS.unk, TEST_MODEL_SPECIAL_TOKENS.bos, TEST_MODEL_SPECIAL_TOKENS.eos];
/** The smallest vocabulary: the special tokens and one token per byte. */
export const TEST_MODEL_MIN_VOCAB = SPECIALS.length + 256;

// ---- options ----------------------------------------------------------------------------------

function positiveInteger(value: unknown, name: string, fallback: number): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`makeTestModel: ${name} must be a positive integer, got ${String(value)}`);
  return v;
}

interface Resolved {
  out: string;
  arch: TestModelArch;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  headDimGiven: boolean;
  intermediate: number;
  vocab: number;
  dtype: TestModelDType;
  tie: boolean;
  slidingWindow: number | null;
  ropeScaling: TestModelRopeScaling | null;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  shards: number;
  seed: number;
  initStd: number;
  awq: { groupSize: number; alphaGrid: number } | null;
}

/** The largest supported group size dividing every linear's input size (hidden, heads · headDim, intermediate). */
function defaultAwqGroupSize(inputs: number[]): number {
  return [128, 64, 32].find((g) => inputs.every((k) => k % g === 0)) ?? -1;
}

function resolveAwq(options: TestModelOptions, inputs: number[], shards: number): Resolved['awq'] {
  const awq = options.awq;
  if (awq === undefined) return null;
  if (awq === null || typeof awq !== 'object') throw new InvalidArgumentError('makeTestModel: awq must be an object { groupSize?, alphaGrid? }');
  if (shards !== 1) throw new InvalidArgumentError('makeTestModel: awq models are written as one file; leave shards at 1');
  const groupSize = awq.groupSize ?? defaultAwqGroupSize(inputs);
  if (!AWQ_GROUP_SIZES.includes(groupSize)) throw new InvalidArgumentError(`makeTestModel: awq.groupSize must be one of ${AWQ_GROUP_SIZES.join(', ')}, got ${String(awq.groupSize)}`);
  return { groupSize, alphaGrid: positiveInteger(awq.alphaGrid, 'awq.alphaGrid', 20) };
}

function resolveOptions(options: TestModelOptions): Resolved {
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError('makeTestModel expects an options object');
  if (typeof options.out !== 'string' || options.out === '') throw new InvalidArgumentError('makeTestModel: out must be a folder path');
  const arch = options.arch ?? 'llama';
  if (!(arch in ARCHITECTURES)) throw new InvalidArgumentError(`makeTestModel: arch must be one of ${Object.keys(ARCHITECTURES).join(', ')}, got ${JSON.stringify(arch)}`);
  const dtype = options.dtype ?? 'float32';
  if (!['float32', 'float16', 'bfloat16'].includes(dtype)) throw new InvalidArgumentError(`makeTestModel: dtype must be float32, float16 or bfloat16, got ${JSON.stringify(dtype)}`);
  const hidden = positiveInteger(options.hidden, 'hidden', 64);
  const heads = positiveInteger(options.heads, 'heads', 4);
  const kvHeads = positiveInteger(options.kvHeads, 'kvHeads', Math.min(2, heads));
  if (heads % kvHeads !== 0) throw new InvalidArgumentError(`makeTestModel: kvHeads ${kvHeads} must divide heads ${heads}`);
  const headDimGiven = options.headDim !== undefined;
  if (!headDimGiven && hidden % heads !== 0) throw new InvalidArgumentError(`makeTestModel: hidden ${hidden} is not a multiple of heads ${heads}; give headDim`);
  const headDim = positiveInteger(options.headDim, 'headDim', hidden / heads);
  if (headDim % 2 !== 0) throw new InvalidArgumentError(`makeTestModel: headDim ${headDim} must be even (RoPE rotates pairs)`);
  const vocab = positiveInteger(options.vocab, 'vocab', 512);
  if (vocab < TEST_MODEL_MIN_VOCAB) throw new InvalidArgumentError(`makeTestModel: vocab ${vocab} is too small: the tokenizer needs ${TEST_MODEL_MIN_VOCAB} (3 special tokens and 256 bytes)`);
  let slidingWindow: number | null = null;
  if (options.slidingWindow !== undefined) {
    if (arch !== 'mistral') throw new InvalidArgumentError(`makeTestModel: slidingWindow is for mistral models, not ${arch}`);
    slidingWindow = positiveInteger(options.slidingWindow, 'slidingWindow', 0);
  }
  const ropeScaling = options.ropeScaling ?? null;
  if (ropeScaling !== null && ropeScaling !== 'llama3' && ropeScaling !== 'linear') {
    throw new InvalidArgumentError(`makeTestModel: ropeScaling must be llama3 or linear, got ${JSON.stringify(ropeScaling)}`);
  }
  const defaultTheta = arch === 'qwen2' ? 1_000_000 : ropeScaling === 'llama3' ? 500_000 : 10_000;
  const ropeTheta = options.ropeTheta ?? defaultTheta;
  if (typeof ropeTheta !== 'number' || !(ropeTheta > 0)) throw new InvalidArgumentError(`makeTestModel: ropeTheta must be a positive number, got ${String(options.ropeTheta)}`);
  const initStd = options.initStd ?? 0.02;
  if (typeof initStd !== 'number' || !(initStd > 0) || !Number.isFinite(initStd)) throw new InvalidArgumentError(`makeTestModel: initStd must be a positive number, got ${String(options.initStd)}`);
  const seed = options.seed ?? 0;
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed)) throw new InvalidArgumentError(`makeTestModel: seed must be an integer, got ${String(options.seed)}`);
  const intermediate = positiveInteger(options.intermediate, 'intermediate', 128);
  const shards = positiveInteger(options.shards, 'shards', 1);
  return {
    out: options.out,
    arch,
    hidden,
    layers: positiveInteger(options.layers, 'layers', 2),
    heads,
    kvHeads,
    headDim,
    headDimGiven,
    intermediate,
    vocab,
    dtype,
    tie: options.tie ?? false,
    slidingWindow,
    ropeScaling,
    ropeTheta,
    maxPositionEmbeddings: positiveInteger(options.maxPositionEmbeddings, 'maxPositionEmbeddings', 2048),
    shards,
    seed,
    initStd,
    awq: resolveAwq(options, [hidden, heads * headDim, intermediate], shards),
  };
}

// ---- config files -------------------------------------------------------------------------------

function ropeScalingConfig(o: Resolved): Record<string, unknown> | null {
  if (o.ropeScaling === 'llama3') {
    // Llama 3.1's factors; the original context is max_position_embeddings / factor, so that with
    // a small head_dim some frequencies are scaled, some blended and some kept.
    return { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: Math.max(1, Math.floor(o.maxPositionEmbeddings / 8)), rope_type: 'llama3' };
  }
  if (o.ropeScaling === 'linear') return { type: 'linear', factor: 2.0 };
  return null;
}

function modelConfig(o: Resolved): Record<string, unknown> {
  const config: Record<string, unknown> = {
    architectures: [ARCHITECTURES[o.arch]],
    model_type: o.arch,
    vocab_size: o.vocab,
    hidden_size: o.hidden,
    intermediate_size: o.intermediate,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kvHeads,
  };
  if (o.headDimGiven) config.head_dim = o.headDim;
  Object.assign(config, {
    hidden_act: 'silu',
    max_position_embeddings: o.maxPositionEmbeddings,
    initializer_range: o.initStd,
    rms_norm_eps: o.arch === 'qwen2' ? 1e-6 : 1e-5,
    rope_theta: o.ropeTheta,
    rope_scaling: ropeScalingConfig(o),
    tie_word_embeddings: o.tie,
    attention_dropout: 0.0,
    bos_token_id: TEST_MODEL_SPECIAL_IDS.bos,
    eos_token_id: TEST_MODEL_SPECIAL_IDS.eos,
    torch_dtype: o.dtype,
    use_cache: true,
  });
  if (o.arch === 'llama') Object.assign(config, { attention_bias: false, mlp_bias: false, pretraining_tp: 1 });
  if (o.arch === 'mistral') config.sliding_window = o.slidingWindow;
  if (o.arch === 'qwen2') Object.assign(config, { use_sliding_window: false, sliding_window: null, max_window_layers: o.layers });
  return config;
}

function generationConfig(o: Resolved): Record<string, unknown> {
  return {
    bos_token_id: TEST_MODEL_SPECIAL_IDS.bos,
    eos_token_id: o.arch === 'qwen2' ? [TEST_MODEL_SPECIAL_IDS.eos] : TEST_MODEL_SPECIAL_IDS.eos,
  };
}

// ---- weights ------------------------------------------------------------------------------------

/** Tensor names and shapes in the module order of HF's modeling code. */
function tensorLayout(o: Resolved): { name: string; shape: number[]; kind: 'linear' | 'bias' | 'norm' | 'embedding' }[] {
  const { hidden, intermediate, heads, kvHeads, headDim, vocab } = o;
  const list: { name: string; shape: number[]; kind: 'linear' | 'bias' | 'norm' | 'embedding' }[] = [
    { name: 'model.embed_tokens.weight', shape: [vocab, hidden], kind: 'embedding' },
  ];
  for (let i = 0; i < o.layers; i++) {
    const p = `model.layers.${i}`;
    list.push({ name: `${p}.input_layernorm.weight`, shape: [hidden], kind: 'norm' });
    for (const [proj, out] of [['q_proj', heads * headDim], ['k_proj', kvHeads * headDim], ['v_proj', kvHeads * headDim]] as const) {
      list.push({ name: `${p}.self_attn.${proj}.weight`, shape: [out, hidden], kind: 'linear' });
      if (o.arch === 'qwen2') list.push({ name: `${p}.self_attn.${proj}.bias`, shape: [out], kind: 'bias' });
    }
    list.push({ name: `${p}.self_attn.o_proj.weight`, shape: [hidden, heads * headDim], kind: 'linear' });
    list.push({ name: `${p}.post_attention_layernorm.weight`, shape: [hidden], kind: 'norm' });
    list.push({ name: `${p}.mlp.gate_proj.weight`, shape: [intermediate, hidden], kind: 'linear' });
    list.push({ name: `${p}.mlp.up_proj.weight`, shape: [intermediate, hidden], kind: 'linear' });
    list.push({ name: `${p}.mlp.down_proj.weight`, shape: [hidden, intermediate], kind: 'linear' });
  }
  list.push({ name: 'model.norm.weight', shape: [hidden], kind: 'norm' });
  if (!o.tie) list.push({ name: 'lm_head.weight', shape: [vocab, hidden], kind: 'linear' });
  return list;
}

/** Uniform numbers in [0, 1): a Weyl sequence through the murmur3 finalizer (32-bit state). */
function uniformSource(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 2 ** 32;
  };
}

/** FNV-1a of `text` mixed with `seed`: each tensor's own stream. */
function tensorSeed(seed: number, text: string): number {
  let h = (0x811c9dc5 ^ Math.imul(seed | 0, 0x01000193) ^ Math.floor(seed / 2 ** 32)) >>> 0;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** `count` normal samples N(mean, std²) (Box–Muller), as float32. */
function normals(count: number, mean: number, std: number, seed: number): Float32Array {
  const uniform = uniformSource(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(1 - uniform())); // 1 − u ∈ (0, 1]
    const angle = 2 * Math.PI * uniform();
    out[i] = mean + std * radius * Math.cos(angle);
    if (i + 1 < count) out[i + 1] = mean + std * radius * Math.sin(angle);
  }
  return out;
}

function storage(values: Float32Array, dtype: TestModelDType): ArrayBufferView {
  if (dtype === 'float16') return float32ToFloat16(values);
  if (dtype === 'bfloat16') return float32ToBfloat16(values);
  return values;
}

/** Splits tensors (in order) over `shards` files of about equal size, none empty. */
function assignShards(sizes: number[], shards: number): number[] {
  const total = sizes.reduce((a, b) => a + b, 0);
  const shardOf: number[] = [];
  let shard = 0;
  let filled = 0;
  let inShard = 0;
  for (let i = 0; i < sizes.length; i++) {
    const shardsAfter = shards - shard - 1;
    if (inShard > 0 && shardsAfter > 0 && (filled >= ((shard + 1) * total) / shards || sizes.length - i === shardsAfter)) {
      shard++;
      inShard = 0;
    }
    shardOf.push(shard);
    filled += sizes[i]!;
    inShard++;
  }
  return shardOf;
}

function shardName(i: number, n: number): string {
  const pad = (k: number): string => String(k).padStart(5, '0');
  return `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
}

// ---- the tokenizer ----------------------------------------------------------------------------

/**
 * GPT-2's reversible map of bytes to printable characters, which byte-level
 * BPE works on: printable Latin-1 bytes stand for themselves, the others
 * (controls, space, ...) take the characters from U+0100 on, in byte order.
 */
function byteSymbols(): string[] {
  const printable = (b: number): boolean => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const symbols: string[] = [];
  let next = 0x100;
  for (let b = 0; b < 256; b++) symbols.push(String.fromCharCode(printable(b) ? b : next++));
  return symbols;
}

// GPT-2's pre-tokenizer pattern (the ByteLevel pre-tokenizer's): words, numbers, punctuation, spaces.
const PRE_TOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

// Text the merges are learned from: several scripts, so that some tokens hold
// part of a multi-byte character (a stream decoder must wait for the rest).
const CORPUS = [
  'The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs into the forest.',
  'A paged cache keeps the keys and values of every sequence in blocks; when the blocks run out, the scheduler waits.',
  'There is a cat on the mat, and there is a hat on the cat. That is the thing that they did in the end.',
  'function add(a, b) { return a + b; } const total = add(40, 2); console.log(total); // 42',
  'In 2024 there were 365 days, 52 weeks and 12 months; 3.14159 is close to pi, and 2.71828 is close to e.',
  'Ünïcödé têxt: café, naïve, façade, déjà vu, smörgåsbord, Straße, Ærø, jalapeño, piñata.',
  'Привет, мир! Это пример текста на русском языке, и ещё один пример текста.',
  '日本語のテキストです。これは日本語の例です。日本語の文字は三バイトです。',
  '你好，世界！这是中文的例子。中文的文字也是三个字节。你好，你好，世界。',
  '한국어 텍스트입니다. 한국어 예문입니다.',
  'Emoji: 🙂🙂 🚀🚀 🎉🎉 👍👍 ❤️❤️ — four bytes each, and some with a variation selector.',
  'We think, therefore we are; we learn, therefore we grow; we test, therefore we know.',
].join('\n');

/**
 * Learns byte-level BPE merges from CORPUS (most frequent pair first, ties by
 * the pair's text), at most `maxMerges`, stopping when no pair occurs twice.
 */
function learnMerges(symbols: string[], maxMerges: number): [string, string][] {
  const encoder = new TextEncoder();
  const counts = new Map<string, number>();
  for (const piece of CORPUS.match(PRE_TOKENIZE) ?? []) {
    const word = Array.from(encoder.encode(piece), (b) => symbols[b]!).join('');
    counts.set(word, (counts.get(word) ?? 0) + 1);
  }
  const words = [...counts].map(([word, count]) => ({ parts: Array.from(word), count }));
  const merges: [string, string][] = [];
  while (merges.length < maxMerges) {
    // Pairs keyed "left right": byte symbols never include a space.
    const pairs = new Map<string, number>();
    for (const { parts, count } of words) {
      for (let i = 0; i + 1 < parts.length; i++) {
        const key = `${parts[i]} ${parts[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + count);
      }
    }
    let best: string | null = null;
    let bestCount = 1;
    for (const [key, count] of pairs) {
      if (count > bestCount || (count === bestCount && best !== null && key < best)) {
        best = key;
        bestCount = count;
      }
    }
    if (best === null) break;
    const [left, right] = best.split(' ') as [string, string];
    merges.push([left, right]);
    for (const word of words) {
      const merged: string[] = [];
      for (let i = 0; i < word.parts.length; i++) {
        if (word.parts[i] === left && word.parts[i + 1] === right) {
          merged.push(left + right);
          i++;
        } else merged.push(word.parts[i]!);
      }
      word.parts = merged;
    }
  }
  return merges;
}

/**
 * tokenizer.json and tokenizer_config.json of a byte-level BPE with exactly
 * `vocabSize` ids: 0 `<unk>`, 1 `<s>` (BOS, added in front of every encoded
 * text), 2 `</s>` (EOS), 3–258 the bytes 0x00–0xff, then merges learned from
 * a small multilingual text and, past those, merges of rarely seen byte pairs
 * that fill the vocabulary deterministically.
 */
export function makeTestTokenizer(vocabSize: number, maxPositionEmbeddings = 2048): { tokenizer: Record<string, unknown>; tokenizerConfig: Record<string, unknown> } {
  if (!Number.isSafeInteger(vocabSize) || vocabSize < TEST_MODEL_MIN_VOCAB) {
    throw new InvalidArgumentError(`makeTestTokenizer: vocabSize must be an integer of at least ${TEST_MODEL_MIN_VOCAB}, got ${vocabSize}`);
  }
  const symbols = byteSymbols();
  const vocab = new Map<string, number>();
  SPECIALS.forEach((token, id) => vocab.set(token, id));
  for (const s of symbols) vocab.set(s, vocab.size);
  const merges: [string, string][] = [];
  for (const [left, right] of learnMerges(symbols, vocabSize - vocab.size)) {
    if (vocab.size >= vocabSize) break;
    merges.push([left, right]);
    if (!vocab.has(left + right)) vocab.set(left + right, vocab.size);
  }
  // Fill: each token so far followed by each byte, in id order, while ids remain.
  const bases = [...vocab.keys()].slice(SPECIALS.length);
  for (let i = 0; vocab.size < vocabSize; i++) {
    const base = bases[i]!;
    for (let b = 0; b < 256 && vocab.size < vocabSize; b++) {
      const token = base + symbols[b]!;
      if (vocab.has(token)) continue;
      merges.push([base, symbols[b]!]);
      vocab.set(token, vocab.size);
      bases.push(token);
    }
  }
  const added = SPECIALS.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const bos = TEST_MODEL_SPECIAL_TOKENS.bos;
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { [bos]: { id: bos, ids: [TEST_MODEL_SPECIAL_IDS.bos], tokens: [bos] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: TEST_MODEL_SPECIAL_TOKENS.unk,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges: merges.map(([l, r]) => `${l} ${r}`),
    },
  };
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: TEST_MODEL_SPECIAL_TOKENS.bos,
    eos_token: TEST_MODEL_SPECIAL_TOKENS.eos,
    unk_token: TEST_MODEL_SPECIAL_TOKENS.unk,
    pad_token: null,
    clean_up_tokenization_spaces: false,
    model_max_length: maxPositionEmbeddings,
    tokenizer_class: 'PreTrainedTokenizerFast',
    added_tokens_decoder: Object.fromEntries(added.map(({ id, ...token }) => [String(id), token])),
  };
  return { tokenizer, tokenizerConfig };
}

// ---- the folder -------------------------------------------------------------------------------

async function writeJson(file: string, value: unknown): Promise<void> {
  await fs.promises.writeFile(file, JSON.stringify(value, null, 2) + '\n');
}

/** Writes a random model folder (see the module comment) and describes it. */
export async function makeTestModel(options: TestModelOptions): Promise<TestModel> {
  const o = resolveOptions(options);
  return o.awq ? writeAwqModel(o, o.awq) : writeFloatModel(o);
}

/** The float model in a temporary folder, quantized into `out`. */
async function writeAwqModel(o: Resolved, awq: NonNullable<Resolved['awq']>): Promise<TestModel> {
  const floatDir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'pagedllm-test-model-float-'));
  try {
    const float = await writeFloatModel({ ...o, out: floatDir, awq: null });
    const report = await quantizeModel({ model: floatDir, out: o.out, groupSize: awq.groupSize, alphaGrid: awq.alphaGrid, seed: o.seed });
    const checkpoint = await SafetensorsCheckpoint.open(o.out);
    const tensors: TestModel['tensors'] = {};
    try {
      for (const name of checkpoint.names()) tensors[name] = { dtype: checkpoint.info(name).dtype, shape: checkpoint.info(name).shape.slice() };
    } finally {
      await checkpoint.close();
    }
    const config = JSON.parse(await fs.promises.readFile(path.join(o.out, 'config.json'), 'utf8')) as Record<string, unknown>;
    const files = ['model.safetensors', ...float.files.filter((f) => !f.endsWith('.safetensors') && f !== 'model.safetensors.index.json')];
    return { dir: o.out, config, files, tensors, awq: report };
  } finally {
    await fs.promises.rm(floatDir, { recursive: true, force: true });
  }
}

async function writeFloatModel(o: Resolved): Promise<TestModel> {
  const layout = tensorLayout(o);
  if (o.shards > layout.length) throw new InvalidArgumentError(`makeTestModel: shards ${o.shards} is more than the ${layout.length} tensors`);
  const dir = o.out;
  await fs.promises.mkdir(dir, { recursive: true });
  // Weight files of an earlier model here would be read with these.
  for (const f of await fs.promises.readdir(dir)) {
    if (f === 'model.safetensors' || f === 'model.safetensors.index.json' || /^model-\d+-of-\d+\.safetensors$/.test(f)) await fs.promises.rm(path.join(dir, f));
  }

  const stDType = dtypeToSafetensors(o.dtype);
  const tensors: Record<string, { dtype: SafetensorsDType; shape: number[] }> = {};
  const data: Record<string, SafetensorsTensorData> = {};
  for (const { name, shape, kind } of layout) {
    const count = shape.reduce((a, b) => a * b, 1);
    const mean = kind === 'norm' ? 1 : 0;
    const std = kind === 'norm' ? 0.05 : o.initStd;
    data[name] = { dtype: stDType, shape, data: storage(normals(count, mean, std, tensorSeed(o.seed, name)), o.dtype) };
    tensors[name] = { dtype: stDType, shape };
  }

  const files: string[] = [];
  const metadata = { format: 'pt' };
  if (o.shards === 1) {
    await writeSafetensors(path.join(dir, 'model.safetensors'), data, metadata);
    files.push('model.safetensors');
  } else {
    const shardOf = assignShards(layout.map((t) => data[t.name]!.data.byteLength), o.shards);
    const weightMap: Record<string, string> = {};
    for (let s = 0; s < o.shards; s++) {
      const file = shardName(s, o.shards);
      const part: Record<string, SafetensorsTensorData> = {};
      layout.forEach((t, i) => {
        if (shardOf[i] === s) {
          part[t.name] = data[t.name]!;
          weightMap[t.name] = file;
        }
      });
      await writeSafetensors(path.join(dir, file), part, metadata);
      files.push(file);
    }
    const totalSize = layout.reduce((n, t) => n + data[t.name]!.data.byteLength, 0);
    const sortedMap = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]!]));
    await writeJson(path.join(dir, 'model.safetensors.index.json'), { metadata: { total_size: totalSize }, weight_map: sortedMap });
    files.push('model.safetensors.index.json');
  }

  const config = modelConfig(o);
  await writeJson(path.join(dir, 'config.json'), config);
  await writeJson(path.join(dir, 'generation_config.json'), generationConfig(o));
  const { tokenizer, tokenizerConfig } = makeTestTokenizer(o.vocab, o.maxPositionEmbeddings);
  await writeJson(path.join(dir, 'tokenizer.json'), tokenizer);
  await writeJson(path.join(dir, 'tokenizer_config.json'), tokenizerConfig);
  files.push('config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json');
  return { dir, config, files, tensors };
}
