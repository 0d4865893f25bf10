// The AWQ quantizer (lib/quantize.ts) on small random models: the checkpoint it writes has the
// config and tensors AutoAWQ / vLLM / transformers read (formats.md §1.1, §1.6), its tensors
// dequantize to the quantizer's own reconstruction, the activation-aware search beats plain
// round-to-nearest on a model whose activations have outlier channels (and equals it with a grid
// of one α), the calibration sources and bad inputs, makeTestModel's AWQ variant, Model.forward's
// capture hook and `pagedllm quantize`.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  BlockManager,
  checkAwqTensors,
  dequantizeAwq,
  float16ToFloat32,
  KvCache,
  makeTestModel,
  Model,
  parseAwqConfig,
  quantizeModel,
  SafetensorsCheckpoint,
  Tensor,
  Tokenizer,
  writeSafetensors,
  type QuantizedLinear,
  type QuantizeReport,
  type SafetensorsTensorData,
  type TestModelOptions,
} from '../../lib';
import { DIST, ensureDist } from './helpers';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-quantize-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// head_dim 64 (a size paged attention supports); q/k/v, gate/up and down inputs 128, 128, 256.
const small: Omit<TestModelOptions, 'out'> = { hidden: 128, heads: 2, kvHeads: 1, intermediate: 256, vocab: 300, layers: 2, initStd: 0.08, seed: 3 };
const PROJECTIONS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];

async function floatModel(name: string, options: Omit<TestModelOptions, 'out'> = small): Promise<string> {
  const dir = path.join(tmp, name);
  await makeTestModel({ ...options, out: dir });
  return dir;
}

describe('the checkpoint', () => {
  let dir: string;
  let out: string;
  let report: QuantizeReport;
  const quantized = new Map<string, QuantizedLinear>();
  beforeAll(async () => {
    dir = await floatModel('float');
    out = path.join(tmp, 'awq');
    report = await quantizeModel({ model: dir, out, groupSize: 64, alphaGrid: 5, onLinear: (name, q) => quantized.set(name, q) });
  });

  test('config.json: AutoAWQ\'s quantization_config, torch_dtype float16, the rest as it was', () => {
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    const original = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    expect(config.quantization_config).toEqual({ quant_method: 'awq', bits: 4, group_size: 64, zero_point: true, version: 'gemm', modules_to_not_convert: null });
    expect(config.torch_dtype).toBe('float16');
    expect({ ...config, quantization_config: undefined, torch_dtype: undefined }).toEqual({ ...original, quantization_config: undefined, torch_dtype: undefined });
    expect(parseAwqConfig(config.quantization_config)).toEqual({ bits: 4, groupSize: 64, zeroPoint: true, version: 'gemm', modulesToNotConvert: [] });
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
      expect(fs.readFileSync(path.join(out, f))).toEqual(fs.readFileSync(path.join(dir, f)));
    }
  });

  test('tensors: qweight / qzeros / scales per projection (formats.md §1.1), float16 .weight for the rest, nothing else', async () => {
    const ckpt = await SafetensorsCheckpoint.open(out);
    try {
      expect(ckpt.files.map((f) => path.basename(f.path))).toEqual(['model.safetensors']);
      expect(ckpt.files[0]!.metadata).toEqual({ format: 'pt' });
      const expected: Record<string, [string, number[]]> = {
        'model.embed_tokens.weight': ['F16', [300, 128]],
        'model.norm.weight': ['F16', [128]],
        'lm_head.weight': ['F16', [300, 128]],
      };
      const dims: Record<string, [number, number]> = {  // [in K, out N]
        'self_attn.q_proj': [128, 128], 'self_attn.k_proj': [128, 64], 'self_attn.v_proj': [128, 64], 'self_attn.o_proj': [128, 128],
        'mlp.gate_proj': [128, 256], 'mlp.up_proj': [128, 256], 'mlp.down_proj': [256, 128],
      };
      for (let l = 0; l < 2; l++) {
        const p = `model.layers.${l}.`;
        expected[`${p}input_layernorm.weight`] = ['F16', [128]];
        expected[`${p}post_attention_layernorm.weight`] = ['F16', [128]];
        for (const [proj, [K, N]] of Object.entries(dims)) {
          expected[`${p}${proj}.qweight`] = ['I32', [K, N / 8]];
          expected[`${p}${proj}.qzeros`] = ['I32', [K / 64, N / 8]];
          expected[`${p}${proj}.scales`] = ['F16', [K / 64, N]];
          checkAwqTensors((name) => (ckpt.has(name) ? ckpt.info(name) : undefined), `${p}${proj}`, K, N, 64, out);
        }
      }
      const got = Object.fromEntries(ckpt.names().map((n) => [n, [ckpt.info(n).dtype, [...ckpt.info(n).shape]]]));
      expect(got).toEqual(expected);
    } finally {
      await ckpt.close();
    }
  });

  test('the written tensors dequantize (reference dequantizer) to the quantizer\'s reconstruction, bit for bit', async () => {
    const ckpt = await SafetensorsCheckpoint.open(out);
    try {
      expect([...quantized.keys()].sort()).toEqual([0, 1].flatMap((l) => PROJECTIONS.map((p) => `model.layers.${l}.${p}`)).sort());
      for (const [name, q] of quantized) {
        const tensors = {
          qweight: (await ckpt.readArray(`${name}.qweight`)) as Int32Array,
          qzeros: (await ckpt.readArray(`${name}.qzeros`)) as Int32Array,
          scales: (await ckpt.readArray(`${name}.scales`)) as Uint16Array,
        };
        const K = q.inFeatures, N = q.outFeatures;
        const w = dequantizeAwq(tensors, N, K, 64);
        for (let n = 0; n < N; n++) {
          for (let k = 0; k < K; k++) {
            if (!Object.is(w[k * N + n], q.reconstruction[n * K + k])) throw new Error(`${name} [k ${k}, n ${n}]: dequantized ${w[k * N + n]}, reconstruction ${q.reconstruction[n * K + k]}`);
          }
        }
      }
    } finally {
      await ckpt.close();
    }
  });

  test('the report: every linear, α from the grid, o_proj plain RTN under GQA, finite errors', () => {
    expect(report.groupSize).toBe(64);
    expect(report.alphaGrid).toBe(5);
    expect(report.calibration).toEqual({ source: 'random', tokens: 512, sequences: 1 });
    expect(report.heldOut).toEqual({ source: 'random', tokens: 128 });
    expect(report.linears.map((l) => l.name)).toEqual([0, 1].flatMap((l) => PROJECTIONS.map((p) => `model.layers.${l}.${p}`)));
    for (const l of report.linears) {
      if (l.name.endsWith('o_proj')) expect(l.alpha).toBeNull();  // kvHeads 1 < heads 2: no v row per o column
      else expect([0, 0.2, 0.4, 0.6, 0.8]).toContain(l.alpha);
      expect(l.heldOutMseRtn).toBeGreaterThan(0);
      expect(l.heldOutMseAwq).toBeGreaterThan(0);
      if (l.alpha === null) expect(l.heldOutMseAwq).toBe(l.heldOutMseRtn);
    }
    expect(report.logitsRelativeError.rtn).toBeGreaterThan(0);
    expect(report.logitsRelativeError.awq).toBeGreaterThan(0);
    expect(report.logitsRelativeError.awq).toBeLessThan(1);
  });
});

/** Multiplies a few channels of every RMSNorm weight: the normed activations get outlier channels, as trained LLMs have. */
async function addOutlierChannels(dir: string, channels: number[], factor: number): Promise<void> {
  const ckpt = await SafetensorsCheckpoint.open(dir);
  const tensors: Record<string, SafetensorsTensorData> = {};
  try {
    for (const name of ckpt.names()) {
      const info = ckpt.info(name);
      const data = (await ckpt.readArray(name)) as Float32Array;
      if (name.endsWith('layernorm.weight')) for (const c of channels) data[c] = data[c]! * factor;
      tensors[name] = { dtype: info.dtype, shape: info.shape, data };
    }
  } finally {
    await ckpt.close();
  }
  await writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

describe('activation-aware scales vs plain round-to-nearest', () => {
  let dir: string;
  beforeAll(async () => {
    // MHA, so o_proj's scales fold into v_proj too.
    dir = await floatModel('outliers', { ...small, kvHeads: 2, seed: 2 });
    await addOutlierChannels(dir, [5, 40, 77, 100], 20);
  });

  test('with outlier channels AWQ has a lower held-out error than RTN, per linear and in the logits', async () => {
    const r = await quantizeModel({ model: dir, out: path.join(tmp, 'outliers-awq'), groupSize: 64, alphaGrid: 10 });
    const lines = r.linears.map((l) => `${l.name} α ${l.alpha} RTN ${l.heldOutMseRtn.toExponential(2)} AWQ ${l.heldOutMseAwq.toExponential(2)}`).join('\n');
    // The linears reading the normed (outlier) activations: scales > 1 on those channels protect them.
    for (const l of r.linears.filter((x) => /(q|k|v|gate|up)_proj$/.test(x.name))) {
      expect(l.alpha).toBeGreaterThan(0);
      if (!(l.heldOutMseAwq < 0.7 * l.heldOutMseRtn)) throw new Error(`${l.name}: AWQ MSE ${l.heldOutMseAwq} is not below 0.7 × RTN ${l.heldOutMseRtn}\n${lines}`);
    }
    expect(r.linears.find((l) => l.name === 'model.layers.0.self_attn.o_proj')!.alpha).not.toBeNull();
    expect(r.totalMse.awq).toBeLessThan(0.8 * r.totalMse.rtn);
    expect(r.logitsRelativeError.awq).toBeLessThan(0.9 * r.logitsRelativeError.rtn);
  });

  test('a grid of one α (s = 1) is plain round-to-nearest: the same errors and reconstructions', async () => {
    const recon = new Map<string, Float32Array>();
    const r = await quantizeModel({ model: dir, out: path.join(tmp, 'outliers-rtn'), groupSize: 64, alphaGrid: 1, onLinear: (name, q) => recon.set(name, q.reconstruction) });
    for (const l of r.linears) {
      expect(l.alpha === null || l.alpha === 0).toBe(true);
      expect(l.heldOutMseAwq).toBe(l.heldOutMseRtn);
    }
    expect(r.logitsRelativeError.awq).toBe(r.logitsRelativeError.rtn);
    // And the checkpoint's norms are the float ones, rounded to float16 (s = 1 folds nothing).
    const ckpt = await SafetensorsCheckpoint.open(path.join(tmp, 'outliers-rtn'));
    const float = await SafetensorsCheckpoint.open(dir);
    try {
      const norm = float16ToFloat32((await ckpt.readArray('model.layers.1.input_layernorm.weight')) as Uint16Array);
      const want = (await float.readArray('model.layers.1.input_layernorm.weight')) as Float32Array;
      want.forEach((v, i) => expect(Math.abs(norm[i]! - v)).toBeLessThanOrEqual(Math.abs(v) * 2 ** -11));
    } finally {
      await ckpt.close();
      await float.close();
    }
  });
});

describe('calibration data and bad input', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await floatModel('calibration');
  });

  test('a text file is encoded with the model\'s tokenizer; its last quarter is held out', async () => {
    const text = path.join(tmp, 'calibration.txt');
    fs.writeFileSync(text, 'The paged cache keeps keys and values in blocks. '.repeat(12));
    const ids = (await Tokenizer.fromFolder(dir)).encode(fs.readFileSync(text, 'utf8'));
    const r = await quantizeModel({ model: dir, out: path.join(tmp, 'from-text'), groupSize: 128, alphaGrid: 2, calibration: text, sequenceLength: 64 });
    expect(r.calibration).toEqual({ source: 'text', tokens: Math.ceil(ids.length * 0.75), sequences: Math.ceil(Math.ceil(ids.length * 0.75) / 64) });
    expect(r.heldOut).toEqual({ source: 'held-back', tokens: ids.length - Math.ceil(ids.length * 0.75) });
  });

  test('comma-separated token ids, and explicit held-out tokens', async () => {
    const r = await quantizeModel({ model: dir, out: path.join(tmp, 'from-ids'), groupSize: -1, alphaGrid: 2, calibration: '1, 5, 9, 200, 13, 17, 21, 25', heldOutTokens: [3, 4, 5] });
    expect(r.calibration.source).toBe('token-ids');
    expect(r.calibration.tokens).toBe(8);
    expect(r.heldOut).toEqual({ source: 'given', tokens: 3 });
    expect(r.groupSize).toBe(-1);
    const ckpt = await SafetensorsCheckpoint.open(path.join(tmp, 'from-ids'));
    expect([...ckpt.info('model.layers.0.mlp.down_proj.scales').shape]).toEqual([1, 128]);  // one group over K = 256
    await ckpt.close();
  });

  test('bad options and models are typed errors', async () => {
    const bad = (extra: object) => quantizeModel({ model: dir, out: path.join(tmp, 'bad-out'), alphaGrid: 1, ...extra });
    await expect(bad({ calibration: 'no such file, and not ids' })).rejects.toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('neither a file nor comma-separated token ids') }));
    await expect(bad({ calibration: '1,2,300' })).rejects.toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('300 is not a token id') }));
    await expect(bad({ groupSize: 48 })).rejects.toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('groupSize must be one of 32, 64, 128, -1') }));
    await expect(bad({ alphaGrid: 0 })).rejects.toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    await expect(bad({ out: dir })).rejects.toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('out must differ') }));
    const narrow = await floatModel('narrow', { ...small, hidden: 64, heads: 1, kvHeads: 1, intermediate: 96 });
    await expect(quantizeModel({ model: narrow, out: path.join(tmp, 'narrow-awq') })).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('64 inputs, not a multiple of groupSize 128 (group sizes that fit this model: 32, -1)') }),
    );
    // A quantized model cannot be quantized again.
    await expect(quantizeModel({ model: path.join(tmp, 'from-ids'), out: path.join(tmp, 'twice') })).rejects.toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED', message: expect.stringContaining('already quantized') }));
  });
});

test('makeTestModel({ awq }) writes a quantized variant and describes it', async () => {
  const out = path.join(tmp, 'test-model-awq');
  const m = await makeTestModel({ ...small, arch: 'qwen2', kvHeads: 2, out, awq: { alphaGrid: 3 } });
  expect(m.config.quantization_config).toEqual({ quant_method: 'awq', bits: 4, group_size: 128, zero_point: true, version: 'gemm', modules_to_not_convert: null });
  expect(m.files).toEqual(['model.safetensors', 'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']);
  expect(m.tensors['model.layers.1.mlp.down_proj.qweight']).toEqual({ dtype: 'I32', shape: [256, 16] });
  expect(m.tensors['model.layers.1.self_attn.v_proj.bias']).toEqual({ dtype: 'F16', shape: [128] });
  expect(m.tensors['model.layers.1.self_attn.v_proj.weight']).toBeUndefined();
  expect(m.awq!.linears).toHaveLength(14);
  expect(fs.readdirSync(tmp).filter((f) => f.startsWith('pagedllm-test-model-float-'))).toEqual([]);
  await expect(makeTestModel({ ...small, out, awq: { groupSize: 100 } })).rejects.toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  await expect(makeTestModel({ ...small, out, shards: 2, awq: {} })).rejects.toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringContaining('one file') }));
});

test('Model.forward\'s capture hook sees each linear\'s input: layer 0 q/k/v read RMSNorm(embedding) · input_layernorm', async () => {
  const dir = await floatModel('capture');
  const model = await Model.load(dir, { device: 'cpu' });
  const ckpt = await SafetensorsCheckpoint.open(dir);
  const cache = new KvCache({ ...model.kvCacheShape(), numBlocks: 4, blockSize: 16, kvDtype: 'float32' });
  try {
    const ids = [1, 40, 77, 250];
    const blocks = new BlockManager({ numBlocks: 4, blockSize: 16 });
    const slots = blocks.allocateSlots('s', ids.length)!;
    const seen: [string, Tensor][] = [];
    const logits = model.forward(cache, {
      tokenIds: Int32Array.from(ids), positions: Int32Array.of(0, 1, 2, 3), slotMapping: slots.slotMapping,
      blockTables: [[...blocks.blockTable('s')]], seqLens: [4], cuSeqLensQ: [0, 4],
    }, { capture: (name, t) => seen.push([name, t.contiguous()]) });
    logits.dispose();
    expect(seen.map(([n]) => n)).toEqual([0, 1].flatMap((l) => PROJECTIONS.map((p) => `model.layers.${l}.${p}`)));
    const shapes = Object.fromEntries(seen.map(([n, t]) => [n.replace(/^model\.layers\.\d+\./, ''), [...t.shape]]));
    expect(shapes).toEqual({ 'self_attn.q_proj': [4, 128], 'self_attn.k_proj': [4, 128], 'self_attn.v_proj': [4, 128], 'self_attn.o_proj': [4, 128], 'mlp.gate_proj': [4, 128], 'mlp.up_proj': [4, 128], 'mlp.down_proj': [4, 256] });
    const embed = (await ckpt.readArray('model.embed_tokens.weight')) as Float32Array;
    const norm = (await ckpt.readArray('model.layers.0.input_layernorm.weight')) as Float32Array;
    const got = (await seen[0]![1].toArray()) as Float32Array;
    ids.forEach((id, t) => {
      const row = embed.subarray(id * 128, (id + 1) * 128);
      const inv = 1 / Math.sqrt(row.reduce((a, v) => a + v * v, 0) / 128 + 1e-5);
      for (let i = 0; i < 128; i++) expect(got[t * 128 + i]).toBeCloseTo(row[i]! * inv * norm[i]!, 5);
    });
    for (const [, t] of seen) t.dispose();
  } finally {
    cache.dispose();
    model.dispose();
    await ckpt.close();
  }
});

test('`pagedllm quantize` writes the checkpoint and prints the report (--json); bad flags exit non-zero with the code', async () => {
  ensureDist();
  const dir = await floatModel('cli');
  const out = path.join(tmp, 'cli-awq');
  const cli = path.join(DIST, 'cli.js');
  const run = spawnSync(process.execPath, [cli, 'quantize', '--model', dir, '--out', out, '--group-size', '64', '--calibration', '1,2,3,4,5,6,7,8,9,10,11,12', '--alpha-grid', '3', '--json'], { encoding: 'utf8' });
  expect(run.stderr).toBe('');
  expect(run.status).toBe(0);
  const report = JSON.parse(run.stdout) as QuantizeReport;
  expect(report.groupSize).toBe(64);
  expect(report.calibration).toEqual({ source: 'token-ids', tokens: 9, sequences: 1 });
  expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config.group_size).toBe(64);
  const text = spawnSync(process.execPath, [cli, 'quantize', '--model', dir, '--out', out, '--group-size', '64', '--alpha-grid', '2'], { encoding: 'utf8' });
  expect(text.status).toBe(0);
  expect(text.stdout).toContain('logits relative error vs the float model: RTN');
  expect(text.stdout).toContain('seeded random token ids');
  const bad = spawnSync(process.execPath, [cli, 'quantize', '--model', dir, '--out', out, '--group-size', '100'], { encoding: 'utf8' });
  expect(bad.status).not.toBe(0);
  expect(bad.stderr).toContain('ERR_INVALID_ARGUMENT');
});
