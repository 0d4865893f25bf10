// planMemory against the worked numbers of formats.md §4 (TensorRT-LLM and
// vLLM semantics side by side), the weight counts of real checkpoints, and
// its errors.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { devices } from '../../lib/device';
import { memoryReport } from '../../lib/memory';
import { estimateActivationBytes, estimateWeightsBytes, kvBytesPerToken, planMemory, type ModelConfig } from '../../lib/planner';
import { Tensor } from '../../lib/tensor';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

const llama2_7b: ModelConfig = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 4096,
  intermediate_size: 11008,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  vocab_size: 32000,
  max_position_embeddings: 4096,
  torch_dtype: 'float16',
};

const llama3_8b: ModelConfig = {
  architectures: ['LlamaForCausalLM'],
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  vocab_size: 128256,
  max_position_embeddings: 8192,
  torch_dtype: 'bfloat16',
};

/** The non-KV bytes the planner estimates for these options (to express TRT's "free after weights"). */
function nonKv(config: ModelConfig, o: { maxNumBatchedTokens: number; maxNumSeqs: number; maxModelLen: number }): number {
  const a = estimateActivationBytes(config, o);
  return estimateWeightsBytes(config) + a.activationBytes + a.workspaceBytes;
}

describe('sizes', () => {
  test('KV bytes per token: 2 · L · Hkv · D · bytes (+ fp32 scales per (token, head) for int8/fp8)', () => {
    expect(kvBytesPerToken(llama2_7b, 'float16')).toBe(524288); // 0.5 MiB, formats.md §4.2
    expect(kvBytesPerToken(llama2_7b, 'float32')).toBe(1048576);
    expect(kvBytesPerToken(llama3_8b, 'bfloat16')).toBe(131072);
    expect(kvBytesPerToken(llama2_7b, 'int8')).toBe(2 * 32 * 32 * (128 + 4));
    expect(kvBytesPerToken(llama2_7b, 'fp8')).toBe(2 * 32 * 32 * (128 + 4));
  });

  test('weights: the parameter counts of Llama-2-7B and Llama-3-8B', () => {
    expect(estimateWeightsBytes(llama2_7b)).toBe(6_738_415_616 * 2);
    expect(estimateWeightsBytes(llama3_8b)).toBe(8_030_261_248 * 2);
    expect(estimateWeightsBytes({ ...llama2_7b, tie_word_embeddings: true }, 'float32')).toBe((6_738_415_616 - 32000 * 4096) * 4);
  });

  test('AWQ int4 weights: 4-bit linears with fp16 scales and 4-bit zeros per group, fp16 elsewhere', () => {
    const awq = { ...llama2_7b, quantization_config: { quant_method: 'awq', bits: 4, group_size: 128 } };
    const linear = (k: number, n: number): number => (k * n) / 2 + (k / 128) * n * 2.5;
    const perLayer = 4 * linear(4096, 4096) + 2 * linear(4096, 11008) + linear(11008, 4096) + 2 * 4096 * 2;
    expect(estimateWeightsBytes(awq)).toBe(32 * perLayer + (2 * 32000 * 4096 + 4096) * 2);
    expect(estimateWeightsBytes(awq) / estimateWeightsBytes(llama2_7b)).toBeLessThan(0.3);
  });

  test('AWQ workspace: the largest linear dequantized to 16 bits (the CUDA path from 16 tokens), once', () => {
    const awq = { ...llama2_7b, quantization_config: { quant_method: 'awq', bits: 4, group_size: 128 } };
    const o = { maxNumBatchedTokens: 2048, maxNumSeqs: 256, maxModelLen: 4096 };
    expect(estimateActivationBytes(awq, o).workspaceBytes - estimateActivationBytes(llama2_7b, o).workspaceBytes).toBe(2 * 4096 * 11008);
    expect(estimateActivationBytes(awq, o).activationBytes).toBe(estimateActivationBytes(llama2_7b, o).activationBytes);
  });
});

describe('TensorRT-LLM semantics: a fraction of the memory free after weights and activations', () => {
  const o = { maxNumBatchedTokens: 4096, maxNumSeqs: 256, maxModelLen: 4096 };
  const plan = (freeAfter: number, budget: { freeMemoryFraction: number; maxTokens?: number }) =>
    planMemory({ modelConfig: llama2_7b, deviceMemory: { totalBytes: 80 * GiB, freeBytes: freeAfter + nonKv(llama2_7b, o) }, blockSize: 64, ...o, budget });

  test('free 40 GiB, f = 0.9: 73728 tokens, 1152 blocks of 64', () => {
    const p = plan(40 * GiB, { freeMemoryFraction: 0.9 });
    expect([p.kvTokens >= 73728, p.numBlocks, p.kvBytesPerBlock]).toEqual([true, 1152, 32 * MiB]);
  });

  test('with maxTokens 50000 the min is taken and blocks round up: 782 (floor would give 781)', () => {
    expect(plan(40 * GiB, { freeMemoryFraction: 0.9, maxTokens: 50000 }).numBlocks).toBe(782);
  });

  test('free 10 GiB + 100 MiB: 18612 tokens, ceil -> 291 blocks (floor of bytes / block would give 290)', () => {
    const p = plan(10 * GiB + 100 * MiB, { freeMemoryFraction: 0.9 });
    expect(p.numBlocks).toBe(291);
    expect(Math.floor((0.9 * (10 * GiB + 100 * MiB)) / p.kvBytesPerBlock)).toBe(290);
  });

  test('maxTokens above what the fraction allows: the smaller is used, with a warning', () => {
    const p = plan(10 * GiB, { freeMemoryFraction: 0.5, maxTokens: 1_000_000 });
    expect(p.numBlocks).toBe(Math.ceil(Math.floor((10 * GiB * 0.5) / 524288) / 64));
    expect(p.warnings[0]).toBe('maxTokens 1000000 exceeds what freeMemoryFraction 0.5 allows (10240 tokens); the smaller value is used');
  });

  test.each([0, 1, 1.2, -0.1])('freeMemoryFraction %p is rejected (strictly between 0 and 1)', (f) => {
    expect(() => plan(10 * GiB, { freeMemoryFraction: f })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: `planMemory: freeMemoryFraction must be strictly between 0 and 1, got ${f}` }),
    );
  });
});

describe('vLLM semantics: a fraction of total memory for the whole instance', () => {
  // formats.md §4.4: 80 GiB, util 0.9, non-KV 16 GiB (13.5 weights + 2 activation peak + 0.5 non-torch) -> 56 GiB, 7168 blocks.
  const measured = { weightsBytes: 13.5 * GiB, activationBytes: 2.5 * GiB, workspaceBytes: 0 };

  test('80 GiB, util 0.9, Llama-2-7B fp16, block 16: 7168 blocks (114688 tokens)', () => {
    const p = planMemory({ modelConfig: llama2_7b, deviceMemory: { totalBytes: 80 * GiB }, budget: { gpuMemoryUtilization: 0.9 }, measured });
    expect([p.kvBytesPerBlock, p.numBlocks, p.kvTokens, p.kvCacheBytes]).toEqual([8 * MiB, 7168, 114688, 56 * GiB]);
    expect(p.maxConcurrency).toBe(28); // 7168 blocks / 256 blocks per 4096-token sequence
    expect(p.warnings).toEqual(['only 28 sequences of 4096 tokens fit at once (maxNumSeqs 256); shorter sequences share the rest']);
  });

  test('side by side: util 0.9 (vLLM) and fraction 0.9 (TRT) give different KV sizes on the same GPU', () => {
    const device = { totalBytes: 80 * GiB, freeBytes: 80 * GiB };
    const vllm = planMemory({ modelConfig: llama2_7b, deviceMemory: device, budget: { gpuMemoryUtilization: 0.9 }, measured });
    const trt = planMemory({ modelConfig: llama2_7b, deviceMemory: device, budget: { freeMemoryFraction: 0.9 }, measured });
    expect(vllm.numBlocks).toBe(7168); // (72 - 16) GiB / 8 MiB
    expect(trt.numBlocks).toBe(Math.ceil(Math.floor((64 * GiB * 0.9) / 524288) / 16)); // 0.9 · (80 - 16) GiB
    expect(trt.numBlocks).toBe(7373);
  });

  test('refuses to start when less than total · util is free, naming the numbers', () => {
    expect(() => planMemory({ modelConfig: llama2_7b, deviceMemory: { totalBytes: 80 * GiB, freeBytes: 60 * GiB }, budget: { gpuMemoryUtilization: 0.9 }, measured })).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_ARGUMENT',
        message: 'planMemory: only 60.00 GiB of 80.00 GiB is free, less than gpuMemoryUtilization 0.9 asks for (72.00 GiB); lower gpuMemoryUtilization to at most 0.750 or free the device',
      }),
    );
  });

  test('weights already loaded (an engine plans after loading) count as free once, not as used and again as weights', () => {
    // 80 GiB card, 13.5 GiB of weights resident: the driver reports 66.5 GiB free. Budgets are of the
    // memory before weights, so util 0.9 still plans 7168 blocks, and TRT's fraction the same 7373.
    const device = { totalBytes: 80 * GiB, freeBytes: 80 * GiB - measured.weightsBytes };
    const resident = { ...measured, weightsResident: true };
    expect(planMemory({ modelConfig: llama2_7b, deviceMemory: device, budget: { gpuMemoryUtilization: 0.9 }, measured: resident }).numBlocks).toBe(7168);
    expect(planMemory({ modelConfig: llama2_7b, deviceMemory: device, budget: { freeMemoryFraction: 0.9 }, measured: resident }).numBlocks).toBe(7373);
    // Without the flag the same numbers read as 13.5 GiB already taken by something else.
    expect(() => planMemory({ modelConfig: llama2_7b, deviceMemory: device, budget: { gpuMemoryUtilization: 0.9 }, measured })).toThrow(
      expect.objectContaining({ message: expect.stringMatching(/^planMemory: only 66.50 GiB of 80.00 GiB is free/) }),
    );
    expect(() => planMemory({ modelConfig: llama2_7b, deviceMemory: device, budget: { numBlocks: 1 }, measured: { weightsResident: true } })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/^planMemory: measured.weightsBytes \(weightsResident\) must be a positive integer/) }),
    );
  });

  test('nothing left for the KV cache is an error', () => {
    expect(() => planMemory({ modelConfig: llama2_7b, deviceMemory: { totalBytes: 16 * GiB }, budget: { gpuMemoryUtilization: 0.9 }, measured })).toThrow(
      expect.objectContaining({ message: expect.stringMatching(/^planMemory: no memory is left for the KV cache: gpuMemoryUtilization 0.9 gives 14.40 GiB, and weights 13.50 GiB/) }),
    );
  });
});

describe('other budgets, feasibility and validation', () => {
  test('kvCacheBytes and numBlocks', () => {
    const base = { modelConfig: llama3_8b, deviceMemory: { totalBytes: 80 * GiB } };
    const bytes = planMemory({ ...base, budget: { kvCacheBytes: 10 * GiB + 5 } });
    expect([bytes.policy, bytes.numBlocks, bytes.kvCacheBytes]).toEqual(['kvCacheBytes', 5120, 10 * GiB]);
    const blocks = planMemory({ ...base, blockSize: 32, budget: { numBlocks: 1000 } });
    expect([blocks.numBlocks, blocks.kvTokens, blocks.kvBytesPerBlock]).toEqual([1000, 32000, 131072 * 32]);
  });

  test('any power-of-two block size plans; others are rejected', () => {
    const base = { modelConfig: llama3_8b, deviceMemory: { totalBytes: 80 * GiB }, budget: { numBlocks: 4096 } };
    for (const blockSize of [8, 16, 32, 64, 128]) expect(planMemory({ ...base, blockSize }).blockSize).toBe(blockSize);
    expect(() => planMemory({ ...base, blockSize: 24 })).toThrow(expect.objectContaining({ message: 'planMemory: blockSize 24 is not a power of two' }));
  });

  test('maxModelLen beyond what the KV cache holds is an error naming the numbers and the fix', () => {
    expect(() => planMemory({ modelConfig: llama3_8b, deviceMemory: { totalBytes: 80 * GiB }, maxModelLen: 8192, budget: { numBlocks: 100 } })).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_ARGUMENT',
        message: 'planMemory: maxModelLen 8192 needs 512 blocks of 16 tokens, but the KV cache holds 100 blocks (1600 tokens); lower maxModelLen to at most 1600, or give the KV cache more memory (1.00 GiB for one full sequence)',
      }),
    );
  });

  test('the budget must name exactly one policy', () => {
    const base = { modelConfig: llama3_8b, deviceMemory: { totalBytes: 80 * GiB } };
    expect(() => planMemory({ ...base, budget: { gpuMemoryUtilization: 0.9, numBlocks: 3 } as never })).toThrow(
      expect.objectContaining({ message: 'planMemory: budget must have exactly one of gpuMemoryUtilization, freeMemoryFraction (with optional maxTokens), kvCacheBytes, numBlocks; got gpuMemoryUtilization, numBlocks' }),
    );
    expect(() => planMemory({ ...base, budget: {} as never })).toThrow(expect.objectContaining({ message: expect.stringMatching(/got none$/) }));
    expect(() => planMemory({ ...base, budget: { numBlocks: 10, maxTokens: 5 } as never })).toThrow(
      expect.objectContaining({ message: 'planMemory: maxTokens goes with freeMemoryFraction' }),
    );
  });

  test('bad configs and devices are named', () => {
    expect(() => planMemory({ modelConfig: { ...llama3_8b, num_key_value_heads: 5 }, deviceMemory: { totalBytes: GiB }, budget: { numBlocks: 1 } })).toThrow(
      expect.objectContaining({ message: 'planMemory: num_attention_heads 32 is not a multiple of num_key_value_heads 5' }),
    );
    expect(() => planMemory({ modelConfig: { ...llama3_8b, hidden_size: -1 }, deviceMemory: { totalBytes: GiB }, budget: { numBlocks: 1 } })).toThrow(
      expect.objectContaining({ message: 'planMemory: modelConfig.hidden_size must be a positive integer, got -1' }),
    );
    expect(() => planMemory({ modelConfig: llama3_8b, deviceMemory: { totalBytes: GiB, freeBytes: 2 * GiB }, budget: { numBlocks: 1 } })).toThrow(
      expect.objectContaining({ message: `planMemory: deviceMemory.freeBytes ${2 * GiB} exceeds totalBytes ${GiB}` }),
    );
  });

  test('a real device can be asked for its memory (the CPU here)', () => {
    const p = planMemory({ modelConfig: { ...llama3_8b, num_hidden_layers: 2, vocab_size: 1000 }, deviceMemory: 'cpu', maxModelLen: 512, budget: { kvCacheBytes: 64 * MiB } });
    expect(p.totalBytes).toBeGreaterThan(0);
    expect(p.numBlocks).toBe(Math.floor((64 * MiB) / (2 * 2 * 8 * 128 * 2 * 16)));
  });
});

describe('free memory of a real device', () => {
  test("counts what the process's own pool holds unused (a disposed engine's KV cache) as free", () => {
    const config = { ...llama3_8b, num_hidden_layers: 2, vocab_size: 1000 };
    const t = Tensor.empty([256 * MiB], { dtype: 'uint8', device: 'cpu' });
    t.dispose(); // back to the default pool, which keeps it
    const poolFree = memoryReport('cpu').pool!.free;
    expect(poolFree).toBeGreaterThanOrEqual(256 * MiB);
    const p = planMemory({ modelConfig: config, deviceMemory: 'cpu', maxModelLen: 512, budget: { numBlocks: 32 } });
    const available = devices().cpu.availableMemory;
    // The OS's figure moves a little between the two reads; the pool's 256 MiB may not go missing.
    expect(p.freeBytes - available).toBeGreaterThan(poolFree - 64 * MiB);
  });
});

describe('pagedllm plan (CLI)', () => {
  const cli = path.resolve(__dirname, '..', '..', 'dist', 'cli.js');
  const configFile = path.join(os.tmpdir(), `pagedllm-plan-${process.pid}.json`);
  beforeAll(() => fs.writeFileSync(configFile, JSON.stringify(llama2_7b)));
  afterAll(() => fs.rmSync(configFile, { force: true }));
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'plan', '--config', configFile, ...args], { encoding: 'utf8' });

  test('--json prints the same plan as planMemory', () => {
    const r = run('--gpu-memory', '80GiB', '--free-memory-fraction', '0.9', '--max-tokens', '50000', '--block-size', '64', '--json');
    expect(r.status).toBe(0);
    const want = planMemory({ modelConfig: llama2_7b, deviceMemory: { totalBytes: 80 * GiB }, blockSize: 64, budget: { freeMemoryFraction: 0.9, maxTokens: 50000 } });
    expect(JSON.parse(r.stdout)).toEqual(want);
    expect(want.numBlocks).toBe(782);
  });

  test('the table names the blocks and tokens; errors exit 1 with the code', () => {
    const r = run('--gpu-memory', '85899345920', '--gpu-memory-utilization', '0.9', '--max-model-len', '2048');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^KV blocks +\d+$/m);
    const bad = run('--gpu-memory', '80 parsecs', '--num-blocks', '10');
    expect([bad.status, bad.stderr.trim()]).toEqual([1, 'pagedllm: ERR_INVALID_ARGUMENT: --gpu-memory: expected a size such as 80GiB or 85899345920, got "80 parsecs"']);
    const two = run('--gpu-memory', '80GiB', '--num-blocks', '10', '--kv-cache-bytes', '1GiB');
    expect(two.stderr.trim()).toBe('pagedllm: ERR_INVALID_ARGUMENT: give exactly one of --gpu-memory-utilization, --free-memory-fraction, --kv-cache-bytes, --num-blocks');
  });
});
