/**
 * KvCache: every layer's K and V caches as blocks (category `kv-cache`), in
 * the layout of include/pagedllm/paged_kv.h, and the ops that fill them:
 * `writeKv` (scatter new K/V by slot mapping; slot −1 is skipped) and
 * `copyBlocks` (copy-on-write). The BlockManager decides the slots and the
 * copies; this class owns the memory.
 *
 * Per layer: `key` and `value` are tensors of shape
 * `[numBlocks, numKvHeads, blockSize, headSize]` (dtype float32 / float16 /
 * bfloat16, or int8 / uint8 holding int8 / fp8-e4m3 codes) and, for the
 * quantized kinds, `keyScales` / `valueScales` of shape
 * `[numBlocks, numKvHeads, blockSize]` float32 (one scale per token and head).
 *
 * @example
 * const cache = new KvCache({ numLayers: 2, numBlocks: 64, numKvHeads: 4, blockSize: 16, headSize: 64, kvDtype: 'float16' });
 * cache.writeKv(0, key, value, slotMapping);   // key/value [numTokens, 4, 64], slotMapping int32 [numTokens]
 * cache.copyBlocks([[3, 7]]);                  // block 7 = block 3 in every layer
 * cache.dispose();
 */
import { resolveDevice, type Device, type DeviceSpec } from './device';
import { dtypeCode, type DType } from './dtype';
import { DisposedError, InvalidArgumentError } from './errors';
import { type MemoryResource } from './memory';
import { type MemoryPlan, type ModelConfig } from './planner';
import { native, type NativeBufferHandle } from './native';
import { Stream } from './stream';
import { Tensor } from './tensor';

export type KvCacheDType = 'float32' | 'float16' | 'bfloat16' | 'int8' | 'fp8';

// Code in paged_kv.h's KvCacheDType, and the tensor dtype that stores it.
const KV: Record<KvCacheDType, { code: number; storage: DType }> = {
  float32: { code: 0, storage: 'float32' },
  float16: { code: 1, storage: 'float16' },
  bfloat16: { code: 2, storage: 'bfloat16' },
  int8: { code: 3, storage: 'int8' },
  fp8: { code: 4, storage: 'uint8' },
};

export interface KvCacheOptions {
  numLayers: number;
  numBlocks: number;
  numKvHeads: number;
  /** Tokens per block (8, 16 or 32 for the attention kernels). */
  blockSize: number;
  headSize: number;
  kvDtype?: KvCacheDType;
  device?: DeviceSpec;
  stream?: Stream;
  memory?: MemoryResource;
}

export interface KvCacheLayer {
  key: Tensor;
  value: Tensor;
  keyScales: Tensor | null;
  valueScales: Tensor | null;
}

/** @internal paged_kv.h's code of a KV cache dtype. */
export function kvDtypeCode(t: KvCacheDType): number {
  return KV[t].code;
}

function region(t: Tensor): [NativeBufferHandle, number] {
  return t.nativeRegion();
}
function optionalRegion(t: Tensor | null): [NativeBufferHandle | null, number] {
  return t ? t.nativeRegion() : [null, 0];
}

export class KvCache {
  readonly numLayers: number;
  readonly numBlocks: number;
  readonly numKvHeads: number;
  readonly blockSize: number;
  readonly headSize: number;
  readonly kvDtype: KvCacheDType;
  readonly device: Device;
  readonly stream: Stream;
  private layerTensors: KvCacheLayer[] | null;

  constructor(options: KvCacheOptions) {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('KvCache expects an options object');
    const positive = (name: keyof KvCacheOptions): number => {
      const v = options[name];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new InvalidArgumentError(`KvCache: ${name} must be a positive integer, got ${String(v)}`);
      return v;
    };
    this.numLayers = positive('numLayers');
    this.numBlocks = positive('numBlocks');
    this.numKvHeads = positive('numKvHeads');
    this.blockSize = positive('blockSize');
    this.headSize = positive('headSize');
    const kvDtype = options.kvDtype ?? 'float16';
    if (!Object.prototype.hasOwnProperty.call(KV, kvDtype)) {
      throw new InvalidArgumentError(`KvCache: kvDtype ${JSON.stringify(kvDtype)} is not supported (supported: ${Object.keys(KV).join(', ')})`);
    }
    this.kvDtype = kvDtype;
    this.stream = options.stream ?? Stream.default(resolveDevice(options.device).device);
    this.device = this.stream.device;
    const cacheShape = [this.numBlocks, this.numKvHeads, this.blockSize, this.headSize];
    const scaleShape = [this.numBlocks, this.numKvHeads, this.blockSize];
    const quantized = kvDtype === 'int8' || kvDtype === 'fp8';
    const layers: KvCacheLayer[] = [];
    const alloc = (shape: number[], dtype: DType): Tensor =>
      Tensor.empty(shape, { dtype, stream: this.stream, memory: options.memory, category: 'kv-cache' });
    try {
      for (let l = 0; l < this.numLayers; l++) {
        layers.push({ key: alloc(cacheShape, KV[kvDtype].storage), value: alloc(cacheShape, KV[kvDtype].storage), keyScales: null, valueScales: null });
        if (quantized) {
          layers[l]!.keyScales = alloc(scaleShape, 'float32');
          layers[l]!.valueScales = alloc(scaleShape, 'float32');
        }
      }
    } catch (error) {
      for (const layer of layers) for (const t of [layer.key, layer.value, layer.keyScales, layer.valueScales]) t?.dispose();
      throw error;
    }
    this.layerTensors = layers;
  }

  /**
   * The cache a plan sized: layers, KV heads and head size from the model's config, blocks,
   * block size and dtype from the plan.
   */
  static fromPlan(plan: MemoryPlan, config: ModelConfig, options: { device?: DeviceSpec; stream?: Stream; memory?: MemoryResource } = {}): KvCache {
    const heads = config.num_attention_heads;
    return new KvCache({
      numLayers: config.num_hidden_layers,
      numBlocks: plan.numBlocks,
      numKvHeads: config.num_key_value_heads ?? heads,
      blockSize: plan.blockSize,
      headSize: config.head_dim ?? config.hidden_size / heads,
      kvDtype: plan.kvDtype,
      ...options,
    });
  }

  /** Bytes of all layers' caches and scales. */
  get byteLength(): number {
    return this.layers.reduce((sum, l) => sum + l.key.byteLength + l.value.byteLength + (l.keyScales?.byteLength ?? 0) + (l.valueScales?.byteLength ?? 0), 0);
  }

  get layers(): readonly KvCacheLayer[] {
    if (!this.layerTensors) throw new DisposedError('KvCache has been disposed');
    return this.layerTensors;
  }

  /**
   * Scatters new keys and values of `layer` into their slots (quantizing for int8 / fp8).
   * key, value: [numTokens, numKvHeads, headSize] float32 / float16 / bfloat16, contiguous, on this device;
   * slotMapping: int32 [numTokens], slot = block * blockSize + offset, −1 skips the token.
   */
  writeKv(layer: number, key: Tensor, value: Tensor, slotMapping: Tensor): void {
    const l = this.layer(layer);
    if (!(key instanceof Tensor) || !(value instanceof Tensor) || !(slotMapping instanceof Tensor)) {
      throw new InvalidArgumentError('writeKv: key, value and slotMapping must be Tensors');
    }
    const numTokens = slotMapping.shape[0];
    if (slotMapping.dtype !== 'int32' || slotMapping.ndim !== 1) {
      throw new InvalidArgumentError(`writeKv: slotMapping must be int32 [numTokens], got ${slotMapping.dtype} [${slotMapping.shape.join(', ')}]`);
    }
    const want = `[${numTokens}, ${this.numKvHeads}, ${this.headSize}]`;
    for (const [name, t] of [['key', key], ['value', value]] as const) {
      if (`[${t.shape.join(', ')}]` !== want) throw new InvalidArgumentError(`writeKv: ${name} must have shape ${want}, got [${t.shape.join(', ')}]`);
      if (t.dtype !== 'float32' && t.dtype !== 'float16' && t.dtype !== 'bfloat16') {
        throw new InvalidArgumentError(`writeKv: ${name} must be float32, float16 or bfloat16, got ${t.dtype}`);
      }
      if (!t.isContiguous) throw new InvalidArgumentError(`writeKv: ${name} must be contiguous`);
    }
    if (key.dtype !== value.dtype) throw new InvalidArgumentError(`writeKv: key is ${key.dtype} but value is ${value.dtype}`);
    for (const t of [key, value, slotMapping]) {
      if (t.device !== this.device) throw new InvalidArgumentError(`writeKv: a tensor on ${t.device} cannot be written to a KV cache on ${this.device}`);
    }
    if (!slotMapping.isContiguous) throw new InvalidArgumentError('writeKv: slotMapping must be contiguous');
    const inputs = [key, value, slotMapping];
    for (const t of inputs) if (t.stream !== this.stream) this.stream.wait(t.stream.record());
    native().writeKv(
      ...region(key), ...region(value), dtypeCode(key.dtype), ...region(slotMapping), numTokens!,
      ...region(l.key), ...region(l.value),
      ...optionalRegion(l.keyScales), ...optionalRegion(l.valueScales),
      KV[this.kvDtype].code, this.shape(), this.stream.handle,
    );
    // The inputs are freed in their own streams' order: keep that after the write.
    for (const t of inputs) if (t.stream !== this.stream) t.stream.wait(this.stream.record());
  }

  /** Copies whole blocks (src → dst) in every layer, scales included: the copies copy-on-write asks for. */
  copyBlocks(pairs: ReadonlyArray<readonly [number, number]> | Int32Array): void {
    const layers = this.layers;
    const flat = pairs instanceof Int32Array ? pairs : Int32Array.from(pairs.flat());
    if (!(pairs instanceof Int32Array) && !pairs.every((p) => Array.isArray(p) && p.length === 2)) {
      throw new InvalidArgumentError('copyBlocks: pairs must be [src, dst] block pairs');
    }
    if (flat.length % 2 !== 0) throw new InvalidArgumentError('copyBlocks: an Int32Array of pairs must have an even length');
    for (const b of flat) {
      if (b < 0 || b >= this.numBlocks) throw new InvalidArgumentError(`copyBlocks: block ${b} is outside the cache (${this.numBlocks} blocks)`);
    }
    for (const l of layers) {
      for (const [cache, scales] of [[l.key, l.keyScales], [l.value, l.valueScales]] as const) {
        native().copyBlocks(...region(cache), ...optionalRegion(scales), KV[this.kvDtype].code, this.shape(), flat, this.stream.handle);
      }
    }
  }

  /**
   * Swap: copies blocks of `source` (another KvCache of the same shape and dtype, e.g. a host pool
   * in pinned memory for a device cache) into this cache, every layer, scales included:
   * for each pair, this cache's block dst = source's block src. One native call (`swap_blocks` in
   * include/pagedllm/paged_kv.h): runs of consecutive pairs are one copy per tensor, and a GPU cache
   * copies straight to or from pinned host memory. Ordered after prior work on both caches' streams;
   * later work on either runs after it. The BlockManager's swapOut/swapIn return the pairs.
   */
  swapBlocksFrom(source: KvCache, pairs: ReadonlyArray<readonly [number, number]>): void {
    if (!(source instanceof KvCache)) throw new InvalidArgumentError('swapBlocksFrom: source must be a KvCache');
    if (source === this) throw new InvalidArgumentError('swapBlocksFrom: source is this cache (use copyBlocks)');
    const layers = this.layers;
    const from = source.layers;
    const same = source.numLayers === this.numLayers && source.numKvHeads === this.numKvHeads &&
      source.blockSize === this.blockSize && source.headSize === this.headSize && source.kvDtype === this.kvDtype;
    if (!same) throw new InvalidArgumentError('swapBlocksFrom: the caches differ in layers, heads, block size, head size or dtype');
    const flat = new Int32Array(2 * pairs.length);
    const seen = new Set<number>();
    pairs.forEach((p, i) => {
      if (!Array.isArray(p) || p.length !== 2) throw new InvalidArgumentError('swapBlocksFrom: pairs must be [src, dst] block pairs');
      if (!(Number.isInteger(p[0]) && p[0] >= 0 && p[0] < source.numBlocks)) throw new InvalidArgumentError(`swapBlocksFrom: block ${p[0]} is outside the source (${source.numBlocks} blocks)`);
      if (!(Number.isInteger(p[1]) && p[1] >= 0 && p[1] < this.numBlocks)) throw new InvalidArgumentError(`swapBlocksFrom: block ${p[1]} is outside this cache (${this.numBlocks} blocks)`);
      if (seen.has(p[1])) throw new InvalidArgumentError(`swapBlocksFrom: destination block ${p[1]} appears in more than one pair`);
      seen.add(p[1]);
      flat[2 * i] = p[0];
      flat[2 * i + 1] = p[1];
    });
    if (pairs.length === 0) return;
    const regions: Array<[NativeBufferHandle, number, NativeBufferHandle, number, number]> = [];
    for (let l = 0; l < layers.length; l++) {
      const to = layers[l]!, src = from[l]!;
      for (const [a, b] of [[src.key, to.key], [src.value, to.value], [src.keyScales, to.keyScales], [src.valueScales, to.valueScales]] as const) {
        if (!a || !b) continue;
        regions.push([...region(a), ...region(b), a.byteLength / source.numBlocks]); // [numBlocks, ...], contiguous
      }
    }
    native().swapBlocks(regions, source.numBlocks, this.numBlocks, flat);
  }

  /** Releases every layer's memory (in stream order). Idempotent. */
  dispose(): void {
    const layers = this.layerTensors;
    if (!layers) return;
    this.layerTensors = null;
    for (const layer of layers) for (const t of [layer.key, layer.value, layer.keyScales, layer.valueScales]) t?.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }

  private layer(index: number): KvCacheLayer {
    const layers = this.layers;
    if (!Number.isInteger(index) || index < 0 || index >= layers.length) {
      throw new InvalidArgumentError(`KvCache: layer ${index} is out of range (${layers.length} layers)`);
    }
    return layers[index]!;
  }

  private shape(): { numBlocks: number; numKvHeads: number; blockSize: number; headSize: number } {
    return { numBlocks: this.numBlocks, numKvHeads: this.numKvHeads, blockSize: this.blockSize, headSize: this.headSize };
  }
}
