/**
 * The float16 / bfloat16 JS helpers of lib/dtype.ts: exhaustive over all 65536
 * bit patterns, against an independent reference written from the IEEE 754
 * definitions (helpers.ts), and bit-for-bit against the native CPU cast.
 */
import {
  bfloat16ToFloat32,
  DTYPES,
  dtypeSize,
  float16ToFloat32,
  float32ToBfloat16,
  float32ToFloat16,
  Tensor,
  type DType,
} from '../../lib';
import {
  bf16Value,
  bitsOfF32,
  describeElement,
  expectStorageEqual,
  f32ArrayFromBits,
  halfValue,
  randomF32Bits,
  randomF32Values,
  refBf16Bits,
  refHalfBits,
  roundingEdgeF32Bits,
  specialF32Bits,
  tagOf,
} from './helpers';

const ALL16 = Uint16Array.from({ length: 65536 }, (_, i) => i);

/** float32 inputs: specials, every float16/bfloat16 value with its ties and their neighbours, random bits and values. */
const INPUT_F32 = (() => {
  const bits = [...specialF32Bits(), ...roundingEdgeF32Bits(), ...randomF32Bits(20000, 7)];
  const values = f32ArrayFromBits(bits);
  const extra = Float32Array.from(randomF32Values(5000, 8));
  const out = new Float32Array(values.length + extra.length);
  out.set(values);
  out.set(extra, values.length);
  return out;
})();

function inputAt(i: number): string {
  return describeElement('float32', bitsOfF32(INPUT_F32[i]!));
}

/** The expected bits of each input under `ref` (-1 for NaN becomes a quiet NaN). */
function referenceBits(values: ArrayLike<number>, ref: (x: number) => number, qnan: number): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const b = ref(values[i]!);
    out[i] = b < 0 ? qnan : b;
  }
  return out;
}

describe('exports', () => {
  test('DTYPES lists the six dtypes in binding order and is frozen', () => {
    expect(DTYPES).toEqual(['float32', 'float16', 'bfloat16', 'int32', 'int8', 'uint8']);
    expect(Object.isFrozen(DTYPES)).toBe(true);
  });

  test('dtypeSize', () => {
    const sizes: Record<DType, number> = { float32: 4, float16: 2, bfloat16: 2, int32: 4, int8: 1, uint8: 1 };
    for (const d of DTYPES) expect([d, dtypeSize(d)]).toEqual([d, sizes[d]]);
  });

  test('the helpers return the documented array types and accept number[] and empty input', () => {
    expect(tagOf(float32ToFloat16([1, 2]))).toBe('Uint16Array');
    expect(tagOf(float32ToBfloat16([1, 2]))).toBe('Uint16Array');
    expect(tagOf(float16ToFloat32(new Uint16Array([0x3c00])))).toBe('Float32Array');
    expect(tagOf(bfloat16ToFloat32(new Uint16Array([0x3f80])))).toBe('Float32Array');
    expect(Array.from(float32ToFloat16([1, -2, 0.5]))).toEqual([0x3c00, 0xc000, 0x3800]);
    expect(Array.from(float32ToBfloat16([1, -2, 0.5]))).toEqual([0x3f80, 0xc000, 0x3f00]);
    expect(float32ToFloat16([]).length).toBe(0);
    expect(float16ToFloat32(new Uint16Array(0)).length).toBe(0);
    expect(float32ToBfloat16([]).length).toBe(0);
    expect(bfloat16ToFloat32(new Uint16Array(0)).length).toBe(0);
  });

  test('float16ToFloat32 reads a subarray at its offset', () => {
    const bits = new Uint16Array([0x3c00, 0x4000, 0x4200, 0x4400]);
    expect(Array.from(float16ToFloat32(bits.subarray(1, 3)))).toEqual([2, 3]);
    expect(Array.from(bfloat16ToFloat32(new Uint16Array([0x3f80, 0x4000, 0x4040]).subarray(1)))).toEqual([2, 3]);
  });
});

describe('float16 helpers', () => {
  test('float16ToFloat32 decodes all 65536 patterns exactly (by definition)', () => {
    const got = float16ToFloat32(ALL16);
    for (let b = 0; b < 65536; b++) {
      const want = halfValue(b);
      if (!Object.is(got[b], want)) throw new Error(`float16ToFloat32(0x${b.toString(16)}) = ${got[b]}, expected ${want}`);
    }
  });

  test('float32ToFloat16(float16ToFloat32(bits)) gives back every pattern (NaNs stay NaN)', () => {
    const back = float32ToFloat16(float16ToFloat32(ALL16));
    for (let b = 0; b < 65536; b++) {
      if (Number.isNaN(halfValue(b))) {
        if (!Number.isNaN(halfValue(back[b]!))) throw new Error(`NaN 0x${b.toString(16)} came back as 0x${back[b]!.toString(16)}`);
      } else if (back[b] !== b) {
        throw new Error(`float16 0x${b.toString(16)} (${halfValue(b)}) came back as 0x${back[b]!.toString(16)}`);
      }
    }
  });

  test('float32ToFloat16 rounds to nearest even like the reference (specials, ties, neighbours, random)', () => {
    const got = float32ToFloat16(INPUT_F32);
    const want = referenceBits(INPUT_F32, refHalfBits, 0x7e00);
    expectStorageEqual('float16', got, want, { what: 'float32ToFloat16 vs reference', input: inputAt, nanSign: false });
  });

  test('float32ToFloat16: named cases', () => {
    const cases: [number, number][] = [
      [0, 0x0000], [-0, 0x8000], [Infinity, 0x7c00], [-Infinity, 0xfc00], [65504, 0x7bff], [-65504, 0xfbff],
      [65519.99, 0x7bff], [65520, 0x7c00], [-65520, 0xfc00], [1e10, 0x7c00],
      [2 ** -24, 0x0001], [-(2 ** -24), 0x8001], [2 ** -25, 0x0000], [-(2 ** -25), 0x8000], // tie -> even (zero)
      [3 * 2 ** -25, 0x0002], // tie between 1 and 2 ulps -> 2
      [2 ** -25 + 2 ** -40, 0x0001], [2 ** -14, 0x0400], [2 ** -14 - 2 ** -24, 0x03ff],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], // ties to even
      [1 + 2 ** -11 + 2 ** -23, 0x3c01],
      [2048 + 1, 0x6800], [2048 + 3, 0x6802],
    ];
    for (const [x, bits] of cases) {
      const got = float32ToFloat16([x])[0]!;
      if (got !== bits) throw new Error(`float32ToFloat16(${x}) = 0x${got.toString(16)}, expected 0x${bits.toString(16)}`);
    }
    expect(Number.isNaN(halfValue(float32ToFloat16([NaN])[0]!))).toBe(true);
  });

  test('float32ToFloat16 converts numbers via float32 (double rounding is the documented behaviour)', () => {
    // 1 + 2^-11 + 2^-40 is nearer to 1 + 2^-10 as a double, but float32 makes it the tie 1 + 2^-11 -> 1.
    expect(float32ToFloat16([1 + 2 ** -11 + 2 ** -40])[0]).toBe(0x3c00);
  });
});

describe('bfloat16 helpers', () => {
  test('bfloat16ToFloat32 decodes all 65536 patterns exactly (by definition)', () => {
    const got = bfloat16ToFloat32(ALL16);
    for (let b = 0; b < 65536; b++) {
      const want = bf16Value(b);
      if (!Object.is(got[b], want)) throw new Error(`bfloat16ToFloat32(0x${b.toString(16)}) = ${got[b]}, expected ${want}`);
    }
  });

  test('float32ToBfloat16(bfloat16ToFloat32(bits)) gives back every pattern (NaNs stay NaN)', () => {
    const back = float32ToBfloat16(bfloat16ToFloat32(ALL16));
    for (let b = 0; b < 65536; b++) {
      if (Number.isNaN(bf16Value(b))) {
        if (!Number.isNaN(bf16Value(back[b]!))) throw new Error(`NaN 0x${b.toString(16)} came back as 0x${back[b]!.toString(16)}`);
      } else if (back[b] !== b) {
        throw new Error(`bfloat16 0x${b.toString(16)} (${bf16Value(b)}) came back as 0x${back[b]!.toString(16)}`);
      }
    }
  });

  test('float32ToBfloat16 rounds to nearest even like the reference (specials, ties, neighbours, random)', () => {
    const got = float32ToBfloat16(INPUT_F32);
    const want = referenceBits(INPUT_F32, refBf16Bits, 0x7fc0);
    expectStorageEqual('bfloat16', got, want, { what: 'float32ToBfloat16 vs reference', input: inputAt, nanSign: false });
  });

  test('float32ToBfloat16: named cases', () => {
    const cases: [number, number][] = [
      [0, 0x0000], [-0, 0x8000], [Infinity, 0x7f80], [-Infinity, 0xff80], [1, 0x3f80],
      [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82], [1 + 2 ** -8 + 2 ** -20, 0x3f81],
      [3.4028234663852886e38, 0x7f80], // FLT_MAX rounds up to Inf
      [2 ** -149, 0x0000], [2 ** -133, 0x0001],
    ];
    for (const [x, bits] of cases) {
      const got = float32ToBfloat16([x])[0]!;
      if (got !== bits) throw new Error(`float32ToBfloat16(${x}) = 0x${got.toString(16)}, expected 0x${bits.toString(16)}`);
    }
    expect(Number.isNaN(bf16Value(float32ToBfloat16([NaN])[0]!))).toBe(true);
  });
});

describe('the JS helpers agree with the native CPU cast bit for bit', () => {
  async function nativeCast(data: Float32Array | Uint16Array, from: DType, to: DType): Promise<ArrayBufferView> {
    const t = Tensor.fromArray(data, undefined, { dtype: from, device: 'cpu' });
    const c = t.cast(to);
    try {
      return await c.toArray();
    } finally {
      t.dispose();
      c.dispose();
    }
  }

  test('float32 -> float16', async () => {
    const got = await nativeCast(INPUT_F32, 'float32', 'float16');
    expectStorageEqual('float16', got, float32ToFloat16(INPUT_F32), { what: 'native cast vs float32ToFloat16', input: inputAt, nanSign: false });
  });

  test('float32 -> bfloat16', async () => {
    const got = await nativeCast(INPUT_F32, 'float32', 'bfloat16');
    expectStorageEqual('bfloat16', got, float32ToBfloat16(INPUT_F32), { what: 'native cast vs float32ToBfloat16', input: inputAt, nanSign: false });
  });

  test('float16 -> float32 (all patterns)', async () => {
    const got = await nativeCast(ALL16, 'float16', 'float32');
    expectStorageEqual('float32', got, float16ToFloat32(ALL16), {
      what: 'native cast vs float16ToFloat32',
      input: (i) => describeElement('float16', i),
      nanSign: false,
    });
  });

  test('bfloat16 -> float32 (all patterns)', async () => {
    const got = await nativeCast(ALL16, 'bfloat16', 'float32');
    expectStorageEqual('float32', got, bfloat16ToFloat32(ALL16), {
      what: 'native cast vs bfloat16ToFloat32',
      input: (i) => describeElement('bfloat16', i),
      nanSign: false,
    });
  });

  test('fromArray(number[], float16/bfloat16) stores what the helpers compute', async () => {
    const numbers = Array.from(INPUT_F32.subarray(0, 2000));
    for (const [dtype, helper] of [['float16', float32ToFloat16], ['bfloat16', float32ToBfloat16]] as const) {
      const t = Tensor.fromArray(numbers, undefined, { dtype, device: 'cpu' });
      expectStorageEqual(dtype, await t.toArray(), helper(numbers), { what: `fromArray(number[], ${dtype})`, input: inputAt, nanSign: false });
      t.dispose();
    }
  });
});
