#!/usr/bin/env node
/**
 * The `pagedllm` command: `pagedllm devices` (the default) prints the devices
 * found and the backend chosen; `pagedllm plan` sizes a KV cache; `pagedllm
 * generate` runs a model folder through the Engine; `pagedllm demo` (what `npm start`
 * runs) serves a workload on a small random model and writes an HTML report; `pagedllm doctor`
 * probes the backend in a child process; `pagedllm quantize` writes an AWQ checkpoint.
 * commander parses the arguments.
 */
import { SingleBar } from 'cli-progress';
import { Command } from 'commander';

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { devices, type DeviceSpec, type DevicesReport } from './device';
import { InvalidArgumentError, PagedLLMError } from './errors';
import { runDemo } from './demo';
import { Engine } from './engine';
import { readJsonObject } from './json-file';
import { parseLlamaConfig } from './model';
import { type LoadProgress } from './safetensors';
import { Tokenizer } from './tokenizer';
import { planMemory, type KvDType, type MemoryBudget, type MemoryPlan } from './planner';

/**
 * A weight-loading progress bar on stderr (cli-progress): drawn in place on a terminal; with
 * `force` also when stderr is not one (a line per update, at most every 200 ms, and at the end).
 * Null when neither.
 */
function loadProgressBar(force: boolean): { onLoadProgress: (p: LoadProgress) => void; stop: () => void } | null {
  if (!force && !process.stderr.isTTY) return null;
  const bar = new SingleBar({
    stream: process.stderr, noTTYOutput: force, notTTYSchedule: 200, hideCursor: true, clearOnComplete: false,
    format: 'loading weights [{bar}] {percentage}% | {doneMiB}/{totalMiB} MiB | {tensors} | {tensor}',
  });
  let state: 'idle' | 'drawing' | 'done' = 'idle';
  const mib = (b: number): string => (b / 2 ** 20).toFixed(0);
  const stop = (): void => {
    if (state === 'drawing') bar.stop();
    state = 'done';
  };
  return {
    onLoadProgress: (p) => {
      if (state === 'done') return;
      const payload = { doneMiB: mib(p.bytesDone), totalMiB: mib(p.bytesTotal), tensors: `${p.tensorsDone}/${p.tensorsTotal} tensors`, tensor: p.tensor };
      if (state === 'idle') {
        bar.start(Math.max(1, p.bytesTotal), p.bytesDone, payload);
        state = 'drawing';
      } else {
        bar.update(p.bytesDone, payload);
      }
      // Finished: end the bar before the engine logs its plan below it.
      if (p.tensorsDone === p.tensorsTotal) stop();
    },
    stop,
  };
}

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

function parseIds(text: string, option: string): number[] {
  return text.split(',').map((t) => {
    const id = parseNumber(t, option);
    if (!Number.isSafeInteger(id) || id < 0) throw new InvalidArgumentError(`${option}: expected comma-separated token ids, got ${JSON.stringify(text)}`);
    return id;
  });
}

program
  .command('generate')
  .description('generate from a Hugging Face model folder (Llama, Mistral, Qwen2; fp32/fp16/bf16 weights) through the Engine; greedy unless --temperature > 0')
  .requiredOption('--model <dir>', 'the model folder (config.json, *.safetensors, tokenizer.json)')
  .option('--prompt <text>', 'the prompt text (encoded with the folder\'s tokenizer.json)')
  .option('--prompt-ids <ids>', 'the prompt as token ids, e.g. 1,450,4996')
  .option('--max-tokens <n>', 'tokens to generate', '16')
  .option('--temperature <t>', 'sampling temperature (0: greedy)', '0')
  .option('--top-k <k>', 'keep the k most likely tokens (0: all)', '0')
  .option('--top-p <p>', 'nucleus sampling threshold', '1')
  .option('--min-p <p>', 'drop tokens below min-p × the most likely', '0')
  .option('--seed <s>', 'random seed (the same seed gives the same tokens)')
  .option('--n <n>', 'choices sampled from the prompt (its KV blocks shared)', '1')
  .option('--stop <text...>', 'stop when the text contains one of these')
  .option('--device <device>', 'cpu, cuda, cuda:N or auto', 'auto')
  .option('--json', 'print one JSON object')
  .option('--progress', 'show the weight-loading progress bar even when stderr is not a terminal')
  .action(async (o: { model: string; prompt?: string; promptIds?: string; maxTokens: string; temperature: string; topK: string; topP: string; minP: string; seed?: string; n: string; stop?: string[]; device: string; json?: boolean; progress?: boolean }) => {
    if ((o.prompt === undefined) === (o.promptIds === undefined)) throw new InvalidArgumentError('give exactly one of --prompt and --prompt-ids');
    const maxTokens = parseNumber(o.maxTokens, '--max-tokens');
    const n = parseNumber(o.n, '--n');
    const configFile = path.join(o.model, 'config.json');
    const config = parseLlamaConfig(await readJsonObject(configFile, 'config.json'), configFile);
    const promptTokenIds = o.promptIds !== undefined ? parseIds(o.promptIds, '--prompt-ids') : (await Tokenizer.fromFolder(o.model)).encode(o.prompt!);
    // Sized for this request: the KV cache holds n sequences of prompt + maxTokens.
    const progress = o.json ? null : loadProgressBar(o.progress === true);
    let engine: Engine;
    try {
      engine = await Engine.create({
        model: o.model, device: o.device as DeviceSpec | 'auto', maxNumSeqs: Math.max(1, n), logger: o.json ? null : undefined,
        maxModelLen: Math.min(config.maxPositionEmbeddings, promptTokenIds.length + Math.max(1, maxTokens)),
        onLoadProgress: progress?.onLoadProgress,
      });
    } finally {
      progress?.stop();
    }
    try {
      const stream = engine.generate({ promptTokenIds }, {
        maxTokens, n, stop: o.stop,
        temperature: parseNumber(o.temperature, '--temperature'), topK: parseNumber(o.topK, '--top-k'), topP: parseNumber(o.topP, '--top-p'),
        minP: parseNumber(o.minP, '--min-p'), ...(o.seed === undefined ? {} : { seed: parseNumber(o.seed, '--seed') }),
      });
      if (!o.json && n === 1 && engine.tokenizer) for await (const chunk of stream) process.stdout.write(chunk.text);
      const r = await stream.result();
      if (o.json) {
        console.log(JSON.stringify({
          choices: r.choices.map((c) => ({ tokenIds: c.tokenIds, text: engine.tokenizer ? c.text : null, finishReason: c.finishReason })),
          usage: { promptTokens: r.usage.promptTokens, completionTokens: r.usage.completionTokens },
          timings: { prefillMs: r.timings.timeToFirstTokenMs, decodeTokensPerSecond: Number.isFinite(r.timings.decodeTokensPerSecond) ? r.timings.decodeTokensPerSecond : null },
        }));
      } else {
        if (n === 1 && engine.tokenizer) process.stdout.write('\n');
        else for (const c of r.choices) console.log(`[${c.index}] ${engine.tokenizer ? c.text : c.tokenIds.join(' ')}`);
        console.error(`${r.usage.completionTokens} tokens (${r.choices.map((c) => c.finishReason).join(', ')}); prompt ${r.usage.promptTokens} tokens, first token after ${r.timings.timeToFirstTokenMs.toFixed(1)} ms; decode ${r.timings.decodeTokensPerSecond.toFixed(1)} tokens/s`);
      }
    } finally {
      engine.dispose();
    }
  });

program
  .command('demo')
  .description('serve a workload of concurrent requests on a small random Llama-shaped model through the Engine, print memory and KV figures, and write an HTML report (no download; what `npm start` runs)')
  .option('--device <device>', 'cpu, cuda, cuda:N or auto', 'auto')
  .option('--requests <n>', 'requests in the workload', '24')
  .option('--report <file>', 'the HTML report', 'pagedllm-demo.html')
  .action(async (o: { device: string; requests: string; report: string }) => {
    const device = (o.device === 'auto' ? devices().selected : o.device) as DeviceSpec;
    await runDemo({ device, report: path.resolve(o.report), requests: parseNumber(o.requests, '--requests') });
  });

program
  .command('doctor')
  .description('which backend pagedllm would use and why, probed in a child process (a native crash there cannot take this one down)')
  .option('--json', 'print the findings as JSON')
  .action((o: { json?: boolean }) => {
    const probe = `const p=require(${JSON.stringify(path.join(__dirname, 'index.js'))});const r=p.devices();` +
      `process.stdout.write(JSON.stringify({report:r,addon:require(${JSON.stringify(path.join(__dirname, 'native.js'))}).nativeAddonPath()}))`;
    const child = spawnSync(process.execPath, ['-e', probe], { cwd: __dirname, encoding: 'utf8', timeout: 60000 });
    const findings: Record<string, unknown> = { node: process.version, platform: `${process.platform}-${process.arch}`, env: { PAGEDLLM_DEVICE: process.env.PAGEDLLM_DEVICE ?? null, PAGEDLLM_ADDON: process.env.PAGEDLLM_ADDON ?? null, PAGEDLLM_THREADS: process.env.PAGEDLLM_THREADS ?? null } };
    let report: DevicesReport | null = null;
    if (child.status === 0) {
      const probed = JSON.parse(child.stdout) as { report: DevicesReport; addon: string | null };
      report = probed.report;
      findings.addon = probed.addon;
      findings.backend = report.selected;
      findings.why = report.selectionReason;
      findings.build = report.build;
      findings.cuda = report.cuda.available ? { devices: report.cuda.devices.map((d) => `${d.device} ${d.name} sm_${d.computeCapability.replace('.', '')}`) } : { unavailable: report.cuda.reason };
      findings.cpu = { cores: report.cpu.physicalCores, simd: report.cpu.simd };
    } else {
      findings.backend = null;
      findings.why = `the probe failed (${child.signal ? `signal ${child.signal}` : `exit ${child.status}`}): ${(child.stderr || child.error?.message || '').trim().split('\n').slice(-3).join(' / ')}`;
    }
    if (o.json) {
      console.log(JSON.stringify(findings, null, 2));
    } else {
      console.log(`node ${process.version} on ${process.platform}-${process.arch}`);
      if (findings.addon) console.log(`addon ${String(findings.addon)}`);
      if (report) printDevices(report);
      else console.log(`backend: none — ${String(findings.why)}`);
    }
    if (!report) process.exitCode = 1;
  });

program
  .command('quantize')
  .description('quantize a float Hugging Face model folder to AWQ int4 (an AutoAWQ GEMM checkpoint) and report the error of AWQ vs plain round-to-nearest on held-out tokens')
  .requiredOption('--model <dir>', 'the float model folder (config.json, *.safetensors, tokenizer.json)')
  .requiredOption('--out <dir>', 'the folder to write')
  .option('--group-size <n>', 'input rows per scale and zero point: 32, 64, 128 or -1 (one group)', '128')
  .option('--calibration <source>', 'a text file, or comma-separated token ids (default: seeded random token ids)')
  .option('--alpha-grid <n>', 'number of α values searched in [0, 1) (1: plain round-to-nearest)', '20')
  .option('--seed <n>', 'seed of the random calibration tokens', '0')
  .option('--json', 'print the report as JSON')
  .action(async (o: { model: string; out: string; groupSize: string; calibration?: string; alphaGrid: string; seed: string; json?: boolean }) => {
    const { quantizeCommand } = await import('./quantize');
    await quantizeCommand(o);
  });

program.parseAsync(process.argv).catch((error: unknown) => {
  const message = error instanceof PagedLLMError ? `${error.code}: ${error.message}` : String(error);
  console.error(`pagedllm: ${message}`);
  process.exitCode = 1;
});
