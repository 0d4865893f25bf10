/**
 * End-to-end speed of the Engine (issue: models and the generate loop): prefill tokens/s and
 * decode tokens/s at batch 1, 8 and 64 for a model folder on a device, each beside its
 * roofline fraction: a step reads every weight the forward pass uses once (the embedding table
 * only gathers rows) and each sequence's K and V (mean context: prompt + gen / 2), so at batch B
 * the bound is B × bandwidth / (weightBytes + B × context × KV bytes per token) tokens/s; the
 * bandwidth is measured in the same run (the native attention benchmark's read
 * probe: CPU threads reading 1 GiB, or a CUDA device copy). Decode time counts only steps that
 * decode (no prefill in them). Also the event loop's delay (p99) while decoding.
 *
 *   npm run bench:decode                                   # a random 8-layer model, CPU
 *   npm run bench:decode -- --model /models/llama-2-7b --device cuda --batches 1,8,64
 *   options: --prompt 128 --gen 32 --cuda-graphs off,eager,on --out benchmarks/results/decode-<device>-<date>.json
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';

import { devices, Engine, makeTestModel, memoryReport, parseDevice, type DeviceSpec, type EngineStep } from '../dist';
import { arg, gitCommit, readBandwidth } from './common';

async function main(): Promise<void> {
  const device = arg('device', devices().selected);
  const batches = arg('batches', '1,8,64').split(',').map(Number);
  const promptLen = Number(arg('prompt', '128'));
  const genLen = Number(arg('gen', '32'));
  // CUDA graphs, side by side: off (the plain path), eager (the graph runner's padded fixed-buffer
  // steps op by op) and on (replayed graphs); on minus eager is the launch overhead graphs remove.
  const graphModes = arg('cuda-graphs', 'off').split(',').map((m) => {
    if (m !== 'off' && m !== 'eager' && m !== 'on') throw new Error(`--cuda-graphs takes off, eager and on (comma-separated), got ${m}`);
    return m;
  });
  let dir = arg('model', '');
  let tmp: string | null = null;
  if (!dir) {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-decode-bench-'));
    dir = tmp;
    console.log('no --model: a random Llama-shaped model (hidden 1024, 8 layers, 16 heads / 4 KV heads, intermediate 2816, vocab 8192, float16)');
    await makeTestModel({ out: dir, hidden: 1024, layers: 8, heads: 16, kvHeads: 4, intermediate: 2816, vocab: 8192, dtype: 'float16', maxPositionEmbeddings: 1024, initStd: 0.02 });
  }
  const bw = readBandwidth(device);
  console.log(`${device}: ${bw.what} = ${(bw.bytesPerSecond / 1e9).toFixed(1)} GB/s`);
  // The ledger (our default pool's reserved bytes) beside what the device reports in use, and the
  // pool's upstream (driver) allocations: issue 9's "nothing allocated outside the ledger" and "no
  // driver allocation in steady-state decode".
  const memoryAt = (): { ledgerReservedBytes: number; deviceUsedBytes: number | null; upstreamAllocations: number } => {
    const r = memoryReport(device as DeviceSpec);
    const { kind, index } = parseDevice(device);
    const gpu = kind === 0 ? undefined : devices().cuda.devices[index];
    return { ledgerReservedBytes: r.pool?.reserved ?? 0, deviceUsedBytes: gpu ? gpu.totalMemory - gpu.freeMemory : null, upstreamAllocations: r.counts.upstreamAllocations };
  };
  const rows = [];
  for (const mode of graphModes) for (const B of batches) {
    const steps: EngineStep[] = [];
    // The pool's upstream (driver) allocation count after each step that decodes all B sequences:
    // the steady state that "no driver allocation" is about (prefill chunks before it may grow the pool).
    const upstreamAfterDecodeStep: number[] = [];
    const engine = await Engine.create({
      model: dir, device: device as never, logger: null, maxNumSeqs: B, maxModelLen: promptLen + genLen + 16,
      maxNumBatchedTokens: Math.max(B, Math.min(B * promptLen, 8192)), prefixCaching: false,
      cudaGraphs: mode === 'on' ? true : mode === 'eager' ? 'eager' : false,
      onStep: (s) => {
        steps.push(s);
        if (s.prefillTokens === 0 && s.decodeTokens === B) upstreamAfterDecodeStep.push(memoryReport(device as DeviceSpec).counts.upstreamAllocations);
      },
    });
    try {
      const created = memoryAt();
      const c = engine.model.config;
      // Bytes a step reads: every weight but the embedding table (gathered), unless lm_head is the same tensor.
      const layer = c.hiddenSize * (c.numHeads * c.headDim) * 2 + c.hiddenSize * (c.numKvHeads * c.headDim) * 2 + 3 * c.hiddenSize * c.intermediateSize + 2 * c.hiddenSize;
      const total = c.numLayers * layer + c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2) + c.hiddenSize;
      const weightsBytes = engine.plan.weightsBytes;
      const bytesPerParam = weightsBytes / total;
      const readBytes = weightsBytes - (c.tieWordEmbeddings ? 0 : c.vocabSize * c.hiddenSize * bytesPerParam);
      const prompt = (i: number): number[] => Array.from({ length: promptLen }, (_, j) => 3 + ((i * 7919 + j * 104729) % (c.vocabSize - 3)));
      await engine.generate({ promptTokenIds: prompt(999) }, { maxTokens: 2, ignoreEos: true }).result();  // warm-up
      // Prefill: B prompts, one token each.
      steps.length = 0;
      let t = performance.now();
      await Promise.all(Array.from({ length: B }, (_, i) => engine.generate({ promptTokenIds: prompt(i) }, { maxTokens: 1, ignoreEos: true }).result()));
      const prefillSeconds = (performance.now() - t) / 1000;
      const prefillTps = (B * promptLen) / prefillSeconds;
      // Decode: B sequences of genLen tokens; only the steps that decode all B count.
      const beforeDecode = memoryAt();
      steps.length = 0;
      upstreamAfterDecodeStep.length = 0;
      const lag = monitorEventLoopDelay({ resolution: 1 });
      lag.enable();
      t = performance.now();
      await Promise.all(Array.from({ length: B }, (_, i) => engine.generate({ promptTokenIds: prompt(B + i) }, { maxTokens: genLen, ignoreEos: true, temperature: 0 }).result()));
      lag.disable();
      const decoded = memoryAt();
      const decodeSteps = steps.filter((s) => s.prefillTokens === 0 && s.decodeTokens === B);
      const decodeMs = decodeSteps.reduce((a, s) => a + s.durationMs, 0);
      const decodeTps = (decodeSteps.length * B * 1000) / decodeMs;
      // Roofline: a decode step reads the weights once and every sequence's K and V for each layer
      // (context = prompt + tokens so far; the mean over the measured steps).
      const kvPerToken = engine.plan.kvBytesPerToken;
      const meanContext = promptLen + genLen / 2;
      const kvBytesPerStep = B * meanContext * kvPerToken;
      const roofline = (B * bw.bytesPerSecond) / (readBytes + kvBytesPerStep);
      rows.push({
        batch: B, cudaGraphs: mode, promptTokens: promptLen, generatedTokens: genLen,
        prefillTokensPerSecond: Number(prefillTps.toFixed(1)), prefillRooflineFraction: Number((prefillTps / ((Math.min(B * promptLen, engine.maxNumBatchedTokens) * bw.bytesPerSecond) / readBytes)).toFixed(3)),
        decodeTokensPerSecond: Number(decodeTps.toFixed(1)), decodeRooflineTokensPerSecond: Number(roofline.toFixed(1)), decodeRooflineFraction: Number((decodeTps / roofline).toFixed(3)),
        decodeStepMs: Number((decodeMs / decodeSteps.length).toFixed(2)), decodeSteps: decodeSteps.length,
        eventLoopDelayP99Ms: Number((lag.percentile(99) / 1e6).toFixed(2)), weightBytesPerStep: Math.round(readBytes), kvBytesPerStep: Math.round(kvBytesPerStep),
        memory: {
          plan: { policy: engine.plan.policy, numBlocks: engine.plan.numBlocks, kvCacheBytes: engine.plan.kvCacheBytes, totalBytes: engine.plan.totalBytes, freeBytes: engine.plan.freeBytes },
          afterCreate: created, afterDecode: decoded,
          // Ledger over the device's own figure (the CUDA context, outside any allocator, is the rest).
          ledgerOverDeviceUsed: decoded.deviceUsedBytes ? Number((decoded.ledgerReservedBytes / decoded.deviceUsedBytes).toFixed(4)) : null,
          // Over the whole timed phase (its B prompts' prefill chunks included), and between the first
          // and the last step that decoded all B sequences.
          upstreamAllocationsWhileDecoding: decoded.upstreamAllocations - beforeDecode.upstreamAllocations,
          upstreamAllocationsInSteadyDecode: upstreamAfterDecodeStep.length ? upstreamAfterDecodeStep[upstreamAfterDecodeStep.length - 1]! - upstreamAfterDecodeStep[0]! : null,
        },
        graphStats: mode === 'off' ? null : engine.model.cudaGraphStats(),
      });
      console.log(JSON.stringify(rows[rows.length - 1]));  // each batch as it finishes: a later failure keeps it
    } finally {
      engine.dispose();
    }
  }
  console.table(rows.map((r) => ({
    batch: r.batch, graphs: r.cudaGraphs, 'prefill tok/s': r.prefillTokensPerSecond, 'decode tok/s': r.decodeTokensPerSecond,
    'decode roofline tok/s': r.decodeRooflineTokensPerSecond, 'of roofline': `${(100 * r.decodeRooflineFraction).toFixed(1)} %`,
    'step ms': r.decodeStepMs, 'loop p99 ms': r.eventLoopDelayP99Ms,
  })));
  const info = devices();
  const name = device === 'cpu' ? (info.cpu.modelName || info.cpu.arch) : (info.cuda.devices.find((d) => d.device === device || device === 'cuda')?.name ?? device);
  const date = new Date().toISOString().slice(0, 10);
  const out = arg('out', path.resolve(__dirname, '..', 'benchmarks', 'results', `decode-${name.replace(/[^A-Za-z0-9]+/g, '-')}-${date}.json`));
  fs.writeFileSync(out, `${JSON.stringify({
    benchmark: 'decode', device: name, commit: gitCommit(), date, command: `node build-bench/decode.bench.js ${process.argv.slice(2).join(' ')}`.trim(),
    model: tmp ? 'random llama: hidden 1024, 8 layers, 16/4 heads, intermediate 2816, vocab 8192, float16' : dir,
    bandwidth: bw, rows,
  }, null, 2)}\n`);
  console.log(`results: ${out}`);
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
