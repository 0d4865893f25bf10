/**
 * AWQ int4 checkpoints in AutoAWQ's GEMM format (shared/reference/formats.md §1): the config
 * (`quantization_config`), the nibble order, packing, AutoAWQ's round-to-nearest quantizer with
 * a zero point, a reference dequantizer and the shape checks a loader applies to each layer.
 * The same constants live in include/pagedllm/awq.h for the native op.
 *
 * One quantized `nn.Linear(in_features = K, out_features = N)` named `P` is stored as
 *
 *     P.qweight  int32   [K, N/8]       codes q ∈ [0, 15], 8 output columns per word, AWQ order
 *     P.qzeros   int32   [K/G, N/8]     zero points z ∈ [0, 15], packed the same way
 *     P.scales   float16 [K/G, N]       one scale per (group of G input rows, output column)
 *     P.bias     float16 [N]            only if the linear has a bias
 *
 * and dequantizes to W_awq[k, n] = fp16((q[k, n] − z[k / G, n]) · s[k / G, n]), a [K, N] matrix: the
 * transpose of HF's [N, K] `weight`, so y = x · W_awq. The product is exact in float32 and rounded
 * once to float16, which is what vLLM's kernels (and ours) produce (formats.md §1.4).
 *
 * @example
 * const cfg = parseAwqConfig(config.quantization_config, 'config.json');   // { bits: 4, groupSize: 128, ... }
 * const q = quantizeRtn(weight, N, K, awqGroupSize(cfg, K));                 // weight: Float32Array [N, K] (HF)
 * const w = dequantizeAwq(q, N, K, awqGroupSize(cfg, K));                    // Float32Array [K, N] = q.reconstruction transposed
 */

import { f16round, float16ToFloat32, float32ToFloat16 } from './dtype';
import { InvalidArgumentError, ModelFormatError, UnsupportedError } from './errors';
import { isJsonObject } from './json-file';

// ---- the nibble order (formats.md §1.3) --------------------------------------------------------

/**
 * Packing order: nibble slot i (bits 4i .. 4i + 3) of a word holds output column 8c + AWQ_ORDER[i]
 * — the even columns in the low 16 bits, the odd ones in the high 16 bits, which is the order in
 * which AutoAWQ's and vLLM's fp16x2 dequantization (lop3 + magic numbers) emits pairs.
 */
export const AWQ_ORDER: readonly number[] = Object.freeze([0, 2, 4, 6, 1, 3, 5, 7]);
/** Unpacking order, the inverse permutation: output column 8c + j sits in slot AWQ_REVERSE_ORDER[j]. */
export const AWQ_REVERSE_ORDER: readonly number[] = Object.freeze([0, 4, 1, 5, 2, 6, 3, 7]);
/** 4-bit codes per int32 word. */
export const AWQ_PACK_FACTOR = 8;
/** The group sizes supported (−1: one group over all input rows). */
export const AWQ_GROUP_SIZES: readonly number[] = Object.freeze([32, 64, 128, -1]);

/**
 * Packs 4-bit codes `codes` [rows, cols] (row-major, each in [0, 15]) into int32 words
 * [rows, cols / 8] in the AWQ order; qweight and qzeros are both packed this way.
 */
export function packAwq(codes: ArrayLike<number>, rows: number, cols: number): Int32Array {
  checkPackedShape('packAwq', rows, cols);
  if (codes.length !== rows * cols) throw new InvalidArgumentError(`packAwq: expected ${rows} × ${cols} = ${rows * cols} codes, got ${codes.length}`);
  const words = cols / AWQ_PACK_FACTOR;
  const out = new Int32Array(rows * words);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < words; c++) {
      const base = r * cols + c * AWQ_PACK_FACTOR;
      let word = 0;
      for (let i = 0; i < AWQ_PACK_FACTOR; i++) {
        const q = codes[base + AWQ_ORDER[i]!]!;
        if (!Number.isInteger(q) || q < 0 || q > 15) throw new InvalidArgumentError(`packAwq: code [${r}, ${c * 8 + AWQ_ORDER[i]!}] = ${q} is not an integer in [0, 15]`);
        word |= q << (4 * i);
      }
      out[r * words + c] = word;
    }
  }
  return out;
}

/** The codes [rows, cols] of AWQ-packed words `packed` [rows, cols / 8] (the inverse of {@link packAwq}). */
export function unpackAwq(packed: Int32Array, rows: number, cols: number): Uint8Array {
  checkPackedShape('unpackAwq', rows, cols);
  const words = cols / AWQ_PACK_FACTOR;
  if (!isTyped(packed, 'Int32Array') || packed.length !== rows * words) {
    throw new InvalidArgumentError(`unpackAwq: expected an Int32Array of ${rows} × ${words} words, got ${packed?.length}`);
  }
  const out = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < words; c++) {
      const word = packed[r * words + c]!;
      // `>>>` and the mask: a right shift of a negative int32 would bring in sign bits.
      for (let j = 0; j < AWQ_PACK_FACTOR; j++) out[r * cols + c * AWQ_PACK_FACTOR + j] = (word >>> (4 * AWQ_REVERSE_ORDER[j]!)) & 0xf;
    }
  }
  return out;
}

// By tag, not instanceof: arrays may come from another realm (a vm context, the addon's).
function isTyped(value: unknown, tag: string): boolean {
  return ArrayBuffer.isView(value) && Object.prototype.toString.call(value) === `[object ${tag}]`;
}

function checkPackedShape(op: string, rows: number, cols: number): void {
  if (!Number.isSafeInteger(rows) || rows < 0) throw new InvalidArgumentError(`${op}: rows must be a non-negative integer, got ${rows}`);
  if (!Number.isSafeInteger(cols) || cols < 0 || cols % AWQ_PACK_FACTOR !== 0) throw new InvalidArgumentError(`${op}: cols must be a multiple of 8, got ${cols}`);
}

// ---- quantization_config (formats.md §1.6) -----------------------------------------------------

/** `quantization_config` of an AWQ checkpoint, checked. */
export interface AwqConfig {
  bits: 4;
  /** 32, 64, 128, or −1 for one group per layer (see {@link awqGroupSize}). */
  groupSize: number;
  /** Always true: a GEMM checkpoint has qzeros (AutoAWQ cannot pack one without). */
  zeroPoint: true;
  /** The tensor layout. "exllama" and "ipex" name runtime kernels over the GEMM layout and read as "gemm". */
  version: 'gemm';
  /** Substrings of module names that stay unquantized (plain `.weight`); [] for null. */
  modulesToNotConvert: string[];
}

/** Versions whose checkpoints are GEMM-format (transformers' exllama and ipex backends repack GEMM tensors at load). */
const GEMM_LAYOUT_VERSIONS = ['gemm', 'exllama', 'ipex'];
/** Versions with other tensor layouts (formats.md §1.7): rejected rather than misread, which vLLM would do. */
const OTHER_LAYOUT_VERSIONS = ['gemv', 'gemv_fast', 'marlin'];

/**
 * Checks a config.json `quantization_config` for AWQ. Accepts the key spellings of transformers,
 * vLLM and AutoAWQ (`bits` | `w_bit`, `group_size` | `q_group_size`); `bits`, `group_size` and
 * `zero_point` are required (vLLM requires them too), `version` defaults to "gemm" and is
 * case-insensitive. ERR_MODEL_FORMAT for a malformed field, ERR_UNSUPPORTED for a valid setting
 * this package cannot run: another quant_method, bits ≠ 4, zero_point false, a group size
 * outside 32 / 64 / 128 / −1, or a GEMV / GEMV-fast / Marlin layout.
 */
export function parseAwqConfig(raw: unknown, file = 'config.json'): AwqConfig {
  const where = `${file}: quantization_config`;
  const fail = (message: string): never => {
    throw new ModelFormatError(`${where}: ${message}`);
  };
  if (!isJsonObject(raw)) fail(`must be an object, got ${JSON.stringify(raw ?? null)}`);
  const q = raw as Record<string, unknown>;
  const method = q.quant_method;
  if (typeof method !== 'string') fail(`quant_method must be a string, got ${JSON.stringify(method ?? null)}`);
  if ((method as string).toLowerCase() !== 'awq') throw new UnsupportedError(`${where}: quant_method ${JSON.stringify(method)} is not supported (supported: awq)`);

  // One value under either spelling; both present must agree.
  const aliased = (names: [string, string]): unknown => {
    const [a, b] = names;
    const va = q[a], vb = q[b];
    if (va !== undefined && va !== null && vb !== undefined && vb !== null && va !== vb) fail(`${a} (${JSON.stringify(va)}) and ${b} (${JSON.stringify(vb)}) disagree`);
    const v = va ?? vb;
    if (v === undefined || v === null) fail(`${a} (or ${b}) is required`);
    return v;
  };
  const bits = aliased(['bits', 'w_bit']);
  if (typeof bits !== 'number' || !Number.isSafeInteger(bits) || bits <= 0) fail(`bits must be a positive integer, got ${JSON.stringify(bits)}`);
  if (bits !== 4) throw new UnsupportedError(`${where}: bits ${bits as number} is not supported (AWQ GEMM checkpoints are 4-bit)`);
  const groupSize = aliased(['group_size', 'q_group_size']);
  if (typeof groupSize !== 'number' || !Number.isSafeInteger(groupSize) || (groupSize <= 0 && groupSize !== -1)) {
    fail(`group_size must be a positive integer or -1, got ${JSON.stringify(groupSize)}`);
  }
  if (!AWQ_GROUP_SIZES.includes(groupSize as number)) throw new UnsupportedError(`${where}: group_size ${groupSize as number} is not supported (supported: ${AWQ_GROUP_SIZES.join(', ')})`);
  const zeroPoint = q.zero_point;
  if (typeof zeroPoint !== 'boolean') fail(`zero_point must be true or false, got ${JSON.stringify(zeroPoint ?? null)}`);
  if (zeroPoint === false) throw new UnsupportedError(`${where}: zero_point false is not supported (AutoAWQ's GEMM format always stores zero points)`);
  const version = q.version ?? 'gemm';
  if (typeof version !== 'string') fail(`version must be a string, got ${JSON.stringify(version)}`);
  const v = (version as string).toLowerCase();
  if (!GEMM_LAYOUT_VERSIONS.includes(v)) {
    const known = OTHER_LAYOUT_VERSIONS.includes(v) ? 'its tensors have another layout; re-export the model with version "gemm"' : 'unknown version';
    throw new UnsupportedError(`${where}: version ${JSON.stringify(version)} is not supported (${known}; supported: ${GEMM_LAYOUT_VERSIONS.join(', ')})`);
  }
  const skip = q.modules_to_not_convert ?? [];
  if (!Array.isArray(skip) || !skip.every((s) => typeof s === 'string')) fail(`modules_to_not_convert must be a list of strings or null, got ${JSON.stringify(skip)}`);
  return { bits: 4, groupSize: groupSize as number, zeroPoint: true, version: 'gemm', modulesToNotConvert: (skip as string[]).slice() };
}

/** The group size G of a layer with `inFeatures` (K) input rows: −1 means K. */
export function awqGroupSize(config: Pick<AwqConfig, 'groupSize'>, inFeatures: number): number {
  return config.groupSize === -1 ? inFeatures : config.groupSize;
}

/** Whether module `name` stays unquantized: any entry of modules_to_not_convert is a substring of it (AutoAWQ, vLLM and transformers agree). */
export function isAwqSkipped(config: Pick<AwqConfig, 'modulesToNotConvert'>, name: string): boolean {
  return config.modulesToNotConvert.some((key) => name.includes(key));
}

// ---- tensor checks ---------------------------------------------------------------------------

/** What a loader knows of a stored tensor: a safetensors dtype string and a shape. */
export interface AwqTensorInfo {
  dtype: string;
  shape: readonly number[];
}

/**
 * Checks the tensors of quantized linear `prefix` (e.g. "model.layers.0.self_attn.q_proj") with
 * K = `inFeatures`, N = `outFeatures` and group size G: qweight I32 [K, N/8], qzeros I32 [K/G, N/8],
 * scales F16 [K/G, N] (AutoAWQ always stores float16 scales); K a multiple of G and N of 8. `get(name)` returns a tensor's info
 * or undefined when it is missing. ERR_MODEL_FORMAT naming `file` and the tensor otherwise.
 */
export function checkAwqTensors(
  get: (name: string) => AwqTensorInfo | undefined, prefix: string, inFeatures: number, outFeatures: number, groupSize: number, file: string,
): void {
  const fail = (message: string): never => {
    throw new ModelFormatError(`${file}: ${message}`);
  };
  const K = inFeatures, N = outFeatures, G = groupSize;
  if (N % AWQ_PACK_FACTOR !== 0) fail(`"${prefix}": out_features ${N} is not a multiple of 8, which AWQ packing needs`);
  if (K % G !== 0) fail(`"${prefix}": in_features ${K} is not a multiple of group_size ${G}`);
  const expect = (suffix: string, dtypes: string[], shape: number[]): void => {
    const name = `${prefix}.${suffix}`;
    const t = get(name);
    if (!t) fail(`tensor "${name}" is missing (AWQ checkpoints store qweight, qzeros and scales for each quantized linear)`);
    if (!dtypes.includes(t!.dtype)) fail(`tensor "${name}" is ${t!.dtype}, expected ${dtypes.join(' or ')}`);
    if (t!.shape.length !== shape.length || t!.shape.some((d, i) => d !== shape[i])) {
      fail(`tensor "${name}" has shape [${t!.shape.join(', ')}], expected [${shape.join(', ')}] (in_features ${K}, out_features ${N}, group_size ${G})`);
    }
  };
  expect('qweight', ['I32'], [K, N / AWQ_PACK_FACTOR]);
  expect('qzeros', ['I32'], [K / G, N / AWQ_PACK_FACTOR]);
  expect('scales', ['F16'], [K / G, N]);
}

// ---- round-to-nearest quantization (formats.md §1.2) ---------------------------------------------

/** One linear layer quantized to AWQ GEMM tensors. */
export interface AwqQuantized {
  /** int32 [K, N/8]. */
  qweight: Int32Array;
  /** int32 [K/G, N/8]. */
  qzeros: Int32Array;
  /** float16 bits [K/G, N]. */
  scales: Uint16Array;
  /**
   * float32 [N, K] (HF orientation): fp16((q − z) · s) with s the stored float16 scale — exactly
   * what a loader dequantizes (formats.md §1.4), so a loaded layer can be compared bit for bit.
   */
  reconstruction: Float32Array;
}

/** Rounds half to even, as torch.round does (Math.round rounds halves up). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const MAX_CODE = 15;
const MIN_RANGE = 1e-5;

/**
 * AutoAWQ's round-to-nearest with a zero point (`pseudo_quantize_tensor`, then the GEMM packing)
 * of `weight`, a float32 [N, K] HF `nn.Linear.weight`, in groups of G = `groupSize` consecutive
 * input channels (−1: all K) per output row:
 *
 *     s = fp16(max(max − min, 1e-5) / 15)     z = clamp(round(−min / s), 0, 15)     q = clamp(round(w / s) + z, 0, 15)
 *
 * with round half to even. The scale is rounded to float16 before z and q are derived from it,
 * as AutoAWQ's packing divides by the float16 `scales`, so that the stored values reproduce the
 * reconstruction exactly. Arithmetic is float64 (torch on an fp16 model divides in fp16, so an
 * exact tie may round the other way there — both are valid AWQ checkpoints).
 */
export function quantizeRtn(weight: Float32Array, N: number, K: number, groupSize: number): AwqQuantized {
  const op = 'quantizeRtn';
  if (!isTyped(weight, 'Float32Array')) throw new InvalidArgumentError(`${op}: weight must be a Float32Array [N, K]`);
  if (!Number.isSafeInteger(N) || N <= 0 || N % AWQ_PACK_FACTOR !== 0) throw new InvalidArgumentError(`${op}: N (out_features) must be a positive multiple of 8, got ${N}`);
  if (!Number.isSafeInteger(K) || K <= 0) throw new InvalidArgumentError(`${op}: K (in_features) must be a positive integer, got ${K}`);
  if (weight.length !== N * K) throw new InvalidArgumentError(`${op}: weight has ${weight.length} elements, expected N × K = ${N * K}`);
  const G = groupSize === -1 ? K : groupSize;
  if (!Number.isSafeInteger(G) || G <= 0 || K % G !== 0) throw new InvalidArgumentError(`${op}: group size ${groupSize} must be -1 or a positive divisor of K = ${K}`);
  const groups = K / G;

  // Scales first ([K/G, N], rounded once from float64 to float16), then codes against those scales.
  const scaleValues = new Float32Array(groups * N);
  const mins = new Float64Array(groups * N);
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < groups; g++) {
      let lo = Infinity, hi = -Infinity;
      for (let k = g * G; k < (g + 1) * G; k++) {
        const w = weight[n * K + k]!;
        if (!Number.isFinite(w)) throw new InvalidArgumentError(`${op}: weight [${n}, ${k}] is ${w}`);
        if (w < lo) lo = w;
        if (w > hi) hi = w;
      }
      scaleValues[g * N + n] = f16round(Math.max(hi - lo, MIN_RANGE) / MAX_CODE);
      mins[g * N + n] = lo;
    }
  }
  const scales = float32ToFloat16(scaleValues);  // exact: the values are float16 already
  const zeros = new Uint8Array(groups * N);
  for (let i = 0; i < zeros.length; i++) zeros[i] = clampCode(roundHalfEven(-mins[i]! / scaleValues[i]!));

  const codes = new Uint8Array(K * N);  // [K, N], AWQ orientation
  const reconstruction = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) {
      const gi = Math.floor(k / G) * N + n;
      const s = scaleValues[gi]!, z = zeros[gi]!;
      const q = clampCode(roundHalfEven(weight[n * K + k]! / s) + z);
      codes[k * N + n] = q;
      const w = f16round((q - z) * s);
      // Weights near the float16 limit (65504) overflow the stored scale or the dequantized value.
      if (!Number.isFinite(w)) throw new InvalidArgumentError(`${op}: weight [${n}, ${k}] = ${weight[n * K + k]} is beyond what a float16 AWQ checkpoint holds`);
      reconstruction[n * K + k] = w;
    }
  }
  return { qweight: packAwq(codes, K, N), qzeros: packAwq(zeros, groups, N), scales, reconstruction };
}

function clampCode(q: number): number {
  return q < 0 ? 0 : q > MAX_CODE ? MAX_CODE : q;
}

/**
 * The reference dequantization: W_awq [K, N] with W_awq[k, n] = fp16((q − z) · s) (formats.md
 * §1.4), as float32 values; `scales` holds float16 bits.
 */
export function dequantizeAwq(tensors: { qweight: Int32Array; qzeros: Int32Array; scales: Uint16Array }, N: number, K: number, groupSize: number): Float32Array {
  const G = groupSize === -1 ? K : groupSize;
  if (!Number.isSafeInteger(G) || G <= 0 || K % G !== 0) throw new InvalidArgumentError(`dequantizeAwq: group size ${groupSize} must be -1 or a positive divisor of K = ${K}`);
  const groups = K / G;
  if (tensors.scales.length !== groups * N) throw new InvalidArgumentError(`dequantizeAwq: scales has ${tensors.scales.length} elements, expected ${groups} × ${N}`);
  const q = unpackAwq(tensors.qweight, K, N);
  const z = unpackAwq(tensors.qzeros, groups, N);
  const s = float16ToFloat32(tensors.scales);
  const out = new Float32Array(K * N);
  for (let k = 0; k < K; k++) {
    const g = Math.floor(k / G) * N;
    for (let n = 0; n < N; n++) out[k * N + n] = (q[k * N + n]! - z[g + n]!) * s[g + n]!;
  }
  // Exact products in float32, rounded once to float16.
  for (let i = 0; i < out.length; i++) out[i] = f16round(out[i]!);
  return out;
}
