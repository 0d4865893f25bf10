#!/usr/bin/env node
/**
 * The `pagedllm` command: `pagedllm devices` (the default) prints the devices
 * found and the backend chosen; `pagedllm plan` sizes a KV cache. commander
 * parses the arguments.
 */
import { Command } from 'commander';

import * as fs from 'node:fs';

import { devices, type DevicesReport } from './device';
import { InvalidArgumentError, PagedLLMError } from './errors';
import { planMemory, type KvDType, type MemoryBudget, type MemoryPlan } from './planner';

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

program.parseAsync(process.argv).catch((error: unknown) => {
  const message = error instanceof PagedLLMError ? `${error.code}: ${error.message}` : String(error);
  console.error(`pagedllm: ${message}`);
  process.exitCode = 1;
});
