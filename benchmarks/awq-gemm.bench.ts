/**
 * AWQ int4 linear vs dense float16 linear (issue 6): `awqLinear` against `linear` on the same
 * layer shapes, through the TypeScript API, timed with tinybench.
 *
 *   npm run bench:awq -- [--device cpu|cuda] [--shapes 4096x4096,4096x11008] [--m 1,8,64]
 *                        [--iterations 20] [--out [file.json]]
 *
 * Shapes are K×N (in_features × out_features): by default the Llama-7B projections 4096×4096
 * (q/k/v/o), 4096×11008 (gate/up), 11008×4096 (down) and Llama-70B's 8192×28672 (gate/up); M (tokens)
 * runs from 1 to 256. Weights are int4 with group size 128 (AutoAWQ's default) beside float16 [N, K].
 * Each measured iteration runs one call per weight copy, rotating through copies whose total size is
 * several times the last-level cache (GPU L2: 50 MB on H100; CPU L3), then synchronises once: no call
 * finds its weights in a cache, and the synchronisation is spread over the calls. Reported: time per
 * call, the weight bytes read per call over that time, and the speedup of int4 over float16.
 * With --out, the results are written as JSON (device, commit, date) to benchmarks/results/ (a
 * given name goes there too; a path with a '/' is used as it is).
 * On the CPU the largest shape takes long: shrink it with --shapes / --m.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { awqLinear, devices, linear, parseDevice, Tensor, type AwqWeight, type Device } from '../dist';
import { gitCommit } from './common';

interface Row {
  K: number;
  N: number;
  M: number;
  awqUs: number;
  denseUs: number;
  awqBytes: number;
  denseBytes: number;
  copies: { awq: number; dense: number };
}

function option(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const next = process.argv[i + 1];
  return next !== undefined && !next.startsWith('--') ? next : '';
}


/** A deterministic xorshift fill: the values do not matter for the timing, only that none is NaN/Inf. */
function fill32(n: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let s = seed | 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s;
  }
  return out;
}

function float16Pattern(n: number): Uint16Array {
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = 0x2000 + (i & 0x3ff) + ((i & 1) << 15); // ±2^-7 … ±2^-6
  return out;
}

async function benchShape(K: number, N: number, ms: number[], device: Device, cacheBytes: number, iterations: number): Promise<Row[]> {
  const { Bench } = await import('tinybench');
  const G = 128, groups = K / G;
  const awqBytes = (K * N) / 2 + (groups * N) / 2 + groups * N * 2;
  const denseBytes = K * N * 2;
  const copiesOf = (bytes: number): number => Math.max(2, Math.ceil((4 * cacheBytes) / bytes));
  const awqCopies = copiesOf(awqBytes), denseCopies = copiesOf(denseBytes);
  const qweightHost = fill32((K * N) / 8, 1), qzerosHost = fill32((groups * N) / 8, 2);
  const scalesHost = new Uint16Array(groups * N).fill(0x2000); // 2^-7
  const awq: AwqWeight[] = Array.from({ length: awqCopies }, () => ({
    qweight: Tensor.fromArray(qweightHost, [K, N / 8], { device }),
    qzeros: Tensor.fromArray(qzerosHost, [groups, N / 8], { device }),
    scales: Tensor.fromArray(scalesHost, [groups, N], { dtype: 'float16', device }),
    groupSize: G,
  }));
  const denseHost = float16Pattern(K * N);
  const dense = Array.from({ length: denseCopies }, () => Tensor.fromArray(denseHost, [N, K], { dtype: 'float16', device }));
  const rows: Row[] = [];
  try {
    for (const M of ms) {
      const x = Tensor.fromArray(float16Pattern(M * K), [M, K], { dtype: 'float16', device });
      const y = Tensor.empty([M, N], { dtype: 'float16', device });
      const bench = new Bench({ iterations, warmupIterations: 2, time: 0 });
      bench.add('awq', async () => {
        for (const w of awq) awqLinear(x, w, null, { out: y });
        await x.stream.synchronize();
      });
      bench.add('dense', async () => {
        for (const w of dense) linear(x, w, null, { out: y });
        await x.stream.synchronize();
      });
      await bench.run();
      const perCall = (name: string, calls: number): number => {
        const r = bench.tasks.find((t) => t.name === name)!.result;
        if (r.state !== 'completed') throw new Error(`${name} K ${K} N ${N} M ${M}: ${r.state}`);
        return (r.latency.p50 * 1e3) / calls; // ms → µs per call
      };
      rows.push({ K, N, M, awqUs: perCall('awq', awqCopies), denseUs: perCall('dense', denseCopies), awqBytes, denseBytes, copies: { awq: awqCopies, dense: denseCopies } });
      x.dispose();
      y.dispose();
    }
  } finally {
    for (const w of awq) for (const t of [w.qweight, w.qzeros, w.scales]) t.dispose();
    for (const t of dense) t.dispose();
  }
  return rows;
}

async function main(): Promise<void> {
  const report = devices();
  const device = parseDevice(option('device') || (report.cuda.available ? 'cuda:0' : 'cpu')).device;
  const onCuda = device.startsWith('cuda');
  const shapes = (option('shapes') || '4096x4096,4096x11008,11008x4096,8192x28672').split(',').map((s) => {
    const [K, N] = s.split('x').map(Number);
    if (!Number.isInteger(K) || !Number.isInteger(N) || K! % 128 !== 0 || N! % 8 !== 0) throw new Error(`--shapes: ${s} is not KxN with K % 128 == 0 and N % 8 == 0`);
    return [K!, N!] as const;
  });
  const ms = (option('m') || '1,2,4,8,16,32,64,128,256').split(',').map(Number);
  const iterations = Number(option('iterations') || (onCuda ? 20 : 5));
  // Last-level cache to defeat: H100 L2 is 50 MB (H200 the same); a server CPU's L3 up to a few hundred MB.
  const cacheBytes = Number(option('cache-mb') || (onCuda ? 50 : 64)) * 2 ** 20;

  const rows: Row[] = [];
  for (const [K, N] of shapes) rows.push(...(await benchShape(K, N, ms, device, cacheBytes, iterations)));

  const name = onCuda ? report.cuda.devices.find((d) => d.device === device)?.name ?? device : report.cpu.modelName || report.cpu.arch;
  console.log(`\nawqLinear (int4, G = 128) vs linear (float16) on ${name}; time per call, weights not in cache`);
  console.table(rows.map((r) => ({
    'K×N': `${r.K}×${r.N}`,
    M: r.M,
    'awq µs': Number(r.awqUs.toFixed(1)),
    'fp16 µs': Number(r.denseUs.toFixed(1)),
    speedup: Number((r.denseUs / r.awqUs).toFixed(2)),
    'awq GB/s': Number((r.awqBytes / r.awqUs / 1e3).toFixed(1)),
    'fp16 GB/s': Number((r.denseBytes / r.denseUs / 1e3).toFixed(1)),
  })));

  const out = option('out');
  if (out !== undefined) {
    const date = new Date().toISOString();
    const result = {
      benchmark: 'awq-gemm',
      device: name,
      cpu: report.cpu.modelName,
      cuda: report.cuda.available ? { driver: report.cuda.driverVersion, runtime: report.cuda.runtimeVersion } : { note: report.cuda.reason },
      commit: gitCommit(),
      date,
      command: `node build-bench/awq-gemm.bench.js ${process.argv.slice(2).join(' ')}`.trim(),
      node: process.version,
      host: os.hostname(),
      groupSize: 128,
      rows,
    };
    const dir = path.resolve(__dirname, '..', 'benchmarks', 'results');
    const file = out.includes('/') ? path.resolve(out) : path.join(dir, out || `awq-gemm-${name.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '')}-${date.slice(0, 10)}.json`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
    console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
