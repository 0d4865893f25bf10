#!/usr/bin/env node
// Compares pagedllm with Hugging Face Transformers on model folders that Transformers itself
// built and saved (benchmarks/hf_reference.py, run on a machine with PyTorch): the same
// weights, the same token ids, logits judged against Transformers' float32 logits.
//
//   python3 benchmarks/hf_reference.py --out /tmp/hf
//   node scripts/hf-compare.js --root /tmp/hf --devices cuda,cpu [--out result.json]
//
// Each case is run through Model.forward over a paged cache whose block table is shuffled: the
// prompt as two prefill chunks (the second attends to the first through the cache), then every
// later token as a decode step (teacher-forced with Transformers' greedy tokens), so prefill,
// chunked prefill and decode are all compared. Per case and device it reports the largest
// relative L2 error of a logits row against the float32 reference, beside Transformers' own
// error in the case's dtype, and whether pagedllm's greedy choice equals Transformers' at every
// generated position. A row passes when its error is within the dtype's tolerance (float32:
// 1e-4; float16: 1e-2; bfloat16: 5e-2, or 4× Transformers' own error where that is larger), and
// a differing greedy token only where the float32 reference itself ranks the two within the
// two rows' errors (pagedllm's and Transformers' own). Then the Engine (scheduler, paged cache,
// sampling on the device) generates greedily from the prompt: its tokens must equal
// Transformers' up to the end, or up to a first difference that is such a near-tie (after it
// the two continuations legitimately part). Exit status 1 when any case fails.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { Command } = require('commander');

const pagedllm = require(path.resolve(__dirname, '..', 'dist'));
const { Engine, Model, KvCache, bfloat16ToFloat32, float16ToFloat32 } = pagedllm;

const TOLERANCE = { float32: 1e-4, float16: 1e-2, bfloat16: 5e-2 };
const BLOCK = 16;

function readF32(file) {
  const b = fs.readFileSync(file);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

async function toFloat32(t) {
  const a = await t.toArray();
  if (t.dtype === 'float16') return float16ToFloat32(a);
  if (t.dtype === 'bfloat16') return bfloat16ToFloat32(a);
  return a;
}

function relL2(a, ref) {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return Number.isFinite(num) ? Math.sqrt(num / den) : Infinity;
}

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

// Every logits row of the case's tokens, from pagedllm on `device`.
async function pagedllmLogits(dir, ref, device) {
  const dtype = device.startsWith('cuda') ? ref.dtype : 'float32';
  const model = await Model.load(dir, { device, dtype });
  const ids = ref.tokenIds, T = ids.length, V = ref.vocabSize;
  const numBlocks = Math.ceil(T / BLOCK) + 3;
  // A shuffled block table (block ids from the top down, skipping block 0).
  const table = Array.from({ length: Math.ceil(T / BLOCK) }, (_, i) => numBlocks - 1 - i);
  const cache = new KvCache({ ...model.kvCacheShape(), numBlocks, blockSize: BLOCK, kvDtype: dtype, device });
  const slot = (p) => table[Math.floor(p / BLOCK)] * BLOCK + (p % BLOCK);
  const out = new Float32Array(T * V);
  const step = async (start, end) => {
    const n = end - start;
    const batch = {
      tokenIds: Int32Array.from(ids.slice(start, end)),
      positions: Int32Array.from({ length: n }, (_, i) => start + i),
      slotMapping: Int32Array.from({ length: n }, (_, i) => slot(start + i)),
      blockTables: [table],
      seqLens: [end],
    };
    if (n > 1) batch.cuSeqLensQ = [0, n];
    const logits = model.forward(cache, batch);
    try {
      out.set(await toFloat32(logits), start * V);
    } finally {
      logits.dispose();
    }
  };
  try {
    const split = Math.min(17, ref.promptLength - 1);
    await step(0, split);
    await step(split, ref.promptLength);
    for (let p = ref.promptLength; p < T; p++) await step(p, p + 1);
  } finally {
    cache.dispose();
    model.dispose();
  }
  return { logits: out, dtype };
}

// Transformers' greedy continuation through the Engine (scheduler, paged cache, sampling on the
// device): the tokens up to the first difference, and whether that difference is one the logits
// comparison accepts (a near-tie in the float32 reference, within both implementations' errors).
async function engineGreedy(dir, ref, device, dtype, acceptable) {
  const engine = await Engine.create({ model: dir, device, dtype, kvDtype: dtype, logger: null, maxNumSeqs: 4, maxModelLen: ref.tokenIds.length + 8, budget: { numBlocks: 64 } });
  try {
    const want = ref.tokenIds.slice(ref.promptLength);
    const got = await engine.generate({ promptTokenIds: ref.tokenIds.slice(0, ref.promptLength) }, { maxTokens: want.length, temperature: 0, ignoreEos: true }).tokenIds();
    let same = 0;
    while (same < want.length && got[same] === want[same]) same++;
    const firstDifference = same < want.length ? { position: ref.promptLength + same, transformers: want[same], pagedllm: got[same] } : null;
    return { tokens: want.length, equalPrefix: same, firstDifference, pass: firstDifference === null || acceptable(ref.promptLength + same - 1, got[same]) };
  } finally {
    engine.dispose();
  }
}

async function compareCase(dir, device) {
  const ref = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8'));
  const V = ref.vocabSize, T = ref.tokenIds.length;
  const refLogits = readF32(path.join(dir, 'logits-ref.f32'));
  const hfLogits = readF32(path.join(dir, 'logits-hf.f32'));
  const t0 = performance.now();
  const { logits, dtype } = await pagedllmLogits(dir, ref, device);
  const ms = performance.now() - t0;
  // Transformers chose its token in its own dtype: where that rounding, or ours, can swap it with
  // pagedllm's `got` after row t (the float32 reference ranks the two within both rows' errors),
  // either is right.
  const nearTie = (t, got) => {
    const row = logits.subarray(t * V, (t + 1) * V), r = refLogits.subarray(t * V, (t + 1) * V), h = hfLogits.subarray(t * V, (t + 1) * V);
    let maxAbs = 0, hfMaxAbs = 0;
    for (let i = 0; i < V; i++) maxAbs = Math.max(maxAbs, Math.abs(row[i] - r[i])), hfMaxAbs = Math.max(hfMaxAbs, Math.abs(h[i] - r[i]));
    const gap = Math.abs(r[ref.tokenIds[t + 1]] - r[got]);
    return { tie: gap <= 2 * (maxAbs + hfMaxAbs), referenceGap: gap, rowMaxAbsError: maxAbs, transformersRowMaxAbsError: hfMaxAbs };
  };
  let worst = 0, worstRow = -1, hfWorst = 0, greedyEqual = 0, greedyExplained = 0, greedyWrong = 0;
  const mismatches = [];
  for (let t = 0; t < T; t++) {
    const row = logits.subarray(t * V, (t + 1) * V), r = refLogits.subarray(t * V, (t + 1) * V);
    const err = relL2(row, r), hfErr = relL2(hfLogits.subarray(t * V, (t + 1) * V), r);
    if (!(err <= worst)) worst = err, worstRow = t;
    hfWorst = Math.max(hfWorst, hfErr);
    if (t >= ref.promptLength - 1 && t + 1 < T) {
      const want = ref.tokenIds[t + 1], got = argmax(row);
      if (got === want) greedyEqual++;
      else {
        const tie = nearTie(t, got);
        if (tie.tie) greedyExplained++;
        else greedyWrong++;
        if (mismatches.length < 3) mismatches.push({ position: t + 1, transformers: want, pagedllm: got, ...tie });
      }
    }
  }
  // The Engine's choice after row t: Transformers' token, or (below float32) a near-tie with it.
  const acceptable = (t, got) => ref.tokenIds[t + 1] === got || (ref.dtype !== 'float32' && nearTie(t, got).tie);
  const engine = await engineGreedy(dir, ref, device, dtype, acceptable);
  const tol = Math.max(TOLERANCE[dtype], 4 * (dtype === 'float32' ? 0 : hfWorst));
  const pass = worst <= tol && greedyWrong === 0 && (ref.dtype !== 'float32' || greedyExplained === 0) && engine.pass;
  return {
    case: ref.case, device, activations: dtype, weights: ref.dtype, tokens: T, promptLength: ref.promptLength,
    maxRelL2: worst, worstRow, transformersMaxRelL2: ref.dtype === 'float32' ? 0 : hfWorst, tolerance: tol,
    greedyEqual, greedyWithinError: greedyExplained, greedyWrong, mismatches, engine, ms: Math.round(ms), pass,
  };
}

async function main() {
  const o = new Command('hf-compare')
    .requiredOption('--root <dir>', 'folder of cases written by benchmarks/hf_reference.py')
    .option('--devices <list>', 'devices to run pagedllm on', 'cuda,cpu')
    .option('--out <file>', 'write the results as JSON')
    .parse().opts();
  const cases = fs.readdirSync(o.root).filter((d) => fs.existsSync(path.join(o.root, d, 'reference.json'))).sort();
  if (cases.length === 0) throw new Error(`hf-compare: no cases under ${o.root}`);
  const rows = [];
  for (const device of o.devices.split(',')) {
    for (const c of cases) {
      let row;
      try {
        row = await compareCase(path.join(o.root, c), device);
      } catch (e) {
        row = { case: c, device, pass: false, error: `${e.code ?? e.name}: ${e.message}` };
      }
      rows.push(row);
      const fmt = (x) => (typeof x === 'number' ? x.toExponential(2) : '-');
      console.log(`${row.pass ? 'PASS' : 'FAIL'} ${c} on ${device}: ` + (row.error ?? `rel L2 ${fmt(row.maxRelL2)} (Transformers ${row.weights}: ${fmt(row.transformersMaxRelL2)}, tolerance ${fmt(row.tolerance)}); greedy ${row.greedyEqual} equal, ${row.greedyWithinError} within error, ${row.greedyWrong} wrong; Engine ${row.engine.equalPrefix}/${row.engine.tokens} tokens equal${row.engine.firstDifference ? (row.engine.pass ? ', then a near-tie' : ', then WRONG') : ''}; ${row.ms} ms`));
    }
  }
  const ref = JSON.parse(fs.readFileSync(path.join(o.root, cases[0], 'reference.json'), 'utf8'));
  const report = { transformers: ref.transformers, torch: ref.torch, referenceDevice: ref.device, date: new Date().toISOString(), rows };
  if (o.out) fs.writeFileSync(o.out, JSON.stringify(report, null, 2) + '\n');
  const failed = rows.filter((r) => !r.pass).length;
  console.log(`hf-compare: ${rows.length - failed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
