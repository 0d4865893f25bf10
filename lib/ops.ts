/**
 * The forward-pass ops of a Llama-family model besides attention
 * (include/pagedllm/model_ops.h): token embedding, RMSNorm (optionally fused
 * with the residual add), rotary position embedding, the SiLU gate of the MLP,
 * an element-wise add, the dense linear layer and the AWQ int4 linear layer
 * (`awqLinear`, `awqDequantize`), on the CPU and on CUDA.
 * Float tensors are float32, float16 or bfloat16; the math is float32 and each
 * result is rounded once to its dtype. `ropeInvFreq` computes RoPE frequencies
 * from a Hugging Face `config.json` (default, linear and llama3 scaling) as
 * transformers' `modeling_rope_utils` does.
 *
 * Each op runs on the stream of its first tensor argument (`ids`, `x`, `q`,
 * `a`); inputs on other streams are waited for, and wait for the op in turn,
 * so every tensor may be freed in its own stream's order. New outputs are
 * category 'activations'.
 *
 * @example
 * // One Llama decoder layer's MLP half, pre-norm, on a batch of hidden states h [numTokens, hidden]:
 * const x = rmsNorm(h, postAttentionNorm, 1e-5);            // (or fused: rmsNorm(attnOut, w, eps, { residual: h }))
 * const gateUp = linear(x, gateUpProj);                     // [numTokens, 2 · intermediate]
 * const down = linear(siluMul(gateUp), downProj);           // [numTokens, hidden]
 * add(h, down, { out: h });
 * // RoPE, in place on views into a fused QKV projection:
 * const invFreq = ropeInvFreq(config);                      // Float32Array [headDim / 2]
 * rope(q, k, positions, invFreq);
 */
import { dtypeCode, type DType } from './dtype';
import { InvalidArgumentError, UnsupportedError } from './errors';
import { native, type NativeBufferHandle } from './native';
import { type Stream } from './stream';
import { Tensor } from './tensor';

const FLOATS: readonly DType[] = ['float32', 'float16', 'bfloat16'];

// ---- shared checks ------------------------------------------------------------------------

function shapeText(t: Tensor): string {
  return `${t.dtype} [${t.shape.join(', ')}]`;
}

function isFloat(dtype: unknown): dtype is DType {
  return FLOATS.includes(dtype as DType);
}

function checkTensor(op: string, name: string, t: unknown): Tensor {
  if (!(t instanceof Tensor)) throw new InvalidArgumentError(`${op}: ${name} must be a Tensor`);
  t.nativeRegion(); // throws ERR_DISPOSED for a disposed tensor
  return t;
}

function checkFloat(op: string, name: string, t: Tensor): void {
  if (!isFloat(t.dtype)) throw new InvalidArgumentError(`${op}: ${name} must be float32, float16 or bfloat16, got ${t.dtype}`);
}

function checkSameDevice(op: string, name: string, t: Tensor, primaryName: string, primary: Tensor): void {
  if (t.device !== primary.device) throw new InvalidArgumentError(`${op}: ${name} is on ${t.device} but ${primaryName} is on ${primary.device}`);
}

function checkContiguous(op: string, name: string, t: Tensor): void {
  if (!t.isContiguous) throw new InvalidArgumentError(`${op}: ${name} must be contiguous`);
}

/** A 2-D tensor whose rows are contiguous (any row stride ≥ the row length); its row stride. */
function rowStride(op: string, name: string, t: Tensor): number {
  const [rows, cols] = t.shape as [number, number];
  const columnsOk = cols <= 1 || t.strides[1] === 1;
  const rowsOk = rows <= 1 || t.strides[0]! >= cols;
  if (!columnsOk || !rowsOk) {
    throw new InvalidArgumentError(`${op}: ${name} must have contiguous rows (strides [≥ ${cols}, 1]), got [${t.strides.join(', ')}]`);
  }
  return rows > 1 ? t.strides[0]! : cols;
}

function checkOutDtype(op: string, dtype: unknown): DType {
  if (!isFloat(dtype)) throw new InvalidArgumentError(`${op}: dtype must be float32, float16 or bfloat16, got ${JSON.stringify(dtype)}`);
  return dtype;
}

function checkOptions<T extends object>(op: string, options: T | undefined): Partial<T> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError(`${op}: options must be an object`);
  return options;
}

// An output tensor: `out` checked against the expected dtype and shape, or a new one.
function output(op: string, out: unknown, dtype: DType, shape: number[], like: Tensor, contiguous = true): { tensor: Tensor; owned: boolean } {
  if (out === undefined) {
    return { tensor: Tensor.empty(shape, { dtype, stream: like.stream, category: 'activations' }), owned: true };
  }
  const t = checkTensor(op, 'out', out);
  if (t.dtype !== dtype || t.ndim !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new InvalidArgumentError(`${op}: out must be ${dtype} [${shape.join(', ')}], got ${shapeText(t)}`);
  }
  checkSameDevice(op, 'out', t, 'the input', like);
  if (contiguous) checkContiguous(op, 'out', t);
  return { tensor: t, owned: false };
}

function region(t: Tensor | null): [NativeBufferHandle | null, number] {
  return t ? t.nativeRegion() : [null, 0];
}

// Runs `launch` on `stream` ordered after the other tensors' streams, and them after it.
function ordered(stream: Stream, tensors: ReadonlyArray<Tensor | null>, launch: () => void): void {
  const others = new Set<Stream>();
  for (const t of tensors) if (t && t.stream !== stream) others.add(t.stream);
  for (const s of others) stream.wait(s.record());
  launch();
  if (others.size > 0) {
    const done = stream.record();
    for (const s of others) s.wait(done);
  }
}

// ---- embedding --------------------------------------------------------------------------------

export interface EmbeddingOptions {
  /** Output dtype. Default: out's when given, else the weight's. */
  dtype?: DType;
  /** Written instead of allocating: [numTokens, hiddenSize] of `dtype`, contiguous. */
  out?: Tensor;
}

/**
 * Rows of `weight` [vocabSize, hiddenSize] picked by `ids` (int32 [numTokens]): a new
 * [numTokens, hiddenSize] tensor (or `options.out`). An id outside [0, vocabSize) is a caller
 * bug: the CPU reports ERR_INVALID_ARGUMENT at the next synchronisation, CUDA writes zeros.
 */
export function embedding(ids: Tensor, weight: Tensor, options?: EmbeddingOptions): Tensor {
  const op = 'embedding';
  checkTensor(op, 'ids', ids);
  checkTensor(op, 'weight', weight);
  const o = checkOptions(op, options);
  if (ids.dtype !== 'int32' || ids.ndim !== 1) throw new InvalidArgumentError(`${op}: ids must be int32 [numTokens], got ${shapeText(ids)}`);
  if (weight.ndim !== 2 || !isFloat(weight.dtype)) {
    throw new InvalidArgumentError(`${op}: weight must be [vocabSize, hiddenSize] of float32, float16 or bfloat16, got ${shapeText(weight)}`);
  }
  checkContiguous(op, 'ids', ids);
  checkContiguous(op, 'weight', weight);
  checkSameDevice(op, 'weight', weight, 'ids', ids);
  const [vocabSize, hiddenSize] = weight.shape as [number, number];
  if (vocabSize === 0 || hiddenSize === 0) throw new InvalidArgumentError(`${op}: weight must not be empty, got ${shapeText(weight)}`);
  const dtype = checkOutDtype(op, o.dtype ?? (o.out instanceof Tensor ? o.out.dtype : weight.dtype));
  const numTokens = ids.shape[0]!;
  const out = output(op, o.out, dtype, [numTokens, hiddenSize], ids);
  try {
    if (numTokens > 0) {
      ordered(ids.stream, [weight, out.tensor], () =>
        native().embedding(
          ...ids.nativeRegion(), ...weight.nativeRegion(), ...out.tensor.nativeRegion(),
          { numTokens, vocabSize, hiddenSize, weightDtype: dtypeCode(weight.dtype), outDtype: dtypeCode(dtype) },
          ids.stream.handle,
        ),
      );
    }
    return out.tensor;
  } catch (error) {
    if (out.owned) out.tensor.dispose();
    throw error;
  }
}

// ---- rmsNorm ----------------------------------------------------------------------------------

export interface RmsNormOptions {
  /**
   * Fused residual add (vLLM fused_add_rms_norm): `residual` [numTokens, hiddenSize] becomes
   * `residual + x` (stored in its dtype), and the output is the norm of that sum.
   */
  residual?: Tensor;
  /** Written instead of allocating: [numTokens, hiddenSize], rows contiguous; may be `x` itself. Default: a new tensor of x's dtype. */
  out?: Tensor;
}

/**
 * HF LlamaRMSNorm of each row of `x` [numTokens, hiddenSize]:
 * `x · rsqrt(mean(x²) + eps)`, rounded to x's dtype, times `weight` [hiddenSize] — or, with
 * `options.residual`, the same of `residual += x`. Rows of x, residual and out may be strided
 * (views into wider rows).
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number, options?: RmsNormOptions): Tensor {
  const op = 'rmsNorm';
  checkTensor(op, 'x', x);
  checkTensor(op, 'weight', weight);
  const o = checkOptions(op, options);
  if (x.ndim !== 2) throw new InvalidArgumentError(`${op}: x must be [numTokens, hiddenSize], got ${shapeText(x)}`);
  checkFloat(op, 'x', x);
  const [numTokens, hiddenSize] = x.shape as [number, number];
  if (hiddenSize === 0) throw new InvalidArgumentError(`${op}: hiddenSize must be positive, got ${shapeText(x)}`);
  const xStride = rowStride(op, 'x', x);
  if (weight.ndim !== 1 || weight.shape[0] !== hiddenSize || !isFloat(weight.dtype)) {
    throw new InvalidArgumentError(`${op}: weight must be [${hiddenSize}] of float32, float16 or bfloat16, got ${shapeText(weight)}`);
  }
  checkContiguous(op, 'weight', weight);
  checkSameDevice(op, 'weight', weight, 'x', x);
  if (typeof eps !== 'number' || !Number.isFinite(eps) || eps < 0) throw new InvalidArgumentError(`${op}: eps must be a finite number ≥ 0, got ${String(eps)}`);
  let residual: Tensor | null = null;
  let residualStride = hiddenSize;
  if (o.residual !== undefined) {
    residual = checkTensor(op, 'residual', o.residual);
    if (residual.ndim !== 2 || residual.shape[0] !== numTokens || residual.shape[1] !== hiddenSize || !isFloat(residual.dtype)) {
      throw new InvalidArgumentError(`${op}: residual must be [${numTokens}, ${hiddenSize}] of float32, float16 or bfloat16, got ${shapeText(residual)}`);
    }
    checkSameDevice(op, 'residual', residual, 'x', x);
    residualStride = rowStride(op, 'residual', residual);
  }
  const out = output(op, o.out, o.out instanceof Tensor ? o.out.dtype : x.dtype, [numTokens, hiddenSize], x, false);
  if (!out.owned) checkFloat(op, 'out', out.tensor);
  try {
    const outStride = rowStride(op, 'out', out.tensor);
    if (numTokens > 0) {
      ordered(x.stream, [weight, residual, out.tensor], () =>
        native().rmsNorm(
          ...x.nativeRegion(), ...region(residual), ...weight.nativeRegion(), ...out.tensor.nativeRegion(),
          {
            numTokens, hiddenSize, xStride, residualStride, outStride,
            xDtype: dtypeCode(x.dtype), residualDtype: dtypeCode(residual?.dtype ?? 'float32'),
            weightDtype: dtypeCode(weight.dtype), outDtype: dtypeCode(out.tensor.dtype), eps,
          },
          x.stream.handle,
        ),
      );
    }
    return out.tensor;
  } catch (error) {
    if (out.owned) out.tensor.dispose();
    throw error;
  }
}

// ---- rope -------------------------------------------------------------------------------------

/**
 * Rotary position embedding, in place, HF rotate-half convention (vLLM is_neox_style): within
 * the first rotaryDim = 2 · invFreq.length dimensions of each head, dimension i is paired with
 * i + rotaryDim/2 and rotated by the angle float32(position) · invFreq[i] (float32).
 * `q` [numTokens, numHeads, headSize] and `k` [numTokens, numKvHeads, headSize] (or null) share
 * a float dtype; heads are contiguous, tokens may be strided (views into a fused QKV row).
 * `positions`: int32 [numTokens] (Tensor, Int32Array or number[]); `invFreq`: float32
 * [rotaryDim / 2] (Tensor, Float32Array or number[]), e.g. from {@link ropeInvFreq}.
 */
export function rope(
  q: Tensor, k: Tensor | null, positions: Tensor | Int32Array | readonly number[], invFreq: Tensor | Float32Array | readonly number[],
): void {
  const op = 'rope';
  checkTensor(op, 'q', q);
  if (q.ndim !== 3 || q.shape[1] === 0 || q.shape[2] === 0) throw new InvalidArgumentError(`${op}: q must be [numTokens, numHeads, headSize], got ${shapeText(q)}`);
  checkFloat(op, 'q', q);
  const [numTokens, numHeads, headSize] = q.shape as [number, number, number];
  const heads = (name: string, t: Tensor): number => {
    if (t.strides[2] !== 1 || (t.shape[1]! > 1 && t.strides[1] !== headSize) || (t.shape[0]! > 1 && t.strides[0]! < t.shape[1]! * headSize)) {
      throw new InvalidArgumentError(`${op}: ${name} heads must be contiguous (strides [≥ ${t.shape[1]! * headSize}, ${headSize}, 1]), got [${t.strides.join(', ')}]`);
    }
    return t.shape[0]! > 1 ? t.strides[0]! : t.shape[1]! * headSize;
  };
  const queryStride = heads('q', q);
  let numKvHeads = 0;
  let keyStride = 0;
  if (k !== null) {
    checkTensor(op, 'k', k);
    if (k.ndim !== 3 || k.shape[0] !== numTokens || k.shape[1] === 0 || k.shape[2] !== headSize || k.dtype !== q.dtype) {
      throw new InvalidArgumentError(`${op}: k must be ${q.dtype} [${numTokens}, numKvHeads, ${headSize}], got ${shapeText(k)}`);
    }
    checkSameDevice(op, 'k', k, 'q', q);
    numKvHeads = k.shape[1]!;
    keyStride = heads('k', k);
  }
  // Host arrays are uploaded to temporaries on q's stream (freed in its order after the op).
  const temporaries: Tensor[] = [];
  try {
    let pos: Tensor;
    if (positions instanceof Tensor) {
      pos = checkTensor(op, 'positions', positions);
      if (pos.dtype !== 'int32' || pos.ndim !== 1 || pos.shape[0] !== numTokens) {
        throw new InvalidArgumentError(`${op}: positions must be int32 [${numTokens}], got ${shapeText(pos)}`);
      }
      checkContiguous(op, 'positions', pos);
      checkSameDevice(op, 'positions', pos, 'q', q);
    } else {
      if (!(positions instanceof Int32Array) && !Array.isArray(positions)) throw new InvalidArgumentError(`${op}: positions must be a Tensor, Int32Array or number[]`);
      if (positions.length !== numTokens) throw new InvalidArgumentError(`${op}: positions must have numTokens (${numTokens}) entries, got ${positions.length}`);
      if (Array.isArray(positions)) {
        positions.forEach((v: unknown, i) => {
          if (!Number.isInteger(v) || (v as number) < -0x80000000 || (v as number) > 0x7fffffff) {
            throw new InvalidArgumentError(`${op}: positions[${i}] = ${String(v)} is not a 32-bit integer`);
          }
        });
      }
      pos = Tensor.fromArray(Int32Array.from(positions as ArrayLike<number>), [numTokens], { stream: q.stream });
      temporaries.push(pos);
    }
    let freq: Tensor;
    if (invFreq instanceof Tensor) {
      freq = checkTensor(op, 'invFreq', invFreq);
      if (freq.dtype !== 'float32' || freq.ndim !== 1) throw new InvalidArgumentError(`${op}: invFreq must be float32 [rotaryDim / 2], got ${shapeText(freq)}`);
      checkContiguous(op, 'invFreq', freq);
      checkSameDevice(op, 'invFreq', freq, 'q', q);
    } else {
      if (!(invFreq instanceof Float32Array) && !Array.isArray(invFreq)) throw new InvalidArgumentError(`${op}: invFreq must be a Tensor, Float32Array or number[]`);
      const values = Float32Array.from(invFreq as ArrayLike<number>);
      if (values.some((v) => !Number.isFinite(v))) throw new InvalidArgumentError(`${op}: invFreq must be finite`);
      freq = Tensor.fromArray(values, [values.length], { stream: q.stream });
      temporaries.push(freq);
    }
    const rotaryDim = 2 * freq.shape[0]!;
    if (rotaryDim === 0 || rotaryDim > headSize) {
      throw new InvalidArgumentError(`${op}: invFreq has ${rotaryDim / 2} frequencies; rotaryDim = ${rotaryDim} must be in [2, headSize (${headSize})]`);
    }
    if (numTokens > 0) {
      ordered(q.stream, [k, pos, freq], () =>
        native().rope(
          ...q.nativeRegion(), ...region(k), ...pos.nativeRegion(), ...freq.nativeRegion(),
          { numTokens, numHeads, numKvHeads, headSize, rotaryDim, queryStride, keyStride, dtype: dtypeCode(q.dtype) },
          q.stream.handle,
        ),
      );
    }
  } finally {
    for (const t of temporaries) t.dispose();
  }
}

// ---- ropeInvFreq ------------------------------------------------------------------------------

/** RoPE scaling as config.json writes it (`rope_scaling`, or transformers v5 `rope_parameters`). */
export interface RopeScalingConfig {
  rope_type?: string;
  /** Legacy spelling of rope_type. */
  type?: string;
  factor?: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
  /** transformers v5 keeps theta here. */
  rope_theta?: number;
  partial_rotary_factor?: number;
}

/** The config.json fields RoPE needs (snake_case, as the file has them). */
export interface RopeConfig {
  hidden_size?: number;
  num_attention_heads?: number;
  head_dim?: number | null;
  rope_theta?: number;
  rope_scaling?: RopeScalingConfig | null;
  rope_parameters?: RopeScalingConfig | null;
  partial_rotary_factor?: number;
}

export const ROPE_TYPES: readonly string[] = Object.freeze(['default', 'linear', 'llama3']);

/**
 * The inverse frequencies [rotaryDim / 2] of a model's rotary embedding, as transformers'
 * `modeling_rope_utils` computes them (float32 arithmetic step by step, so the values agree with
 * HF's to within float32 rounding of `pow`): rotaryDim = int(head_dim · partial_rotary_factor),
 * inv_freq[i] = 1 / θ^(2i / rotaryDim); `linear` divides by factor; `llama3` divides the long
 * wavelengths (> original_max_position_embeddings / low_freq_factor) by factor, keeps the short
 * ones (< … / high_freq_factor) and blends in between. head_dim defaults to
 * hidden_size / num_attention_heads, θ to rope_parameters.rope_theta ?? rope_theta ?? 10000.
 * Other rope types (dynamic, yarn, longrope) throw ERR_UNSUPPORTED.
 */
export function ropeInvFreq(config: RopeConfig): Float32Array {
  const op = 'ropeInvFreq';
  if (config === null || typeof config !== 'object') throw new InvalidArgumentError(`${op}: config must be an object (config.json)`);
  const params = config.rope_parameters ?? config.rope_scaling ?? null;
  if (params !== null && typeof params !== 'object') throw new InvalidArgumentError(`${op}: rope_scaling must be an object or null`);
  const positive = (v: unknown, name: string): number => {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new InvalidArgumentError(`${op}: ${name} must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  let headDim: number;
  if (config.head_dim !== undefined && config.head_dim !== null) {
    headDim = positive(config.head_dim, 'head_dim');
  } else {
    const hidden = positive(config.hidden_size, 'hidden_size');
    const heads = positive(config.num_attention_heads, 'num_attention_heads');
    headDim = Math.floor(hidden / heads);
  }
  if (!Number.isInteger(headDim)) throw new InvalidArgumentError(`${op}: head_dim must be an integer, got ${headDim}`);
  const theta = positive(params?.rope_theta ?? config.rope_theta ?? 10000, 'rope_theta');
  const partial = positive(params?.partial_rotary_factor ?? config.partial_rotary_factor ?? 1, 'partial_rotary_factor');
  const dim = Math.floor(headDim * partial);
  if (dim < 2 || dim % 2 !== 0 || dim > headDim) throw new InvalidArgumentError(`${op}: the rotary dimension ${dim} (head_dim ${headDim} · partial_rotary_factor ${partial}) must be even and in [2, head_dim]`);
  const type = params?.rope_type ?? params?.type ?? 'default';
  if (!ROPE_TYPES.includes(type)) throw new UnsupportedError(`${op}: rope_type ${JSON.stringify(type)} is not supported (supported: ${ROPE_TYPES.join(', ')})`);

  const f = Math.fround;
  // _compute_default_rope_parameters: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), in float32.
  const invFreq = new Float32Array(dim / 2);
  const base = f(theta);
  for (let i = 0; i < dim / 2; i++) invFreq[i] = f(1 / f(Math.pow(base, f((2 * i) / dim))));
  if (type === 'linear') {
    const factor = f(positive(params!.factor, 'rope_scaling.factor'));
    for (let i = 0; i < invFreq.length; i++) invFreq[i] = f(invFreq[i]! / factor);
  } else if (type === 'llama3') {
    // _compute_llama3_parameters, each tensor op in float32 (a Python scalar meets a float32 tensor
    // as float32; `scalar / tensor` is reciprocal(tensor) · scalar).
    const p = params!;
    const factor = positive(p.factor, 'rope_scaling.factor');
    const low = positive(p.low_freq_factor, 'rope_scaling.low_freq_factor');
    const high = positive(p.high_freq_factor, 'rope_scaling.high_freq_factor');
    const old = positive(p.original_max_position_embeddings, 'rope_scaling.original_max_position_embeddings');
    if (!(high > low)) throw new InvalidArgumentError(`${op}: rope_scaling.high_freq_factor (${high}) must exceed low_freq_factor (${low})`);
    const lowWavelen = f(old / low), highWavelen = f(old / high);
    const twoPi = f(2 * Math.PI), factor32 = f(factor), low32 = f(low), span32 = f(high - low), old32 = f(old);
    for (let i = 0; i < invFreq.length; i++) {
      const inv = invFreq[i]!;
      const wavelen = f(f(1 / inv) * twoPi);
      let llama = wavelen > lowWavelen ? f(inv / factor32) : inv;
      if (!(wavelen < highWavelen) && !(wavelen > lowWavelen)) {
        const smooth = f(f(f(f(1 / wavelen) * old32) - low32) / span32);
        llama = f(f(f(f(1 - smooth) * llama) / factor32) + f(smooth * llama));
      }
      invFreq[i] = llama;
    }
  }
  return invFreq;
}

// ---- siluMul, add -------------------------------------------------------------------------------

/**
 * The Llama MLP gate on a merged gate_up projection: x [numTokens, 2 · intermediate] (gate
 * columns first, then up; rows may be strided) → silu(gate) · up [numTokens, intermediate] of
 * x's dtype.
 */
export function siluMul(x: Tensor, options?: { out?: Tensor }): Tensor {
  const op = 'siluMul';
  checkTensor(op, 'x', x);
  const o = checkOptions(op, options);
  if (x.ndim !== 2 || x.shape[1]! % 2 !== 0 || x.shape[1] === 0) {
    throw new InvalidArgumentError(`${op}: x must be [numTokens, 2 · intermediateSize], got ${shapeText(x)}`);
  }
  checkFloat(op, 'x', x);
  const xStride = rowStride(op, 'x', x);
  const [numTokens, width] = x.shape as [number, number];
  const intermediateSize = width / 2;
  const out = output(op, o.out, x.dtype, [numTokens, intermediateSize], x);
  try {
    if (numTokens > 0) {
      ordered(x.stream, [out.tensor], () =>
        native().siluMul(...x.nativeRegion(), ...out.tensor.nativeRegion(), { numTokens, intermediateSize, xStride, dtype: dtypeCode(x.dtype) }, x.stream.handle),
      );
    }
    return out.tensor;
  } catch (error) {
    if (out.owned) out.tensor.dispose();
    throw error;
  }
}

/** a + b, element-wise (same shape and float dtype, contiguous); `options.out` may be a or b. */
export function add(a: Tensor, b: Tensor, options?: { out?: Tensor }): Tensor {
  const op = 'add';
  checkTensor(op, 'a', a);
  checkTensor(op, 'b', b);
  const o = checkOptions(op, options);
  checkFloat(op, 'a', a);
  if (b.dtype !== a.dtype || b.ndim !== a.ndim || b.shape.some((d, i) => d !== a.shape[i])) {
    throw new InvalidArgumentError(`${op}: b must be ${a.dtype} [${a.shape.join(', ')}] like a, got ${shapeText(b)}`);
  }
  checkContiguous(op, 'a', a);
  checkContiguous(op, 'b', b);
  checkSameDevice(op, 'b', b, 'a', a);
  const out = output(op, o.out, a.dtype, a.shape.slice(), a);
  try {
    if (a.numel > 0) {
      ordered(a.stream, [b, out.tensor], () =>
        native().add(...a.nativeRegion(), ...b.nativeRegion(), ...out.tensor.nativeRegion(), a.numel, dtypeCode(a.dtype), a.stream.handle),
      );
    }
    return out.tensor;
  } catch (error) {
    if (out.owned) out.tensor.dispose();
    throw error;
  }
}

// ---- linear -----------------------------------------------------------------------------------

export interface LinearOptions {
  /** Output dtype. Default: out's when given, else x's. */
  dtype?: DType;
  /** Written instead of allocating: [numTokens, outFeatures] of `dtype`, rows contiguous (may be strided). */
  out?: Tensor;
}

/**
 * y = x · weightᵀ (+ bias): x [numTokens, inFeatures] (rows may be strided), weight
 * [outFeatures, inFeatures] (HF nn.Linear orientation, contiguous), bias [outFeatures] or
 * null/undefined; any float dtypes, float32 accumulation, one rounding to the output dtype.
 * Decode-sized batches (≤ 8 tokens) stream each weight row once; larger ones use cache-blocked
 * (CPU) or tensor-core (CUDA, sm_80+, x and weight both float16 or both bfloat16) GEMMs.
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null, options?: LinearOptions): Tensor {
  const op = 'linear';
  checkTensor(op, 'x', x);
  checkTensor(op, 'weight', weight);
  const o = checkOptions(op, options);
  if (x.ndim !== 2) throw new InvalidArgumentError(`${op}: x must be [numTokens, inFeatures], got ${shapeText(x)}`);
  checkFloat(op, 'x', x);
  const [numTokens, inFeatures] = x.shape as [number, number];
  if (weight.ndim !== 2 || weight.shape[1] !== inFeatures || !isFloat(weight.dtype)) {
    throw new InvalidArgumentError(`${op}: weight must be [outFeatures, ${inFeatures}] of float32, float16 or bfloat16, got ${shapeText(weight)}`);
  }
  const outFeatures = weight.shape[0]!;
  if (inFeatures === 0 || outFeatures === 0) throw new InvalidArgumentError(`${op}: inFeatures and outFeatures must be positive, got x ${shapeText(x)}, weight ${shapeText(weight)}`);
  checkContiguous(op, 'weight', weight);
  checkSameDevice(op, 'weight', weight, 'x', x);
  const xStride = rowStride(op, 'x', x);
  let b: Tensor | null = null;
  if (bias !== undefined && bias !== null) {
    b = checkTensor(op, 'bias', bias);
    if (b.ndim !== 1 || b.shape[0] !== outFeatures || !isFloat(b.dtype)) {
      throw new InvalidArgumentError(`${op}: bias must be [${outFeatures}] of float32, float16 or bfloat16, got ${shapeText(b)}`);
    }
    checkContiguous(op, 'bias', b);
    checkSameDevice(op, 'bias', b, 'x', x);
  }
  const dtype = checkOutDtype(op, o.dtype ?? (o.out instanceof Tensor ? o.out.dtype : x.dtype));
  const out = output(op, o.out, dtype, [numTokens, outFeatures], x, false);
  try {
    const outStride = rowStride(op, 'out', out.tensor);
    if (numTokens > 0) {
      ordered(x.stream, [weight, b, out.tensor], () =>
        native().linear(
          ...x.nativeRegion(), ...weight.nativeRegion(), ...region(b), ...out.tensor.nativeRegion(),
          {
            numTokens, inFeatures, outFeatures, xStride, outStride,
            xDtype: dtypeCode(x.dtype), weightDtype: dtypeCode(weight.dtype), biasDtype: dtypeCode(b?.dtype ?? 'float32'), outDtype: dtypeCode(dtype),
          },
          x.stream.handle,
        ),
      );
    }
    return out.tensor;
  } catch (error) {
    if (out.owned) out.tensor.dispose();
    throw error;
  }
}

// ---- AWQ int4 ---------------------------------------------------------------------------------

/**
 * One AWQ int4 linear layer (AutoAWQ "GEMM" checkpoints; include/pagedllm/awq.h), its tensors as
 * the checkpoint stores them: the dequantized weight is W[k, n] = float16((q − z) · s), shape
 * [inFeatures, outFeatures] — the transpose of an HF nn.Linear weight.
 */
export interface AwqWeight {
  /**
   * int32 [inFeatures, outFeatures / 8]: 8 codes per word along the output dim, AWQ order — or, with
   * `layout: 'slab8'`, the same words reordered for the CPU's int8 GEMV ({@link awqRepack}).
   */
  qweight: Tensor;
  /** int32 [inFeatures / groupSize, outFeatures / 8]: zero points, packed like qweight. */
  qzeros: Tensor;
  /** float16 [inFeatures / groupSize, outFeatures]. */
  scales: Tensor;
  /** 32, 64 or 128, or inFeatures for one group (a checkpoint's −1, also accepted as −1). */
  groupSize: number;
  /**
   * The order of qweight's words: 'autoawq' (the default: the checkpoint's) or 'slab8' (CPU only,
   * made by {@link awqRepack}; include/pagedllm/awq.h defines it). A model loaded on a CPU whose
   * `devices().cpu.awqActivations` is 'int8' has its AWQ weights in 'slab8'.
   */
  layout?: AwqLayout;
}

export type AwqLayout = 'autoawq' | 'slab8';
const AWQ_LAYOUTS: readonly AwqLayout[] = ['autoawq', 'slab8'];

export interface AwqLinearOptions {
  /** Written instead of allocating: [numTokens, outFeatures] of `dtype`, rows contiguous (may be strided). */
  out?: Tensor;
  /** Output dtype. Default: out's when given, else x's. */
  dtype?: DType;
}

const AWQ_GROUP_SIZES: readonly number[] = [32, 64, 128];

/** The checked sizes of an AwqWeight: K, N, G (−1 resolved to K), and the layout's native code. */
function checkAwqWeight(op: string, weight: unknown, primaryName: string, primary: Tensor | null): { K: number; N: number; G: number; layout: number } {
  if (weight === null || typeof weight !== 'object') throw new InvalidArgumentError(`${op}: weight must be an AwqWeight { qweight, qzeros, scales, groupSize }`);
  const w = weight as Partial<AwqWeight>;
  const qweight = checkTensor(op, 'weight.qweight', w.qweight);
  const qzeros = checkTensor(op, 'weight.qzeros', w.qzeros);
  const scales = checkTensor(op, 'weight.scales', w.scales);
  if (qweight.dtype !== 'int32' || qweight.ndim !== 2 || qweight.shape[0] === 0 || qweight.shape[1] === 0) {
    throw new InvalidArgumentError(`${op}: weight.qweight must be int32 [inFeatures, outFeatures / 8], got ${shapeText(qweight)}`);
  }
  const [K, words] = qweight.shape as [number, number];
  if (primary && primary.shape[1] !== K) {
    throw new InvalidArgumentError(`${op}: weight.qweight must be int32 [${primary.shape[1]}, outFeatures / 8] to match ${primaryName}, got ${shapeText(qweight)}`);
  }
  const N = 8 * words;
  const g = w.groupSize;
  if (typeof g !== 'number' || !Number.isInteger(g)) throw new InvalidArgumentError(`${op}: weight.groupSize must be an integer, got ${String(g)}`);
  const G = g === -1 ? K : g;
  if (!AWQ_GROUP_SIZES.includes(G) && G !== K) {
    throw new UnsupportedError(`${op}: group size ${g} is not supported (supported: 32, 64, 128, or inFeatures (${K}) / -1 for one group)`);
  }
  if (K % G !== 0) throw new InvalidArgumentError(`${op}: inFeatures ${K} is not a multiple of the group size ${G}`);
  const groups = K / G;
  if (qzeros.dtype !== 'int32' || qzeros.ndim !== 2 || qzeros.shape[0] !== groups || qzeros.shape[1] !== words) {
    throw new InvalidArgumentError(`${op}: weight.qzeros must be int32 [${groups}, ${words}], got ${shapeText(qzeros)}`);
  }
  if (scales.dtype !== 'float16' || scales.ndim !== 2 || scales.shape[0] !== groups || scales.shape[1] !== N) {
    throw new InvalidArgumentError(`${op}: weight.scales must be float16 [${groups}, ${N}], got ${shapeText(scales)}`);
  }
  for (const [name, t] of [['weight.qweight', qweight], ['weight.qzeros', qzeros], ['weight.scales', scales]] as [string, Tensor][]) {
    checkContiguous(op, name, t);
    if (primary) checkSameDevice(op, name, t, primaryName, primary);
  }
  checkSameDevice(op, 'weight.qzeros', qzeros, 'weight.qweight', qweight);
  checkSameDevice(op, 'weight.scales', scales, 'weight.qweight', qweight);
  const layout = w.layout ?? 'autoawq';
  if (!AWQ_LAYOUTS.includes(layout)) throw new InvalidArgumentError(`${op}: weight.layout must be 'autoawq' or 'slab8', got ${JSON.stringify(layout)}`);
  if (layout === 'slab8') {
    if (qweight.device !== 'cpu') throw new UnsupportedError(`${op}: the slab8 layout is for the CPU (the CUDA kernels read autoawq)`);
    if (K % 32 !== 0) throw new InvalidArgumentError(`${op}: the slab8 layout needs inFeatures a multiple of 32, got ${K}`);
  }
  return { K, N, G, layout: AWQ_LAYOUTS.indexOf(layout) };
}

/**
 * y = x · W (+ bias) with W an AWQ int4 weight, dequantized inside the kernel: x [numTokens,
 * inFeatures] (rows may be strided), bias [outFeatures] or null/undefined; float32 accumulation,
 * one rounding to the output dtype (dtype rules as {@link linear}). Decode-sized batches stream the
 * packed words once (a fused GEMV); larger ones run a GEMM over dequantized tiles (CPU: cache-blocked;
 * CUDA: tensor cores, or dequantize + dense GEMM past a crossover).
 *
 * @example
 * const y = awqLinear(x, { qweight, qzeros, scales, groupSize: 128 });   // x [tokens, 4096] → y [tokens, N]
 */
export function awqLinear(x: Tensor, weight: AwqWeight, bias?: Tensor | null, options?: AwqLinearOptions): Tensor {
  const op = 'awqLinear';
  checkTensor(op, 'x', x);
  const o = checkOptions(op, options);
  if (x.ndim !== 2) throw new InvalidArgumentError(`${op}: x must be [numTokens, inFeatures], got ${shapeText(x)}`);
  checkFloat(op, 'x', x);
  const { K, N, G, layout } = checkAwqWeight(op, weight, 'x', x);
  const numTokens = x.shape[0]!;
  const xStride = rowStride(op, 'x', x);
  let b: Tensor | null = null;
  if (bias !== undefined && bias !== null) {
    b = checkTensor(op, 'bias', bias);
    if (b.ndim !== 1 || b.shape[0] !== N || !isFloat(b.dtype)) {
      throw new InvalidArgumentError(`${op}: bias must be [${N}] of float32, float16 or bfloat16, got ${shapeText(b)}`);
    }
    checkContiguous(op, 'bias', b);
    checkSameDevice(op, 'bias', b, 'x', x);
  }
  const dtype = checkOutDtype(op, o.dtype ?? (o.out instanceof Tensor ? o.out.dtype : x.dtype));
  const out = output(op, o.out, dtype, [numTokens, N], x, false);
  try {
    const outStride = rowStride(op, 'out', out.tensor);
    if (numTokens > 0) {
      ordered(x.stream, [weight.qweight, weight.qzeros, weight.scales, b, out.tensor], () =>
        native().awqLinear(
          ...x.nativeRegion(), ...weight.qweight.nativeRegion(), ...weight.qzeros.nativeRegion(), ...weight.scales.nativeRegion(),
          ...region(b), ...out.tensor.nativeRegion(),
          {
            numTokens, inFeatures: K, outFeatures: N, groupSize: G, layout, xStride, outStride,
            xDtype: dtypeCode(x.dtype), biasDtype: dtypeCode(b?.dtype ?? 'float32'), outDtype: dtypeCode(dtype),
          },
          x.stream.handle,
        ),
      );
    }
    return out.tensor;
  } catch (error) {
    if (out.owned) out.tensor.dispose();
    throw error;
  }
}

/**
 * The dequantized weight W [inFeatures, outFeatures], W[k, n] = float16((q − z) · s): float16 (bit
 * for bit the value AutoAWQ / vLLM compute) or float32 (the same values). A new tensor of category
 * 'weights' on weight.qweight's stream.
 */
export function awqDequantize(weight: AwqWeight, options?: { dtype?: 'float16' | 'float32' }): Tensor {
  const op = 'awqDequantize';
  const o = checkOptions(op, options);
  const { K, N, G, layout } = checkAwqWeight(op, weight, '', null);
  const dtype = o.dtype ?? 'float16';
  if (dtype !== 'float16' && dtype !== 'float32') throw new InvalidArgumentError(`${op}: dtype must be float16 or float32, got ${JSON.stringify(dtype)}`);
  const stream = weight.qweight.stream;
  const out = Tensor.empty([K, N], { dtype, stream, category: 'weights' });
  try {
    ordered(stream, [weight.qzeros, weight.scales], () =>
      native().awqDequantize(
        ...weight.qweight.nativeRegion(), ...weight.qzeros.nativeRegion(), ...weight.scales.nativeRegion(), ...out.nativeRegion(),
        { inFeatures: K, outFeatures: N, groupSize: G, layout, outDtype: dtypeCode(dtype) },
        stream.handle,
      ),
    );
    return out;
  } catch (error) {
    out.dispose();
    throw error;
  }
}

/**
 * The weight with qweight in the 'slab8' layout, the order the CPU's int8 GEMV reads
 * (include/pagedllm/awq.h): same size, same qzeros and scales, the same dequantized W. CPU only;
 * inFeatures must be a multiple of 32. `inPlace: true` rewrites weight.qweight itself (no second
 * copy: the model loader's way; the old weight must not be used afterwards); otherwise a new qweight
 * tensor of category 'weights' is made. Worth it where `devices().cpu.awqActivations` is 'int8'.
 *
 * @example
 * const fast = awqRepack({ qweight, qzeros, scales, groupSize: 128 });  // fast.layout === 'slab8'
 */
export function awqRepack(weight: AwqWeight, options?: { inPlace?: boolean }): AwqWeight & { layout: 'slab8' } {
  const op = 'awqRepack';
  const o = checkOptions(op, options);
  const { K, N } = checkAwqWeight(op, weight, '', null);
  if ((weight.layout ?? 'autoawq') !== 'autoawq') throw new InvalidArgumentError(`${op}: the weight is already ${String(weight.layout)}`);
  if (weight.qweight.device !== 'cpu') throw new UnsupportedError(`${op}: the slab8 layout is for the CPU (the CUDA kernels read autoawq)`);
  if (K % 32 !== 0) throw new InvalidArgumentError(`${op}: the slab8 layout needs inFeatures a multiple of 32, got ${K}`);
  const stream = weight.qweight.stream;
  if (o.inPlace !== undefined && typeof o.inPlace !== 'boolean') throw new InvalidArgumentError(`${op}: inPlace must be a boolean, got ${String(o.inPlace)}`);
  const inPlace = o.inPlace === true;
  const qweight = inPlace ? weight.qweight : Tensor.empty(weight.qweight.shape, { dtype: 'int32', stream, category: 'weights' });
  try {
    ordered(stream, [], () =>
      native().awqRepack(...weight.qweight.nativeRegion(), ...qweight.nativeRegion(), { inFeatures: K, outFeatures: N }, stream.handle),
    );
  } catch (error) {
    if (!inPlace) qweight.dispose();
    throw error;
  }
  return { qweight, qzeros: weight.qzeros, scales: weight.scales, groupSize: weight.groupSize, layout: 'slab8' };
}

/**
 * The instruction set of the CPU kernels: 'avx512' (AVX-512 F/BW/VL + VNNI), 'avx2' (AVX2 + FMA +
 * F16C) or 'portable', the widest the CPU has unless PAGEDLLM_SIMD=avx2|portable caps it.
 */
export function cpuSimd(): 'avx512' | 'avx2' | 'portable' {
  return native().cpuSimd();
}
