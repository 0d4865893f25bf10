// AWQ GEMM format in TypeScript (lib/awq.ts): the nibble order against formats.md §1.5's worked
// example, round-to-nearest against a float64 implementation written here from formats.md §1.2,
// the reference dequantizer, quantization_config parsing (§1.6) and the per-layer tensor checks.
import {
  AWQ_ORDER,
  AWQ_REVERSE_ORDER,
  checkAwqTensors,
  dequantizeAwq,
  isAwqSkipped,
  packAwq,
  parseAwqConfig,
  quantizeRtn,
  unpackAwq,
  type AwqTensorInfo,
} from '../../lib/awq';
import { halfValue, refHalfBits, rng } from './helpers';

// ---- the nibble order -----------------------------------------------------------------------------

describe('AWQ nibble order (formats.md §1.3, §1.5)', () => {
  test('the orders are the documented inverse permutations', () => {
    expect(AWQ_ORDER).toEqual([0, 2, 4, 6, 1, 3, 5, 7]);
    expect(AWQ_REVERSE_ORDER).toEqual([0, 4, 1, 5, 2, 6, 3, 7]);
    for (let j = 0; j < 8; j++) {
      expect(AWQ_ORDER[AWQ_REVERSE_ORDER[j]!]).toBe(j);
      expect(AWQ_REVERSE_ORDER[AWQ_ORDER[j]!]).toBe(j);
    }
  });

  test('codes 1..8 pack to 0x86427531 (bytes 31 75 42 86 on disk) and unpack back', () => {
    const word = packAwq([1, 2, 3, 4, 5, 6, 7, 8], 1, 8);
    expect(word[0]).toBe(-2042464975);
    expect(word[0]! >>> 0).toBe(0x86427531);
    expect([...new Uint8Array(word.buffer)]).toEqual([0x31, 0x75, 0x42, 0x86]);
    expect([...unpackAwq(word, 1, 8)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    // A sequential unpack (the GEMV layout's) reads the slots in order: the wrong columns.
    const sequential = Array.from({ length: 8 }, (_, i) => (word[0]! >>> (4 * i)) & 0xf);
    expect(sequential).toEqual([1, 3, 5, 7, 2, 4, 6, 8]);
  });

  test.each([
    [[0, 1, 2, 3, 4, 5, 6, 7], 0x75316420],
    [[15, 0, 15, 0, 15, 0, 15, 0], 0x0000ffff],
    [[8, 8, 8, 8, 8, 8, 8, 8], 0x88888888],
    [[8, 7, 8, 7, 8, 7, 8, 7], 0x77778888],
  ])('codes %j pack to the documented word %i', (codes, expected) => {
    const word = packAwq(codes, 1, 8);
    expect(word[0]! >>> 0).toBe(expected);
    expect([...unpackAwq(word, 1, 8)]).toEqual(codes);
  });

  test('pack and unpack are inverse on random words and codes of several rows', () => {
    const r = rng(7);
    const rows = 5, cols = 24;
    const words = Int32Array.from({ length: rows * (cols / 8) }, () => (r() * 2 ** 32) | 0);
    expect([...packAwq(unpackAwq(words, rows, cols), rows, cols)]).toEqual([...words]);
    const codes = Uint8Array.from({ length: rows * cols }, () => Math.floor(r() * 16));
    const packed = packAwq(codes, rows, cols);
    expect([...unpackAwq(packed, rows, cols)]).toEqual([...codes]);
    // Column 8c + j of row r is in slot REVERSE[j] of word [r, c] (formats.md's formula, written out here).
    for (let row = 0; row < rows; row++) {
      for (let col = 0; col < cols; col++) {
        const word = packed[row * (cols / 8) + Math.floor(col / 8)]!;
        expect((word >>> (4 * [0, 4, 1, 5, 2, 6, 3, 7][col % 8]!)) & 0xf).toBe(codes[row * cols + col]);
      }
    }
  });

  test('bad codes and shapes are ERR_INVALID_ARGUMENT', () => {
    expect(() => packAwq([16, 0, 0, 0, 0, 0, 0, 0], 1, 8)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('[0, 0] = 16') }));
    expect(() => packAwq([0.5, 0, 0, 0, 0, 0, 0, 0], 1, 8)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => packAwq(new Array(12).fill(0), 1, 12)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('multiple of 8') }));
    expect(() => unpackAwq(new Int32Array(3), 1, 8)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('dequantization', () => {
  test('formats.md §1.5: K = 128, N = 8, G = 128, zeros 8, scales fp16(0.01), word 0x86427531', () => {
    const K = 128, N = 8;
    const qweight = new Int32Array(K).fill(0x86427531 | 0);
    const qzeros = Int32Array.of(0x88888888 | 0);
    const scales = new Uint16Array(N).fill(refHalfBits(0.01));
    expect(halfValue(scales[0]!)).toBe(0.01000213623046875);
    const w = dequantizeAwq({ qweight, qzeros, scales }, N, K, 128);
    const expected = [-0.07000732, -0.05999756, -0.05001831, -0.04000854, -0.02999878, -0.02000427, -0.01000214, 0.0];
    for (let k = 0; k < K; k += 37) {
      for (let n = 0; n < N; n++) expect(w[k * N + n]).toBeCloseTo(expected[n]!, 8);
    }
    // Each value is the float16 nearest to (q − z) · s.
    for (let n = 0; n < N; n++) expect(w[n]).toBe(halfValue(refHalfBits((n + 1 - 8) * 0.01000213623046875)));
  });
});

// ---- round-to-nearest ------------------------------------------------------------------------------

/** formats.md §1.2 in float64, loop by loop over HF rows: codes [N, K], zeros and scales [N, K/G], and fp16((q − z) · s). */
function referenceRtn(w: Float32Array, N: number, K: number, G: number) {
  const groups = K / G;
  const halfEven = (x: number): number => {
    const f = Math.floor(x);
    const d = x - f;
    return d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
  };
  const q = new Uint8Array(N * K), z = new Uint8Array(N * groups), s = new Float64Array(N * groups), bits = new Uint16Array(N * groups), recon = new Float64Array(N * K);
  const unclamped = new Uint8Array(N * K);  // 1 where neither the zero point nor the code was clamped
  for (let n = 0; n < N; n++) {
    for (let g = 0; g < groups; g++) {
      const group = Array.from(w.subarray(n * K + g * G, n * K + (g + 1) * G));
      const max = Math.max(...group), min = Math.min(...group);
      bits[n * groups + g] = refHalfBits(Math.max(max - min, 1e-5) / 15);
      const scale = halfValue(bits[n * groups + g]!);
      s[n * groups + g] = scale;
      const zeroRaw = halfEven(-min / scale);
      const zero = Math.min(15, Math.max(0, zeroRaw));
      z[n * groups + g] = zero;
      group.forEach((v, i) => {
        const codeRaw = halfEven(v / scale) + zero;
        const code = Math.min(15, Math.max(0, codeRaw));
        q[n * K + g * G + i] = code;
        unclamped[n * K + g * G + i] = zero === zeroRaw && code === codeRaw ? 1 : 0;
        recon[n * K + g * G + i] = halfValue(refHalfBits((code - zero) * scale));
      });
    }
  }
  return { q, z, s, bits, recon, unclamped };
}

function randomWeight(N: number, K: number, seed: number): Float32Array {
  const r = rng(seed);
  const w = Float32Array.from({ length: N * K }, () => (r() - 0.5) * 0.2 + (r() < 0.02 ? (r() - 0.5) * 2 : 0));
  // Special groups: one constant row-group (range clamped at 1e-5), one all positive, one all negative.
  for (let k = 0; k < Math.min(32, K); k++) {
    w[k] = 0.25;
    w[K + k] = 0.1 + k * 1e-3;
    w[2 * K + k] = -0.3 - k * 1e-3;
  }
  return w;
}

describe('quantizeRtn', () => {
  test.each([
    [16, 128, 32],
    [24, 128, 64],
    [8, 256, 128],
    [16, 96, -1],
  ])('N %i, K %i, group %i matches the float64 reference: codes, zeros, float16 scales, reconstruction', (N, K, groupSize) => {
    const G = groupSize === -1 ? K : groupSize;
    const w = randomWeight(N, K, N * K + G);
    const got = quantizeRtn(w, N, K, groupSize);
    const ref = referenceRtn(w, N, K, G);
    const groups = K / G;
    expect(got.qweight.length).toBe(K * (N / 8));
    expect(got.qzeros.length).toBe(groups * (N / 8));
    expect(got.scales.length).toBe(groups * N);
    const codes = unpackAwq(got.qweight, K, N), zeros = unpackAwq(got.qzeros, groups, N);
    for (let n = 0; n < N; n++) {
      for (let g = 0; g < groups; g++) {
        expect([n, g, got.scales[g * N + n]]).toEqual([n, g, ref.bits[n * groups + g]]);
        expect([n, g, zeros[g * N + n]]).toEqual([n, g, ref.z[n * groups + g]]);
      }
      for (let k = 0; k < K; k++) {
        if (codes[k * N + n] !== ref.q[n * K + k]) throw new Error(`code [n ${n}, k ${k}]: got ${codes[k * N + n]}, expected ${ref.q[n * K + k]} (w = ${w[n * K + k]})`);
        if (got.reconstruction[n * K + k] !== ref.recon[n * K + k]) throw new Error(`reconstruction [${n}, ${k}]: got ${got.reconstruction[n * K + k]}, expected ${ref.recon[n * K + k]}`);
      }
    }
    // The reference dequantizer gives the reconstruction, transposed to [K, N].
    const deq = dequantizeAwq(got, N, K, groupSize);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) expect(deq[k * N + n]).toBe(got.reconstruction[n * K + k]);
    // Round-to-nearest error is at most half a step (plus float16 rounding) wherever nothing clamps.
    // (Groups entirely above or below 0 clamp the zero point, as in AutoAWQ: the special rows.)
    let checked = 0;
    for (let n = 0; n < N; n++) {
      for (let k = 0; k < K; k++) {
        if (!ref.unclamped[n * K + k]) continue;
        checked++;
        const s = ref.s[n * groups + Math.floor(k / G)]!;
        expect(Math.abs(w[n * K + k]! - got.reconstruction[n * K + k]!)).toBeLessThanOrEqual(0.5 * s * (1 + 1e-3) + 1e-3 * Math.abs(w[n * K + k]!));
      }
    }
    expect(checked).toBeGreaterThan(N * K * 0.8);
  });

  test('exact halves round to even, as torch.round does', () => {
    // One group of 32 with min 0, max 15/64: s = 1/64 exactly, z = 0, and w = (j + 0.5)/64 are ties.
    const N = 8, K = 32;
    const w = new Float32Array(N * K);
    for (let n = 0; n < N; n++) {
      w[n * K] = 0;
      w[n * K + 1] = 15 / 64;
      for (let k = 2; k < K; k++) w[n * K + k] = (((k + n) % 15) + 0.5) / 64;
    }
    const got = quantizeRtn(w, N, K, 32);
    const codes = unpackAwq(got.qweight, K, N);
    for (let n = 0; n < N; n++) {
      for (let k = 2; k < K; k++) {
        const j = (k + n) % 15;
        expect(codes[k * N + n]).toBe(j % 2 === 0 ? j : j + 1);
      }
    }
  });

  test('bad arguments are ERR_INVALID_ARGUMENT', () => {
    const w = new Float32Array(8 * 64);
    expect(() => quantizeRtn(w, 8, 64, 48)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('group size 48') }));
    expect(() => quantizeRtn(new Float32Array(12 * 64), 12, 64, 32)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('multiple of 8') }));
    expect(() => quantizeRtn(w, 8, 32, 32)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('elements') }));
    const nan = w.slice();
    nan[70] = NaN;
    expect(() => quantizeRtn(nan, 8, 64, 32)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('[1, 6]') }));
    const huge = w.slice();
    huge[3] = 1e6;
    expect(() => quantizeRtn(huge, 8, 64, 32)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('float16') }));
  });
});

// ---- quantization_config -------------------------------------------------------------------------------

const AUTOAWQ = { quant_method: 'awq', zero_point: true, group_size: 128, bits: 4, version: 'gemm', modules_to_not_convert: null };

describe('parseAwqConfig', () => {
  test('AutoAWQ, transformers and vLLM spellings', () => {
    expect(parseAwqConfig(AUTOAWQ)).toEqual({ bits: 4, groupSize: 128, zeroPoint: true, version: 'gemm', modulesToNotConvert: [] });
    expect(parseAwqConfig({ quant_method: 'awq', w_bit: 4, q_group_size: 64, zero_point: true, version: 'GEMM' }).groupSize).toBe(64);
    expect(parseAwqConfig({ ...AUTOAWQ, group_size: -1 }).groupSize).toBe(-1);
    expect(parseAwqConfig({ ...AUTOAWQ, group_size: 32, w_bit: 4 }).groupSize).toBe(32);
    const { version: _, ...noVersion } = AUTOAWQ;
    expect(parseAwqConfig(noVersion).version).toBe('gemm');
    // transformers' exllama / ipex backends run on GEMM-format tensors.
    expect(parseAwqConfig({ ...AUTOAWQ, version: 'exllama' }).version).toBe('gemm');
    expect(parseAwqConfig({ ...AUTOAWQ, modules_to_not_convert: ['lm_head', 'mlp.down'] }).modulesToNotConvert).toEqual(['lm_head', 'mlp.down']);
  });

  const bad: Array<[string, unknown, 'ERR_MODEL_FORMAT' | 'ERR_UNSUPPORTED', string]> = [
    ['not an object', 'awq', 'ERR_MODEL_FORMAT', 'must be an object'],
    ['quant_method missing', { ...AUTOAWQ, quant_method: undefined }, 'ERR_MODEL_FORMAT', 'quant_method'],
    ['quant_method gptq', { ...AUTOAWQ, quant_method: 'gptq' }, 'ERR_UNSUPPORTED', '"gptq"'],
    ['bits missing', { ...AUTOAWQ, bits: undefined }, 'ERR_MODEL_FORMAT', 'bits (or w_bit) is required'],
    ['bits a string', { ...AUTOAWQ, bits: '4' }, 'ERR_MODEL_FORMAT', 'bits must be a positive integer'],
    ['bits 8', { ...AUTOAWQ, bits: 8 }, 'ERR_UNSUPPORTED', 'bits 8'],
    ['bits and w_bit disagree', { ...AUTOAWQ, w_bit: 8 }, 'ERR_MODEL_FORMAT', 'disagree'],
    ['group_size missing', { ...AUTOAWQ, group_size: undefined }, 'ERR_MODEL_FORMAT', 'group_size (or q_group_size) is required'],
    ['group_size 0', { ...AUTOAWQ, group_size: 0 }, 'ERR_MODEL_FORMAT', 'group_size must be'],
    ['group_size -2', { ...AUTOAWQ, group_size: -2 }, 'ERR_MODEL_FORMAT', 'group_size must be'],
    ['group_size 1.5', { ...AUTOAWQ, group_size: 1.5 }, 'ERR_MODEL_FORMAT', 'group_size must be'],
    ['group_size 256', { ...AUTOAWQ, group_size: 256 }, 'ERR_UNSUPPORTED', 'group_size 256'],
    ['zero_point missing', { ...AUTOAWQ, zero_point: undefined }, 'ERR_MODEL_FORMAT', 'zero_point'],
    ['zero_point a string', { ...AUTOAWQ, zero_point: 'true' }, 'ERR_MODEL_FORMAT', 'zero_point'],
    ['zero_point false', { ...AUTOAWQ, zero_point: false }, 'ERR_UNSUPPORTED', 'zero_point false'],
    ['version gemv', { ...AUTOAWQ, version: 'gemv' }, 'ERR_UNSUPPORTED', 'version "gemv"'],
    ['version GEMV_fast', { ...AUTOAWQ, version: 'GEMV_fast' }, 'ERR_UNSUPPORTED', 'version "GEMV_fast"'],
    ['version marlin', { ...AUTOAWQ, version: 'marlin' }, 'ERR_UNSUPPORTED', 'version "marlin"'],
    ['version unknown', { ...AUTOAWQ, version: 'fast' }, 'ERR_UNSUPPORTED', 'unknown version'],
    ['version a number', { ...AUTOAWQ, version: 2 }, 'ERR_MODEL_FORMAT', 'version must be a string'],
    ['modules_to_not_convert a string', { ...AUTOAWQ, modules_to_not_convert: 'lm_head' }, 'ERR_MODEL_FORMAT', 'modules_to_not_convert'],
    ['modules_to_not_convert of numbers', { ...AUTOAWQ, modules_to_not_convert: [1] }, 'ERR_MODEL_FORMAT', 'modules_to_not_convert'],
  ];
  test.each(bad)('%s → %s', (_, raw, code, words) => {
    const strip = (v: unknown): unknown => (v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined)) : v);
    expect(() => parseAwqConfig(strip(raw), '/m/config.json')).toThrow(
      expect.objectContaining({ code, message: expect.stringMatching(new RegExp(`^/m/config\\.json: quantization_config: .*${words.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`)) }),
    );
  });

  test('modules_to_not_convert matches by substring', () => {
    const cfg = parseAwqConfig({ ...AUTOAWQ, modules_to_not_convert: ['mlp.down', 'layers.1.'] });
    expect(isAwqSkipped(cfg, 'model.layers.0.mlp.down_proj')).toBe(true);
    expect(isAwqSkipped(cfg, 'model.layers.1.self_attn.q_proj')).toBe(true);
    expect(isAwqSkipped(cfg, 'model.layers.0.mlp.up_proj')).toBe(false);
    expect(isAwqSkipped(cfg, 'model.layers.11.self_attn.q_proj')).toBe(false);
  });
});

// ---- tensor checks -----------------------------------------------------------------------------------

describe('checkAwqTensors', () => {
  const P = 'model.layers.0.mlp.up_proj';
  const K = 128, N = 256, G = 64;
  const good = (): Map<string, AwqTensorInfo> => new Map([
    [`${P}.qweight`, { dtype: 'I32', shape: [K, N / 8] }],
    [`${P}.qzeros`, { dtype: 'I32', shape: [K / G, N / 8] }],
    [`${P}.scales`, { dtype: 'F16', shape: [K / G, N] }],
  ]);
  const run = (t: Map<string, AwqTensorInfo>, k = K, n = N, g = G): void => checkAwqTensors((name) => t.get(name), P, k, n, g, '/m/model.safetensors');

  test('GEMM tensors pass', () => {
    expect(() => run(good())).not.toThrow();
  });

  const cases: Array<[string, (t: Map<string, AwqTensorInfo>) => void, string]> = [
    ['qzeros missing', (t) => t.delete(`${P}.qzeros`), `"${P}.qzeros" is missing`],
    ['qweight F16', (t) => t.set(`${P}.qweight`, { dtype: 'F16', shape: [K, N / 8] }), `"${P}.qweight" is F16, expected I32`],
    ['qweight GEMV-shaped [N, K/8]', (t) => t.set(`${P}.qweight`, { dtype: 'I32', shape: [N, K / 8] }), `"${P}.qweight" has shape [256, 16], expected [128, 32]`],
    ['qzeros one group too many', (t) => t.set(`${P}.qzeros`, { dtype: 'I32', shape: [K / G + 1, N / 8] }), `"${P}.qzeros" has shape [3, 32], expected [2, 32]`],
    ['scales F32', (t) => t.set(`${P}.scales`, { dtype: 'F32', shape: [K / G, N] }), `"${P}.scales" is F32, expected F16`],
    ['scales BF16', (t) => t.set(`${P}.scales`, { dtype: 'BF16', shape: [K / G, N] }), `"${P}.scales" is BF16, expected F16`],
    ['scales packed like qzeros', (t) => t.set(`${P}.scales`, { dtype: 'F16', shape: [K / G, N / 8] }), `"${P}.scales" has shape [2, 32], expected [2, 256]`],
  ];
  test.each(cases)('%s → ERR_MODEL_FORMAT naming the tensor', (_, edit, words) => {
    const t = good();
    edit(t);
    expect(() => run(t)).toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining(words) }));
  });

  test('sizes the format cannot hold name the layer', () => {
    expect(() => run(good(), K, 252)).toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining(`"${P}": out_features 252 is not a multiple of 8`) }));
    expect(() => run(good(), 96, N, 64)).toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining(`"${P}": in_features 96 is not a multiple of group_size 64`) }));
  });
});
