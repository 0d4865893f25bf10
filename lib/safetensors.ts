/**
 * safetensors: our reader and writer (no maintained npm package exists),
 * following the normative rules of shared/reference/formats.md §5.1.
 *
 * File layout:
 *
 *     [0, 8)          N, a little-endian u64: the header's byte length
 *     [8, 8 + N)      the header: a UTF-8 JSON object
 *                     {"__metadata__"?: {str: str}, "<name>": {"dtype", "shape", "data_offsets": [begin, end]}, ...}
 *     [8 + N, EOF)    the tensors' bytes; data_offsets count from 8 + N
 *
 * The reader validates everything the reference reader does — header length
 * bounds, UTF-8, a JSON object without duplicate keys, string metadata, known
 * dtypes, non-negative integer shapes, offsets that tile the data section
 * exactly (no gap, overlap or trailing byte; nothing past the end), and byte
 * sizes that match shape × dtype — and turns every failure into an
 * `ERR_MODEL_FORMAT` {@link ModelFormatError} whose message starts with the
 * file's path and names the tensor concerned. It reads only the header when a
 * file is opened (one bounded read); tensor bytes are read on demand from the
 * file descriptor at their offset, so files of any size work.
 *
 * {@link SafetensorsCheckpoint} opens what a model folder holds: one
 * `model.safetensors`, or the shards named by `model.safetensors.index.json`
 * (validated: every shard exists, every tensor is in the shard the index names,
 * and no tensor is listed twice). `loadTensor` / `loadTensors` stream tensors
 * into device memory in chunks, counted in the `weights` memory category, with
 * progress callbacks for whole-model loads.
 *
 * @example
 * const ckpt = await SafetensorsCheckpoint.open('/models/llama');      // folder, file or index.json
 * const embed = await ckpt.loadTensor('model.embed_tokens.weight', { device: 'cpu' });
 * const all = await ckpt.loadTensors({ onProgress: (p) => console.log(`${p.bytesDone}/${p.bytesTotal}`) });
 * await ckpt.close();
 *
 * await writeSafetensors('out.safetensors', { w: { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) } }, { format: 'pt' });
 */
import * as fs from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import * as os from 'node:os';
import * as path from 'node:path';

import { type DeviceSpec } from './device';
import { typedArrayOf, type DType, type TensorData } from './dtype';
import { AbortedError, DisposedError, InvalidArgumentError, ModelFormatError, UnsupportedError } from './errors';
import { isJsonObject, parseJsonObject, readJsonObject } from './json-file';
import { type MemoryResource } from './memory';
import { native } from './native';
import { type Stream } from './stream';
import { Tensor } from './tensor';

// ---- dtypes ---------------------------------------------------------------------------

/** Bits per element of every dtype the reference defines (safetensors tensor.rs `Dtype::bitsize`). */
const DTYPE_BITS = {
  BOOL: 8,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  F64: 64,
  I64: 64,
  U64: 64,
  C64: 64,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
} as const;

/** A dtype string of the safetensors format ("F32", "BF16", "I8", ...). */
export type SafetensorsDType = keyof typeof DTYPE_BITS;

export const SAFETENSORS_DTYPES: readonly SafetensorsDType[] = Object.freeze(Object.keys(DTYPE_BITS) as SafetensorsDType[]);

/** The reference reader's bound on N (`MAX_HEADER_SIZE`). */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

// The safetensors dtypes a pagedllm Tensor can hold, and back.
const TO_DTYPE: Partial<Record<SafetensorsDType, DType>> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  I32: 'int32',
  I8: 'int8',
  U8: 'uint8',
};
const FROM_DTYPE: Record<DType, SafetensorsDType> = {
  float32: 'F32',
  float16: 'F16',
  bfloat16: 'BF16',
  int32: 'I32',
  int8: 'I8',
  uint8: 'U8',
};

export function isSafetensorsDType(value: unknown): value is SafetensorsDType {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BITS, value);
}

/** Bits per element ("F4" is 4, "F6_E2M3" 6, "BF16" 16). */
export function safetensorsDTypeBits(dtype: SafetensorsDType): number {
  return DTYPE_BITS[dtype];
}

/** The pagedllm dtype that holds `dtype` as-is (F32 → float32, ...), or null when none does (F64, I64, F8_*, ...). */
export function safetensorsToDType(dtype: SafetensorsDType): DType | null {
  return TO_DTYPE[dtype] ?? null;
}

/** The safetensors dtype string of a pagedllm dtype (float32 → "F32", bfloat16 → "BF16", ...). */
export function dtypeToSafetensors(dtype: DType): SafetensorsDType {
  return FROM_DTYPE[dtype];
}

// Typed arrays and the data on disk are both little-endian only on a little-endian host.
function checkLittleEndian(what: string): void {
  if (os.endianness() !== 'LE') throw new UnsupportedError(`${what}: safetensors data is little-endian and this host is big-endian`);
}

// ---- the header -------------------------------------------------------------------------

/** One tensor of a safetensors file, as its header describes it. */
export interface SafetensorsTensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** [begin, end) in bytes, relative to the start of the data section. */
  readonly dataOffsets: readonly [number, number];
  readonly byteLength: number;
  /** The file that holds the bytes, and where they start in it (8 + N + begin). */
  readonly file: string;
  readonly fileOffset: number;
}

/** A validated header. */
export interface SafetensorsHeader {
  /** N, the header's byte length (the JSON and any padding). */
  readonly headerBytes: number;
  /** Where the data section starts in the file: 8 + N. */
  readonly dataStart: number;
  /** `__metadata__`, or null when the header has none. */
  readonly metadata: Readonly<Record<string, string>> | null;
  /** Every tensor, in data order (by offsets). */
  readonly tensors: readonly SafetensorsTensorInfo[];
}

const TENSOR_KEYS = ['dtype', 'shape', 'data_offsets'];

function formatError(file: string, message: string, tensor?: string): ModelFormatError {
  return new ModelFormatError(`${file}: ${tensor === undefined ? '' : `tensor ${JSON.stringify(tensor)}: `}${message}`);
}

function isIndex(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/**
 * Validates the header bytes `header` (the N bytes after the length prefix)
 * of `file`, a file of `fileSize` bytes, and returns its tensors in data
 * order. Throws ModelFormatError naming `file` (and the tensor) otherwise.
 */
export function parseSafetensorsHeader(file: string, header: Uint8Array, fileSize: number): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(header);
  } catch {
    throw formatError(file, 'the header is not valid UTF-8');
  }
  const json = parseJsonObject(text, file, 'safetensors header');
  const dataStart = 8 + header.length;

  let metadata: Record<string, string> | null = null;
  const tensors: SafetensorsTensorInfo[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isJsonObject(entry)) throw formatError(file, '"__metadata__" must be an object of strings');
      for (const [key, value] of Object.entries(entry)) {
        if (typeof value !== 'string') {
          throw formatError(file, `"__metadata__" value of ${JSON.stringify(key)} must be a string, got ${JSON.stringify(value)}`);
        }
      }
      metadata = Object.freeze(entry as Record<string, string>);
      continue;
    }
    tensors.push(parseTensorEntry(file, name, entry, dataStart));
  }

  // The offsets must tile [0, data length) exactly, in some order: sort by
  // them and walk (zero-size tensors have begin == end and take no room).
  tensors.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  const dataBytes = fileSize - dataStart;
  let end = 0;
  let previous: SafetensorsTensorInfo | null = null;
  for (const t of tensors) {
    const [begin, stop] = t.dataOffsets;
    const after = previous ? `tensor ${JSON.stringify(previous.name)}, which ends at ${end}` : 'the start of the data section';
    if (begin < end) throw formatError(file, `data_offsets [${begin}, ${stop}] overlap ${after}`, t.name);
    if (begin > end) throw formatError(file, `data_offsets [${begin}, ${stop}] leave a gap of ${begin - end} bytes after ${after}`, t.name);
    checkByteSize(file, t);
    if (stop > dataBytes) {
      throw formatError(
        file,
        `data_offsets [${begin}, ${stop}] run past the end of the file: the data section has ${Math.max(dataBytes, 0)} bytes ` +
          `(file of ${fileSize} bytes, header of ${header.length}); is the file truncated?`,
        t.name,
      );
    }
    end = stop;
    previous = t;
  }
  if (end < dataBytes) {
    const last = previous ? `the last tensor, ${JSON.stringify(previous.name)}, which ends at ${end}` : 'the header (the file holds no tensor)';
    throw formatError(file, `${dataBytes - end} trailing bytes after ${last}: the file has ${fileSize} bytes, the data ends at ${dataStart + end}`);
  }
  return { headerBytes: header.length, dataStart, metadata, tensors };
}

function parseTensorEntry(file: string, name: string, entry: unknown, dataStart: number): SafetensorsTensorInfo {
  const fail = (message: string): ModelFormatError => formatError(file, message, name);
  if (!isJsonObject(entry)) throw fail(`expected an object {"dtype", "shape", "data_offsets"}, got ${JSON.stringify(entry)}`);
  for (const key of TENSOR_KEYS) if (!(key in entry)) throw fail(`missing "${key}"`);
  for (const key of Object.keys(entry)) if (!TENSOR_KEYS.includes(key)) throw fail(`unexpected key ${JSON.stringify(key)}`);

  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isSafetensorsDType(dtype)) throw fail(`unknown dtype ${JSON.stringify(dtype)} (known: ${SAFETENSORS_DTYPES.join(', ')})`);
  if (!Array.isArray(shape) || !shape.every(isIndex)) {
    throw fail(`invalid shape ${JSON.stringify(shape)}: expected a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
    throw fail(`invalid data_offsets ${JSON.stringify(offsets)}: expected [begin, end], two non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw fail(`invalid data_offsets [${begin}, ${end}]: end is before begin`);

  return Object.freeze({
    name,
    dtype,
    shape: Object.freeze((shape as number[]).slice()),
    dataOffsets: Object.freeze([begin, end] as [number, number]),
    byteLength: end - begin,
    file,
    fileOffset: dataStart + begin,
  });
}

/** The bytes between a tensor's offsets must be exactly shape × dtype (checked after the offsets, as the reference does). */
function checkByteSize(file: string, t: SafetensorsTensorInfo): void {
  // In BigInt: a shape's product may overflow a double's exact range.
  const bits = BigInt(DTYPE_BITS[t.dtype]) * t.shape.reduce((n: bigint, d: number) => n * BigInt(d), 1n);
  const described = `${t.dtype} [${t.shape.join(', ')}]`;
  if (bits % 8n !== 0n) throw formatError(file, `${described} is ${bits} bits, not a whole number of bytes`, t.name);
  if (bits / 8n !== BigInt(t.byteLength)) {
    throw formatError(file, `data_offsets [${t.dataOffsets[0]}, ${t.dataOffsets[1]}] hold ${t.byteLength} bytes but ${described} needs ${bits / 8n}`, t.name);
  }
}

// ---- reading --------------------------------------------------------------------------------

/** Tensors reach the device in chunks of this many bytes (one staging buffer, reused). */
const LOAD_CHUNK_BYTES = 16 * 2 ** 20;

export interface LoadTensorOptions {
  /** Default: the stream's device, else `defaultDevice()`. */
  device?: DeviceSpec;
  stream?: Stream;
  /** Default: the device's default resource. */
  memory?: MemoryResource;
  /** Stops between chunks with ERR_ABORTED (the tensors made so far are released). */
  signal?: AbortSignal;
}

export interface LoadProgress {
  bytesDone: number;
  bytesTotal: number;
  tensorsDone: number;
  tensorsTotal: number;
  /** The tensor being (or just) loaded. */
  tensor: string;
}

export interface LoadTensorsOptions extends LoadTensorOptions {
  /** Which tensors (default: all of them). */
  names?: readonly string[];
  /** Called after every chunk (at most 16 MiB) and after every tensor. */
  onProgress?: (progress: LoadProgress) => void;
}

function checkAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new AbortedError(`${what}: aborted`, { cause: signal.reason });
}

/**
 * One open safetensors file: its validated header, and reads of its tensors at
 * their offsets. Usually reached through {@link SafetensorsCheckpoint}.
 */
export class SafetensorsFile {
  readonly path: string;
  /** The file's size in bytes when it was opened. */
  readonly size: number;
  readonly headerBytes: number;
  readonly dataStart: number;
  readonly metadata: Readonly<Record<string, string>> | null;
  /** Every tensor, in data order. */
  readonly tensors: readonly SafetensorsTensorInfo[];
  private readonly byName: Map<string, SafetensorsTensorInfo>;
  private handle: fs.promises.FileHandle | null;

  private constructor(file: string, size: number, header: SafetensorsHeader, handle: fs.promises.FileHandle) {
    this.path = file;
    this.size = size;
    this.headerBytes = header.headerBytes;
    this.dataStart = header.dataStart;
    this.metadata = header.metadata;
    this.tensors = Object.freeze(header.tensors.slice());
    this.byName = new Map(header.tensors.map((t) => [t.name, t]));
    this.handle = handle;
  }

  /** Opens `file` and validates its header (one bounded read: 8 bytes, then N ≤ 100 MB). */
  static async open(file: string): Promise<SafetensorsFile> {
    let handle: fs.promises.FileHandle;
    try {
      handle = await fs.promises.open(file, 'r');
    } catch (error) {
      throw new ModelFormatError(`${file}: cannot open the file: ${(error as Error).message}`, { cause: error });
    }
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw formatError(file, 'not a regular file');
      const { size } = stat;
      if (size < 8) throw formatError(file, `the file has ${size} bytes, fewer than the 8 of the header length: not a safetensors file, or truncated`);
      const prefix = Buffer.alloc(8);
      await readFully(handle, prefix, 0, file, 'the header length');
      const n = prefix.readBigUInt64LE(0);
      if (n > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
        throw formatError(file, `header length ${n} is too large (at most ${SAFETENSORS_MAX_HEADER_BYTES} bytes): not a safetensors file, or corrupt`);
      }
      if (n > BigInt(size - 8)) {
        throw formatError(file, `header length ${n} runs past the end of the file (${size} bytes, so at most ${size - 8}): the file is truncated or corrupt`);
      }
      if (n < 2n) throw formatError(file, `header length ${n} is too small to hold a JSON object`);
      const header = Buffer.alloc(Number(n));
      await readFully(handle, header, 8, file, 'the header');
      return new SafetensorsFile(file, size, parseSafetensorsHeader(file, header, size), handle);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  get closed(): boolean {
    return this.handle === null;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** The tensor `name`; ModelFormatError if the file has none. */
  info(name: string): SafetensorsTensorInfo {
    const info = this.byName.get(name);
    if (!info) throw new ModelFormatError(`${this.path}: no tensor ${JSON.stringify(name)}`);
    return info;
  }

  /** The bytes of tensor `name` (one read at its offset into a new buffer). */
  async readBytes(name: string): Promise<Buffer> {
    return Buffer.from(await this.readArrayBuffer(this.info(name)));
  }

  /**
   * The elements of tensor `name` as the typed array pagedllm uses for its
   * dtype (Float32Array; Uint16Array bits for F16 / BF16; Int32Array,
   * Int8Array, Uint8Array). UnsupportedError for other dtypes.
   */
  async readArray(name: string): Promise<TensorData> {
    const info = this.info(name);
    const dtype = this.loadableDType(info);
    return typedArrayOf(dtype, await this.readArrayBuffer(info));
  }

  /**
   * Tensor `name` in device memory (category `weights`), streamed from the
   * file in chunks through one reused staging buffer.
   */
  async loadTensor(name: string, options: LoadTensorOptions = {}, onChunk?: (bytes: number) => void): Promise<Tensor> {
    const info = this.info(name);
    const dtype = this.loadableDType(info);
    const what = `${this.path}: tensor ${JSON.stringify(name)}`;
    checkAborted(options.signal, what);
    const tensor = Tensor.empty(info.shape, { dtype, device: options.device, stream: options.stream, memory: options.memory, category: 'weights' });
    try {
      const [buffer, base] = tensor.nativeRegion();
      const staging = Buffer.allocUnsafeSlow(Math.min(LOAD_CHUNK_BYTES, info.byteLength));
      for (let done = 0; done < info.byteLength; ) {
        checkAborted(options.signal, what);
        const chunk = staging.subarray(0, Math.min(staging.length, info.byteLength - done));
        await readFully(this.fd(), chunk, info.fileOffset + done, this.path, `tensor ${JSON.stringify(name)}`);
        native().upload(chunk, buffer, base + done); // takes the bytes before it returns
        done += chunk.length;
        onChunk?.(chunk.length);
      }
      return tensor;
    } catch (error) {
      tensor.dispose();
      throw error;
    }
  }

  /** Closes the file descriptor. Idempotent; reads afterwards throw ERR_DISPOSED. */
  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = null;
    await handle?.close();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private fd(): fs.promises.FileHandle {
    if (!this.handle) throw new DisposedError(`${this.path}: the safetensors file has been closed`);
    return this.handle;
  }

  private loadableDType(info: SafetensorsTensorInfo): DType {
    const dtype = safetensorsToDType(info.dtype);
    if (!dtype) {
      throw new UnsupportedError(
        `${this.path}: tensor ${JSON.stringify(info.name)}: dtype ${info.dtype} has no pagedllm dtype (supported: ${Object.keys(TO_DTYPE).join(', ')})`,
      );
    }
    checkLittleEndian(`${this.path}: tensor ${JSON.stringify(info.name)}`);
    return dtype;
  }

  private async readArrayBuffer(info: SafetensorsTensorInfo): Promise<ArrayBuffer> {
    if (info.byteLength > bufferConstants.MAX_LENGTH) {
      throw new UnsupportedError(`${this.path}: tensor ${JSON.stringify(info.name)} has ${info.byteLength} bytes, more than one buffer holds; use loadTensor()`);
    }
    const bytes = new ArrayBuffer(info.byteLength);
    await readFully(this.fd(), new Uint8Array(bytes), info.fileOffset, this.path, `tensor ${JSON.stringify(info.name)}`);
    return bytes;
  }
}

/** Fills `target` from `position` (reads may return less than asked); a file that ends first is ERR_MODEL_FORMAT. */
async function readFully(handle: fs.promises.FileHandle, target: Uint8Array, position: number, file: string, what: string): Promise<void> {
  for (let done = 0; done < target.length; ) {
    const { bytesRead } = await handle.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) {
      throw new ModelFormatError(`${file}: ${what}: the file ends at byte ${position + done}, ${target.length - done} bytes short (did it change after it was opened?)`);
    }
    done += bytesRead;
  }
}

// ---- checkpoints: one file, a folder, or shards named by an index ----------------------------

export const SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json';
export const SAFETENSORS_SINGLE_FILE = 'model.safetensors';

async function exists(file: string): Promise<boolean> {
  try {
    await fs.promises.access(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * The tensors of a model: one safetensors file, or the union of several.
 *
 * `open(location)` accepts
 * - a folder: its `model.safetensors.index.json` if present, else its
 *   `model.safetensors`, else every `*.safetensors` in it (a tensor in two of
 *   them is an error);
 * - an index file: `{"metadata": {...}, "weight_map": {"<tensor>": "<shard file>"}}`
 *   with shard paths relative to it. Every shard must exist, every tensor must
 *   be in the shard the index names and in no other shard, and the index must
 *   not list a tensor twice. Tensors of a shard that the index does not list
 *   are kept, as transformers does;
 * - one `.safetensors` file.
 */
export class SafetensorsCheckpoint {
  /** What was opened. */
  readonly location: string;
  /** The index file used, or null. */
  readonly indexFile: string | null;
  /** The index's `metadata` (e.g. `total_size`), or null. */
  readonly indexMetadata: Readonly<Record<string, unknown>> | null;
  readonly files: readonly SafetensorsFile[];
  private readonly byName: Map<string, SafetensorsFile>;
  private closed = false;

  private constructor(location: string, indexFile: string | null, indexMetadata: Record<string, unknown> | null, files: SafetensorsFile[], byName: Map<string, SafetensorsFile>) {
    this.location = location;
    this.indexFile = indexFile;
    this.indexMetadata = indexMetadata;
    this.files = Object.freeze(files.slice());
    this.byName = byName;
  }

  static async open(location: string): Promise<SafetensorsCheckpoint> {
    let stat: fs.Stats;
    try {
      stat = await fs.promises.stat(location);
    } catch (error) {
      throw new ModelFormatError(`${location}: cannot open: ${(error as Error).message}`, { cause: error });
    }
    if (stat.isDirectory()) {
      const index = path.join(location, SAFETENSORS_INDEX_FILE);
      if (await exists(index)) return SafetensorsCheckpoint.openIndex(location, index);
      const single = path.join(location, SAFETENSORS_SINGLE_FILE);
      if (await exists(single)) return SafetensorsCheckpoint.openFiles(location, [single]);
      const found = (await fs.promises.readdir(location)).filter((f) => f.endsWith('.safetensors')).sort();
      if (found.length === 0) {
        throw new ModelFormatError(`${location}: no ${SAFETENSORS_INDEX_FILE}, ${SAFETENSORS_SINGLE_FILE} or other *.safetensors file in the folder`);
      }
      return SafetensorsCheckpoint.openFiles(location, found.map((f) => path.join(location, f)));
    }
    if (location.endsWith('.json')) return SafetensorsCheckpoint.openIndex(location, location);
    return SafetensorsCheckpoint.openFiles(location, [location]);
  }

  private static async openFiles(location: string, paths: string[]): Promise<SafetensorsCheckpoint> {
    const files = await openAll(paths);
    const byName = new Map<string, SafetensorsFile>();
    for (const file of files) {
      for (const name of file.names()) {
        const other = byName.get(name);
        if (other) {
          await closeAll(files);
          throw new ModelFormatError(`${location}: tensor ${JSON.stringify(name)} is in both ${other.path} and ${file.path}`);
        }
        byName.set(name, file);
      }
    }
    return new SafetensorsCheckpoint(location, null, null, files, byName);
  }

  private static async openIndex(location: string, indexFile: string): Promise<SafetensorsCheckpoint> {
    const index = await readJsonObject(indexFile, 'safetensors index'); // a tensor listed twice is a duplicate key
    const weightMap = index.weight_map;
    if (!isJsonObject(weightMap)) throw new ModelFormatError(`${indexFile}: "weight_map" must be an object {"<tensor>": "<shard file>"}`);
    const metadata = index.metadata;
    if (metadata !== undefined && metadata !== null && !isJsonObject(metadata)) throw new ModelFormatError(`${indexFile}: "metadata" must be an object`);
    const entries = Object.entries(weightMap);
    if (entries.length === 0) throw new ModelFormatError(`${indexFile}: "weight_map" lists no tensor`);

    const dir = path.dirname(indexFile);
    const shardOf = new Map<string, string>(); // tensor -> shard path
    const firstTensorOf = new Map<string, string>(); // shard path -> a tensor that names it (for messages)
    for (const [name, shard] of entries) {
      if (typeof shard !== 'string' || shard === '' || path.isAbsolute(shard) || path.normalize(shard).split(path.sep)[0] === '..') {
        throw new ModelFormatError(`${indexFile}: tensor ${JSON.stringify(name)}: shard ${JSON.stringify(shard)} must be a file name relative to the index`);
      }
      const shardPath = path.join(dir, shard);
      shardOf.set(name, shardPath);
      if (!firstTensorOf.has(shardPath)) firstTensorOf.set(shardPath, name);
    }
    for (const [shardPath, name] of firstTensorOf) {
      if (!(await exists(shardPath))) {
        throw new ModelFormatError(`${indexFile}: tensor ${JSON.stringify(name)}: its shard ${path.basename(shardPath)} does not exist (looked for ${shardPath})`);
      }
    }
    const files = await openAll([...firstTensorOf.keys()]);
    try {
      const fileAt = new Map(files.map((f) => [f.path, f]));
      const byName = new Map<string, SafetensorsFile>();
      for (const [name, shardPath] of shardOf) {
        const file = fileAt.get(shardPath)!;
        if (!file.has(name)) throw new ModelFormatError(`${indexFile}: tensor ${JSON.stringify(name)} is mapped to ${path.basename(shardPath)}, which has no such tensor`);
        byName.set(name, file);
      }
      for (const file of files) {
        for (const name of file.names()) {
          const owner = byName.get(name);
          if (owner && owner !== file) {
            throw new ModelFormatError(`${indexFile}: tensor ${JSON.stringify(name)} is listed twice: in ${path.basename(owner.path)} (as the index says) and in ${path.basename(file.path)}`);
          }
          byName.set(name, file);
        }
      }
      return new SafetensorsCheckpoint(location, indexFile, (metadata as Record<string, unknown> | undefined) ?? null, files, byName);
    } catch (error) {
      await closeAll(files);
      throw error;
    }
  }

  /** Every tensor name, sorted. */
  names(): string[] {
    return [...this.byName.keys()].sort();
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** The tensor `name`; ModelFormatError naming the checkpoint if it has none. */
  info(name: string): SafetensorsTensorInfo {
    return this.fileOf(name).info(name);
  }

  /** The bytes of every tensor. */
  get totalBytes(): number {
    let total = 0;
    for (const [name, file] of this.byName) total += file.info(name).byteLength;
    return total;
  }

  async readBytes(name: string): Promise<Buffer> {
    return this.fileOf(name).readBytes(name);
  }

  /** See {@link SafetensorsFile.readArray}. */
  async readArray(name: string): Promise<TensorData> {
    return this.fileOf(name).readArray(name);
  }

  /** Tensor `name` in device memory, category `weights`. */
  async loadTensor(name: string, options: LoadTensorOptions = {}): Promise<Tensor> {
    return this.fileOf(name).loadTensor(name, options);
  }

  /**
   * Several tensors (default: all) in device memory, category `weights`, read
   * file by file in data order; `onProgress` follows the bytes. If one fails
   * (or `signal` aborts), the ones made so far are released.
   */
  async loadTensors(options: LoadTensorsOptions = {}): Promise<Map<string, Tensor>> {
    const { names, onProgress, ...load } = options;
    const infos = (names ?? [...this.byName.keys()]).map((name) => this.info(name));
    // Sequential disk order: by file, then by offset.
    const fileOrder = new Map(this.files.map((f, i) => [f.path, i]));
    infos.sort((a, b) => fileOrder.get(a.file)! - fileOrder.get(b.file)! || a.fileOffset - b.fileOffset);
    const progress: LoadProgress = { bytesDone: 0, bytesTotal: infos.reduce((n, t) => n + t.byteLength, 0), tensorsDone: 0, tensorsTotal: infos.length, tensor: '' };
    const loaded = new Map<string, Tensor>();
    try {
      for (const info of infos) {
        progress.tensor = info.name;
        const tensor = await this.fileOf(info.name).loadTensor(info.name, load, (bytes) => {
          progress.bytesDone += bytes;
          onProgress?.({ ...progress });
        });
        loaded.set(info.name, tensor);
        progress.tensorsDone++;
        onProgress?.({ ...progress });
      }
      return loaded;
    } catch (error) {
      for (const tensor of loaded.values()) tensor.dispose();
      throw error;
    }
  }

  /** Closes every file. Idempotent; reads afterwards throw ERR_DISPOSED. */
  async close(): Promise<void> {
    this.closed = true;
    await closeAll(this.files);
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private fileOf(name: string): SafetensorsFile {
    if (this.closed) throw new DisposedError(`${this.location}: the checkpoint has been closed`);
    const file = this.byName.get(name);
    if (!file) throw new ModelFormatError(`${this.location}: no tensor ${JSON.stringify(name)}`);
    return file;
  }
}

async function openAll(paths: string[]): Promise<SafetensorsFile[]> {
  const files: SafetensorsFile[] = [];
  try {
    for (const p of paths) files.push(await SafetensorsFile.open(p));
    return files;
  } catch (error) {
    await closeAll(files);
    throw error;
  }
}

async function closeAll(files: readonly SafetensorsFile[]): Promise<void> {
  await Promise.all(files.map((f) => f.close()));
}

// ---- writing ----------------------------------------------------------------------------------

/** One tensor to write: its dtype (a safetensors or a pagedllm name), shape and little-endian bytes. */
export interface SafetensorsTensorData {
  dtype: SafetensorsDType | DType;
  shape: readonly number[];
  /** numel × bits / 8 bytes (e.g. a Float32Array for F32, Uint16Array bits for F16 / BF16). */
  data: ArrayBufferView;
}

/** The header the writer produces (exported for tests and tools): the 8-byte length, the padded JSON, and the data order. */
export function encodeSafetensorsHeader(
  tensors: Readonly<Record<string, SafetensorsTensorData>>,
  metadata?: Readonly<Record<string, string>> | null,
): { header: Buffer; order: string[]; dataBytes: number } {
  if (!isJsonObject(tensors)) throw new InvalidArgumentError('writeSafetensors: tensors must be an object { name: { dtype, shape, data } }');
  const entries = Object.entries(tensors).map(([name, t]) => {
    if (name === '__metadata__') throw new InvalidArgumentError('writeSafetensors: "__metadata__" cannot be a tensor name');
    if (!isJsonObject(t)) throw new InvalidArgumentError(`writeSafetensors: tensor ${JSON.stringify(name)} must be { dtype, shape, data }`);
    const dtype = isSafetensorsDType(t.dtype) ? t.dtype : Object.prototype.hasOwnProperty.call(FROM_DTYPE, t.dtype as string) ? FROM_DTYPE[t.dtype as DType] : null;
    if (!dtype) throw new InvalidArgumentError(`writeSafetensors: tensor ${JSON.stringify(name)}: unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every(isIndex)) {
      throw new InvalidArgumentError(`writeSafetensors: tensor ${JSON.stringify(name)}: shape must be a list of non-negative integers, got ${JSON.stringify(t.shape)}`);
    }
    if (!ArrayBuffer.isView(t.data)) throw new InvalidArgumentError(`writeSafetensors: tensor ${JSON.stringify(name)}: data must be a typed array or Buffer`);
    const bits = BigInt(DTYPE_BITS[dtype]) * t.shape.reduce((n: bigint, d: number) => n * BigInt(d), 1n);
    if (bits % 8n !== 0n || bits / 8n !== BigInt(t.data.byteLength)) {
      throw new InvalidArgumentError(
        `writeSafetensors: tensor ${JSON.stringify(name)}: ${dtype} [${t.shape.join(', ')}] needs ${bits % 8n === 0n ? `${bits / 8n} bytes` : 'a whole number of bytes'}, the data has ${t.data.byteLength}`,
      );
    }
    return { name, dtype, shape: t.shape.slice(), bytes: t.data.byteLength, alignment: Math.max(1, DTYPE_BITS[dtype] / 8) };
  });
  if (metadata !== undefined && metadata !== null) {
    if (!isJsonObject(metadata)) throw new InvalidArgumentError('writeSafetensors: metadata must be an object of strings');
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') throw new InvalidArgumentError(`writeSafetensors: metadata ${JSON.stringify(key)} must be a string, got ${typeof value}`);
    }
  }
  // The reference writer's order: larger alignment first, then name (by UTF-8 bytes, as Rust compares strings).
  entries.sort((a, b) => b.alignment - a.alignment || Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
  const json: Record<string, unknown> = {};
  if (metadata) json.__metadata__ = { ...metadata };
  let offset = 0;
  for (const e of entries) {
    json[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.bytes] };
    offset += e.bytes;
  }
  // Spaces pad the JSON to a multiple of 8 so the data section starts 8-byte aligned.
  const text = JSON.stringify(json);
  const jsonBytes = Buffer.byteLength(text);
  const padded = jsonBytes + ((8 - (jsonBytes % 8)) % 8);
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  header.write(text, 8, 'utf8');
  return { header, order: entries.map((e) => e.name), dataBytes: offset };
}

/**
 * Writes `tensors` to `file` as safetensors: `__metadata__` first, tensors in
 * the reference writer's order (alignment, then name), the header padded with
 * spaces to a multiple of 8 bytes. The file appears complete or not at all (it
 * is written beside and renamed).
 */
export async function writeSafetensors(
  file: string,
  tensors: Readonly<Record<string, SafetensorsTensorData>>,
  metadata?: Readonly<Record<string, string>> | null,
): Promise<void> {
  checkLittleEndian(`writeSafetensors(${file})`);
  const { header, order } = encodeSafetensorsHeader(tensors, metadata);
  const temporary = `${file}.${process.pid}.partial`;
  const handle = await fs.promises.open(temporary, 'w');
  try {
    let position = 0;
    const write = async (bytes: Uint8Array): Promise<void> => {
      for (let done = 0; done < bytes.length; ) {
        const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done);
        done += bytesWritten;
      }
      position += bytes.length;
    };
    await write(header);
    for (const name of order) {
      const { data } = tensors[name]!;
      await write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    await handle.close();
    await fs.promises.rename(temporary, file);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await fs.promises.rm(temporary, { force: true });
    throw error;
  }
}
