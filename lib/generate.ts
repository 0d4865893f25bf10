/**
 * Generation for one request: prefill the prompt, then decode a token at a time through the
 * paged KV cache (BlockManager slots, KvCache, Model.forward), sampling each token
 * (lib/sampling.ts; greedy by default). The continuous-batching Engine (many requests,
 * preemption) builds on the same pieces; this is the single-request path the CLI and the demo
 * use today.
 *
 * @example
 * const model = await Model.load(dir);
 * const { tokenIds } = await generate(model, [1, 450, 4996], { maxTokens: 16, sampling: { temperature: 0.7, topP: 0.9, seed: 1 } });
 */
import { BlockManager } from './block-manager';
import { type DeviceSpec } from './device';
import { InvalidArgumentError } from './errors';
import { KvCache, type KvCacheDType } from './kv-cache';
import { type Model } from './model';
import { checkSamplingParams, sampleToken, samplerRng, type SamplingParams } from './sampling';

export interface GenerateOptions {
  maxTokens: number;
  /** Stop after emitting one of these (it is included in the output). */
  stopTokenIds?: readonly number[];
  /** Default 16. */
  blockSize?: number;
  /** Default float32 on the CPU, float16 elsewhere. */
  kvDtype?: KvCacheDType;
  /** Default greedy ({ temperature: 0 }). */
  sampling?: SamplingParams;
  /** Return each token's logprob under the sampling distribution. */
  logprobs?: boolean;
  /** Called with each new token as soon as it is known. */
  onToken?: (tokenId: number) => void;
}

export interface GenerateResult {
  tokenIds: number[];
  /** With `logprobs`: one per token. */
  logprobs?: number[];
  finishReason: 'length' | 'stop';
  promptTokens: number;
  prefillMs: number;
  decodeMs: number;
  /** Tokens after the first over decodeMs (NaN when fewer than two were generated). */
  decodeTokensPerSecond: number;
  kvBlocks: number;
}

export async function generate(model: Model, promptIds: readonly number[], options: GenerateOptions): Promise<GenerateResult> {
  const { maxTokens } = options;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new InvalidArgumentError(`generate: maxTokens must be a positive integer, got ${String(maxTokens)}`);
  if (!Array.isArray(promptIds) || promptIds.length === 0) throw new InvalidArgumentError('generate: the prompt needs at least one token');
  const total = promptIds.length + maxTokens;
  if (total > model.config.maxPositionEmbeddings) {
    throw new InvalidArgumentError(`generate: prompt (${promptIds.length}) + maxTokens (${maxTokens}) exceeds the model's ${model.config.maxPositionEmbeddings} positions`);
  }
  const blockSize = options.blockSize ?? 16;
  const numBlocks = Math.ceil(total / blockSize) + 1;  // + the BlockManager's null block
  const kvDtype = options.kvDtype ?? (model.device === 'cpu' ? 'float32' : 'float16');
  const cache = new KvCache({ ...model.kvCacheShape(), numBlocks, blockSize, kvDtype, device: model.device as DeviceSpec });
  const blocks = new BlockManager({ numBlocks, blockSize, watermark: 0 });
  const stops = new Set(options.stopTokenIds ?? []);
  const sampling = checkSamplingParams(options.sampling ?? { temperature: 0 });
  const rng = samplerRng(sampling.seed);
  const out: number[] = [];
  const logprobs: number[] = [];
  const pick = (logits: Float32Array): number => {
    const s = sampleToken(logits, sampling, rng, { prompt: promptIds, output: out });
    if (options.logprobs) logprobs.push(s.logprob);
    return s.tokenId;
  };
  try {
    const seq = 'request';
    const started = performance.now();
    const first = blocks.allocateSlots(seq, promptIds.length)!;
    const prefill = model.forward(cache, {
      tokenIds: Int32Array.from(promptIds), positions: Int32Array.from(promptIds, (_, i) => i), slotMapping: first.slotMapping,
      blockTables: [[...blocks.blockTable(seq)]], seqLens: [promptIds.length], cuSeqLensQ: [0, promptIds.length],
      logitRows: [promptIds.length - 1],
    });
    let next = pick((await prefill.toArray()) as Float32Array);
    prefill.dispose();
    const prefillMs = performance.now() - started;
    const decodeStart = performance.now();
    let finishReason: 'length' | 'stop' = 'length';
    for (;;) {
      out.push(next);
      options.onToken?.(next);
      if (stops.has(next)) {
        finishReason = 'stop';
        break;
      }
      if (out.length === maxTokens) break;
      const position = promptIds.length + out.length - 1;
      const slot = blocks.allocateSlots(seq, 1)!;  // sized for prompt + maxTokens: always fits
      const logits = model.forward(cache, {
        tokenIds: Int32Array.of(next), positions: Int32Array.of(position), slotMapping: slot.slotMapping,
        blockTables: [[...blocks.blockTable(seq)]], seqLens: [position + 1],
      });
      next = pick((await logits.toArray()) as Float32Array);
      logits.dispose();
    }
    const decodeMs = performance.now() - decodeStart;
    return {
      tokenIds: out, ...(options.logprobs ? { logprobs } : {}), finishReason, promptTokens: promptIds.length, prefillMs, decodeMs,
      decodeTokensPerSecond: out.length > 1 ? ((out.length - 1) * 1000) / decodeMs : NaN, kvBlocks: numBlocks,
    };
  } finally {
    cache.dispose();
  }
}
