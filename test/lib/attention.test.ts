// pagedAttention from TypeScript: the whole path a model takes (BlockManager
// slots → KvCache.writeKv → pagedAttention) against a float64 reference written
// here, for decode and for a ragged prefill batch; host and device metadata;
// exact errors for bad input; pagedAttentionSupports. (The kernel grid itself
// is tested natively: test/native/test_attention_cpu.cpp.)
import {
  ATTENTION_BLOCK_SIZES,
  ATTENTION_HEAD_SIZES,
  BlockManager,
  float16ToFloat32,
  InvalidArgumentError,
  KvCache,
  pagedAttention,
  pagedAttentionSupports,
  Tensor,
  UnsupportedError,
  type KvCacheDType,
} from '../../lib';

const numHeads = 8, numKvHeads = 2, headSize = 64, blockSize = 16, numBlocks = 40;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
}

interface Setup {
  cache: KvCache;
  manager: BlockManager;
  // Per sequence, per position: K and V [numKvHeads * headSize] as stored (float32 cache: exact).
  keys: Float32Array[][];
  values: Float32Array[][];
}

/** Writes `lengths[s]` random tokens for each sequence through the BlockManager's slots. */
function setup(lengths: number[], kvDtype: KvCacheDType = 'float32', seed = 1): Setup {
  const cache = new KvCache({ numLayers: 2, numBlocks, numKvHeads, blockSize, headSize, kvDtype });
  const manager = new BlockManager({ numBlocks, blockSize });
  const r = rng(seed);
  const keys: Float32Array[][] = [], values: Float32Array[][] = [];
  lengths.forEach((n, s) => {
    const alloc = manager.allocateSlots(s, n);
    if (!alloc) throw new Error('test setup: out of blocks');
    const k = Array.from({ length: n }, () => Float32Array.from({ length: numKvHeads * headSize }, () => 2 * r()));
    const v = Array.from({ length: n }, () => Float32Array.from({ length: numKvHeads * headSize }, () => 2 * r()));
    keys.push(k);
    values.push(v);
    const flat = (rows: Float32Array[]): Float32Array => {
      const out = new Float32Array(n * numKvHeads * headSize);
      rows.forEach((row, i) => out.set(row, i * row.length));
      return out;
    };
    const kt = Tensor.fromArray(flat(k), [n, numKvHeads, headSize]);
    const vt = Tensor.fromArray(flat(v), [n, numKvHeads, headSize]);
    const slots = Tensor.fromArray(Int32Array.from(alloc.slotMapping));
    cache.writeKv(1, kt, vt, slots);
    kt.dispose();
    vt.dispose();
    slots.dispose();
  });
  return { cache, manager, keys, values };
}

/** out[row, h, :] by the definition, in float64. */
function reference(
  q: Float32Array, st: Setup, seqLens: number[], qLens: number[],
  opts: { window?: number; alibi?: number[]; softcap?: number } = {},
): Float64Array {
  const group = numHeads / numKvHeads, scale = 1 / Math.sqrt(headSize);
  const out = new Float64Array(q.length);
  let row = 0;
  seqLens.forEach((L, s) => {
    for (let i = 0; i < qLens[s]!; i++, row++) {
      const p = L - qLens[s]! + i;
      const lo = opts.window ? Math.max(0, p - opts.window + 1) : 0;
      for (let h = 0; h < numHeads; h++) {
        const kvh = Math.floor(h / group);
        const logits: number[] = [];
        for (let j = lo; j <= p; j++) {
          let dot = 0;
          for (let d = 0; d < headSize; d++) dot += q[(row * numHeads + h) * headSize + d]! * st.keys[s]![j]![kvh * headSize + d]!;
          let x = scale * dot;
          if (opts.softcap) x = opts.softcap * Math.tanh(x / opts.softcap);
          if (opts.alibi) x += opts.alibi[h]! * (j - p);
          logits.push(x);
        }
        const m = Math.max(...logits);
        const e = logits.map((x) => Math.exp(x - m));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let j = lo; j <= p; j++) {
          const w = e[j - lo]! / sum, vj = st.values[s]![j]!, base = (row * numHeads + h) * headSize;
          for (let d = 0; d < headSize; d++) out[base + d] = out[base + d]! + w * vj[kvh * headSize + d]!;
        }
      }
    }
  });
  return out;
}

function expectClose(got: ArrayLike<number>, want: Float64Array, tol: number): void {
  expect(got.length).toBe(want.length);
  let worst = 0, at = -1;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    if (!(err <= worst)) [worst, at] = [err, i];
  }
  if (!(worst <= tol)) throw new Error(`max error ${worst} at ${at} (got ${got[at]}, want ${want[at]}) exceeds ${tol}`);
}

function tables(st: Setup, n: number): number[][] {
  return Array.from({ length: n }, (_, s) => [...st.manager.blockTable(s)]);
}

describe('pagedAttention', () => {
  test('decode over the BlockManager\'s blocks matches the float64 reference (GQA 4)', async () => {
    const seqLens = [1, 15, 16, 17, 100];
    const st = setup(seqLens);
    const r = rng(7);
    const q = Float32Array.from({ length: seqLens.length * numHeads * headSize }, () => 3 * r());
    const query = Tensor.fromArray(q, [seqLens.length, numHeads, headSize]);
    const out = pagedAttention(query, st.cache, 1, { blockTables: tables(st, seqLens.length), seqLens });
    expect(out.shape).toEqual([seqLens.length, numHeads, headSize]);
    expect(out.dtype).toBe('float32');
    expectClose((await out.toArray()) as Float32Array, reference(q, st, seqLens, seqLens.map(() => 1)), 1e-5);
    // Window, ALiBi and softcap together.
    const alibi = Array.from({ length: numHeads }, (_, h) => 2 ** -(h + 1));
    const out2 = pagedAttention(query, st.cache, 1, { blockTables: tables(st, seqLens.length), seqLens, slidingWindow: 20, alibiSlopes: alibi, softcap: 4 });
    expectClose((await out2.toArray()) as Float32Array, reference(q, st, seqLens, seqLens.map(() => 1), { window: 20, alibi, softcap: 4 }), 1e-5);
    st.cache.dispose();
  });

  test('a ragged prefill batch (cuSeqLensQ) is causal over each sequence\'s context', async () => {
    const seqLens = [40, 5, 33], qLens = [12, 5, 1];
    const st = setup(seqLens, 'float32', 3);
    const numTokens = qLens.reduce((a, b) => a + b, 0);
    const r = rng(11);
    const q = Float32Array.from({ length: numTokens * numHeads * headSize }, () => 3 * r());
    const query = Tensor.fromArray(q, [numTokens, numHeads, headSize]).cast('float16');
    const qSeen = float16ToFloat32((await query.toArray()) as Uint16Array);
    const out = pagedAttention(query, st.cache, 1, { blockTables: tables(st, 3), seqLens, cuSeqLensQ: [0, 12, 17, 18] });
    expect(out.dtype).toBe('float16');
    const got = float16ToFloat32((await out.toArray()) as Uint16Array);
    expectClose(got, reference(qSeen, st, seqLens, qLens), 2e-3);
    st.cache.dispose();
  });

  test('device-resident metadata (Tensors) with explicit bounds, a strided query and an `out` tensor', async () => {
    const seqLens = [20, 3];
    const st = setup(seqLens, 'float32', 5);
    const r = rng(13);
    // A query view with a token stride larger than numHeads * headSize (a slice of a fused QKV row).
    const wide = Tensor.fromArray(Float32Array.from({ length: 2 * 2 * numHeads * headSize }, () => 3 * r()), [2, 2 * numHeads, headSize]);
    const query = wide.slice(1, 0, numHeads);
    const q = (await query.contiguous().toArray()) as Float32Array;
    const bt = tables(st, 2);
    const width = Math.max(...bt.map((row) => row.length));
    const blockTables = Tensor.fromArray(Int32Array.from(bt.flatMap((row) => [...row, ...Array(width - row.length).fill(0)])), [2, width]);
    const lens = Tensor.fromArray(Int32Array.from(seqLens));
    const out = Tensor.empty([2, numHeads, headSize]);
    expect(() => pagedAttention(query, st.cache, 1, { blockTables, seqLens: lens })).toThrow('maxSeqLen is required when seqLens is a Tensor');
    const result = pagedAttention(query, st.cache, 1, { blockTables, seqLens: lens, maxSeqLen: 20, out });
    expect(result).toBe(out);
    expectClose((await out.toArray()) as Float32Array, reference(q, st, seqLens, [1, 1]), 1e-5);
    st.cache.dispose();
  });

  test.each(['float16', 'int8', 'fp8'] as const)('a %s cache agrees with the float32 one within its rounding', async (kvDtype) => {
    const seqLens = [50, 9];
    const exact = setup(seqLens, 'float32', 9), lossy = setup(seqLens, kvDtype, 9);
    const r = rng(17);
    const q = Tensor.fromArray(Float32Array.from({ length: 2 * numHeads * headSize }, () => 3 * r()), [2, numHeads, headSize]);
    const a = (await pagedAttention(q, exact.cache, 1, { blockTables: tables(exact, 2), seqLens }).toArray()) as Float32Array;
    const b = (await pagedAttention(q, lossy.cache, 1, { blockTables: tables(lossy, 2), seqLens }).toArray()) as Float32Array;
    const tol = { float16: 2e-3, int8: 3e-2, fp8: 1.5e-1 }[kvDtype];
    expectClose(b, Float64Array.from(a), tol);
    exact.cache.dispose();
    lossy.cache.dispose();
  });

  test('bad input gets a typed error with an exact message', () => {
    const st = setup([10]);
    const q = Tensor.zeros([1, numHeads, headSize]);
    const meta = { blockTables: tables(st, 1), seqLens: [10] };
    const expectError = (f: () => unknown, type: Function, message: string): void => {
      let error: unknown;
      try {
        f();
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(type);
      expect((error as Error).message).toBe(message);
    };
    expectError(() => pagedAttention(q, st.cache, 2, meta), InvalidArgumentError, 'pagedAttention: layer 2 is out of range (2 layers)');
    expectError(() => pagedAttention(Tensor.zeros([1, numHeads, 32]), st.cache, 0, meta), InvalidArgumentError,
      'pagedAttention: query must be [numTokens, numHeads, 64], got [1, 8, 32]');
    expectError(() => pagedAttention(Tensor.zeros([1, 5, headSize]), st.cache, 0, meta), InvalidArgumentError,
      'pagedAttention: numHeads (5) must be a multiple of the cache\'s numKvHeads (2)');
    expectError(() => pagedAttention(Tensor.zeros([1, numHeads, headSize], { dtype: 'int32' }), st.cache, 0, meta), InvalidArgumentError,
      'pagedAttention: query must be float32, float16 or bfloat16, got int32');
    expectError(() => pagedAttention(q, st.cache, 0, { ...meta, seqLens: [10, 3] }), InvalidArgumentError,
      'pagedAttention: decode (no cuSeqLensQ) needs one query token per sequence: 1 tokens for 2 sequences');
    expectError(() => pagedAttention(q, st.cache, 0, { ...meta, seqLens: [17] }), InvalidArgumentError,
      'pagedAttention: a sequence of 17 tokens needs 2 blocks but blockTables has 1 per sequence');
    expectError(() => pagedAttention(q, st.cache, 0, { blockTables: [[numBlocks]], seqLens: [3] }), InvalidArgumentError,
      `pagedAttention: blockTables[0][0] = ${numBlocks} is outside the cache (${numBlocks} blocks)`);
    expectError(() => pagedAttention(q, st.cache, 0, { ...meta, cuSeqLensQ: [0, 2] }), InvalidArgumentError,
      'pagedAttention: cuSeqLensQ must start at 0 and end at the query\'s 1 tokens, got 0 … 2');
    expectError(() => pagedAttention(Tensor.zeros([3, numHeads, headSize]), st.cache, 0, { ...meta, seqLens: [2], cuSeqLensQ: [0, 3] }), InvalidArgumentError,
      'pagedAttention: sequence 0 has 3 new tokens but seqLens[0] = 2');
    expectError(() => pagedAttention(q, st.cache, 0, { ...meta, slidingWindow: -1 }), InvalidArgumentError,
      'pagedAttention: slidingWindow must be a non-negative integer, got -1');
    expectError(() => pagedAttention(q, st.cache, 0, { ...meta, alibiSlopes: [1, 2] }), InvalidArgumentError,
      'pagedAttention: alibiSlopes must have numHeads (8) values, got 2');
    expectError(() => pagedAttention(q, st.cache, 0, { ...meta, out: Tensor.zeros([1, numHeads, headSize], { dtype: 'float16' }) }), InvalidArgumentError,
      'pagedAttention: out must be float32 [1, 8, 64], got float16 [1, 8, 64]');
    const odd = new KvCache({ numLayers: 1, numBlocks: 4, numKvHeads: 1, blockSize: 12, headSize: 64, kvDtype: 'float32' });
    expectError(() => pagedAttention(Tensor.zeros([1, 1, 64]), odd, 0, { blockTables: [[0]], seqLens: [1] }), UnsupportedError,
      'pagedAttention: unsupported block size 12 (supported: 8, 16, 32)');
    odd.dispose();
    st.cache.dispose();
  });

  test('pagedAttentionSupports answers in advance, naming the supported values', () => {
    expect(ATTENTION_HEAD_SIZES).toEqual([64, 80, 96, 128, 256]);
    expect(ATTENTION_BLOCK_SIZES).toEqual([8, 16, 32]);
    for (const headSize of ATTENTION_HEAD_SIZES) for (const blockSize of ATTENTION_BLOCK_SIZES) {
      expect(pagedAttentionSupports({ headSize, blockSize, dtype: 'bfloat16', kvDtype: 'fp8' })).toEqual({ supported: true });
    }
    expect(pagedAttentionSupports({ headSize: 72, blockSize: 16 })).toEqual({ supported: false, reason: 'unsupported head size 72 (supported: 64, 80, 96, 128, 256)' });
    expect(pagedAttentionSupports({ headSize: 128, blockSize: 64 })).toEqual({ supported: false, reason: 'unsupported block size 64 (supported: 8, 16, 32)' });
    expect(() => pagedAttentionSupports({ headSize: 0, blockSize: 16 })).toThrow('pagedAttentionSupports: headSize must be a positive integer, got 0');
  });
});
