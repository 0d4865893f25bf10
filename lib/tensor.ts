/**
 * Tensor: a typed, shaped, strided view of device memory (DESIGN.md §2–§3).
 *
 * - Views (`view`, `reshape` of a contiguous tensor, `slice`, same-device `to`,
 *   same-dtype `cast`) share memory; the memory is released when the last
 *   tensor using it is disposed.
 * - Every op is enqueued on a stream (the tensor's, by default) and returns at
 *   once; `await toArray()` is the sync point and never blocks the event loop.
 * - `dispose()` (or `using` / `await using`) releases memory deterministically;
 *   a FinalizationRegistry is only a safety net for tensors that are dropped.
 *
 * @example
 * const x = Tensor.fromArray(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
 * const h = x.cast('float16');                  // Uint16Array bits on read-back
 * console.log(await h.slice(1, 1).toArray());   // columns 1..2 of both rows
 * x.dispose(); h.dispose();
 */
import {
  checkDType,
  dtypeCode,
  dtypeSize,
  float32ToBfloat16,
  float32ToFloat16,
  typedArrayOf,
  type DType,
  type TensorData,
  type TypedArrayFor,
} from './dtype';
import { resolveDevice, type Device, type DeviceSpec } from './device';
import { DisposedError, InvalidArgumentError } from './errors';
import { categoryCode, MemoryResource, noteAllocation, type MemoryCategory } from './memory';
import { native, type NativeBufferHandle } from './native';
import { Stream } from './stream';

export const MAX_DIMS = 8;

export interface TensorOptions {
  /** Default `'float32'` (or the dtype implied by `fromArray`'s data). */
  dtype?: DType;
  /** Default: the stream's device, else `defaultDevice()`. */
  device?: DeviceSpec;
  /** Default: the device's default stream. */
  stream?: Stream;
  /** Where the bytes come from. Default: the device's default resource (the pool). */
  memory?: MemoryResource;
  /** What the bytes are for, in memory reports. Default `'other'`. */
  category?: MemoryCategory;
}

/** Memory shared by a tensor and its views; released when the last one lets go. */
class Storage {
  private refs = 1;
  constructor(
    readonly handle: NativeBufferHandle,
    readonly bytes: number,
    readonly stream: Stream,
  ) {}
  retain(): this {
    this.refs++;
    return this;
  }
  release(): void {
    if (--this.refs === 0) native().free(this.handle);
  }
}

const finalizer = new FinalizationRegistry<Storage>((storage) => storage.release());

type Numeric = ArrayLike<number> & { length: number };

// `shown`: the shape as the caller wrote it, for messages (view() passes -1 as 0).
function checkShape(shape: unknown, what = 'shape', shown?: readonly unknown[]): number[] {
  if (!Array.isArray(shape)) throw new InvalidArgumentError(`Invalid ${what}: expected an array of dimensions, got ${describe(shape)}`);
  const text = (shown ?? shape).join(', ');
  if (shape.length > MAX_DIMS) throw new InvalidArgumentError(`Invalid ${what} [${text}]: at most ${MAX_DIMS} dimensions are supported`);
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new InvalidArgumentError(`Invalid ${what} [${text}]: every dimension must be a non-negative integer`);
    }
  }
  return shape.slice();
}

function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  return strides;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (ArrayBuffer.isView(value)) return Object.prototype.toString.call(value).slice(8, -1);
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

function checkByteLength(shape: readonly number[], dtype: DType): number {
  const bytes = numelOf(shape) * dtypeSize(dtype);
  if (!Number.isSafeInteger(bytes)) {
    throw new InvalidArgumentError(`Tensor of shape [${shape.join(', ')}] and dtype ${dtype} is too large (${bytes} bytes)`);
  }
  return bytes;
}

function resolveStream(options: TensorOptions | undefined): Stream {
  if (options !== undefined && (options === null || typeof options !== 'object')) {
    throw new InvalidArgumentError(`Invalid options: expected an object, got ${describe(options)}`);
  }
  const stream = options?.stream;
  if (stream !== undefined) {
    if (!(stream instanceof Stream)) throw new InvalidArgumentError('Invalid options.stream: expected a Stream');
    if (options?.device !== undefined && resolveDevice(options.device).device !== stream.device) {
      throw new InvalidArgumentError(`options.device ${options.device} does not match options.stream's device ${stream.device}`);
    }
    return stream;
  }
  return Stream.default(resolveDevice(options?.device).device);
}

// Which typed array holds each dtype's data as-is.
const nativeArrayTag: Record<DType, string> = {
  float32: 'Float32Array',
  float16: 'Uint16Array',
  bfloat16: 'Uint16Array',
  int32: 'Int32Array',
  int8: 'Int8Array',
  uint8: 'Uint8Array',
};
// The dtype a typed array's values fit without loss (Float64Array: the float32
// default). Uint16Array (float16/bfloat16 bits) and Uint32Array (no lossless
// dtype) need an explicit dtype.
const defaultDTypeOf: Record<string, DType | undefined> = {
  Float32Array: 'float32',
  Float64Array: 'float32',
  Int32Array: 'int32',
  Int16Array: 'int32',
  Int8Array: 'int8',
  Uint8Array: 'uint8',
  Uint8ClampedArray: 'uint8',
};

// Converts numbers to dtype storage the way the native cast does (via float32
// for floats; truncation with saturation and NaN -> 0 for integers).
function convertNumbers(values: Numeric, dtype: DType): TensorData {
  switch (dtype) {
    case 'float32':
      return Float32Array.from(values);
    case 'float16':
      return float32ToFloat16(values);
    case 'bfloat16':
      return float32ToBfloat16(values);
    default: {
      const [lo, hi, Ctor] =
        dtype === 'int32' ? [-2147483648, 2147483647, Int32Array] : dtype === 'int8' ? [-128, 127, Int8Array] : [0, 255, Uint8Array];
      const out = new Ctor(values.length);
      for (let i = 0; i < values.length; i++) {
        const v = Number(values[i]);
        out[i] = Number.isNaN(v) ? 0 : Math.min(hi, Math.max(lo, Math.trunc(v)));
      }
      return out;
    }
  }
}

export class Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** In elements. */
  readonly strides: readonly number[];
  /** Offset of element [0, ..., 0] from the start of the memory, in elements. */
  readonly offset: number;
  readonly device: Device;
  /** The stream this tensor's ops run on by default (its memory's stream). */
  readonly stream: Stream;
  private storage: Storage | null;

  private constructor(storage: Storage, dtype: DType, shape: number[], strides: number[], offset: number) {
    this.storage = storage;
    this.dtype = dtype;
    this.shape = Object.freeze(shape);
    this.strides = Object.freeze(strides);
    this.offset = offset;
    this.stream = storage.stream;
    this.device = storage.stream.device;
    finalizer.register(this, storage, this);
  }

  // ---- construction ----------------------------------------------------------------

  /** Uninitialised memory of `shape`. */
  static empty(shape: readonly number[], options?: TensorOptions): Tensor {
    const dims = checkShape(shape);
    const dtype = checkDType(options?.dtype ?? 'float32');
    const stream = resolveStream(options);
    const bytes = checkByteLength(dims, dtype);
    const memory = options?.memory;
    if (memory !== undefined && !(memory instanceof MemoryResource)) throw new InvalidArgumentError('Invalid options.memory: expected a MemoryResource');
    if (memory !== undefined && memory.device !== stream.device) {
      throw new InvalidArgumentError(`options.memory is on ${memory.device} but the tensor is on ${stream.device}`);
    }
    const category = options?.category === undefined ? undefined : categoryCode(options.category);
    const handle = native().allocate(stream.handle, bytes, memory?.handle, category);
    noteAllocation(memory, stream.device, `${options?.category ?? 'other'} tensor`);
    return new Tensor(new Storage(handle, bytes, stream), dtype, dims, contiguousStrides(dims), 0);
  }

  static zeros(shape: readonly number[], options?: TensorOptions): Tensor {
    return Tensor.full(shape, 0, options);
  }

  /** Every element set to `value` (converted as a float64 -> float32 -> dtype for floats; truncated and saturated for integers). */
  static full(shape: readonly number[], value: number, options?: TensorOptions): Tensor {
    if (typeof value !== 'number') throw new InvalidArgumentError(`Invalid fill value: expected a number, got ${describe(value)}`);
    const t = Tensor.empty(shape, options);
    native().fill(t.buffer(), 0, dtypeCode(t.dtype), t.numel, value, t.stream.handle);
    return t;
  }

  /**
   * A tensor holding a copy of `data` (taken before this returns).
   * `data` may be a typed array or a number array; its dtype defaults from the
   * array type (Float32Array -> float32, Int32Array -> int32, ...; number[] ->
   * float32). A `Uint16Array` holds float16 or bfloat16 bits and needs `dtype`.
   * Numbers are converted to `dtype` as the native cast converts them.
   */
  static fromArray(data: ArrayLike<number>, shape?: readonly number[], options?: TensorOptions): Tensor {
    const isView = ArrayBuffer.isView(data);
    if (!(isView && !(data instanceof DataView)) && !Array.isArray(data)) {
      throw new InvalidArgumentError(`fromArray expects a typed array or an array of numbers, got ${describe(data)}`);
    }
    const tag = describe(data);
    if (tag === 'BigInt64Array' || tag === 'BigUint64Array') throw new InvalidArgumentError(`fromArray does not accept ${tag}`);
    let dtype: DType;
    if (options?.dtype !== undefined) dtype = checkDType(options.dtype);
    else if (tag === 'Uint16Array') throw new InvalidArgumentError('fromArray: a Uint16Array holds float16 or bfloat16 bits; pass { dtype: "float16" } or { dtype: "bfloat16" }');
    else if (!isView) dtype = 'float32';
    else {
      const implied = defaultDTypeOf[tag];
      if (!implied) throw new InvalidArgumentError(`fromArray: a ${tag} has no lossless dtype; pass { dtype }`);
      dtype = implied;
    }
    if (tag === 'Uint16Array' && nativeArrayTag[dtype] !== 'Uint16Array') {
      throw new InvalidArgumentError(`fromArray: a Uint16Array holds float16 or bfloat16 bits, not ${dtype}`);
    }
    const dims = checkShape(shape ?? [data.length]);
    if (numelOf(dims) !== data.length) {
      throw new InvalidArgumentError(`fromArray: shape [${dims.join(', ')}] has ${numelOf(dims)} elements but the data has ${data.length}`);
    }
    if (Array.isArray(data)) {
      for (let i = 0; i < data.length; i++) {
        if (typeof data[i] !== 'number') throw new InvalidArgumentError(`fromArray: element ${i} is not a number`);
      }
    }
    const bytes: ArrayBufferView = nativeArrayTag[dtype] === tag ? (data as unknown as ArrayBufferView) : convertNumbers(data, dtype);
    const t = Tensor.empty(dims, { ...options, dtype });
    native().upload(bytes, t.buffer(), 0);
    return t;
  }

  // ---- properties --------------------------------------------------------------------

  get ndim(): number {
    return this.shape.length;
  }
  get numel(): number {
    return numelOf(this.shape);
  }
  /** Bytes of the elements this tensor covers (numel × element size). */
  get byteLength(): number {
    return this.numel * dtypeSize(this.dtype);
  }
  get isContiguous(): boolean {
    const expected = contiguousStrides(this.shape);
    return this.shape.every((d, i) => d === 1 || this.strides[i] === expected[i]);
  }
  get disposed(): boolean {
    return this.storage === null;
  }

  // ---- read-back and copies -----------------------------------------------------------

  /**
   * The elements in row-major order, after all work queued before this call.
   * Float32Array for float32, Uint16Array (bits) for float16/bfloat16,
   * Int32Array, Int8Array or Uint8Array for the integers.
   */
  async toArray<D extends DType = DType>(this: Tensor & { dtype: D }): Promise<TypedArrayFor[D]> {
    const source = this.isContiguous ? this : this.contiguous();
    try {
      const buffer = await native().download(source.buffer(), source.offset * dtypeSize(source.dtype), source.byteLength);
      return typedArrayOf(this.dtype, buffer) as TypedArrayFor[D];
    } finally {
      if (source !== this) source.dispose();
    }
  }

  /** A contiguous copy on `device` (a view sharing memory if it is already there). */
  to(device: DeviceSpec, options?: { stream?: Stream }): Tensor {
    this.buffer();
    const stream = options?.stream;
    if (stream !== undefined && !(stream instanceof Stream)) throw new InvalidArgumentError('Invalid options.stream: expected a Stream');
    const target = stream ?? Stream.default(resolveDevice(device).device);
    if (stream && resolveDevice(device).device !== target.device) {
      throw new InvalidArgumentError(`to(${device}): options.stream is on ${target.device}`);
    }
    if (target.device === this.device && (target === this.stream || !stream)) return this.share();
    return this.withContiguousSource((source) =>
      this.produce({ dtype: this.dtype, stream: target }, (out) =>
        native().copy(source.buffer(), source.offset * dtypeSize(this.dtype), out.buffer(), 0, this.byteLength),
      ),
    );
  }

  /** A new tensor of `dtype` (a view sharing memory if the dtype is the same). Rounds to nearest even between floats. */
  cast(dtype: DType): Tensor {
    this.buffer();
    const to = checkDType(dtype);
    if (to === this.dtype) return this.share();
    return this.withContiguousSource((source) =>
      this.produce({ dtype: to, stream: this.stream }, (out) =>
        native().cast(
          source.buffer(), source.offset * dtypeSize(this.dtype), dtypeCode(this.dtype),
          out.buffer(), 0, dtypeCode(to), this.numel, this.stream.handle,
        ),
      ),
    );
  }

  /** A contiguous tensor with the same elements (this tensor, shared, if already contiguous). */
  contiguous(): Tensor {
    this.buffer();
    if (this.isContiguous) return this.share();
    return this.produce({ dtype: this.dtype, stream: this.stream }, (out) =>
      native().copyStrided(
        this.buffer(), this.offset * dtypeSize(this.dtype), dtypeSize(this.dtype),
        this.shape.slice(), this.strides.slice(), out.buffer(), 0, this.stream.handle,
      ),
    );
  }

  // ---- views --------------------------------------------------------------------------

  /** A view with a new shape (one dimension may be -1); needs a contiguous tensor. */
  view(shape: readonly number[]): Tensor {
    this.buffer();
    if (!this.isContiguous) {
      throw new InvalidArgumentError(`view: tensor of shape [${this.shape.join(', ')}] is not contiguous; use reshape() or contiguous() first`);
    }
    return this.withLayout(this.inferShape(shape), null, this.offset);
  }

  /** Like view(), copying first when the tensor is not contiguous. */
  reshape(shape: readonly number[]): Tensor {
    this.buffer();
    if (this.isContiguous) return this.view(shape);
    const dims = this.inferShape(shape);
    const c = this.contiguous();
    try {
      return c.view(dims);
    } finally {
      c.dispose();
    }
  }

  /** Elements `start` (inclusive) to `end` (exclusive) along `dim`, as a view; negative values count from the end. */
  slice(dim: number, start: number, end?: number): Tensor {
    this.buffer();
    if (!Number.isInteger(dim) || dim < -this.ndim || dim >= this.ndim) {
      throw new InvalidArgumentError(`slice: dim ${dim} is out of range for a tensor of ${this.ndim} dimension${this.ndim === 1 ? '' : 's'}`);
    }
    const d = dim < 0 ? dim + this.ndim : dim;
    const size = this.shape[d]!;
    const norm = (v: number, name: string): number => {
      if (!Number.isInteger(v) || v < -size || v > size) throw new InvalidArgumentError(`slice: ${name} ${v} is out of range for dimension ${d} of size ${size}`);
      return v < 0 ? v + size : v;
    };
    const s = norm(start, 'start');
    const e = end === undefined ? size : norm(end, 'end');
    if (e < s) throw new InvalidArgumentError(`slice: end ${e} is before start ${s}`);
    const shape = this.shape.slice();
    shape[d] = e - s;
    return this.withLayout(shape, this.strides.slice(), this.offset + s * this.strides[d]!);
  }

  // ---- lifetime -----------------------------------------------------------------------

  /** Releases this tensor's hold on its memory (freed in stream order once no view uses it). Idempotent. */
  dispose(): void {
    const storage = this.storage;
    if (!storage) return;
    this.storage = null;
    finalizer.unregister(this);
    storage.release();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.disposed ? ', disposed' : ''})`;
  }

  // ---- internals ----------------------------------------------------------------------

  /** @internal The binding's view of this tensor: its memory and the byte offset of its first element. */
  nativeRegion(): [NativeBufferHandle, number] {
    return [this.buffer(), this.offset * dtypeSize(this.dtype)];
  }

  private buffer(): NativeBufferHandle {
    if (!this.storage) throw new DisposedError(`${this.toString()} has been disposed`);
    return this.storage.handle;
  }

  /** A new tensor of this shape filled by `fill`; released again if `fill` throws. */
  private produce(options: TensorOptions, fill: (out: Tensor) => void): Tensor {
    const out = Tensor.empty(this.shape, options);
    try {
      fill(out);
      return out;
    } catch (error) {
      out.dispose();
      throw error;
    }
  }

  /** Runs `body` on this tensor, or on a contiguous copy of it that is released afterwards. */
  private withContiguousSource<T>(body: (source: Tensor) => T): T {
    const source = this.isContiguous ? this : this.contiguous();
    try {
      return body(source);
    } finally {
      if (source !== this) source.dispose();
    }
  }

  private share(): Tensor {
    return this.withLayout(this.shape.slice(), this.strides.slice(), this.offset);
  }

  private withLayout(shape: number[], strides: number[] | null, offset: number): Tensor {
    this.buffer();
    return new Tensor(this.storage!.retain(), this.dtype, shape, strides ?? contiguousStrides(shape), offset);
  }

  private inferShape(shape: readonly number[]): number[] {
    if (!Array.isArray(shape)) throw new InvalidArgumentError(`Invalid shape: expected an array of dimensions, got ${describe(shape)}`);
    const inferred = shape.filter((d) => d === -1).length;
    if (inferred > 1) throw new InvalidArgumentError(`Invalid shape [${shape.join(', ')}]: only one dimension can be -1`);
    checkShape(shape.map((d) => (d === -1 ? 0 : d)), 'shape', shape);
    const known = shape.map((d) => (d === -1 ? 1 : d));
    const knownCount = numelOf(known);
    const dims = shape.slice();
    if (inferred === 1) {
      if (knownCount === 0 || this.numel % knownCount !== 0) {
        throw new InvalidArgumentError(`Cannot view a tensor of ${this.numel} elements as [${shape.join(', ')}]`);
      }
      dims[dims.indexOf(-1)] = this.numel / knownCount;
    }
    if (numelOf(dims) !== this.numel) {
      throw new InvalidArgumentError(`Cannot view a tensor of shape [${this.shape.join(', ')}] (${this.numel} elements) as [${dims.join(', ')}] (${numelOf(dims)} elements)`);
    }
    return dims;
  }
}

