#!/usr/bin/env node
/**
 * The `pagedllm` command. Today: `pagedllm devices` (the default) prints the
 * devices found and the backend chosen. commander parses the arguments.
 */
import { Command } from 'commander';

import { devices, type DevicesReport } from './device';
import { PagedLLMError } from './errors';

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

program.parseAsync(process.argv).catch((error: unknown) => {
  const message = error instanceof PagedLLMError ? `${error.code}: ${error.message}` : String(error);
  console.error(`pagedllm: ${message}`);
  process.exitCode = 1;
});
