/**
 * One request, one call: a convenience over the {@link Engine} for scripts and tests. It sizes an
 * engine for exactly this request (a KV cache of ceil((prompt + maxTokens) / blockSize) blocks,
 * plus the null block), runs it, and frees the cache. Services keep one Engine instead.
 *
 * @example
 * const model = await Model.load(dir);
 * const { tokenIds } = await generate(model, [1, 450, 4996], { maxTokens: 16, sampling: { temperature: 0.7, topP: 0.9, seed: 1 } });
 */
import { Engine } from './engine';
import { InvalidArgumentError } from './errors';
import { type KvCacheDType } from './kv-cache';
import { type Model } from './model';
import { type SamplingParams } from './sampling';

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
  /** Arrival to the first token. */
  prefillMs: number;
  /** Tokens after the first per second (NaN when fewer than two were generated). */
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
  const numBlocks = Math.ceil(total / blockSize) + 1;
  const engine = await Engine.create({
    model, logger: null, blockSize, kvDtype: options.kvDtype, maxModelLen: total, maxNumSeqs: 1,
    maxNumBatchedTokens: Math.max(promptIds.length, 1), budget: { numBlocks }, prefixCaching: false, watermark: 0,
  });
  try {
    const stream = engine.generate({ promptTokenIds: promptIds }, {
      ...(options.sampling ?? { temperature: 0 }), maxTokens, stopTokenIds: options.stopTokenIds, logprobs: options.logprobs, ignoreEos: true,
    });
    if (options.onToken) for await (const chunk of stream) for (const id of chunk.tokenIds) options.onToken(id);
    const r = await stream.result();
    const choice = r.choices[0]!;
    return {
      tokenIds: choice.tokenIds, ...(options.logprobs ? { logprobs: choice.logprobs } : {}), finishReason: choice.finishReason,
      promptTokens: r.usage.promptTokens, prefillMs: r.timings.timeToFirstTokenMs, decodeTokensPerSecond: r.timings.decodeTokensPerSecond, kvBlocks: numBlocks,
    };
  } finally {
    engine.dispose();
  }
}
