/**
 * pagedllm: LLM inference for Node.js. This entry point exports the public API.
 *
 * @example
 * const { devices, Tensor } = require('pagedllm');
 * console.log(devices().selected);             // 'cuda:0' or 'cpu'
 * const t = Tensor.fromArray([1, 2, 3]);
 * console.log(await t.toArray());              // Float32Array [1, 2, 3]
 */
export { devices, defaultDevice, parseDevice } from './device';
export type { Device, DeviceSpec, DevicesReport, CpuDeviceInfo, CudaDeviceInfo, CudaReport } from './device';
export { Tensor, MAX_DIMS } from './tensor';
export type { TensorOptions } from './tensor';
export { Stream, StreamEvent } from './stream';
export { KvCache } from './kv-cache';
export { pagedAttention, pagedAttentionSupports, ATTENTION_HEAD_SIZES, ATTENTION_BLOCK_SIZES } from './attention';
export type { PagedAttentionOptions, AttentionSupportQuery } from './attention';
export { embedding, rmsNorm, rope, ropeInvFreq, siluMul, add, linear, awqLinear, awqDequantize, awqRepack, cpuSimd, ROPE_TYPES } from './ops';
export type { EmbeddingOptions, RmsNormOptions, LinearOptions, AwqWeight, AwqLayout, AwqLinearOptions, RopeConfig, RopeScalingConfig } from './ops';
export type { KvCacheDType, KvCacheLayer, KvCacheOptions } from './kv-cache';
export { planMemory, estimateWeightsBytes, estimateActivationBytes, kvBytesPerToken } from './planner';
export type { MemoryPlan, MemoryBudget, ModelConfig, PlanOptions, KvDType, WeightsDType } from './planner';
export { createMemoryResource, defaultMemoryResource, memoryReport, MemoryResource, MEMORY_CATEGORIES } from './memory';
export type { MemoryCategory, MemoryReport, MemoryResourceKind, MemoryResourceOptions, UsageCounters } from './memory';
export {
  DTYPES,
  dtypeSize,
  float32ToFloat16,
  float16ToFloat32,
  float32ToBfloat16,
  bfloat16ToFloat32,
} from './dtype';
export type { DType, TensorData, TypedArrayFor } from './dtype';
export {
  PagedLLMError,
  InvalidArgumentError,
  UnsupportedError,
  OutOfMemoryError,
  DisposedError,
  ModelFormatError,
  CudaError,
  AbortedError,
  NoBackendError,
  InternalError,
} from './errors';
export type { ErrorCode } from './errors';
export { BlockManager, NULL_BLOCK } from './block-manager';
export type {
  AllocateSlotsOptions,
  AllocationStatus,
  BlockCopy,
  BlockManagerOptions,
  BlockManagerSnapshot,
  BlockManagerStats,
  SequenceId,
  SequenceLocation,
  SlotAllocation,
} from './block-manager';
export {
  SafetensorsCheckpoint,
  SafetensorsFile,
  writeSafetensors,
  encodeSafetensorsHeader,
  parseSafetensorsHeader,
  safetensorsToDType,
  dtypeToSafetensors,
  safetensorsDTypeBits,
  isSafetensorsDType,
  SAFETENSORS_DTYPES,
  SAFETENSORS_MAX_HEADER_BYTES,
} from './safetensors';
export type {
  SafetensorsDType,
  SafetensorsTensorInfo,
  SafetensorsHeader,
  SafetensorsTensorData,
  LoadTensorOptions,
  LoadTensorsOptions,
  LoadProgress,
} from './safetensors';
export { Tokenizer, StreamDecoder } from './tokenizer';
export type { EncodeOptions, DecodeOptions, StreamDecoderOptions, TokenizerSources } from './tokenizer';
export { makeTestModel, makeTestTokenizer, TEST_MODEL_SPECIAL_IDS } from './test-model';
export type { TestModel, TestModelOptions, TestModelArch, TestModelDType, TestModelRopeScaling } from './test-model';
export { Model, parseLlamaConfig } from './model';
export type { LlamaConfig, ModelArchitecture, ForwardBatch, ForwardOptions, LoadOptions, CudaGraphOptions } from './model';
export type { DecoderGraphStats } from './native';
export {
  AWQ_ORDER,
  AWQ_REVERSE_ORDER,
  AWQ_PACK_FACTOR,
  AWQ_GROUP_SIZES,
  packAwq,
  unpackAwq,
  parseAwqConfig,
  awqGroupSize,
  isAwqSkipped,
  checkAwqTensors,
  quantizeRtn,
  dequantizeAwq,
} from './awq';
export type { AwqConfig, AwqQuantized, AwqTensorInfo } from './awq';
export { quantizeModel, awqQuantizationConfig, formatQuantizeReport } from './quantize';
export type { QuantizeOptions, QuantizeProgress, QuantizeReport, QuantizedLinearReport, QuantizedLinear } from './quantize';
export { generate } from './generate';
export { sampleToken, sampleTokens, samplerRng, checkSamplingParams } from './sampling';
export type { SamplingParams, SampleContext, Sample, SampleRequest, Rng } from './sampling';
export type { GenerateOptions, GenerateResult } from './generate';
export { Engine, GenerationStream } from './engine';
export type {
  EngineOptions,
  GenerationOptions,
  GenerationChunk,
  GenerationChoice,
  GenerationResult,
  EngineStep,
  EngineMetrics,
  EngineMemoryReport,
  PreemptionMode,
  FinishReason,
} from './engine';
