// BlockManager (DESIGN.md §4, formats.md §3): the free queue, allocation and
// slot mappings, fork and copy-on-write, prefix caching, sliding windows,
// swapping, statistics, exact errors; the acceptance checks of formats.md
// §3.3 (v0 and v1 worked traces); and property-based runs of random
// operation sequences against a shadow model of the KV contents.
import fc from 'fast-check';

import { BlockManager, InvalidArgumentError, NULL_BLOCK, type BlockManagerOptions, type SequenceId, type SlotAllocation } from '../../lib';
import { FreeBlockQueue } from '../../lib/block-manager';

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

function expectInvalid(fn: () => unknown, message: string): void {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(InvalidArgumentError);
  expect(error).toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message });
}

/**
 * White-box: replaces the prefix cache's hash with a weak one, so that cached
 * blocks of different content share hashes and every lookup has to be
 * settled by the exact verification.
 */
function weakenHash(blocks: BlockManager, hash: (parentClass: number, tokens: ArrayLike<number>, offset: number) => number): void {
  const cache = (blocks as unknown as { cache: { key: typeof hash } | null }).cache;
  if (cache === null) return;
  cache.key = hash;
}

/** Allocation that must succeed. */
function allocate(blocks: BlockManager, seq: SequenceId, tokens: number[], options: { lookahead?: number; salt?: string; ids?: boolean } = {}): SlotAllocation {
  const result = blocks.allocateSlots(seq, tokens.length, {
    lookahead: options.lookahead,
    salt: options.salt,
    tokenIds: options.ids === false ? undefined : tokens,
  });
  if (result === null) throw new Error(`allocateSlots(${String(seq)}, ${tokens.length}) did not fit`);
  return result;
}

// ---- the free queue ---------------------------------------------------------------------------

describe('FreeBlockQueue', () => {
  test('pops from the front, pushes to the back, removes from the middle', () => {
    const queue = new FreeBlockQueue(10, [1, 2, 3, 4, 5]);
    expect(queue.length).toBe(5);
    expect(queue.popFront()).toBe(1);
    queue.remove(3);
    queue.pushBack(1);
    queue.remove(5);
    expect(queue.toArray()).toEqual([2, 4, 1]);
    expect(queue.has(3)).toBe(false);
    expect(queue.has(4)).toBe(true);
    expect(queue.front()).toBe(2);
    expect(queue.after(2)).toBe(4);
    expect(queue.after(1)).toBe(-1);
    queue.remove(2);
    queue.remove(1);
    queue.remove(4);
    expect(queue.length).toBe(0);
    expect(queue.popFront()).toBe(-1);
    expect(queue.front()).toBe(-1);
  });

  test('misuse is an error', () => {
    const queue = new FreeBlockQueue(4, [1]);
    expectInvalid(() => queue.pushBack(1), 'FreeBlockQueue.pushBack: block 1 is out of range or already queued');
    expectInvalid(() => queue.pushBack(4), 'FreeBlockQueue.pushBack: block 4 is out of range or already queued');
    expectInvalid(() => queue.remove(2), 'FreeBlockQueue.remove: block 2 is not queued');
  });
});

// ---- construction -----------------------------------------------------------------------------

describe('new BlockManager', () => {
  test('defaults: block size 16, 1% watermark, prefix caching on, block 0 reserved', () => {
    const blocks = new BlockManager({ numBlocks: 300 });
    expect(blocks.blockSize).toBe(16);
    expect(blocks.watermarkBlocks).toBe(3);
    expect(blocks.enablePrefixCaching).toBe(true);
    expect(blocks.slidingWindow).toBeUndefined();
    expect(blocks.stats()).toEqual({
      totalBlocks: 299,
      freeBlocks: 299,
      usedBlocks: 0,
      cachedBlocks: 0,
      evictableBlocks: 0,
      usage: 0,
      watermarkBlocks: 3,
      host: { totalBlocks: 0, freeBlocks: 0, usedBlocks: 0 },
      prefixCache: { requests: 0, queries: 0, hits: 0, hitRate: 0 },
      sequences: 0,
    });
    expect(blocks.snapshot().device.freeQueue).toEqual(range(1, 300));
  });

  test.each([1, 2, 4, 8, 16, 32, 64, 256])('block size %i (any power of two) is accepted', (blockSize) => {
    const blocks = new BlockManager({ numBlocks: 4, blockSize });
    expect(Array.from(allocate(blocks, 's', range(0, blockSize + 1)).slotMapping)).toEqual(range(blockSize, 2 * blockSize + 1));
  });

  test('bad options are rejected with exact messages', () => {
    const bad = (options: unknown, message: string): void => expectInvalid(() => new BlockManager(options as BlockManagerOptions), message);
    bad(undefined, 'new BlockManager expects an options object');
    bad({}, 'Invalid numBlocks: expected an integer of at least 2 (block 0 is the reserved null block), got undefined');
    bad({ numBlocks: 1 }, 'Invalid numBlocks: expected an integer of at least 2 (block 0 is the reserved null block), got 1');
    bad({ numBlocks: 2.5 }, 'Invalid numBlocks: expected an integer of at least 2 (block 0 is the reserved null block), got 2.5');
    bad({ numBlocks: 8, blockSize: 12 }, 'Invalid blockSize: expected a power of two (the attention kernels support 8, 16 and 32), got 12');
    bad({ numBlocks: 8, blockSize: 0 }, 'Invalid blockSize: expected a power of two (the attention kernels support 8, 16 and 32), got 0');
    bad({ numBlocks: 8, blockSize: '16' }, 'Invalid blockSize: expected a power of two (the attention kernels support 8, 16 and 32), got "16"');
    bad({ numBlocks: 2 ** 27 + 1, blockSize: 16 }, 'Invalid numBlocks: numBlocks × blockSize must be at most 2147483648 (slot ids are int32), got 134217729 × 16');
    bad({ numBlocks: 8, numHostBlocks: -1 }, 'Invalid numHostBlocks: expected a non-negative integer (with numHostBlocks × blockSize ≤ 2147483648), got -1');
    bad({ numBlocks: 8, watermark: 1 }, 'Invalid watermark: expected a fraction in [0, 1), got 1');
    bad({ numBlocks: 8, watermark: NaN }, 'Invalid watermark: expected a fraction in [0, 1), got NaN');
    bad({ numBlocks: 8, enablePrefixCaching: 1 }, 'Invalid enablePrefixCaching: expected a boolean, got 1');
    bad({ numBlocks: 8, slidingWindow: 0 }, 'Invalid slidingWindow: expected a positive integer number of tokens, got 0');
  });
});

// ---- allocation ---------------------------------------------------------------------------------

describe('allocateSlots', () => {
  test('block 0 is never handed out; slot = block * blockSize + offset; pads with the null block', () => {
    const blocks = new BlockManager({ numBlocks: 8, blockSize: 4 });
    const a = allocate(blocks, 'a', range(100, 110));
    expect(a.newBlocks).toEqual([1, 2, 3]);
    expect(Array.from(a.slotMapping)).toEqual([4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    expect(a.firstPosition).toBe(0);
    expect(a.numCachedTokens).toBe(0);
    expect(a.copies).toEqual([]);
    expect(blocks.numTokens('a')).toBe(10);
    expect(Array.from(blocks.blockTable('a'))).toEqual([1, 2, 3]);
    expect(Array.from(blocks.blockTable('a', 6))).toEqual([1, 2, 3, NULL_BLOCK, NULL_BLOCK, NULL_BLOCK]);
    const step = blocks.allocateSlots('a', 3, { tokenIds: [1, 2, 3] })!;
    expect(step.firstPosition).toBe(10);
    expect(step.newBlocks).toEqual([4]);
    expect(Array.from(step.slotMapping)).toEqual([14, 15, 16]);
    expect(blocks.numTokens('a')).toBe(13);
  });

  test('returns null, changing nothing, when the blocks do not fit; running sequences may use the watermark', () => {
    const blocks = new BlockManager({ numBlocks: 11, blockSize: 4, watermark: 0.2 }); // 10 usable, watermark 2
    allocate(blocks, 'a', range(0, 30)); // 8 blocks, leaves 2 = the watermark
    const before = blocks.snapshot();
    const beforeStats = blocks.stats();
    expect(blocks.allocateSlots('b', 1)).toBeNull(); // a new sequence may not take the watermark
    expect(blocks.has('b')).toBe(false);
    expect(blocks.snapshot()).toEqual(before);
    expect(blocks.stats()).toEqual(beforeStats);
    expect(allocate(blocks, 'a', [1, 2, 3]).newBlocks).toHaveLength(1); // a running one may
    allocate(blocks, 'a', range(0, 4));
    expect(blocks.stats().freeBlocks).toBe(0);
    const full = blocks.snapshot();
    expect(blocks.allocateSlots('a', 4)).toBeNull();
    expect(blocks.allocateSlots('a', 1, { lookahead: 3 })).toBeNull();
    expect(blocks.snapshot()).toEqual(full);
    expect(blocks.numTokens('a')).toBe(37);
    blocks.free('a');
    expect(blocks.stats().freeBlocks).toBe(10);
  });

  test('lookahead reserves writable slots after the new tokens, not counted as tokens', () => {
    const blocks = new BlockManager({ numBlocks: 16, blockSize: 4 });
    const a = blocks.allocateSlots('a', 3, { lookahead: 2 })!;
    expect(a.newBlocks).toEqual([1, 2]);
    expect(Array.from(a.slotMapping)).toEqual([4, 5, 6, 7, 8]);
    expect(blocks.numTokens('a')).toBe(3);
    const b = blocks.allocateSlots('a', 1, { lookahead: 4 })!; // position 3, lookahead 4..7
    expect(Array.from(b.slotMapping)).toEqual([7, 8, 9, 10, 11]);
    expect(b.newBlocks).toEqual([]);
    expect(Array.from(blocks.blockTable('a'))).toEqual([1, 2]);
  });

  test('caller bugs throw with exact messages', () => {
    const blocks = new BlockManager({ numBlocks: 16, blockSize: 4, numHostBlocks: 4 });
    allocate(blocks, 'a', [1, 2, 3]);
    expectInvalid(() => blocks.allocateSlots('a', 0), 'Invalid numNewTokens: expected a positive integer, got 0');
    expectInvalid(() => blocks.allocateSlots('a', -1), 'Invalid numNewTokens: expected a positive integer, got -1');
    expectInvalid(() => blocks.allocateSlots('a', 1.5), 'Invalid numNewTokens: expected a positive integer, got 1.5');
    expectInvalid(() => blocks.allocateSlots({} as never, 1), 'Invalid sequence id: expected a string or a safe integer, got [object Object]');
    expectInvalid(() => blocks.allocateSlots(0.5, 1), 'Invalid sequence id: expected a string or a safe integer, got 0.5');
    expectInvalid(() => blocks.allocateSlots('a', 1, { lookahead: -2 }), 'Invalid lookahead: expected a non-negative integer, got -2');
    expectInvalid(() => blocks.allocateSlots('a', 2, { tokenIds: [1] }), 'Invalid tokenIds: expected 2 token ids (one per new token), got 1');
    expectInvalid(() => blocks.allocateSlots('a', 2, { tokenIds: [1, -1] }), 'Invalid tokenIds[1]: expected an integer in [0, 2147483647], got -1');
    expectInvalid(() => blocks.allocateSlots('a', 1, { tokenIds: [2 ** 31] }), 'Invalid tokenIds[0]: expected an integer in [0, 2147483647], got 2147483648');
    expectInvalid(() => blocks.allocateSlots('a', 1, { tokenIds: 'x' as never }), 'Invalid tokenIds: expected an array of token ids, got "x"');
    expectInvalid(() => blocks.allocateSlots('b', 1, { salt: 3 as never }), 'Invalid salt: expected a string, got 3');
    expectInvalid(() => blocks.allocateSlots('a', 1, 5 as never), 'Invalid options: expected an object, got 5');
    expectInvalid(() => blocks.free('zzz'), 'Unknown sequence "zzz"');
    expectInvalid(() => blocks.free(42), 'Unknown sequence 42');
    expectInvalid(() => blocks.numTokens(7), 'Unknown sequence 7');
    expectInvalid(() => blocks.blockTable('a', 0.5), "Invalid paddedLength: expected an integer of at least 1 (the table's length), got 0.5");
    expectInvalid(() => blocks.fork('a', 'a'), 'Cannot fork: sequence "a" already exists');
    expectInvalid(() => blocks.fork('nope', 'b'), 'Unknown sequence "nope"');
    expectInvalid(() => blocks.fork('a', NaN), 'Invalid sequence id: expected a string or a safe integer, got NaN');
    expectInvalid(() => blocks.swapIn('a'), 'Cannot swap in: sequence "a" is not swapped out');
    expectInvalid(() => blocks.canAllocate(0), 'Invalid numTokens: expected a positive integer, got 0');
    expectInvalid(() => blocks.canAllocate(2, 'x' as never), 'Invalid options: expected an object, got "x"');
    expectInvalid(() => blocks.canAllocate(2, { tokenIds: [1] }), 'Invalid tokenIds: expected 2 token ids (one per new token), got 1');
    expectInvalid(() => blocks.evictCachedBlocks(-1), 'Invalid maxBlocks: expected a non-negative integer, got -1');
    expect(blocks.swapOut('a')).toHaveLength(1);
    expectInvalid(() => blocks.swapOut('a'), 'Cannot swap out: sequence "a" is already swapped out');
    expectInvalid(() => blocks.allocateSlots('a', 1), 'Cannot allocate slots: sequence "a" is swapped out (call swapIn first)');
    expectInvalid(() => blocks.blockTable('a'), 'No device block table: sequence "a" is swapped out (call swapIn first)');
    // Double free (formats.md §3.3): the second free of a sequence is a caller bug.
    blocks.free('a');
    expectInvalid(() => blocks.free('a'), 'Unknown sequence "a"');
    expect(blocks.stats().host.usedBlocks).toBe(0);
  });
});

// ---- vLLM v0 semantics (formats.md §3.1) -----------------------------------------------------------

describe('v0 acceptance checks (formats.md §3.1, §3.3)', () => {
  test('watermark boundaries: NEVER / OK / LATER', () => {
    // §3.1's example: 100 blocks, watermark 1. Ours has one more block, the null block.
    const blocks = new BlockManager({ numBlocks: 101, blockSize: 16, enablePrefixCaching: false });
    expect(blocks.watermarkBlocks).toBe(1);
    expect(blocks.canAllocate(100 * 16)).toBe('never');
    expect(blocks.allocateSlots('big', 100 * 16)).toBeNull();
    expect(blocks.canAllocate(99 * 16)).toBe('ok');
    allocate(blocks, 'one', [1]);
    expect(blocks.canAllocate(99 * 16)).toBe('later');
    expect(blocks.allocateSlots('x', 99 * 16)).toBeNull();
    expect(blocks.canAllocate(98 * 16)).toBe('ok');
    expect(blocks.canAllocate(98 * 16, { lookahead: 1 })).toBe('later');
    blocks.free('one');
    expect(blocks.allocateSlots('x', 99 * 16)).not.toBeNull();
  });

  test('worked trace: fork, copy-on-write of the shared last block, free', () => {
    const blocks = new BlockManager({ numBlocks: 9, blockSize: 4, enablePrefixCaching: false, watermark: 0 });
    const refs = (): number[] => Array.from(blocks.snapshot().device.refCounts);
    allocate(blocks, 'P', range(1, 7)); // 6 tokens, 2 blocks
    expect(Array.from(blocks.blockTable('P'))).toEqual([1, 2]);
    blocks.fork('P', 'C');
    expect(Array.from(blocks.blockTable('C'))).toEqual([1, 2]);
    expect(refs()).toEqual([0, 2, 2, 0, 0, 0, 0, 0, 0]); // each distinct block +1, nothing allocated
    const p7 = allocate(blocks, 'P', [7]);
    expect(p7.copies).toEqual([[2, 3]]); // exactly one (old, new) pair
    expect(Array.from(p7.slotMapping)).toEqual([3 * 4 + 2]);
    expect(Array.from(blocks.blockTable('P'))).toEqual([1, 3]);
    expect(refs()).toEqual([0, 2, 1, 1, 0, 0, 0, 0, 0]);
    const c7 = allocate(blocks, 'C', [7]);
    expect(c7.copies).toEqual([]); // no longer shared: written in place
    expect(Array.from(c7.slotMapping)).toEqual([2 * 4 + 2]);
    expect(allocate(blocks, 'P', [8]).copies).toEqual([]);
    const p9 = allocate(blocks, 'P', [9]);
    expect(p9.copies).toEqual([]);
    expect(p9.newBlocks).toEqual([4]);
    expect(Array.from(blocks.blockTable('P'))).toEqual([1, 3, 4]);
    blocks.free('P');
    expect(refs()).toEqual([0, 1, 1, 0, 0, 0, 0, 0, 0]);
    expect(blocks.snapshot().device.freeQueue).toEqual([5, 6, 7, 8, 4, 3]); // ref-0 blocks return, tail first
  });

  test('copy-on-write triggers iff the written block is shared; a full shared last block is not copied', () => {
    const blocks = new BlockManager({ numBlocks: 16, blockSize: 4, enablePrefixCaching: false });
    allocate(blocks, 'a', range(0, 8)); // two full blocks
    blocks.fork('a', 'b');
    const next = allocate(blocks, 'a', [9]); // goes to a new block: nothing shared is written
    expect(next.copies).toEqual([]);
    expect(next.newBlocks).toHaveLength(1);
    blocks.fork('a', 'c'); // now a's last block (1 token) is shared with c
    const cow = allocate(blocks, 'c', [10, 11]);
    expect(cow.copies).toEqual([[blocks.blockTable('a')[2], cow.newBlocks[0]]]);
  });

  test('a shared reserved (lookahead) block is replaced without a copy', () => {
    const blocks = new BlockManager({ numBlocks: 16, blockSize: 4, enablePrefixCaching: false });
    allocate(blocks, 'a', range(0, 4), { lookahead: 4 }); // block 1 full, block 2 reserved and empty
    blocks.fork('a', 'b');
    const step = allocate(blocks, 'a', [5]);
    expect(step.copies).toEqual([]);
    expect(step.newBlocks).toHaveLength(1);
    expect(blocks.blockTable('a')[1]).toBe(step.newBlocks[0]);
    expect(blocks.blockTable('b')[1]).toBe(2);
  });

  test('swap maps distinct blocks once, preserving ref counts across forks', () => {
    const blocks = new BlockManager({ numBlocks: 16, blockSize: 4, numHostBlocks: 8, enablePrefixCaching: false });
    allocate(blocks, 'p', range(0, 10)); // blocks 1, 2, 3 (3 partial)
    blocks.fork('p', 'c');
    allocate(blocks, 'c', [99]); // copy-on-write: c's last block is its own
    const cLast = blocks.blockTable('c')[2]!;
    const out = blocks.swapOut('p')!;
    expect(out).toEqual([[1, 1], [2, 2], [3, 3]]);
    expect(blocks.location('p')).toBe('host');
    expect(blocks.stats().host).toEqual({ totalBlocks: 7, freeBlocks: 4, usedBlocks: 3 });
    const outC = blocks.swapOut('c')!;
    expect(outC).toEqual([[cLast, 4]]); // the shared blocks already have their host copy
    const host = blocks.snapshot().host.refCounts;
    expect(Array.from(host.slice(0, 5))).toEqual([0, 2, 2, 1, 1]);
    expect(blocks.stats().usedBlocks).toBe(0);
    const inC = blocks.swapIn('c')!;
    expect(inC.map(([src]) => src)).toEqual([1, 2, 4]);
    const inP = blocks.swapIn('p')!;
    expect(inP.map(([src]) => src)).toEqual([3]); // 1 and 2 are shared with c on the device again
    const device = blocks.snapshot().device.refCounts;
    expect(device[blocks.blockTable('p')[0]!]).toBe(2);
    expect(device[blocks.blockTable('p')[1]!]).toBe(2);
    expect(blocks.blockTable('p')[0]).toBe(blocks.blockTable('c')[0]);
    expect(blocks.stats().host.usedBlocks).toBe(0);
  });

  test('a device block written after a swap copy is copied again, not shared', () => {
    const blocks = new BlockManager({ numBlocks: 16, blockSize: 4, numHostBlocks: 8, enablePrefixCaching: false });
    allocate(blocks, 'p', range(0, 6)); // [1, 2], 2 partial
    blocks.fork('p', 'c');
    expect(blocks.swapOut('p')).toEqual([[1, 1], [2, 2]]);
    expect(allocate(blocks, 'c', [6]).copies).toEqual([]); // c alone on the device: block 2 written in place
    expect(blocks.swapIn('p')!.map(([src]) => src)).toEqual([2]);
    expect(blocks.blockTable('p')[0]).toBe(1); // the unwritten block is shared again
    expect(blocks.blockTable('p')[1]).not.toBe(2);
    // The same holds the other way round (found by the property run): a sequence swapped in
    // writes into its block, then swaps out again — its old host copy lacks the new token.
    const solo = new BlockManager({ numBlocks: 2, blockSize: 8, numHostBlocks: 2, watermark: 0 });
    allocate(solo, 'a', [0]);
    solo.swapOut('a');
    solo.fork('a', 'b'); // b keeps host block 1 referenced
    expect(solo.swapIn('a')).toEqual([[1, 1]]);
    allocate(solo, 'a', [0]);
    expect(solo.swapOut('a')).toBeNull(); // needs a fresh host block: host block 1 holds one token, not two
  });

  test('swap returns null when the other pool lacks room, changing nothing', () => {
    const blocks = new BlockManager({ numBlocks: 8, blockSize: 4, numHostBlocks: 3, enablePrefixCaching: false, watermark: 0 });
    allocate(blocks, 'a', range(0, 12)); // 3 blocks; the host pool has 2
    const before = blocks.snapshot();
    expect(blocks.swapOut('a')).toBeNull();
    expect(blocks.snapshot()).toEqual(before);
    const none = new BlockManager({ numBlocks: 8, blockSize: 4 });
    allocate(none, 'a', [1]);
    expect(none.swapOut('a')).toBeNull(); // no host pool configured
    // swapIn admits: it needs room above the watermark.
    const small = new BlockManager({ numBlocks: 5, blockSize: 4, numHostBlocks: 5, enablePrefixCaching: false, watermark: 0.2 });
    allocate(small, 'a', range(0, 8));
    expect(small.swapOut('a')).toHaveLength(2);
    allocate(small, 'b', range(0, 4)); // 3 free, watermark 1: 2 fit
    allocate(small, 'b', range(0, 4)); // 2 free: 2 do not fit above the watermark
    const held = small.snapshot();
    expect(small.swapIn('a')).toBeNull();
    expect(small.snapshot()).toEqual(held);
    small.free('b');
    expect(small.swapIn('a')).toHaveLength(2);
  });
});

// ---- vLLM v1 semantics (formats.md §3.2) -----------------------------------------------------------

describe('v1 acceptance checks (formats.md §3.2, §3.3)', () => {
  const prompt10 = range(1, 11);

  function traceSteps1to6(): BlockManager {
    const blocks = new BlockManager({ numBlocks: 8, blockSize: 4 });
    // 1. null = block 0, free queue [1..7]
    expect(blocks.stats().totalBlocks).toBe(7);
    expect(blocks.snapshot().device.freeQueue).toEqual(range(1, 8));
    // 2. A, prompt [1..10]: blocks [1, 2, 3]; 1 and 2 are full and cached
    const a = allocate(blocks, 'A', prompt10);
    expect(a.newBlocks).toEqual([1, 2, 3]);
    expect(a.numCachedTokens).toBe(0);
    expect(blocks.snapshot().device.cachedBlocks).toEqual([1, 2]);
    expect(blocks.snapshot().device.freeQueue).toEqual([4, 5, 6, 7]);
    // 3. A decodes 11 and 12: block 3 fills and is cached
    allocate(blocks, 'A', [11]);
    expect(blocks.snapshot().device.cachedBlocks).toEqual([1, 2]);
    allocate(blocks, 'A', [12]);
    expect(blocks.snapshot().device.cachedBlocks).toEqual([1, 2, 3]);
    // 4. B, prompt [1..10]: hits [1, 2] = 8 tokens, one new block
    const b = allocate(blocks, 'B', prompt10);
    expect(b.numCachedTokens).toBe(8);
    expect(b.firstPosition).toBe(8);
    expect(Array.from(b.slotMapping)).toEqual([16, 17]);
    expect(b.newBlocks).toEqual([4]);
    expect(Array.from(blocks.blockTable('B'))).toEqual([1, 2, 4]);
    expect(Array.from(blocks.snapshot().device.refCounts)).toEqual([0, 2, 2, 1, 1, 0, 0, 0]);
    expect(blocks.stats().prefixCache).toEqual({ requests: 2, queries: 20, hits: 8, hitRate: 0.4 });
    // 5. free(A): reversed [3, 2, 1]
    blocks.free('A');
    expect(blocks.snapshot().device.freeQueue).toEqual([5, 6, 7, 3]);
    // 6. free(B): reversed [4, 2, 1]; all three hashes still cached
    blocks.free('B');
    expect(blocks.snapshot().device.freeQueue).toEqual([5, 6, 7, 3, 4, 2, 1]);
    expect(blocks.snapshot().device.cachedBlocks).toEqual([1, 2, 3]);
    expect(blocks.stats()).toMatchObject({ freeBlocks: 7, usedBlocks: 0, cachedBlocks: 3, evictableBlocks: 3 });
    return blocks;
  }

  test('worked trace, steps 1-7: LRU eviction from the front; evictable hits count against free blocks', () => {
    const blocks = traceSteps1to6();
    // 7. An unrelated request of 5 blocks takes 5, 6, 7, 3, 4; block 3 (h2) is evicted.
    const other = allocate(blocks, 'D', range(100, 120));
    expect(other.newBlocks).toEqual([5, 6, 7, 3, 4]);
    expect(blocks.snapshot().device.freeQueue).toEqual([2, 1]);
    expect(blocks.stats()).toMatchObject({ cachedBlocks: 7, evictableBlocks: 2 }); // 1, 2 and D's five
    // [1..12, x] now hits 8 tokens (not 12) and needs 4 − 2 + 2 evictable = 4 blocks: only 2 are free.
    const next = [...range(1, 13), 99];
    const before = blocks.snapshot();
    const beforeStats = blocks.stats();
    expect(blocks.canAllocate(13, { tokenIds: next })).toBe('later');
    expect(blocks.allocateSlots('E', 13, { tokenIds: next })).toBeNull();
    expect(blocks.snapshot()).toEqual(before); // a pure failure: no state change, counters included
    expect(blocks.stats()).toEqual(beforeStats);
    blocks.free('D');
    const e = allocate(blocks, 'E', next);
    expect(e.numCachedTokens).toBe(8);
  });

  test('worked trace, step 8: a hit on three evictable blocks takes them out of the free queue', () => {
    const blocks = traceSteps1to6();
    const c = allocate(blocks, 'C', [...range(1, 13), 99]);
    expect(c.numCachedTokens).toBe(12);
    expect(c.newBlocks).toEqual([5]);
    expect(Array.from(blocks.blockTable('C'))).toEqual([1, 2, 3, 5]);
    expect(blocks.snapshot().device.freeQueue).toEqual([6, 7, 4]);
    expect(Array.from(c.slotMapping)).toEqual([20]);
  });

  test('a hit is whole blocks, stops at the first miss, and never covers the last prompt token', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4 });
    allocate(blocks, 'a', range(0, 16)); // 4 full blocks, all cached
    expect(allocate(blocks, 'exact', range(0, 16)).numCachedTokens).toBe(12); // (16 − 1) // 4 = 3 blocks
    expect(allocate(blocks, 'longer', range(0, 17)).numCachedTokens).toBe(16);
    expect(allocate(blocks, 'partial', range(0, 7)).numCachedTokens).toBe(4);
    expect(allocate(blocks, 'short', range(0, 4)).numCachedTokens).toBe(0);
    const miss = [...range(0, 4), 50, 51, 52, 53, ...range(8, 16), 0];
    expect(allocate(blocks, 'miss', miss).numCachedTokens).toBe(4); // block 1 misses: blocks 2 and 3 cannot hit
    for (const seq of ['a', 'exact', 'longer', 'partial', 'short', 'miss']) blocks.free(seq);
    expect(blocks.stats().usedBlocks).toBe(0);
  });

  test.each([false, true])('hashes chain on the parent: the same block after a different prefix does not hit (weak hash: %s)', (weak) => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4 });
    if (weak) weakenHash(blocks, (_parent, tokens, offset) => tokens[offset + 3]! & 1); // ignores the parent
    allocate(blocks, 'a', [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(allocate(blocks, 'b', [0, 2, 3, 4, 5, 6, 7, 8, 9]).numCachedTokens).toBe(0);
    expect(allocate(blocks, 'c', [1, 2, 3, 4, 5, 6, 7, 8, 10]).numCachedTokens).toBe(8);
    // a's second block, [5, 6, 7, 8], is no hit as a first block: its KV belongs to positions 4..7 after [1, 2, 3, 4].
    expect(allocate(blocks, 'd', [5, 6, 7, 8, 9]).numCachedTokens).toBe(0);
    // d's first block now holds [5, 6, 7, 8] as a first block; what follows a's [5, 6, 7, 8] is not d's to follow.
    allocate(blocks, 'e', range(1, 14));
    expect(allocate(blocks, 'f', [5, 6, 7, 8, 9, 10, 11, 12, 0]).numCachedTokens).toBe(4);
  });

  test('hash collisions never produce a wrong hit: hits are verified by tokens and by parent', () => {
    const blocks = new BlockManager({ numBlocks: 64, blockSize: 4 });
    weakenHash(blocks, () => 0); // every block has the same hash
    allocate(blocks, 'a', range(1, 10)); // caches [1..4] and [5..8] (after [1..4])
    expect(blocks.stats().cachedBlocks).toBe(2);
    expect(allocate(blocks, 'b', [1, 2, 3, 5, 0]).numCachedTokens).toBe(0); // other tokens
    expect(allocate(blocks, 'c', [5, 6, 7, 8, 0]).numCachedTokens).toBe(0); // same tokens, other parent
    expect(allocate(blocks, 'd', [...range(1, 9), 0]).numCachedTokens).toBe(8);
    expect(blocks.blockTable('d')[1]).toBe(blocks.blockTable('a')[1]);
    // At most 8 cached blocks share a hash: the rest stay uncached (and are never wrong either).
    for (let i = 0; i < 10; i++) allocate(blocks, `x${i}`, [100 + i, 0, 0, 0, 1]);
    expect(blocks.stats().cachedBlocks).toBe(8);
    // a's two blocks, b's and c's first blocks, x0..x3: x4..x9 found the hash full.
    expect(allocate(blocks, 'x3 again', [103, 0, 0, 0, 1]).numCachedTokens).toBe(4);
    expect(allocate(blocks, 'x4 again', [104, 0, 0, 0, 1]).numCachedTokens).toBe(0);
    expect(allocate(blocks, 'a2', [...range(1, 9), 0]).numCachedTokens).toBe(8);
  });

  test('removing a cached block keeps the others with the same hash reachable', () => {
    const blocks = new BlockManager({ numBlocks: 64, blockSize: 4 });
    weakenHash(blocks, () => 5); // one probe run
    for (const seq of ['a', 'b', 'c']) allocate(blocks, seq, [seq.charCodeAt(0), 0, 0, 0, 1]);
    blocks.free('a');
    expect(blocks.evictCachedBlocks()).toBe(1); // a's block leaves the front of the run
    blocks.free('c');
    blocks.free('b');
    expect(allocate(blocks, 'b again', [98, 0, 0, 0, 1]).numCachedTokens).toBe(4);
    expect(allocate(blocks, 'c again', [99, 0, 0, 0, 1]).numCachedTokens).toBe(4);
    expect(allocate(blocks, 'a again', [97, 0, 0, 0, 1]).numCachedTokens).toBe(0);
  });

  test('forked sequences hash their own tokens when their blocks fill in interleaved steps', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4 });
    allocate(blocks, 'p', [1, 2]);
    blocks.fork('p', 'c');
    allocate(blocks, 'p', [3]);
    allocate(blocks, 'c', [5, 6]); // c's block fills first: [1, 2, 5, 6]
    allocate(blocks, 'p', [4]); // then p's: [1, 2, 3, 4]
    const p = blocks.blockTable('p')[0];
    const c = blocks.blockTable('c')[0];
    expect(p).not.toBe(c);
    const hitP = allocate(blocks, 'x', [1, 2, 3, 4, 0]);
    expect(hitP.numCachedTokens).toBe(4);
    expect(blocks.blockTable('x')[0]).toBe(p);
    allocate(blocks, 'y', [1, 2, 5, 6, 0]);
    expect(blocks.blockTable('y')[0]).toBe(c);
    expect(allocate(blocks, 'z', [1, 2, 5, 4, 0]).numCachedTokens).toBe(0);
  });

  test('identical content may occupy two blocks, and either serves a hit', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4 });
    allocate(blocks, 'a', range(0, 8));
    const b = allocate(blocks, 'b', range(0, 8)); // hits 1 block, recomputes block 1 into a new block
    expect(b.numCachedTokens).toBe(4);
    expect(blocks.stats().cachedBlocks).toBe(3);
    const second = [blocks.blockTable('a')[1], blocks.blockTable('b')[1]];
    expect(second[0]).not.toBe(second[1]);
    blocks.free('a'); // a's copy becomes evictable; b's is still referenced and is preferred
    const c = allocate(blocks, 'c', [...range(0, 8), 1]);
    expect(c.numCachedTokens).toBe(8);
    expect(blocks.blockTable('c')[1]).toBe(second[1]);
  });

  test('blocks that fill while decoding are cached; a salt isolates tenants', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4 });
    allocate(blocks, 'a', [1, 2], { salt: 'tenant-1' });
    for (const t of [3, 4, 5, 6, 7, 8]) allocate(blocks, 'a', [t]);
    expect(blocks.stats().cachedBlocks).toBe(2);
    const prompt = range(1, 10);
    expect(allocate(blocks, 'same', prompt, { salt: 'tenant-1' }).numCachedTokens).toBe(8);
    expect(allocate(blocks, 'other', prompt, { salt: 'tenant-2' }).numCachedTokens).toBe(0);
    expect(allocate(blocks, 'none', prompt).numCachedTokens).toBe(0);
  });

  test('tokens without ids are never cached; caching can be turned off', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4 });
    allocate(blocks, 'a', range(0, 6));
    allocate(blocks, 'a', [6, 7], { ids: false }); // block 1 fills with unknown tokens
    allocate(blocks, 'a', range(8, 12));
    expect(blocks.stats().cachedBlocks).toBe(1);
    allocate(blocks, 'b', range(0, 9), { ids: false });
    expect(blocks.stats().prefixCache.requests).toBe(1); // b did not look up

    const off = new BlockManager({ numBlocks: 32, blockSize: 4, enablePrefixCaching: false });
    allocate(off, 'a', range(0, 9));
    expect(allocate(off, 'b', range(0, 9)).numCachedTokens).toBe(0);
    expect(off.stats()).toMatchObject({ cachedBlocks: 0, prefixCache: { requests: 0, queries: 0, hits: 0, hitRate: 0 } });
    expect(off.evictCachedBlocks()).toBe(0);
  });

  test('evictCachedBlocks drops unreferenced cached blocks in LRU order; referenced ones keep their hash', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4 });
    allocate(blocks, 'a', range(0, 9));
    allocate(blocks, 'b', range(100, 109));
    blocks.free('a'); // queue tail: a's 3, 2, 1
    expect(blocks.stats()).toMatchObject({ cachedBlocks: 4, evictableBlocks: 2 });
    expect(blocks.evictCachedBlocks(1)).toBe(1); // a's second block (freed first of a's two full blocks)
    expect(allocate(blocks, 'c', range(0, 9)).numCachedTokens).toBe(4);
    expect(blocks.evictCachedBlocks()).toBe(0); // c holds a's first block, and its own recomputed second
    blocks.free('c');
    expect(blocks.evictCachedBlocks()).toBe(2);
    expect(blocks.stats()).toMatchObject({ cachedBlocks: 2, evictableBlocks: 0 }); // b's two blocks
  });

  test('swapIn shares blocks whose content is still cached instead of copying them', () => {
    const blocks = new BlockManager({ numBlocks: 16, blockSize: 4, numHostBlocks: 8 });
    allocate(blocks, 'a', range(0, 9));
    expect(blocks.swapOut('a')).toEqual([[1, 1], [2, 2], [3, 3]]);
    expect(blocks.stats()).toMatchObject({ usedBlocks: 0, evictableBlocks: 2 });
    const pairs = blocks.swapIn('a')!;
    expect(pairs).toHaveLength(1); // only the partial block moves
    expect(Array.from(blocks.blockTable('a')).slice(0, 2)).toEqual([1, 2]);
    expect(blocks.stats().host.usedBlocks).toBe(0);
    // Blocks copied in are cached again, each after its own prefix.
    blocks.swapOut('a');
    blocks.evictCachedBlocks();
    expect(blocks.swapIn('a')).toHaveLength(3);
    expect(blocks.stats().cachedBlocks).toBe(2);
    expect(allocate(blocks, 'b', [...range(0, 8), 1]).numCachedTokens).toBe(8);
    expect(allocate(blocks, 'c', [...range(4, 8), 1]).numCachedTokens).toBe(0);
  });
});

// ---- sliding window -------------------------------------------------------------------------------

describe('sliding window', () => {
  test('blocks wholly outside the window are released and replaced by the null block', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4, slidingWindow: 8 });
    allocate(blocks, 'a', range(0, 10));
    expect(Array.from(blocks.blockTable('a'))).toEqual([1, 2, 3]);
    allocate(blocks, 'a', [10]); // first new position 10 reads 3..10: block 0 (0..3) is still needed
    expect(blocks.blockTable('a')[0]).toBe(1);
    allocate(blocks, 'a', [11]); // position 11 reads 4..11: block 0 is released
    expect(Array.from(blocks.blockTable('a'))).toEqual([NULL_BLOCK, 2, 3]);
    expect(blocks.stats().usedBlocks).toBe(2);
    for (let t = 12; t < 40; t++) allocate(blocks, 'a', [t]);
    const table = Array.from(blocks.blockTable('a'));
    expect(table).toHaveLength(10); // position 39 read 32..39: blocks 8 and 9
    expect(table.filter((b) => b !== NULL_BLOCK)).toHaveLength(2);
    expect(table.slice(0, 8).every((b) => b === NULL_BLOCK)).toBe(true);
    expect(blocks.stats().usedBlocks).toBe(2);
    blocks.free('a');
    expect(blocks.stats().usedBlocks).toBe(0);
  });

  test('a fork keeps a released block alive; a hit outside the window is not taken', () => {
    const blocks = new BlockManager({ numBlocks: 32, blockSize: 4, slidingWindow: 4 });
    allocate(blocks, 'a', range(0, 7)); // [1, 2]
    blocks.fork('a', 'b');
    const step = allocate(blocks, 'a', [7]); // position 7 reads 4..7: block 0 is released for a, b still holds it
    expect(step.copies).toEqual([[2, 3]]);
    expect(Array.from(blocks.blockTable('a'))).toEqual([NULL_BLOCK, 3]);
    expect(Array.from(blocks.blockTable('b'))).toEqual([1, 2]);
    expect(blocks.snapshot().device.refCounts[1]).toBe(1);
    // c computes position 8 first, reading 5..8: its hit on block 0 is outside the window.
    const c = allocate(blocks, 'c', [...range(0, 8), 8, 9]);
    expect(c.numCachedTokens).toBe(8);
    expect(Array.from(blocks.blockTable('c')).slice(0, 2)).toEqual([NULL_BLOCK, 3]);
    expect(blocks.snapshot().device.refCounts[1]).toBe(1);
    expect(blocks.snapshot().device.refCounts[3]).toBe(2);
  });
});

// ---- property-based: random operation sequences against a shadow KV model --------------------------

interface Config {
  /** White-box: a weak prefix-cache hash (see weakenHash), so lookups meet collisions. */
  weakHash?: boolean;
  numBlocks: number;
  blockSize: number;
  numHostBlocks: number;
  watermark: number;
  enablePrefixCaching: boolean;
  slidingWindow: number | undefined;
}

type Op =
  | { kind: 'admit'; source: number | null; skip: number; family: number; length: number; tail: number[]; lookahead: number; salt: number; ids: boolean }
  | { kind: 'append'; pick: number; tokens: number[]; lookahead: number; ids: boolean }
  | { kind: 'fork'; pick: number }
  | { kind: 'free'; pick: number }
  | { kind: 'swapOut'; pick: number }
  | { kind: 'swapIn'; pick: number }
  | { kind: 'evict'; count: number };

/** `value` with odds `weight` to 1, else its negation. */
const mostly = (value: boolean, weight: number): fc.Arbitrary<boolean> =>
  fc.oneof({ weight, arbitrary: fc.constant(value) }, { weight: 1, arbitrary: fc.constant(!value) });

const configArb: fc.Arbitrary<Config> = fc.record({
  numBlocks: fc.integer({ min: 2, max: 40 }),
  blockSize: fc.constantFrom(1, 2, 4, 8),
  numHostBlocks: fc.integer({ min: 0, max: 24 }),
  watermark: fc.constantFrom(0, 0.01, 0.1),
  enablePrefixCaching: mostly(true, 4),
  slidingWindow: fc.option(fc.integer({ min: 1, max: 24 }), { nil: undefined, freq: 3 }),
  weakHash: mostly(false, 3),
});

const token = fc.integer({ min: 0, max: 3 }); // a small alphabet: decode output often repeats prompts
/**
 * Admissions: a family's prompt, or (two times in three) a stretch of an
 * earlier sequence's tokens — from its start (prefix hits, also on blocks
 * filled while decoding) or from a few tokens in (the same tokens at other
 * positions, which must not hit) — plus a few tokens of its own.
 */
const admitArb = fc.record({
  kind: fc.constant('admit' as const),
  source: fc.option(fc.nat(), { nil: null, freq: 3 }),
  skip: fc.constantFrom(0, 0, 0, 1, 2, 4, 8),
  family: fc.integer({ min: 0, max: 2 }),
  length: fc.integer({ min: 1, max: 24 }),
  tail: fc.array(token, { maxLength: 4 }),
  lookahead: fc.constantFrom(0, 0, 0, 1, 3),
  salt: fc.constantFrom(0, 0, 1),
  ids: mostly(true, 5),
});
const appendArb = fc.record({
  kind: fc.constant('append' as const),
  pick: fc.nat(),
  tokens: fc.array(token, { minLength: 1, maxLength: 5 }),
  lookahead: fc.constantFrom(0, 0, 0, 2),
  ids: mostly(true, 9),
});
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: admitArb },
  { weight: 8, arbitrary: appendArb },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('fork' as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('swapOut' as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('swapIn' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('evict' as const), count: fc.integer({ min: 1, max: 8 }) }) },
);

/** A family's prompt: a fixed token sequence, so prompts of one family share prefixes. */
function familyTokens(family: number, length: number): number[] {
  return range(0, length).map((i) => (family * 7 + i * 3) % 5);
}

/**
 * What a real KV entry depends on: its token and every token before it. Each
 * distinct token prefix gets an id (the same in every manager of a test), so
 * a slot holding the id of prefix `tokens[0..p]` holds exactly what a cold
 * run computes for position p of that sequence — and a block reused at
 * another position, or after another prefix, reads back a different id.
 */
const prefixIds = new Map<string, number>();
function extendPrefix(parentId: number, tokenId: number): number {
  const key = `${parentId},${tokenId}`;
  let id = prefixIds.get(key);
  if (id === undefined) prefixIds.set(key, (id = prefixIds.size));
  return id;
}

/**
 * The KV contents the caller would hold, one int per slot (a prefix id; −1
 * never written; ≤ −2 a speculative lookahead write), for both pools, plus
 * each sequence's tokens and prefix ids.
 */
class ShadowKv {
  readonly device: Int32Array;
  readonly host: Int32Array;
  readonly tokens = new Map<SequenceId, number[]>();
  readonly prefixes = new Map<SequenceId, number[]>();
  private speculative = -2;
  constructor(readonly config: Config) {
    this.device = new Int32Array(config.numBlocks * config.blockSize).fill(-1);
    this.host = new Int32Array(Math.max(config.numHostBlocks, 1) * config.blockSize).fill(-1);
  }
  begin(seq: SequenceId, tokens: number[]): void {
    this.tokens.set(seq, []);
    this.prefixes.set(seq, []);
    this.extend(seq, tokens);
  }
  extend(seq: SequenceId, tokens: number[]): void {
    const own = this.tokens.get(seq)!;
    const prefix = this.prefixes.get(seq)!;
    for (const t of tokens) {
      prefix.push(extendPrefix(prefix.length === 0 ? -1 : prefix[prefix.length - 1]!, t));
      own.push(t);
    }
  }
  fork(parent: SequenceId, child: SequenceId): void {
    this.tokens.set(child, this.tokens.get(parent)!.slice());
    this.prefixes.set(child, this.prefixes.get(parent)!.slice());
  }
  drop(seq: SequenceId): void {
    this.tokens.delete(seq);
    this.prefixes.delete(seq);
  }
  copyBlocks(from: Int32Array, to: Int32Array, pairs: ReadonlyArray<readonly [number, number]>): void {
    const b = this.config.blockSize;
    for (const [src, dst] of pairs) to.set(from.subarray(src * b, (src + 1) * b), dst * b);
  }
  /** Writes the new positions (from `firstPosition`) and speculative garbage in the lookahead slots. */
  write(seq: SequenceId, result: SlotAllocation): void {
    const prefix = this.prefixes.get(seq)!;
    result.slotMapping.forEach((slot, i) => {
      const position = result.firstPosition + i;
      this.device[slot] = position < prefix.length ? prefix[position]! : this.speculative--;
    });
  }
  /** What `seq` reads through `table` at each of its positions (NaN for released blocks). */
  read(seq: SequenceId, table: Int32Array, location: 'device' | 'host'): number[] {
    const b = this.config.blockSize;
    const kv = location === 'device' ? this.device : this.host;
    return this.prefixes.get(seq)!.map((_, p) => {
      const block = table[Math.floor(p / b)]!;
      return block === NULL_BLOCK ? NaN : kv[block * b + (p % b)]!;
    });
  }
}

/** Fast assertions for the property runs (jest's expect is too slow to call thousands of times per run). */
function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`violated: ${what}`);
}
function same(actual: unknown, expected: unknown, what: string): void {
  if (!Object.is(actual, expected)) throw new Error(`${what}: got ${String(actual)}, expected ${String(expected)}`);
}
const toJson = (value: unknown): string => JSON.stringify(value, (_key, v: unknown) => (ArrayBuffer.isView(v) ? Array.from(v as Int32Array) : v));
function sameJson(actual: unknown, expected: unknown, what: string): void {
  const a = toJson(actual);
  const e = toJson(expected);
  if (a !== e) throw new Error(`${what}: got ${a}, expected ${e}`);
}

/** Checks every invariant of the manager against the shadow model; throws naming the first violation. */
function checkInvariants(blocks: BlockManager, shadow: ShadowKv, config: Config): void {
  const snap = blocks.snapshot();
  const stats = blocks.stats();
  const b = config.blockSize;
  for (const [poolName, pool, size] of [
    ['device', snap.device, config.numBlocks],
    ['host', snap.host, Math.max(config.numHostBlocks, 1)],
  ] as const) {
    const where = snap.sequences.filter((s) => s.location === poolName);
    const references = new Int32Array(size);
    for (const s of where) {
      const seen = new Set<number>();
      for (const block of s.blockTable) {
        if (block === NULL_BLOCK) continue;
        if (seen.has(block)) throw new Error(`${poolName}: block ${block} twice in the table of ${String(s.id)}`);
        seen.add(block);
        references[block]!++;
      }
    }
    // Ref counts equal the references held by block tables; the null block is nobody's.
    for (let block = 0; block < size; block++) {
      if (pool.refCounts[block] !== references[block]) {
        throw new Error(`${poolName}: block ${block} has ref count ${pool.refCounts[block]} but ${references[block]} table references`);
      }
    }
    // Every block is in exactly one place: the free queue (ref 0) or referenced.
    const queued = new Set(pool.freeQueue);
    if (queued.size !== pool.freeQueue.length) throw new Error(`${poolName}: a block is queued twice`);
    if (queued.has(NULL_BLOCK)) throw new Error(`${poolName}: the null block is in the free queue`);
    for (let block = 1; block < size; block++) {
      if (queued.has(block) !== (references[block] === 0)) throw new Error(`${poolName}: block ${block} queued=${queued.has(block)} with ${references[block]} references`);
    }
  }
  // Accounting.
  const used = snap.device.refCounts.filter((r) => r > 0).length;
  const cached = snap.device.cachedBlocks;
  same(stats.totalBlocks, config.numBlocks - 1, 'stats.totalBlocks');
  same(stats.freeBlocks, snap.device.freeQueue.length, 'stats.freeBlocks');
  same(stats.usedBlocks, used, 'stats.usedBlocks');
  same(stats.usedBlocks + stats.freeBlocks, stats.totalBlocks, 'used + free = total');
  same(stats.cachedBlocks, cached.length, 'stats.cachedBlocks');
  same(stats.evictableBlocks, cached.filter((block) => snap.device.refCounts[block] === 0).length, 'stats.evictableBlocks');
  check(!cached.includes(NULL_BLOCK), 'the null block is never cached');
  if (!config.enablePrefixCaching) sameJson(cached, [], 'cached');
  same(stats.host.usedBlocks + stats.host.freeBlocks, stats.host.totalBlocks, 'host used + free = total');
  same(stats.host.freeBlocks, snap.host.freeQueue.length, 'stats.host.freeBlocks');
  same(stats.sequences, shadow.tokens.size, 'stats.sequences');
  // Every sequence reads back, through its table, the KV of exactly its own tokens and prefix.
  for (const s of snap.sequences) {
    const expected = shadow.prefixes.get(s.id)!;
    if (s.numTokens !== expected.length) throw new Error(`${String(s.id)}: numTokens ${s.numTokens}, model ${expected.length}`);
    if (s.blockTable.length < Math.ceil(expected.length / b)) throw new Error(`${String(s.id)}: table too short`);
    const got = shadow.read(s.id, s.blockTable, s.location);
    for (let position = 0; position < expected.length; position++) {
      const block = s.blockTable[Math.floor(position / b)]!;
      if (block === NULL_BLOCK) {
        // Released by the sliding window: only blocks wholly before the window of the next token.
        const window = config.slidingWindow;
        if (window === undefined || (Math.floor(position / b) + 1) * b > expected.length - window + 1) {
          throw new Error(`${String(s.id)}: position ${position} is in a released block but still in the window`);
        }
        continue;
      }
      if (got[position] !== expected[position]) {
        throw new Error(`${String(s.id)} (${s.location}): position ${position} reads prefix ${got[position]} from block ${block}, expected ${expected[position]}`);
      }
    }
  }
}

interface RunCounters {
  hits: number;
  copies: number;
  swapsOut: number;
  swapsIn: number;
  nulls: number;
  releases: number;
}

function runOps(config: Config, ops: Op[], counters: RunCounters): void {
  const blocks = new BlockManager(config);
  if (config.weakHash) weakenHash(blocks, (_parent, tokens, offset) => tokens[offset]! & 1);
  const shadow = new ShadowKv(config);
  const b = config.blockSize;
  let nextId = 0;
  const histories: number[][] = []; // the tokens of every sequence so far, for prompts that replay them
  const live = (location?: 'device' | 'host'): SequenceId[] =>
    [...shadow.tokens.keys()].filter((id) => location === undefined || blocks.location(id) === location);
  const pick = (list: SequenceId[], n: number): SequenceId | undefined => (list.length === 0 ? undefined : list[n % list.length]);
  /** Blocks referenced by device sequences other than `seq`. */
  const othersBlocks = (seq: SequenceId): Set<number> => {
    const out = new Set<number>();
    for (const s of blocks.snapshot().sequences) if (s.id !== seq && s.location === 'device') s.blockTable.forEach((block) => out.add(block));
    return out;
  };
  const writeChecked = (seq: SequenceId, result: SlotAllocation): void => {
    const others = othersBlocks(seq);
    for (const slot of result.slotMapping) {
      const block = Math.floor(slot / b);
      if (block === NULL_BLOCK || others.has(block)) throw new Error(`a write to slot ${slot} reaches block ${block}, shared with another sequence`);
    }
    shadow.write(seq, result);
  };

  for (const op of ops) {
    const before = blocks.snapshot();
    const beforeStats = blocks.stats();
    const unchanged = (): void => {
      counters.nulls++;
      sameJson(blocks.snapshot(), before, 'state after a failed call');
      sameJson(blocks.stats(), beforeStats, 'stats after a failed call');
    };
    switch (op.kind) {
      case 'admit': {
        const seq = nextId++;
        const base = op.source !== null && histories.length > 0 ? histories[op.source % histories.length]! : familyTokens(op.family, op.length);
        const skip = op.source !== null ? Math.min(op.skip, base.length - 1) : 0; // a suffix: same tokens, other positions
        const prompt = [...base.slice(skip, skip + op.length), ...op.tail];
        const options = { tokenIds: op.ids ? prompt : undefined, lookahead: op.lookahead, salt: op.salt ? `tenant-${op.salt}` : undefined };
        const status = blocks.canAllocate(prompt.length, options);
        const result = blocks.allocateSlots(seq, prompt.length, options);
        same(result !== null, status === 'ok', `admission succeeded (canAllocate said ${status})`);
        if (result === null) {
          unchanged();
          break;
        }
        const cached = result.numCachedTokens;
        same(cached % b, 0, 'cached % b');
        check(cached <= Math.floor((prompt.length - 1) / b) * b, 'cached <= Math.floor((prompt.length - 1) / b) * b');
        if (!op.ids || !config.enablePrefixCaching) same(cached, 0, 'cached');
        same(result.firstPosition, cached, 'result.firstPosition');
        same(result.slotMapping.length, prompt.length - cached + op.lookahead, 'result.slotMapping.length');
        sameJson(result.copies, [], 'result.copies');
        counters.hits += cached;
        shadow.begin(seq, prompt);
        histories.push(shadow.tokens.get(seq)!);
        writeChecked(seq, result);
        break;
      }
      case 'append': {
        const seq = pick(live('device'), op.pick);
        if (seq === undefined) break;
        const tokens = shadow.tokens.get(seq)!;
        const oldTable = blocks.blockTable(seq);
        const result = blocks.allocateSlots(seq, op.tokens.length, { tokenIds: op.ids ? op.tokens : undefined, lookahead: op.lookahead });
        if (result === null) {
          unchanged();
          break;
        }
        same(result.firstPosition, tokens.length, 'result.firstPosition');
        same(result.numCachedTokens, 0, 'result.numCachedTokens');
        same(result.slotMapping.length, op.tokens.length + op.lookahead, 'result.slotMapping.length');
        const newTable = blocks.blockTable(seq);
        const refCounts = blocks.snapshot().device.refCounts;
        for (const [src, dst] of result.copies) {
          // A copy moves a block still referenced by someone else into one of ours, at the same index.
          check(result.newBlocks.includes(dst), 'a copy-on-write destination is a new block');
          const index = Array.from(oldTable).indexOf(src);
          check(index >= 0, 'a copy-on-write source was in the table');
          same(newTable[index], dst, 'the copy replaces its source in the table');
          check(refCounts[src]! > 0, 'a copy-on-write source stays referenced');
          check(index * b < tokens.length, 'only blocks holding committed tokens are copied');
        }
        counters.copies += result.copies.length;
        if (oldTable.some((block, i) => block !== NULL_BLOCK && newTable[i] === NULL_BLOCK)) counters.releases++;
        shadow.copyBlocks(shadow.device, shadow.device, result.copies);
        shadow.extend(seq, op.tokens);
        writeChecked(seq, result);
        break;
      }
      case 'fork': {
        const parent = pick(live(), op.pick);
        if (parent === undefined) break;
        const child = nextId++;
        blocks.fork(parent, child);
        shadow.fork(parent, child);
        histories.push(shadow.tokens.get(child)!);
        same(blocks.stats().freeBlocks, beforeStats.freeBlocks, 'fork allocates nothing');
        break;
      }
      case 'free': {
        const seq = pick(live(), op.pick);
        if (seq === undefined) break;
        blocks.free(seq);
        shadow.drop(seq);
        break;
      }
      case 'swapOut': {
        const seq = pick(live('device'), op.pick);
        if (seq === undefined) break;
        const table = blocks.blockTable(seq);
        const pairs = blocks.swapOut(seq);
        if (pairs === null) {
          unchanged();
          break;
        }
        for (const [src] of pairs) check(Array.from(table).includes(src), 'a swapped-out block was in the table');
        same(new Set(pairs.map(([, dst]) => dst)).size, pairs.length, 'swap destinations are distinct');
        counters.swapsOut++;
        shadow.copyBlocks(shadow.device, shadow.host, pairs);
        break;
      }
      case 'swapIn': {
        const seq = pick(live('host'), op.pick);
        if (seq === undefined) break;
        const pairs = blocks.swapIn(seq);
        if (pairs === null) {
          unchanged();
          break;
        }
        same(new Set(pairs.map(([, dst]) => dst)).size, pairs.length, 'swap destinations are distinct');
        counters.swapsIn++;
        shadow.copyBlocks(shadow.host, shadow.device, pairs);
        break;
      }
      case 'evict': {
        const cachedBefore = beforeStats.evictableBlocks;
        const evicted = blocks.evictCachedBlocks(op.count);
        same(evicted, Math.min(op.count, cachedBefore), 'evicted');
        same(blocks.stats().evictableBlocks, cachedBefore - evicted, 'blocks.stats().evictableBlocks');
        break;
      }
    }
    checkInvariants(blocks, shadow, config);
  }

  // Freeing everything (and dropping the cache) returns to the start state.
  for (const seq of live()) blocks.free(seq);
  blocks.evictCachedBlocks();
  const fresh = new BlockManager(config);
  const { prefixCache: _counters, ...rest } = blocks.stats();
  const { prefixCache: _none, ...freshRest } = fresh.stats();
  sameJson(rest, freshRest, 'stats after freeing everything');
  const snap = blocks.snapshot();
  check(snap.device.refCounts.every((r) => r === 0), 'no device block is referenced');
  check(snap.host.refCounts.every((r) => r === 0), 'no host block is referenced');
  sameJson([...snap.device.freeQueue].sort((x, y) => x - y), range(1, config.numBlocks), 'the device free queue holds every usable block');
  sameJson([...snap.host.freeQueue].sort((x, y) => x - y), range(1, Math.max(config.numHostBlocks, 1)), 'the host free queue holds every usable block');
  sameJson(snap.sequences, [], 'no sequences are left');
}

describe('property: random allocate/append/fork/free/swap/evict sequences', () => {
  test('keep every invariant, and every sequence reads back what it wrote', () => {
    const counters: RunCounters = { hits: 0, copies: 0, swapsOut: 0, swapsIn: 0, nulls: 0, releases: 0 };
    fc.assert(
      fc.property(configArb, fc.array(opArb, { minLength: 1, maxLength: 120, size: 'max' }), (config, ops) => {
        runOps(config, ops, counters);
      }),
      { numRuns: 500 },
    );
    // The runs exercised what they are meant to check.
    if (process.env.BLOCK_MANAGER_COUNTERS) console.log(counters);
    expect(counters.hits).toBeGreaterThan(0);
    expect(counters.copies).toBeGreaterThan(0);
    expect(counters.swapsOut).toBeGreaterThan(0);
    expect(counters.swapsIn).toBeGreaterThan(0);
    expect(counters.nulls).toBeGreaterThan(0);
    expect(counters.releases).toBeGreaterThan(0);
  });

  test('a prefix-cache hit holds what a cold run writes', () => {
    // Two managers see the same requests (prompts that share prefixes, then
    // decode steps, some freed on the way); one never caches. Every sequence
    // of the caching one reads back exactly what its cold twin does.
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 4),
        fc.array(
          fc.record({ family: fc.integer({ min: 0, max: 1 }), length: fc.integer({ min: 1, max: 20 }), decode: fc.array(token, { maxLength: 6 }), freeOne: fc.option(fc.nat(), { nil: null }) }),
          { minLength: 1, maxLength: 12 },
        ),
        (blockSize, requests) => {
          const config: Config = { numBlocks: 200, blockSize, numHostBlocks: 0, watermark: 0, enablePrefixCaching: true, slidingWindow: undefined };
          const warm = new BlockManager(config);
          const cold = new BlockManager({ ...config, enablePrefixCaching: false });
          const twins = [
            { blocks: warm, kv: new ShadowKv(config) },
            { blocks: cold, kv: new ShadowKv(config) },
          ];
          let hits = 0;
          requests.forEach((request, seq) => {
            const prompt = familyTokens(request.family, request.length);
            for (const { blocks, kv } of twins) {
              const result = allocate(blocks, seq, prompt);
              if (blocks === warm) hits += result.numCachedTokens;
              kv.begin(seq, prompt);
              kv.write(seq, result);
              for (const t of request.decode) {
                kv.extend(seq, [t]);
                kv.write(seq, allocate(blocks, seq, [t]));
              }
              if (request.freeOne !== null && kv.tokens.size > 1) {
                const victim = [...kv.tokens.keys()][request.freeOne % kv.tokens.size]!;
                blocks.free(victim);
                kv.drop(victim);
              }
            }
          });
          for (const [seq, expected] of twins[1]!.kv.prefixes) {
            for (const { blocks, kv } of twins) expect(kv.read(seq, blocks.blockTable(seq), 'device')).toEqual(expected);
          }
          expect(cold.stats().prefixCache.hits).toBe(0);
          expect(warm.stats().prefixCache.hits).toBe(hits);
        },
      ),
      { numRuns: 150 },
    );
  });
});
