/**
 * Allocators side by side, in one run (issue: memory resources):
 *   (a) fixed-size alloc+free pairs at 256 B, 64 KiB, 16 MiB;
 *   (b) a random-size trace shaped like decode steps (per-layer activations and
 *       workspace at a varying batch size), timed per operation;
 *   (c) that trace's footprint: peak reserved / peak in use, and upstream
 *       allocations in the steady state.
 * CPU: malloc/free against our pool over host memory (and the raw host
 * resource). GPU (when present): cudaMalloc/cudaFree, cudaMallocAsync with and
 * without a release threshold, and our pool over cudaMalloc.
 *
 * Per-call figures come from a native timing loop (1000 pairs per sample, no
 * N-API call in between, no device synchronisation); tinybench runs the
 * samples and supplies the statistics (`overriddenDuration`).
 *
 *   npm run bench:allocators            # prints tables, writes benchmarks/results/allocators-<device>-<date>.json
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { createMemoryResource, devices, Stream, type MemoryResource } from '../dist';
import { native } from '../dist/native';
import { gitCommit } from './common';

const PAIRS_PER_SAMPLE = 1000;
const SIZES = [256, 64 << 10, 16 << 20];

interface Contender {
  name: string;
  device: 'cpu' | `cuda:${number}`;
  /** null: malloc/free */
  resource: MemoryResource | null;
}

function contenders(): { list: Contender[]; cudaNote: string | null } {
  const list: Contender[] = [
    { name: 'cpu: malloc/free', device: 'cpu', resource: null },
    { name: 'cpu: host (aligned_alloc, stream-ordered free)', device: 'cpu', resource: createMemoryResource({ kind: 'host' }) },
    { name: 'cpu: pagedllm pool(host)', device: 'cpu', resource: createMemoryResource({ kind: 'pool', device: 'cpu' }) },
  ];
  const report = devices();
  if (!report.cuda.available) return { list, cudaNote: `GPU allocators skipped: ${report.cuda.reason}` };
  const gpu = report.cuda.devices.find((d) => d.supported)!.device;
  list.push(
    { name: 'gpu: cudaMalloc/cudaFree', device: gpu, resource: createMemoryResource({ kind: 'cuda', device: gpu }) },
    { name: 'gpu: cudaMallocAsync (threshold 0)', device: gpu, resource: createMemoryResource({ kind: 'cuda-async', device: gpu }) },
    {
      name: 'gpu: cudaMallocAsync (threshold max)',
      device: gpu,
      resource: createMemoryResource({ kind: 'cuda-async', device: gpu, releaseThreshold: Number.MAX_SAFE_INTEGER }),
    },
    { name: 'gpu: pagedllm pool(cuda)', device: gpu, resource: createMemoryResource({ kind: 'pool', device: gpu }) },
  );
  return { list, cudaNote: null };
}

/**
 * A decode-shaped trace for a Llama-2-7B-like model (hidden 4096, 32 layers,
 * intermediate 11008, vocab 32000, fp16 activations): per step a batch size,
 * per layer the QKV, attention output, split-K workspace, gate/up/down MLP
 * activations (freed as the layer goes), then fp32 logits, the sampler's
 * probabilities and the sampled ids, all freed once the step has sampled. The
 * first step runs at the largest batch and split (what an engine's profiling
 * step does); later steps draw batch sizes and splits at random. Returns the
 * ops and where the steady state begins (the second step).
 */
function decodeTrace(steps: number, seed: number): { trace: Float64Array; steadyFrom: number } {
  let state = seed >>> 0;
  const random = (): number => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
  const hidden = 4096, layers = 32, intermediate = 11008, vocab = 32000, heads = 32, maxBatch = 64;
  const ops: number[] = [];
  let slots = 0;
  const alloc = (bytes: number): number => {
    ops.push(bytes);
    return slots++;
  };
  const free = (slot: number): void => void ops.push(-slot - 1);
  let steadyFrom = 0;
  for (let step = 0; step < steps; step++) {
    if (step === 1) steadyFrom = ops.length;
    const batch = step === 0 ? maxBatch : 1 + Math.floor(random() * maxBatch);
    const partitions = step === 0 ? 8 : 1 + Math.floor(random() * 8); // split-K partitions vary with context length
    let residual = alloc(batch * hidden * 2);
    for (let layer = 0; layer < layers; layer++) {
      const normed = alloc(batch * hidden * 2);
      const qkv = alloc(batch * 3 * hidden * 2);
      const workspace = alloc(batch * heads * partitions * (128 + 2) * 4);
      const attn = alloc(batch * hidden * 2);
      free(workspace);
      free(qkv);
      const o = alloc(batch * hidden * 2);
      free(attn);
      free(residual);
      residual = o;
      const gate = alloc(batch * intermediate * 2);
      const up = alloc(batch * intermediate * 2);
      free(normed);
      const down = alloc(batch * hidden * 2);
      free(gate);
      free(up);
      free(residual);
      residual = down;
    }
    const logits = alloc(batch * vocab * 4);
    free(residual);
    const probs = alloc(batch * vocab * 4);
    const ids = alloc(batch * 4);
    free(probs);
    free(logits);
    free(ids);
  }
  return { trace: Float64Array.from(ops), steadyFrom };
}


async function main(): Promise<void> {
  const { Bench } = await import('tinybench');
  const { list, cudaNote } = contenders();
  const report = devices();
  const streams = new Map<string, Stream>();
  const streamOf = (device: string): Stream => {
    if (!streams.has(device)) streams.set(device, Stream.create(device as 'cpu'));
    return streams.get(device)!;
  };

  // (a) fixed-size pairs
  const pairRows: Record<string, string | number>[] = [];
  const pairResults: { allocator: string; bytes: number; medianNs: number; p99Ns: number; samples: number }[] = [];
  for (const bytes of SIZES) {
    const bench = new Bench({ name: `alloc+free pairs, ${bytes} B`, time: 300, warmupTime: 50 });
    for (const c of list) {
      const stream = streamOf(c.device);
      bench.add(c.name, () => {
        const [ns] = native().timeAllocatorPairs(c.resource?.handle ?? null, stream.handle, bytes, PAIRS_PER_SAMPLE, 1);
        return { overriddenDuration: (ns! * PAIRS_PER_SAMPLE) / 1e6 };
      });
    }
    await bench.run();
    for (const task of bench.tasks) {
      const result = task.result;
      if (result.state !== 'completed') throw new Error(`${task.name}: ${result.state}`);
      const median = (result.latency.p50 * 1e6) / PAIRS_PER_SAMPLE;
      const p99 = (result.latency.p99 * 1e6) / PAIRS_PER_SAMPLE;
      pairResults.push({ allocator: task.name, bytes, medianNs: median, p99Ns: p99, samples: result.latency.samplesCount });
      pairRows.push({ allocator: task.name, bytes, 'median ns/pair': +median.toFixed(1), 'p99 ns/pair': +p99.toFixed(1) });
    }
  }
  console.log('\n(a) alloc+free pairs (host time per pair; median over samples of 1000 pairs)');
  console.table(pairRows);

  // (b) + (c) the decode-shaped trace
  const { trace, steadyFrom } = decodeTrace(200, 7);
  const traceRows: Record<string, string | number>[] = [];
  const traceResults: Record<string, number | string | boolean | undefined>[] = [];
  for (const c of list) {
    if (c.resource === null && c.device !== 'cpu') continue;
    const stream = streamOf(c.device);
    c.resource?.trim();
    const r = native().replayAllocatorTrace(c.resource?.handle ?? null, stream.handle, trace, steadyFrom);
    await stream.synchronize();
    const ratio = r.hasPool && r.peakReserved ? r.peakReserved / r.peakInUse : undefined;
    traceResults.push({ allocator: c.name, ops: trace.length, ...r, peakReservedOverPeakInUse: ratio });
    traceRows.push({
      allocator: c.name,
      'ns/op': +r.nsPerOp.toFixed(1),
      'peak in use MiB': +(r.peakInUse / 2 ** 20).toFixed(1),
      'peak reserved MiB': r.hasPool ? +(r.peakReserved! / 2 ** 20).toFixed(1) : '-',
      'reserved / peak in use': ratio === undefined ? '-' : +ratio.toFixed(3),
      'steady upstream allocs': r.steadyUpstreamAllocations ?? '-',
    });
  }
  console.log(`\n(b, c) decode-shaped trace: ${trace.length} ops over 200 steps, steady state from op ${steadyFrom}`);
  console.table(traceRows);
  if (cudaNote) console.log(`\n${cudaNote}`);

  const device = report.cuda.available ? report.cuda.devices.find((d) => d.supported)!.name : report.cpu.modelName || report.cpu.arch;
  const date = new Date().toISOString();
  const out = {
    benchmark: 'allocators',
    device,
    cpu: report.cpu.modelName,
    cuda: report.cuda.available ? { driver: report.cuda.driverVersion, runtime: report.cuda.runtimeVersion } : { note: cudaNote },
    commit: gitCommit(),
    date,
    command: 'npm run bench:allocators',
    node: process.version,
    host: os.hostname(),
    pairs: pairResults,
    trace: traceResults,
  };
  const dir = path.resolve(__dirname, '..', 'benchmarks', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `allocators-${device.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '')}-${date.slice(0, 10)}.json`);
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
