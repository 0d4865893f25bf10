/**
 * Llama-family models (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) from a Hugging
 * Face folder, and their forward pass over the paged KV cache, built from the ops: embedding,
 * RMSNorm (fused residual), q/k/v projections (+ bias for Qwen2), RoPE, writeKv, paged
 * attention (prefill, decode or both in one batch), o_proj, SwiGLU MLP, final norm, lm_head.
 * Linears are float (fp32/fp16/bf16 `.weight`) or AWQ int4 (AutoAWQ GEMM checkpoints:
 * `quantization_config.quant_method` "awq", qweight/qzeros/scales per projection, lib/awq.ts),
 * which run through the fused `awqLinear` op without being dequantized in memory.
 *
 * @example
 * const model = await Model.load('/models/llama', { device: 'cpu' });
 * const cache = new KvCache({ ...model.kvCacheShape(), numBlocks: 64, blockSize: 16, kvDtype: 'float32' });
 * const logits = model.forward(cache, { tokenIds, positions, slotMapping, blockTables, seqLens, cuSeqLensQ, logitRows });
 */
import * as path from 'node:path';

import { hostAttentionMetadata, pagedAttention, uploadAttentionMetadata } from './attention';
import { type DeviceSpec } from './device';
import { dtypeCode, type DType } from './dtype';
import { awqGroupSize, checkAwqTensors, isAwqSkipped, parseAwqConfig, type AwqConfig } from './awq';
import { InvalidArgumentError, ModelFormatError, UnsupportedError } from './errors';
import { readJsonObject, type JsonObject } from './json-file';
import { kvDtypeCode, type KvCache } from './kv-cache';
import { native, type DecoderGraphStats, type NativeBufferHandle, type NativeDecoderGraphsHandle, type NativeDecoderHandle } from './native';
import { awqLinear, awqRepack, embedding, linear, rmsNorm, rope, ropeInvFreq, siluMul, type AwqWeight, type LinearOptions, type RopeConfig } from './ops';
import { dtypeToSafetensors, SafetensorsCheckpoint, type LoadProgress } from './safetensors';
import { type Stream } from './stream';
import { Tensor } from './tensor';

export type ModelArchitecture = 'LlamaForCausalLM' | 'MistralForCausalLM' | 'Qwen2ForCausalLM';
const ARCHITECTURES: readonly ModelArchitecture[] = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'];

/** What the forward pass needs from config.json, checked and with HF's defaults applied. */
export interface LlamaConfig {
  architecture: ModelArchitecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  /** Keys within this many positions (itself included); 0: none. */
  slidingWindow: number;
  maxPositionEmbeddings: number;
  /** q/k/v projections carry a bias (Qwen2). */
  attentionBias: boolean;
  /** AWQ int4 linears (from quantization_config), or null for a float model. */
  awq: AwqConfig | null;
  /** The raw config.json (for RoPE and anything else). */
  raw: JsonObject;
}

/** Parses and checks a config.json object (ERR_MODEL_FORMAT naming the field otherwise). */
export function parseLlamaConfig(raw: JsonObject, file = 'config.json'): LlamaConfig {
  const fail = (message: string): never => {
    throw new ModelFormatError(`${file}: ${message}`);
  };
  const archs = raw.architectures;
  const architecture = Array.isArray(archs) ? (archs.find((a) => ARCHITECTURES.includes(a as ModelArchitecture)) as ModelArchitecture | undefined) : undefined;
  if (!architecture) {
    throw new UnsupportedError(`${file}: architectures ${JSON.stringify(archs ?? null)} is not supported (supported: ${ARCHITECTURES.join(', ')})`);
  }
  const quantization = raw.quantization_config;
  const awq = quantization === undefined || quantization === null ? null : parseAwqConfig(quantization, file);
  const int = (name: string, fallback?: number): number => {
    const v = raw[name] ?? fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) fail(`${name} must be a positive integer, got ${JSON.stringify(v ?? null)}`);
    return v as number;
  };
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) fail(`num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  const headDim = raw.head_dim === undefined || raw.head_dim === null ? hiddenSize / numHeads : int('head_dim');
  if (!Number.isInteger(headDim)) fail(`hidden_size (${hiddenSize}) is not a multiple of num_attention_heads (${numHeads}) and head_dim is absent`);
  const eps = raw.rms_norm_eps ?? 1e-6;
  if (typeof eps !== 'number' || !(eps > 0)) fail(`rms_norm_eps must be a positive number, got ${JSON.stringify(eps)}`);
  let slidingWindow = 0;
  const window = raw.sliding_window;
  const windowOn = architecture === 'MistralForCausalLM' || (architecture === 'Qwen2ForCausalLM' && raw.use_sliding_window === true);
  if (windowOn && window !== undefined && window !== null) {
    if (typeof window !== 'number' || !Number.isSafeInteger(window) || window <= 0) fail(`sliding_window must be a positive integer or null, got ${JSON.stringify(window)}`);
    slidingWindow = window as number;
  }
  return {
    architecture,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    rmsNormEps: eps as number,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    slidingWindow,
    maxPositionEmbeddings: int('max_position_embeddings', 2048),
    attentionBias: architecture === 'Qwen2ForCausalLM' || raw.attention_bias === true,
    awq,
    raw,
  };
}

/** A linear layer's weight: a float [out, in] tensor, or AWQ int4 tensors. */
type Projection = Tensor | AwqWeight;

function project(x: Tensor, w: Projection, bias: Tensor | null, options?: LinearOptions): Tensor {
  return w instanceof Tensor ? linear(x, w, bias, options) : awqLinear(x, w, bias, options);
}

interface LayerWeights {
  inputNorm: Tensor;
  q: Projection;
  k: Projection;
  v: Projection;
  qBias: Tensor | null;
  kBias: Tensor | null;
  vBias: Tensor | null;
  o: Projection;
  postNorm: Tensor;
  gate: Projection;
  up: Projection;
  down: Projection;
}

/** One forward step over a batch of new tokens of several sequences (their K/V slots already allocated). */
export interface ForwardBatch {
  /** int32 [numTokens]: the new tokens, sequence after sequence. */
  tokenIds: Int32Array;
  /** int32 [numTokens]: each token's position in its sequence. */
  positions: Int32Array;
  /** int32 [numTokens]: where writeKv stores each token's K/V (−1: nowhere). */
  slotMapping: Int32Array;
  /** Per sequence, its blocks (flat [numSeqs × maxBlocksPerSeq] or one row per sequence). */
  blockTables: Int32Array | ReadonlyArray<readonly number[]>;
  /** Per sequence, tokens in the cache after this step (the new ones included). */
  seqLens: Int32Array | readonly number[];
  /** Query rows per sequence, [numSeqs + 1]; absent when every sequence has exactly one new token. */
  cuSeqLensQ?: Int32Array | readonly number[];
  /** Token rows whose logits are wanted (e.g. the last of each sequence). Default: all. */
  logitRows?: Int32Array | readonly number[];
}

/** Options of one forward step. */
/** Model.enableCudaGraphs's options. */
export interface CudaGraphOptions {
  /** The most sequences a graph step decodes (the Engine's maxNumSeqs). */
  maxBatch: number;
  /** Block-table width of the fixed buffers: ceil(maxModelLen / blockSize). */
  maxBlocksPerSeq: number;
  /** Capture and replay graphs (default); false: the same padded steps op by op (a baseline). */
  capture?: boolean;
}

export interface ForwardOptions {
  /**
   * Called with the input of every linear layer as the step reaches it, by module name
   * ("model.layers.3.self_attn.q_proj", ".k_proj" and ".v_proj" share one tensor): the
   * activations AWQ calibrates on. The tensor is freed when forward() returns, and nothing writes
   * to it after the call, so to keep it take a view (`t.contiguous()` shares a contiguous tensor's
   * memory) and read it once the step is done.
   */
  capture?: (name: string, input: Tensor) => void;
  /**
   * How the step's ops are issued: `'native'` (default) builds the whole step in one native call
   * (include/pagedllm/decoder.h); `'ops'` calls each op from JS. Same kernels in the same order,
   * so the logits are identical; `'ops'` is the readable reference, and the one `capture` uses.
   */
  composition?: 'native' | 'ops';
}

export interface LoadOptions {
  device?: DeviceSpec;
  /** Activation (and compute) dtype; weights are kept as stored. Default float32. */
  dtype?: DType;
  onProgress?: (progress: LoadProgress) => void;
  signal?: AbortSignal;
}

function checkActivationDtype(dtype: unknown, op: string): DType {
  if (dtype !== 'float32' && dtype !== 'float16' && dtype !== 'bfloat16') throw new InvalidArgumentError(`${op}: dtype must be float32, float16 or bfloat16, got ${String(dtype)}`);
  return dtype;
}

export class Model {
  readonly config: LlamaConfig;
  readonly dtype: DType;
  readonly device: string;
  private weights: Map<string, Tensor> | null;
  private readonly layers: LayerWeights[];
  private readonly embed: Tensor;
  private readonly norm: Tensor;
  private readonly lmHead: Tensor;
  private readonly invFreq: Float32Array;
  // The native decoder (built at the first native forward) and what it was built with.
  private decoder: { handle: NativeDecoderHandle; invFreq: Tensor; synced: Set<Stream> } | null = null;
  // Decode steps through CUDA graphs (enableCudaGraphs), per stream.
  private graphOptions: CudaGraphOptions | null = null;
  private readonly graphs = new Map<Stream, NativeDecoderGraphsHandle>();
  private readonly regionsByCache = new WeakMap<KvCache, Array<NativeBufferHandle | number | null>>();

  private constructor(config: LlamaConfig, weights: Map<string, Tensor>, dtype: DType, file: string) {
    this.config = config;
    this.dtype = dtype;
    this.weights = weights;
    const get = (name: string, shape: number[]): Tensor => {
      const t = weights.get(name);
      if (!t) throw new ModelFormatError(`${file}: tensor "${name}" is missing`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new ModelFormatError(`${file}: tensor "${name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`);
      }
      if (t.dtype !== 'float32' && t.dtype !== 'float16' && t.dtype !== 'bfloat16') throw new ModelFormatError(`${file}: tensor "${name}" is ${t.dtype}, expected a float dtype`);
      return t;
    };
    const c = config;
    // AWQ layers (modules_to_not_convert aside) store qweight/qzeros/scales instead of .weight.
    const projection = (name: string, outFeatures: number, inFeatures: number): Projection => {
      if (!c.awq || isAwqSkipped(c.awq, name)) return get(`${name}.weight`, [outFeatures, inFeatures]);
      const groupSize = awqGroupSize(c.awq, inFeatures);
      const info = (n: string): { dtype: string; shape: readonly number[] } | undefined => {
        const t = weights.get(n);
        return t && { dtype: dtypeToSafetensors(t.dtype), shape: t.shape };
      };
      checkAwqTensors(info, name, inFeatures, outFeatures, groupSize, file);
      const w: AwqWeight = { qweight: weights.get(`${name}.qweight`)!, qzeros: weights.get(`${name}.qzeros`)!, scales: weights.get(`${name}.scales`)!, groupSize };
      // On a CPU whose decode GEMV takes int8 activations, qweight is rewritten in place (same bytes,
      // the order that GEMV reads; include/pagedllm/awq.h): no second copy.
      return slab8 && inFeatures % 32 === 0 ? awqRepack(w, { inPlace: true }) : w;
    };
    const slab8 = c.awq !== null && weights.get('model.embed_tokens.weight')?.device === 'cpu' && native().cpuInfo().awqActivations === 'int8';
    const qOut = c.numHeads * c.headDim, kvOut = c.numKvHeads * c.headDim;
    this.embed = get('model.embed_tokens.weight', [c.vocabSize, c.hiddenSize]);
    this.norm = get('model.norm.weight', [c.hiddenSize]);
    this.lmHead = c.tieWordEmbeddings ? this.embed : get('lm_head.weight', [c.vocabSize, c.hiddenSize]);
    this.layers = [];
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`;
      this.layers.push({
        inputNorm: get(`${p}input_layernorm.weight`, [c.hiddenSize]),
        q: projection(`${p}self_attn.q_proj`, qOut, c.hiddenSize),
        k: projection(`${p}self_attn.k_proj`, kvOut, c.hiddenSize),
        v: projection(`${p}self_attn.v_proj`, kvOut, c.hiddenSize),
        qBias: c.attentionBias ? get(`${p}self_attn.q_proj.bias`, [qOut]) : null,
        kBias: c.attentionBias ? get(`${p}self_attn.k_proj.bias`, [kvOut]) : null,
        vBias: c.attentionBias ? get(`${p}self_attn.v_proj.bias`, [kvOut]) : null,
        o: projection(`${p}self_attn.o_proj`, c.hiddenSize, qOut),
        postNorm: get(`${p}post_attention_layernorm.weight`, [c.hiddenSize]),
        gate: projection(`${p}mlp.gate_proj`, c.intermediateSize, c.hiddenSize),
        up: projection(`${p}mlp.up_proj`, c.intermediateSize, c.hiddenSize),
        down: projection(`${p}mlp.down_proj`, c.hiddenSize, c.intermediateSize),
      });
    }
    this.invFreq = ropeInvFreq(config.raw as RopeConfig);
    this.device = this.embed.device;
  }

  /**
   * A model from weights already in memory, by HF name (the model takes ownership: `dispose()`
   * frees them, and so does a failure here). For tools that transform weights, such as the AWQ
   * quantizer, which runs calibration and error measurements on float models it builds.
   */
  static fromWeights(config: JsonObject, weights: Map<string, Tensor>, options: { dtype?: DType; source?: string } = {}): Model {
    const source = options.source ?? 'weights';
    try {
      const parsed = parseLlamaConfig(config, `${source}: config`);
      return new Model(parsed, weights, checkActivationDtype(options.dtype ?? 'float32', 'Model.fromWeights'), source);
    } catch (error) {
      for (const t of weights.values()) t.dispose();
      throw error;
    }
  }

  /** Loads config.json and the safetensors weights of `dir` (weights counted as 'weights' memory). */
  static async load(dir: string, options: LoadOptions = {}): Promise<Model> {
    const configFile = path.join(dir, 'config.json');
    const config = parseLlamaConfig(await readJsonObject(configFile, 'config.json'), configFile);
    const dtype = checkActivationDtype(options.dtype ?? 'float32', 'Model.load');
    const checkpoint = await SafetensorsCheckpoint.open(dir);
    let weights: Map<string, Tensor> | null = null;
    try {
      const names = checkpoint.names().filter((n) => !n.endsWith('rotary_emb.inv_freq'));
      weights = await checkpoint.loadTensors({ names, device: options.device, onProgress: options.onProgress, signal: options.signal });
      return new Model(config, weights, dtype, checkpoint.location);
    } catch (error) {
      if (weights) for (const t of weights.values()) t.dispose();
      throw error;
    } finally {
      await checkpoint.close();
    }
  }

  /** The KvCache fields this model fixes. */
  kvCacheShape(): { numLayers: number; numKvHeads: number; headSize: number } {
    return { numLayers: this.config.numLayers, numKvHeads: this.config.numKvHeads, headSize: this.config.headDim };
  }

  /**
   * One step: writes the new tokens' K/V into `cache` and returns float32 logits
   * [logitRows.length, vocabSize] (on this model's device); every row's without logitRows, none
   * (a [0, vocabSize] tensor: no final norm or lm_head) with an empty one.
   */
  forward(cache: KvCache, batch: ForwardBatch, options: ForwardOptions = {}): Tensor {
    if (!this.weights) throw new InvalidArgumentError('Model has been disposed');
    const c = this.config;
    const T = batch.tokenIds.length;
    if (T === 0) throw new InvalidArgumentError('forward: the batch has no tokens');
    if (batch.positions.length !== T || batch.slotMapping.length !== T) {
      throw new InvalidArgumentError(`forward: tokenIds, positions and slotMapping must have the same length (${T}, ${batch.positions.length}, ${batch.slotMapping.length})`);
    }
    if (cache.numLayers !== c.numLayers || cache.numKvHeads !== c.numKvHeads || cache.headSize !== c.headDim) {
      throw new InvalidArgumentError(`forward: the cache is ${cache.numLayers} layers × ${cache.numKvHeads} heads × ${cache.headSize}, the model needs ${c.numLayers} × ${c.numKvHeads} × ${c.headDim}`);
    }
    for (const id of batch.tokenIds) {
      if (id < 0 || id >= c.vocabSize) throw new InvalidArgumentError(`forward: token id ${id} is outside the vocabulary (${c.vocabSize})`);
    }
    const capture = options.capture;
    if (capture !== undefined && typeof capture !== 'function') throw new InvalidArgumentError('forward: options.capture must be a function');
    const composition = options.composition ?? 'native';
    if (composition !== 'native' && composition !== 'ops') throw new InvalidArgumentError(`forward: options.composition must be 'native' or 'ops', got ${String(composition)}`);
    const rows = batch.logitRows ? Int32Array.from(batch.logitRows) : null;
    if (rows) for (const r of rows) if (!Number.isInteger(r) || r < 0 || r >= T) throw new InvalidArgumentError(`forward: logit row ${r} is outside the batch (${T} tokens)`);
    if (composition === 'native' && !capture) return this.forwardNative(cache, batch, rows);
    const stream = cache.stream;
    const opts = { stream };
    const temps: Array<{ dispose(): void }> = [];  // freed at the end, in stream order
    const keep = <T extends Tensor>(t: T): T => {
      temps.push(t);
      return t;
    };
    try {
      const ids = keep(Tensor.fromArray(batch.tokenIds, [T], opts));
      const slots = keep(Tensor.fromArray(batch.slotMapping, [T], opts));
      const positions = keep(Tensor.fromArray(batch.positions, [T], opts));
      const invFreq = keep(Tensor.fromArray(this.invFreq, [this.invFreq.length], opts));
      // Validated and uploaded once for every layer's attention.
      const uploaded = uploadAttentionMetadata(cache, T, { blockTables: batch.blockTables, seqLens: batch.seqLens, cuSeqLensQ: batch.cuSeqLensQ, slidingWindow: c.slidingWindow });
      temps.push(uploaded);
      const meta = { ...uploaded, slidingWindow: c.slidingWindow };
      const residual = keep(embedding(ids, this.embed, { dtype: this.dtype }));
      let delta: Tensor | null = null;  // what the last block added, not yet in `residual`
      const I = c.intermediateSize;
      for (let l = 0; l < this.layers.length; l++) {
        const w = this.layers[l]!;
        const p = `model.layers.${l}.`;
        const x = keep(delta ? rmsNorm(delta, w.inputNorm, c.rmsNormEps, { residual }) : rmsNorm(residual, w.inputNorm, c.rmsNormEps));
        if (capture) for (const proj of ['q_proj', 'k_proj', 'v_proj']) capture(`${p}self_attn.${proj}`, x);
        const q = keep(project(x, w.q, w.qBias)).view([T, c.numHeads, c.headDim]);
        const k = keep(project(x, w.k, w.kBias)).view([T, c.numKvHeads, c.headDim]);
        const v = keep(project(x, w.v, w.vBias)).view([T, c.numKvHeads, c.headDim]);
        temps.push(q, k, v);
        rope(q, k, positions, invFreq);
        cache.writeKv(l, k, v, slots);
        const attn = keep(pagedAttention(q, cache, l, meta)).view([T, c.numHeads * c.headDim]);
        temps.push(attn);
        capture?.(`${p}self_attn.o_proj`, attn);
        const o = keep(project(attn, w.o, null));
        const h = keep(rmsNorm(o, w.postNorm, c.rmsNormEps, { residual }));
        if (capture) for (const proj of ['gate_proj', 'up_proj']) capture(`${p}mlp.${proj}`, h);
        const gateUp = keep(Tensor.empty([T, 2 * I], { dtype: this.dtype, stream, category: 'activations' }));
        const gateView = keep(gateUp.slice(1, 0, I)), upView = keep(gateUp.slice(1, I, 2 * I));
        project(h, w.gate, null, { out: gateView });
        project(h, w.up, null, { out: upView });
        const act = keep(siluMul(gateUp));
        capture?.(`${p}mlp.down_proj`, act);
        delta = keep(project(act, w.down, null));
      }
      if (rows?.length === 0) return Tensor.empty([0, c.vocabSize], { dtype: 'float32', stream, category: 'activations' });
      const final = keep(rmsNorm(delta!, this.norm, c.rmsNormEps, { residual }));
      const picked = rows ? keep(embedding(keep(Tensor.fromArray(rows, [rows.length], opts)), final)) : final;
      return linear(picked, this.lmHead, null, { dtype: 'float32' });
    } finally {
      for (const t of temps) t.dispose();  // stream-ordered: freed after the work that reads them
    }
  }

  /**
   * Runs later decode steps on CUDA through graphs (include/pagedllm/decoder.h, DecoderGraphRunner):
   * a forward() that decodes one token for each of at most `maxBatch` sequences (all logit rows, or
   * none named) copies its inputs into fixed buffers padded to a batch bucket and replays the graph
   * captured for its batch and context buckets; anything else runs as before. `capture: false` runs
   * the same padded steps op by op (the baseline graphs are measured and tested against). The
   * buffers (activations, workspace) come from the device's pool when the first such step runs.
   * Not yet run on a GPU (2026-12-04): opt-in.
   */
  enableCudaGraphs(options: CudaGraphOptions): void {
    if (!this.weights) throw new InvalidArgumentError('Model has been disposed');
    if (this.device === 'cpu') throw new UnsupportedError('enableCudaGraphs: CUDA graphs need a CUDA device; the model is on cpu');
    for (const [k, v] of [['maxBatch', options.maxBatch], ['maxBlocksPerSeq', options.maxBlocksPerSeq]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new InvalidArgumentError(`enableCudaGraphs: ${k} must be a positive integer, got ${String(v)}`);
    }
    if (options.maxBatch > 65535) throw new InvalidArgumentError(`enableCudaGraphs: maxBatch ${options.maxBatch} exceeds 65535`);
    this.disableCudaGraphs();
    this.graphOptions = { maxBatch: options.maxBatch, maxBlocksPerSeq: options.maxBlocksPerSeq, capture: options.capture ?? true };
  }

  /** Drops the graphs and their buffers (stream-ordered); later steps run op by op. */
  disableCudaGraphs(): void {
    for (const g of this.graphs.values()) native().decoderGraphsDispose(g);
    this.graphs.clear();
    this.graphOptions = null;
  }

  /** What the CUDA graphs did on each stream (empty without enableCudaGraphs). */
  cudaGraphStats(): DecoderGraphStats[] {
    return [...this.graphs.values()].map((g) => native().decoderGraphStats(g));
  }

  /** forward() through the native decoder: the same ops, issued by one native call. */
  private forwardNative(cache: KvCache, batch: ForwardBatch, rows: Int32Array | null): Tensor {
    const c = this.config;
    const T = batch.tokenIds.length;
    const stream = cache.stream;
    const decoder = this.nativeDecoder(stream);
    const opts = { stream };
    const temps: Array<{ dispose(): void }> = [];
    const g = this.graphOptions;
    try {
      // Every integer input of the step in one upload: ids, positions, slots, logit rows, then the
      // attention metadata (block tables, sequence lengths, query offsets), checked here as
      // uploadAttentionMetadata checks them.
      const meta = hostAttentionMetadata(cache, T, { blockTables: batch.blockTables, seqLens: batch.seqLens, cuSeqLensQ: batch.cuSeqLensQ, slidingWindow: c.slidingWindow });
      const { numSeqs, maxBlocksPerSeq } = meta;
      const R = rows ? rows.length : T;
      const atTables = 3 * T + R, atSeqLens = atTables + meta.blockTables.length, atCu = atSeqLens + numSeqs;
      const packed = new Int32Array(atCu + (meta.cuSeqLensQ ? meta.cuSeqLensQ.length : 0));
      packed.set(batch.tokenIds, 0);
      packed.set(batch.positions, T);
      packed.set(batch.slotMapping, 2 * T);
      if (rows) packed.set(rows, 3 * T);
      packed.set(meta.blockTables, atTables);
      packed.set(meta.seqLens, atSeqLens);
      if (meta.cuSeqLensQ) packed.set(meta.cuSeqLensQ, atCu);
      const ints = Tensor.fromArray(packed, [packed.length], opts);
      temps.push(ints);
      // A graph step decodes one token per sequence, in order, and samples every row.
      const graphStep = g !== null && T > 0 && T <= g.maxBatch && numSeqs === T && maxBlocksPerSeq <= g.maxBlocksPerSeq &&
        meta.maxQueryLen <= 1 && (rows === null || (rows.length === T && rows.every((r, i) => r === i)));
      const workspace = graphStep ? null : Tensor.empty([native().decoderWorkspaceBytes(decoder, T, R)], { dtype: 'uint8', stream, category: 'activations' });
      if (workspace) temps.push(workspace);
      const logits = Tensor.empty([R, c.vocabSize], { dtype: 'float32', stream, category: 'activations' });
      try {
        const [h, off] = ints.nativeRegion();
        const at = (i: number): [NativeBufferHandle, number] => [h, off + 4 * i];
        const cacheRegions = this.cacheRegions(cache);
        const shape = { numBlocks: cache.numBlocks, numKvHeads: cache.numKvHeads, blockSize: cache.blockSize, headSize: cache.headSize };
        if (graphStep) {
          // One token per sequence in order: the runner takes no cu_seqlens and all rows.
          native().decoderGraphForward(
            this.graphsFor(stream, decoder), decoder, stream.handle, T, numSeqs, maxBlocksPerSeq, meta.maxSeqLen, 1, T, kvDtypeCode(cache.kvDtype), shape,
            ...at(0), ...at(T), ...at(2 * T), ...at(atTables), ...at(atSeqLens), null, 0,
            null, 0, null, 0, ...logits.nativeRegion(), ...cacheRegions,
          );
          return logits;
        }
        native().decoderForward(
          decoder, stream.handle, T, numSeqs, maxBlocksPerSeq, meta.maxSeqLen, meta.maxQueryLen, R, kvDtypeCode(cache.kvDtype), shape,
          ...at(0), ...at(T), ...at(2 * T), ...at(atTables), ...at(atSeqLens), ...(meta.cuSeqLensQ ? at(atCu) : [null, 0]),
          ...(rows ? at(3 * T) : [null, 0]), ...workspace!.nativeRegion(), ...logits.nativeRegion(), ...cacheRegions,
        );
      } catch (error) {
        logits.dispose();
        throw error;
      }
      return logits;
    } finally {
      for (const t of temps) t.dispose();  // stream-ordered: freed after the step
    }
  }

  /**
   * The native regions of a cache's layers (key, value, key scales, value scales), as decoderForward
   * takes them: made once per cache (its buffers never move) instead of 4 calls per layer per step.
   */
  private cacheRegions(cache: KvCache): Array<NativeBufferHandle | number | null> {
    let regions = this.regionsByCache.get(cache);
    if (!regions) {
      const optional = (t: Tensor | undefined | null): [NativeBufferHandle | null, number] => (t ? t.nativeRegion() : [null, 0]);
      regions = [];
      for (const l of cache.layers) regions.push(...l.key.nativeRegion(), ...l.value.nativeRegion(), ...optional(l.keyScales), ...optional(l.valueScales));
      this.regionsByCache.set(cache, regions);
    }
    cache.layers[0]?.key.nativeRegion();  // ERR_DISPOSED once the cache is gone
    return regions;
  }

  /** This stream's graph runner (created at its first graph step). */
  private graphsFor(stream: Stream, decoder: NativeDecoderHandle): NativeDecoderGraphsHandle {
    let g = this.graphs.get(stream);
    if (!g) {
      const o = this.graphOptions!;
      g = native().createDecoderGraphs(decoder, stream.handle, o.maxBatch, o.maxBlocksPerSeq, o.capture ?? true);
      this.graphs.set(stream, g);
    }
    return g;
  }

  /** The native decoder over this model's weights, ordered after their streams on `stream`. */
  private nativeDecoder(stream: Stream): NativeDecoderHandle {
    const c = this.config;
    if (!this.decoder) {
      const invFreq = Tensor.fromArray(this.invFreq, [this.invFreq.length], { stream });
      try {
        const n = native();
        const handle = n.createDecoder(
          stream.handle, c.hiddenSize, c.numHeads, c.numKvHeads, c.headDim, c.intermediateSize, c.vocabSize, c.numLayers,
          dtypeCode(this.dtype), dtypeCode(this.embed.dtype), dtypeCode(this.norm.dtype), dtypeCode(this.lmHead.dtype),
          2 * this.invFreq.length, c.slidingWindow ?? 0, c.rmsNormEps, 1 / Math.sqrt(c.headDim),
          ...this.embed.nativeRegion(), ...this.norm.nativeRegion(), ...this.lmHead.nativeRegion(), ...invFreq.nativeRegion(),
        );
        const none: [null, number] = [null, 0];
        const projection = (w: Projection, bias: Tensor | null): Array<number | NativeBufferHandle | null> => {
          const b = bias ? bias.nativeRegion() : none;
          const biasDtype = dtypeCode(bias?.dtype ?? 'float32');
          if (w instanceof Tensor) return [0, dtypeCode(w.dtype), 0, biasDtype, ...w.nativeRegion(), ...none, ...none, ...none, ...b];
          const G = w.groupSize === -1 ? w.qweight.shape[0]! : w.groupSize;
          return [w.layout === 'slab8' ? 2 : 1, dtypeCode('float16'), G, biasDtype, ...none, ...w.qweight.nativeRegion(), ...w.qzeros.nativeRegion(), ...w.scales.nativeRegion(), ...b];
        };
        this.layers.forEach((w, l) => {
          if (w.inputNorm.dtype !== w.postNorm.dtype) throw new UnsupportedError('forward: the two norms of a layer have different dtypes');
          n.decoderSetLayer(
            handle, stream.handle, l, dtypeCode(w.inputNorm.dtype), ...w.inputNorm.nativeRegion(), ...w.postNorm.nativeRegion(),
            ...projection(w.q, w.qBias), ...projection(w.k, w.kBias), ...projection(w.v, w.vBias), ...projection(w.o, null),
            ...projection(w.gate, null), ...projection(w.up, null), ...projection(w.down, null),
          );
        });
        this.decoder = { handle, invFreq, synced: new Set() };
      } catch (error) {
        invFreq.dispose();
        throw error;
      }
    }
    if (!this.decoder.synced.has(stream)) {
      // The weights may have been written on other streams (the loader's): order this one after them once.
      const others = new Set<Stream>([this.decoder.invFreq.stream]);
      for (const t of this.weights!.values()) others.add(t.stream);
      others.delete(stream);
      for (const s of others) stream.wait(s.record());
      this.decoder.synced.add(stream);
    }
    return this.decoder.handle;
  }

  dispose(): void {
    if (!this.weights) return;
    this.disableCudaGraphs();  // its buffers first, and the graphs that point at the weights
    if (this.decoder) {
      // Weights are freed in their own streams' order: after the steps other streams ran on them.
      const streams = new Set<Stream>();
      for (const t of this.weights.values()) streams.add(t.stream);
      for (const used of this.decoder.synced) {
        const done = used.record();
        for (const s of streams) if (s !== used) s.wait(done);
      }
      this.decoder.invFreq.dispose();
      this.decoder = null;
    }
    for (const t of this.weights.values()) t.dispose();
    this.weights = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}
