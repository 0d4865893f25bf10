/**
 * Paged attention over a KvCache layer (include/pagedllm/paged_attention.h):
 * decode (one new token per sequence), prefill and mixed batches (ragged new
 * tokens per sequence, `cuSeqLensQ`), causal over each sequence's cached
 * context, with GQA/MQA, a sliding window, ALiBi and logit soft-capping. On
 * the CPU and on CUDA (split-K decode, tensor-core prefill).
 *
 * @example
 * // decode: 2 sequences of 17 and 5 tokens (their new token already written with writeKv)
 * const out = pagedAttention(query, cache, layer, {   // query [2, numHeads, headSize]
 *   blockTables: [[3, 7], [1]],
 *   seqLens: [17, 5],
 * });
 * // prefill: 4 new tokens for sequence 0 (context 10), 1 for sequence 1 (context 5)
 * pagedAttention(query, cache, layer, { blockTables, seqLens: [10, 5], cuSeqLensQ: [0, 4, 5] });
 */
import { parseDevice, type DeviceSpec } from './device';
import { dtypeCode, type DType } from './dtype';
import { InvalidArgumentError, UnsupportedError } from './errors';
import { kvDtypeCode, type KvCache, type KvCacheDType } from './kv-cache';
import { native, type NativeBufferHandle } from './native';
import { Tensor } from './tensor';

export const ATTENTION_HEAD_SIZES: readonly number[] = Object.freeze([64, 80, 96, 128, 256]);
export const ATTENTION_BLOCK_SIZES: readonly number[] = Object.freeze([8, 16, 32]);

type IntArray = Int32Array | readonly number[];

export interface PagedAttentionOptions {
  /**
   * Each sequence's cache blocks in order: an int32 Tensor [numSeqs, maxBlocksPerSeq] on the
   * cache's device, a flat Int32Array of numSeqs rows, or one array per sequence (padded here).
   * Entries past ceil(seqLen / blockSize) are never read.
   */
  blockTables: Tensor | Int32Array | ReadonlyArray<readonly number[]>;
  /** Tokens in the cache per sequence, the new ones included (int32 Tensor [numSeqs] or host array). */
  seqLens: Tensor | IntArray;
  /** Prefill / mixed: query rows of sequence s are cuSeqLensQ[s] … cuSeqLensQ[s + 1] − 1. Absent: decode. */
  cuSeqLensQ?: Tensor | IntArray;
  /** Needed when seqLens is a Tensor (the host cannot read it): an upper bound of seqLens. */
  maxSeqLen?: number;
  /** Needed when cuSeqLensQ is a Tensor: an upper bound of the new tokens of any sequence. */
  maxQueryLen?: number;
  /** Softmax scale. Default headSize^−0.5. */
  scale?: number;
  /** Keys within this many tokens of the query (itself included). Default 0: no window. */
  slidingWindow?: number;
  /** Per query head: logit += slope · (keyPosition − queryPosition). */
  alibiSlopes?: Tensor | Float32Array | readonly number[];
  /** logit = softcap · tanh(logit / softcap). Default 0: off. */
  softcap?: number;
  /** Written in place instead of allocating: [numTokens, numHeads, headSize], the query's dtype, contiguous. */
  out?: Tensor;
}

export interface AttentionSupportQuery {
  device?: DeviceSpec;
  headSize: number;
  blockSize: number;
  /** Query / output dtype. Default 'float32'. */
  dtype?: DType;
  /** Default 'float16'. */
  kvDtype?: KvCacheDType;
}

/** Whether pagedAttention runs for these sizes on a device, and why not. */
export function pagedAttentionSupports(query: AttentionSupportQuery): { supported: true } | { supported: false; reason: string } {
  if (query === null || typeof query !== 'object') throw new InvalidArgumentError('pagedAttentionSupports expects an options object');
  const { kind, index } = parseDevice(query.device ?? 'cpu');
  for (const name of ['headSize', 'blockSize'] as const) {
    if (!Number.isSafeInteger(query[name]) || query[name] <= 0) throw new InvalidArgumentError(`pagedAttentionSupports: ${name} must be a positive integer, got ${String(query[name])}`);
  }
  const reason = native().pagedAttentionSupports(
    {
      ...scalarParams(query.dtype ?? 'float32', query.kvDtype ?? 'float16'),
      shape: { numBlocks: 1, numKvHeads: 1, blockSize: query.blockSize, headSize: query.headSize },
      numHeads: 1, queryStride: query.headSize,
    },
    kind, index,
  );
  return reason === '' ? { supported: true } : { supported: false, reason };
}

/**
 * Attention of `query` [numTokens, numHeads, headSize] (float32 / float16 / bfloat16; heads
 * contiguous, tokens may be strided) over layer `layer` of `cache`, on the cache's stream.
 * Returns `options.out` or a new tensor [numTokens, numHeads, headSize] of the query's dtype
 * (category 'activations').
 */
export function pagedAttention(query: Tensor, cache: KvCache, layer: number, options: PagedAttentionOptions): Tensor {
  if (!(query instanceof Tensor)) throw new InvalidArgumentError('pagedAttention: query must be a Tensor');
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError('pagedAttention: options are required ({ blockTables, seqLens, … })');
  const l = cache.layers[checkLayer(cache, layer)]!;
  const headSize = cache.headSize;
  if (query.ndim !== 3 || query.shape[2] !== headSize) {
    throw new InvalidArgumentError(`pagedAttention: query must be [numTokens, numHeads, ${headSize}], got [${query.shape.join(', ')}]`);
  }
  const [numTokens, numHeads] = query.shape as [number, number, number];
  if (query.dtype !== 'float32' && query.dtype !== 'float16' && query.dtype !== 'bfloat16') {
    throw new InvalidArgumentError(`pagedAttention: query must be float32, float16 or bfloat16, got ${query.dtype}`);
  }
  if (numHeads % cache.numKvHeads !== 0) {
    throw new InvalidArgumentError(`pagedAttention: numHeads (${numHeads}) must be a multiple of the cache's numKvHeads (${cache.numKvHeads})`);
  }
  if (query.strides[2] !== 1 || query.strides[1] !== headSize) throw new InvalidArgumentError('pagedAttention: query heads must be contiguous (strides [*, headSize, 1])');
  if (query.device !== cache.device) throw new InvalidArgumentError(`pagedAttention: query is on ${query.device} but the cache is on ${cache.device}`);
  const support = pagedAttentionSupports({ device: cache.device, headSize, blockSize: cache.blockSize, dtype: query.dtype, kvDtype: cache.kvDtype });
  if (!support.supported) throw new UnsupportedError(`pagedAttention: ${support.reason}`);

  const scale = options.scale ?? 1 / Math.sqrt(headSize);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new InvalidArgumentError(`pagedAttention: scale must be a finite number, got ${String(scale)}`);
  const slidingWindow = options.slidingWindow ?? 0;
  if (!Number.isSafeInteger(slidingWindow) || slidingWindow < 0 || slidingWindow > 0x7fffffff) {
    throw new InvalidArgumentError(`pagedAttention: slidingWindow must be a non-negative integer, got ${String(slidingWindow)}`);
  }
  const softcap = options.softcap ?? 0;
  if (typeof softcap !== 'number' || !Number.isFinite(softcap) || softcap < 0) {
    throw new InvalidArgumentError(`pagedAttention: softcap must be a finite number ≥ 0, got ${String(softcap)}`);
  }

  // Metadata: host arrays are validated here and uploaded; Tensors are taken as they are.
  const temporaries: Tensor[] = [];
  const upload = (data: Int32Array | Float32Array, shape: number[]): Tensor => {
    const t = Tensor.fromArray(data, shape, { stream: cache.stream });
    temporaries.push(t);
    return t;
  };
  try {
    const meta = metadata(options, cache, numTokens);
    const blockTables = meta.blockTables instanceof Tensor ? meta.blockTables : upload(meta.blockTables, [meta.numSeqs, meta.maxBlocksPerSeq]);
    const seqLens = meta.seqLens instanceof Tensor ? meta.seqLens : upload(meta.seqLens, [meta.numSeqs]);
    const cuSeqLensQ = meta.cuSeqLensQ === null || meta.cuSeqLensQ instanceof Tensor ? meta.cuSeqLensQ : upload(meta.cuSeqLensQ, [meta.numSeqs + 1]);
    let alibi: Tensor | null = null;
    if (options.alibiSlopes !== undefined) {
      const a = options.alibiSlopes;
      if (a instanceof Tensor) {
        checkTensor(a, 'alibiSlopes', 'float32', [numHeads], cache);
        alibi = a;
      } else {
        if (!(a instanceof Float32Array) && !Array.isArray(a)) throw new InvalidArgumentError('pagedAttention: alibiSlopes must be a Tensor, Float32Array or number[]');
        if (a.length !== numHeads) throw new InvalidArgumentError(`pagedAttention: alibiSlopes must have numHeads (${numHeads}) values, got ${a.length}`);
        const slopes = Float32Array.from(a as ArrayLike<number>);
        if (slopes.some((x) => !Number.isFinite(x))) throw new InvalidArgumentError('pagedAttention: alibiSlopes must be finite');
        alibi = upload(slopes, [numHeads]);
      }
    }

    let out = options.out;
    if (out !== undefined) {
      if (!(out instanceof Tensor)) throw new InvalidArgumentError('pagedAttention: out must be a Tensor');
      checkTensor(out, 'out', query.dtype, [numTokens, numHeads, headSize], cache);
    } else {
      out = Tensor.empty([numTokens, numHeads, headSize], { dtype: query.dtype, stream: cache.stream, category: 'activations' });
      temporaries.push(out);
    }
    const inputs = [query, blockTables, seqLens, cuSeqLensQ, alibi, out].filter((t): t is Tensor => t !== null);
    for (const t of inputs) if (t.stream !== cache.stream) cache.stream.wait(t.stream.record());
    const optional = (t: Tensor | null): [NativeBufferHandle | null, number] => (t ? t.nativeRegion() : [null, 0]);
    native().pagedAttention(
      ...query.nativeRegion(), ...out.nativeRegion(), ...l.key.nativeRegion(), ...l.value.nativeRegion(),
      ...optional(l.keyScales), ...optional(l.valueScales),
      ...blockTables.nativeRegion(), ...seqLens.nativeRegion(), ...optional(cuSeqLensQ), ...optional(alibi),
      {
        ...scalarParams(query.dtype, cache.kvDtype),
        numTokens, numHeads, queryStride: query.strides[0] ?? numHeads * headSize,
        shape: { numBlocks: cache.numBlocks, numKvHeads: cache.numKvHeads, blockSize: cache.blockSize, headSize },
        maxBlocksPerSeq: meta.maxBlocksPerSeq, numSeqs: meta.numSeqs, maxSeqLen: meta.maxSeqLen, maxQueryLen: meta.maxQueryLen,
        scale, slidingWindow, softcap,
      },
      cache.stream.handle,
    );
    for (const t of inputs) if (t.stream !== cache.stream) t.stream.wait(cache.stream.record());
    if (options.out === undefined) temporaries.pop();  // the result is the caller's
    return out;
  } finally {
    for (const t of temporaries) t.dispose();  // stream-ordered: freed after the kernel ran
  }
}

/** Batch metadata validated and uploaded once, for pagedAttention calls over every layer of one step. */
export interface AttentionMetadata {
  blockTables: Tensor;
  seqLens: Tensor;
  cuSeqLensQ?: Tensor;
  maxSeqLen: number;
  maxQueryLen: number;
  /** Frees the uploaded tensors (stream-ordered: after the calls already enqueued). */
  dispose(): void;
}

/**
 * Checks a step's metadata as pagedAttention does (block ids inside the cache, lengths
 * consistent with `numTokens`) and uploads it once: pass the result as the options of every
 * layer's pagedAttention (with the same slidingWindow), then dispose it. A forward pass saves
 * a validation and three uploads per layer.
 *
 * @example
 * const meta = uploadAttentionMetadata(cache, T, { blockTables, seqLens, cuSeqLensQ });
 * for (let l = 0; l < layers; l++) pagedAttention(q[l], cache, l, meta);
 * meta.dispose();
 */
export function uploadAttentionMetadata(
  cache: KvCache,
  numTokens: number,
  options: Pick<PagedAttentionOptions, 'blockTables' | 'seqLens' | 'cuSeqLensQ' | 'slidingWindow'>,
): AttentionMetadata {
  if (!Number.isSafeInteger(numTokens) || numTokens < 0) throw new InvalidArgumentError(`uploadAttentionMetadata: numTokens must be a non-negative integer, got ${String(numTokens)}`);
  const meta = metadata(options, cache, numTokens);
  const tensors: Tensor[] = [];
  const upload = (data: Tensor | Int32Array, shape: number[]): Tensor => {
    if (data instanceof Tensor) return data;
    const t = Tensor.fromArray(data, shape, { stream: cache.stream });
    tensors.push(t);
    return t;
  };
  try {
    const result: AttentionMetadata = {
      blockTables: upload(meta.blockTables, [meta.numSeqs, meta.maxBlocksPerSeq]),
      seqLens: upload(meta.seqLens, [meta.numSeqs]),
      ...(meta.cuSeqLensQ === null ? {} : { cuSeqLensQ: upload(meta.cuSeqLensQ, [meta.numSeqs + 1]) }),
      maxSeqLen: meta.maxSeqLen,
      maxQueryLen: meta.maxQueryLen,
      dispose: () => {
        for (const t of tensors) t.dispose();
      },
    };
    return result;
  } catch (error) {
    for (const t of tensors) t.dispose();
    throw error;
  }
}

/**
 * The checks of uploadAttentionMetadata on host arrays, without the upload: the step's metadata as
 * int32 arrays (for a caller that packs them with its other inputs into one upload).
 */
export function hostAttentionMetadata(
  cache: KvCache,
  numTokens: number,
  options: Pick<PagedAttentionOptions, 'blockTables' | 'seqLens' | 'cuSeqLensQ' | 'slidingWindow'>,
): { blockTables: Int32Array; seqLens: Int32Array; cuSeqLensQ: Int32Array | null; numSeqs: number; maxBlocksPerSeq: number; maxSeqLen: number; maxQueryLen: number } {
  if (!Number.isSafeInteger(numTokens) || numTokens < 0) throw new InvalidArgumentError(`hostAttentionMetadata: numTokens must be a non-negative integer, got ${String(numTokens)}`);
  const meta = metadata(options, cache, numTokens);
  const { blockTables, seqLens, cuSeqLensQ } = meta;
  if (blockTables instanceof Tensor || seqLens instanceof Tensor || cuSeqLensQ instanceof Tensor) {
    throw new InvalidArgumentError('hostAttentionMetadata: blockTables, seqLens and cuSeqLensQ must be arrays, not Tensors');
  }
  return { ...meta, blockTables, seqLens, cuSeqLensQ };
}

// ---- internals ------------------------------------------------------------------------

function scalarParams(dtype: DType, kvDtype: KvCacheDType): {
  dtype: number; cacheDtype: number; numTokens: number; maxBlocksPerSeq: number; numSeqs: number;
  maxSeqLen: number; maxQueryLen: number; scale: number; slidingWindow: number; softcap: number;
} {
  return {
    dtype: dtypeCode(dtype), cacheDtype: kvDtypeCode(kvDtype), numTokens: 0, maxBlocksPerSeq: 1, numSeqs: 0,
    maxSeqLen: 0, maxQueryLen: 0, scale: 1, slidingWindow: 0, softcap: 0,
  };
}

function checkLayer(cache: KvCache, layer: number): number {
  if (!Number.isInteger(layer) || layer < 0 || layer >= cache.numLayers) {
    throw new InvalidArgumentError(`pagedAttention: layer ${String(layer)} is out of range (${cache.numLayers} layers)`);
  }
  return layer;
}

function checkTensor(t: Tensor, name: string, dtype: DType, shape: number[], cache: KvCache): void {
  if (!(t instanceof Tensor)) throw new InvalidArgumentError(`pagedAttention: ${name} must be a Tensor`);
  if (t.dtype !== dtype || t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new InvalidArgumentError(`pagedAttention: ${name} must be ${dtype} [${shape.join(', ')}], got ${t.dtype} [${t.shape.join(', ')}]`);
  }
  if (!t.isContiguous) throw new InvalidArgumentError(`pagedAttention: ${name} must be contiguous`);
  if (t.device !== cache.device) throw new InvalidArgumentError(`pagedAttention: ${name} is on ${t.device} but the cache is on ${cache.device}`);
}

interface Metadata {
  numSeqs: number;
  maxBlocksPerSeq: number;
  maxSeqLen: number;
  maxQueryLen: number;
  blockTables: Tensor | Int32Array;
  seqLens: Tensor | Int32Array;
  cuSeqLensQ: Tensor | Int32Array | null;
}

function toInt32(values: IntArray, name: string): Int32Array {
  if (values instanceof Int32Array) return values;
  if (!Array.isArray(values)) throw new InvalidArgumentError(`pagedAttention: ${name} must be a Tensor, Int32Array or number[]`);
  const out = new Int32Array(values.length);
  values.forEach((v, i) => {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new InvalidArgumentError(`pagedAttention: ${name}[${i}] = ${String(v)} is not a 32-bit integer`);
    out[i] = v;
  });
  return out;
}

function metadata(o: PagedAttentionOptions, cache: KvCache, numTokens: number): Metadata {
  const B = cache.blockSize;
  // seqLens
  let numSeqs: number;
  let seqLens: Tensor | Int32Array;
  if (o.seqLens instanceof Tensor) {
    if (o.seqLens.ndim !== 1) throw new InvalidArgumentError(`pagedAttention: seqLens must be int32 [numSeqs], got [${o.seqLens.shape.join(', ')}]`);
    numSeqs = o.seqLens.shape[0]!;
    checkTensor(o.seqLens, 'seqLens', 'int32', [numSeqs], cache);
    seqLens = o.seqLens;
  } else {
    seqLens = toInt32(o.seqLens, 'seqLens');
    numSeqs = seqLens.length;
  }
  // cuSeqLensQ
  let cu: Tensor | Int32Array | null = null;
  if (o.cuSeqLensQ !== undefined) {
    if (o.cuSeqLensQ instanceof Tensor) {
      checkTensor(o.cuSeqLensQ, 'cuSeqLensQ', 'int32', [numSeqs + 1], cache);
      cu = o.cuSeqLensQ;
    } else {
      cu = toInt32(o.cuSeqLensQ, 'cuSeqLensQ');
      if (cu.length !== numSeqs + 1) throw new InvalidArgumentError(`pagedAttention: cuSeqLensQ must have numSeqs + 1 (${numSeqs + 1}) entries, got ${cu.length}`);
      if (cu[0] !== 0 || cu[numSeqs] !== numTokens) throw new InvalidArgumentError(`pagedAttention: cuSeqLensQ must start at 0 and end at the query's ${numTokens} tokens, got ${cu[0]} … ${cu[numSeqs]}`);
      for (let s = 0; s < numSeqs; s++) {
        if (cu[s + 1]! < cu[s]!) throw new InvalidArgumentError(`pagedAttention: cuSeqLensQ must not decrease (entry ${s + 1}: ${cu[s + 1]} < ${cu[s]})`);
      }
    }
  } else if (numSeqs !== numTokens) {
    throw new InvalidArgumentError(`pagedAttention: decode (no cuSeqLensQ) needs one query token per sequence: ${numTokens} tokens for ${numSeqs} sequences`);
  }
  // Bounds the kernels size their launch with.
  const qLen = (s: number): number => (cu instanceof Int32Array ? cu[s + 1]! - cu[s]! : 1);
  let maxSeqLen: number;
  if (seqLens instanceof Int32Array) {
    maxSeqLen = 0;
    for (let s = 0; s < numSeqs; s++) {
      if (seqLens[s]! < 0) throw new InvalidArgumentError(`pagedAttention: seqLens[${s}] = ${seqLens[s]} is negative`);
      if (cu instanceof Int32Array && seqLens[s]! < qLen(s)) {
        throw new InvalidArgumentError(`pagedAttention: sequence ${s} has ${qLen(s)} new tokens but seqLens[${s}] = ${seqLens[s]}`);
      }
      maxSeqLen = Math.max(maxSeqLen, seqLens[s]!);
    }
    if (o.maxSeqLen !== undefined && o.maxSeqLen < maxSeqLen) throw new InvalidArgumentError(`pagedAttention: maxSeqLen ${o.maxSeqLen} is below seqLens' maximum ${maxSeqLen}`);
  } else {
    if (o.maxSeqLen === undefined) throw new InvalidArgumentError('pagedAttention: maxSeqLen is required when seqLens is a Tensor');
    maxSeqLen = o.maxSeqLen;
  }
  if (!Number.isSafeInteger(maxSeqLen) || maxSeqLen < 0 || maxSeqLen > 0x7fffffff) throw new InvalidArgumentError(`pagedAttention: maxSeqLen must be a non-negative integer, got ${String(maxSeqLen)}`);
  let maxQueryLen: number;
  if (cu === null) maxQueryLen = 1;
  else if (cu instanceof Int32Array) {
    maxQueryLen = 0;
    for (let s = 0; s < numSeqs; s++) maxQueryLen = Math.max(maxQueryLen, qLen(s));
  } else {
    if (o.maxQueryLen === undefined) throw new InvalidArgumentError('pagedAttention: maxQueryLen is required when cuSeqLensQ is a Tensor');
    maxQueryLen = o.maxQueryLen;
    if (!Number.isSafeInteger(maxQueryLen) || maxQueryLen < 0) throw new InvalidArgumentError(`pagedAttention: maxQueryLen must be a non-negative integer, got ${String(maxQueryLen)}`);
  }

  // blockTables
  let blockTables: Tensor | Int32Array;
  let maxBlocksPerSeq: number;
  const bt = o.blockTables;
  if (bt instanceof Tensor) {
    if (bt.ndim !== 2 || bt.shape[0] !== numSeqs) throw new InvalidArgumentError(`pagedAttention: blockTables must be int32 [${numSeqs}, maxBlocksPerSeq], got ${bt.dtype} [${bt.shape.join(', ')}]`);
    maxBlocksPerSeq = bt.shape[1]!;
    checkTensor(bt, 'blockTables', 'int32', [numSeqs, maxBlocksPerSeq], cache);
    blockTables = bt;
  } else if (bt instanceof Int32Array) {
    if (numSeqs === 0 ? bt.length !== 0 : bt.length % numSeqs !== 0) throw new InvalidArgumentError(`pagedAttention: a flat blockTables must hold numSeqs (${numSeqs}) equal rows, got ${bt.length} entries`);
    maxBlocksPerSeq = numSeqs === 0 ? 1 : bt.length / numSeqs;
    blockTables = bt;
  } else if (Array.isArray(bt)) {
    if (bt.length !== numSeqs) throw new InvalidArgumentError(`pagedAttention: blockTables must have one row per sequence (${numSeqs}), got ${bt.length}`);
    maxBlocksPerSeq = Math.max(1, ...bt.map((row) => (Array.isArray(row) ? row.length : 0)));
    blockTables = new Int32Array(numSeqs * maxBlocksPerSeq);
    bt.forEach((row, s) => {
      if (!Array.isArray(row)) throw new InvalidArgumentError(`pagedAttention: blockTables[${s}] must be an array of block ids`);
      (blockTables as Int32Array).set(toInt32(row, `blockTables[${s}]`), s * maxBlocksPerSeq);
    });
  } else {
    throw new InvalidArgumentError('pagedAttention: blockTables must be a Tensor, Int32Array or an array of rows');
  }
  if (maxBlocksPerSeq === 0) maxBlocksPerSeq = 1;
  if (maxSeqLen > maxBlocksPerSeq * B) {
    throw new InvalidArgumentError(`pagedAttention: a sequence of ${maxSeqLen} tokens needs ${Math.ceil(maxSeqLen / B)} blocks but blockTables has ${maxBlocksPerSeq} per sequence`);
  }
  if (blockTables instanceof Int32Array && seqLens instanceof Int32Array) {
    for (let s = 0; s < numSeqs; s++) {
      // Blocks wholly before the earliest query's window are never read (they may have been released).
      const first = seqLens[s]! - qLen(s);
      const lo = slidingLow(first, o.slidingWindow ?? 0);
      for (let b = Math.floor(lo / B); b * B < seqLens[s]!; b++) {
        const id = blockTables[s * maxBlocksPerSeq + b]!;
        if (id < 0 || id >= cache.numBlocks) throw new InvalidArgumentError(`pagedAttention: blockTables[${s}][${b}] = ${id} is outside the cache (${cache.numBlocks} blocks)`);
      }
    }
  }
  if (blockTables instanceof Tensor && blockTables.shape[1] === 0) throw new InvalidArgumentError('pagedAttention: blockTables has no columns');
  return { numSeqs, maxBlocksPerSeq, maxSeqLen, maxQueryLen, blockTables, seqLens, cuSeqLensQ: cu };
}

function slidingLow(position: number, window: number): number {
  return window > 0 ? Math.max(0, position - window + 1) : 0;
}
