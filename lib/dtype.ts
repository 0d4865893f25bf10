/**
 * Element types. fp16 and bf16 data live in JS as `Uint16Array` bit patterns
 * (Node 20 has no Float16Array); the helpers below convert, rounding to
 * nearest even exactly as the native casts do.
 *
 * `int32` also carries packed int4 weights: 8 nibbles per int32 in the AWQ
 * order (include/pagedllm/awq.h); a tensor's dtype stays `int32` and its shape
 * counts int32 words, the logical meaning belongs to the op that reads it.
 */
import { InvalidArgumentError } from './errors';

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int32' | 'int8' | 'uint8';

/** What `toArray()` returns for each dtype. */
export interface TypedArrayFor {
  float32: Float32Array;
  float16: Uint16Array;
  bfloat16: Uint16Array;
  int32: Int32Array;
  int8: Int8Array;
  uint8: Uint8Array;
}
export type TensorData = TypedArrayFor[DType];

interface DTypeInfo {
  code: number; // dtype.h numbering
  size: number;
  array: { new (buffer: ArrayBuffer, byteOffset?: number, length?: number): TensorData; name: string };
}

const info: Record<DType, DTypeInfo> = {
  float32: { code: 0, size: 4, array: Float32Array },
  float16: { code: 1, size: 2, array: Uint16Array },
  bfloat16: { code: 2, size: 2, array: Uint16Array },
  int32: { code: 3, size: 4, array: Int32Array },
  int8: { code: 4, size: 1, array: Int8Array },
  uint8: { code: 5, size: 1, array: Uint8Array },
};

export const DTYPES: readonly DType[] = Object.freeze(Object.keys(info) as DType[]);

export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(info, value);
}

export function checkDType(value: unknown, what = 'dtype'): DType {
  if (!isDType(value)) throw new InvalidArgumentError(`Invalid ${what} ${JSON.stringify(value)} (supported: ${DTYPES.join(', ')})`);
  return value;
}

export function dtypeSize(dtype: DType): number {
  return info[dtype].size;
}
/** @internal the binding's numbering */
export function dtypeCode(dtype: DType): number {
  return info[dtype].code;
}
/** @internal a typed-array view of `buffer` for `dtype` */
export function typedArrayOf(dtype: DType, buffer: ArrayBuffer): TensorData {
  return new info[dtype].array(buffer);
}
/** The typed-array class name that holds `dtype` data ("Uint16Array" for float16). */
export function typedArrayName(dtype: DType): string {
  return info[dtype].array.name;
}

// ---- float16 / bfloat16 helpers ---------------------------------------------------

/** float16 bits of the float32 whose bits are `x` (include/pagedllm/half.h float_to_half_bits, integer for integer). */
function halfBits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7e00 | ((abs >>> 13) & 0x3ff);  // NaN, payload kept
  if (abs >= 0x477ff000) return sign | 0x7c00;  // >= 65520 rounds to Inf
  if (abs < 0x38800000) {  // below 2^-14: a float16 subnormal (or zero)
    const e = abs >>> 23;
    if (e < 102) return sign;  // < 2^-25: rounds to ±0
    const m = (abs & 0x7fffff) | 0x800000;
    const shift = 126 - e;  // 14..24
    let q = m >>> shift;
    const rem = m & ((1 << shift) - 1), halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (q & 1))) q++;  // may carry into the smallest normal: still right
    return sign | q;
  }
  let h = (((abs >>> 23) - 112) << 10) | ((abs & 0x7fffff) >>> 13);
  const rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;  // a carry into the exponent is the right result
  return sign | h;
}

/** float32 bits of the float16 `h` (exact; include/pagedllm/half.h half_bits_to_float). */
function halfToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  let e = (h >>> 10) & 0x1f;
  let m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e === 0) {
    if (m === 0) return sign >>> 0;
    e = 113;  // normalise the subnormal: value = m * 2^-24
    while (!(m & 0x400)) {
      m <<= 1;
      e--;
    }
    return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
  }
  return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
}

const scalarF32 = new Float32Array(1);
const scalarU32 = new Uint32Array(scalarF32.buffer);

/** `x` rounded to the nearest float16 (ties to even), as a number. */
export function f16round(x: number): number {
  scalarF32[0] = x;
  scalarU32[0] = halfToFloatBits(halfBits(scalarU32[0]!));
  return scalarF32[0]!;
}

/** float16 bit patterns of `values` (via float32, as the native casts), rounded to nearest even; NaN, ±Inf, ±0 and subnormals kept. */
export function float32ToFloat16(values: ArrayLike<number>): Uint16Array {
  const f32 = values instanceof Float32Array ? values : Float32Array.from(values);
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < out.length; i++) out[i] = halfBits(bits[i]!);
  return out;
}

/** float32 values of float16 bit patterns (exact). */
export function float16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = halfToFloatBits(bits[i]!);
  return out;
}

/** bfloat16 bit patterns of `values`, rounded to nearest even (NaN stays NaN). */
export function float32ToBfloat16(values: ArrayLike<number>): Uint16Array {
  const f32 = Float32Array.from(values as ArrayLike<number>);
  const u32 = new Uint32Array(f32.buffer);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < u32.length; i++) {
    const bits = u32[i]!;
    if ((bits & 0x7fffffff) > 0x7f800000) out[i] = (bits >>> 16) | 0x40;
    else out[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** float32 values of bfloat16 bit patterns (exact). */
export function bfloat16ToFloat32(bits: Uint16Array): Float32Array {
  const u32 = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u32[i] = bits[i]! << 16;
  return new Float32Array(u32.buffer);
}
