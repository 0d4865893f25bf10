#!/usr/bin/env node
/**
 * The `pagedllm` command: `pagedllm devices` (the default) prints the devices
 * found and the backend chosen; `pagedllm plan` sizes a KV cache; `pagedllm
 * generate` runs a model folder; `pagedllm demo` (what `npm start`
 * runs) makes a small random model and generates with it, reporting memory by
 * category and speed. commander parses the arguments.
 */
import { Command } from 'commander';

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { devices, type DeviceSpec, type DevicesReport } from './device';
import { InvalidArgumentError, PagedLLMError } from './errors';
import { generate, type GenerateResult } from './generate';
import { MEMORY_CATEGORIES, memoryReport } from './memory';
import { Model } from './model';
import { planMemory, type KvDType, type MemoryBudget, type MemoryPlan } from './planner';
import { makeTestModel } from './test-model';
import { type SamplingParams } from './sampling';
import { Tokenizer } from './tokenizer';

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function printDevices(report: DevicesReport): void {
  const { cpu, cuda } = report;
  console.log(`pagedllm ${report.build.version} (${report.build.cuda ? 'CPU + CUDA' : 'CPU only'} build)`);
  console.log(`backend: ${report.selected} (${report.selectionReason})`);
  console.log('');
  console.log(`cpu      ${cpu.modelName || cpu.arch}`);
  console.log(`         ${cpu.physicalCores} physical / ${cpu.logicalCores} logical cores, ${gib(cpu.totalMemory)} memory (${gib(cpu.availableMemory)} available)`);
  console.log(`         SIMD: ${cpu.simd.join(' ') || 'none detected'}`);
  if (cuda.available) {
    console.log(`cuda     driver ${cuda.driverVersion}, runtime ${cuda.runtimeVersion}, compiled for ${cuda.archs}`);
  } else {
    console.log(`cuda     not available: ${cuda.reason}`);
  }
  for (const d of cuda.devices) {
    console.log(`${d.device.padEnd(9)}${d.name}, sm_${d.computeCapability.replace('.', '')}, ${gib(d.freeMemory)} free of ${gib(d.totalMemory)}${d.supported ? '' : ' (unsupported: needs sm_75+)'}`);
  }
}

// "80GiB", "1.5 GB", "4096": bytes (binary units for KiB/MiB/GiB/TiB, decimal for KB/MB/GB/TB).
function parseBytes(text: string, option: string): number {
  const match = /^\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$/i.exec(text);
  const units: Record<string, number> = { b: 1, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12 };
  const bytes = match ? Math.floor(Number(match[1]) * units[(match[2] ?? 'b').toLowerCase()]!) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new InvalidArgumentError(`${option}: expected a size such as 80GiB or 85899345920, got ${JSON.stringify(text)}`);
  return bytes;
}

function parseNumber(text: string, option: string): number {
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value)) throw new InvalidArgumentError(`${option}: expected a number, got ${JSON.stringify(text)}`);
  return value;
}

function printPlan(plan: MemoryPlan): void {
  const gib = (b: number): string => `${(b / 2 ** 30).toFixed(2)} GiB`;
  const rows: [string, string][] = [
    ['policy', plan.policy],
    ['device memory', `${gib(plan.freeBytes)} free of ${gib(plan.totalBytes)}`],
    ['weights', gib(plan.weightsBytes)],
    ['activations (estimate)', gib(plan.activationBytes)],
    ['workspace (estimate)', gib(plan.workspaceBytes)],
    ['KV dtype', plan.kvDtype],
    ['KV bytes per token', `${plan.kvBytesPerToken}`],
    ['block size', `${plan.blockSize} tokens (${(plan.kvBytesPerBlock / 2 ** 20).toFixed(2)} MiB)`],
    ['KV blocks', `${plan.numBlocks}`],
    ['KV tokens', `${plan.kvTokens}`],
    ['KV cache', gib(plan.kvCacheBytes)],
    ['max model length', `${plan.maxModelLen}`],
    [`sequences of ${plan.maxModelLen} at once`, `${plan.maxConcurrency}`],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) console.log(`${k.padEnd(width)}  ${v}`);
  for (const w of plan.warnings) console.log(`warning: ${w}`);
}

const program = new Command()
  .name('pagedllm')
  .description('LLM inference for Node.js with a paged KV cache')
  .showHelpAfterError();

program
  .command('devices', { isDefault: true })
  .description('show the CPU and CUDA devices and the backend pagedllm chooses')
  .option('--json', 'print the report as JSON')
  .action((options: { json?: boolean }) => {
    const report = devices();
    if (options.json) console.log(JSON.stringify(report, null, 2));
    else printDevices(report);
  });

program
  .command('plan')
  .description('size the KV cache for a model on a device, by an explicit budget (no GPU needed)')
  .requiredOption('--config <file>', 'the model\'s config.json')
  .requiredOption('--gpu-memory <size>', 'device memory, e.g. 80GiB')
  .option('--free-memory <size>', 'free device memory before loading (default: all of it)')
  .option('--gpu-memory-utilization <u>', 'vLLM: fraction of total memory for the whole instance')
  .option('--free-memory-fraction <f>', 'TensorRT-LLM: fraction of the memory free after weights and activations')
  .option('--max-tokens <n>', 'TensorRT-LLM: cap on KV tokens (with --free-memory-fraction)')
  .option('--kv-cache-bytes <size>', 'KV cache size')
  .option('--num-blocks <n>', 'number of KV blocks')
  .option('--block-size <n>', 'tokens per block', '16')
  .option('--kv-dtype <dtype>', 'float16, bfloat16, float32, int8 or fp8', 'float16')
  .option('--max-model-len <n>', 'longest sequence (default: max_position_embeddings)')
  .option('--max-num-seqs <n>', 'sequences per step', '256')
  .option('--json', 'print the plan as JSON')
  .action((o: Record<string, string | boolean | undefined>) => {
    let config: unknown;
    try {
      config = JSON.parse(fs.readFileSync(o.config as string, 'utf8'));
    } catch (error) {
      throw new InvalidArgumentError(`--config: cannot read ${o.config}: ${(error as Error).message}`);
    }
    const num = (key: string, flag: string): number | undefined => (o[key] === undefined ? undefined : parseNumber(o[key] as string, flag));
    const budgets: MemoryBudget[] = [];
    if (o.gpuMemoryUtilization !== undefined) budgets.push({ gpuMemoryUtilization: num('gpuMemoryUtilization', '--gpu-memory-utilization')! });
    if (o.freeMemoryFraction !== undefined) budgets.push({ freeMemoryFraction: num('freeMemoryFraction', '--free-memory-fraction')!, maxTokens: num('maxTokens', '--max-tokens') });
    if (o.kvCacheBytes !== undefined) budgets.push({ kvCacheBytes: parseBytes(o.kvCacheBytes as string, '--kv-cache-bytes') });
    if (o.numBlocks !== undefined) budgets.push({ numBlocks: num('numBlocks', '--num-blocks')! });
    if (budgets.length !== 1) {
      throw new InvalidArgumentError('give exactly one of --gpu-memory-utilization, --free-memory-fraction, --kv-cache-bytes, --num-blocks');
    }
    if (o.maxTokens !== undefined && o.freeMemoryFraction === undefined) throw new InvalidArgumentError('--max-tokens goes with --free-memory-fraction');
    const plan = planMemory({
      modelConfig: config as never,
      deviceMemory: {
        totalBytes: parseBytes(o.gpuMemory as string, '--gpu-memory'),
        freeBytes: o.freeMemory === undefined ? undefined : parseBytes(o.freeMemory as string, '--free-memory'),
      },
      budget: budgets[0]!,
      blockSize: num('blockSize', '--block-size'),
      kvDtype: o.kvDtype as KvDType,
      maxModelLen: num('maxModelLen', '--max-model-len'),
      maxNumSeqs: num('maxNumSeqs', '--max-num-seqs'),
    });
    if (o.json) console.log(JSON.stringify(plan, null, 2));
    else printPlan(plan);
  });

function printMemory(device: string): void {
  const report = memoryReport(device as DeviceSpec);
  const mib = (b: number): string => `${(b / 2 ** 20).toFixed(2)} MiB`;
  console.log(`memory (${report.kind} on ${device}): current / peak by category`);
  for (const c of MEMORY_CATEGORIES) {
    const u = report.categories?.[c];
    if (u && u.peak > 0) console.log(`  ${c.padEnd(12)} ${mib(u.current).padStart(12)} / ${mib(u.peak)}`);
  }
  if (report.pool) console.log(`  pool reserved ${mib(report.pool.reserved)}, in use ${mib(report.pool.inUse)}`);
}

async function runGenerate(model: Model, tokenizer: Tokenizer | null, promptIds: number[], maxTokens: number, sampling: SamplingParams = {}): Promise<GenerateResult> {
  return generate(model, promptIds, { maxTokens, stopTokenIds: tokenizer?.eosTokenIds ?? [], sampling });
}

program
  .command('generate')
  .description('generate from a Hugging Face model folder (Llama, Mistral, Qwen2; fp32/fp16/bf16 weights); greedy unless --temperature > 0')
  .requiredOption('--model <dir>', 'the model folder (config.json, *.safetensors, tokenizer.json)')
  .option('--prompt <text>', 'the prompt text (encoded with the folder\'s tokenizer.json)')
  .option('--prompt-ids <ids>', 'the prompt as token ids, e.g. 1,450,4996')
  .option('--max-tokens <n>', 'tokens to generate', '16')
  .option('--temperature <t>', 'sampling temperature (0: greedy)', '0')
  .option('--top-k <k>', 'keep the k most likely tokens (0: all)', '0')
  .option('--top-p <p>', 'nucleus sampling threshold', '1')
  .option('--min-p <p>', 'drop tokens below min-p × the most likely', '0')
  .option('--seed <s>', 'random seed (the same seed gives the same tokens)')
  .option('--device <device>', 'cpu, cuda, cuda:N or auto', 'auto')
  .option('--json', 'print one JSON object')
  .action(async (o: { model: string; prompt?: string; promptIds?: string; maxTokens: string; temperature: string; topK: string; topP: string; minP: string; seed?: string; device: string; json?: boolean }) => {
    if ((o.prompt === undefined) === (o.promptIds === undefined)) throw new InvalidArgumentError('give exactly one of --prompt and --prompt-ids');
    const maxTokens = parseNumber(o.maxTokens, '--max-tokens');
    const device = o.device === 'auto' ? devices().selected : o.device;
    const tokenizer = o.prompt !== undefined || fs.existsSync(path.join(o.model, 'tokenizer.json')) ? await Tokenizer.fromFolder(o.model) : null;
    const promptIds = o.promptIds !== undefined
      ? o.promptIds.split(',').map((t) => parseNumber(t, '--prompt-ids'))
      : tokenizer!.encode(o.prompt!);
    const model = await Model.load(o.model, { device: device as DeviceSpec });
    try {
      const sampling: SamplingParams = {
        temperature: parseNumber(o.temperature, '--temperature'), topK: parseNumber(o.topK, '--top-k'), topP: parseNumber(o.topP, '--top-p'),
        minP: parseNumber(o.minP, '--min-p'), ...(o.seed === undefined ? {} : { seed: parseNumber(o.seed, '--seed') }),
      };
      const r = await runGenerate(model, tokenizer, promptIds, maxTokens, sampling);
      const text = tokenizer ? tokenizer.decode(r.tokenIds, { skipSpecialTokens: true }) : null;
      if (o.json) {
        console.log(JSON.stringify({
          choices: [{ tokenIds: r.tokenIds, text, finishReason: r.finishReason }],
          usage: { promptTokens: r.promptTokens, completionTokens: r.tokenIds.length },
          timings: { prefillMs: r.prefillMs, decodeTokensPerSecond: Number.isFinite(r.decodeTokensPerSecond) ? r.decodeTokensPerSecond : null },
        }));
      } else {
        console.log(text ?? r.tokenIds.join(' '));
        console.error(`${r.tokenIds.length} tokens (${r.finishReason}); prefill ${r.promptTokens} tokens in ${r.prefillMs.toFixed(1)} ms; decode ${r.decodeTokensPerSecond.toFixed(1)} tokens/s`);
      }
    } finally {
      model.dispose();
    }
  });

program
  .command('demo')
  .description('make a small random Llama-shaped model, load it and generate with it (no download; what `npm start` runs)')
  .option('--device <device>', 'cpu, cuda, cuda:N or auto', 'auto')
  .option('--max-tokens <n>', 'tokens to generate', '48')
  .action(async (o: { device: string; maxTokens: string }) => {
    const device = o.device === 'auto' ? devices().selected : o.device;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-demo-'));
    try {
      const shape = { arch: 'llama' as const, hidden: 256, layers: 4, heads: 4, kvHeads: 2, intermediate: 704, vocab: 2048, dtype: 'float16' as const, initStd: 0.05, seed: 1 };
      console.log(`pagedllm demo on ${device}: a random Llama-shaped model (hidden ${shape.hidden}, ${shape.layers} layers, ${shape.heads} heads / ${shape.kvHeads} KV heads, vocab ${shape.vocab}, ${shape.dtype} weights) in ${dir}`);
      await makeTestModel({ ...shape, out: dir });
      const tokenizer = await Tokenizer.fromFolder(dir);
      const model = await Model.load(dir, { device: device as DeviceSpec });
      try {
        const prompt = 'The paged KV cache keeps every sequence in fixed-size blocks, so memory is never reserved for tokens that do not exist.';
        const ids = tokenizer.encode(prompt);
        const r = await runGenerate(model, tokenizer, ids, parseNumber(o.maxTokens, '--max-tokens'));
        console.log(`prompt: ${ids.length} tokens; generated ${r.tokenIds.length} tokens greedily (${r.finishReason}); the weights are random, so the tokens are noise:`);
        console.log(`  [${r.tokenIds.slice(0, 24).join(', ')}${r.tokenIds.length > 24 ? ', …' : ''}]`);
        console.log(`prefill ${(r.promptTokens / (r.prefillMs / 1000)).toFixed(0)} tokens/s (${r.prefillMs.toFixed(1)} ms); decode ${r.decodeTokensPerSecond.toFixed(1)} tokens/s; KV cache ${r.kvBlocks} blocks of 16 tokens`);
        printMemory(device);
      } finally {
        model.dispose();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

program.parseAsync(process.argv).catch((error: unknown) => {
  const message = error instanceof PagedLLMError ? `${error.code}: ${error.message}` : String(error);
  console.error(`pagedllm: ${message}`);
  process.exitCode = 1;
});
