/**
 * AWQ int4 quantization of a float Llama-family model folder into an AutoAWQ GEMM checkpoint
 * (formats.md §1) that AutoAWQ, vLLM and transformers load: `model.safetensors` with
 * qweight / qzeros / scales for the seven projections of every decoder layer (embeddings, norms,
 * biases and lm_head stay float, stored as float16) and `config.json` with
 * `quantization_config: { quant_method: "awq", bits: 4, group_size, zero_point: true,
 * version: "gemm", modules_to_not_convert: null }`.
 *
 * The method is AutoAWQ's activation-aware scale search (Lin et al., "AWQ", 2023) without its
 * weight clipping search: for each group of linears reading the same input,
 *
 *     q/k/v      (input: input_layernorm's output)            1/s folded into input_layernorm
 *     gate/up    (input: post_attention_layernorm's output)   1/s folded into post_attention_layernorm
 *     down       (input: silu(gate) · up)                     1/s folded into up_proj's output rows
 *     o_proj     (input: attention output)                    1/s folded into v_proj's output rows, only
 *                                                            when each o input is one v output (no GQA)
 *
 * a per-input-channel scale s = mean|x|^α (clamped at 1e-4, divided by sqrt(max(s)·min(s)) as
 * AutoAWQ does) is tried for α = 0, 1/grid, …, (grid − 1)/grid, and the α whose quantized weights
 * Q(W·diag(s))·diag(s)⁻¹ give the least squared error of the group's outputs on the calibration
 * activations wins; columns of W are multiplied by s and the preceding module divided by s, so
 * the float model's function is unchanged. α = 0 is s = 1, plain round-to-nearest, so the search
 * never does worse than RTN on its calibration data. AutoAWQ measures the error at the output of
 * the whole attention or MLP block; this measures it at the linears' own outputs, which needs no
 * re-run of attention and ranks the candidates alike in our tests. Every linear is then quantized
 * with AutoAWQ's round-to-nearest (lib/awq.ts `quantizeRtn`).
 *
 * Activations come from forward passes of the float model (float32, on the CPU, through the fast
 * native ops) with `Model.forward`'s capture hook — the inputs of every linear for the
 * calibration tokens, all from the unquantized model, as AutoAWQ computes them layer by layer.
 * The report compares AWQ with plain RTN on held-out tokens: each linear's output MSE against
 * the float model's (on the float model's activations), and the relative error of the final
 * logits of the whole quantized model.
 *
 * Host memory: the float weights twice (arrays and the model's tensors) plus the calibration
 * activations; models that fit in RAM as float32.
 *
 * @example
 * const report = await quantizeModel({ model: '/models/tiny', out: '/models/tiny-awq', groupSize: 64, calibration: 'corpus.txt' });
 * console.log(report.logitsRelativeError);   // { rtn: 0.031, awq: 0.024 }
 * // pagedllm quantize --model /models/tiny --out /models/tiny-awq --group-size 64 --calibration corpus.txt
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { AWQ_GROUP_SIZES, quantizeRtn, type AwqQuantized } from './awq';
import { BlockManager } from './block-manager';
import { bfloat16ToFloat32, float16ToFloat32, float32ToFloat16 } from './dtype';
import { InvalidArgumentError, ModelFormatError, UnsupportedError } from './errors';
import { readJsonObject, type JsonObject } from './json-file';
import { KvCache } from './kv-cache';
import { Model, parseLlamaConfig, type LlamaConfig } from './model';
import { linear } from './ops';
import { SafetensorsCheckpoint, writeSafetensors, type SafetensorsTensorData } from './safetensors';
import { Tensor } from './tensor';
import { Tokenizer } from './tokenizer';

export interface QuantizeOptions {
  /** The float model folder (config.json, *.safetensors, tokenizer files). */
  model: string;
  /** The folder to write (created if missing; weight files already in it are replaced). */
  out: string;
  /** 32, 64, 128 (default) or −1 (one group per layer). */
  groupSize?: number;
  /**
   * Calibration data: a text file (encoded with the model's tokenizer.json) or comma-separated
   * token ids. Default: `randomTokens` seeded random ids (random text calibrates poorly on a
   * trained model; the report says which was used).
   */
  calibration?: string;
  /** Calibration token ids (instead of `calibration`). */
  calibrationTokens?: readonly number[];
  /** Token ids to measure the errors on. Default: the last quarter of the calibration tokens, held back; seeded random ids with random calibration. */
  heldOutTokens?: readonly number[];
  /** Number of α values tried in [0, 1). Default 20 (AutoAWQ's n_grid); 1 is plain round-to-nearest. */
  alphaGrid?: number;
  /** Tokens per forward pass (the calibration is cut into sequences of this length). Default min(512, max_position_embeddings). */
  sequenceLength?: number;
  /** Random calibration: this many tokens (default 512), and a quarter as many held out. */
  randomTokens?: number;
  /** Seed of the random tokens. Default 0. */
  seed?: number;
  onProgress?: (progress: QuantizeProgress) => void;
  /** Called with each linear as it is quantized (its tensors and reconstruction, after the folded scales). */
  onLinear?: (name: string, quantized: QuantizedLinear) => void;
}

export interface QuantizeProgress {
  stage: 'load' | 'calibrate' | 'search' | 'quantize' | 'evaluate' | 'write';
  /** The decoder layer being searched (stage 'search'). */
  layer?: number;
  numLayers: number;
}

export interface QuantizedLinearReport {
  /** Module name, e.g. "model.layers.0.self_attn.q_proj". */
  name: string;
  inFeatures: number;
  outFeatures: number;
  /** The α chosen for this linear's group; null where no scale can be folded (o_proj under GQA): plain RTN. */
  alpha: number | null;
  /** Mean squared output error on the held-out tokens, against the float linear on the float model's activations. */
  heldOutMseRtn: number;
  heldOutMseAwq: number;
}

export interface QuantizeReport {
  out: string;
  groupSize: number;
  alphaGrid: number;
  calibration: { source: 'text' | 'token-ids' | 'random'; tokens: number; sequences: number };
  heldOut: { source: 'given' | 'held-back' | 'random'; tokens: number };
  linears: QuantizedLinearReport[];
  /** ‖logits − float logits‖ / ‖float logits‖ over every held-out position. */
  logitsRelativeError: { rtn: number; awq: number };
  /** Sums of the held-out output MSEs over all linears. */
  totalMse: { rtn: number; awq: number };
  seconds: number;
}

const PROJECTIONS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'] as const;
/** Tokenizer and generation files copied next to the quantized weights. */
const SIDE_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'added_tokens.json', 'vocab.json', 'merges.txt', 'generation_config.json'];
const FP16_MAX = 65504;

// ---- options ------------------------------------------------------------------------------

function positiveInteger(value: unknown, name: string, fallback: number): number {
  const v = value ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`quantizeModel: ${name} must be a positive integer, got ${String(value)}`);
  return v;
}

function checkIds(ids: unknown, what: string, vocab: number): number[] {
  if (!Array.isArray(ids) && !(ArrayBuffer.isView(ids) && Object.prototype.toString.call(ids) === '[object Int32Array]')) throw new InvalidArgumentError(`quantizeModel: ${what} must be an array of token ids`);
  const list = Array.from(ids as ArrayLike<unknown>);
  list.forEach((id, i) => {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || id >= vocab) {
      throw new InvalidArgumentError(`quantizeModel: ${what}[${i}] = ${String(id)} is not a token id of this model (vocabulary ${vocab})`);
    }
  });
  return list as number[];
}

/** A seeded PRNG (mulberry32): random calibration tokens reproduce. */
function randomIds(count: number, vocab: number, seed: number): number[] {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Array.from({ length: count }, () => Math.floor(next() * vocab));
}

interface TokenPlan {
  calibration: number[];
  heldOut: number[];
  calibrationSource: QuantizeReport['calibration']['source'];
  heldOutSource: QuantizeReport['heldOut']['source'];
}

async function planTokens(options: QuantizeOptions, config: LlamaConfig): Promise<TokenPlan> {
  const vocab = config.vocabSize;
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new InvalidArgumentError(`quantizeModel: seed must be an integer, got ${String(options.seed)}`);
  if (options.calibration !== undefined && options.calibrationTokens !== undefined) throw new InvalidArgumentError('quantizeModel: give calibration or calibrationTokens, not both');
  let ids: number[] | null = null;
  let source: TokenPlan['calibrationSource'] = 'random';
  if (options.calibrationTokens !== undefined) {
    ids = checkIds(options.calibrationTokens, 'calibrationTokens', vocab);
    source = 'token-ids';
  } else if (options.calibration !== undefined) {
    const c = options.calibration;
    if (typeof c !== 'string' || c === '') throw new InvalidArgumentError('quantizeModel: calibration must be a text file path or comma-separated token ids');
    if (fs.existsSync(c) && fs.statSync(c).isFile()) {
      const tokenizer = await Tokenizer.fromFolder(options.model);
      ids = checkIds(tokenizer.encode(await fs.promises.readFile(c, 'utf8')), `the tokens of ${c}`, vocab);
      source = 'text';
    } else if (/^\s*\d+(\s*,\s*\d+)*\s*$/.test(c)) {
      ids = checkIds(c.split(',').map((t) => Number(t)), 'calibration', vocab);
      source = 'token-ids';
    } else {
      throw new InvalidArgumentError(`quantizeModel: calibration ${JSON.stringify(c.length > 80 ? c.slice(0, 80) + '…' : c)} is neither a file nor comma-separated token ids`);
    }
  }
  const random = positiveInteger(options.randomTokens, 'randomTokens', 512);
  let heldOut: number[];
  let heldOutSource: TokenPlan['heldOutSource'];
  if (options.heldOutTokens !== undefined) {
    heldOut = checkIds(options.heldOutTokens, 'heldOutTokens', vocab);
    heldOutSource = 'given';
  } else if (ids) {
    // Hold back the last quarter: errors measured on tokens the search did not see.
    const cut = Math.ceil(ids.length * 0.75);
    heldOut = ids.slice(cut);
    ids = ids.slice(0, cut);
    heldOutSource = 'held-back';
  } else {
    heldOut = randomIds(Math.max(1, Math.ceil(random / 4)), vocab, seed + 1);
    heldOutSource = 'random';
  }
  const calibration = ids ?? randomIds(random, vocab, seed);
  if (calibration.length < 2) throw new InvalidArgumentError(`quantizeModel: the calibration has ${calibration.length} tokens (after holding some back); give at least 2`);
  if (heldOut.length < 1) throw new InvalidArgumentError('quantizeModel: no held-out tokens; give more calibration tokens or heldOutTokens');
  return { calibration, heldOut, calibrationSource: source, heldOutSource };
}

// ---- weights and models -------------------------------------------------------------------------

/** Every tensor of a float checkpoint as float32 host arrays, with its shape. */
interface FloatWeights {
  arrays: Map<string, Float32Array>;
  shapes: Map<string, number[]>;
}

async function readFloatWeights(dir: string): Promise<FloatWeights> {
  const checkpoint = await SafetensorsCheckpoint.open(dir);
  try {
    const arrays = new Map<string, Float32Array>();
    const shapes = new Map<string, number[]>();
    for (const name of checkpoint.names()) {
      if (name.endsWith('rotary_emb.inv_freq')) continue;
      const info = checkpoint.info(name);
      const data = await checkpoint.readArray(name);
      let values: Float32Array;
      if (info.dtype === 'F32') values = data as Float32Array;
      else if (info.dtype === 'F16') values = float16ToFloat32(data as Uint16Array);
      else if (info.dtype === 'BF16') values = bfloat16ToFloat32(data as Uint16Array);
      else throw new ModelFormatError(`${checkpoint.location}: tensor "${name}" is ${info.dtype}; a float model (F32, F16, BF16) is needed to quantize`);
      arrays.set(name, values);
      shapes.set(name, info.shape.slice());
    }
    return { arrays, shapes };
  } finally {
    await checkpoint.close();
  }
}

/** A float32 CPU model of `weights` (Model checks the names and shapes against the config). */
function buildModel(raw: JsonObject, weights: FloatWeights, source: string): Model {
  const tensors = new Map<string, Tensor>();
  try {
    for (const [name, values] of weights.arrays) tensors.set(name, Tensor.fromArray(values, weights.shapes.get(name)!, { device: 'cpu', category: 'weights' }));
  } catch (error) {
    for (const t of tensors.values()) t.dispose();
    throw error;
  }
  return Model.fromWeights(raw, tensors, { source });
}

function roundToFloat16(values: Float32Array): Float32Array {
  return float16ToFloat32(float32ToFloat16(values));
}

/**
 * Runs `tokens` through `model` in sequences of `sequenceLength` (each from position 0): the
 * logits [tokens, vocab], and the input of every linear named in `wanted` as float32
 * [tokens, in_features].
 */
async function runTokens(
  model: Model, tokens: readonly number[], sequenceLength: number, wanted: ReadonlySet<string>,
): Promise<{ logits: Float32Array; activations: Map<string, Float32Array> }> {
  const vocab = model.config.vocabSize;
  const logits = new Float32Array(tokens.length * vocab);
  const parts = new Map<string, Float32Array[]>();
  const blockSize = 16;
  for (let start = 0; start < tokens.length; start += sequenceLength) {
    const ids = tokens.slice(start, start + sequenceLength);
    const L = ids.length;
    const numBlocks = Math.ceil(L / blockSize) + 1;  // + the BlockManager's null block
    const cache = new KvCache({ ...model.kvCacheShape(), numBlocks, blockSize, kvDtype: 'float32', device: 'cpu' });
    const kept: [string, Tensor][] = [];
    try {
      const blocks = new BlockManager({ numBlocks, blockSize, watermark: 0 });
      const slots = blocks.allocateSlots('calibration', L)!;
      const out = model.forward(cache, {
        tokenIds: Int32Array.from(ids), positions: Int32Array.from(ids, (_, i) => i), slotMapping: slots.slotMapping,
        blockTables: [[...blocks.blockTable('calibration')]], seqLens: [L], cuSeqLensQ: [0, L],
      }, {
        // A view keeps the activation's memory past the step; it is read below.
        capture: (name, input) => {
          if (wanted.has(name)) kept.push([name, input.contiguous()]);
        },
      });
      try {
        logits.set((await out.toArray()) as Float32Array, start * vocab);
      } finally {
        out.dispose();
      }
      for (const [name, t] of kept) {
        const list = parts.get(name) ?? [];
        list.push((await t.toArray()) as Float32Array);
        parts.set(name, list);
      }
    } finally {
      for (const [, t] of kept) t.dispose();
      cache.dispose();
    }
  }
  const activations = new Map<string, Float32Array>();
  for (const [name, list] of parts) activations.set(name, concat(list));
  return { logits, activations };
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Σ over tokens and outputs of (X · Eᵀ)², float64: X [T, K] on the CPU, E [N, K] (a weight error). */
async function outputSquaredError(x: Tensor, error: Float32Array, N: number): Promise<number> {
  const K = x.shape[1]!;
  const e = Tensor.fromArray(error, [N, K], { device: 'cpu' });
  try {
    const y = linear(x, e);
    try {
      let sum = 0;
      for (const v of (await y.toArray()) as Float32Array) sum += v * v;
      return sum;
    } finally {
      y.dispose();
    }
  } finally {
    e.dispose();
  }
}

// ---- the scale search ------------------------------------------------------------------------------

/** One AWQ scaling group: linears sharing an input, and where 1/s is folded. */
interface ScaleGroup {
  linears: string[];
  /** The captured input (the first linear's name). */
  input: string;
  /** The norm weight or the linear (its output rows, and bias) that absorbs 1/s; null: no folding possible, plain RTN. */
  fold: { kind: 'norm'; weight: string } | { kind: 'linear'; name: string } | null;
}

function scaleGroups(c: LlamaConfig, layer: number): ScaleGroup[] {
  const p = `model.layers.${layer}.`;
  return [
    { linears: ['q_proj', 'k_proj', 'v_proj'].map((n) => `${p}self_attn.${n}`), input: `${p}self_attn.q_proj`, fold: { kind: 'norm', weight: `${p}input_layernorm.weight` } },
    // o_proj's input channel j is v_proj's output channel j only without GQA (AutoAWQ checks that the shapes agree).
    { linears: [`${p}self_attn.o_proj`], input: `${p}self_attn.o_proj`, fold: c.numKvHeads === c.numHeads ? { kind: 'linear', name: `${p}self_attn.v_proj` } : null },
    { linears: [`${p}mlp.gate_proj`, `${p}mlp.up_proj`], input: `${p}mlp.gate_proj`, fold: { kind: 'norm', weight: `${p}post_attention_layernorm.weight` } },
    { linears: [`${p}mlp.down_proj`], input: `${p}mlp.down_proj`, fold: { kind: 'linear', name: `${p}mlp.up_proj` } },
  ];
}

/** AutoAWQ's candidate scales for α: mean|x|^α clamped at 1e-4, normalized by sqrt(max · min). */
function awqScales(meanAbs: ArrayLike<number>, alpha: number): Float32Array {
  const s = new Float64Array(meanAbs.length);
  let max = 0, min = Infinity;
  for (let k = 0; k < s.length; k++) {
    const v = Math.max(Math.pow(meanAbs[k]!, alpha), 1e-4);
    s[k] = v;
    if (v > max) max = v;
    if (v < min) min = v;
  }
  const norm = Math.sqrt(max * min);
  return Float32Array.from(s, (v) => {
    const r = v / norm;
    return Number.isFinite(r) ? r : 1;  // AutoAWQ resets inf/NaN scales to 1
  });
}

/** Whether dividing the module that absorbs 1/s still fits float16, the checkpoint's dtype. */
function foldFits(group: ScaleGroup, s: Float32Array, arrays: Map<string, Float32Array>): boolean {
  const fits = (v: Float32Array | undefined, at: (i: number) => number): boolean => !v || v.every((x, i) => Math.abs(x / at(i)) <= FP16_MAX);
  if (!group.fold) return true;
  if (group.fold.kind === 'norm') return fits(arrays.get(group.fold.weight), (k) => s[k]!);
  return fits(arrays.get(`${group.fold.name}.bias`), (j) => s[j]!);
}

interface SearchResult {
  alpha: number;
  scales: Float32Array;
}

/**
 * The α of `grid` whose scales give the group the least output error on `x` (calibration
 * activations [T, K]); its losses are mean squared output errors.
 */
async function searchGroup(group: ScaleGroup, x: Tensor, meanAbs: Float64Array, weights: FloatWeights, groupSize: number, grid: number): Promise<SearchResult> {
  const K = x.shape[1]!, T = x.shape[0]!;
  const N = group.linears.reduce((n, name) => n + weights.shapes.get(`${name}.weight`)![0]!, 0);
  const w = concat(group.linears.map((n) => weights.arrays.get(`${n}.weight`)!));
  let best: SearchResult = { alpha: 0, scales: new Float32Array(K).fill(1) };
  let bestLoss = Infinity;
  for (let i = 0; i < grid; i++) {
    const alpha = i / grid;
    const s = awqScales(meanAbs, alpha);
    if (!foldFits(group, s, weights.arrays)) continue;
    const q = quantizeRtn(scaleMatrix(w, N, K, undefined, s), N, K, groupSize).reconstruction;
    const effective = scaleMatrix(q, N, K, undefined, Float32Array.from(s, (v) => 1 / v));
    for (let j = 0; j < effective.length; j++) effective[j] = w[j]! - effective[j]!;
    const loss = (await outputSquaredError(x, effective, N)) / (T * N);
    if (loss < bestLoss) {
      bestLoss = loss;
      best = { alpha, scales: s };
    }
  }
  return best;
}

// ---- the quantizer --------------------------------------------------------------------------------

/** What the scale search decided: per linear its α and the scales folded into it. */
interface Folding {
  alpha: Map<string, number | null>;
  /** s, which multiplied a linear's input columns. */
  columns: Map<string, Float32Array>;
  /** 1/s of the next group, which multiplied a linear's output rows. */
  rows: Map<string, Float32Array>;
  /** The float tensors (norms, biases, embeddings) with 1/s divided into the folded ones. */
  floats: Map<string, Float32Array>;
}

function meanAbsPerChannel(values: Float32Array, tokens: number): Float64Array {
  const K = values.length / tokens;
  const mean = new Float64Array(K);
  for (let i = 0; i < values.length; i++) mean[i % K] = mean[i % K]! + Math.abs(values[i]!);
  return mean.map((v) => v / tokens);
}

/** Searches every group on the original weights, then folds all scales (AutoAWQ's order too). */
async function searchAndFold(
  groups: ScaleGroup[][], calibration: Map<string, Float32Array>, tokens: number, weights: FloatWeights, groupSize: number, grid: number,
  progress: (layer: number) => void,
): Promise<Folding> {
  const f: Folding = { alpha: new Map(), columns: new Map(), rows: new Map(), floats: new Map(weights.arrays) };
  for (let l = 0; l < groups.length; l++) {
    progress(l);
    for (const group of groups[l]!) {
      if (!group.fold) {
        for (const n of group.linears) f.alpha.set(n, null);
        continue;
      }
      const values = calibration.get(group.input)!;
      const x = Tensor.fromArray(values, [tokens, values.length / tokens], { device: 'cpu' });
      let result: SearchResult;
      try {
        result = await searchGroup(group, x, meanAbsPerChannel(values, tokens), weights, groupSize, grid);
      } finally {
        x.dispose();
      }
      const s = result.scales;
      for (const n of group.linears) {
        f.alpha.set(n, result.alpha);
        f.columns.set(n, s);
      }
      if (group.fold.kind === 'norm') {
        f.floats.set(group.fold.weight, Float32Array.from(f.floats.get(group.fold.weight)!, (v, k) => v / s[k]!));
      } else {
        const inv = Float32Array.from(s, (v) => 1 / v);
        f.rows.set(group.fold.name, inv);
        const bias = f.floats.get(`${group.fold.name}.bias`);
        if (bias) f.floats.set(`${group.fold.name}.bias`, Float32Array.from(bias, (v, j) => v * inv[j]!));
      }
    }
  }
  return f;
}

/** diag(rows) · w · diag(columns) for w [N, K]; either may be absent (1). */
function scaleMatrix(w: Float32Array, N: number, K: number, rows: Float32Array | undefined, columns: Float32Array | undefined): Float32Array {
  if (!rows && !columns) return w;
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    const r = rows ? rows[n]! : 1;
    for (let k = 0; k < K; k++) out[n * K + k] = w[n * K + k]! * r * (columns ? columns[k]! : 1);
  }
  return out;
}

export interface QuantizedLinear extends AwqQuantized {
  inFeatures: number;
  outFeatures: number;
}

interface QuantizedModel {
  /** The checkpoint's tensors. */
  tensors: Record<string, SafetensorsTensorData>;
  /** Every tensor as the checkpoint computes with it (linears: their reconstructions; the rest rounded to float16). */
  dequantized: Map<string, Float32Array>;
  /** Per linear, the weight the checkpoint computes in the original basis (the folded scales undone), for the error report. */
  effective: Map<string, Float32Array>;
}

function quantizeAll(linearNames: string[], weights: FloatWeights, f: Folding, groupSize: number, onLinear?: (name: string, q: QuantizedLinear) => void): QuantizedModel {
  const tensors: Record<string, SafetensorsTensorData> = {};
  const dequantized = new Map<string, Float32Array>();
  const effective = new Map<string, Float32Array>();
  for (const name of linearNames) {
    const [N, K] = weights.shapes.get(`${name}.weight`)! as [number, number];
    const columns = f.columns.get(name), rows = f.rows.get(name);
    const q = quantizeRtn(scaleMatrix(weights.arrays.get(`${name}.weight`)!, N, K, rows, columns), N, K, groupSize);
    onLinear?.(name, { ...q, inFeatures: K, outFeatures: N });
    tensors[`${name}.qweight`] = { dtype: 'I32', shape: [K, N / 8], data: q.qweight };
    tensors[`${name}.qzeros`] = { dtype: 'I32', shape: [q.scales.length / N, N / 8], data: q.qzeros };
    tensors[`${name}.scales`] = { dtype: 'F16', shape: [q.scales.length / N, N], data: q.scales };
    dequantized.set(`${name}.weight`, q.reconstruction);
    const invert = (v: Float32Array | undefined): Float32Array | undefined => v && Float32Array.from(v, (x) => 1 / x);
    effective.set(name, scaleMatrix(q.reconstruction, N, K, invert(rows), invert(columns)));
  }
  // Everything else is stored as float16.
  for (const [name, values] of f.floats) {
    if (dequantized.has(name)) continue;
    const bits = float32ToFloat16(values);
    tensors[name] = { dtype: 'F16', shape: weights.shapes.get(name)!, data: bits };
    dequantized.set(name, float16ToFloat32(bits));
  }
  return { tensors, dequantized, effective };
}

/** Plain round-to-nearest of every linear, float16 elsewhere: the baseline AWQ is compared with. */
function quantizeRtnBaseline(linearNames: string[], weights: FloatWeights, groupSize: number): { dequantized: Map<string, Float32Array>; effective: Map<string, Float32Array> } {
  const dequantized = new Map<string, Float32Array>();
  for (const [name, values] of weights.arrays) dequantized.set(name, roundToFloat16(values));
  const effective = new Map<string, Float32Array>();
  for (const name of linearNames) {
    const [N, K] = weights.shapes.get(`${name}.weight`)! as [number, number];
    const w = quantizeRtn(weights.arrays.get(`${name}.weight`)!, N, K, groupSize).reconstruction;
    effective.set(name, w);
    dequantized.set(`${name}.weight`, w);
  }
  return { dequantized, effective };
}

/** Each linear's mean squared output error on the held-out activations, against the float weight. */
async function linearErrors(name: string, weights: FloatWeights, x: Float32Array, tokens: number, effective: Float32Array[]): Promise<number[]> {
  const [N, K] = weights.shapes.get(`${name}.weight`)! as [number, number];
  const original = weights.arrays.get(`${name}.weight`)!;
  const input = Tensor.fromArray(x, [tokens, K], { device: 'cpu' });
  try {
    const errors: number[] = [];
    for (const w of effective) errors.push((await outputSquaredError(input, Float32Array.from(original, (v, i) => v - w[i]!), N)) / (tokens * N));
    return errors;
  } finally {
    input.dispose();
  }
}

/** The captured input of linear `name` (q/k/v share q's, gate/up share gate's). */
function inputOf(name: string): string {
  return name.replace(/\.self_attn\.[kv]_proj$/, '.self_attn.q_proj').replace(/\.mlp\.up_proj$/, '.mlp.gate_proj');
}

/** Quantizes a float model folder to an AWQ GEMM checkpoint (see the module comment); returns the error report. */
export async function quantizeModel(options: QuantizeOptions): Promise<QuantizeReport> {
  const started = performance.now();
  const { raw, config, groupSize, grid, sequenceLength } = await checkOptions(options);
  const tokens = await planTokens(options, config);
  const progress = (stage: QuantizeProgress['stage'], layer?: number): void => options.onProgress?.({ stage, layer, numLayers: config.numLayers });

  progress('load');
  const weights = await readFloatWeights(options.model);
  const linearNames: string[] = [];
  for (let l = 0; l < config.numLayers; l++) for (const proj of PROJECTIONS) linearNames.push(`model.layers.${l}.${proj}`);
  const groups = Array.from({ length: config.numLayers }, (_, l) => scaleGroups(config, l));
  const inputNames = new Set(linearNames.map(inputOf));

  // Float activations: the calibration's for the search, the held-out tokens' for the report.
  progress('calibrate');
  const floatModel = buildModel(raw, weights, options.model);
  let calibration: Map<string, Float32Array>, heldOut: Map<string, Float32Array>, floatLogits: Float32Array;
  try {
    ({ activations: calibration } = await runTokens(floatModel, tokens.calibration, sequenceLength, inputNames));
    ({ activations: heldOut, logits: floatLogits } = await runTokens(floatModel, tokens.heldOut, sequenceLength, inputNames));
  } finally {
    floatModel.dispose();
  }

  const folding = await searchAndFold(groups, calibration, tokens.calibration.length, weights, groupSize, grid, (l) => progress('search', l));
  calibration.clear();
  progress('quantize');
  const awq = quantizeAll(linearNames, weights, folding, groupSize, options.onLinear);
  const rtn = quantizeRtnBaseline(linearNames, weights, groupSize);

  progress('evaluate');
  const linears: QuantizedLinearReport[] = [];
  for (const name of linearNames) {
    const [N, K] = weights.shapes.get(`${name}.weight`)! as [number, number];
    const [mseRtn, mseAwq] = await linearErrors(name, weights, heldOut.get(inputOf(name))!, tokens.heldOut.length, [rtn.effective.get(name)!, awq.effective.get(name)!]);
    linears.push({ name, inFeatures: K, outFeatures: N, alpha: folding.alpha.get(name) ?? null, heldOutMseRtn: mseRtn!, heldOutMseAwq: mseAwq! });
  }
  const logitsError = async (dequantized: Map<string, Float32Array>): Promise<number> => {
    const model = buildModel(raw, { arrays: dequantized, shapes: weights.shapes }, `${options.out} (evaluation)`);
    try {
      const { logits } = await runTokens(model, tokens.heldOut, sequenceLength, new Set());
      return relativeError(logits, floatLogits);
    } finally {
      model.dispose();
    }
  };
  const logitsRelativeError = { rtn: await logitsError(rtn.dequantized), awq: await logitsError(awq.dequantized) };

  progress('write');
  await writeCheckpoint(options, raw, groupSize, awq.tensors);
  const sum = (key: 'heldOutMseRtn' | 'heldOutMseAwq'): number => linears.reduce((n, r) => n + r[key], 0);
  return {
    out: options.out,
    groupSize,
    alphaGrid: grid,
    calibration: { source: tokens.calibrationSource, tokens: tokens.calibration.length, sequences: Math.ceil(tokens.calibration.length / sequenceLength) },
    heldOut: { source: tokens.heldOutSource, tokens: tokens.heldOut.length },
    linears,
    logitsRelativeError,
    totalMse: { rtn: sum('heldOutMseRtn'), awq: sum('heldOutMseAwq') },
    seconds: (performance.now() - started) / 1000,
  };
}

function relativeError(got: Float32Array, want: Float32Array): number {
  let diff = 0, norm = 0;
  for (let i = 0; i < want.length; i++) {
    diff += (got[i]! - want[i]!) ** 2;
    norm += want[i]! ** 2;
  }
  return Math.sqrt(diff / norm);
}

/** The options checked, and what the model's config fixes. */
async function checkOptions(options: QuantizeOptions): Promise<{ raw: JsonObject; config: LlamaConfig; groupSize: number; grid: number; sequenceLength: number }> {
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError('quantizeModel expects an options object');
  if (typeof options.model !== 'string' || options.model === '') throw new InvalidArgumentError('quantizeModel: model must be a folder path');
  if (typeof options.out !== 'string' || options.out === '') throw new InvalidArgumentError('quantizeModel: out must be a folder path');
  if (path.resolve(options.out) === path.resolve(options.model)) throw new InvalidArgumentError('quantizeModel: out must differ from model (the float weights are read from there)');
  const groupSize = options.groupSize ?? 128;
  if (!AWQ_GROUP_SIZES.includes(groupSize)) throw new InvalidArgumentError(`quantizeModel: groupSize must be one of ${AWQ_GROUP_SIZES.join(', ')}, got ${String(options.groupSize)}`);
  const grid = positiveInteger(options.alphaGrid, 'alphaGrid', 20);
  if (options.onLinear !== undefined && typeof options.onLinear !== 'function') throw new InvalidArgumentError('quantizeModel: onLinear must be a function');

  const configFile = path.join(options.model, 'config.json');
  const raw = await readJsonObject(configFile, 'config.json');
  if (raw.quantization_config !== undefined && raw.quantization_config !== null) {
    throw new UnsupportedError(`${configFile}: the model is already quantized (quantization_config); quantize a float model`);
  }
  const config = parseLlamaConfig(raw, configFile);
  const c = config;
  const qOut = c.numHeads * c.headDim, kvOut = c.numKvHeads * c.headDim;
  const dims: Record<(typeof PROJECTIONS)[number], [number, number]> = {  // [out, in]
    'self_attn.q_proj': [qOut, c.hiddenSize], 'self_attn.k_proj': [kvOut, c.hiddenSize], 'self_attn.v_proj': [kvOut, c.hiddenSize],
    'self_attn.o_proj': [c.hiddenSize, qOut], 'mlp.gate_proj': [c.intermediateSize, c.hiddenSize], 'mlp.up_proj': [c.intermediateSize, c.hiddenSize],
    'mlp.down_proj': [c.hiddenSize, c.intermediateSize],
  };
  for (const [proj, [N, K]] of Object.entries(dims)) {
    if (N % 8 !== 0) throw new UnsupportedError(`quantizeModel: ${proj} has ${N} outputs; AWQ packing needs a multiple of 8`);
    if (groupSize !== -1 && K % groupSize !== 0) {
      const fit = AWQ_GROUP_SIZES.filter((g) => g === -1 || Object.values(dims).every(([, k]) => k % g === 0));
      throw new InvalidArgumentError(`quantizeModel: ${proj} has ${K} inputs, not a multiple of groupSize ${groupSize} (group sizes that fit this model: ${fit.join(', ')})`);
    }
  }
  const sequenceLength = positiveInteger(options.sequenceLength, 'sequenceLength', Math.min(512, c.maxPositionEmbeddings));
  if (sequenceLength > c.maxPositionEmbeddings) throw new InvalidArgumentError(`quantizeModel: sequenceLength ${sequenceLength} exceeds max_position_embeddings ${c.maxPositionEmbeddings}`);
  return { raw, config, groupSize, grid, sequenceLength };
}

/** The AutoAWQ config entry (`AwqConfig.to_transformers_dict`'s keys and defaults). */
export function awqQuantizationConfig(groupSize: number): JsonObject {
  return { quant_method: 'awq', bits: 4, group_size: groupSize, zero_point: true, version: 'gemm', modules_to_not_convert: null };
}

async function writeCheckpoint(options: QuantizeOptions, raw: JsonObject, groupSize: number, tensors: Record<string, SafetensorsTensorData>): Promise<void> {
  const out = options.out;
  await fs.promises.mkdir(out, { recursive: true });
  // Weight files of an earlier model here would be read together with these.
  for (const f of await fs.promises.readdir(out)) {
    if (f === 'model.safetensors.index.json' || f.endsWith('.safetensors')) await fs.promises.rm(path.join(out, f));
  }
  await writeSafetensors(path.join(out, 'model.safetensors'), tensors, { format: 'pt' });
  const config = { ...raw, torch_dtype: 'float16', quantization_config: awqQuantizationConfig(groupSize) };
  await fs.promises.writeFile(path.join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  for (const f of SIDE_FILES) {
    const from = path.join(options.model, f);
    if (fs.existsSync(from)) await fs.promises.copyFile(from, path.join(out, f));
  }
}

// ---- the command ----------------------------------------------------------------------------------

/** Formats a report as the lines `pagedllm quantize` prints. */
export function formatQuantizeReport(r: QuantizeReport): string[] {
  const e = (v: number): string => v.toExponential(3);
  const lines = [
    `wrote an AWQ int4 checkpoint (group size ${r.groupSize}, GEMM layout) to ${r.out} in ${r.seconds.toFixed(1)} s`,
    `calibration: ${r.calibration.tokens} tokens (${r.calibration.source === 'random' ? 'seeded random token ids: no calibration data was given' : r.calibration.source}) in ${r.calibration.sequences} sequence(s); α searched over ${r.alphaGrid} values`,
    `held-out: ${r.heldOut.tokens} tokens (${r.heldOut.source})`,
    `logits relative error vs the float model: RTN ${e(r.logitsRelativeError.rtn)}, AWQ ${e(r.logitsRelativeError.awq)}`,
    `sum of per-linear output MSE: RTN ${e(r.totalMse.rtn)}, AWQ ${e(r.totalMse.awq)}`,
    '',
    `${'linear'.padEnd(36)} ${'α'.padStart(5)} ${'MSE RTN'.padStart(11)} ${'MSE AWQ'.padStart(11)}`,
  ];
  for (const l of r.linears) {
    lines.push(`${l.name.padEnd(36)} ${(l.alpha === null ? '-' : l.alpha.toFixed(2)).padStart(5)} ${e(l.heldOutMseRtn).padStart(11)} ${e(l.heldOutMseAwq).padStart(11)}`);
  }
  return lines;
}

/** `pagedllm quantize`: options as commander parses them; prints the report (or JSON). */
export async function quantizeCommand(o: { model: string; out: string; groupSize?: string; calibration?: string; alphaGrid?: string; seed?: string; json?: boolean }): Promise<QuantizeReport> {
  const int = (text: string | undefined, flag: string): number | undefined => {
    if (text === undefined) return undefined;
    const v = Number(text);
    if (text.trim() === '' || !Number.isSafeInteger(v)) throw new InvalidArgumentError(`${flag}: expected an integer, got ${JSON.stringify(text)}`);
    return v;
  };
  const report = await quantizeModel({
    model: o.model, out: o.out, groupSize: int(o.groupSize, '--group-size'), calibration: o.calibration,
    alphaGrid: int(o.alphaGrid, '--alpha-grid'), seed: int(o.seed, '--seed'),
    onProgress: o.json ? undefined : (p) => {
      if (p.stage === 'search') process.stderr.write(`\rsearching scales: layer ${p.layer! + 1} / ${p.numLayers}`);
      else if (p.stage === 'quantize') process.stderr.write('\n');
    },
  });
  if (o.json) console.log(JSON.stringify(report));
  else for (const line of formatQuantizeReport(report)) console.log(line);
  return report;
}
