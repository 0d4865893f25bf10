/**
 * The continuous-batching engine (DESIGN.md §5): many concurrent requests over one model and
 * one paged KV cache, scheduled a step at a time as vLLM's scheduler does.
 *
 * Every step the scheduler builds one batch under `maxNumBatchedTokens` and `maxNumSeqs`:
 * 1. running sequences first, oldest first: one token for a decoding sequence, the next chunk
 *    of the prompt for one still prefilling (chunked prefill). When the KV blocks run out the
 *    newest running sequence is preempted (`'recompute'`: its blocks are freed and it waits
 *    at the front of the queue to be prefilled again, prompt plus output; `'swap'`: its
 *    blocks move to a host pool and it resumes from there, recompute when the host is full);
 * 2. if nothing was preempted, swapped sequences come back, then waiting requests are admitted
 *    in arrival order while blocks (with the watermark kept free), sequences and tokens last.
 *    An admission looks its prompt up in the prefix cache and computes only what is not cached.
 * The batch (prefill chunks and decode tokens mixed) runs as one `Model.forward`; only the rows
 * whose sequence has all its tokens computed are sampled, on the device (`sampleTokens`: only the
 * sampled ids cross to the host). A request with `n > 1` prefills its
 * prompt once, then forks into `n` sequences that share the prompt's blocks (copy-on-write).
 * An `AbortSignal` ends its request at the next step boundary and frees its blocks.
 *
 * The engine never throws mid-generation for lack of memory: the KV cache is allocated once,
 * up front, by the memory plan, and running out of blocks is a preemption, not an error.
 * A failure of a step (a native error) fails the requests of that step; the others go on.
 *
 * @example
 * const engine = await Engine.create({ model: '/models/llama', device: 'cpu', maxNumSeqs: 16 });
 * for await (const chunk of engine.generate('The capital of France is', { maxTokens: 32 })) process.stdout.write(chunk.text);
 * const text = await engine.generate({ promptTokenIds: [1, 450] }, { temperature: 0.8, seed: 7 }).text();
 * engine.dispose();
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { pagedAttentionSupports } from './attention';
import { BlockManager, type BlockManagerStats } from './block-manager';
import { devices, type DeviceSpec } from './device';
import { type DType } from './dtype';
import { AbortedError, DisposedError, InvalidArgumentError, PagedLLMError, UnsupportedError } from './errors';
import { KvCache, type KvCacheDType } from './kv-cache';
import { createMemoryResource, defaultMemoryResource, MEMORY_CATEGORIES, memoryReport, type MemoryCategory, type MemoryReport, type MemoryResource } from './memory';
import { Model } from './model';
import { planMemory, type MemoryBudget, type MemoryPlan, type ModelConfig } from './planner';
import { checkSamplingParams, sampleTokens, samplerRng, type Rng, type SampleRequest, type SamplingParams } from './sampling';
import { type LoadProgress } from './safetensors';
import { type StreamDecoder, Tokenizer } from './tokenizer';

export type PreemptionMode = 'recompute' | 'swap';

export interface EngineOptions {
  /** A model folder (loaded, with its tokenizer.json when present) or a loaded Model (not disposed by the engine). */
  model: string | Model;
  /** With a Model instance: its tokenizer (text prompts and output text need one). */
  tokenizer?: Tokenizer | null;
  /** Default: the device `devices()` selects. With a Model instance, the model's device. */
  device?: DeviceSpec | 'auto';
  /** Activation dtype. Default float32 on the CPU, float16 on CUDA. */
  dtype?: DType;
  /** Default float32 on the CPU, float16 on CUDA. */
  kvDtype?: KvCacheDType;
  /** Tokens per KV block: 8, 16 (default) or 32. */
  blockSize?: number;
  /** Longest sequence, prompt plus output. Default: the model's max_position_embeddings. */
  maxModelLen?: number;
  /** Sequences in one step. Default 256 on CUDA, 32 on the CPU. */
  maxNumSeqs?: number;
  /** Tokens in one step (longer prompts are prefilled in chunks). Default max(2048, maxNumSeqs). */
  maxNumBatchedTokens?: number;
  /**
   * How big the KV cache is (planMemory's policies). Default on CUDA `{ gpuMemoryUtilization: 0.9 }`;
   * on the CPU `{ kvCacheBytes }` for maxNumSeqs full-length sequences, at most 4 GiB (vLLM's CPU default).
   */
  budget?: MemoryBudget;
  /** Reuse full KV blocks across requests with the same prefix. Default true. */
  prefixCaching?: boolean;
  /** What happens to a sequence when KV blocks run out. Default 'recompute'. */
  preemption?: PreemptionMode;
  /**
   * CUDA only: decode steps (one token for each of up to maxNumSeqs sequences) replayed from CUDA
   * graphs captured per batch and context bucket (Model.enableCudaGraphs); 'eager' runs the same
   * padded steps op by op, the baseline to measure graphs against. Default false: not yet run on a GPU.
   */
  cudaGraphs?: boolean | 'eager';
  /** Host memory for swapped-out KV blocks (preemption 'swap'). Default: as much as the device KV cache, at most 4 GiB. */
  swapSpaceBytes?: number;
  /** Fraction of KV blocks an admission leaves free for running sequences to grow. Default 0.01. */
  watermark?: number;
  /** Receives the memory plan and other engine notes. Default: stderr; null: silent. */
  logger?: ((line: string) => void) | null;
  /** Called after every step with what it did (for reports and plots). */
  onStep?: (step: EngineStep) => void;
  /** Weight loading progress (with a model folder). */
  onLoadProgress?: (progress: LoadProgress) => void;
}

export interface GenerationOptions extends SamplingParams {
  /** Tokens to generate per choice. Default 16. */
  maxTokens?: number;
  /** Stop when the text contains one of these (not included in the output). Needs a tokenizer. */
  stop?: string | readonly string[];
  /** Stop after one of these tokens (included in tokenIds; special ones are left out of the text). */
  stopTokenIds?: readonly number[];
  /** Keep going past the model's end-of-sequence tokens. Default false. */
  ignoreEos?: boolean;
  /** Choices sampled from one prompt (its KV blocks shared copy-on-write). Default 1. */
  n?: number;
  /** Ends the request at the next step; it rejects with ERR_ABORTED. */
  signal?: AbortSignal;
  /** Each token's logprob under the sampling distribution. */
  logprobs?: boolean;
  /** Prefix-cache isolation: only requests with the same salt share cached blocks. */
  cacheSalt?: string;
}

export type FinishReason = 'stop' | 'length';

/** Part of one choice's output: usually one token. */
export interface GenerationChunk {
  /** Which choice (0 … n − 1). */
  index: number;
  tokenIds: number[];
  /** The text these tokens complete ('' without a tokenizer, or while a character or a possible stop string is incomplete). */
  text: string;
  logprobs?: number[];
  /** Set on a choice's last chunk. */
  finishReason: FinishReason | null;
}

export interface GenerationChoice {
  index: number;
  tokenIds: number[];
  text: string;
  logprobs?: number[];
  finishReason: FinishReason;
}

export interface GenerationResult {
  choices: GenerationChoice[];
  usage: { promptTokens: number; completionTokens: number; cachedPromptTokens: number };
  timings: {
    /** Arrival to admission. */
    queuedMs: number;
    /** Arrival to the first token. */
    timeToFirstTokenMs: number;
    /** Over all choices: tokens after the first of each, over the time from the first token to the last. */
    decodeTokensPerSecond: number;
  };
  preemptions: number;
}

/** What one step did. */
export interface EngineStep {
  step: number;
  /** ms since the engine was created. */
  time: number;
  durationMs: number;
  prefillTokens: number;
  decodeTokens: number;
  running: number;
  waiting: number;
  swapped: number;
  preempted: number;
  kv: Pick<BlockManagerStats, 'totalBlocks' | 'usedBlocks' | 'freeBlocks' | 'cachedBlocks'>;
  /** Bytes in use per category on the engine's device. */
  memory: Record<MemoryCategory, number>;
}

export interface EngineMetrics {
  requests: { waiting: number; running: number; swapped: number; finished: number; aborted: number; failed: number };
  tokens: { prompt: number; promptComputed: number; promptCached: number; generated: number };
  preemptions: { recompute: number; swap: number };
  steps: number;
  /** Busy time (ms) and the throughputs over it. */
  busyMs: number;
  promptTokensPerSecond: number;
  generationTokensPerSecond: number;
  timeToFirstTokenMs: { mean: number; p50: number; p99: number } | null;
  kv: BlockManagerStats;
}

export interface EngineMemoryReport {
  plan: MemoryPlan;
  device: MemoryReport;
  kv: BlockManagerStats;
  /** Host swap space, when preemption is 'swap'. */
  swap: { blocks: number; bytes: number } | null;
}

// ---- a request's output: an async iterable of chunks, and promises of the whole ----

class Deferred<T> {
  readonly promise: Promise<T>;
  resolve!: (value: T) => void;
  reject!: (error: unknown) => void;
  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    this.promise.catch(() => {});  // a caller who only iterates must not get an unhandled rejection
  }
}

/**
 * What `engine.generate` returns: iterate it for chunks as they are generated, or await
 * `result()` (every choice, usage, timings), `text()` or `tokenIds()` (the first choice).
 * One consumer may iterate; the promises may be awaited any number of times.
 */
export class GenerationStream implements AsyncIterable<GenerationChunk> {
  private readonly chunks: GenerationChunk[] = [];
  private readonly done = new Deferred<GenerationResult>();
  private wake: (() => void) | null = null;
  private settled = false;
  private error: unknown = null;
  private iterating = false;

  /** @internal */
  push(chunk: GenerationChunk): void {
    this.chunks.push(chunk);
    this.wake?.();
  }
  /** @internal */
  finish(result: GenerationResult): void {
    this.settled = true;
    this.done.resolve(result);
    this.wake?.();
  }
  /** @internal */
  fail(error: unknown): void {
    this.settled = true;
    this.error = error;
    this.done.reject(error);
    this.wake?.();
  }

  result(): Promise<GenerationResult> {
    return this.done.promise;
  }
  async text(): Promise<string> {
    return (await this.done.promise).choices[0]!.text;
  }
  async tokenIds(): Promise<number[]> {
    return (await this.done.promise).choices[0]!.tokenIds;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GenerationChunk> {
    if (this.iterating) throw new InvalidArgumentError('GenerationStream: already being iterated (one consumer per request)');
    this.iterating = true;
    let next = 0;
    for (;;) {
      while (next < this.chunks.length) yield this.chunks[next++]!;
      if (this.settled) {
        if (this.error !== null) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }
}

// ---- requests and sequences ----

type SeqStatus = 'waiting' | 'running' | 'swapped' | 'finished';

interface Request {
  readonly id: number;
  readonly promptIds: number[];
  readonly n: number;
  readonly maxTokens: number;
  readonly sampling: SamplingParams;
  readonly stopIds: ReadonlySet<number>;
  readonly stopStrings: readonly string[];
  readonly logprobs: boolean;
  readonly salt: string | undefined;
  readonly output: GenerationStream;
  readonly seqs: Seq[];
  readonly arrival: number;
  admitted: number;
  firstToken: number;
  lastToken: number;
  cachedPromptTokens: number;
  preemptions: number;
  forked: boolean;
  aborted: unknown;
  detach: () => void;
}

interface Seq {
  /** The BlockManager's id. */
  readonly id: number;
  readonly request: Request;
  readonly index: number;
  /** Prompt, then output: what the KV cache must hold. */
  readonly tokens: number[];
  readonly output: number[];
  readonly logprobs: number[];
  /** Leading tokens whose K/V is in the cache. */
  numComputed: number;
  status: SeqStatus;
  readonly rng: Rng;
  decoder: StreamDecoder | null;
  /** Text decoded so far, and how much of it has been emitted (a possible stop string is held back). */
  text: string;
  emitted: number;
  finishReason: FinishReason | null;
}

interface Scheduled {
  seq: Seq;
  /** New tokens computed this step: tokens[numComputed, numComputed + count). */
  count: number;
  slots: Int32Array;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

function positiveInt(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new InvalidArgumentError(`Engine: ${name} must be a positive integer, got ${String(value)}`);
  return value;
}

const GiB = 2 ** 30;

export class Engine {
  readonly model: Model;
  readonly tokenizer: Tokenizer | null;
  readonly device: string;
  readonly plan: MemoryPlan;
  readonly maxModelLen: number;
  readonly maxNumSeqs: number;
  readonly maxNumBatchedTokens: number;
  readonly preemption: PreemptionMode;
  readonly blocks: BlockManager;

  private readonly ownsModel: boolean;
  private cache: KvCache | null;
  private hostCache: KvCache | null;
  private readonly hostMemory: MemoryResource | null;
  private readonly eosIds: readonly number[];
  private readonly logger: ((line: string) => void) | null;
  private readonly onStep: ((step: EngineStep) => void) | undefined;
  private readonly created = performance.now();
  private memory: MemoryResource | null = null;  // the device's default resource (onStep's memory figures)

  private readonly waiting: Seq[] = [];
  private running: Seq[] = [];
  private readonly swapped: Seq[] = [];
  private readonly requests = new Set<Request>();
  private nextRequestId = 0;
  private nextSeqId = 0;
  private loop: Promise<void> | null = null;
  private disposed = false;

  private readonly counts = {
    finished: 0, aborted: 0, failed: 0, prompt: 0, promptComputed: 0, promptCached: 0, generated: 0,
    recompute: 0, swap: 0, steps: 0, busyMs: 0,
  };
  private readonly ttft: number[] = [];

  private constructor(init: {
    model: Model; tokenizer: Tokenizer | null; ownsModel: boolean; plan: MemoryPlan; cache: KvCache; hostCache: KvCache | null;
    hostMemory: MemoryResource | null; blocks: BlockManager; preemption: PreemptionMode; eosIds: number[];
    logger: ((line: string) => void) | null; onStep?: (step: EngineStep) => void;
  }) {
    this.model = init.model;
    this.tokenizer = init.tokenizer;
    this.ownsModel = init.ownsModel;
    this.device = init.model.device;
    this.plan = init.plan;
    this.maxModelLen = init.plan.maxModelLen;
    this.maxNumSeqs = init.plan.maxNumSeqs;
    this.maxNumBatchedTokens = init.plan.maxNumBatchedTokens;
    this.cache = init.cache;
    this.hostCache = init.hostCache;
    this.hostMemory = init.hostMemory;
    this.blocks = init.blocks;
    this.preemption = init.preemption;
    this.eosIds = init.eosIds;
    this.logger = init.logger;
    this.onStep = init.onStep;
  }

  /** Loads the model (when given a folder), plans memory, allocates the KV cache and logs the plan. */
  static async create(options: EngineOptions): Promise<Engine> {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('Engine.create expects an options object');
    const preemption = options.preemption ?? 'recompute';
    if (preemption !== 'recompute' && preemption !== 'swap') throw new InvalidArgumentError(`Engine: preemption must be 'recompute' or 'swap', got ${String(preemption)}`);
    const blockSize = options.blockSize ?? 16;
    if (![8, 16, 32].includes(blockSize)) throw new InvalidArgumentError(`Engine: blockSize must be 8, 16 or 32 (the attention kernels' sizes), got ${String(blockSize)}`);
    const logger = options.logger === null ? null : options.logger ?? ((line: string) => process.stderr.write(`${line}\n`));
    if (logger !== null && typeof logger !== 'function') throw new InvalidArgumentError('Engine: logger must be a function or null');
    if (options.onStep !== undefined && typeof options.onStep !== 'function') throw new InvalidArgumentError('Engine: onStep must be a function');

    let model: Model;
    let tokenizer: Tokenizer | null;
    const ownsModel = typeof options.model === 'string';
    if (typeof options.model === 'string') {
      const dir = options.model;
      const device = !options.device || options.device === 'auto' ? devices().selected : options.device;
      const dtype = options.dtype ?? (device === 'cpu' ? 'float32' : 'float16');
      tokenizer = fs.existsSync(path.join(dir, 'tokenizer.json')) ? await Tokenizer.fromFolder(dir) : null;
      model = await Model.load(dir, { device: device as DeviceSpec, dtype, onProgress: options.onLoadProgress });
    } else if (options.model instanceof Model) {
      model = options.model;
      tokenizer = options.tokenizer ?? null;
      if (tokenizer !== null && !(tokenizer instanceof Tokenizer)) throw new InvalidArgumentError('Engine: tokenizer must be a Tokenizer or null');
    } else {
      throw new InvalidArgumentError('Engine: model must be a model folder or a Model');
    }
    try {
      const c = model.config;
      const onCpu = model.device === 'cpu';
      const kvDtype = options.kvDtype ?? (onCpu ? 'float32' : 'float16');
      const support = pagedAttentionSupports({ device: model.device as DeviceSpec, headSize: c.headDim, blockSize, dtype: model.dtype, kvDtype });
      if (!support.supported) throw new UnsupportedError(`Engine: ${support.reason}`);
      const cudaGraphs = options.cudaGraphs ?? false;
      if (cudaGraphs !== false && cudaGraphs !== true && cudaGraphs !== 'eager') throw new InvalidArgumentError(`Engine: cudaGraphs must be true, false or 'eager', got ${JSON.stringify(cudaGraphs)}`);
      if (cudaGraphs !== false && onCpu) throw new UnsupportedError('Engine: cudaGraphs needs a CUDA device; the model is on cpu');
      const maxModelLen = positiveInt(options.maxModelLen ?? c.maxPositionEmbeddings, 'maxModelLen');
      if (maxModelLen > c.maxPositionEmbeddings) throw new InvalidArgumentError(`Engine: maxModelLen ${maxModelLen} exceeds the model's max_position_embeddings (${c.maxPositionEmbeddings})`);
      const maxNumSeqs = positiveInt(options.maxNumSeqs ?? (onCpu ? 32 : 256), 'maxNumSeqs');
      const maxNumBatchedTokens = positiveInt(options.maxNumBatchedTokens ?? Math.max(2048, maxNumSeqs), 'maxNumBatchedTokens');
      if (maxNumBatchedTokens < maxNumSeqs) throw new InvalidArgumentError(`Engine: maxNumBatchedTokens (${maxNumBatchedTokens}) must be at least maxNumSeqs (${maxNumSeqs}), so every running sequence can decode in one step`);
      const watermark = options.watermark ?? 0.01;
      const weightsBytes = memoryReport(model.device as DeviceSpec).categories?.weights.current;
      const modelConfig = c.raw as unknown as ModelConfig;
      const planFor = (budget: MemoryBudget): MemoryPlan => planMemory({
        modelConfig, deviceMemory: model.device, kvDtype, blockSize, maxModelLen, maxNumSeqs, maxNumBatchedTokens, budget, cudaGraphs: cudaGraphs !== false,
        weightsDtype: model.dtype === 'float32' ? 'float32' : undefined,
        measured: weightsBytes ? { weightsBytes, weightsResident: true } : undefined,
      });
      let budget = options.budget;
      if (budget === undefined) {
        if (onCpu) {
          // Blocks for maxNumSeqs full-length sequences (+ the null block and the watermark), within 4 GiB and a quarter of free memory.
          const perBlock = planFor({ numBlocks: Math.ceil(maxModelLen / blockSize) }).kvBytesPerBlock;
          const wanted = Math.ceil((maxNumSeqs * Math.ceil(maxModelLen / blockSize) + 1) / (1 - watermark)) + 1;
          const cap = Math.floor(Math.min(4 * GiB, devices().cpu.availableMemory / 4) / perBlock);
          budget = { numBlocks: Math.max(1, Math.min(wanted, cap)) };
        } else {
          budget = { gpuMemoryUtilization: 0.9 };
        }
      }
      const plan = planFor(budget);
      // The null block takes one; admission leaves the watermark: one full-length sequence must still fit.
      const usable = plan.numBlocks - 1 - Math.floor(watermark * plan.numBlocks);
      const needed = Math.ceil(maxModelLen / blockSize);
      if (usable < needed) {
        throw new InvalidArgumentError(`Engine: the KV cache's ${plan.numBlocks} blocks leave ${usable} for sequences (block 0 is reserved, and the watermark), but one sequence of maxModelLen ${maxModelLen} needs ${needed}; lower maxModelLen or raise the budget`);
      }
      let hostBlocks = 0;
      let hostMemory: MemoryResource | null = null;
      if (preemption === 'swap') {
        const swapBytes = options.swapSpaceBytes ?? Math.min(4 * GiB, plan.kvCacheBytes);
        hostBlocks = Math.floor(positiveInt(swapBytes, 'swapSpaceBytes') / plan.kvBytesPerBlock);
        if (hostBlocks < 2) throw new InvalidArgumentError(`Engine: swapSpaceBytes ${swapBytes} holds fewer than 2 KV blocks of ${plan.kvBytesPerBlock} bytes`);
        if (!onCpu) hostMemory = createMemoryResource({ kind: 'pinned-host' });
      }
      const shape = { ...model.kvCacheShape(), blockSize, kvDtype };
      const cache = new KvCache({ ...shape, numBlocks: plan.numBlocks, device: model.device as DeviceSpec });
      let hostCache: KvCache | null = null;
      try {
        if (hostBlocks > 0) hostCache = new KvCache({ ...shape, numBlocks: hostBlocks, device: 'cpu', memory: hostMemory ?? undefined });
      } catch (error) {
        cache.dispose();
        throw error;
      }
      const blocks = new BlockManager({
        numBlocks: plan.numBlocks, blockSize, numHostBlocks: hostBlocks, watermark,
        enablePrefixCaching: options.prefixCaching ?? true, slidingWindow: c.slidingWindow || undefined,
      });
      const eosIds = tokenizer?.eosTokenIds.slice() ?? [];
      if (cudaGraphs !== false) model.enableCudaGraphs({ maxBatch: maxNumSeqs, maxBlocksPerSeq: needed, capture: cudaGraphs === true });
      const engine = new Engine({ model, tokenizer, ownsModel, plan, cache, hostCache, hostMemory, blocks, preemption, eosIds, logger, onStep: options.onStep });
      engine.logPlan();
      return engine;
    } catch (error) {
      if (ownsModel) model.dispose();
      else model.disableCudaGraphs();
      throw error;
    }
  }

  private logPlan(): void {
    if (!this.logger) return;
    const p = this.plan;
    const mib = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MiB`;
    const log = this.logger;
    log(`pagedllm engine on ${this.device}: ${this.model.config.architecture}, ${this.model.config.numLayers} layers, activations ${this.model.dtype}`);
    log(`memory plan (${p.policy}): weights ${mib(p.weightsBytes)}, activations ≈ ${mib(p.activationBytes)}, workspace ≈ ${mib(p.workspaceBytes)}, KV cache ${mib(p.kvCacheBytes)} (${p.kvDtype})`);
    log(`KV cache: ${p.numBlocks} blocks × ${p.blockSize} tokens (${p.kvBytesPerToken} bytes per token) = ${p.kvTokens} tokens; maximum concurrency at ${p.maxModelLen} tokens: ${p.maxConcurrency.toFixed(0)}`);
    if (this.hostCache) log(`swap space: ${this.hostCache.numBlocks} host blocks (${mib(this.hostCache.byteLength)})`);
    for (const w of p.warnings) log(`warning: ${w}`);
  }

  // ---- requests ----

  /**
   * Queues a request and returns its stream at once. Bad arguments throw here (typed errors);
   * an abort rejects the stream with ERR_ABORTED; dispose() rejects it with ERR_DISPOSED.
   */
  generate(prompt: string | { promptTokenIds: readonly number[] }, options: GenerationOptions = {}): GenerationStream {
    if (this.disposed) throw new DisposedError('Engine has been disposed');
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('generate: options must be an object');
    let promptIds: number[];
    if (typeof prompt === 'string') {
      if (!this.tokenizer) throw new InvalidArgumentError('generate: a text prompt needs a tokenizer (the model folder has no tokenizer.json); pass { promptTokenIds }');
      promptIds = this.tokenizer.encode(prompt);
    } else if (prompt !== null && typeof prompt === 'object' && prompt.promptTokenIds !== undefined) {
      promptIds = Array.from(prompt.promptTokenIds as ArrayLike<number>);
    } else {
      throw new InvalidArgumentError('generate: the prompt must be a string or { promptTokenIds }');
    }
    const vocab = this.model.config.vocabSize;
    if (promptIds.length === 0) throw new InvalidArgumentError('generate: the prompt has no tokens');
    promptIds.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new InvalidArgumentError(`generate: promptTokenIds[${i}] = ${String(id)} is not a token id (vocabulary ${vocab})`);
    });
    const maxTokens = options.maxTokens ?? 16;
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new InvalidArgumentError(`generate: maxTokens must be a positive integer, got ${String(maxTokens)}`);
    if (promptIds.length + maxTokens > this.maxModelLen) {
      throw new InvalidArgumentError(`generate: prompt (${promptIds.length} tokens) + maxTokens (${maxTokens}) exceeds maxModelLen ${this.maxModelLen}`);
    }
    const n = options.n ?? 1;
    if (!Number.isSafeInteger(n) || n < 1 || n > this.maxNumSeqs) throw new InvalidArgumentError(`generate: n must be an integer from 1 to maxNumSeqs (${this.maxNumSeqs}), got ${String(n)}`);
    const { maxTokens: _m, stop, stopTokenIds, ignoreEos, n: _n, signal, logprobs, cacheSalt, ...samplingOptions } = options;
    const sampling = checkSamplingParams(samplingOptions);
    const stopStrings = stop === undefined ? [] : typeof stop === 'string' ? [stop] : Array.isArray(stop) ? stop.slice() : null;
    if (stopStrings === null || stopStrings.some((s) => typeof s !== 'string' || s.length === 0)) throw new InvalidArgumentError('generate: stop must be a non-empty string or an array of them');
    if (stopStrings.length > 0 && !this.tokenizer) throw new InvalidArgumentError('generate: stop strings need a tokenizer (the model folder has no tokenizer.json)');
    const stopIds = new Set<number>();
    for (const id of stopTokenIds ?? []) {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new InvalidArgumentError(`generate: stopTokenIds has ${String(id)}, not a token id (vocabulary ${vocab})`);
      stopIds.add(id);
    }
    if (ignoreEos !== true) for (const id of this.eosIds) stopIds.add(id);
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError('generate: signal must be an AbortSignal');
    if (cacheSalt !== undefined && typeof cacheSalt !== 'string') throw new InvalidArgumentError('generate: cacheSalt must be a string');

    const output = new GenerationStream();
    const now = performance.now();
    const request: Request = {
      id: this.nextRequestId++, promptIds, n, maxTokens, sampling, stopIds, stopStrings, logprobs: logprobs === true, salt: cacheSalt,
      output, seqs: [], arrival: now, admitted: NaN, firstToken: NaN, lastToken: NaN, cachedPromptTokens: 0, preemptions: 0,
      forked: n === 1, aborted: null, detach: () => {},
    };
    const first = this.newSeq(request, 0, promptIds.slice(), null);
    if (signal) {
      if (signal.aborted) {
        output.fail(new AbortedError('generate: the request was aborted before it started', { cause: signal.reason }));
        return output;
      }
      const onAbort = (): void => {
        request.aborted = signal.reason ?? true;
        this.kick();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      request.detach = () => signal.removeEventListener('abort', onAbort);
    }
    this.requests.add(request);
    this.counts.prompt += promptIds.length;
    this.waiting.push(first);
    this.kick();
    return output;
  }

  private newSeq(request: Request, index: number, tokens: number[], parent: Seq | null): Seq {
    const seed = request.sampling.seed;
    const seq: Seq = {
      id: this.nextSeqId++, request, index, tokens, output: parent ? parent.output.slice() : [], logprobs: [],
      numComputed: parent ? parent.numComputed : 0, status: 'waiting',
      rng: samplerRng(seed === undefined ? undefined : seed + index),
      decoder: this.tokenizer ? this.tokenizer.createStreamDecoder({ skipSpecialTokens: true, promptIds: request.promptIds }) : null,
      text: '', emitted: 0, finishReason: null,
    };
    request.seqs.push(seq);
    return seq;
  }

  // ---- the loop ----

  private kick(): void {
    if (this.loop || this.disposed) return;
    this.loop = this.run().finally(() => {
      this.loop = null;
      if (this.hasWork() && !this.disposed) this.kick();
    });
  }

  private hasWork(): boolean {
    return this.waiting.length + this.running.length + this.swapped.length > 0;
  }

  private async run(): Promise<void> {
    while (this.hasWork() && !this.disposed) {
      await this.step();
      // Let timers, I/O and new requests in between steps.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** One scheduling step and its forward pass. */
  private async step(): Promise<void> {
    const started = performance.now();
    this.dropAborted();
    const { batch, preempted } = this.schedule();
    if (batch.length === 0) {
      if (this.running.length === 0 && this.swapped.length === 0 && this.waiting.length > 0) {
        // Cannot happen with the size check at create (one full sequence always fits an empty cache);
        // fail loudly instead of spinning.
        this.failSeqs(this.waiting.slice(), new InvalidArgumentError('Engine: the waiting request does not fit the empty KV cache'));
      }
      return;
    }
    let prefill = 0;
    let decode = 0;
    for (const s of batch) {
      if (s.seq.numComputed + s.count > s.seq.request.promptIds.length || s.seq.output.length > 0) decode += s.count;
      else prefill += s.count;
    }
    try {
      await this.execute(batch);
    } catch (error) {
      this.failSeqs(batch.map((s) => s.seq), error);
    }
    const ended = performance.now();
    this.counts.steps++;
    this.counts.busyMs += ended - started;
    this.counts.promptComputed += prefill;
    if (this.onStep) {
      const stats = this.blocks.stats();
      const current = (this.memory ??= defaultMemoryResource(this.device as DeviceSpec)).currentByCategory();
      const memory = Object.fromEntries(MEMORY_CATEGORIES.map((c, i) => [c, current[i] ?? 0])) as Record<MemoryCategory, number>;
      this.onStep({
        step: this.counts.steps, time: ended - this.created, durationMs: ended - started, prefillTokens: prefill, decodeTokens: decode,
        running: this.running.length, waiting: this.waiting.length, swapped: this.swapped.length, preempted,
        kv: { totalBlocks: stats.totalBlocks, usedBlocks: stats.usedBlocks, freeBlocks: stats.freeBlocks, cachedBlocks: stats.cachedBlocks },
        memory,
      });
    }
  }

  private schedule(): { batch: Scheduled[]; preempted: number } {
    const batch: Scheduled[] = [];
    let budget = this.maxNumBatchedTokens;
    let preempted = 0;
    const blocks = this.blocks;
    const copies: [number, number][] = [];
    // 1. Running sequences, oldest first; preempt from the newest end when blocks run out.
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const seq = this.running[i]!;
      const count = Math.min(seq.tokens.length - seq.numComputed, budget);
      if (count <= 0) continue;
      let alloc = null;
      for (;;) {
        alloc = blocks.allocateSlots(seq.id, count, { tokenIds: seq.tokens.slice(seq.numComputed, seq.numComputed + count) });
        if (alloc) break;
        const victim = this.running[this.running.length - 1]!;
        this.preempt(victim);
        preempted++;
        if (victim === seq) break;
      }
      if (!alloc) break;  // seq itself was preempted: it was the last
      for (const c of alloc.copies) copies.push([c[0], c[1]]);
      batch.push({ seq, count, slots: alloc.slotMapping });
      budget -= count;
    }
    // 2. Swapped, then waiting, only when nothing had to be preempted.
    if (preempted === 0) {
      while (this.swapped.length > 0 && this.running.length < this.maxNumSeqs && budget > 0) {
        const seq = this.swapped[0]!;
        const pairs = blocks.swapIn(seq.id);
        if (!pairs) break;
        this.cache!.swapBlocksFrom(this.hostCache!, pairs);
        this.swapped.shift();
        seq.status = 'running';
        this.running.push(seq);
        const count = Math.min(seq.tokens.length - seq.numComputed, budget);
        const alloc = blocks.allocateSlots(seq.id, count, { tokenIds: seq.tokens.slice(seq.numComputed, seq.numComputed + count) });
        if (!alloc) break;
        for (const c of alloc.copies) copies.push([c[0], c[1]]);
        batch.push({ seq, count, slots: alloc.slotMapping });
        budget -= count;
      }
      while (this.swapped.length === 0 && this.waiting.length > 0 && budget > 0) {
        const seq = this.waiting[0]!;
        const request = seq.request;
        // Room for the request's n sequences once it forks.
        if (this.running.length + (request.forked ? 1 : request.n) > this.maxNumSeqs) break;
        const count = Math.min(seq.tokens.length, budget);
        const alloc = blocks.allocateSlots(seq.id, count, { tokenIds: seq.tokens.slice(0, count), salt: request.salt });
        if (!alloc) break;
        this.waiting.shift();
        seq.status = 'running';
        this.running.push(seq);
        if (Number.isNaN(request.admitted)) request.admitted = performance.now();
        const cached = alloc.numCachedTokens;
        if (seq.output.length === 0 && request.preemptions === 0) {
          request.cachedPromptTokens = cached;
          this.counts.promptCached += cached;
        }
        seq.numComputed = cached;
        batch.push({ seq, count: count - cached, slots: alloc.slotMapping });
        budget -= count - cached;
      }
    }
    if (copies.length > 0) this.cache!.copyBlocks(copies);
    return { batch, preempted };
  }

  private preempt(seq: Seq): void {
    this.running.pop();
    seq.request.preemptions++;
    if (this.preemption === 'swap') {
      const pairs = this.blocks.swapOut(seq.id);
      if (pairs) {
        this.hostCache!.swapBlocksFrom(this.cache!, pairs);
        seq.status = 'swapped';
        this.swapped.push(seq);
        this.counts.swap++;
        return;
      }
    }
    // Recompute: forget the KV; prefill prompt and output again when re-admitted (first in line).
    this.blocks.free(seq.id);
    seq.numComputed = 0;
    seq.status = 'waiting';
    this.waiting.unshift(seq);
    this.counts.recompute++;
  }

  private async execute(batch: Scheduled[]): Promise<void> {
    const T = batch.reduce((a, s) => a + s.count, 0);
    const tokenIds = new Int32Array(T);
    const positions = new Int32Array(T);
    const slotMapping = new Int32Array(T);
    const cuSeqLensQ = new Int32Array(batch.length + 1);
    const seqLens = new Int32Array(batch.length);
    const logitRows: number[] = [];
    const sampled: Seq[] = [];
    let maxBlocks = 0;
    for (const s of batch) maxBlocks = Math.max(maxBlocks, Math.ceil((s.seq.numComputed + s.count) / this.blocks.blockSize));
    const blockTables = new Int32Array(batch.length * maxBlocks);
    let row = 0;
    batch.forEach((s, i) => {
      const { seq, count } = s;
      if (s.slots.length !== count) throw new Error(`internal: ${s.slots.length} slots for ${count} tokens`);
      for (let j = 0; j < count; j++) {
        tokenIds[row + j] = seq.tokens[seq.numComputed + j]!;
        positions[row + j] = seq.numComputed + j;
      }
      slotMapping.set(s.slots, row);
      row += count;
      cuSeqLensQ[i + 1] = row;
      seqLens[i] = seq.numComputed + count;
      blockTables.set(this.blocks.blockTable(seq.id, maxBlocks), i * maxBlocks);
      if (seq.numComputed + count === seq.tokens.length) {
        logitRows.push(row - 1);
        sampled.push(seq);
      }
    });
    const logits = this.model.forward(this.cache!, {
      tokenIds, positions, slotMapping, blockTables, seqLens, cuSeqLensQ, logitRows,  // none: a prompt chunk that samples nothing
    });
    for (const s of batch) s.seq.numComputed += s.count;  // (before forking: a fork copies it)
    // One draw per sequence that samples (n > 1: the first token of every choice from its prompt's
    // row), sampled on the device: only the ids (and logprobs) come back.
    const draws: SampleRequest[] = [];
    const drawn: Seq[] = [];
    const draw = (seq: Seq, row: number): void => {
      const request = seq.request;
      drawn.push(seq);
      // The generator advances only for a random draw (as sampleToken's), so seeded runs repeat.
      draws.push({ row, params: request.sampling, draw: request.sampling.temperature === 0 ? 0 : seq.rng(), context: { prompt: request.promptIds, output: seq.output } });
    };
    sampled.forEach((seq, i) => {
      const request = seq.request;
      if (request.aborted !== null || seq.status !== 'running') return;
      if (!request.forked) {
        // n > 1: the prompt is in the cache once; fork it into the other choices, which share its blocks.
        request.forked = true;
        const at = this.running.indexOf(seq) + 1;
        const children: Seq[] = [];
        for (let k = 1; k < request.n; k++) {
          const child = this.newSeq(request, k, seq.tokens.slice(), seq);
          this.blocks.fork(seq.id, child.id);
          child.status = 'running';
          children.push(child);
        }
        this.running.splice(at, 0, ...children);
        for (const child of children) draw(child, i);
      }
      draw(seq, i);
    });
    let result: { tokenIds: Int32Array; logprobs: Float32Array | null };
    try {
      result = await sampleTokens(logits, draws, { logprobs: drawn.some((seq) => seq.request.logprobs) });
    } finally {
      logits.dispose();
    }
    const now = performance.now();
    drawn.forEach((seq, i) => {
      if (seq.request.aborted !== null || seq.status !== 'running') return;  // aborted while sampling: ended next step
      this.appendToken(seq, result.tokenIds[i]!, result.logprobs ? result.logprobs[i]! : NaN, now);
    });
    for (const r of new Set(sampled.map((s) => s.request))) this.maybeFinish(r);
  }

  private appendToken(seq: Seq, tokenId: number, logprob: number, now: number): void {
    const request = seq.request;
    const s = { tokenId, logprob };
    if (Number.isNaN(request.firstToken)) {
      request.firstToken = now;
      this.ttft.push(now - request.arrival);
    }
    request.lastToken = now;
    seq.tokens.push(s.tokenId);
    seq.output.push(s.tokenId);
    if (request.logprobs) seq.logprobs.push(s.logprob);
    this.counts.generated++;
    let finish: FinishReason | null = null;
    if (request.stopIds.has(s.tokenId)) finish = 'stop';
    else if (seq.output.length >= request.maxTokens || seq.tokens.length >= this.maxModelLen) finish = 'length';
    let text = '';
    if (seq.decoder) {
      seq.text += seq.decoder.push(s.tokenId);
      if (finish !== null) seq.text += seq.decoder.flush();
      if (request.stopStrings.length > 0) {
        const from = Math.max(0, seq.emitted - Math.max(...request.stopStrings.map((x) => x.length)));
        let cut = -1;
        for (const stop of request.stopStrings) {
          const at = seq.text.indexOf(stop, from);
          if (at >= 0 && (cut < 0 || at < cut)) cut = at;
        }
        if (cut >= 0) {
          seq.text = seq.text.slice(0, cut);
          finish = 'stop';
        }
      }
      // Hold back what could still turn out to start a stop string.
      const hold = finish === null && request.stopStrings.length > 0 ? Math.max(...request.stopStrings.map((x) => x.length)) - 1 : 0;
      const end = Math.max(seq.emitted, seq.text.length - hold);
      text = seq.text.slice(seq.emitted, end);
      seq.emitted = end;
    }
    if (finish !== null) this.finishSeq(seq, finish);
    request.output.push({
      index: seq.index, tokenIds: [s.tokenId], text, ...(request.logprobs ? { logprobs: [s.logprob] } : {}), finishReason: finish,
    });
  }

  private finishSeq(seq: Seq, reason: FinishReason): void {
    seq.finishReason = reason;
    this.release(seq);
  }

  /** Takes `seq` out of its queue and frees its blocks. */
  private release(seq: Seq): void {
    const queue = seq.status === 'running' ? this.running : seq.status === 'waiting' ? this.waiting : seq.status === 'swapped' ? this.swapped : null;
    if (queue) {
      const at = queue.indexOf(seq);
      if (at >= 0) queue.splice(at, 1);
    }
    if (this.blocks.has(seq.id)) this.blocks.free(seq.id);
    seq.status = 'finished';
  }

  private maybeFinish(request: Request): void {
    if (!request.forked || request.seqs.some((s) => s.finishReason === null)) return;
    this.requests.delete(request);
    request.detach();
    this.counts.finished++;
    let completion = 0;
    let decodeTokens = 0;
    for (const s of request.seqs) {
      completion += s.output.length;
      decodeTokens += Math.max(0, s.output.length - 1);
    }
    const decodeMs = request.lastToken - request.firstToken;
    request.output.finish({
      choices: request.seqs.map((s) => ({
        index: s.index, tokenIds: s.output, text: s.text, ...(request.logprobs ? { logprobs: s.logprobs } : {}), finishReason: s.finishReason!,
      })),
      usage: { promptTokens: request.promptIds.length, completionTokens: completion, cachedPromptTokens: request.cachedPromptTokens },
      timings: {
        queuedMs: request.admitted - request.arrival,
        timeToFirstTokenMs: request.firstToken - request.arrival,
        decodeTokensPerSecond: decodeTokens > 0 && decodeMs > 0 ? (decodeTokens * 1000) / decodeMs : NaN,
      },
      preemptions: request.preemptions,
    });
  }

  private dropAborted(): void {
    for (const request of this.requests) {
      if (request.aborted === null) continue;
      this.endRequest(request, new AbortedError('generate: the request was aborted', { cause: request.aborted }));
      this.counts.aborted++;
    }
  }

  private endRequest(request: Request, error: unknown): void {
    for (const seq of request.seqs) if (seq.status !== 'finished') this.release(seq);
    this.requests.delete(request);
    request.detach();
    request.output.fail(error);
  }

  private failSeqs(seqs: Seq[], error: unknown): void {
    const wrapped = error instanceof PagedLLMError ? error : new PagedLLMError('ERR_INTERNAL', `Engine step failed: ${String(error)}`, { cause: error });
    for (const request of new Set(seqs.map((s) => s.request))) {
      if (!this.requests.has(request)) continue;
      this.endRequest(request, wrapped);
      this.counts.failed++;
    }
  }

  // ---- reports ----

  metrics(): EngineMetrics {
    const c = this.counts;
    const sorted = this.ttft.slice().sort((a, b) => a - b);
    const seconds = c.busyMs / 1000;
    return {
      requests: { waiting: this.waiting.length, running: this.running.length, swapped: this.swapped.length, finished: c.finished, aborted: c.aborted, failed: c.failed },
      tokens: { prompt: c.prompt, promptComputed: c.promptComputed, promptCached: c.promptCached, generated: c.generated },
      preemptions: { recompute: c.recompute, swap: c.swap },
      steps: c.steps,
      busyMs: c.busyMs,
      promptTokensPerSecond: seconds > 0 ? c.promptComputed / seconds : 0,
      generationTokensPerSecond: seconds > 0 ? c.generated / seconds : 0,
      timeToFirstTokenMs: sorted.length === 0 ? null : { mean: sorted.reduce((a, b) => a + b, 0) / sorted.length, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) },
      kv: this.blocks.stats(),
    };
  }

  memoryReport(): EngineMemoryReport {
    return {
      plan: this.plan,
      device: memoryReport(this.device as DeviceSpec),
      kv: this.blocks.stats(),
      swap: this.hostCache ? { blocks: this.hostCache.numBlocks, bytes: this.hostCache.byteLength } : null,
    };
  }

  /** Resolves when every queued request has settled. */
  async idle(): Promise<void> {
    while (this.loop) await this.loop;
  }

  /** Rejects pending requests with ERR_DISPOSED and frees the KV cache (and the model, when the engine loaded it). Idempotent. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const request of [...this.requests]) this.endRequest(request, new DisposedError('Engine has been disposed'));
    const release = (): void => {
      this.cache?.dispose();
      this.hostCache?.dispose();
      this.cache = null;
      this.hostCache = null;
      if (this.ownsModel) this.model.dispose();
      else this.model.disableCudaGraphs();  // they point into this engine's cache
    };
    // A step in flight still reads the cache: free it after (stream-ordered frees make this safe either way).
    if (this.loop) void this.loop.then(release, release);
    else release();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}
