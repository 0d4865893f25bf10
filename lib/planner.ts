/**
 * The memory planner: how many KV-cache blocks fit, decided by an explicit
 * policy, before any memory is allocated (DESIGN.md §3–§4). Usable without a
 * GPU: pass the device's memory as numbers, or a device to ask.
 *
 * Budgets (exactly one), with the semantics of the engines they come from:
 * - `{ gpuMemoryUtilization: u }` — vLLM: the whole instance (weights,
 *   activations, workspace and KV) gets `total · u`; KV gets what is left;
 *   `numBlocks = floor(kvBytes / bytesPerBlock)`. Fails if less than
 *   `total · u` is free, or if nothing is left for the KV cache.
 * - `{ freeMemoryFraction: f, maxTokens? }` — TensorRT-LLM: KV gets the
 *   fraction `f` (0 < f < 1) of the memory still free after weights,
 *   activations and workspace; `tokens = floor(bytes / bytesPerToken)`, capped
 *   at `maxTokens`; `numBlocks = ceil(tokens / blockSize)` (TRT rounds up).
 * - `{ kvCacheBytes }`: `numBlocks = floor(kvCacheBytes / bytesPerBlock)`.
 * - `{ numBlocks }`: as given.
 *
 * Weights are computed from the config (exact for the Llama family, AWQ
 * included); activations and workspace are estimates for one step of
 * `maxNumBatchedTokens` tokens / `maxNumSeqs` sequences (see
 * {@link estimateActivationBytes}); the engine measures them for real.
 *
 * @example
 * const plan = planMemory({
 *   modelConfig: JSON.parse(fs.readFileSync('llama-2-7b/config.json', 'utf8')),
 *   deviceMemory: { totalBytes: 80 * 2 ** 30 },
 *   budget: { gpuMemoryUtilization: 0.9 },
 * });
 * console.log(plan.numBlocks, plan.kvTokens, plan.maxConcurrency);
 */
import { devices, parseDevice, type DeviceSpec } from './device';
import { InvalidArgumentError } from './errors';
import { memoryReport } from './memory';

/** The fields of a Hugging Face `config.json` the planner reads (Llama family). */
export interface ModelConfig {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  head_dim?: number;
  vocab_size: number;
  max_position_embeddings?: number;
  tie_word_embeddings?: boolean;
  torch_dtype?: string;
  architectures?: string[];
  quantization_config?: { quant_method?: string; bits?: number; w_bit?: number; group_size?: number; q_group_size?: number };
}

export type KvDType = 'float32' | 'float16' | 'bfloat16' | 'int8' | 'fp8';
export type WeightsDType = 'float32' | 'float16' | 'bfloat16' | 'awq-int4';

export type MemoryBudget =
  | { gpuMemoryUtilization: number }
  | { freeMemoryFraction: number; maxTokens?: number }
  | { kvCacheBytes: number }
  | { numBlocks: number };

export interface PlanOptions {
  modelConfig: ModelConfig;
  /** Numbers (freeBytes defaults to totalBytes), or a device to ask (`'cuda:0'`, `'cpu'`). */
  deviceMemory: { totalBytes: number; freeBytes?: number } | string;
  /** Default: AWQ when `quantization_config.quant_method` is "awq", else `torch_dtype` (float16 when absent). */
  weightsDtype?: WeightsDType;
  /** Default float16. int8 / fp8 add a float32 scale per (token, head) for K and for V. */
  kvDtype?: KvDType;
  /** Tokens per block: any power of two (kernels run 8, 16, 32). Default 16. */
  blockSize?: number;
  /** Default: `max_position_embeddings` (4096 when absent). */
  maxModelLen?: number;
  /** Default 256. */
  maxNumSeqs?: number;
  /** Default max(maxModelLen, 2048) — one step's tokens (chunked prefill). */
  maxNumBatchedTokens?: number;
  budget: MemoryBudget;
  /**
   * Decode steps replayed from CUDA graphs (the Engine's cudaGraphs): their fixed buffers — a
   * decode step's activations and logits for maxNumSeqs sequences, and the block table — and their
   * workspace arena are held beside the per-step ones, so the estimates count them too.
   */
  cudaGraphs?: boolean;
  /**
   * Measured figures replacing the estimates (what an engine's profiling step
   * found, as vLLM measures non-KV memory), in bytes.
   */
  measured?: {
    weightsBytes?: number;
    activationBytes?: number;
    workspaceBytes?: number;
    /**
     * The weights (`weightsBytes`) are already on the device: its free memory is taken with them
     * added back (at most the total), since the plan counts them itself. An engine plans after
     * loading its model; vLLM's and TensorRT-LLM's budgets are of the memory before weights.
     */
    weightsResident?: boolean;
  };
}

export interface MemoryPlan {
  policy: 'gpuMemoryUtilization' | 'freeMemoryFraction' | 'kvCacheBytes' | 'numBlocks';
  totalBytes: number;
  freeBytes: number;
  weightsBytes: number;
  activationBytes: number;
  workspaceBytes: number;
  kvDtype: KvDType;
  blockSize: number;
  /** 2 (K and V) · layers · kvHeads · headDim · bytes (+ scales for int8/fp8). */
  kvBytesPerToken: number;
  kvBytesPerBlock: number;
  numBlocks: number;
  kvTokens: number;
  kvCacheBytes: number;
  maxModelLen: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** Sequences of maxModelLen tokens that fit at once. */
  maxConcurrency: number;
  warnings: string[];
}

const KV_BYTES: Record<KvDType, number> = { float32: 4, float16: 2, bfloat16: 2, int8: 1, fp8: 1 };
const WEIGHT_BYTES: Record<Exclude<WeightsDType, 'awq-int4'>, number> = { float32: 4, float16: 2, bfloat16: 2 };
const GiB = 2 ** 30;

function fail(message: string): never {
  throw new InvalidArgumentError(`planMemory: ${message}`);
}

function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) fail(`${name} must be a positive integer, got ${String(value)}`);
  return value;
}

function gib(bytes: number): string {
  return `${(bytes / GiB).toFixed(2)} GiB`;
}

/** Model dimensions, validated. */
function dimensions(config: ModelConfig) {
  if (config === null || typeof config !== 'object') fail('modelConfig must be the object of a config.json');
  const hidden = positiveInteger(config.hidden_size, 'modelConfig.hidden_size');
  const heads = positiveInteger(config.num_attention_heads, 'modelConfig.num_attention_heads');
  const kvHeads = positiveInteger(config.num_key_value_heads ?? heads, 'modelConfig.num_key_value_heads');
  if (heads % kvHeads !== 0) fail(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const headDim = positiveInteger(config.head_dim ?? hidden / heads, 'modelConfig.head_dim (or hidden_size / num_attention_heads)');
  return {
    hidden,
    heads,
    kvHeads,
    headDim,
    layers: positiveInteger(config.num_hidden_layers, 'modelConfig.num_hidden_layers'),
    intermediate: positiveInteger(config.intermediate_size, 'modelConfig.intermediate_size'),
    vocab: positiveInteger(config.vocab_size, 'modelConfig.vocab_size'),
    tied: config.tie_word_embeddings === true,
    qkvBias: (config.architectures ?? []).includes('Qwen2ForCausalLM'),
  };
}

function defaultWeightsDtype(config: ModelConfig): WeightsDType {
  if (config.quantization_config?.quant_method === 'awq') return 'awq-int4';
  const t = config.torch_dtype;
  return t === 'float32' || t === 'bfloat16' || t === 'float16' ? t : 'float16';
}

/**
 * Bytes of the weights: embeddings, per layer q/k/v/o (+ q/k/v bias for Qwen2)
 * and gate/up/down, two RMSNorms, the final norm and (unless tied) lm_head.
 * AWQ int4: linear weights at 4 bits plus, per group of `group_size` input
 * rows, fp16 scales and 4-bit zeros for every output column; embeddings,
 * lm_head and norms stay fp16.
 */
export function estimateWeightsBytes(config: ModelConfig, weightsDtype: WeightsDType = defaultWeightsDtype(config)): number {
  const d = dimensions(config);
  const qDim = d.heads * d.headDim;
  const kvDim = d.kvHeads * d.headDim;
  // [in, out] of every linear layer of one decoder layer.
  const linears: [number, number][] = [
    [d.hidden, qDim], [d.hidden, kvDim], [d.hidden, kvDim], [qDim, d.hidden],
    [d.hidden, d.intermediate], [d.hidden, d.intermediate], [d.intermediate, d.hidden],
  ];
  const perLayerOther = 2 * d.hidden + (d.qkvBias ? qDim + 2 * kvDim : 0); // norms, biases
  const outside = d.vocab * d.hidden * (d.tied ? 1 : 2) + d.hidden; // embeddings, lm_head, final norm
  if (weightsDtype === 'awq-int4') {
    const q = config.quantization_config ?? {};
    const groupSize = q.group_size ?? q.q_group_size ?? 128;
    let linearBytes = 0;
    for (const [k, n] of linears) {
      const groups = groupSize === -1 ? 1 : Math.ceil(k / groupSize);
      linearBytes += (k * n) / 2 + groups * n * 2 + (groups * n) / 2; // qweight, scales (fp16), qzeros (int4)
    }
    return d.layers * (linearBytes + perLayerOther * 2) + outside * 2;
  }
  const bytes = WEIGHT_BYTES[weightsDtype];
  if (bytes === undefined) fail(`unknown weightsDtype ${JSON.stringify(weightsDtype)} (supported: float32, float16, bfloat16, awq-int4)`);
  const linearParams = linears.reduce((sum, [k, n]) => sum + k * n, 0);
  return (d.layers * (linearParams + perLayerOther) + outside) * bytes;
}

/**
 * Activation and workspace estimates for one step (fp16/bf16 activations on
 * a GPU; the CPU backend's float32 activations are twice this):
 * - activations: for `maxNumBatchedTokens` tokens the largest live set of a
 *   layer — residual, normed input, q/k/v, attention output, gate and up —
 *   plus float32 logits and sampler probabilities for `maxNumSeqs` rows;
 * - workspace: split-K attention partials (head_dim + max + sum, float32) for
 *   `maxNumSeqs` sequences × heads × ceil(maxModelLen / 512) partitions; for an
 *   AWQ model also the largest linear's weight dequantized to 16 bits, which
 *   the CUDA AWQ linear writes for 16 tokens or more (cuda/awq.cu), one at a time;
 *   and the CUDA GEMM's split-K partial sums (cuda/linear.cu: float32, splits ×
 *   M × N, split only while there are fewer 64 × 64 tiles than two per SM, so
 *   under 64 KiB per SM: 16.5 MiB for up to 264 SMs; at most 16 splits).
 */
export function estimateActivationBytes(
  config: ModelConfig,
  options: { maxNumBatchedTokens: number; maxNumSeqs: number; maxModelLen: number },
): { activationBytes: number; workspaceBytes: number } {
  const d = dimensions(config);
  const perToken = 2 * d.hidden + (d.heads + 2 * d.kvHeads) * d.headDim + d.heads * d.headDim + 2 * d.intermediate;
  const activationBytes = options.maxNumBatchedTokens * perToken * 2 + 2 * options.maxNumSeqs * d.vocab * 4;
  const partitions = Math.ceil(options.maxModelLen / 512);
  const attentionBytes = options.maxNumSeqs * d.heads * partitions * (d.headDim + 2) * 4;
  const awq = config.quantization_config?.quant_method === 'awq';
  const dequantBytes = awq ? 2 * d.hidden * Math.max(d.intermediate, d.heads * d.headDim, d.kvHeads * d.headDim) : 0;
  const widest = Math.max(d.intermediate, d.heads * d.headDim, d.hidden, d.vocab);
  const gemmSplitBytes = Math.min(16 * options.maxNumBatchedTokens * widest * 4, 264 * 64 * 1024);
  return { activationBytes, workspaceBytes: attentionBytes + dequantBytes + gemmSplitBytes };
}

/** KV bytes per token: 2 · layers · kvHeads · headDim · bytes, plus a float32 scale per (token, head) of K and V for int8/fp8. */
export function kvBytesPerToken(config: ModelConfig, kvDtype: KvDType = 'float16'): number {
  const d = dimensions(config);
  const bytes = KV_BYTES[kvDtype];
  if (bytes === undefined) fail(`unknown kvDtype ${JSON.stringify(kvDtype)} (supported: ${Object.keys(KV_BYTES).join(', ')})`);
  const scales = kvDtype === 'int8' || kvDtype === 'fp8' ? 4 : 0;
  return 2 * d.layers * d.kvHeads * (d.headDim * bytes + scales);
}

function deviceBytes(deviceMemory: PlanOptions['deviceMemory']): { totalBytes: number; freeBytes: number } {
  if (typeof deviceMemory === 'string') {
    const { device, kind, index } = parseDevice(deviceMemory);
    const report = devices();
    let totalBytes: number, freeBytes: number;
    if (kind === 0) {
      totalBytes = report.cpu.totalMemory, freeBytes = report.cpu.availableMemory;
    } else {
      const gpu = report.cuda.devices[index];
      if (!report.cuda.available || !gpu) fail(`${device} cannot be asked for its memory: ${report.cuda.available ? 'no such device' : report.cuda.reason}`);
      totalBytes = gpu.totalMemory, freeBytes = gpu.freeMemory;
    }
    // What this process's default pool holds but does not use (a disposed engine's KV cache, say)
    // is as free to the plan as the driver's: the pool hands it out before asking for more.
    freeBytes += memoryReport(device as DeviceSpec).pool?.free ?? 0;
    return { totalBytes, freeBytes };  // planMemory caps it at the total
  }
  if (deviceMemory === null || typeof deviceMemory !== 'object') fail('deviceMemory must be { totalBytes, freeBytes? } or a device name');
  const totalBytes = positiveInteger(deviceMemory.totalBytes, 'deviceMemory.totalBytes');
  const freeBytes = deviceMemory.freeBytes === undefined ? totalBytes : positiveInteger(deviceMemory.freeBytes, 'deviceMemory.freeBytes');
  if (freeBytes > totalBytes) fail(`deviceMemory.freeBytes ${freeBytes} exceeds totalBytes ${totalBytes}`);
  return { totalBytes, freeBytes };
}

/** Plans weights, activations, workspace and the KV cache for one device under one budget. */
export function planMemory(options: PlanOptions): MemoryPlan {
  if (options === null || typeof options !== 'object') fail('expected an options object');
  const config = options.modelConfig;
  dimensions(config);
  const measured = options.measured ?? {};
  const device = deviceBytes(options.deviceMemory);
  const totalBytes = device.totalBytes;
  const resident = measured.weightsResident === true ? positiveInteger(measured.weightsBytes, 'measured.weightsBytes (weightsResident)') : 0;
  const freeBytes = Math.min(totalBytes, device.freeBytes + resident);
  const kvDtype = options.kvDtype ?? 'float16';
  const blockSize = positiveInteger(options.blockSize ?? 16, 'blockSize');
  if ((blockSize & (blockSize - 1)) !== 0) fail(`blockSize ${blockSize} is not a power of two`);
  const maxModelLen = positiveInteger(options.maxModelLen ?? config.max_position_embeddings ?? 4096, 'maxModelLen');
  const maxNumSeqs = positiveInteger(options.maxNumSeqs ?? 256, 'maxNumSeqs');
  const maxNumBatchedTokens = positiveInteger(options.maxNumBatchedTokens ?? Math.max(maxModelLen, 2048), 'maxNumBatchedTokens');
  const measuredBytes = (value: number | undefined, name: string, estimate: () => number): number =>
    value === undefined ? estimate() : value === 0 ? 0 : positiveInteger(value, `measured.${name}`);
  const weightsBytes = measuredBytes(measured.weightsBytes, 'weightsBytes', () => estimateWeightsBytes(config, options.weightsDtype ?? defaultWeightsDtype(config)));
  const estimates = estimateActivationBytes(config, { maxNumBatchedTokens, maxNumSeqs, maxModelLen });
  if (options.cudaGraphs === true) {
    const graphs = estimateActivationBytes(config, { maxNumBatchedTokens: maxNumSeqs, maxNumSeqs, maxModelLen });
    estimates.activationBytes += graphs.activationBytes + maxNumSeqs * Math.ceil(maxModelLen / blockSize) * 4;
    estimates.workspaceBytes += graphs.workspaceBytes;
  }
  const activationBytes = measuredBytes(measured.activationBytes, 'activationBytes', () => estimates.activationBytes);
  const workspaceBytes = measuredBytes(measured.workspaceBytes, 'workspaceBytes', () => estimates.workspaceBytes);
  const bytesPerToken = kvBytesPerToken(config, kvDtype);
  const bytesPerBlock = bytesPerToken * blockSize;
  const nonKv = weightsBytes + activationBytes + workspaceBytes;
  const warnings: string[] = [];

  const budget = options.budget as Record<string, unknown> | undefined;
  const keys = budget && typeof budget === 'object' ? Object.keys(budget).filter((k) => budget[k] !== undefined) : [];
  const policies = ['gpuMemoryUtilization', 'freeMemoryFraction', 'kvCacheBytes', 'numBlocks'] as const;
  const chosen = policies.filter((p) => keys.includes(p));
  if (chosen.length !== 1) {
    fail(`budget must have exactly one of gpuMemoryUtilization, freeMemoryFraction (with optional maxTokens), kvCacheBytes, numBlocks; got ${keys.length ? keys.join(', ') : 'none'}`);
  }
  const policy = chosen[0]!;
  if (keys.includes('maxTokens') && policy !== 'freeMemoryFraction') fail('maxTokens goes with freeMemoryFraction');
  let numBlocks: number;
  switch (policy) {
    case 'gpuMemoryUtilization': {
      const u = budget!.gpuMemoryUtilization as number;
      if (typeof u !== 'number' || !(u > 0 && u <= 1)) fail(`gpuMemoryUtilization must be in (0, 1], got ${String(u)}`);
      const requested = totalBytes * u;
      if (freeBytes < requested) {
        fail(`only ${gib(freeBytes)} of ${gib(totalBytes)} is free, less than gpuMemoryUtilization ${u} asks for (${gib(requested)}); lower gpuMemoryUtilization to at most ${(freeBytes / totalBytes).toFixed(3)} or free the device`);
      }
      const kvBytes = requested - nonKv;
      if (kvBytes < bytesPerBlock) {
        fail(`no memory is left for the KV cache: gpuMemoryUtilization ${u} gives ${gib(requested)}, and weights ${gib(weightsBytes)} + activations ${gib(activationBytes)} + workspace ${gib(workspaceBytes)} take ${gib(nonKv)}; raise gpuMemoryUtilization, or lower maxNumBatchedTokens / maxNumSeqs`);
      }
      numBlocks = Math.floor(kvBytes / bytesPerBlock);
      break;
    }
    case 'freeMemoryFraction': {
      const f = budget!.freeMemoryFraction as number;
      if (typeof f !== 'number' || !(f > 0 && f < 1)) fail(`freeMemoryFraction must be strictly between 0 and 1, got ${String(f)}`);
      const freeAfter = freeBytes - nonKv;
      if (freeAfter <= 0) {
        fail(`weights ${gib(weightsBytes)} + activations ${gib(activationBytes)} + workspace ${gib(workspaceBytes)} exceed the ${gib(freeBytes)} free; use a smaller model or quantize it, or lower maxNumBatchedTokens / maxNumSeqs`);
      }
      let tokens = Math.floor((freeAfter * f) / bytesPerToken);
      if (budget!.maxTokens !== undefined) {
        const maxTokens = positiveInteger(budget!.maxTokens, 'budget.maxTokens');
        if (maxTokens < tokens) tokens = maxTokens;
        else if (maxTokens > tokens) warnings.push(`maxTokens ${maxTokens} exceeds what freeMemoryFraction ${f} allows (${tokens} tokens); the smaller value is used`);
      }
      numBlocks = Math.ceil(tokens / blockSize);
      break;
    }
    case 'kvCacheBytes': {
      const bytes = positiveInteger(budget!.kvCacheBytes, 'budget.kvCacheBytes');
      numBlocks = Math.floor(bytes / bytesPerBlock);
      if (nonKv + numBlocks * bytesPerBlock > freeBytes) {
        warnings.push(`weights, activations, workspace and ${gib(numBlocks * bytesPerBlock)} of KV cache (${gib(nonKv + numBlocks * bytesPerBlock)}) exceed the ${gib(freeBytes)} free`);
      }
      break;
    }
    case 'numBlocks': {
      numBlocks = positiveInteger(budget!.numBlocks, 'budget.numBlocks');
      if (nonKv + numBlocks * bytesPerBlock > freeBytes) {
        warnings.push(`weights, activations, workspace and ${numBlocks} blocks of KV cache (${gib(nonKv + numBlocks * bytesPerBlock)}) exceed the ${gib(freeBytes)} free`);
      }
      break;
    }
  }
  const kvTokens = numBlocks * blockSize;
  const blocksPerSequence = Math.ceil(maxModelLen / blockSize);
  if (numBlocks < blocksPerSequence) {
    fail(`maxModelLen ${maxModelLen} needs ${blocksPerSequence} blocks of ${blockSize} tokens, but the KV cache holds ${numBlocks} blocks (${kvTokens} tokens); lower maxModelLen to at most ${kvTokens}, or give the KV cache more memory (${gib(blocksPerSequence * bytesPerBlock)} for one full sequence)`);
  }
  const maxConcurrency = Math.floor(numBlocks / blocksPerSequence);
  if (maxConcurrency < maxNumSeqs) {
    warnings.push(`only ${maxConcurrency} sequences of ${maxModelLen} tokens fit at once (maxNumSeqs ${maxNumSeqs}); shorter sequences share the rest`);
  }
  return {
    policy,
    totalBytes,
    freeBytes,
    weightsBytes,
    activationBytes,
    workspaceBytes,
    kvDtype,
    blockSize,
    kvBytesPerToken: bytesPerToken,
    kvBytesPerBlock: bytesPerBlock,
    numBlocks,
    kvTokens,
    kvCacheBytes: numBlocks * bytesPerBlock,
    maxModelLen,
    maxNumSeqs,
    maxNumBatchedTokens,
    maxConcurrency,
    warnings,
  };
}
