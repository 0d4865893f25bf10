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
  awqDequantize,
  BlockManager,
  bfloat16ToFloat32,
  dequantizeAwq,
  devices,
  float16ToFloat32,
  float32ToFloat16,
  generate,
  KvCache,
  makeTestModel,
  Model,
  ModelFormatError,
  quantizeModel,
  SafetensorsCheckpoint,
  UnsupportedError,
  writeSafetensors,
  type QuantizedLinear,
  type SafetensorsTensorData,
  type TestModelOptions,
} from '../../lib';
import { expectStorageEqual } from './helpers';

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
  const quant = raw.quantization_config as { group_size?: number; modules_to_not_convert?: string[] } | undefined;
  for (const name of ckpt.names()) {
    const info = ckpt.info(name);
    if (name.endsWith('.qzeros') || name.endsWith('.scales')) continue;
    if (name.endsWith('.qweight')) {
      // AWQ: the dequantized [K, N] weight, transposed to HF's [N, K].
      const prefix = name.slice(0, -'.qweight'.length);
      const [K, words] = info.shape as [number, number];
      const N = 8 * words;
      const read = async (suffix: string) => ckpt.readArray(`${prefix}.${suffix}`);
      const W = dequantizeAwq({ qweight: (await read('qweight')) as Int32Array, qzeros: (await read('qzeros')) as Int32Array, scales: (await read('scales')) as Uint16Array }, N, K, quant!.group_size!);
      const hf = new Float64Array(N * K);
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) hf[n * K + k] = W[k * N + n]!;
      w.set(`${prefix}.weight`, hf);
      continue;
    }
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

/**
 * Logits of a prompt step that wants none (logitRows [], it only writes the cache), a mixed step (a
 * 7-token prefill chunk and a decode row, two logit rows) and a decode step.
 */
async function twoSteps(model: Model, composition: 'native' | 'ops', kvDtype: 'float32' | 'float16' = 'float16'): Promise<Float32Array[]> {
  const cache = new KvCache({ ...model.kvCacheShape(), numBlocks: 8, blockSize: 16, kvDtype });
  const blocks = new BlockManager({ numBlocks: 8, blockSize: 16 });
  const out: Float32Array[] = [];
  const step = async (batch: Parameters<Model['forward']>[1]): Promise<void> => {
    const logits = model.forward(cache, batch, { composition });
    out.push((await logits.toArray()) as Float32Array);
    logits.dispose();
  };
  const sb = blocks.allocateSlots('b', 3)!;
  await step({ tokenIds: Int32Array.of(2, 4, 6), positions: Int32Array.of(0, 1, 2), slotMapping: sb.slotMapping, blockTables: [[...blocks.blockTable('b')]], seqLens: [3], cuSeqLensQ: [0, 3], logitRows: [] });
  const sa = blocks.allocateSlots('a', 7)!;
  const sb2 = blocks.allocateSlots('b', 1)!;
  await step({
    tokenIds: Int32Array.of(1, 5, 9, 13, 17, 21, 25, 8), positions: Int32Array.of(0, 1, 2, 3, 4, 5, 6, 3),
    slotMapping: Int32Array.from([...sa.slotMapping, ...sb2.slotMapping]),
    blockTables: [[...blocks.blockTable('a')], [...blocks.blockTable('b')]], seqLens: [7, 4], cuSeqLensQ: [0, 7, 8], logitRows: [6, 7],
  });
  const sa2 = blocks.allocateSlots('a', 1)!, sb3 = blocks.allocateSlots('b', 1)!;
  await step({
    tokenIds: Int32Array.of(30, 31), positions: Int32Array.of(7, 4), slotMapping: Int32Array.from([...sa2.slotMapping, ...sb3.slotMapping]),
    blockTables: [[...blocks.blockTable('a')], [...blocks.blockTable('b')]], seqLens: [8, 5],
  });
  cache.dispose();
  return out;
}

/** The native decoder issues the per-op path's kernels in the same order: bit-identical logits. */
async function expectCompositionsIdentical(model: Model): Promise<void> {
  const [native, ops] = [await twoSteps(model, 'native'), await twoSteps(model, 'ops')];
  const V = model.config.vocabSize;
  expect(native.map((l) => l.length)).toEqual([0, 2 * V, 2 * V]);
  expect(ops.map((l) => l.length)).toEqual([0, 2 * V, 2 * V]);
  native.forEach((l, i) => {
    let differing = 0;
    for (let j = 0; j < l.length; j++) if (!Object.is(l[j], ops[i]![j])) differing++;
    expect(`step ${i}: ${differing} of ${l.length} logits differ`).toBe(`step ${i}: 0 of ${l.length} logits differ`);
  });
  // Not a vacuous comparison: the two sequences' logits differ.
  expect(Array.from(native[2]!.subarray(0, 8))).not.toEqual(Array.from(native[2]!.subarray(V, V + 8)));
}

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

  test('the native decoder and the per-op composition give bit-identical logits', async () => {
    await expectCompositionsIdentical(model);
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
  expect(run.stderr).not.toContain('loading weights');  // --json: no progress bar
  // The loading progress bar (forced: stderr is a pipe here), on stderr, finished before the plan.
  const shown = spawnSync(process.execPath, [cli, 'generate', '--model', dir, '--prompt-ids', prompt.join(','), '--max-tokens', '2', '--device', 'cpu', '--progress'], { encoding: 'utf8' });
  expect(shown.status).toBe(0);
  const bar = shown.stderr.split('\n').filter((l) => l.startsWith('loading weights ['));
  expect(bar.length).toBeGreaterThan(0);
  expect(bar[bar.length - 1]).toMatch(/\] 100% \| \d+\/\d+ MiB \| (\d+)\/\1 tensors \| /);
  expect(shown.stderr.indexOf('loading weights [')).toBeLessThan(shown.stderr.indexOf('memory plan'));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), 'not a safetensors file');
  const bad = spawnSync(process.execPath, [cli, 'generate', '--model', dir, '--prompt-ids', '1,2', '--device', 'cpu'], { encoding: 'utf8' });
  expect(bad.status).not.toBe(0);
  expect(bad.stderr).toContain('ERR_MODEL_FORMAT');
});

// ---- AWQ int4 models ---------------------------------------------------------------------------------
// Quantized by the quantizer (makeTestModel's awq option), run through awqLinear, against the
// float64 reference on the checkpoint's dequantized weights (lib/awq.ts dequantizeAwq, itself
// checked against formats.md in awq.test.ts). Where the loader repacks the weights to slab8 —
// devices().cpu.awqActivations 'int8', the avx2 default — every AWQ linear quantizes its input to
// int8, prefill and decode alike: each carries up to half a step of 1/127 of its 16-value block's
// max, which compounds over the layers to about 1-2 % of the logits' scale on these random models
// (the int8 kernels themselves are held to the exact x̂ · W in the native and awq-ops tests).
// Otherwise prefill (more than 8 tokens: the GEMM over exactly W) is tight, and decode (one token:
// the GEMV, which skips W's float16 rounding) a little looser.
const INT8 = devices().cpu.awqActivations === 'int8';
const PREFILL_TOLERANCE = INT8 ? 5e-2 : 1e-4;
const DECODE_TOLERANCE = INT8 ? 5e-2 : 2e-3;

function expectLogitsNear(got: Float32Array, want: number[], what: string, relative: number): void {
  const scale = Math.max(...want.map(Math.abs));
  let worst = 0, at = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    if (d > worst) [worst, at] = [d, i];
  }
  if (!(worst <= relative * scale)) throw new Error(`${what}: logits differ by ${worst} at ${at} (got ${got[at]}, want ${want[at]}; scale ${scale})`);
}

const awqVariants: Array<[string, Omit<TestModelOptions, 'out'>]> = [
  ['llama GQA, AWQ group 64', { ...base, arch: 'llama', seed: 12, awq: { groupSize: 64, alphaGrid: 4 } }],
  ['qwen2 MHA with q/k/v bias, AWQ group 128', { ...base, arch: 'qwen2', kvHeads: 2, intermediate: 256, seed: 13, awq: { groupSize: 128, alphaGrid: 4 } }],
  ['llama tied, AWQ one group per layer (-1)', { ...base, arch: 'llama', tie: true, seed: 14, awq: { groupSize: -1, alphaGrid: 2 } }],
];

describe.each(awqVariants)('%s', (name, options) => {
  const dir = path.join(tmp, name.replace(/[^a-z0-9]+/gi, '-'));
  let model: Model;
  let ref: Ref;
  beforeAll(async () => {
    await makeTestModel({ ...options, out: dir });
    model = await Model.load(dir, { device: 'cpu' });
    ref = await loadReference(dir);
  });
  afterAll(() => model?.dispose());

  test('prefill logits and greedy decode through the paged cache match float64 on the dequantized weights', async () => {
    expect(model.config.awq).toMatchObject({ bits: 4, groupSize: options.awq!.groupSize });
    const cache = new KvCache({ ...model.kvCacheShape(), numBlocks: 8, blockSize: 16, kvDtype: 'float32' });
    const blocks = new BlockManager({ numBlocks: 8, blockSize: 16 });
    const prompt = [1, 17, 200, 43, 9, 250, 77, 5, 120, 33, 61];
    const first = blocks.allocateSlots('s', prompt.length)!;
    const logits = model.forward(cache, {
      tokenIds: Int32Array.from(prompt), positions: Int32Array.from(prompt.map((_, i) => i)), slotMapping: first.slotMapping,
      blockTables: [[...blocks.blockTable('s')]], seqLens: [prompt.length], cuSeqLensQ: [0, prompt.length],
    });
    const got = (await logits.toArray()) as Float32Array;
    logits.dispose();
    const want = referenceLogits(ref, prompt);
    const V = ref.cfg.vocab;
    for (let t = 0; t < prompt.length; t++) expectLogitsNear(got.subarray(t * V, (t + 1) * V), want[t]!, `${name} position ${t}`, PREFILL_TOLERANCE);
    const tokens = [...prompt];
    let next = argmax(want[prompt.length - 1]!);
    for (let step = 0; step < 4; step++) {
      tokens.push(next);
      const alloc = blocks.allocateSlots('s', 1)!;
      const out = model.forward(cache, {
        tokenIds: Int32Array.of(next), positions: Int32Array.of(tokens.length - 1), slotMapping: alloc.slotMapping,
        blockTables: [[...blocks.blockTable('s')]], seqLens: [tokens.length],
      });
      const row = (await out.toArray()) as Float32Array;
      out.dispose();
      const full = referenceLogits(ref, tokens);
      expectLogitsNear(row, full[tokens.length - 1]!, `${name} decode step ${step}`, DECODE_TOLERANCE);
      next = argmax(full[tokens.length - 1]!);
    }
    cache.dispose();
  });

  test('the native decoder and the per-op composition give bit-identical logits', async () => {
    await expectCompositionsIdentical(model);
  });
});

/** Rewrites a checkpoint folder's tensors and config (for crafted bad or partly quantized models). */
async function rewrite(dir: string, editTensors: (t: Record<string, SafetensorsTensorData>) => Promise<void> | void, editConfig: (c: Record<string, unknown>) => void = () => undefined): Promise<void> {
  const ckpt = await SafetensorsCheckpoint.open(dir);
  const tensors: Record<string, SafetensorsTensorData> = {};
  try {
    for (const n of ckpt.names()) tensors[n] = { dtype: ckpt.info(n).dtype, shape: ckpt.info(n).shape, data: await ckpt.readArray(n) };
  } finally {
    await ckpt.close();
  }
  await editTensors(tensors);
  await writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  const configFile = path.join(dir, 'config.json');
  const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  editConfig(config);
  fs.writeFileSync(configFile, JSON.stringify(config));
}

test('round trip: quantize, load, and awqDequantize of every loaded layer equals the quantizer\'s reconstruction bit for bit', async () => {
  const floatDir = path.join(tmp, 'awq-round-trip-float'), dir = path.join(tmp, 'awq-round-trip');
  await makeTestModel({ ...base, intermediate: 256, out: floatDir, seed: 15 });
  const recon = new Map<string, QuantizedLinear>();
  await quantizeModel({ model: floatDir, out: dir, groupSize: 32, alphaGrid: 4, onLinear: (n, q) => recon.set(n, q) });
  const model = await Model.load(dir, { device: 'cpu' });
  model.dispose();
  const ckpt = await SafetensorsCheckpoint.open(dir);
  try {
    expect(recon.size).toBe(14);
    for (const [layer, q] of recon) {
      const [qweight, qzeros, scales] = await Promise.all(['qweight', 'qzeros', 'scales'].map((s) => ckpt.loadTensor(`${layer}.${s}`, { device: 'cpu' })));
      const weight = { qweight: qweight!, qzeros: qzeros!, scales: scales!, groupSize: 32 };
      const K = q.inFeatures, N = q.outFeatures;
      const want = new Float32Array(K * N);  // [K, N]: the reconstruction [N, K] transposed
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) want[k * N + n] = q.reconstruction[n * K + k]!;
      const f32 = awqDequantize(weight, { dtype: 'float32' });
      const f16 = awqDequantize(weight, { dtype: 'float16' });
      expect([...f32.shape]).toEqual([K, N]);
      expectStorageEqual('float32', (await f32.toArray()) as Float32Array, want, { what: `${layer} awqDequantize float32`, shape: [K, N] });
      expectStorageEqual('float16', (await f16.toArray()) as Uint16Array, float32ToFloat16(want), { what: `${layer} awqDequantize float16`, shape: [K, N] });
      for (const t of [qweight, qzeros, scales, f32, f16]) t!.dispose();
    }
  } finally {
    await ckpt.close();
  }
});

test('AWQ checkpoints: modules_to_not_convert layers load from .weight; bad configs and tensors are typed errors naming them', async () => {
  const dir = path.join(tmp, 'awq-partial');
  await makeTestModel({ ...base, out: dir, seed: 16, awq: { groupSize: 64, alphaGrid: 2 } });
  // down_proj of every layer back to a float16 .weight (the dequantized values), skipped by substring.
  await rewrite(dir, (t) => {
    for (let l = 0; l < base.layers!; l++) {
      const p = `model.layers.${l}.mlp.down_proj`;
      const [K, words] = t[`${p}.qweight`]!.shape as [number, number];
      const N = words * 8;
      const w = dequantizeAwq({ qweight: t[`${p}.qweight`]!.data as Int32Array, qzeros: t[`${p}.qzeros`]!.data as Int32Array, scales: t[`${p}.scales`]!.data as Uint16Array }, N, K, 64);
      const hf = new Float32Array(N * K);
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) hf[n * K + k] = w[k * N + n]!;
      for (const s of ['qweight', 'qzeros', 'scales']) delete t[`${p}.${s}`];
      t[`${p}.weight`] = { dtype: 'F16', shape: [N, K], data: float32ToFloat16(hf) };
    }
  }, (c) => {
    (c.quantization_config as Record<string, unknown>).modules_to_not_convert = ['mlp.down'];
  });
  const model = await Model.load(dir, { device: 'cpu' });
  const ref = await loadReference(dir);
  const prompt = [1, 7, 99, 140, 3, 8, 250, 12, 60];
  const r = await generate(model, prompt, { maxTokens: 3, blockSize: 8 });
  model.dispose();
  const tokens = [...prompt];
  for (let i = 0; i < 3; i++) tokens.push(argmax(referenceLogits(ref, tokens)[tokens.length - 1]!));
  expect(r.tokenIds).toEqual(tokens.slice(prompt.length));

  const configFile = path.join(dir, 'config.json');
  const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  const withQuant = (q: Record<string, unknown>): void => fs.writeFileSync(configFile, JSON.stringify({ ...config, quantization_config: { ...config.quantization_config, ...q } }));
  withQuant({ version: 'gemv' });
  await expect(Model.load(dir)).rejects.toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED', message: expect.stringContaining('version "gemv"') }));
  withQuant({ zero_point: undefined });
  await expect(Model.load(dir)).rejects.toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining('zero_point') }));
  withQuant({ modules_to_not_convert: null });  // down_proj is now expected quantized, and it is not
  await expect(Model.load(dir)).rejects.toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining('"model.layers.0.mlp.down_proj.qweight" is missing') }));
  withQuant({ group_size: 32 });  // scales [128/64, N] no longer match K/G = 4 groups
  await expect(Model.load(dir)).rejects.toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining('"model.layers.0.self_attn.q_proj.qzeros" has shape [2, 16], expected [4, 16]') }));
  fs.writeFileSync(configFile, JSON.stringify(config));
  await rewrite(dir, (t) => {
    const s = t['model.layers.1.self_attn.k_proj.scales']!;
    t['model.layers.1.self_attn.k_proj.scales'] = { dtype: 'F32', shape: s.shape, data: float16ToFloat32(s.data as Uint16Array) };
  });
  await expect(Model.load(dir)).rejects.toThrow(expect.objectContaining({ code: 'ERR_MODEL_FORMAT', message: expect.stringContaining('"model.layers.1.self_attn.k_proj.scales" is F32, expected F16') }));
});
