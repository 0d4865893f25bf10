// The model ops from TypeScript (lib/ops.ts): results against float64
// references written here from the HF formulas (formats.md §5.3–§5.4), views
// into fused rows, in-place outputs, exact error messages, and ropeInvFreq for
// default / linear / llama3 scaling against the formulas of transformers'
// modeling_rope_utils evaluated in float64. (The kernels' dtype × shape grids
// are tested natively: test/native/test_model_ops_cpu.cpp.)
import { float32ToBfloat16, float32ToFloat16, InvalidArgumentError, Tensor, UnsupportedError, type DType } from '../../lib';
import { add, cpuSimd, embedding, linear, rmsNorm, rope, ropeInvFreq, siluMul, type RopeConfig } from '../../lib/ops';
import { bf16Value, ensureDist, halfValue, REPO, rng, runChild } from './helpers';

// ---- helpers ----------------------------------------------------------------------------------

function random(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

/** A tensor of `dtype` holding `values` (rounded to it), and the exact values it holds. */
function tensorOf(values: Float32Array, shape: number[], dtype: DType): { t: Tensor; exact: Float64Array } {
  if (dtype === 'float32') return { t: Tensor.fromArray(values, shape), exact: Float64Array.from(values) };
  const bits = dtype === 'float16' ? float32ToFloat16(values) : float32ToBfloat16(values);
  const decode = dtype === 'float16' ? halfValue : bf16Value;
  return { t: Tensor.fromArray(bits, shape, { dtype }), exact: Float64Array.from(bits, (b) => decode(b)) };
}

async function valuesOf(t: Tensor): Promise<Float64Array> {
  const data = await t.toArray();
  if (t.dtype === 'float16') return Float64Array.from(data as Uint16Array, (b) => halfValue(b));
  if (t.dtype === 'bfloat16') return Float64Array.from(data as Uint16Array, (b) => bf16Value(b));
  return Float64Array.from(data as ArrayLike<number>);
}

/** The value x has once stored in dtype (float32 first, as the kernels' math ends in float32). */
function roundTo(dtype: DType, x: number): number {
  if (dtype === 'float32') return Math.fround(x);
  const bits = dtype === 'float16' ? float32ToFloat16([x]) : float32ToBfloat16([x]);
  return dtype === 'float16' ? halfValue(bits[0]!) : bf16Value(bits[0]!);
}

const ULP: Record<string, number> = { float32: 2 ** -23, float16: 2 ** -10, bfloat16: 2 ** -7 };

function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number, what: string): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= tol(i))) {
      throw new Error(`${what}: element ${i}: got ${got[i]}, want ${want[i]} (tolerance ${tol(i)})`);
    }
  }
}

function expectInvalid(fn: () => unknown, message: string): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect((error as Error).message).toBe(message);
}

// ---- embedding ----------------------------------------------------------------------------------

describe('embedding', () => {
  test('picks rows of the weight and converts them to the output dtype', async () => {
    const vocab = 50, hidden = 24;
    const w = tensorOf(random(vocab * hidden, 1, -3, 3), [vocab, hidden], 'float16');
    const ids = Tensor.fromArray(Int32Array.from([3, 0, 49, 3]));
    const out = embedding(ids, w.t);
    expect(out.shape).toEqual([4, hidden]);
    expect(out.dtype).toBe('float16');
    const got = await valuesOf(out);
    const want = [3, 0, 49, 3].flatMap((id) => Array.from(w.exact.subarray(id * hidden, (id + 1) * hidden)));
    expectClose(got, want, () => 0, 'embedding float16');
    const asBf16 = await valuesOf(embedding(ids, w.t, { dtype: 'bfloat16' }));
    expectClose(asBf16, want.map((v) => roundTo('bfloat16', v)), () => 0, 'embedding → bfloat16');
    // Into a given tensor.
    const target = Tensor.zeros([4, hidden]);
    expect(embedding(ids, w.t, { out: target })).toBe(target);
    expectClose(await valuesOf(target), want, () => 0, 'embedding → out float32');
  });

  test('an id outside the vocabulary fails at the next synchronisation (CPU)', async () => {
    const w = Tensor.zeros([10, 8]);
    const out = embedding(Tensor.fromArray(Int32Array.from([1, 10])), w);
    await expect(out.toArray()).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: 'embedding: token 1 has id 10, outside the vocabulary [0, 10)' });
    // The stream goes on.
    expect(Array.from(await embedding(Tensor.fromArray(Int32Array.from([2])), w).toArray())).toEqual(new Array(8).fill(0));
  });

  test('rejects bad arguments with exact messages', () => {
    const w = Tensor.zeros([10, 8]);
    expectInvalid(() => embedding(Tensor.fromArray([1, 2]), w), 'embedding: ids must be int32 [numTokens], got float32 [2]');
    expectInvalid(() => embedding(Tensor.fromArray(Int32Array.from([1])), Tensor.zeros([8])), 'embedding: weight must be [vocabSize, hiddenSize] of float32, float16 or bfloat16, got float32 [8]');
    expectInvalid(() => embedding(Tensor.fromArray(Int32Array.from([1])), w, { dtype: 'int8' }), 'embedding: dtype must be float32, float16 or bfloat16, got "int8"');
    expectInvalid(() => embedding(Tensor.fromArray(Int32Array.from([1])), w, { out: Tensor.zeros([2, 8]) }), 'embedding: out must be float32 [1, 8], got float32 [2, 8]');
    expectInvalid(() => embedding([1] as unknown as Tensor, w), 'embedding: ids must be a Tensor');
  });
});

// ---- rmsNorm ------------------------------------------------------------------------------------

/** HF LlamaRMSNorm in float64: h · rsqrt(mean(h²) + eps), rounded to h's dtype, times the weight. */
function rmsNormReference(h: ArrayLike<number>, w: ArrayLike<number>, rows: number, hidden: number, eps: number, hDtype: DType): Float64Array {
  const out = new Float64Array(rows * hidden);
  for (let t = 0; t < rows; t++) {
    let ss = 0;
    for (let i = 0; i < hidden; i++) ss += h[t * hidden + i]! ** 2;
    const scale = 1 / Math.sqrt(ss / hidden + eps);
    for (let i = 0; i < hidden; i++) out[t * hidden + i] = roundTo(hDtype, h[t * hidden + i]! * scale) * w[i]!;
  }
  return out;
}

describe('rmsNorm', () => {
  test('the worked example of formats.md §5.3', async () => {
    const out = rmsNorm(Tensor.fromArray([1, 2, 3, 4], [1, 4]), Tensor.fromArray([1, 1, 1, 1]), 1e-5);
    expectClose(await valuesOf(out), [0.365148, 0.730296, 1.095444, 1.460592], () => 1e-6, 'rmsNorm [1, 2, 3, 4]');
  });

  test.each(['float32', 'float16', 'bfloat16'] as DType[])('%s rows (strided views) against the float64 reference', async (dtype) => {
    const rows = 5, hidden = 96, eps = 1e-6;
    const wide = tensorOf(random(rows * (hidden + 8), 2, -2, 2), [rows, hidden + 8], dtype); // x = columns 4 … 99 of wider rows
    const x = wide.t.slice(1, 4, 4 + hidden);
    const w = tensorOf(random(hidden, 3, 0.5, 1.5), [hidden], 'bfloat16');
    const xs = Float64Array.from({ length: rows * hidden }, (_, i) => wide.exact[Math.floor(i / hidden) * (hidden + 8) + 4 + (i % hidden)]!);
    const want = rmsNormReference(xs, w.exact, rows, hidden, eps, dtype);
    const out = rmsNorm(x, w.t, eps);
    expect(out.dtype).toBe(dtype);
    expectClose(await valuesOf(out), Array.from(want, (v) => roundTo(dtype, v)), (i) => Math.abs(want[i]!) * (1e-5 + 2 * ULP[dtype]!) + 1e-7, `rmsNorm ${dtype}`);
  });

  test('fused residual: residual += x, out = norm(residual); in place on x', async () => {
    const rows = 3, hidden = 64, eps = 1e-5;
    const x = tensorOf(random(rows * hidden, 4), [rows, hidden], 'float16');
    const r = tensorOf(random(rows * hidden, 5), [rows, hidden], 'float16');
    const w = tensorOf(random(hidden, 6, 0.5, 1.5), [hidden], 'float16');
    const sum = Float64Array.from(x.exact, (v, i) => roundTo('float16', v + r.exact[i]!));
    const want = rmsNormReference(sum, w.exact, rows, hidden, eps, 'float16');
    expect(rmsNorm(x.t, w.t, eps, { residual: r.t, out: x.t })).toBe(x.t);
    expectClose(await valuesOf(r.t), sum, (i) => Math.abs(sum[i]!) * ULP.float16!, 'residual');
    expectClose(await valuesOf(x.t), want, (i) => Math.abs(want[i]!) * (1e-5 + 2 * ULP.float16!) + 1e-7, 'fused out (in place)');
  });

  test('a float32 output of float16 input', async () => {
    const x = tensorOf(random(2 * 32, 7), [2, 32], 'float16');
    const out = rmsNorm(x.t, Tensor.fromArray(new Float32Array(32).fill(2)), 1e-6, { out: Tensor.empty([2, 32]) });
    const want = rmsNormReference(x.exact, new Float64Array(32).fill(2), 2, 32, 1e-6, 'float16');
    expectClose(await valuesOf(out), want, (i) => Math.abs(want[i]!) * (1e-5 + ULP.float16!), 'rmsNorm float16 → float32');
  });

  test('rejects bad arguments with exact messages', () => {
    const x = Tensor.zeros([2, 8]), w = Tensor.zeros([8]);
    expectInvalid(() => rmsNorm(Tensor.zeros([8]), w, 1e-5), 'rmsNorm: x must be [numTokens, hiddenSize], got float32 [8]');
    expectInvalid(() => rmsNorm(x, Tensor.zeros([7]), 1e-5), 'rmsNorm: weight must be [8] of float32, float16 or bfloat16, got float32 [7]');
    expectInvalid(() => rmsNorm(x, w, -1), 'rmsNorm: eps must be a finite number ≥ 0, got -1');
    expectInvalid(() => rmsNorm(x, w, NaN), 'rmsNorm: eps must be a finite number ≥ 0, got NaN');
    expectInvalid(() => rmsNorm(x, w, 1e-5, { residual: Tensor.zeros([3, 8]) }), 'rmsNorm: residual must be [2, 8] of float32, float16 or bfloat16, got float32 [3, 8]');
    expectInvalid(() => rmsNorm(Tensor.zeros([2, 8], { dtype: 'int32' }), w, 1e-5), 'rmsNorm: x must be float32, float16 or bfloat16, got int32');
    expectInvalid(() => rmsNorm(x, w, 1e-5, { out: Tensor.zeros([2, 9]) }), 'rmsNorm: out must be float32 [2, 8], got float32 [2, 9]');
  });
});

// ---- rope ---------------------------------------------------------------------------------------

/** Rotate-half RoPE of one head (float64), angle = float32(float32(p) · f). */
function ropeHead(x: number[], p: number, invFreq: ArrayLike<number>): number[] {
  const half = invFreq.length, out = x.slice();
  for (let i = 0; i < half; i++) {
    const angle = Math.fround(Math.fround(p) * invFreq[i]!);
    const c = Math.cos(angle), s = Math.sin(angle);
    out[i] = x[i]! * c - x[half + i]! * s;
    out[half + i] = x[half + i]! * c + x[i]! * s;
  }
  return out;
}

describe('rope', () => {
  test('the worked example of formats.md §5.4 (HF rotate-half, not interleaved)', async () => {
    const q = Tensor.fromArray([1, 2, 3, 4], [1, 1, 4]);
    rope(q, null, [1], Float32Array.from([1, 0.01]));
    expectClose(await valuesOf(q), [-1.984111, 1.959901, 2.462378, 4.0198], () => 2e-6, 'rope worked example');
  });

  test.each(['float32', 'bfloat16'] as DType[])('%s q and k as views into a fused QKV row; V untouched', async (dtype) => {
    const T = 4, H = 4, Hkv = 2, D = 32;
    const row = (H + 2 * Hkv) * D;
    const qkv = tensorOf(random(T * row, 8, -2, 2), [T, H + 2 * Hkv, D], dtype);
    const q = qkv.t.slice(1, 0, H), k = qkv.t.slice(1, H, H + Hkv);
    const positions = [0, 1, 4095, 70000];
    const invFreq = ropeInvFreq({ head_dim: D, rope_theta: 10000 });
    rope(q, k, Tensor.fromArray(Int32Array.from(positions)), Tensor.fromArray(invFreq));
    const got = await valuesOf(qkv.t);
    const want = Array.from(qkv.exact);
    const tol = new Float64Array(want.length);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H + Hkv; h++) {
        const at = t * row + h * D;
        const rotated = ropeHead(want.slice(at, at + D), positions[t]!, invFreq);
        for (let d = 0; d < D; d++) {
          want[at + d] = roundTo(dtype, rotated[d]!);
          tol[at + d] = 4e-6 * 2 + Math.abs(rotated[d]!) * ULP[dtype]!;
        }
      }
    }
    expectClose(got, want, (i) => tol[i]!, `rope ${dtype}`); // V heads: tolerance 0
  });

  test('partial rotary (fewer frequencies than head_size / 2) leaves the other dimensions alone; host positions', async () => {
    const D = 16;
    const x = random(2 * D, 9);
    const q = Tensor.fromArray(x, [2, 1, D]);
    const invFreq = Float32Array.from([0.5, 0.25, 0.125, 0.0625]); // rotaryDim 8
    rope(q, null, [3, 9], invFreq);
    const want = [0, 1].flatMap((t) => {
      const head = Array.from(x.subarray(t * D, (t + 1) * D));
      const rotated = ropeHead(head.slice(0, 8), [3, 9][t]!, invFreq);
      return [...rotated, ...head.slice(8)];
    });
    expectClose(await valuesOf(q), want, (i) => (i % D < 8 ? 1e-6 : 0), 'partial rope');
  });

  test('rejects bad arguments with exact messages', () => {
    const q = Tensor.zeros([2, 4, 8]);
    const f = Float32Array.from([1, 0.1]);
    expectInvalid(() => rope(Tensor.zeros([2, 32]), null, [0, 1], f), 'rope: q must be [numTokens, numHeads, headSize], got float32 [2, 32]');
    expectInvalid(() => rope(q, Tensor.zeros([2, 2, 8], { dtype: 'float16' }), [0, 1], f), 'rope: k must be float32 [2, numKvHeads, 8], got float16 [2, 2, 8]');
    expectInvalid(() => rope(q, null, [0], f), 'rope: positions must have numTokens (2) entries, got 1');
    expectInvalid(() => rope(q, null, [0, 1.5], f), 'rope: positions[1] = 1.5 is not a 32-bit integer');
    expectInvalid(() => rope(q, null, Tensor.fromArray([0, 1]), f), 'rope: positions must be int32 [2], got float32 [2]');
    expectInvalid(() => rope(q, null, [0, 1], new Float32Array(5)), 'rope: invFreq has 5 frequencies; rotaryDim = 10 must be in [2, headSize (8)]');
    expectInvalid(() => rope(q, null, [0, 1], Tensor.fromArray(Int32Array.from([1]))), 'rope: invFreq must be float32 [rotaryDim / 2], got int32 [1]');
    expectInvalid(() => rope(Tensor.zeros([2, 8, 4]).slice(2, 0, 2), null, [0, 1], [1]), 'rope: q heads must be contiguous (strides [≥ 16, 2, 1]), got [32, 4, 1]');
  });
});

// ---- ropeInvFreq ----------------------------------------------------------------------------------

// The HF formulas in float64, written from formats.md §5.2 / modeling_rope_utils (not from lib/ops.ts).
function hfDefault(dim: number, theta: number): number[] {
  return Array.from({ length: dim / 2 }, (_, i) => 1 / theta ** ((2 * i) / dim));
}
function hfLlama3(inv: number[], factor: number, low: number, high: number, old: number): number[] {
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < old / high) return f;
    if (wavelen > old / low) return f / factor;
    const smooth = (old / wavelen - low) / (high - low);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

function expectFreqs(got: Float32Array, want: number[], what: string): void {
  expectClose(got, want, (i) => Math.abs(want[i]!) * 1e-6, what);
}

describe('ropeInvFreq', () => {
  test('default: 1 / θ^(2i/dim), head_dim from hidden_size / heads; formats.md §5.4 example', () => {
    expect(Array.from(ropeInvFreq({ head_dim: 4, rope_theta: 10000 }))).toEqual([1, Math.fround(0.01)]);
    expectFreqs(ropeInvFreq({ hidden_size: 4096, num_attention_heads: 32 }), hfDefault(128, 10000), 'Llama 2 7B');
    expectFreqs(ropeInvFreq({ hidden_size: 896, num_attention_heads: 14, rope_theta: 1e6, rope_scaling: null }), hfDefault(64, 1e6), 'Qwen2 0.5B');
    expectFreqs(ropeInvFreq({ head_dim: 128, rope_theta: 500000, rope_scaling: { rope_type: 'default' } }), hfDefault(128, 500000), 'explicit default');
    expectFreqs(ropeInvFreq({ head_dim: 64, partial_rotary_factor: 0.5 }), hfDefault(32, 10000), 'partial rotary');
  });

  test('linear (legacy "type" key): divided by factor', () => {
    const got = ropeInvFreq({ head_dim: 64, rope_theta: 10000, rope_scaling: { type: 'linear', factor: 2 } });
    expectFreqs(got, hfDefault(64, 10000).map((f) => f / 2), 'linear 2');
    const v5 = ropeInvFreq({ head_dim: 64, rope_parameters: { rope_type: 'linear', factor: 4, rope_theta: 20000 } });
    expectFreqs(v5, hfDefault(64, 20000).map((f) => f / 4), 'transformers v5 rope_parameters');
  });

  test('llama3: long wavelengths scaled, short kept, the middle blended', () => {
    // Llama 3.1 8B.
    const llama31 = { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192, rope_type: 'llama3' };
    const got = ropeInvFreq({ hidden_size: 4096, num_attention_heads: 32, rope_theta: 500000, rope_scaling: llama31 });
    const want = hfLlama3(hfDefault(128, 500000), 8, 1, 4, 8192);
    expectFreqs(got, want, 'Llama 3.1');
    // All three regions occur (kept, blended, divided).
    const base = hfDefault(128, 500000);
    const kinds = new Set(want.map((w, i) => (w === base[i] ? 'kept' : Math.abs(w - base[i]! / 8) < 1e-12 ? 'divided' : 'blended')));
    expect([...kinds].sort()).toEqual(['blended', 'divided', 'kept']);
    // A small context (make-test-model's: original = max_position_embeddings / 8) and head_dim 32.
    const small = { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 256, rope_type: 'llama3' };
    expectFreqs(ropeInvFreq({ head_dim: 32, rope_theta: 500000, rope_scaling: small }), hfLlama3(hfDefault(32, 500000), 8, 1, 4, 256), 'small llama3');
  });

  test('unsupported types and bad configs', () => {
    expect(() => ropeInvFreq({ head_dim: 64, rope_scaling: { rope_type: 'yarn', factor: 4 } })).toThrow(UnsupportedError);
    expect(() => ropeInvFreq({ head_dim: 64, rope_scaling: { type: 'dynamic', factor: 4 } })).toThrow(
      'ropeInvFreq: rope_type "dynamic" is not supported (supported: default, linear, llama3)',
    );
    expectInvalid(() => ropeInvFreq({ num_attention_heads: 32 } as RopeConfig), 'ropeInvFreq: hidden_size must be a positive number, got undefined');
    expectInvalid(() => ropeInvFreq({ head_dim: 64, rope_scaling: { rope_type: 'linear' } }), 'ropeInvFreq: rope_scaling.factor must be a positive number, got undefined');
    expectInvalid(
      () => ropeInvFreq({ head_dim: 64, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1, original_max_position_embeddings: 8192 } }),
      'ropeInvFreq: rope_scaling.high_freq_factor (1) must exceed low_freq_factor (4)',
    );
    expectInvalid(() => ropeInvFreq({ head_dim: 6, partial_rotary_factor: 0.5 }), 'ropeInvFreq: the rotary dimension 3 (head_dim 6 · partial_rotary_factor 0.5) must be even and in [2, head_dim]');
  });
});

// ---- siluMul, add -----------------------------------------------------------------------------------

describe('siluMul and add', () => {
  test('silu(gate) · up of a merged gate_up row (strided view)', async () => {
    const T = 3, I = 40;
    const wide = tensorOf(random(T * (2 * I + 6), 10, -6, 6), [T, 2 * I + 6], 'bfloat16');
    const x = wide.t.slice(1, 0, 2 * I);
    const out = siluMul(x);
    expect(out.shape).toEqual([T, I]);
    const want = Array.from({ length: T * I }, (_, e) => {
      const t = Math.floor(e / I), i = e % I, g = wide.exact[t * (2 * I + 6) + i]!, u = wide.exact[t * (2 * I + 6) + I + i]!;
      return (g / (1 + Math.exp(-g))) * u;
    });
    expectClose(await valuesOf(out), want, (i) => Math.abs(want[i]!) * (1e-5 + ULP.bfloat16!) + 1e-6, 'siluMul bfloat16');
    expectInvalid(() => siluMul(Tensor.zeros([2, 5])), 'siluMul: x must be [numTokens, 2 · intermediateSize], got float32 [2, 5]');
    expectInvalid(() => siluMul(Tensor.zeros([2, 4]), { out: Tensor.zeros([2, 4]) }), 'siluMul: out must be float32 [2, 2], got float32 [2, 4]');
  });

  test('add, also in place', async () => {
    const a = tensorOf(random(100, 11), [10, 10], 'float16'), b = tensorOf(random(100, 12), [10, 10], 'float16');
    const want = Array.from(a.exact, (v, i) => roundTo('float16', v + b.exact[i]!));
    expectClose(await valuesOf(add(a.t, b.t)), want, (i) => Math.abs(want[i]!) * ULP.float16!, 'add');
    expect(add(a.t, b.t, { out: a.t })).toBe(a.t);
    expectClose(await valuesOf(a.t), want, (i) => Math.abs(want[i]!) * ULP.float16!, 'add in place');
    expectInvalid(() => add(a.t, Tensor.zeros([10, 10])), 'add: b must be float16 [10, 10] like a, got float32 [10, 10]');
  });
});

// ---- linear -------------------------------------------------------------------------------------

/** y[m, n] = Σ_k x[m, k] · w[n, k] (+ b[n]) in float64, and Σ|x·w| for the tolerance. */
function linearReference(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, M: number, N: number, K: number): { y: Float64Array; mag: Float64Array } {
  const y = new Float64Array(M * N), mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = b ? b[n]! : 0, a = b ? Math.abs(b[n]!) : 0;
      for (let k = 0; k < K; k++) {
        s += x[m * K + k]! * w[n * K + k]!;
        a += Math.abs(x[m * K + k]! * w[n * K + k]!);
      }
      y[m * N + n] = s;
      mag[m * N + n] = a;
    }
  }
  return { y, mag };
}

describe('linear', () => {
  test.each([
    [1, 'float32', 'float16'],
    [3, 'float16', 'float16'],
    [9, 'bfloat16', 'bfloat16'],
    [33, 'float32', 'bfloat16'],
  ] as [number, DType, DType][])('M = %i, x %s, weight %s, with bias, against the float64 reference', async (M, xDtype, wDtype) => {
    const N = 37, K = 70;
    const x = tensorOf(random(M * K, 13 + M), [M, K], xDtype);
    const w = tensorOf(random(N * K, 14, -0.5, 0.5), [N, K], wDtype);
    const b = tensorOf(random(N, 15), [N], wDtype);
    const { y, mag } = linearReference(x.exact, w.exact, b.exact, M, N, K);
    const out = linear(x.t, w.t, b.t);
    expect(out.shape).toEqual([M, N]);
    expect(out.dtype).toBe(xDtype);
    expectClose(await valuesOf(out), Array.from(y), (i) => 1e-5 * mag[i]! + Math.abs(y[i]!) * ULP[xDtype]!, `linear M ${M}`);
  });

  test('strided x rows, a strided out view and an output dtype', async () => {
    const M = 12, N = 16, K = 24;
    const wide = tensorOf(random(M * (K + 5), 16), [M, K + 5], 'float32');
    const x = wide.t.slice(1, 5);
    const w = tensorOf(random(N * K, 17, -0.5, 0.5), [N, K], 'float16');
    const xs = Float64Array.from({ length: M * K }, (_, i) => wide.exact[Math.floor(i / K) * (K + 5) + 5 + (i % K)]!);
    const { y, mag } = linearReference(xs, w.exact, null, M, N, K);
    const target = Tensor.zeros([M, N + 4], { dtype: 'bfloat16' });
    const view = target.slice(1, 2, 2 + N);
    expect(linear(x, w.t, null, { out: view })).toBe(view);
    const all = await valuesOf(target);
    const got = Array.from({ length: M * N }, (_, i) => all[Math.floor(i / N) * (N + 4) + 2 + (i % N)]!);
    expectClose(got, Array.from(y), (i) => 1e-5 * mag[i]! + Math.abs(y[i]!) * ULP.bfloat16!, 'linear into a view');
    for (let m = 0; m < M; m++) for (const c of [0, 1, N + 2, N + 3]) expect(all[m * (N + 4) + c]).toBe(0); // padding untouched
    const f16 = linear(x, w.t, undefined, { dtype: 'float16' });
    expect(f16.dtype).toBe('float16');
    expectClose(await valuesOf(f16), Array.from(y), (i) => 1e-5 * mag[i]! + Math.abs(y[i]!) * ULP.float16!, 'linear → float16');
  });

  test('rejects bad arguments with exact messages', () => {
    const x = Tensor.zeros([2, 8]), w = Tensor.zeros([4, 8]);
    expectInvalid(() => linear(Tensor.zeros([8]), w), 'linear: x must be [numTokens, inFeatures], got float32 [8]');
    expectInvalid(() => linear(x, Tensor.zeros([4, 7])), 'linear: weight must be [outFeatures, 8] of float32, float16 or bfloat16, got float32 [4, 7]');
    expectInvalid(() => linear(x, w, Tensor.zeros([5])), 'linear: bias must be [4] of float32, float16 or bfloat16, got float32 [5]');
    expectInvalid(() => linear(x, w, null, { out: Tensor.zeros([2, 5]) }), 'linear: out must be float32 [2, 4], got float32 [2, 5]');
    expectInvalid(() => linear(x, w, null, { dtype: 'int32' }), 'linear: dtype must be float32, float16 or bfloat16, got "int32"');
    const notContiguous = Tensor.zeros([8, 8]).slice(1, 0, 4).slice(0, 0, 4); // [4, 4] with row stride 8
    expectInvalid(() => linear(Tensor.zeros([2, 4]), notContiguous), 'linear: weight must be contiguous');
  });

  test('the portable CPU path (PAGEDLLM_SIMD=portable) gives the same results, and PAGEDLLM_SIMD=avx2 caps the path', () => {
    expect(['avx512', 'avx2', 'portable']).toContain(cpuSimd());
    ensureDist();
    const script = `
      const ops = require(${JSON.stringify(REPO + '/dist/ops')});
      const M = 5, N = 19, K = 33;
      const x = PKG.Tensor.fromArray(Float32Array.from({ length: M * K }, (_, i) => Math.sin(i)), [M, K]);
      const w = PKG.Tensor.fromArray(Float32Array.from({ length: N * K }, (_, i) => Math.cos(i)), [N, K]).cast('float16');
      ops.linear(x, w).toArray().then((y) => {
        console.log(JSON.stringify({ simd: ops.cpuSimd(), y: Array.from(y) }));
      });`;
    const portable = runChild(script, { PAGEDLLM_SIMD: 'portable' });
    const auto = runChild(script, { PAGEDLLM_SIMD: undefined });
    expect(portable.status).toBe(0);
    expect(portable.json?.simd).toBe('portable');
    expect(auto.json?.simd).toBe(cpuSimd());
    const a = auto.json.y as number[], p = portable.json.y as number[];
    expect(p.length).toBe(5 * 19);
    // Both against a float64 reference of the same data.
    const xs = Array.from({ length: 5 * 33 }, (_, i) => Math.fround(Math.sin(i)));
    const ws = Array.from({ length: 19 * 33 }, (_, i) => halfValue(float32ToFloat16([Math.cos(i)])[0]!));
    const { y, mag } = linearReference(xs, ws, null, 5, 19, 33);
    expectClose(p, Array.from(y), (i) => 1e-5 * mag[i]!, 'portable');
    expectClose(a, Array.from(y), (i) => 1e-5 * mag[i]!, cpuSimd());
    // PAGEDLLM_SIMD=avx2 caps an avx512 CPU at avx2, whose sums are the avx512 path's, bit for bit.
    const capped = runChild(script, { PAGEDLLM_SIMD: 'avx2' });
    expect(capped.status).toBe(0);
    expect(capped.json?.simd).toBe(cpuSimd() === 'avx512' ? 'avx2' : cpuSimd());
    if (cpuSimd() !== 'portable') expect(capped.json.y).toEqual(a);
  });
});
