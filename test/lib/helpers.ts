/**
 * Test helpers: independent reference conversions (written from the IEEE 754
 * definitions, not from lib/ or include/), value-set generators and
 * comparison helpers that name the first mismatch.
 *
 * Never use `instanceof Float32Array` on arrays that come from the addon: under
 * jest the test runs in a vm context whose typed-array classes differ from the
 * addon's realm. Use {@link tagOf} instead.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { DType } from '../../lib';

export const REPO = path.resolve(__dirname, '../..');
export const DIST = path.join(REPO, 'dist');

/** "Float32Array", "Uint16Array", ... (works across realms). */
export function tagOf(value: unknown): string {
  return Object.prototype.toString.call(value).slice(8, -1);
}

// ---- float32 bits ----------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0]!;
}
export function bitsOfF32(value: number): number {
  f32[0] = value;
  return u32[0]!;
}
export function isF32Exact(value: number): boolean {
  return Number.isNaN(value) || Math.fround(value) === value;
}

// ---- float16 / bfloat16 by definition ------------------------------------------------

/** The value of float16 bits, from the definition (1 sign, 5 exponent, 10 fraction bits, bias 15). */
export function halfValue(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 10) & 0x1f;
  const m = bits & 0x3ff;
  if (e === 0x1f) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** The value of bfloat16 bits, from the definition (1 sign, 8 exponent, 7 fraction bits, bias 127). */
export function bf16Value(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 7) & 0xff;
  const m = bits & 0x7f;
  if (e === 0xff) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** -133;
  return sign * (1 + m / 128) * 2 ** (e - 127);
}

interface Format16 {
  /** Positive finite values in increasing order, followed by the first value past the largest (rounds to Inf). */
  values: Float64Array;
  infBits: number;
  index: Map<number, number>;
}

function format16(decode: (bits: number) => number, infBits: number): Format16 {
  const values = new Float64Array(infBits + 1);
  const index = new Map<number, number>();
  for (let b = 0; b < infBits; b++) {
    values[b] = decode(b);
    if (b > 0 && !(values[b]! > values[b - 1]!)) throw new Error(`format16: not increasing at ${b}`);
    index.set(values[b]!, b);
  }
  // One ulp past the largest finite value: the largest finite's exponent step.
  values[infBits] = values[infBits - 1]! + (values[infBits - 1]! - values[infBits - 2]!);
  return { values, infBits, index };
}

const HALF = format16(halfValue, 0x7c00); // last finite 65504, next 65536
const BF16 = format16(bf16Value, 0x7f80);

/** Bits of the nearest value of `fmt` to `x` (ties to the even bit pattern); NaN -> -1. */
function roundTo16(fmt: Format16, x: number): number {
  if (Number.isNaN(x)) return -1;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const { values, infBits } = fmt;
  if (a >= values[infBits]!) return sign | infBits;
  // largest lo with values[lo] <= a
  let lo = 0;
  let hi = infBits;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (values[mid]! <= a) lo = mid;
    else hi = mid;
  }
  if (values[lo] === a) return sign | lo;
  const midpoint = (values[lo]! + values[lo + 1]!) / 2; // exact: one more bit than either
  let pick: number;
  if (a < midpoint) pick = lo;
  else if (a > midpoint) pick = lo + 1;
  else pick = lo % 2 === 0 ? lo : lo + 1;
  return sign | pick;
}

/** float16 bits nearest to `x` (a float32 value), ties to even; -1 for NaN. */
export function refHalfBits(x: number): number {
  return roundTo16(HALF, x);
}
/** bfloat16 bits nearest to `x` (a float32 value), ties to even; -1 for NaN. */
export function refBf16Bits(x: number): number {
  return roundTo16(BF16, x);
}
/** Positive finite float16 values, ascending (bits 0 .. 0x7bff). */
export function halfPositiveValues(): Float64Array {
  return HALF.values.subarray(0, HALF.infBits);
}
/** Positive finite bfloat16 values, ascending (bits 0 .. 0x7f7f). */
export function bf16PositiveValues(): Float64Array {
  return BF16.values.subarray(0, BF16.infBits);
}

// ---- the reference cast ------------------------------------------------------------

export const INT_RANGE: Record<'int32' | 'int8' | 'uint8', [number, number]> = {
  int32: [-2147483648, 2147483647],
  int8: [-128, 127],
  uint8: [0, 255],
};

export function isFloat(dtype: DType): boolean {
  return dtype === 'float32' || dtype === 'float16' || dtype === 'bfloat16';
}

/**
 * Elements as exact values: `v[i]` (NaN for NaN) and, for NaNs, the sign bit
 * in `nanNeg[i]` (a JS NaN cannot carry it).
 */
export interface Values {
  v: Float64Array;
  nanNeg: Uint8Array;
}

/** The exact values held by storage `data` of `dtype`. */
export function decode(dtype: DType, data: ArrayBufferView): Values {
  const n = byteCount(data) / dtypeBytes(dtype);
  const v = new Float64Array(n);
  const nanNeg = new Uint8Array(n);
  const bytes = new Uint8Array(data.buffer, data.byteOffset, byteCount(data));
  switch (dtype) {
    case 'float32': {
      const bits = new Uint32Array(bytes.slice().buffer);
      for (let i = 0; i < n; i++) {
        v[i] = f32FromBits(bits[i]!);
        nanNeg[i] = Number.isNaN(v[i]) && bits[i]! >>> 31 ? 1 : 0;
      }
      break;
    }
    case 'float16':
    case 'bfloat16': {
      const bits = new Uint16Array(bytes.slice().buffer);
      const dec = dtype === 'float16' ? halfValue : bf16Value;
      for (let i = 0; i < n; i++) {
        v[i] = dec(bits[i]!);
        nanNeg[i] = Number.isNaN(v[i]) && bits[i]! & 0x8000 ? 1 : 0;
      }
      break;
    }
    case 'int32':
      new Int32Array(bytes.slice().buffer).forEach((x, i) => (v[i] = x));
      break;
    case 'int8':
      new Int8Array(bytes.slice().buffer).forEach((x, i) => (v[i] = x));
      break;
    case 'uint8':
      bytes.forEach((x, i) => (v[i] = x));
      break;
  }
  return { v, nanNeg };
}

/** The exact value a cast to `dst` stores for the exact value `x` (floats via float32; ints truncate, saturate, NaN -> 0). */
export function refConvertValue(x: number, dst: DType): number {
  switch (dst) {
    case 'float32':
      return Math.fround(x);
    case 'float16': {
      const b = refHalfBits(Math.fround(x));
      return b < 0 ? NaN : halfValue(b);
    }
    case 'bfloat16': {
      const b = refBf16Bits(Math.fround(x));
      return b < 0 ? NaN : bf16Value(b);
    }
    default: {
      const [lo, hi] = INT_RANGE[dst];
      if (Number.isNaN(x)) return 0;
      return Math.min(hi, Math.max(lo, Math.trunc(x))) + 0; // + 0: no -0
    }
  }
}

export function refCast(src: Values, dst: DType): Values {
  const v = src.v.map((x) => refConvertValue(x, dst));
  const nanNeg = isFloat(dst) ? src.nanNeg.slice() : new Uint8Array(src.v.length);
  return { v, nanNeg };
}

/** Storage bits/values of `dtype` for exact values (NaN entries get the canonical quiet NaN with the recorded sign). */
export function encode(dtype: DType, values: Values): ArrayBufferView {
  const { v, nanNeg } = values;
  const n = v.length;
  switch (dtype) {
    case 'float32': {
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = Number.isNaN(v[i]) ? (nanNeg[i] ? 0xffc00000 : 0x7fc00000) : bitsOfF32(v[i]!);
      return out;
    }
    case 'float16':
    case 'bfloat16': {
      const out = new Uint16Array(n);
      const ref = dtype === 'float16' ? refHalfBits : refBf16Bits;
      const qnan = dtype === 'float16' ? 0x7e00 : 0x7fc0;
      for (let i = 0; i < n; i++) {
        if (Number.isNaN(v[i])) out[i] = (nanNeg[i] ? 0x8000 : 0) | qnan;
        else {
          const b = ref(v[i]!);
          const back = dtype === 'float16' ? halfValue(b) : bf16Value(b);
          if (!Object.is(back, v[i])) throw new Error(`encode: ${v[i]} is not a ${dtype} value`);
          out[i] = b;
        }
      }
      return out;
    }
    case 'int32':
      return Int32Array.from(v);
    case 'int8':
      return Int8Array.from(v);
    case 'uint8':
      return Uint8Array.from(v);
  }
}

export function dtypeBytes(dtype: DType): number {
  return dtype === 'float32' || dtype === 'int32' ? 4 : dtype === 'int8' || dtype === 'uint8' ? 1 : 2;
}

function byteCount(data: ArrayBufferView): number {
  return data.byteLength;
}

/** Raw bits (floats) or values (ints) of storage, as plain numbers, for comparison. */
export function rawOf(dtype: DType, data: ArrayBufferView): ArrayLike<number> {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice().buffer;
  switch (dtype) {
    case 'float32':
      return new Uint32Array(bytes);
    case 'float16':
    case 'bfloat16':
      return new Uint16Array(bytes);
    case 'int32':
      return new Int32Array(bytes);
    case 'int8':
      return new Int8Array(bytes);
    case 'uint8':
      return new Uint8Array(bytes);
  }
}

function hex(bits: number, width: number): string {
  return '0x' + (bits >>> 0).toString(16).padStart(width, '0');
}

/** Human description of one storage element. */
export function describeElement(dtype: DType, raw: number): string {
  switch (dtype) {
    case 'float32':
      return `${hex(raw, 8)} (${f32FromBits(raw)})`;
    case 'float16':
      return `${hex(raw, 4)} (${halfValue(raw)})`;
    case 'bfloat16':
      return `${hex(raw, 4)} (${bf16Value(raw)})`;
    default:
      return String(raw);
  }
}

function isNaNBits(dtype: DType, raw: number): boolean {
  if (dtype === 'float32') return (raw & 0x7f800000) === 0x7f800000 && (raw & 0x7fffff) !== 0;
  if (dtype === 'float16') return (raw & 0x7c00) === 0x7c00 && (raw & 0x3ff) !== 0;
  if (dtype === 'bfloat16') return (raw & 0x7f80) === 0x7f80 && (raw & 0x7f) !== 0;
  return false;
}
function signBit(dtype: DType, raw: number): number {
  return dtype === 'float32' ? raw >>> 31 : (raw >> 15) & 1;
}
function quietBit(dtype: DType, raw: number): boolean {
  return dtype === 'float32' ? (raw & 0x400000) !== 0 : dtype === 'float16' ? (raw & 0x200) !== 0 : (raw & 0x40) !== 0;
}

export interface CompareOptions {
  /** What is being compared (goes into the failure message). */
  what: string;
  /** The input element behind index i, for the message. */
  input?: (i: number) => string;
  /** For NaN: also require the sign bit of the expected NaN (default true) and a quiet NaN (default false). */
  nanSign?: boolean;
  nanQuiet?: boolean;
  /** Shape, to print the multi-index of the mismatch. */
  shape?: readonly number[];
}

function multiIndex(i: number, shape: readonly number[] | undefined): string {
  if (!shape || shape.length === 0) return `[${i}]`;
  const idx: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(i % shape[d]!);
    i = Math.floor(i / shape[d]!);
  }
  return `[${idx.join(', ')}]`;
}

/**
 * Compares storage `actual` with `expected` element by element (bits for
 * floats; NaN matches any NaN of the expected sign). Throws naming the first
 * mismatch and the number of mismatches.
 */
export function expectStorageEqual(dtype: DType, actual: ArrayBufferView, expected: ArrayBufferView, opts: CompareOptions): void {
  const a = rawOf(dtype, actual);
  const e = rawOf(dtype, expected);
  if (a.length !== e.length) throw new Error(`${opts.what}: ${dtype} length ${a.length}, expected ${e.length}`);
  let first = -1;
  let count = 0;
  let why = '';
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = e[i]!;
    let ok: boolean;
    let reason = '';
    if (isNaNBits(dtype, y)) {
      ok = isNaNBits(dtype, x);
      if (ok && opts.nanSign !== false && signBit(dtype, x) !== signBit(dtype, y)) {
        ok = false;
        reason = ' (NaN sign differs)';
      }
      if (ok && opts.nanQuiet && !quietBit(dtype, x)) {
        ok = false;
        reason = ' (signalling NaN, expected quiet)';
      }
    } else {
      ok = x === y;
    }
    if (!ok) {
      if (first < 0) {
        first = i;
        why = reason;
      }
      count++;
    }
  }
  if (first >= 0) {
    const input = opts.input ? ` for input ${opts.input(first)}` : '';
    throw new Error(
      `${opts.what}: ${count} of ${a.length} ${dtype} elements differ; first at index ${multiIndex(first, opts.shape)}${input}: ` +
        `got ${describeElement(dtype, a[first]!)}, expected ${describeElement(dtype, e[first]!)}${why}`,
    );
  }
}

/** Compares two number arrays exactly (Object.is), naming the first mismatch. */
export function expectValuesEqual(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, shape?: readonly number[]): void {
  if (actual.length !== expected.length) throw new Error(`${what}: length ${actual.length}, expected ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    if (!Object.is(actual[i], expected[i])) {
      throw new Error(`${what}: first mismatch at index ${multiIndex(i, shape)}: got ${actual[i]}, expected ${expected[i]}`);
    }
  }
}

// ---- value sets ----------------------------------------------------------------------

/** A small deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Float32 bit patterns of the special values every float test should cover. */
export function specialF32Bits(): number[] {
  const values = [
    0, -0, 1, -1, 0.5, -0.5, 0.999, -0.999, 1.5, -1.5, 2.5, -2.5, 127.9, 128, -128, -128.9, -129, 255.5, 256, 300, -300,
    Infinity, -Infinity, 65504, -65504, 65519.99, 65520, -65520, 65536, 1e10, -1e10, 3.4e38, -3.4e38,
    2 ** -14, 2 ** -14 - 2 ** -25, 2 ** -24, -(2 ** -24), 2 ** -25, 2 ** -25 + 2 ** -40, 3 * 2 ** -26, 1.5 * 2 ** -24,
    2 ** -26, 1e-8, 1e-30, 2 ** -126, 2 ** -133, 2 ** -149, -(2 ** -149), 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8,
    1 + 3 * 2 ** -8, 2147483520, 2147483648, -2147483648, -2147483904, 4294967296, 16777217, Math.PI, -Math.E,
  ].map((x) => bitsOfF32(Math.fround(x)));
  // NaNs: quiet/signalling, both signs, payloads; the largest finite and the smallest subnormals.
  return values.concat([0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fc01234, 0x7fbfffff, 0x7f7fffff, 0xff7fffff, 0x00000001, 0x80000001, 0x007fffff]);
}

/**
 * Float32 bit patterns around every float16 and bfloat16 value: the values
 * themselves, the midpoints to the next value (ties) and one float32 ulp either
 * side of each midpoint.
 */
export function roundingEdgeF32Bits(): number[] {
  const out: number[] = [];
  for (const values of [halfPositiveValues(), bf16PositiveValues()]) {
    const top = values.length;
    for (let i = 0; i < top; i++) {
      const x = values[i]!;
      const next = i + 1 < top ? values[i + 1]! : x + (x - values[i - 1]!);
      const mid = (x + next) / 2;
      if (Math.fround(x) !== x || Math.fround(mid) !== mid) continue; // bf16 subnormal midpoints below float32 range
      const m = bitsOfF32(mid);
      const sign = i % 3 === 0 ? 0x80000000 : 0; // some negatives too
      out.push((bitsOfF32(x) | sign) >>> 0, (m | sign) >>> 0, ((m - 1) | sign) >>> 0, ((m + 1) | sign) >>> 0);
    }
  }
  return out;
}

/** `count` random float32 bit patterns (every pattern equally likely, NaNs included). */
export function randomF32Bits(count: number, seed = 1): number[] {
  const r = rng(seed);
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(Math.floor(r() * 4294967296) >>> 0);
  return out;
}

/** `count` random float32 values of moderate magnitude (around ±2^-30 .. ±2^40). */
export function randomF32Values(count: number, seed = 2): number[] {
  const r = rng(seed);
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push(Math.fround((r() < 0.5 ? -1 : 1) * r() * 2 ** Math.floor(r() * 70 - 30)));
  return out;
}

export function f32ArrayFromBits(bits: number[]): Float32Array {
  return new Float32Array(Uint32Array.from(bits).buffer);
}

// ---- the built package for child processes --------------------------------------------

/** Builds dist/ (tsc -p tsconfig.build.json) if it is missing or older than a file in lib/. */
export function ensureDist(): void {
  const index = path.join(DIST, 'index.js');
  if (fs.existsSync(index)) {
    const built = fs.statSync(index).mtimeMs;
    const lib = path.join(REPO, 'lib');
    const stale = fs.readdirSync(lib).some((f) => f.endsWith('.ts') && fs.statSync(path.join(lib, f)).mtimeMs > built);
    if (!stale) return;
  }
  const tsc = path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(REPO, 'tsconfig.build.json')], { cwd: REPO, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tsc -p tsconfig.build.json failed:\n${r.stdout}\n${r.stderr}`);
}

export interface ChildResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The JSON the script printed last (see {@link runChild}); undefined if none. */
  json?: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/**
 * Runs `script` with `node -e` (PKG bound to the built package) and parses
 * the last line of its stdout as JSON.
 */
export function runChild(script: string, env: Record<string, string | undefined> = {}, timeoutMs = 60000): ChildResult {
  const childEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) childEnv[k] = v;
  const full = `const PKG = require(${JSON.stringify(DIST)});\n${script}`;
  const r = spawnSync(process.execPath, ['-e', full], { env: childEnv, encoding: 'utf8', timeout: timeoutMs });
  const lines = (r.stdout ?? '').trim().split('\n');
  let json: unknown;
  try {
    json = JSON.parse(lines[lines.length - 1] ?? '');
  } catch {
    json = undefined;
  }
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', json };
}

/** A child-process script fragment that prints `{ ok: value }` or `{ error: { code, name, message } }` for `expr`. */
export function reportExpr(expr: string): string {
  return `
try {
  const value = (${expr});
  console.log(JSON.stringify({ ok: value }));
} catch (e) {
  console.log(JSON.stringify({ error: { code: e.code, name: e.name, message: e.message, isPagedLLMError: e instanceof PKG.PagedLLMError } }));
}`;
}
