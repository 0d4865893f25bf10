// The Llama-family forward pass (lib/model.ts) on the CPU against a float64 reference written
// here from the HF definitions (RMSNorm, rotate-half RoPE, GQA causal attention with an optional
// sliding window, SwiGLU, tied embeddings, Qwen2 q/k/v biases), on random models made by
// makeTestModel: logits of a whole prompt, greedy decoding step by step through the paged KV
// cache, and a batch mixing a prefill chunk with a decode row.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  BlockManager,
  bfloat16ToFloat32,
  float16ToFloat32,
  generate,
  KvCache,
  makeTestModel,
  Model,
  ModelFormatError,
  SafetensorsCheckpoint,
  UnsupportedError,
  type TestModelOptions,
} from '../../lib';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-model-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface RefConfig {
  hidden: number;
  inter: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  eps: number;
}

interface Ref {
  cfg: RefConfig;
  w: Map<string, Float64Array>;
  window: number;
  bias: boolean;
  tie: boolean;
  theta: number;
}

async function loadReference(dir: string): Promise<Ref> {
  const raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const ckpt = await SafetensorsCheckpoint.open(dir);
  const w = new Map<string, Float64Array>();
  for (const name of ckpt.names()) {
    const info = ckpt.info(name);
    const data = await ckpt.readArray(name);
    const f = info.dtype === 'F16' ? float16ToFloat32(data as Uint16Array) : info.dtype === 'BF16' ? bfloat16ToFloat32(data as Uint16Array) : (data as Float32Array);
    w.set(name, Float64Array.from(f));
  }
  await ckpt.close();
  const heads = raw.num_attention_heads as number;
  const cfg: RefConfig = {
    hidden: raw.hidden_size as number,
    inter: raw.intermediate_size as number,
    layers: raw.num_hidden_layers as number,
    heads,
    kvHeads: (raw.num_key_value_heads as number) ?? heads,
    headDim: (raw.head_dim as number) ?? (raw.hidden_size as number) / heads,
    vocab: raw.vocab_size as number,
    eps: (raw.rms_norm_eps as number) ?? 1e-6,
  };
  const arch = (raw.architectures as string[])[0];
  return {
    cfg,
    w,
    window: arch === 'MistralForCausalLM' && typeof raw.sliding_window === 'number' ? raw.sliding_window : 0,
    bias: arch === 'Qwen2ForCausalLM',
    tie: raw.tie_word_embeddings === true,
    theta: (raw.rope_theta as number) ?? 10000,
  };
}

/** Logits [tokens.length][vocab] of every position of one sequence, in float64. */
function referenceLogits(r: Ref, tokens: number[]): number[][] {
  const { hidden: H, inter: I, layers, heads, kvHeads, headDim: D, vocab, eps } = r.cfg;
  const T = tokens.length;
  const W = (n: string): Float64Array => r.w.get(n)!;
  const matvec = (x: Float64Array, w: Float64Array, out: number, bias?: Float64Array): Float64Array => {
    const inF = x.length, y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = bias ? bias[o]! : 0;
      for (let i = 0; i < inF; i++) s += x[i]! * w[o * inF + i]!;
      y[o] = s;
    }
    return y;
  };
  const norm = (x: Float64Array, w: Float64Array): Float64Array => {
    let ms = 0;
    for (const v of x) ms += v * v;
    const inv = 1 / Math.sqrt(ms / x.length + eps);
    return x.map((v, i) => v * inv * w[i]!);
  };
  const ropeRot = (x: Float64Array, pos: number): void => {
    const half = D / 2;
    for (let i = 0; i < half; i++) {
      const a = pos / Math.pow(r.theta, (2 * i) / D), c = Math.cos(a), s = Math.sin(a);
      const x1 = x[i]!, x2 = x[i + half]!;
      x[i] = x1 * c - x2 * s;
      x[i + half] = x2 * c + x1 * s;
    }
  };
  let h: Float64Array[] = tokens.map((t) => W('model.embed_tokens.weight').slice(t * H, (t + 1) * H));
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    const ks: Float64Array[][] = [], vs: Float64Array[][] = [], qs: Float64Array[][] = [];
    for (let t = 0; t < T; t++) {
      const x = norm(h[t]!, W(`${p}input_layernorm.weight`));
      const q = matvec(x, W(`${p}self_attn.q_proj.weight`), heads * D, r.bias ? W(`${p}self_attn.q_proj.bias`) : undefined);
      const k = matvec(x, W(`${p}self_attn.k_proj.weight`), kvHeads * D, r.bias ? W(`${p}self_attn.k_proj.bias`) : undefined);
      const v = matvec(x, W(`${p}self_attn.v_proj.weight`), kvHeads * D, r.bias ? W(`${p}self_attn.v_proj.bias`) : undefined);
      qs.push(Array.from({ length: heads }, (_, i) => { const s = q.slice(i * D, (i + 1) * D); ropeRot(s, t); return s; }));
      ks.push(Array.from({ length: kvHeads }, (_, i) => { const s = k.slice(i * D, (i + 1) * D); ropeRot(s, t); return s; }));
      vs.push(Array.from({ length: kvHeads }, (_, i) => v.slice(i * D, (i + 1) * D)));
    }
    const next: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const attn = new Float64Array(heads * D);
      for (let hd = 0; hd < heads; hd++) {
        const kv = Math.floor(hd / (heads / kvHeads));
        const lo = r.window > 0 ? Math.max(0, t - r.window + 1) : 0;
        const logits: number[] = [];
        for (let j = lo; j <= t; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qs[t]![hd]![d]! * ks[j]![kv]![d]!;
          logits.push(dot / Math.sqrt(D));
        }
        const m = Math.max(...logits), e = logits.map((x) => Math.exp(x - m)), sum = e.reduce((a, b) => a + b, 0);
        for (let j = lo; j <= t; j++) for (let d = 0; d < D; d++) attn[hd * D + d] = attn[hd * D + d]! + (e[j - lo]! / sum) * vs[j]![kv]![d]!;
      }
      const o = matvec(attn, W(`${p}self_attn.o_proj.weight`), H);
      const res = h[t]!.map((v, i) => v + o[i]!);
      const x2 = norm(res, W(`${p}post_attention_layernorm.weight`));
      const g = matvec(x2, W(`${p}mlp.gate_proj.weight`), I), u = matvec(x2, W(`${p}mlp.up_proj.weight`), I);
      const act = g.map((gv, i) => (gv / (1 + Math.exp(-gv))) * u[i]!);
      const down = matvec(act, W(`${p}mlp.down_proj.weight`), H);
      next.push(res.map((v, i) => v + down[i]!));
    }
    h = next;
  }
  const head = r.tie ? W('model.embed_tokens.weight') : W('lm_head.weight');
  return h.map((x) => Array.from(matvec(norm(x, W('model.norm.weight')), head, vocab)));
}

function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

function expectLogitsClose(got: Float32Array, want: number[], what: string): void {
  const scale = Math.max(...want.map(Math.abs));
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  if (!(worst <= 1e-4 * scale + 1e-6)) throw new Error(`${what}: logits differ by ${worst} (scale ${scale})`);
}

const base: Omit<TestModelOptions, 'out'> = { hidden: 128, heads: 2, kvHeads: 1, intermediate: 192, vocab: 300, layers: 2, initStd: 0.08, seed: 3 };

const variants: Array<[string, Omit<TestModelOptions, 'out'>]> = [
  ['llama GQA', { ...base, arch: 'llama' }],
  ['llama MHA, tied embeddings', { ...base, arch: 'llama', kvHeads: 2, tie: true, seed: 4 }],
  ['mistral, window 5 < sequence', { ...base, arch: 'mistral', slidingWindow: 5, seed: 5 }],
  ['qwen2 with q/k/v bias', { ...base, arch: 'qwen2', seed: 6 }],
  ['llama, bfloat16 storage', { ...base, arch: 'llama', dtype: 'bfloat16', seed: 7 }],
  ['llama, float16 storage, 2 shards', { ...base, arch: 'llama', dtype: 'float16', shards: 2, seed: 8 }],
];

describe.each(variants)('%s', (name, options) => {
  const dir = path.join(tmp, name.replace(/[^a-z0-9]+/gi, '-'));
  let model: Model;
  let ref: Ref;
  beforeAll(async () => {
    await makeTestModel({ ...options, out: dir });
    model = await Model.load(dir, { device: 'cpu' });
    ref = await loadReference(dir);
  });
  afterAll(() => model?.dispose());

  test('prefill logits of every position, then greedy decode through the paged cache, match float64', async () => {
    const blockSize = 8;
    const cache = new KvCache({ ...model.kvCacheShape(), numBlocks: 16, blockSize, kvDtype: 'float32' });
    const blocks = new BlockManager({ numBlocks: 16, blockSize });
    const prompt = [1, 17, 200, 43, 9, 250, 77, 5, 120, 33, 61];
    const first = blocks.allocateSlots('s', prompt.length)!;
    const logits = model.forward(cache, {
      tokenIds: Int32Array.from(prompt), positions: Int32Array.from(prompt.map((_, i) => i)), slotMapping: first.slotMapping,
      blockTables: [[...blocks.blockTable('s')]], seqLens: [prompt.length], cuSeqLensQ: [0, prompt.length],
    });
    expect(logits.shape).toEqual([prompt.length, ref.cfg.vocab]);
    const got = (await logits.toArray()) as Float32Array;
    logits.dispose();
    const want = referenceLogits(ref, prompt);
    for (let t = 0; t < prompt.length; t++) expectLogitsClose(got.subarray(t * ref.cfg.vocab, (t + 1) * ref.cfg.vocab), want[t]!, `${name} position ${t}`);

    // Greedy: each step's token from our logits, checked against the reference's argmax.
    const tokens = [...prompt];
    let next = argmax(want[prompt.length - 1]!);
    for (let step = 0; step < 6; step++) {
      tokens.push(next);
      const alloc = blocks.allocateSlots('s', 1)!;
      const out = model.forward(cache, {
        tokenIds: Int32Array.of(next), positions: Int32Array.of(tokens.length - 1), slotMapping: alloc.slotMapping,
        blockTables: [[...blocks.blockTable('s')]], seqLens: [tokens.length],
      });
      const row = (await out.toArray()) as Float32Array;
      out.dispose();
      const full = referenceLogits(ref, tokens);
      expectLogitsClose(row, full[tokens.length - 1]!, `${name} decode step ${step}`);
      next = argmax(row);
      expect(next).toBe(argmax(full[tokens.length - 1]!));
    }
    cache.dispose();
  });

  test('a batch mixing a prefill chunk and a decode row equals running them apart', async () => {
    const blockSize = 16;
    const run = async (batched: boolean): Promise<Float32Array[]> => {
      const cache = new KvCache({ ...model.kvCacheShape(), numBlocks: 8, blockSize, kvDtype: 'float32' });
      const blocks = new BlockManager({ numBlocks: 8, blockSize });
      const a = [1, 5, 9, 13, 17, 21, 25], b = [2, 4, 6];
      // b's prompt first, alone.
      const sb = blocks.allocateSlots('b', b.length)!;
      model.forward(cache, { tokenIds: Int32Array.from(b), positions: Int32Array.of(0, 1, 2), slotMapping: sb.slotMapping, blockTables: [[...blocks.blockTable('b')]], seqLens: [3], cuSeqLensQ: [0, 3] }).dispose();
      const sa = blocks.allocateSlots('a', a.length)!;
      const sb2 = blocks.allocateSlots('b', 1)!;
      if (batched) {
        const out = model.forward(cache, {
          tokenIds: Int32Array.from([...a, 8]), positions: Int32Array.from([0, 1, 2, 3, 4, 5, 6, 3]),
          slotMapping: Int32Array.from([...sa.slotMapping, ...sb2.slotMapping]),
          blockTables: [[...blocks.blockTable('a')], [...blocks.blockTable('b')]], seqLens: [7, 4], cuSeqLensQ: [0, 7, 8], logitRows: [6, 7],
        });
        const v = (await out.toArray()) as Float32Array;
        out.dispose();
        cache.dispose();
        const V = ref.cfg.vocab;
        return [v.slice(0, V), v.slice(V)];
      }
      const oa = model.forward(cache, { tokenIds: Int32Array.from(a), positions: Int32Array.from([0, 1, 2, 3, 4, 5, 6]), slotMapping: sa.slotMapping, blockTables: [[...blocks.blockTable('a')]], seqLens: [7], cuSeqLensQ: [0, 7], logitRows: [6] });
      const ob = model.forward(cache, { tokenIds: Int32Array.of(8), positions: Int32Array.of(3), slotMapping: sb2.slotMapping, blockTables: [[...blocks.blockTable('b')]], seqLens: [4] });
      const res = [(await oa.toArray()) as Float32Array, (await ob.toArray()) as Float32Array];
      oa.dispose();
      ob.dispose();
      cache.dispose();
      return res;
    };
    const [together, apart] = [await run(true), await run(false)];
    for (let i = 0; i < 2; i++) {
      const want = Array.from(apart[i]!);
      expectLogitsClose(together[i]!, want, `sequence ${i}`);
    }
  });
});

test('bad model folders give typed errors naming the file', async () => {
  const dir = path.join(tmp, 'bad');
  await makeTestModel({ ...base, out: dir });
  const configFile = path.join(dir, 'config.json');
  const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  fs.writeFileSync(configFile, JSON.stringify({ ...config, architectures: ['GPT2LMHeadModel'] }));
  await expect(Model.load(dir)).rejects.toThrow(UnsupportedError);
  fs.writeFileSync(configFile, JSON.stringify({ ...config, intermediate_size: 100 }));
  await expect(Model.load(dir)).rejects.toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining('"model.layers.0.mlp.gate_proj.weight" has shape [192, 128], expected [100, 128]') }));
  fs.writeFileSync(configFile, JSON.stringify({ ...config, num_key_value_heads: 3 }));
  await expect(Model.load(dir)).rejects.toThrow(ModelFormatError);
  fs.writeFileSync(configFile, '{"hidden_size": ');
  await expect(Model.load(dir)).rejects.toThrow(ModelFormatError);
});

test('generate (greedy) and `pagedllm generate --json` give the reference\'s greedy tokens; a bad folder exits non-zero with the code', async () => {
  const dir = path.join(tmp, 'cli');
  await makeTestModel({ ...base, out: dir, seed: 11 });
  const ref = await loadReference(dir);
  const prompt = [1, 40, 41, 42, 43];
  const model = await Model.load(dir);
  const r = await generate(model, prompt, { maxTokens: 5, blockSize: 8 });
  // Sampling through the whole path: the same seed gives the same tokens, and logprobs come back.
  const sampled = async (seed: number) => generate(model, prompt, { maxTokens: 8, sampling: { temperature: 1.5, seed }, logprobs: true });
  const [s1, s2] = [await sampled(5), await sampled(5)];
  expect(s1.tokenIds).toEqual(s2.tokenIds);
  expect(s1.logprobs).toHaveLength(8);
  expect(s1.logprobs!.every((l) => l <= 0 && Number.isFinite(l))).toBe(true);
  model.dispose();
  const tokens = [...prompt];
  for (let i = 0; i < 5; i++) {
    const logits = referenceLogits(ref, tokens);
    tokens.push(argmax(logits[tokens.length - 1]!));
  }
  expect(r.tokenIds).toEqual(tokens.slice(prompt.length));
  expect(r.finishReason).toBe('length');
  const cli = path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
  const run = spawnSync(process.execPath, [cli, 'generate', '--model', dir, '--prompt-ids', prompt.join(','), '--max-tokens', '5', '--device', 'cpu', '--json'], { encoding: 'utf8' });
  expect(run.status).toBe(0);
  const out = JSON.parse(run.stdout) as { choices: { tokenIds: number[]; finishReason: string }[]; usage: { promptTokens: number; completionTokens: number } };
  expect(out.choices[0]!.tokenIds).toEqual(r.tokenIds);
  expect(out.usage).toEqual({ promptTokens: 5, completionTokens: 5 });
  fs.writeFileSync(path.join(dir, 'model.safetensors'), 'not a safetensors file');
  const bad = spawnSync(process.execPath, [cli, 'generate', '--model', dir, '--prompt-ids', '1,2', '--device', 'cpu'], { encoding: 'utf8' });
  expect(bad.status).not.toBe(0);
  expect(bad.stderr).toContain('ERR_MODEL_FORMAT');
});
