// KvCache: writeKv places every token's K/V at its slot in the HND layout
// (paged_kv.h), skips slot −1, quantizes int8 / fp8 per (token, head);
// copyBlocks copies whole blocks in every layer; memory is counted as kv-cache.
import { bfloat16ToFloat32, float16ToFloat32, KvCache, memoryReport, Tensor, type KvCacheDType } from '../../lib';

const shape = { numLayers: 2, numBlocks: 6, numKvHeads: 2, blockSize: 4, headSize: 8 };
const index = (block: number, head: number, offset: number, d: number): number =>
  ((block * shape.numKvHeads + head) * shape.blockSize + offset) * shape.headSize + d;

// e4m3 decoding by definition (for reading fp8 caches back).
function fp8(v: number): number {
  const sign = v & 0x80 ? -1 : 1, e = (v >> 3) & 15, m = v & 7;
  if (e === 15 && m === 7) return NaN;
  return e === 0 ? sign * m * 2 ** -9 : sign * (1 + m / 8) * 2 ** (e - 7);
}

async function readCache(t: Tensor, kvDtype: KvCacheDType, scales: Tensor | null): Promise<Float64Array> {
  const raw = await t.toArray();
  const s = scales ? ((await scales.toArray()) as Float32Array) : null;
  const out = new Float64Array(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const v = raw[i]!;
    if (kvDtype === 'float16') out[i] = float16ToFloat32(Uint16Array.of(v))[0]!;
    else if (kvDtype === 'bfloat16') out[i] = bfloat16ToFloat32(Uint16Array.of(v))[0]!;
    else if (kvDtype === 'int8') out[i] = v * s![Math.floor(i / shape.headSize)]!;
    else if (kvDtype === 'fp8') out[i] = fp8(v) * s![Math.floor(i / shape.headSize)]!;
    else out[i] = v;
  }
  return out;
}

describe.each(['float32', 'float16', 'bfloat16', 'int8', 'fp8'] as const)('%s cache', (kvDtype) => {
  test('writeKv puts each token at its slot, per head, in every layer it is called for; −1 is skipped', async () => {
    const cache = new KvCache({ ...shape, kvDtype });
    const slots = [5, -1, 0, 23];
    const n = slots.length * shape.numKvHeads * shape.headSize;
    const keyValues = Array.from({ length: n }, (_, i) => Math.sin(i) * 3);
    const valueValues = Array.from({ length: n }, (_, i) => Math.cos(i) * 2);
    const key = Tensor.fromArray(keyValues, [slots.length, shape.numKvHeads, shape.headSize]);
    const value = Tensor.fromArray(valueValues, [slots.length, shape.numKvHeads, shape.headSize], { dtype: 'float32' }).cast('bfloat16');
    const valueF32 = value.cast('float32');
    const valueSeen = Array.from(await valueF32.toArray());
    const slotMapping = Tensor.fromArray(new Int32Array(slots));
    // Every slot of layer 1 first holds zeros, so untouched slots are recognisable.
    const allSlots = Tensor.fromArray(Int32Array.from({ length: 24 }, (_, i) => i));
    const zeros = Tensor.zeros([24, shape.numKvHeads, shape.headSize]);
    cache.writeKv(1, zeros, zeros, allSlots);
    cache.writeKv(1, key, valueF32, slotMapping);
    const l = cache.layers[1]!;
    const k = await readCache(l.key, kvDtype, l.keyScales);
    const v = await readCache(l.value, kvDtype, l.valueScales);
    const tol = (x: number, amax: number): number =>
      kvDtype === 'float32' ? 0 : kvDtype === 'float16' ? Math.abs(x) * 2 ** -11 : kvDtype === 'bfloat16' ? Math.abs(x) * 2 ** -8 : kvDtype === 'int8' ? (amax / 127) * 0.5001 : Math.abs(x) / 16 + (amax / 448) * 2 ** -9;
    slots.forEach((slot, t) => {
      if (slot < 0) return;
      const block = Math.floor(slot / shape.blockSize), offset = slot % shape.blockSize;
      for (let h = 0; h < shape.numKvHeads; h++) {
        const base = (t * shape.numKvHeads + h) * shape.headSize;
        const kmax = Math.max(...keyValues.slice(base, base + shape.headSize).map((x) => Math.abs(Math.fround(x))));
        const vmax = Math.max(...valueSeen.slice(base, base + shape.headSize).map(Math.abs));
        for (let d = 0; d < shape.headSize; d++) {
          const kx = Math.fround(keyValues[base + d]!), vx = valueSeen[base + d]!;
          const at = index(block, h, offset, d);
          if (Math.abs(k[at]! - kx) > tol(kx, kmax)) throw new Error(`${kvDtype} K token ${t} head ${h} d ${d}: ${k[at]} vs ${kx}`);
          if (Math.abs(v[at]! - vx) > tol(vx, vmax)) throw new Error(`${kvDtype} V token ${t} head ${h} d ${d}: ${v[at]} vs ${vx}`);
        }
      }
    });
    const written = new Set(slots.filter((x) => x >= 0));
    for (let slot = 0; slot < 24; slot++) {
      if (written.has(slot)) continue;
      for (let h = 0; h < shape.numKvHeads; h++) {
        for (let d = 0; d < shape.headSize; d++) {
          const at = index(Math.floor(slot / shape.blockSize), h, slot % shape.blockSize, d);
          if (k[at] !== 0 || v[at] !== 0) throw new Error(`${kvDtype}: slot ${slot} was written (${k[at]}, ${v[at]})`);
        }
      }
    }
    for (const t of [key, value, valueF32, slotMapping, allSlots, zeros]) t.dispose();
    cache.dispose();
  });

  test('copyBlocks copies whole blocks (and scales) in every layer', async () => {
    const cache = new KvCache({ ...shape, kvDtype });
    const slots = Array.from({ length: 8 }, (_, i) => i); // blocks 0 and 1 filled
    const key = Tensor.fromArray(Array.from({ length: 8 * 2 * 8 }, (_, i) => i / 10 - 3), [8, 2, 8]);
    const slotMapping = Tensor.fromArray(new Int32Array(slots));
    for (let layer = 0; layer < shape.numLayers; layer++) cache.writeKv(layer, key, key, slotMapping);
    cache.copyBlocks([[1, 4], [0, 5]]);
    const blockLen = shape.numKvHeads * shape.blockSize * shape.headSize;
    for (const l of cache.layers) {
      for (const [t, s] of [[l.key, l.keyScales], [l.value, l.valueScales]] as const) {
        const all = Array.from(await t.toArray());
        expect(all.slice(4 * blockLen, 5 * blockLen)).toEqual(all.slice(1 * blockLen, 2 * blockLen));
        expect(all.slice(5 * blockLen, 6 * blockLen)).toEqual(all.slice(0, blockLen));
        if (s) {
          const sc = Array.from(await s.toArray());
          const per = shape.numKvHeads * shape.blockSize;
          expect(sc.slice(4 * per, 5 * per)).toEqual(sc.slice(per, 2 * per));
        }
      }
    }
    key.dispose();
    slotMapping.dispose();
    cache.dispose();
  });
});

test('the cache is counted as kv-cache memory and released on dispose', () => {
  const before = memoryReport('cpu').categories!['kv-cache'].current;
  const cache = new KvCache({ ...shape, kvDtype: 'int8' });
  const perLayer = 2 * (6 * 2 * 4 * 8) + 2 * (6 * 2 * 4 * 4);
  expect(cache.byteLength).toBe(2 * perLayer);
  expect(memoryReport('cpu').categories!['kv-cache'].current - before).toBe(2 * perLayer);
  cache.dispose();
  cache.dispose();
  expect(memoryReport('cpu').categories!['kv-cache'].current).toBe(before);
  expect(() => cache.layers).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED', message: 'KvCache has been disposed' }));
});

test('bad input is rejected with exact messages', () => {
  const cache = new KvCache({ ...shape });
  const slots = Tensor.fromArray(new Int32Array([0, 1]));
  const good = Tensor.zeros([2, 2, 8], { dtype: 'float16' });
  const e = (fn: () => void, message: string): void => expect(fn).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message }));
  e(() => new KvCache({ ...shape, numBlocks: 0 }), 'KvCache: numBlocks must be a positive integer, got 0');
  e(() => new KvCache({ ...shape, kvDtype: 'int4' as never }), 'KvCache: kvDtype "int4" is not supported (supported: float32, float16, bfloat16, int8, fp8)');
  e(() => cache.writeKv(2, good, good, slots), 'KvCache: layer 2 is out of range (2 layers)');
  e(() => cache.writeKv(0, Tensor.zeros([2, 2, 4]), good, slots), 'writeKv: key must have shape [2, 2, 8], got [2, 2, 4]');
  e(() => cache.writeKv(0, good, good.cast('float32'), slots), 'writeKv: key is float16 but value is float32');
  e(() => cache.writeKv(0, good, good, slots.cast('float32')), 'writeKv: slotMapping must be int32 [numTokens], got float32 [2]');
  e(() => cache.writeKv(0, good.cast('int8'), good, slots), 'writeKv: key must be float32, float16 or bfloat16, got int8');
  e(() => cache.copyBlocks([[0, 6]]), 'copyBlocks: block 6 is outside the cache (6 blocks)');
  e(() => cache.copyBlocks([[0]] as never), 'copyBlocks: pairs must be [src, dst] block pairs');
  good.dispose();
  slots.dispose();
  cache.dispose();
});

test('a slot beyond the cache is reported at the next synchronisation (CPU)', async () => {
  const cache = new KvCache({ ...shape, kvDtype: 'float32' });
  const kv = Tensor.zeros([1, 2, 8]);
  const slots = Tensor.fromArray(new Int32Array([24]));
  cache.writeKv(0, kv, kv, slots);
  await expect(cache.stream.synchronize()).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: 'write_kv: slot 24 of token 0 is outside the cache (24 slots)' });
  cache.dispose();
});

test('swapBlocksFrom copies blocks between caches on different streams (device <-> host pool)', async () => {
  const { Stream, createMemoryResource } = await import('../../lib');
  const device = new KvCache({ ...shape, kvDtype: 'int8' });
  const host = new KvCache({ ...shape, numBlocks: 3, kvDtype: 'int8', stream: Stream.create('cpu'), memory: createMemoryResource({ kind: 'pinned-host' }) });
  const kv = Tensor.fromArray(Array.from({ length: 4 * 2 * 8 }, (_, i) => Math.sin(i)), [4, 2, 8]);
  const slots = Tensor.fromArray(new Int32Array([8, 9, 10, 11])); // block 2
  for (let l = 0; l < shape.numLayers; l++) device.writeKv(l, kv, kv, slots);
  host.swapBlocksFrom(device, [[2, 1]]); // swap out
  const back = new KvCache({ ...shape, kvDtype: 'int8' });
  back.swapBlocksFrom(host, [[1, 5]]); // swap in elsewhere
  const blockLen = shape.numKvHeads * shape.blockSize * shape.headSize;
  for (let l = 0; l < shape.numLayers; l++) {
    const want = Array.from(await device.layers[l]!.key.toArray()).slice(2 * blockLen, 3 * blockLen);
    const got = Array.from(await back.layers[l]!.key.toArray()).slice(5 * blockLen, 6 * blockLen);
    expect(got).toEqual(want);
    const ws = Array.from(await device.layers[l]!.valueScales!.toArray()).slice(2 * 8, 3 * 8);
    const gs = Array.from(await back.layers[l]!.valueScales!.toArray()).slice(5 * 8, 6 * 8);
    expect(gs).toEqual(ws);
  }
  expect(() => back.swapBlocksFrom(host, [[3, 0]])).toThrow(expect.objectContaining({ message: 'swapBlocksFrom: block 3 is outside the source (3 blocks)' }));
  expect(() => back.swapBlocksFrom(host, [[0, 4], [1, 4]])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: 'swapBlocksFrom: destination block 4 appears in more than one pair' }));
  expect(() => back.swapBlocksFrom(back, [[0, 1]])).toThrow(expect.objectContaining({ message: 'swapBlocksFrom: source is this cache (use copyBlocks)' }));
  for (const x of [device, host, back]) x.dispose();
  expect(() => device.swapBlocksFrom(back, [[0, 1]])).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED' }));
  kv.dispose();
  slots.dispose();
});

test('swapBlocksFrom moves runs and scattered pairs at once, ordered after earlier and before later writes', async () => {
  const { Stream } = await import('../../lib');
  const big = { ...shape, numBlocks: 12 };
  const device = new KvCache({ ...big, kvDtype: 'float16' });
  const host = new KvCache({ ...big, numBlocks: 7, kvDtype: 'float16', stream: Stream.create('cpu') });
  const tokens = 12 * 4;
  const kv = Tensor.fromArray(Array.from({ length: tokens * 2 * 8 }, (_, i) => (i % 509) / 8), [tokens, 2, 8]);
  const slots = Tensor.fromArray(Int32Array.from({ length: tokens }, (_, i) => i)); // every slot
  for (let l = 0; l < shape.numLayers; l++) device.writeKv(l, kv, kv, slots);
  const pairs: Array<[number, number]> = [[3, 0], [4, 1], [5, 2], [11, 6], [0, 4]]; // a run of 3, then two singles
  host.swapBlocksFrom(device, pairs);
  // Queued after the swap on the device's stream: must not reach the host copy.
  const zeros = Tensor.zeros([tokens, 2, 8], { dtype: 'float32' });
  for (let l = 0; l < shape.numLayers; l++) device.writeKv(l, zeros, zeros, slots);
  const blockLen = 2 * 4 * 8;
  const source = Array.from(await kv.toArray()).map((x) => Math.fround(x));
  for (let l = 0; l < shape.numLayers; l++) {
    for (const side of ['key', 'value'] as const) {
      const got = Array.from(float16ToFloat32(await host.layers[l]![side].toArray() as Uint16Array));
      for (const [s, d] of pairs) {
        // Slot t, head h, dim k is kv[t][h][k]; the cache is [block][head][offset][dim].
        const want: number[] = [];
        for (let h = 0; h < 2; h++) for (let o = 0; o < 4; o++) for (let k = 0; k < 8; k++) want.push(source[((s * 4 + o) * 2 + h) * 8 + k]!);
        expect(got.slice(d * blockLen, (d + 1) * blockLen)).toEqual(want);
      }
    }
  }
  for (const x of [device, host]) x.dispose();
  for (const t of [kv, slots, zeros]) t.dispose();
});

test('fromPlan allocates exactly the planned KV bytes', async () => {
  const { planMemory } = await import('../../lib');
  const config = { hidden_size: 256, intermediate_size: 512, num_hidden_layers: 3, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 1000, max_position_embeddings: 256 };
  const plan = planMemory({ modelConfig: config, deviceMemory: { totalBytes: 2 ** 30 }, kvDtype: 'bfloat16', budget: { numBlocks: 40 } });
  const cache = KvCache.fromPlan(plan, config);
  expect([cache.numLayers, cache.numKvHeads, cache.headSize, cache.numBlocks, cache.blockSize, cache.kvDtype]).toEqual([3, 2, 64, 40, 16, 'bfloat16']);
  expect(cache.byteLength).toBe(plan.kvCacheBytes);
  cache.dispose();
});
