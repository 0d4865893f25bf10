/**
 * Tokenizer: a model folder's `tokenizer.json` through `@huggingface/tokenizers`
 * (pure JS, CommonJS build), with the BOS / EOS ids a generate loop needs and a
 * streaming decoder for generated text.
 *
 * Where the special ids come from:
 * - BOS: `tokenizer_config.json`'s `bos_token`, else `generation_config.json`'s,
 *   else `config.json`'s `bos_token_id`.
 * - EOS: every id named by `tokenizer_config.json`'s `eos_token`,
 *   `generation_config.json`'s `eos_token_id` (a number or a list) and, when
 *   neither file names one, `config.json`'s — generation stops at any of them,
 *   as transformers and vLLM do.
 *
 * `encode(text)` adds what the tokenizer's post-processor adds (BOS for Llama);
 * a `tokenizer_config.json` with `add_bos_token` / `add_eos_token` true makes
 * sure the ids start / end with them even when `tokenizer.json` has no
 * post-processor (as transformers' Llama tokenizer does). `decode` honours the
 * folder's `clean_up_tokenization_spaces` (default false, as in transformers 4.45+).
 *
 * @example
 * const tok = await Tokenizer.fromFolder('/models/llama');
 * const ids = tok.encode('Hello, world');          // [bos, ...]
 * const stream = tok.createStreamDecoder({ skipSpecialTokens: true });
 * for (const id of generated) process.stdout.write(stream.push(id));
 * process.stdout.write(stream.flush());
 */
import * as path from 'node:path';

import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

import { InvalidArgumentError, ModelFormatError } from './errors';
import { isJsonObject, readJsonObject, readOptionalJsonObject, type JsonObject } from './json-file';

export interface EncodeOptions {
  /** Add the special tokens the tokenizer adds around a text (BOS for Llama). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out special tokens (BOS, EOS, ...). Default false. */
  skipSpecialTokens?: boolean;
}

export interface StreamDecoderOptions extends DecodeOptions {
  /**
   * Ids that come before the streamed ones (the prompt): never emitted, but
   * the last few give the first streamed ids their context (a leading space
   * that a decoder would strip at the start of a text, say).
   */
  promptIds?: readonly number[];
}

/** The JSON a tokenizer is built from: tokenizer.json, and the optional files beside it. */
export interface TokenizerSources {
  tokenizer: JsonObject;
  tokenizerConfig?: JsonObject | null;
  generationConfig?: JsonObject | null;
  config?: JsonObject | null;
  /** Where they came from, for messages (default "tokenizer.json"). */
  source?: string;
}

// The model types of tokenizer.json that @huggingface/tokenizers implements.
const MODEL_TYPES = ['BPE', 'Unigram', 'WordPiece'];

// How many prompt ids give the first streamed ids their context (vLLM uses 5).
const STREAM_CONTEXT_IDS = 5;
const REPLACEMENT = '\uFFFD';

/** A special token named in a config: a string, or an AddedToken object `{ content }`. */
function tokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (isJsonObject(value) && typeof value.content === 'string') return value.content;
  return null;
}

export class Tokenizer {
  /** Ids run from 0 to vocabSize − 1 (the model's vocabulary may be larger). */
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  /** Generation ends at any of these. */
  readonly eosTokenIds: readonly number[];
  /** The ids of special added tokens (skipped by `skipSpecialTokens`). */
  readonly specialTokenIds: ReadonlySet<number>;
  /** The tokenizer.json it was built from (for messages). */
  readonly source: string;
  private readonly hf: HfTokenizer;
  private readonly addBos: boolean;
  private readonly addEos: boolean;
  private readonly cleanUpSpaces: boolean;

  private constructor(sources: TokenizerSources) {
    const source = sources.source ?? 'tokenizer.json';
    this.source = source;
    const modelType = (sources.tokenizer.model as JsonObject).type;
    if (!MODEL_TYPES.includes(modelType as string)) {
      throw new ModelFormatError(`${source}: unsupported tokenizer model type ${JSON.stringify(modelType)} (supported: ${MODEL_TYPES.join(', ')})`);
    }
    const tokenizerConfig = sources.tokenizerConfig ?? {};
    const clean = tokenizerConfig.clean_up_tokenization_spaces;
    this.cleanUpSpaces = clean === true;
    try {
      // The library reads clean_up_tokenization_spaces from the config (its default is true): pass ours.
      this.hf = new HfTokenizer({ added_tokens: [], ...sources.tokenizer }, { ...tokenizerConfig, clean_up_tokenization_spaces: this.cleanUpSpaces });
    } catch (error) {
      throw new ModelFormatError(`${source}: cannot build the tokenizer: ${(error as Error).message}`, { cause: error });
    }

    let size = 0;
    for (const id of this.hf.get_vocab(true).values()) size = Math.max(size, id + 1);
    this.vocabSize = size;

    const special = new Set<number>();
    const added = Array.isArray(sources.tokenizer.added_tokens) ? sources.tokenizer.added_tokens : [];
    for (const token of added) {
      if (isJsonObject(token) && token.special === true && typeof token.id === 'number') special.add(token.id);
    }
    this.specialTokenIds = special;

    // A special id named by a config file: it must be a token of this vocabulary.
    const checkId = (id: unknown, where: string): number | null => {
      if (id === undefined || id === null) return null;
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new ModelFormatError(`${where} is ${JSON.stringify(id)}, not a token id of the tokenizer (0 to ${this.vocabSize - 1})`);
      }
      return id;
    };
    const idOfToken = (value: unknown, where: string): number | null => {
      const content = tokenContent(value);
      if (content === null) return null;
      const id = this.hf.token_to_id(content);
      if (id === undefined) throw new ModelFormatError(`${where} ${JSON.stringify(content)} is not a token of the tokenizer`);
      return id;
    };
    const dir = sources.source ? path.dirname(sources.source) : '.';
    const at = (file: string, key: string): string => `${path.join(dir, file)}: ${key}`;
    const generation = sources.generationConfig ?? {};
    const config = sources.config ?? {};

    this.bosTokenId =
      idOfToken(tokenizerConfig.bos_token, at('tokenizer_config.json', 'bos_token')) ??
      checkId(generation.bos_token_id, at('generation_config.json', 'bos_token_id')) ??
      checkId(config.bos_token_id, at('config.json', 'bos_token_id'));

    const eos: number[] = [];
    const addEosIds = (value: unknown, where: string): void => {
      for (const v of Array.isArray(value) ? value : [value]) {
        const id = checkId(v, where);
        if (id !== null && !eos.includes(id)) eos.push(id);
      }
    };
    const tokenizerEos = idOfToken(tokenizerConfig.eos_token, at('tokenizer_config.json', 'eos_token'));
    if (tokenizerEos !== null) eos.push(tokenizerEos);
    addEosIds(generation.eos_token_id, at('generation_config.json', 'eos_token_id'));
    if (eos.length === 0) addEosIds(config.eos_token_id, at('config.json', 'eos_token_id'));
    this.eosTokenIds = Object.freeze(eos);

    this.addBos = tokenizerConfig.add_bos_token === true && this.bosTokenId !== null;
    this.addEos = tokenizerConfig.add_eos_token === true && eos.length > 0;
  }

  /**
   * Reads `dir`/tokenizer.json and, when present, tokenizer_config.json,
   * generation_config.json and config.json. A missing or malformed file is
   * ERR_MODEL_FORMAT naming it.
   */
  static async fromFolder(dir: string): Promise<Tokenizer> {
    const file = path.join(dir, 'tokenizer.json');
    const tokenizer = await readJsonObject(file, 'tokenizer.json');
    if (!isJsonObject(tokenizer.model)) throw new ModelFormatError(`${file}: invalid tokenizer.json: no "model" object`);
    const [tokenizerConfig, generationConfig, config] = await Promise.all([
      readOptionalJsonObject(path.join(dir, 'tokenizer_config.json'), 'tokenizer_config.json'),
      readOptionalJsonObject(path.join(dir, 'generation_config.json'), 'generation_config.json'),
      readOptionalJsonObject(path.join(dir, 'config.json'), 'config.json'),
    ]);
    return new Tokenizer({ tokenizer, tokenizerConfig, generationConfig, config, source: file });
  }

  /** A tokenizer from already-parsed JSON (see {@link TokenizerSources}). */
  static fromJSON(sources: TokenizerSources): Tokenizer {
    if (!isJsonObject(sources) || !isJsonObject(sources.tokenizer)) throw new InvalidArgumentError('Tokenizer.fromJSON expects { tokenizer: <tokenizer.json object>, ... }');
    if (!isJsonObject(sources.tokenizer.model)) throw new ModelFormatError(`${sources.source ?? 'tokenizer.json'}: invalid tokenizer.json: no "model" object`);
    return new Tokenizer(sources);
  }

  /** The ids of `text`. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new InvalidArgumentError(`encode expects a string, got ${typeof text}`);
    const addSpecialTokens = options.addSpecialTokens ?? true;
    const ids = this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    if (addSpecialTokens) {
      if (this.addBos && ids[0] !== this.bosTokenId) ids.unshift(this.bosTokenId!);
      if (this.addEos && !this.eosTokenIds.includes(ids[ids.length - 1]!)) ids.push(this.eosTokenIds[0]!);
    }
    return ids;
  }

  /** The text of `ids` (ids must be tokens of this tokenizer). */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    return this.decodeIds(this.checkIds(ids, 'decode'), options.skipSpecialTokens ?? false, this.cleanUpSpaces);
  }

  /** The token string of `id` (byte-level symbols for byte-level BPE), or undefined. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /** The id of token string `token`, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  isSpecial(id: number): boolean {
    return this.specialTokenIds.has(id);
  }

  /** A decoder for ids that arrive one at a time (see {@link StreamDecoder}). */
  createStreamDecoder(options: StreamDecoderOptions = {}): StreamDecoder {
    const prompt = options.promptIds === undefined ? [] : this.checkIds(options.promptIds, 'createStreamDecoder: promptIds');
    return new StreamDecoder(this, options.skipSpecialTokens ?? false, prompt);
  }

  /** @internal decodes checked ids; the stream decoder never cleans up spaces (its deltas must add up). */
  decodeIds(ids: readonly number[], skipSpecialTokens: boolean, cleanUpSpaces: boolean): string {
    if (ids.length === 0) return ''; // the library rejects an empty list
    return this.hf.decode(ids as number[], { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: cleanUpSpaces });
  }

  /** @internal */
  checkIds(ids: ArrayLike<number>, what: string): number[] {
    if (ids === null || typeof ids !== 'object' || typeof ids.length !== 'number') throw new InvalidArgumentError(`${what}: expected an array of token ids`);
    const out = Array.from(ids);
    for (let i = 0; i < out.length; i++) {
      const id = out[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new InvalidArgumentError(`${what}: id ${String(id)} at index ${i} is not a token id (0 to ${this.vocabSize - 1})`);
      }
    }
    return out;
  }
}

/**
 * Turns ids that arrive one at a time into text deltas whose concatenation is
 * the decoded text, never emitting a broken character.
 *
 * A token may hold part of a UTF-8 sequence (byte-level BPE splits a CJK
 * character or an emoji over several tokens), and decoding a window that ends
 * inside one gives U+FFFD. So each `push` decodes a small window of recent ids
 * with and without the new ones, and emits the difference only when the text no
 * longer ends in U+FFFD; until then the ids wait. The window restarts after
 * every emission, keeping the previous ids as context (the scheme of vLLM's
 * incremental detokenizer). Deltas never apply `clean_up_tokenization_spaces`.
 *
 * Ids that never complete a character (a model can emit invalid bytes) come
 * out, as U+FFFD, once a later id does decode cleanly, or from `flush()`.
 */
export class StreamDecoder {
  private readonly ids: number[];
  // ids[prefixStart, readStart) is context already emitted; ids[readStart, ...) wait.
  private prefixStart: number;
  private readStart: number;
  private emitted = '';

  /** @internal use Tokenizer.createStreamDecoder */
  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly skipSpecialTokens: boolean,
    promptIds: readonly number[],
  ) {
    this.ids = promptIds.slice();
    this.readStart = this.ids.length;
    this.prefixStart = Math.max(0, this.ids.length - STREAM_CONTEXT_IDS);
  }

  /** All text emitted so far. */
  get text(): string {
    return this.emitted;
  }

  /** Adds one id; returns the new text it completes ('' while a character is incomplete). */
  push(id: number): string {
    this.ids.push(this.tokenizer.checkIds([id], 'StreamDecoder.push')[0]!);
    const prefix = this.decode(this.prefixStart, this.readStart);
    const full = this.decode(this.prefixStart, this.ids.length);
    if (full.length <= prefix.length || full.endsWith(REPLACEMENT)) return '';
    return this.advance(full.slice(prefix.length));
  }

  /** Whatever is still held back (U+FFFD for bytes that never completed); call once the ids end. */
  flush(): string {
    if (this.readStart === this.ids.length) return '';
    const prefix = this.decode(this.prefixStart, this.readStart);
    const full = this.decode(this.prefixStart, this.ids.length);
    return this.advance(full.length > prefix.length ? full.slice(prefix.length) : '');
  }

  private advance(delta: string): string {
    this.prefixStart = this.readStart;
    this.readStart = this.ids.length;
    this.emitted += delta;
    return delta;
  }

  private decode(from: number, to: number): string {
    return this.tokenizer.decodeIds(this.ids.slice(from, to), this.skipSpecialTokens, false);
  }
}
