// makeTestModel / scripts/make-test-model.js: HF model folders for each
// architecture, read back through our safetensors reader and tokenizer with
// the exact HF names, shapes, dtypes and config fields; seeded, deterministic
// weights of a real init's scale; sharding that changes files, not values.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { SafetensorsCheckpoint } from '../../lib/safetensors';
import { makeTestModel, makeTestTokenizer, type TestModelArch, type TestModelOptions } from '../../lib/test-model';
import { Tokenizer } from '../../lib/tokenizer';
import { bf16Value, ensureDist, halfValue, refBf16Bits, refHalfBits, REPO } from './helpers';

let root: string;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-test-model-'));
});
afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});
let count = 0;
const out = (label: string): string => path.join(root, `${++count}-${label}`);

const readJson = (file: string): Record<string, unknown> => JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;

/** The HF tensor names and shapes, written out independently of lib/test-model.ts (formats.md §5.3). */
function expectedTensors(o: { arch: TestModelArch; hidden: number; layers: number; heads: number; kvHeads: number; headDim: number; intermediate: number; vocab: number; tie: boolean }): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const q = o.heads * o.headDim;
  const kv = o.kvHeads * o.headDim;
  m.set('model.embed_tokens.weight', [o.vocab, o.hidden]);
  m.set('model.norm.weight', [o.hidden]);
  if (!o.tie) m.set('lm_head.weight', [o.vocab, o.hidden]);
  for (let i = 0; i < o.layers; i++) {
    const p = `model.layers.${i}.`;
    m.set(p + 'input_layernorm.weight', [o.hidden]);
    m.set(p + 'post_attention_layernorm.weight', [o.hidden]);
    m.set(p + 'self_attn.q_proj.weight', [q, o.hidden]);
    m.set(p + 'self_attn.k_proj.weight', [kv, o.hidden]);
    m.set(p + 'self_attn.v_proj.weight', [kv, o.hidden]);
    m.set(p + 'self_attn.o_proj.weight', [o.hidden, q]);
    m.set(p + 'mlp.gate_proj.weight', [o.intermediate, o.hidden]);
    m.set(p + 'mlp.up_proj.weight', [o.intermediate, o.hidden]);
    m.set(p + 'mlp.down_proj.weight', [o.hidden, o.intermediate]);
    if (o.arch === 'qwen2') {
      m.set(p + 'self_attn.q_proj.bias', [q]);
      m.set(p + 'self_attn.k_proj.bias', [kv]);
      m.set(p + 'self_attn.v_proj.bias', [kv]);
    }
  }
  return m;
}

async function reload(dir: string): Promise<{ shapes: Map<string, number[]>; dtypes: Set<string>; ckpt: SafetensorsCheckpoint }> {
  const ckpt = await SafetensorsCheckpoint.open(dir);
  const shapes = new Map<string, number[]>();
  const dtypes = new Set<string>();
  for (const name of ckpt.names()) {
    const info = ckpt.info(name);
    shapes.set(name, info.shape.slice());
    dtypes.add(info.dtype);
  }
  return { shapes, dtypes, ckpt };
}

function sortedEntries(m: Map<string, number[]>): [string, number[]][] {
  return [...m].sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

describe.each(['llama', 'mistral', 'qwen2'] as const)('%s', (arch) => {
  test('default sizes: config.json, generation_config.json, the exact HF tensors, and a tokenizer of vocab_size ids', async () => {
    const dir = out(arch);
    const model = await makeTestModel({ out: dir, arch });
    expect(fs.readdirSync(dir).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    expect(model.files.slice().sort()).toEqual(fs.readdirSync(dir).sort());

    const config = readJson(path.join(dir, 'config.json'));
    expect(config).toEqual(model.config);
    const architecture = { llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM' }[arch];
    expect(config).toMatchObject({
      architectures: [architecture],
      model_type: arch,
      vocab_size: 512,
      hidden_size: 64,
      intermediate_size: 128,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      hidden_act: 'silu',
      max_position_embeddings: 2048,
      rms_norm_eps: arch === 'qwen2' ? 1e-6 : 1e-5,
      rope_theta: arch === 'qwen2' ? 1e6 : 10000,
      rope_scaling: null,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
      torch_dtype: 'float32',
    });
    expect('head_dim' in config).toBe(false); // hidden / heads, left to the default
    if (arch === 'llama') expect(config).toMatchObject({ attention_bias: false, mlp_bias: false });
    if (arch === 'mistral') expect(config).toHaveProperty('sliding_window', null);
    if (arch === 'qwen2') expect(config).toMatchObject({ use_sliding_window: false });
    expect(readJson(path.join(dir, 'generation_config.json'))).toEqual({ bos_token_id: 1, eos_token_id: arch === 'qwen2' ? [2] : 2 });

    const { shapes, dtypes, ckpt } = await reload(dir);
    try {
      const expected = expectedTensors({ arch, hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, intermediate: 128, vocab: 512, tie: false });
      expect(sortedEntries(shapes)).toEqual(sortedEntries(expected));
      expect([...dtypes]).toEqual(['F32']);
      expect(ckpt.files[0]!.metadata).toEqual({ format: 'pt' });
      expect(Object.keys(model.tensors).sort()).toEqual([...expected.keys()].sort());
    } finally {
      await ckpt.close();
    }

    const tokenizer = await Tokenizer.fromFolder(dir);
    expect([tokenizer.vocabSize, tokenizer.bosTokenId, tokenizer.eosTokenIds]).toEqual([512, 1, [2]]);
    expect(tokenizer.decode(tokenizer.encode('A tiny model: 小さなモデル 🙂'), { skipSpecialTokens: true })).toBe('A tiny model: 小さなモデル 🙂');
  });

  test('tied embeddings, GQA ratios, an explicit head_dim (≠ hidden / heads), more layers', async () => {
    const dir = out(`${arch}-tied`);
    const options = { out: dir, arch, hidden: 48, layers: 3, heads: 6, kvHeads: 1, headDim: 12, intermediate: 80, vocab: 300, tie: true };
    await makeTestModel(options);
    const config = readJson(path.join(dir, 'config.json'));
    expect(config).toMatchObject({ tie_word_embeddings: true, head_dim: 12, num_key_value_heads: 1, num_attention_heads: 6, hidden_size: 48, vocab_size: 300 });
    const { shapes, ckpt } = await reload(dir);
    await ckpt.close();
    expect(shapes.has('lm_head.weight')).toBe(false);
    expect(sortedEntries(shapes)).toEqual(sortedEntries(expectedTensors({ ...options, tie: true })));
    expect(shapes.get('model.layers.2.self_attn.q_proj.weight')).toEqual([72, 48]);
    expect(shapes.get('model.layers.2.self_attn.o_proj.weight')).toEqual([48, 72]);
    expect((await Tokenizer.fromFolder(dir)).vocabSize).toBe(300);
  });
});

test('mistral: sliding_window when given', async () => {
  const dir = out('mistral-window');
  await makeTestModel({ out: dir, arch: 'mistral', slidingWindow: 7 });
  expect(readJson(path.join(dir, 'config.json'))).toMatchObject({ architectures: ['MistralForCausalLM'], sliding_window: 7 });
});

test('rope_scaling: llama3 (as Llama 3.1 writes it, rope_theta 500000) and linear (the legacy "type" key)', async () => {
  const llama3 = out('llama3');
  await makeTestModel({ out: llama3, ropeScaling: 'llama3', maxPositionEmbeddings: 4096 });
  expect(readJson(path.join(llama3, 'config.json'))).toMatchObject({
    rope_theta: 500000,
    max_position_embeddings: 4096,
    rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 512 },
  });
  const linear = out('linear');
  await makeTestModel({ out: linear, ropeScaling: 'linear', ropeTheta: 20000 });
  expect(readJson(path.join(linear, 'config.json'))).toMatchObject({ rope_theta: 20000, rope_scaling: { type: 'linear', factor: 2 } });
});

describe('weights', () => {
  test('a real init: linear weights ~ N(0, 0.02²) and norms ~ N(1, 0.05²), all finite; qwen2 biases small', async () => {
    const dir = out('stats');
    await makeTestModel({ out: dir, arch: 'qwen2' });
    const ckpt = await SafetensorsCheckpoint.open(dir);
    try {
      const stats = async (name: string): Promise<{ mean: number; std: number; finite: boolean; distinct: number }> => {
        const v = Array.from((await ckpt.readArray(name)) as Float32Array);
        const mean = v.reduce((a, b) => a + b, 0) / v.length;
        const std = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length);
        return { mean, std, finite: v.every(Number.isFinite), distinct: new Set(v).size };
      };
      const embed = await stats('model.embed_tokens.weight'); // 32768 samples
      expect(embed.finite).toBe(true);
      expect(Math.abs(embed.mean)).toBeLessThan(0.001);
      expect(embed.std).toBeGreaterThan(0.019);
      expect(embed.std).toBeLessThan(0.021);
      expect(embed.distinct).toBeGreaterThan(30000);
      const norm = await stats('model.layers.0.input_layernorm.weight');
      expect(Math.abs(norm.mean - 1)).toBeLessThan(0.03);
      expect(norm.std).toBeGreaterThan(0.02);
      expect(norm.std).toBeLessThan(0.08);
      const bias = await stats('model.layers.1.self_attn.q_proj.bias');
      expect(bias.std).toBeLessThan(0.05);
      for (const name of ckpt.names()) expect([name, (await stats(name)).finite]).toEqual([name, true]);
      // Distinct tensors hold distinct values (each has its own random stream).
      const q0 = Array.from(await ckpt.readArray('model.layers.0.self_attn.q_proj.weight')).slice(0, 8);
      const q1 = Array.from(await ckpt.readArray('model.layers.1.self_attn.q_proj.weight')).slice(0, 8);
      expect(q0).not.toEqual(q1);
    } finally {
      await ckpt.close();
    }
  });

  test('seeded: the same seed writes the same bytes, another seed other values', async () => {
    const a = out('seed-a');
    const b = out('seed-b');
    const c = out('seed-c');
    await makeTestModel({ out: a, seed: 7 });
    await makeTestModel({ out: b, seed: 7 });
    await makeTestModel({ out: c, seed: 8 });
    for (const f of ['model.safetensors', 'config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
      expect([f, Buffer.compare(fs.readFileSync(path.join(a, f)), fs.readFileSync(path.join(b, f)))]).toEqual([f, 0]);
    }
    expect(Buffer.compare(fs.readFileSync(path.join(a, 'model.safetensors')), fs.readFileSync(path.join(c, 'model.safetensors')))).not.toBe(0);
  });

  test('float16 / bfloat16 storage holds the float32 values rounded to nearest even (same seed)', async () => {
    const f32 = out('f32');
    await makeTestModel({ out: f32, arch: 'mistral', seed: 3 });
    const reference = await SafetensorsCheckpoint.open(f32);
    try {
      for (const [dtype, st, round, value] of [
        ['float16', 'F16', refHalfBits, halfValue],
        ['bfloat16', 'BF16', refBf16Bits, bf16Value],
      ] as const) {
        const dir = out(dtype);
        await makeTestModel({ out: dir, arch: 'mistral', seed: 3, dtype });
        expect(readJson(path.join(dir, 'config.json')).torch_dtype).toBe(dtype);
        const ckpt = await SafetensorsCheckpoint.open(dir);
        try {
          expect(ckpt.names()).toEqual(reference.names());
          for (const name of ['model.embed_tokens.weight', 'model.layers.1.mlp.down_proj.weight', 'model.norm.weight']) {
            expect(ckpt.info(name).dtype).toBe(st);
            const bits = Array.from(await ckpt.readArray(name));
            const source = Array.from(await reference.readArray(name));
            const expected = source.map((x) => round(x));
            const first = bits.findIndex((b, i) => b !== expected[i]);
            expect(`${name} ${dtype} first mismatch ${first}`).toBe(`${name} ${dtype} first mismatch -1`);
            expect(Math.abs(value(bits[0]!) - source[0]!)).toBeLessThan(Math.abs(source[0]!) * 2 ** -7 + 1e-30);
          }
        } finally {
          await ckpt.close();
        }
      }
    } finally {
      await reference.close();
    }
  });
});

describe('shards', () => {
  test('--shards 3: three non-empty files and an index whose weight_map and total_size match; the same tensors as one file', async () => {
    const one = out('one');
    const three = out('three');
    await makeTestModel({ out: one, arch: 'qwen2', seed: 5 });
    const model = await makeTestModel({ out: three, arch: 'qwen2', seed: 5, shards: 3 });
    const shardFiles = ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'];
    expect(fs.readdirSync(three).filter((f) => f.includes('safetensors')).sort()).toEqual([...shardFiles, 'model.safetensors.index.json']);
    expect(model.files).toContain('model.safetensors.index.json');
    const index = readJson(path.join(three, 'model.safetensors.index.json')) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    const names = Object.keys(index.weight_map);
    expect(names).toEqual(names.slice().sort());
    expect(new Set(Object.values(index.weight_map))).toEqual(new Set(shardFiles));

    const a = await SafetensorsCheckpoint.open(one);
    const b = await SafetensorsCheckpoint.open(three);
    try {
      expect(b.indexFile).not.toBeNull();
      expect(b.names()).toEqual(a.names());
      expect(names.sort()).toEqual(a.names());
      expect(index.metadata.total_size).toBe(a.totalBytes);
      for (const file of b.files) expect(file.names().length).toBeGreaterThan(0);
      for (const name of a.names()) {
        expect(path.basename(b.info(name).file)).toBe(index.weight_map[name]);
        expect([name, Buffer.compare(await a.readBytes(name), await b.readBytes(name))]).toEqual([name, 0]);
      }
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('writing again into the same folder replaces the earlier weight files', async () => {
    const dir = out('rewrite');
    await makeTestModel({ out: dir, shards: 2 });
    await makeTestModel({ out: dir });
    expect(fs.readdirSync(dir).filter((f) => f.includes('safetensors'))).toEqual(['model.safetensors']);
    await makeTestModel({ out: dir, shards: 4 });
    expect(fs.readdirSync(dir).filter((f) => f.includes('safetensors')).length).toBe(5);
    const ckpt = await SafetensorsCheckpoint.open(dir);
    expect(ckpt.files.length).toBe(4);
    await ckpt.close();
  });
});

test('the tokenizer has exactly vocab ids, for small and large vocabularies', () => {
  for (const vocab of [259, 260, 512, 1000, 5000]) {
    const { tokenizer, tokenizerConfig } = makeTestTokenizer(vocab);
    const model = tokenizer.model as { vocab: Record<string, number>; merges: string[] };
    const ids = Object.values(model.vocab).sort((x, y) => x - y);
    expect(ids.length).toBe(vocab);
    expect(ids[0]).toBe(0);
    expect(ids[ids.length - 1]).toBe(vocab - 1);
    expect(new Set(Object.keys(model.vocab)).size).toBe(vocab);
    // Every merge joins two tokens of the vocabulary into a third.
    for (const merge of model.merges) {
      const [l, r] = merge.split(' ') as [string, string];
      expect(model.vocab[l] !== undefined && model.vocab[r] !== undefined && model.vocab[l + r] !== undefined).toBe(true);
    }
    const tok = Tokenizer.fromJSON({ tokenizer, tokenizerConfig });
    expect(tok.vocabSize).toBe(vocab);
    expect(tok.decode(tok.encode('round trip ✓ 日本', { addSpecialTokens: false }))).toBe('round trip ✓ 日本');
  }
});

test('bad options are ERR_INVALID_ARGUMENT', async () => {
  const bad: [Partial<TestModelOptions>, RegExp][] = [
    [{ arch: 'gpt2' as TestModelArch }, /arch must be one of llama, mistral, qwen2/],
    [{ heads: 4, kvHeads: 3 }, /kvHeads 3 must divide heads 4/],
    [{ hidden: 50, heads: 4 }, /hidden 50 is not a multiple of heads 4/],
    [{ headDim: 15 }, /headDim 15 must be even/],
    [{ vocab: 100 }, /vocab 100 is too small: the tokenizer needs 259/],
    [{ slidingWindow: 8 }, /slidingWindow is for mistral models, not llama/],
    [{ dtype: 'int8' as 'float32' }, /dtype must be float32, float16 or bfloat16/],
    [{ layers: 0 }, /layers must be a positive integer/],
    [{ shards: 100 }, /shards 100 is more than the 21 tensors/],
    [{ ropeScaling: 'yarn' as 'linear' }, /ropeScaling must be llama3 or linear/],
  ];
  for (const [options, message] of bad) {
    await expect(makeTestModel({ out: out('bad'), ...options })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(message) });
  }
});

describe('scripts/make-test-model.js', () => {
  beforeAll(() => ensureDist());
  const script = path.join(REPO, 'scripts', 'make-test-model.js');

  test('writes the folder its flags describe', async () => {
    const dir = out('script');
    const r = spawnSync(
      process.execPath,
      [script, '--out', dir, '--arch', 'mistral', '--hidden', '32', '--layers', '1', '--heads', '2', '--kv-heads', '1', '--intermediate', '64',
        '--vocab', '320', '--dtype', 'bfloat16', '--tie', '--sliding-window', '5', '--shards', '2', '--seed', '9', '--json'],
      { encoding: 'utf8' },
    );
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const printed = JSON.parse(r.stdout) as { dir: string; tensors: Record<string, unknown> };
    expect(printed.dir).toBe(dir);
    expect(readJson(path.join(dir, 'config.json'))).toMatchObject({
      architectures: ['MistralForCausalLM'], hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1,
      intermediate_size: 64, vocab_size: 320, torch_dtype: 'bfloat16', tie_word_embeddings: true, sliding_window: 5,
    });
    const { shapes, dtypes, ckpt } = await reload(dir);
    expect(ckpt.files.length).toBe(2);
    await ckpt.close();
    expect([...dtypes]).toEqual(['BF16']);
    expect(sortedEntries(shapes)).toEqual(sortedEntries(expectedTensors({ arch: 'mistral', hidden: 32, layers: 1, heads: 2, kvHeads: 1, headDim: 16, intermediate: 64, vocab: 320, tie: true })));
    expect(Object.keys(printed.tensors).length).toBe(shapes.size);
  });

  test('a bad flag exits non-zero with the error code on stderr', () => {
    const r = spawnSync(process.execPath, [script, '--out', out('script-bad'), '--heads', '4', '--kv-heads', '3'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^ERR_INVALID_ARGUMENT: makeTestModel: kvHeads 3 must divide heads 4/);
    const r2 = spawnSync(process.execPath, [script, '--out', out('script-bad'), '--layers', 'two'], { encoding: 'utf8' });
    expect(r2.status).not.toBe(0);
    expect(r2.stderr).toMatch(/--layers.*expected an integer, got "two"/);
  });
});
