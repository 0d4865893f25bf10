// Tokenizer over @huggingface/tokenizers: folders load with their BOS / EOS
// ids; encode/decode round-trip ASCII, multi-byte UTF-8 (CJK, emoji) and
// random text; the stream decoder's deltas never hold U+FFFD for valid text
// split inside characters and add up to decode(); bad folders are
// ERR_MODEL_FORMAT naming the file.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { makeTestModel, makeTestTokenizer } from '../../lib/test-model';
import { Tokenizer } from '../../lib/tokenizer';
import { rng } from './helpers';

let root: string;
let folder: string;
let tok: Tokenizer;
beforeAll(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-tokenizer-'));
  folder = path.join(root, 'model');
  await makeTestModel({ out: folder, layers: 1, hidden: 16, heads: 2, kvHeads: 1, intermediate: 16 });
  tok = await Tokenizer.fromFolder(folder);
});
afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

const ASCII = 'The quick brown fox jumps over the lazy dog. 0123456789 !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~ \t\n  end';
const CJK = '日本語のテキストです。你好，世界！한국어 텍스트';
const EMOJI = 'Emoji: 🙂🚀 👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️ — done';
const MIXED = `café naïve Straße Привет ${CJK} ${EMOJI} 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u0000\u007f\u00a0`;

/** Random text over ASCII, Latin-1, Cyrillic, CJK, Hangul and astral code points (no lone surrogates). */
function randomText(seed: number, length: number): string {
  const random = rng(seed);
  const ranges: [number, number][] = [[0x20, 0x7e], [0x09, 0x0d], [0xa0, 0xff], [0x400, 0x4ff], [0x3040, 0x30ff], [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0x1f300, 0x1f6ff], [0x10000, 0x1ffff]];
  let text = '';
  for (let i = 0; i < length; i++) {
    const [lo, hi] = ranges[Math.floor(random() * ranges.length)]!;
    text += String.fromCodePoint(lo + Math.floor(random() * (hi - lo + 1)));
  }
  return text;
}

const hasLoneSurrogate = (s: string): boolean => /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);

describe('a test-model folder', () => {
  test('special tokens and ids come from tokenizer_config.json and generation_config.json', () => {
    expect(tok.vocabSize).toBe(512);
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenIds).toEqual([2]);
    expect([...tok.specialTokenIds].sort()).toEqual([0, 1, 2]);
    expect([tok.isSpecial(2), tok.isSpecial(3)]).toEqual([true, false]);
    expect(tok.idToToken(1)).toBe('<s>');
    expect(tok.tokenToId('</s>')).toBe(2);
  });

  test('encode adds BOS unless addSpecialTokens is false; decode keeps or skips special tokens', () => {
    const ids = tok.encode('Hello world');
    expect(ids[0]).toBe(1);
    expect(tok.encode('Hello world', { addSpecialTokens: false })).toEqual(ids.slice(1));
    expect(tok.decode(ids)).toBe('<s>Hello world');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('Hello world');
    expect(tok.decode([...ids, 2], { skipSpecialTokens: true })).toBe('Hello world');
    expect(tok.decode([])).toBe('');
    expect(tok.encode('')).toEqual([1]);
    // A special token's text in the input is that token.
    expect(tok.encode('a</s>b', { addSpecialTokens: false })).toContain(2);
  });

  test.each([
    ['ASCII', ASCII],
    ['CJK', CJK],
    ['emoji', EMOJI],
    ['mixed scripts and control characters', MIXED],
  ])('%s round-trips: decode(encode(text)) === text', (_, text) => {
    const ids = tok.encode(text, { addSpecialTokens: false });
    expect(ids.every((id) => Number.isInteger(id) && id >= 3 && id < 512)).toBe(true);
    expect(tok.decode(ids)).toBe(text);
  });

  test('random text round-trips (200 strings over several scripts and astral planes)', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const text = randomText(seed, 1 + (seed % 40));
      const back = tok.decode(tok.encode(text), { skipSpecialTokens: true });
      if (back !== text) throw new Error(`seed ${seed}: ${JSON.stringify(text)} came back as ${JSON.stringify(back)}`);
    }
  });

  test('decode rejects ids outside the vocabulary', () => {
    for (const ids of [[512], [-1], [1.5], [NaN]]) {
      expect(() => tok.decode(ids)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('is not a token id (0 to 511)') }));
    }
    expect(() => tok.encode(3 as unknown as string)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('streaming decode', () => {
  /** Streams `ids`, checking every delta; returns the deltas. */
  function stream(t: Tokenizer, ids: number[], options: Parameters<Tokenizer['createStreamDecoder']>[0] = {}): string[] {
    const decoder = t.createStreamDecoder(options);
    const deltas: string[] = [];
    ids.forEach((id, i) => {
      const delta = decoder.push(id);
      if (delta.includes('\uFFFD') || hasLoneSurrogate(delta)) throw new Error(`id ${i} (${id}) gave a broken delta ${JSON.stringify(delta)}`);
      deltas.push(delta);
    });
    const rest = decoder.flush();
    deltas.push(rest);
    expect(decoder.text).toBe(deltas.join(''));
    return deltas;
  }

  test.each([
    ['ASCII', ASCII],
    ['CJK', CJK],
    ['emoji', EMOJI],
    ['mixed', MIXED],
  ])('%s: no delta holds U+FFFD, and the deltas add up to the text', (_, text) => {
    const ids = tok.encode(text, { addSpecialTokens: false });
    expect(stream(tok, ids).join('')).toBe(text);
  });

  test('the multi-byte texts really are split inside characters (so the test above can fail)', () => {
    for (const text of [CJK, EMOJI]) {
      const ids = tok.encode(text, { addSpecialTokens: false });
      const broken = ids.filter((id) => tok.decode([id]).includes('\uFFFD'));
      expect(broken.length).toBeGreaterThan(2);
      // A naive per-id decode would emit replacement characters.
      expect(ids.map((id) => tok.decode([id])).join('')).toContain('\uFFFD');
    }
  });

  test('random text: deltas never broken, always adding up (200 strings)', () => {
    for (let seed = 1000; seed < 1200; seed++) {
      const text = randomText(seed, 1 + (seed % 30));
      const ids = tok.encode(text, { addSpecialTokens: false });
      const joined = stream(tok, ids).join('');
      if (joined !== text) throw new Error(`seed ${seed}: streamed ${JSON.stringify(joined)}, expected ${JSON.stringify(text)}`);
    }
  });

  test('a held-back character comes out whole with the id that completes it', () => {
    const bytes = Array.from(Buffer.from('日', 'utf8')); // e6 97 a5
    const byteId = (b: number): number => 3 + b; // the test vocabulary's byte tokens
    const decoder = tok.createStreamDecoder();
    expect(decoder.push(byteId(bytes[0]!))).toBe('');
    expect(decoder.push(byteId(bytes[1]!))).toBe('');
    expect(decoder.push(byteId(bytes[2]!))).toBe('日');
    expect(decoder.push(tok.encode('!', { addSpecialTokens: false })[0]!)).toBe('!');
  });

  test('bytes that never form a character come out as U+FFFD once text follows, or from flush()', () => {
    const decoder = tok.createStreamDecoder();
    expect(decoder.push(3 + 0x80)).toBe(''); // a lone continuation byte
    expect(decoder.push(3 + 0x41)).toBe('\uFFFDA');
    expect(decoder.push(3 + 0xe6)).toBe(''); // a lead byte with nothing after it
    expect(decoder.flush()).toBe('\uFFFD');
    expect(decoder.flush()).toBe('');
    expect(decoder.text).toBe('\uFFFDA\uFFFD');
  });

  test('special tokens: kept as text, or skipped', () => {
    const ids = [1, ...tok.encode('Hi 🙂', { addSpecialTokens: false }), 2];
    expect(stream(tok, ids).join('')).toBe('<s>Hi 🙂</s>');
    expect(stream(tok, ids, { skipSpecialTokens: true }).join('')).toBe('Hi 🙂');
  });

  test('promptIds give context and are not emitted', () => {
    const prompt = tok.encode('Question: 日本');
    const generated = tok.encode(' 語です。🙂', { addSpecialTokens: false });
    const deltas = stream(tok, generated, { promptIds: prompt });
    expect(deltas.join('')).toBe(' 語です。🙂');
    expect(() => tok.createStreamDecoder({ promptIds: [9999] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('a SentencePiece-style tokenizer (Metaspace normalizer, byte fallback, a Strip decoder, as Llama 2 and Mistral ship)', () => {
  // Written here by hand: ▁ marks spaces, characters outside the vocabulary fall back to <0xNN> byte tokens.
  function sentencePieceTokenizer(): Tokenizer {
    const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
    for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
    for (const piece of ['▁', ...'abcdefghijklmnopqrstuvwxyzHW,.!', '▁w', 'or', '▁wor', 'ld', '▁world', 'He', 'll', 'Hell', 'Hello', '▁Hello']) vocab[piece] = Object.keys(vocab).length;
    const merges = ['▁ w', 'o r', '▁w or', 'l d', '▁wor ld', 'H e', 'l l', 'He ll', 'Hell o', '▁ Hello'];
    const special = (id: number, content: string): object => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    return Tokenizer.fromJSON({
      tokenizer: {
        version: '1.0',
        added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
        normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
        pre_tokenizer: null,
        post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } },
        decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
        model: { type: 'BPE', dropout: null, unk_token: '<unk>', fuse_unk: true, byte_fallback: true, vocab, merges },
      },
      tokenizerConfig: { bos_token: '<s>', eos_token: '</s>', add_bos_token: true, clean_up_tokenization_spaces: false },
      source: '/virtual/tokenizer.json',
    });
  }

  test('round trip, and a stream whose deltas keep the spaces the decoder strips at the start', () => {
    const sp = sentencePieceTokenizer();
    expect([sp.bosTokenId, sp.eosTokenIds]).toEqual([1, [2]]);
    const text = 'Hello world, 日本 🙂 Hello!';
    const ids = sp.encode(text);
    expect(ids[0]).toBe(1);
    expect(ids).toContain(sp.tokenToId('▁Hello'));
    expect(ids).toContain(3 + 0xe6); // 日 fell back to bytes
    expect(sp.decode(ids, { skipSpecialTokens: true })).toBe(text);
    const decoder = sp.createStreamDecoder({ skipSpecialTokens: true });
    const deltas = ids.map((id) => decoder.push(id));
    deltas.push(decoder.flush());
    for (const d of deltas) expect(d).not.toContain('\uFFFD');
    expect(deltas.join('')).toBe(text);
    expect(deltas).toContain(' world'); // the space of "▁world" survives the Strip decoder
  });
});

describe('configuration files', () => {
  function writeFolder(name: string, files: Record<string, unknown>): string {
    const dir = path.join(root, name);
    fs.mkdirSync(dir, { recursive: true });
    for (const [file, value] of Object.entries(files)) fs.writeFileSync(path.join(dir, file), typeof value === 'string' ? value : JSON.stringify(value));
    return dir;
  }
  const base = makeTestTokenizer(300);

  test('EOS ids are the union of tokenizer_config.json and generation_config.json (a list allowed); config.json when neither names one', async () => {
    const dir = writeFolder('eos-union', { 'tokenizer.json': base.tokenizer, 'tokenizer_config.json': base.tokenizerConfig, 'generation_config.json': { bos_token_id: 1, eos_token_id: [2, 0] } });
    expect((await Tokenizer.fromFolder(dir)).eosTokenIds).toEqual([2, 0]);
    const { eos_token: _eos, bos_token: _bos, ...noSpecials } = base.tokenizerConfig;
    const dir2 = writeFolder('eos-config', { 'tokenizer.json': base.tokenizer, 'tokenizer_config.json': noSpecials, 'config.json': { bos_token_id: 1, eos_token_id: 0 } });
    const t2 = await Tokenizer.fromFolder(dir2);
    expect([t2.bosTokenId, t2.eosTokenIds]).toEqual([1, [0]]);
    const dir3 = writeFolder('only-tokenizer', { 'tokenizer.json': base.tokenizer });
    const t3 = await Tokenizer.fromFolder(dir3);
    expect([t3.bosTokenId, t3.eosTokenIds]).toEqual([null, []]);
  });

  test('add_bos_token adds BOS when tokenizer.json has no post-processor (and never twice)', async () => {
    const dir = writeFolder('add-bos', { 'tokenizer.json': { ...base.tokenizer, post_processor: null }, 'tokenizer_config.json': base.tokenizerConfig });
    const t = await Tokenizer.fromFolder(dir);
    expect(t.encode('hi')[0]).toBe(1);
    expect(t.encode('hi').filter((id) => id === 1).length).toBe(1);
    expect(t.encode('hi', { addSpecialTokens: false })).not.toContain(1);
    expect(tok.encode('hi').filter((id) => id === 1).length).toBe(1); // with the post-processor too
  });

  test('clean_up_tokenization_spaces is honoured by decode (default off)', async () => {
    const dir = writeFolder('cleanup', { 'tokenizer.json': base.tokenizer, 'tokenizer_config.json': { ...base.tokenizerConfig, clean_up_tokenization_spaces: true } });
    const t = await Tokenizer.fromFolder(dir);
    const ids = t.encode('a , b .', { addSpecialTokens: false });
    expect(t.decode(ids)).toBe('a, b.');
    expect(tok.decode(ids)).toBe('a , b .');
  });

  test('missing or malformed files are ERR_MODEL_FORMAT naming the file', async () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [{}, 'tokenizer.json', 'cannot read the file'],
      [{ 'tokenizer.json': '{"model": ' }, 'tokenizer.json', 'invalid tokenizer.json'],
      [{ 'tokenizer.json': '[1, 2]' }, 'tokenizer.json', 'expected a JSON object'],
      [{ 'tokenizer.json': { version: '1.0' } }, 'tokenizer.json', 'no "model" object'],
      [{ 'tokenizer.json': { ...base.tokenizer, model: { type: 'NoSuchModel', vocab: {} } } }, 'tokenizer.json', 'unsupported tokenizer model type "NoSuchModel"'],
      [{ 'tokenizer.json': { ...base.tokenizer, model: { ...(base.tokenizer.model as object), merges: 7 } } }, 'tokenizer.json', 'cannot build the tokenizer'],
      [{ 'tokenizer.json': base.tokenizer, 'tokenizer_config.json': '{,}' }, 'tokenizer_config.json', 'invalid tokenizer_config.json'],
      [{ 'tokenizer.json': base.tokenizer, 'generation_config.json': { eos_token_id: 300 } }, 'generation_config.json', 'eos_token_id is 300, not a token id of the tokenizer (0 to 299)'],
      [{ 'tokenizer.json': base.tokenizer, 'tokenizer_config.json': { bos_token: '<|begin|>' } }, 'tokenizer_config.json', 'bos_token "<|begin|>" is not a token of the tokenizer'],
      [{ 'tokenizer.json': base.tokenizer, 'config.json': { eos_token_id: 'two' } }, 'config.json', 'eos_token_id is "two"'],
    ];
    let i = 0;
    for (const [files, file, message] of cases) {
      const dir = writeFolder(`bad-${i++}`, files);
      const error = await Tokenizer.fromFolder(dir).then(() => null, (e: unknown) => e as Error);
      expect(error).toMatchObject({ code: 'ERR_MODEL_FORMAT' });
      expect(error!.message).toContain(path.join(dir, file));
      expect(error!.message).toContain(message);
    }
  });
});
