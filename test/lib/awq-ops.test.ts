// The AWQ int4 ops from TypeScript (lib/ops.ts: awqLinear, awqDequantize) on the CPU: the
// dequantized weight bit for bit, and y = x · W (+ bias) against a float64 reference written here
// from formats.md §1 (reverse-order unpacking, W = float16((q − z)·s)), the −1 group size, outputs
// into views, and the typed errors of bad shapes, dtypes, group sizes and devices. (The kernels'
// M × shape × group-size grids are tested natively: test/native/test_awq_cpu.cpp.)
import { devices, float32ToBfloat16, float32ToFloat16, InvalidArgumentError, Tensor, UnsupportedError, type DType } from '../../lib';
import { awqDequantize, awqLinear, awqRepack, type AwqLayout, type AwqWeight } from '../../lib/ops';
import { bf16Value, halfValue, rng } from './helpers';

// ---- reference --------------------------------------------------------------------------------

const REVERSE = [0, 4, 1, 5, 2, 6, 3, 7]; // column j of a word is nibble slot REVERSE[j] (formats.md §1.3)

interface HostAwq {
  K: number;
  N: number;
  G: number;
  qweight: Int32Array;
  qzeros: Int32Array;
  scales: Uint16Array;
}

function randomAwq(K: number, N: number, G: number, seed: number): HostAwq {
  const r = rng(seed);
  const word = (): number => (Math.floor(r() * 2 ** 32) | 0);
  const groups = K / G;
  return {
    K, N, G,
    qweight: Int32Array.from({ length: (K * N) / 8 }, word),
    qzeros: Int32Array.from({ length: (groups * N) / 8 }, word),
    scales: float32ToFloat16(Float32Array.from({ length: groups * N }, () => 0.002 + 0.018 * r())),
  };
}

/** W [K, N] as float16 bits, by the definition. */
function dequantizeReference(w: HostAwq): Uint16Array {
  const out = new Uint16Array(w.K * w.N);
  const words = w.N / 8;
  for (let k = 0; k < w.K; k++) {
    const g = Math.floor(k / w.G);
    for (let n = 0; n < w.N; n++) {
      const shift = 4 * REVERSE[n % 8]!;
      const q = (w.qweight[k * words + (n >> 3)]! >>> shift) & 15;
      const z = (w.qzeros[g * words + (n >> 3)]! >>> shift) & 15;
      out[k * w.N + n] = float32ToFloat16([(q - z) * halfValue(w.scales[g * w.N + n]!)])[0]!;
    }
  }
  return out;
}

function upload(w: HostAwq, groupSize: number = w.G): AwqWeight {
  return {
    qweight: Tensor.fromArray(w.qweight, [w.K, w.N / 8]),
    qzeros: Tensor.fromArray(w.qzeros, [w.K / w.G, w.N / 8]),
    scales: Tensor.fromArray(w.scales, [w.K / w.G, w.N], { dtype: 'float16' }),
    groupSize,
  };
}

function dispose(w: AwqWeight): void {
  w.qweight.dispose();
  w.qzeros.dispose();
  w.scales.dispose();
}

function randomValues(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

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

/** y = x · W (+ b) in float64 and Σ|x·W| (+ |b|) per element. */
// The CPU gemv's int8 activations (awq.h awq_quantize_activations, devices().cpu.awqActivations):
// each row of x in blocks of 16, codes round-to-nearest-even(x · fround(127 / max|x|)) and scale
// fround(max|x| / 127), all in float32. Returns x̂ = scale · code.
function quantizeActivations(x: ArrayLike<number>, M: number, K: number): Float64Array {
  const out = new Float64Array(M * K);
  for (let m = 0; m < M; m++)
    for (let b0 = 0; b0 < K; b0 += 16) {
      const b1 = Math.min(K, b0 + 16);
      let amax = 0;
      for (let k = b0; k < b1; k++) amax = Math.max(amax, Math.abs(Math.fround(x[m * K + k]!)));
      if (amax < 1e-30) continue;
      const inv = Math.fround(127 / amax), d = Math.fround(amax / 127);
      for (let k = b0; k < b1; k++) {
        const v = Math.fround(Math.fround(x[m * K + k]!) * inv);
        const r = Math.round(v), code = r - v === 0.5 && r % 2 !== 0 ? r - 1 : r; // ties to even
        out[m * K + k] = d * Math.max(-127, Math.min(127, code));
      }
    }
  return out;
}
// What the CPU multiplies x by: x̂ over a slab8 weight (quantized to int8 at any M), else x.
function effectiveX(x: ArrayLike<number>, M: number, K: number, layout: AwqLayout): ArrayLike<number> {
  return layout === 'slab8' ? quantizeActivations(x, M, K) : x;
}
// The layouts this CPU runs: the checkpoint's, and slab8 where the gemv takes int8 activations.
const LAYOUTS: AwqLayout[] = devices().cpu.awqActivations === 'int8' ? ['autoawq', 'slab8'] : ['autoawq'];
const inLayout = (w: AwqWeight, layout: AwqLayout): AwqWeight => (layout === 'slab8' ? awqRepack(w) : w);

function matmulReference(x: ArrayLike<number>, W: Uint16Array, b: ArrayLike<number> | null, M: number, K: number, N: number): { y: Float64Array; mag: Float64Array } {
  const w = Float64Array.from(W, (h) => halfValue(h));
  const y = new Float64Array(M * N), mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = b ? b[n]! : 0, a = b ? Math.abs(b[n]!) : 0;
      for (let k = 0; k < K; k++) {
        s += x[m * K + k]! * w[k * N + n]!;
        a += Math.abs(x[m * K + k]! * w[k * N + n]!);
      }
      y[m * N + n] = s;
      mag[m * N + n] = a;
    }
  }
  return { y, mag };
}

const ULP: Record<string, number> = { float32: 2 ** -23, float16: 2 ** -10, bfloat16: 2 ** -7 };
// float32 accumulation in any order, plus the CPU GEMV's unrounded (q − z)·s (half a float16 ulp of W).
const WEIGHT_TOLERANCE = 1e-5 + 2 ** -11;

function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number, what: string): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= tol(i))) throw new Error(`${what}: element ${i}: got ${got[i]}, want ${want[i]} (tolerance ${tol(i)})`);
  }
}

function expectError(fn: () => unknown, type: typeof InvalidArgumentError | typeof UnsupportedError, message: string): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(type);
  expect((error as Error).message).toBe(message);
}

// ---- tests --------------------------------------------------------------------------------------

describe('awqDequantize', () => {
  test.each([
    [128, 8, 128],
    [256, 72, 32],
    [192, 40, 64],
    [77, 24, 77],
  ])('K %i, N %i, G %i: float16 bit for bit, float32 the same values', async (K, N, G) => {
    const host = randomAwq(K, N, G, K + N + G);
    const want = dequantizeReference(host);
    const w = upload(host);
    const f16 = awqDequantize(w);
    expect(f16.shape).toEqual([K, N]);
    expect(f16.dtype).toBe('float16');
    const bits = (await f16.toArray()) as Uint16Array;
    for (let i = 0; i < want.length; i++) if (bits[i] !== want[i]) throw new Error(`awqDequantize at ${i}: ${bits[i]} vs ${want[i]}`);
    const f32 = await valuesOf(awqDequantize(w, { dtype: 'float32' }));
    expectClose(f32, Float64Array.from(want, (h) => halfValue(h)), () => 0, 'awqDequantize float32');
    dispose(w);
  });

  test("formats.md §1.5's worked example", async () => {
    const K = 128, N = 8;
    const w: AwqWeight = {
      qweight: Tensor.fromArray(new Int32Array(K).fill(0x86427531 | 0), [K, 1]),
      qzeros: Tensor.fromArray(Int32Array.of(0x88888888 | 0), [1, 1]),
      scales: Tensor.fromArray(float32ToFloat16(new Float32Array(N).fill(0.01)), [1, N], { dtype: 'float16' }),
      groupSize: -1,
    };
    const got = await valuesOf(awqDequantize(w, { dtype: 'float32' }));
    const want = [-0.07000732, -0.05999756, -0.05001831, -0.04000854, -0.02999878, -0.02000427, -0.01000214, 0.0];
    for (let k = 0; k < K; k++) expectClose(got.subarray(k * N, (k + 1) * N), want, () => 5e-9, `row ${k}`);
    dispose(w);
  });
});

describe('awqLinear', () => {
  test.each([
    [1, 'float32', 'float32', 128, 64],
    [3, 'float16', 'float16', 64, 64],
    [8, 'bfloat16', 'float32', 32, 32],
    [17, 'float16', 'bfloat16', 128, -1],
    [40, 'float32', 'float16', 256, 64],
  ] as [number, DType, DType, number, number][])('M = %i, x %s → %s, K %i, G %i, with bias, against float64', async (M, xDtype, outDtype, K, G) => {
    const N = 72;
    const host = randomAwq(K, N, G === -1 ? K : G, M * 31 + K);
    const W = dequantizeReference(host);
    const checkpoint = upload(host, G);
    const x = tensorOf(randomValues(M * K, M), [M, K], xDtype);
    const b = tensorOf(randomValues(N, 5), [N], 'float32');
    for (const layout of LAYOUTS) {
      const w = inLayout(checkpoint, layout);
      const { y, mag } = matmulReference(effectiveX(x.exact, M, K, layout), W, b.exact, M, K, N);
      const out = awqLinear(x.t, w, b.t, { dtype: outDtype });
      expect(out.shape).toEqual([M, N]);
      expect(out.dtype).toBe(outDtype);
      expectClose(await valuesOf(out), Array.from(y), (i) => WEIGHT_TOLERANCE * mag[i]! + Math.abs(y[i]!) * ULP[outDtype]!, `awqLinear M ${M} ${layout}`);
      // The default output dtype is x's.
      expect(awqLinear(x.t, w).dtype).toBe(xDtype);
      if (w !== checkpoint) w.qweight.dispose();
    }
    dispose(checkpoint);
  });

  test('strided x rows and a strided out view', async () => {
    const M = 5, K = 64, N = 16;
    const host = randomAwq(K, N, 32, 9);
    const W = dequantizeReference(host);
    const checkpoint = upload(host);
    const wide = tensorOf(randomValues(M * (K + 3), 10), [M, K + 3], 'float32');
    const x = wide.t.slice(1, 3);
    const xs = Float64Array.from({ length: M * K }, (_, i) => wide.exact[Math.floor(i / K) * (K + 3) + 3 + (i % K)]!);
    for (const layout of LAYOUTS) {
      const w = inLayout(checkpoint, layout);
      const { y, mag } = matmulReference(effectiveX(xs, M, K, layout), W, null, M, K, N);
      const target = Tensor.zeros([M, N + 4]);
      const view = target.slice(1, 2, 2 + N);
      expect(awqLinear(x, w, null, { out: view })).toBe(view);
      const all = await valuesOf(target);
      const got = Array.from({ length: M * N }, (_, i) => all[Math.floor(i / N) * (N + 4) + 2 + (i % N)]!);
      expectClose(got, Array.from(y), (i) => WEIGHT_TOLERANCE * mag[i]! + Math.abs(y[i]!) * ULP.float32!, `awqLinear into a view, ${layout}`);
      for (let m = 0; m < M; m++) for (const c of [0, 1, N + 2, N + 3]) expect(all[m * (N + 4) + c]).toBe(0);
      if (w !== checkpoint) w.qweight.dispose();
    }
    dispose(checkpoint);
  });

  test('rejects bad arguments with typed errors and exact messages', () => {
    const host = randomAwq(64, 16, 32, 3);
    const w = upload(host);
    const x = Tensor.zeros([2, 64]);
    const bad = (patch: Partial<AwqWeight>): AwqWeight => ({ ...w, ...patch });
    expectError(() => awqLinear(Tensor.zeros([64]), w), InvalidArgumentError, 'awqLinear: x must be [numTokens, inFeatures], got float32 [64]');
    expectError(() => awqLinear(Tensor.zeros([2, 64], { dtype: 'int32' }), w), InvalidArgumentError, 'awqLinear: x must be float32, float16 or bfloat16, got int32');
    expectError(() => awqLinear(Tensor.zeros([2, 32]), w), InvalidArgumentError, 'awqLinear: weight.qweight must be int32 [32, outFeatures / 8] to match x, got int32 [64, 2]');
    expectError(() => awqLinear(x, null as unknown as AwqWeight), InvalidArgumentError, 'awqLinear: weight must be an AwqWeight { qweight, qzeros, scales, groupSize }');
    expectError(() => awqLinear(x, bad({ qweight: Tensor.zeros([64, 2]) })), InvalidArgumentError, 'awqLinear: weight.qweight must be int32 [inFeatures, outFeatures / 8], got float32 [64, 2]');
    expectError(() => awqLinear(x, bad({ qzeros: Tensor.zeros([1, 2], { dtype: 'int32' }) })), InvalidArgumentError, 'awqLinear: weight.qzeros must be int32 [2, 2], got int32 [1, 2]');
    expectError(() => awqLinear(x, bad({ scales: Tensor.zeros([2, 16]) })), InvalidArgumentError, 'awqLinear: weight.scales must be float16 [2, 16], got float32 [2, 16]');
    expectError(() => awqLinear(x, bad({ groupSize: 48 })), UnsupportedError, 'awqLinear: group size 48 is not supported (supported: 32, 64, 128, or inFeatures (64) / -1 for one group)');
    expectError(() => awqLinear(x, bad({ groupSize: 1.5 })), InvalidArgumentError, 'awqLinear: weight.groupSize must be an integer, got 1.5');
    expectError(() => awqLinear(Tensor.zeros([2, 96]), { ...upload(randomAwq(96, 16, 96, 4)), groupSize: 64 }), InvalidArgumentError, 'awqLinear: inFeatures 96 is not a multiple of the group size 64');
    expectError(() => awqLinear(x, w, Tensor.zeros([15])), InvalidArgumentError, 'awqLinear: bias must be [16] of float32, float16 or bfloat16, got float32 [15]');
    expectError(() => awqLinear(x, w, null, { out: Tensor.zeros([2, 8]) }), InvalidArgumentError, 'awqLinear: out must be float32 [2, 16], got float32 [2, 8]');
    expectError(() => awqLinear(x, w, null, { dtype: 'int8' }), InvalidArgumentError, 'awqLinear: dtype must be float32, float16 or bfloat16, got "int8"');
    const strided = Tensor.zeros([64, 4], { dtype: 'int32' }).slice(1, 0, 2); // [64, 2] with row stride 4
    expectError(() => awqLinear(x, bad({ qweight: strided })), InvalidArgumentError, 'awqLinear: weight.qweight must be contiguous');
    expectError(() => awqDequantize(w, { dtype: 'bfloat16' as 'float16' }), InvalidArgumentError, 'awqDequantize: dtype must be float16 or float32, got "bfloat16"');
    dispose(w);
  });

  const cuda = devices().cuda.available;
  (cuda ? test : test.skip)('rejects a slab8 weight on CUDA (needs CUDA)', () => {
    const w = upload(randomAwq(64, 16, 32, 3));
    const x = Tensor.zeros([2, 64], { device: 'cuda:0' });
    const onGpu: AwqWeight = { qweight: w.qweight.to('cuda:0'), qzeros: w.qzeros.to('cuda:0'), scales: w.scales.to('cuda:0'), groupSize: 32, layout: 'slab8' };
    expectError(() => awqLinear(x, onGpu), UnsupportedError, 'awqLinear: the slab8 layout is for the CPU (the CUDA kernels read autoawq)');
    expectError(() => awqRepack({ ...onGpu, layout: 'autoawq' }), UnsupportedError, 'awqRepack: the slab8 layout is for the CPU (the CUDA kernels read autoawq)');
    dispose(onGpu);
    x.dispose();
    dispose(w);
  });

  (cuda ? test : test.skip)('rejects a weight on another device (needs CUDA)', () => {
    const host = randomAwq(64, 16, 32, 3);
    const w = upload(host);
    const x = Tensor.zeros([2, 64], { device: 'cuda:0' });
    expectError(() => awqLinear(x, w), InvalidArgumentError, 'awqLinear: weight.qweight is on cpu but x is on cuda:0');
    x.dispose();
    dispose(w);
  });
});

describe('awqRepack', () => {
  test('slab8 is the same weight: awqDequantize bit for bit, in place or not', async () => {
    for (const [K, N, G] of [[64, 16, 32], [256, 72, 128], [96, 40, -1]] as const) {
      const host = randomAwq(K, N, G === -1 ? K : G, K + N);
      const w = upload(host, G);
      const before = await w.qweight.toArray();
      const want = await valuesOf(awqDequantize(w));
      const copy = awqRepack(w);
      expect(copy.layout).toBe('slab8');
      expect(copy.qweight).not.toBe(w.qweight);
      expect(copy.qweight.shape).toEqual([K, N / 8]);
      expect(await w.qweight.toArray()).toEqual(before);  // the input is untouched
      expect(await valuesOf(awqDequantize(copy))).toEqual(want);
      const own = awqRepack(w, { inPlace: true });
      expect(own.qweight).toBe(w.qweight);
      expect(await own.qweight.toArray()).toEqual(await copy.qweight.toArray());
      expect(await own.qweight.toArray()).not.toEqual(before);
      expect(await valuesOf(awqDequantize(own))).toEqual(want);
      copy.qweight.dispose();
      dispose(w);
    }
  });

  test('rejects what has no slab8 form, with typed errors', () => {
    const w = upload(randomAwq(80, 16, 80, 5), -1);
    expectError(() => awqRepack(w), InvalidArgumentError, 'awqRepack: the slab8 layout needs inFeatures a multiple of 32, got 80');
    expectError(() => awqLinear(Tensor.zeros([1, 80]), { ...w, layout: 'slab8' }), InvalidArgumentError, 'awqLinear: the slab8 layout needs inFeatures a multiple of 32, got 80');
    expectError(() => awqLinear(Tensor.zeros([1, 80]), { ...w, layout: 'tiled' as AwqLayout }), InvalidArgumentError, `awqLinear: weight.layout must be 'autoawq' or 'slab8', got "tiled"`);
    const v = upload(randomAwq(64, 16, 32, 6));
    const slab = awqRepack(v, { inPlace: true });
    expectError(() => awqRepack(slab), InvalidArgumentError, 'awqRepack: the weight is already slab8');
    expectError(() => awqRepack(v, { inPlace: 1 as unknown as boolean }), InvalidArgumentError, 'awqRepack: inPlace must be a boolean, got 1');
    dispose(v);
    dispose(w);
  });
});
