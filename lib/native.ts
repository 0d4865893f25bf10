/**
 * The one place that loads the native binary, and the one typed description of
 * the binding (STYLE.md §6). Nothing else in lib/ touches the addon directly.
 *
 * Load order: `PAGEDLLM_ADDON` (an explicit path to a `.node`, for testing other
 * builds), then node-gyp-build's search of this package: `build/Release`,
 * `build/Debug`, `prebuilds/<platform>-<arch>/`. The first binary found is
 * loaded lazily, on first use, so `require('pagedllm')` itself never fails.
 */
import * as path from 'node:path';

import { errorFromCode, NoBackendError } from './errors';

declare const handleBrand: unique symbol;
/** Opaque, type-tagged native handles: never constructed or inspected in JS. */
export type NativeBufferHandle = { readonly [handleBrand]: 'buffer' };
export type NativeStreamHandle = { readonly [handleBrand]: 'stream' };
export type NativeEventHandle = { readonly [handleBrand]: 'event' };
export type NativeMemoryResourceHandle = { readonly [handleBrand]: 'memory-resource' };
export type NativeDecoderHandle = { readonly [handleBrand]: 'decoder' };
export type NativeDecoderGraphsHandle = { readonly [handleBrand]: 'decoder-graphs' };
/** What a decoder-graph runner did (cuda/decoder_graph.cpp). */
export interface DecoderGraphStats {
  captures: number;
  replays: number;
  eagerSteps: number;
  failures: number;
  graphs: number;
  bufferBytes: number;
  arenaBytes: number;
}

export interface NativeCpuInfo {
  logicalCores: number;
  physicalCores: number;
  totalMemory: number;
  availableMemory: number;
  arch: string;
  modelName: string;
  simd: string[];
  simdPath: 'avx512' | 'avx2' | 'portable';
  awqActivations: 'int8' | 'float32';
  threads: number;
}

export interface NativeCudaDeviceInfo {
  index: number;
  name: string;
  computeCapability: string;
  totalMemory: number;
  freeMemory: number;
  multiprocessors: number;
  supported: boolean;
}

export interface NativeCudaInfo {
  compiled: boolean;
  available: boolean;
  reason: string;
  driverVersion: number;
  runtimeVersion: number;
  archs: string;
  devices: NativeCudaDeviceInfo[];
}

/** Device kinds as the binding numbers them (device.h): 0 = CPU, 1 = CUDA. */
export type NativeDeviceKind = 0 | 1;

/** The by-value arguments of paged attention (addon/attention.cpp). */
export interface NativeAttentionParams {
  dtype: number;
  numTokens: number;
  numHeads: number;
  queryStride: number;
  cacheDtype: number;
  shape: { numBlocks: number; numKvHeads: number; blockSize: number; headSize: number };
  maxBlocksPerSeq: number;
  numSeqs: number;
  maxSeqLen: number;
  maxQueryLen: number;
  scale: number;
  slidingWindow: number;
  softcap: number;
}

/** The by-value arguments of the model ops (addon/model_ops.cpp); dtypes are dtype.h codes. */
export interface NativeEmbeddingParams { numTokens: number; vocabSize: number; hiddenSize: number; weightDtype: number; outDtype: number }
export interface NativeRmsNormParams {
  numTokens: number; hiddenSize: number; xStride: number; residualStride: number; outStride: number;
  xDtype: number; residualDtype: number; weightDtype: number; outDtype: number; eps: number;
}
export interface NativeRopeParams {
  numTokens: number; numHeads: number; numKvHeads: number; headSize: number; rotaryDim: number;
  queryStride: number; keyStride: number; dtype: number;
}
export interface NativeSiluMulParams { numTokens: number; intermediateSize: number; xStride: number; dtype: number }
export interface NativeSampleParams { numRows: number; logitsStride: number; vocabSize: number; numSamples: number; numHistory: number }
export interface NativeLinearParams {
  numTokens: number; inFeatures: number; outFeatures: number; xStride: number; outStride: number;
  xDtype: number; weightDtype: number; biasDtype: number; outDtype: number;
}

/** The by-value arguments of awqLinear / awqDequantize (addon/awq.cpp). */
export interface NativeAwqLinearParams {
  numTokens: number; inFeatures: number; outFeatures: number; groupSize: number; layout: number; xStride: number; outStride: number;
  xDtype: number; biasDtype: number; outDtype: number;
}
export interface NativeAwqDequantizeParams { inFeatures: number; outFeatures: number; groupSize: number; layout: number; outDtype: number }

export interface NativeBinding {
  setErrorFactory(factory: (code: string, message: string) => Error): void;
  buildInfo(): { version: string; cuda: boolean; buildSystem: string };
  cpuInfo(): NativeCpuInfo;
  cudaInfo(): NativeCudaInfo;

  defaultStream(kind: NativeDeviceKind, index: number): NativeStreamHandle;
  createStream(kind: NativeDeviceKind, index: number): NativeStreamHandle;
  streamSynchronize(stream: NativeStreamHandle): Promise<void>;
  streamRecord(stream: NativeStreamHandle): NativeEventHandle;
  streamWait(stream: NativeStreamHandle, event: NativeEventHandle): void;
  eventQuery(event: NativeEventHandle): boolean;
  eventSynchronize(event: NativeEventHandle): Promise<void>;

  /**
   * Memory of the stream's device from `resource` (default: the device's default resource),
   * tagged with `category` (index into MEMORY_CATEGORIES; default 'other'); freed in the stream's order.
   */
  allocate(stream: NativeStreamHandle, bytes: number, resource?: NativeMemoryResourceHandle | null, category?: number): NativeBufferHandle;
  /** Idempotent. */
  free(buffer: NativeBufferHandle): void;
  fill(dst: NativeBufferHandle, byteOffset: number, dtype: number, n: number, value: number, stream: NativeStreamHandle): void;
  cast(
    src: NativeBufferHandle, srcByteOffset: number, srcDtype: number,
    dst: NativeBufferHandle, dstByteOffset: number, dstDtype: number,
    n: number, stream: NativeStreamHandle,
  ): void;
  copyStrided(
    src: NativeBufferHandle, srcByteOffset: number, elemSize: number, shape: number[], strides: number[],
    dst: NativeBufferHandle, dstByteOffset: number, stream: NativeStreamHandle,
  ): void;
  /** Between any devices, ordered after prior work on both buffers' streams. */
  copy(src: NativeBufferHandle, srcByteOffset: number, dst: NativeBufferHandle, dstByteOffset: number, bytes: number): void;
  /** Takes the bytes of `data` at once; lands them in the buffer's stream order. */
  upload(data: ArrayBufferView, dst: NativeBufferHandle, dstByteOffset: number): void;
  download(src: NativeBufferHandle, srcByteOffset: number, bytes: number): Promise<ArrayBuffer>;

  /** KV-cache ops (include/pagedllm/paged_kv.h); each buffer is (handle, byteOffset); scales null for float caches. */
  writeKv(
    key: NativeBufferHandle, keyOffset: number, value: NativeBufferHandle, valueOffset: number, inputDtype: number,
    slots: NativeBufferHandle, slotsOffset: number, numTokens: number,
    keyCache: NativeBufferHandle, keyCacheOffset: number, valueCache: NativeBufferHandle, valueCacheOffset: number,
    keyScales: NativeBufferHandle | null, keyScalesOffset: number, valueScales: NativeBufferHandle | null, valueScalesOffset: number,
    cacheDtype: number, shape: { numBlocks: number; numKvHeads: number; blockSize: number; headSize: number }, stream: NativeStreamHandle,
  ): void;
  copyBlocks(
    cache: NativeBufferHandle, cacheOffset: number, scales: NativeBufferHandle | null, scalesOffset: number, cacheDtype: number,
    shape: { numBlocks: number; numKvHeads: number; blockSize: number; headSize: number }, pairs: Int32Array, stream: NativeStreamHandle,
  ): void;
  /**
   * Whole blocks from one cache to another (swap), every region in one call: a region is one tensor
   * of one layer in both caches, [src, srcByteOffset, dst, dstByteOffset, bytes of one block].
   */
  swapBlocks(
    regions: Array<[NativeBufferHandle, number, NativeBufferHandle, number, number]>, srcBlocks: number, dstBlocks: number, pairs: Int32Array,
  ): void;

  /** Paged attention (include/pagedllm/paged_attention.h); scales, cuSeqLensQ and alibi may be null. */
  pagedAttention(
    query: NativeBufferHandle, queryOffset: number, out: NativeBufferHandle, outOffset: number,
    keyCache: NativeBufferHandle, keyCacheOffset: number, valueCache: NativeBufferHandle, valueCacheOffset: number,
    keyScales: NativeBufferHandle | null, keyScalesOffset: number, valueScales: NativeBufferHandle | null, valueScalesOffset: number,
    blockTables: NativeBufferHandle, blockTablesOffset: number, seqLens: NativeBufferHandle, seqLensOffset: number,
    cuSeqLensQ: NativeBufferHandle | null, cuSeqLensQOffset: number, alibiSlopes: NativeBufferHandle | null, alibiSlopesOffset: number,
    params: NativeAttentionParams, stream: NativeStreamHandle,
  ): void;
  /** '' when supported, else the reason (naming the supported values). */
  pagedAttentionSupports(params: NativeAttentionParams, kind: NativeDeviceKind, index: number): string;

  /** Model ops (include/pagedllm/model_ops.h); each buffer is (handle, byteOffset); residual, key and bias may be null. */
  embedding(
    ids: NativeBufferHandle, idsOffset: number, weight: NativeBufferHandle, weightOffset: number,
    out: NativeBufferHandle, outOffset: number, params: NativeEmbeddingParams, stream: NativeStreamHandle,
  ): void;
  rmsNorm(
    x: NativeBufferHandle, xOffset: number, residual: NativeBufferHandle | null, residualOffset: number,
    weight: NativeBufferHandle, weightOffset: number, out: NativeBufferHandle, outOffset: number,
    params: NativeRmsNormParams, stream: NativeStreamHandle,
  ): void;
  rope(
    query: NativeBufferHandle, queryOffset: number, key: NativeBufferHandle | null, keyOffset: number,
    positions: NativeBufferHandle, positionsOffset: number, invFreq: NativeBufferHandle, invFreqOffset: number,
    params: NativeRopeParams, stream: NativeStreamHandle,
  ): void;
  siluMul(x: NativeBufferHandle, xOffset: number, out: NativeBufferHandle, outOffset: number, params: NativeSiluMulParams, stream: NativeStreamHandle): void;
  sampleTokens(
    logits: NativeBufferHandle, logitsOffset: number, params: NativeBufferHandle, paramsOffset: number,
    history: NativeBufferHandle | null, historyOffset: number, tokenIds: NativeBufferHandle, tokenIdsOffset: number,
    logprobs: NativeBufferHandle | null, logprobsOffset: number, p: NativeSampleParams, stream: NativeStreamHandle,
  ): void;
  add(
    a: NativeBufferHandle, aOffset: number, b: NativeBufferHandle, bOffset: number,
    out: NativeBufferHandle, outOffset: number, n: number, dtype: number, stream: NativeStreamHandle,
  ): void;
  linear(
    x: NativeBufferHandle, xOffset: number, weight: NativeBufferHandle, weightOffset: number,
    bias: NativeBufferHandle | null, biasOffset: number, out: NativeBufferHandle, outOffset: number,
    params: NativeLinearParams, stream: NativeStreamHandle,
  ): void;
  /** AWQ int4 ops (include/pagedllm/awq.h); the weight is (qweight, qzeros, scales), each (handle, byteOffset). */
  awqLinear(
    x: NativeBufferHandle, xOffset: number, qweight: NativeBufferHandle, qweightOffset: number,
    qzeros: NativeBufferHandle, qzerosOffset: number, scales: NativeBufferHandle, scalesOffset: number,
    bias: NativeBufferHandle | null, biasOffset: number, out: NativeBufferHandle, outOffset: number,
    params: NativeAwqLinearParams, stream: NativeStreamHandle,
  ): void;
  awqDequantize(
    qweight: NativeBufferHandle, qweightOffset: number, qzeros: NativeBufferHandle, qzerosOffset: number,
    scales: NativeBufferHandle, scalesOffset: number, out: NativeBufferHandle, outOffset: number,
    params: NativeAwqDequantizeParams, stream: NativeStreamHandle,
  ): void;
  awqRepack(
    qweight: NativeBufferHandle, qweightOffset: number, dst: NativeBufferHandle, dstOffset: number,
    params: { inFeatures: number; outFeatures: number }, stream: NativeStreamHandle,
  ): void;
  /** The CPU kernels' instruction set (PAGEDLLM_SIMD=avx2|portable caps it). */
  cpuSimd(): 'avx512' | 'avx2' | 'portable';

  /** The native decoder step (include/pagedllm/decoder.h, addon/decoder.cpp; argument order there). */
  createDecoder(stream: NativeStreamHandle, ...args: Array<number | NativeBufferHandle>): NativeDecoderHandle;
  decoderSetLayer(decoder: NativeDecoderHandle, stream: NativeStreamHandle, ...args: Array<number | NativeBufferHandle | null>): void;
  decoderWorkspaceBytes(decoder: NativeDecoderHandle, numTokens: number, numLogitRows: number): number;
  decoderForward(decoder: NativeDecoderHandle, stream: NativeStreamHandle, ...args: Array<number | object | NativeBufferHandle | null>): void;
  /** Decode steps replayed from CUDA graphs (DecoderGraphRunner in include/pagedllm/decoder.h). */
  createDecoderGraphs(decoder: NativeDecoderHandle, stream: NativeStreamHandle, maxBatch: number, maxBlocksPerSeq: number, capture: boolean): NativeDecoderGraphsHandle;
  decoderGraphForward(graphs: NativeDecoderGraphsHandle, decoder: NativeDecoderHandle, stream: NativeStreamHandle, ...args: Array<number | object | NativeBufferHandle | null>): void;
  decoderGraphStats(graphs: NativeDecoderGraphsHandle): DecoderGraphStats;
  decoderGraphsDispose(graphs: NativeDecoderGraphsHandle): void;

  defaultMemoryResource(kind: NativeDeviceKind, index: number): NativeMemoryResourceHandle;
  createMemoryResource(
    kind: string, deviceKind: NativeDeviceKind, deviceIndex: number,
    options: { initialBytes?: number; maxBytes?: number; releaseThreshold?: number; limitBytes?: number; upstream?: NativeMemoryResourceHandle },
  ): NativeMemoryResourceHandle;
  /** A MemoryReport (lib/memory.ts). */
  memoryReport(resource: NativeMemoryResourceHandle, deviceInfo?: boolean): unknown;
  memoryCurrent(resource: NativeMemoryResourceHandle): number[];
  memoryTrim(resource: NativeMemoryResourceHandle): void;
  /** ns per alloc+free pair for each of `samples` batches of `pairsPerSample`; `resource` null times malloc/free. */
  timeAllocatorPairs(resource: NativeMemoryResourceHandle | null, stream: NativeStreamHandle, bytes: number, pairsPerSample: number, samples: number): Float64Array;
  /** Replays an allocation trace (>= 0: allocate into the next slot; < 0: free slot -v-1). */
  replayAllocatorTrace(
    resource: NativeMemoryResourceHandle | null, stream: NativeStreamHandle, trace: Float64Array, steadyFrom: number,
  ): { nsPerOp: number; peakInUse: number; reserved?: number; peakReserved?: number; hasPool?: boolean; steadyUpstreamAllocations?: number };
}

const packageRoot = path.resolve(__dirname, '..');
let binding: NativeBinding | undefined;
let loadError: NoBackendError | undefined;
let loadedFrom: string | null = null;

function load(): NativeBinding {
  const tried: string[] = [];
  const candidates: string[] = [];
  const explicit = process.env.PAGEDLLM_ADDON;
  if (explicit) {
    candidates.push(path.resolve(explicit));
  } else {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const nodeGypBuild = require('node-gyp-build') as { path(dir: string): string };
      candidates.push(nodeGypBuild.path(packageRoot));
    } catch (error) {
      tried.push(`build/Release, build/Debug and prebuilds/${process.platform}-${process.arch}/ under ${packageRoot}: ${(error as Error).message}`);
    }
  }
  for (const file of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const loaded = require(file) as NativeBinding;
      loaded.setErrorFactory(errorFromCode);
      loadedFrom = file;
      return loaded;
    } catch (error) {
      tried.push(`${file}: ${(error as Error).message.split('\n')[0]}`);
    }
  }
  throw new NoBackendError(
    `pagedllm: no native binary could be loaded for ${process.platform}-${process.arch} (Node ${process.version}).\n` +
      `Tried:\n${tried.map((t) => `  - ${t}`).join('\n')}\n` +
      'To fix: install a pagedllm release that ships prebuilds for this platform, or build from source in the ' +
      "package folder with 'npm run build' (needs cmake and a C++17 compiler; nvcc adds CUDA) or " +
      "'npm run build:gyp' (node-gyp, CPU only). PAGEDLLM_ADDON=/path/to/pagedllm.node loads a specific binary.",
  );
}

/** The file the binding was loaded from (null before the first load, or when none loads). */
export function nativeAddonPath(): string | null {
  return loadedFrom;
}

/** The loaded binding; throws {@link NoBackendError} (`ERR_NO_BACKEND`) if none loads. */
export function native(): NativeBinding {
  if (binding) return binding;
  if (loadError) throw loadError;
  try {
    binding = load();
    return binding;
  } catch (error) {
    loadError = error as NoBackendError;
    throw error;
  }
}
