// Decode steps replayed from CUDA graphs (Model.enableCudaGraphs, the Engine's cudaGraphs;
// cuda/decoder_graph.cpp). On a GPU: graph replays give the logits of the same padded steps run op
// by op, bit for bit, across batch and context buckets, and agree with the plain path within float16
// tolerance. Everywhere: the option's errors and the planner's accounting. The GPU tests skip, saying
// so, where no CUDA device exists (they were written without one).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { BlockManager, devices, Engine, InvalidArgumentError, KvCache, makeTestModel, Model, UnsupportedError } from '../../lib';
import { planMemory, type ModelConfig } from '../../lib/planner';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-graphs-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const shape = { hidden: 128, heads: 2, kvHeads: 1, intermediate: 192, vocab: 300, layers: 2, initStd: 0.08, maxPositionEmbeddings: 1024 };
let dir = '';
beforeAll(async () => {
  dir = path.join(tmp, 'model');
  await makeTestModel({ ...shape, out: dir, dtype: 'float16', seed: 11 });
});

describe('CUDA graph options', () => {
  test('the Engine refuses cudaGraphs on the CPU and a bad value anywhere', async () => {
    await expect(Engine.create({ model: dir, device: 'cpu', logger: null, cudaGraphs: true })).rejects.toThrow(
      expect.objectContaining({ code: 'ERR_UNSUPPORTED', message: 'Engine: cudaGraphs needs a CUDA device; the model is on cpu' }));
    await expect(Engine.create({ model: dir, device: 'cpu', logger: null, cudaGraphs: 'yes' as never })).rejects.toThrow(InvalidArgumentError);
    const engine = await Engine.create({ model: dir, device: 'cpu', logger: null, cudaGraphs: false });
    engine.dispose();
  });

  test('Model.enableCudaGraphs refuses a CPU model', async () => {
    const model = await Model.load(dir, { device: 'cpu' });
    try {
      expect(() => model.enableCudaGraphs({ maxBatch: 4, maxBlocksPerSeq: 8 })).toThrow(UnsupportedError);
      expect(model.cudaGraphStats()).toEqual([]);
      model.disableCudaGraphs();  // nothing to drop
    } finally {
      model.dispose();
    }
  });

  test('the plan counts the graphs\' fixed buffers and arena', () => {
    const config: ModelConfig = {
      architectures: ['LlamaForCausalLM'], hidden_size: 4096, intermediate_size: 11008, num_attention_heads: 32, num_key_value_heads: 32,
      num_hidden_layers: 32, vocab_size: 32000, max_position_embeddings: 4096, torch_dtype: 'float16',
    } as ModelConfig;
    const common = { modelConfig: config, deviceMemory: { totalBytes: 80 * 2 ** 30 }, maxNumSeqs: 64, maxNumBatchedTokens: 2048, budget: { gpuMemoryUtilization: 0.9 } };
    const off = planMemory(common), on = planMemory({ ...common, cudaGraphs: true });
    // A decode step's activations for 64 sequences and their logits, and the 64 × 256 block table.
    const perToken = 2 * 4096 + 3 * 4096 + 4096 + 2 * 11008;
    expect(on.activationBytes - off.activationBytes).toBe(64 * perToken * 2 + 2 * 64 * 32000 * 4 + 64 * 256 * 4);
    expect(on.workspaceBytes).toBeGreaterThan(off.workspaceBytes);
    expect(on.numBlocks).toBeLessThan(off.numBlocks);
  });
});

const cuda = devices().cuda.available;
const onGpu = cuda ? test : test.skip;

/**
 * `B` sequences prefilled with `prompt` tokens, then `steps` decode steps (their contexts cross
 * 256, a context bucket boundary), through the model as configured; the logits of every decode step.
 */
async function decodeRun(model: Model, B: number, prompt: number, steps: number): Promise<Float32Array[]> {
  const blockSize = 16, numBlocks = B * Math.ceil((prompt + steps) / blockSize) + 2;
  const cache = new KvCache({ ...model.kvCacheShape(), numBlocks, blockSize, kvDtype: 'float16', device: 'cuda:0' });
  const blocks = new BlockManager({ numBlocks, blockSize });
  const out: Float32Array[] = [];
  try {
    const tokens = Array.from({ length: B }, (_, s) => Array.from({ length: prompt }, (_, j) => 3 + ((s * 31 + j * 7) % 290)));
    for (let s = 0; s < B; s++) {  // prefill, one sequence at a time (not a graph step)
      const slots = blocks.allocateSlots(s, prompt)!;
      model.forward(cache, { tokenIds: Int32Array.from(tokens[s]!), positions: Int32Array.from({ length: prompt }, (_, j) => j), slotMapping: slots.slotMapping,
        blockTables: [[...blocks.blockTable(s)]], seqLens: [prompt], logitRows: [] }).dispose();
    }
    for (let t = 0; t < steps; t++) {
      const width = Math.ceil((prompt + t + 1) / blockSize);
      const slotMapping = new Int32Array(B), tables: number[][] = [];
      for (let s = 0; s < B; s++) {
        slotMapping[s] = blocks.allocateSlots(s, 1)!.slotMapping[0]!;
        tables.push([...blocks.blockTable(s, width)]);
      }
      const logits = model.forward(cache, {
        tokenIds: Int32Array.from({ length: B }, (_, s) => 5 + ((s + t) % 200)), positions: Int32Array.from({ length: B }, () => prompt + t),
        slotMapping, blockTables: tables, seqLens: Array.from({ length: B }, () => prompt + t + 1),
        cuSeqLensQ: Array.from({ length: B + 1 }, (_, i) => i), logitRows: Array.from({ length: B }, (_, i) => i),
      });
      out.push((await logits.toArray()) as Float32Array);
      logits.dispose();
    }
  } finally {
    cache.dispose();
  }
  return out;
}

describe('CUDA graph replays', () => {
  onGpu('replays give the padded eager steps bit for bit, and the plain path within float16 tolerance (needs CUDA)', async () => {
    const model = await Model.load(dir, { device: 'cuda:0', dtype: 'float16' });
    try {
      for (const B of [1, 3, 8]) {
        const plain = await decodeRun(model, B, 250, 12);
        model.enableCudaGraphs({ maxBatch: 8, maxBlocksPerSeq: 32, capture: false });
        const eager = await decodeRun(model, B, 250, 12);
        model.enableCudaGraphs({ maxBatch: 8, maxBlocksPerSeq: 32 });
        const graphs = await decodeRun(model, B, 250, 12);
        const [stats] = model.cudaGraphStats();
        model.disableCudaGraphs();
        // Contexts 251-262 are two context buckets (256, 512): two captures, the other steps replayed.
        expect(stats).toMatchObject({ captures: 2, eagerSteps: 2, replays: 10, failures: 0, graphs: 2 });
        graphs.forEach((l, i) => {
          let differing = 0;
          for (let j = 0; j < l.length; j++) if (!Object.is(l[j], eager[i]![j])) differing++;
          expect(`batch ${B}, step ${i}: ${differing} of ${l.length} logits differ`).toBe(`batch ${B}, step ${i}: 0 of ${l.length} logits differ`);
          let num = 0, den = 0;
          for (let j = 0; j < l.length; j++) num += (l[j]! - plain[i]![j]!) ** 2, den += plain[i]![j]! ** 2;
          expect(Math.sqrt(num / den)).toBeLessThan(5e-3);
        });
      }
    } finally {
      model.dispose();
    }
  });

  onGpu('an Engine with cudaGraphs decodes what one without does, greedy (needs CUDA)', async () => {
    const run = async (cudaGraphs: boolean): Promise<number[][]> => {
      const engine = await Engine.create({ model: dir, device: 'cuda:0', logger: null, maxNumSeqs: 4, maxModelLen: 512, cudaGraphs });
      try {
        const prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]];
        const results = await Promise.all(prompts.map((p) => engine.generate({ promptTokenIds: p }, { maxTokens: 20, temperature: 0, ignoreEos: true }).result()));
        if (cudaGraphs) expect(engine.model.cudaGraphStats()[0]).toMatchObject({ failures: 0 });
        return results.map((r) => r.choices[0]!.tokenIds);
      } finally {
        engine.dispose();
      }
    };
    expect(await run(true)).toEqual(await run(false));
  });
});
