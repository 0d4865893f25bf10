/**
 * What sampling costs a decode step: `sampleTokens` on the logits' device (only the ids come
 * back) against the host path it replaced in the Engine (`toArray()` of the logits, then
 * `sampleToken` per row), for one row and for a batch of rows, on vocabularies of Llama 2
 * (32000) and Llama 3 (128256), with greedy, temperature 1, top-k 40 and top-p 0.9 (temperature
 * 0.8). The logits are those of a peaked distribution (a few tokens far above a normal tail), as a
 * trained model's are. Each figure is tinybench's median per call, side by side in one run.
 *
 *   npm run bench:sampling [-- --device cpu|cuda --batch 8 --out <file>]
 */
import * as fs from 'node:fs';

import { devices, sampleToken, sampleTokens, samplerRng, Tensor, type SamplingParams } from '../dist';
import { arg, gitCommit, resultsFile } from './common';

const MODES: Array<[string, SamplingParams]> = [
  ['greedy', { temperature: 0 }],
  ['temperature 1', { temperature: 1 }],
  ['top-k 40', { temperature: 0.8, topK: 40 }],
  ['top-p 0.9', { temperature: 0.8, topP: 0.9 }],
];

function peakedLogits(rows: number, vocab: number, seed: number): Float32Array {
  const r = samplerRng(seed);
  const out = new Float32Array(rows * vocab);
  for (let i = 0; i < out.length; i++) {
    const u = Math.max(r(), 1e-12), v = r();
    out[i] = 2 * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);  // N(0, 2)
  }
  for (let row = 0; row < rows; row++) for (let j = 0; j < 8; j++) out[row * vocab + Math.floor(r() * vocab)] = 12 + 2 * r();
  return out;
}

async function main(): Promise<void> {
  const { Bench } = await import('tinybench');
  const device = arg('device', 'cpu');
  const batch = Number(arg('batch', '8'));
  const info = devices();
  const rng = samplerRng(1);
  const rows: Record<string, string | number>[] = [];
  const results: Record<string, string | number>[] = [];
  for (const vocab of [32000, 128256]) {
    for (const n of [1, batch]) {
      const host = peakedLogits(n, vocab, vocab + n);
      const logits = Tensor.fromArray(host, [n, vocab], { device: device as 'cpu' });
      for (const [mode, params] of MODES) {
        const bench = new Bench({ name: `${mode}, vocab ${vocab}, ${n} rows`, time: 400, warmupTime: 50 });
        bench.add('device', async () => {
          await sampleTokens(logits, Array.from({ length: n }, (_, row) => ({ row, params, draw: rng() })));
        });
        bench.add('host', async () => {
          const values = (await logits.toArray()) as Float32Array;
          for (let row = 0; row < n; row++) sampleToken(values.subarray(row * vocab, (row + 1) * vocab), params, rng, {}, false);
        });
        await bench.run();
        const ms: Record<string, number> = {};
        for (const task of bench.tasks) {
          if (task.result.state !== 'completed') throw new Error(`${bench.name} ${task.name}: ${task.result.state}`);
          ms[task.name] = task.result.latency.p50;
        }
        results.push({ vocab, rows: n, mode, deviceMs: ms.device!, hostMs: ms.host! });
        rows.push({ vocab, rows: n, mode, 'device ms': +ms.device!.toFixed(3), 'host ms': +ms.host!.toFixed(3), 'host / device': +(ms.host! / ms.device!).toFixed(2) });
      }
      logits.dispose();
    }
  }
  const name = device === 'cpu' ? info.cpu.modelName || info.cpu.arch : info.cuda.devices[0]?.name ?? device;
  console.log(`sampling on ${device} (${name}; ${info.cpu.threads} CPU threads)`);
  console.table(rows);
  const out = arg('out', '') || resultsFile('sampling', name);
  fs.writeFileSync(out, JSON.stringify({
    benchmark: 'sampling', device: name, threads: info.cpu.threads, commit: gitCommit(), date: new Date().toISOString().slice(0, 10),
    command: `node build-bench/sampling.bench.js ${process.argv.slice(2).join(' ')}`.trim(),
    note: 'median per call (tinybench); device = sampleTokens on the logits\' device, ids back; host = toArray of the logits, then sampleToken per row',
    results,
  }, null, 2) + '\n');
  console.log(`results: ${out}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
