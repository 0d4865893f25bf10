/**
 * The KV-cache block manager (DESIGN.md §4): which physical KV blocks each
 * sequence owns. Pure TypeScript, no GPU and no native calls — it hands out
 * block ids and slot ids; the caller moves the bytes (`write_kv` with the slot
 * mapping, `copy_blocks` for copy-on-write, `swap_blocks` for swapping).
 *
 * The model is vLLM's, both generations of it (formats.md §3):
 * - from v1 (`KVCacheManager`, `BlockPool`): block 0 is a reserved null block;
 *   an O(1) intrusive doubly linked free queue whose front is allocated (and
 *   evicted) first and whose back receives freed blocks; prefix caching of
 *   full blocks by content chained on the prefix, where unreferenced cached blocks stay in
 *   the free queue until evicted in LRU order; a hit never covers the last
 *   prompt token; sliding-window release; failure to fit is `null` with no
 *   state change;
 * - from v0 (`BlockSpaceManagerV1`): ref counts with `fork` sharing every
 *   block, copy-on-write of a shared block before it is written, an admission
 *   watermark, and swapping to a host block pool.
 *
 * Units: a block holds `blockSize` tokens; slot `s = block * blockSize +
 * offset` addresses one token's K and V in every layer (DESIGN.md §4). Block
 * tables are int32 `[numBlocksOfSeq]`, padded with {@link NULL_BLOCK}.
 *
 * Prefix-cache identity (the choice, and what a hash collision does): a
 * cached block is found by its content — its token ids and the identity of
 * the prefix before it — and every hit is verified exactly: the block's
 * stored token ids must equal the query's, and its parent must be the content
 * just matched. Prefix identities are content classes: blocks holding the
 * same tokens after prefixes of the same class share one class id (so
 * duplicate copies serve hits alike); block 0's parent is a root class per
 * tenant salt. This is vLLM's chain `hash_i = H(hash_{i−1}, tokens_i, salt)`
 * with the chain made of exact, process-local ids instead of digests. The
 * hash — a MurmurHash3 mix of (parent class, token ids) under a random
 * per-manager seed, into an open-addressing table that never resizes — only
 * picks the candidates to verify: a collision can never attach another
 * prompt's KV to a sequence (the failure vLLM moved to SHA-256 to make
 * improbable); it costs one comparison. At most 8 cached blocks may share a
 * hash, so collisions crafted on purpose can keep blocks out of the cache
 * but cannot make a lookup cost more than a few comparisons per block.
 *
 * Why not SHA-256 (node:crypto): about 2 µs per full block (digest plus a
 * 44-character map key), so one in every `blockSize` decode steps of each
 * sequence would cost more than the whole step (the target is 50 µs for 256
 * sequences); the exact index costs about 0.3 µs per block and cannot be
 * wrong. What it costs instead: `numBlocks × blockSize` int32 of token ids
 * (64 B per block at blockSize 16, against the block's megabytes of KV),
 * and ids that mean nothing outside this process (sharing KV across
 * processes would need a content digest on top). One more deviation: a
 * cached block whose prefix was evicted first stays unreachable even if that
 * prefix is computed again (vLLM's digests would re-link it); since tables
 * are freed tail first, only blocks outside a sliding window are affected.
 *
 * @example
 * const blocks = new BlockManager({ numBlocks: 1024, blockSize: 16 });
 * const prompt = [1, 15043, 29892, 3186];
 * const first = blocks.allocateSlots('req-1', prompt.length, { tokenIds: prompt })!;
 * // first.slotMapping: where write_kv puts the prompt's K/V (first.numCachedTokens were cached)
 * blocks.fork('req-1', 'req-1/1');                        // n = 2: share every block
 * const step = blocks.allocateSlots('req-1', 1, { tokenIds: [450] })!;
 * // step.copies: [[shared, copy]] — run copy_blocks before writing step.slotMapping
 * blocks.free('req-1');
 * blocks.free('req-1/1');
 */
import * as crypto from 'node:crypto';

import { InvalidArgumentError } from './errors';

/** Block 0 of each pool: never handed out; pads block tables and stands for released (out-of-window) blocks. */
export const NULL_BLOCK = 0;

/** Sequences are named by the caller: a string or a safe integer. */
export type SequenceId = number | string;

/** Where a sequence's blocks live. */
export type SequenceLocation = 'device' | 'host';

/** vLLM's `AllocStatus`: fits now, may fit after others finish, or can never fit. */
export type AllocationStatus = 'ok' | 'later' | 'never';

export interface BlockManagerOptions {
  /** Device KV blocks, the null block 0 included (so `numBlocks − 1` are usable). */
  numBlocks: number;
  /** Tokens per block: a power of two; the attention kernels support 8, 16 and 32. Default 16. */
  blockSize?: number;
  /** Host (swap) blocks, with its own null block 0. Default 0: no swapping. */
  numHostBlocks?: number;
  /**
   * Fraction of `numBlocks` kept free when admitting a sequence (its first
   * allocation, or swapIn), so running sequences can still grow. Default 0.01.
   */
  watermark?: number;
  /** Cache full blocks by content for reuse across sequences. Default true. */
  enablePrefixCaching?: boolean;
  /**
   * Attention window in tokens (Mistral): the token at position p attends to
   * positions p − slidingWindow + 1 … p, and blocks wholly before that are released.
   */
  slidingWindow?: number;
}

export interface AllocateSlotsOptions {
  /**
   * Further positions to reserve (writable, exclusively owned) after the new
   * tokens, for speculative tokens. Their slots end the slot mapping; they do
   * not count in `numTokens` and are never cached. Default 0.
   */
  lookahead?: number;
  /**
   * The ids of the new tokens (`numNewTokens` of them). Needed for prefix
   * caching: a new sequence looks its prompt up, and blocks that fill are
   * cached. A sequence that once grows without ids is never cached again.
   */
  tokenIds?: ArrayLike<number>;
  /** Tenant isolation: only sequences with the same salt share cached blocks. First allocation only. */
  salt?: string;
}

/** A block copy the caller performs: `[src, dst]` block ids. */
export type BlockCopy = [src: number, dst: number];

/** The empty `copies` / `newBlocks` of most calls. */
const NONE: readonly never[] = Object.freeze([]);

export interface SlotAllocation {
  /**
   * int32 `[numNewTokens − numCachedTokens + lookahead]`: the slot of each
   * position from `firstPosition` on (`block * blockSize + offset`). The last
   * `lookahead` entries are the reserved speculative slots.
   */
  slotMapping: Int32Array;
  /** Logical position of `slotMapping[0]`: the previous `numTokens`, plus `numCachedTokens` on a first allocation. */
  firstPosition: number;
  /**
   * Copy-on-write: device block copies (`copy_blocks`) the caller must run
   * before writing the slots. Read-only: an empty result is one shared frozen
   * array (a decode step allocates as little as it can).
   */
  copies: readonly BlockCopy[];
  /** Device blocks this call gave the sequence (fresh blocks and copy-on-write destinations). */
  newBlocks: readonly number[];
  /** Leading prompt tokens whose KV is already cached (a multiple of blockSize; 0 after the first allocation). */
  numCachedTokens: number;
}

export interface BlockManagerStats {
  /** Usable device blocks: `numBlocks − 1`. */
  totalBlocks: number;
  /** Blocks in the free queue: never used, or unreferenced (cached ones included). */
  freeBlocks: number;
  /** Blocks referenced by at least one sequence; `usedBlocks + freeBlocks = totalBlocks`. */
  usedBlocks: number;
  /** Blocks holding a prefix-cache hash, referenced or not. */
  cachedBlocks: number;
  /** Cached blocks nobody references: free, but reusable by a hit until evicted (a subset of freeBlocks). */
  evictableBlocks: number;
  /** usedBlocks / totalBlocks. */
  usage: number;
  /** Blocks an admission must leave free. */
  watermarkBlocks: number;
  host: { totalBlocks: number; freeBlocks: number; usedBlocks: number };
  /** Lifetime counters over first allocations with tokenIds: prompt tokens looked up, and tokens found cached. */
  prefixCache: { requests: number; queries: number; hits: number; hitRate: number };
  sequences: number;
}

/** The whole state, copied (for tests and debugging; O(blocks + table entries)). */
export interface BlockManagerSnapshot {
  device: { refCounts: Int32Array; freeQueue: number[]; cachedBlocks: number[] };
  host: { refCounts: Int32Array; freeQueue: number[] };
  sequences: Array<{ id: SequenceId; location: SequenceLocation; numTokens: number; blockTable: Int32Array }>;
}

// ---- validation ---------------------------------------------------------------------------

function describe(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

function describeSequence(seq: SequenceId): string {
  return `sequence ${describe(seq)}`;
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function checkSequenceId(seq: unknown): asserts seq is SequenceId {
  if (typeof seq === 'string' || (typeof seq === 'number' && Number.isSafeInteger(seq))) return;
  throw new InvalidArgumentError(`Invalid sequence id: expected a string or a safe integer, got ${describe(seq)}`);
}

const MAX_TOKEN_ID = 0x7fffffff;
/** Slot ids are int32. */
const MAX_SLOTS = 2 ** 31;

function checkTokenIds(tokenIds: unknown, count: number): asserts tokenIds is ArrayLike<number> {
  if (tokenIds === null || typeof tokenIds !== 'object' || typeof (tokenIds as ArrayLike<number>).length !== 'number') {
    throw new InvalidArgumentError(`Invalid tokenIds: expected an array of token ids, got ${describe(tokenIds)}`);
  }
  const ids = tokenIds as ArrayLike<number>;
  if (ids.length !== count) {
    throw new InvalidArgumentError(`Invalid tokenIds: expected ${count} token ids (one per new token), got ${ids.length}`);
  }
  for (let i = 0; i < count; i++) {
    const id = ids[i];
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > MAX_TOKEN_ID) {
      throw new InvalidArgumentError(`Invalid tokenIds[${i}]: expected an integer in [0, ${MAX_TOKEN_ID}], got ${describe(id)}`);
    }
  }
}

// ---- free queue -----------------------------------------------------------------------------

/**
 * vLLM v1's `FreeKVCacheBlockQueue`: an intrusive doubly linked list over
 * block ids, with O(1) `popFront`, `pushBack` and `remove` from the middle
 * (a prefix-cache hit on a free block). The links live in two int32 arrays
 * indexed by block id, so the queue allocates nothing after construction.
 *
 * @example
 * const queue = new FreeBlockQueue(8, [1, 2, 3, 4]);
 * queue.popFront();    // 1
 * queue.remove(3);     // O(1), from the middle
 * queue.pushBack(1);
 * queue.toArray();     // [2, 4, 1]
 */
export class FreeBlockQueue {
  // [capacity + 1] each: next/prev block of a queued block, −1 when not queued; index
  // `capacity` is the sentinel of the circular list (its next is the front, its prev the back).
  private readonly next: Int32Array;
  private readonly prev: Int32Array;
  private readonly sentinel: number;
  private count = 0;

  /** `capacity`: block ids are 0 … capacity − 1. `initial`: queued in this order. */
  constructor(capacity: number, initial: Iterable<number> = []) {
    this.sentinel = capacity;
    this.next = new Int32Array(capacity + 1).fill(-1);
    this.prev = new Int32Array(capacity + 1).fill(-1);
    this.next[capacity] = capacity;
    this.prev[capacity] = capacity;
    for (const block of initial) this.pushBack(block);
  }

  get length(): number {
    return this.count;
  }

  has(block: number): boolean {
    return block >= 0 && block < this.sentinel && this.next[block] !== -1;
  }

  /** The front block (the next to be allocated or evicted), −1 when empty. */
  front(): number {
    const block = this.next[this.sentinel]!;
    return block === this.sentinel ? -1 : block;
  }

  /** The block after `block` (towards the back), −1 at the back. */
  after(block: number): number {
    const next = this.next[block]!;
    return next === this.sentinel ? -1 : next;
  }

  pushBack(block: number): void {
    if (!(block >= 0 && block < this.sentinel) || this.next[block] !== -1) {
      throw new InvalidArgumentError(`FreeBlockQueue.pushBack: block ${block} is out of range or already queued`);
    }
    const back = this.prev[this.sentinel]!;
    this.next[back] = block;
    this.prev[block] = back;
    this.next[block] = this.sentinel;
    this.prev[this.sentinel] = block;
    this.count++;
  }

  /** Removes and returns the front block; −1 when empty. */
  popFront(): number {
    const block = this.next[this.sentinel]!;
    if (block === this.sentinel) return -1;
    this.unlink(block);
    return block;
  }

  remove(block: number): void {
    if (!this.has(block)) throw new InvalidArgumentError(`FreeBlockQueue.remove: block ${block} is not queued`);
    this.unlink(block);
  }

  /** Front to back. */
  toArray(): number[] {
    const out: number[] = [];
    for (let block = this.front(); block !== -1; block = this.after(block)) out.push(block);
    return out;
  }

  private unlink(block: number): void {
    const prev = this.prev[block]!;
    const next = this.next[block]!;
    this.next[prev] = next;
    this.prev[next] = prev;
    this.next[block] = -1;
    this.prev[block] = -1;
    this.count--;
  }
}

// ---- prefix cache ---------------------------------------------------------------------------

/** Cached blocks one index key may have; past it a block stays uncached (see the module comment). */
const MAX_BLOCKS_PER_KEY = 8;
const TWO_POW_32 = 4294967296;

/** One MurmurHash3 (x86_32) round: mixes the 32-bit word `k` into `h`. */
function mixWord(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  h ^= Math.imul(k, 0x1b873593);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** MurmurHash3's finaliser: every input bit affects every output bit. */
function finishHash(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/**
 * Full device blocks by content. A block's content is (parent class, its
 * token ids); a class is an id for one content chain: blocks holding the same
 * tokens after prefixes of the same class get the same class. Roots (the
 * parents of block 0) are one class per tenant salt. Class ids are never
 * reused, so a class whose last block was evicted simply matches nothing.
 */
class PrefixCache {
  /** [numBlocks] class of a cached block; 0 when not cached. Float64: ids grow past 2^31 over a long run. */
  private readonly classOf: Float64Array;
  /** [numBlocks] class of a cached block's prefix (negative: a root). */
  private readonly parentClassOf: Float64Array;
  /** [numBlocks] index key of a cached block. */
  private readonly keyOf: Int32Array;
  /**
   * The index: an open-addressing hash table of cached block ids (−1 empty) with linear probing,
   * [a power of two ≥ 2 × numBlocks] so it is never more than half full and never grows.
   */
  private readonly slots: Int32Array;
  private readonly slotMask: number;
  /** [numBlocks, blockSize] token ids of cached blocks, to verify hits exactly. */
  private readonly tokensOf: Int32Array;
  /** salt → root class (−1 is the root without a salt). */
  private readonly rootClasses = new Map<string, number>();
  private nextClass = 1;
  /** Random per cache: index keys cannot be predicted from outside. */
  private readonly seed = crypto.randomBytes(4).readInt32LE(0);
  numCachedBlocks = 0;

  constructor(
    numBlocks: number,
    private readonly blockSize: number,
  ) {
    this.classOf = new Float64Array(numBlocks);
    this.parentClassOf = new Float64Array(numBlocks);
    this.keyOf = new Int32Array(numBlocks);
    let capacity = 2;
    while (capacity < 2 * numBlocks) capacity *= 2;
    this.slots = new Int32Array(capacity).fill(-1);
    this.slotMask = capacity - 1;
    this.tokensOf = new Int32Array(numBlocks * blockSize);
  }

  /** The root class of `salt`; with `create` false, NaN (matching nothing) for a salt never seen. */
  rootClass(salt: string | undefined, create: boolean): number {
    if (!salt) return -1;
    let root = this.rootClasses.get(salt);
    if (root === undefined) {
      if (!create) return NaN;
      this.rootClasses.set(salt, (root = -2 - this.rootClasses.size));
    }
    return root;
  }

  isCached(block: number): boolean {
    return this.classOf[block] !== 0;
  }

  classOfBlock(block: number): number {
    return this.classOf[block]!;
  }

  /** A cached block holding `tokens[offset … offset + blockSize)` after `parentClass`, preferring a referenced one (it costs no free block); −1 if none. */
  find(parentClass: number, tokens: ArrayLike<number>, offset: number, refCounts: Int32Array): number {
    const key = this.key(parentClass, tokens, offset);
    let found = -1;
    for (let slot = key & this.slotMask; ; slot = (slot + 1) & this.slotMask) {
      const block = this.slots[slot]!;
      if (block < 0) return found;
      if (this.keyOf[block] !== key || this.parentClassOf[block] !== parentClass || !this.holds(block, tokens, offset)) continue;
      if (refCounts[block]! > 0) return block;
      if (found < 0) found = block;
    }
  }

  /**
   * Caches `block`, which holds `tokens[offset … offset + blockSize)` after
   * `parentClass`, and returns its class (the class of identical content
   * cached before, else a new one). With MAX_BLOCKS_PER_KEY blocks under its
   * hash already, the block stays uncached; the class is returned all the
   * same, for the blocks after it.
   */
  register(block: number, parentClass: number, tokens: ArrayLike<number>, offset: number): number {
    const key = this.key(parentClass, tokens, offset);
    let contentClass = 0;
    let sameKey = 0;
    let slot = key & this.slotMask;
    for (; ; slot = (slot + 1) & this.slotMask) {
      const other = this.slots[slot]!;
      if (other < 0) break;
      if (this.keyOf[other] !== key) continue;
      sameKey++;
      if (contentClass === 0 && this.parentClassOf[other] === parentClass && this.holds(other, tokens, offset)) contentClass = this.classOf[other]!;
    }
    if (contentClass === 0) contentClass = this.nextClass++;
    if (sameKey >= MAX_BLOCKS_PER_KEY) return contentClass;
    // At the end of its probe run: a lookup meets the longest-cached copy of identical content first.
    this.slots[slot] = block;
    this.classOf[block] = contentClass;
    this.parentClassOf[block] = parentClass;
    this.keyOf[block] = key;
    const base = block * this.blockSize;
    for (let i = 0; i < this.blockSize; i++) this.tokensOf[base + i] = tokens[offset + i]!;
    this.numCachedBlocks++;
    return contentClass;
  }

  /** Forgets a cached block's content (it is about to be reused, or the cache is being dropped). */
  evict(block: number): void {
    const mask = this.slotMask;
    let hole = this.keyOf[block]! & mask;
    while (this.slots[hole] !== block) hole = (hole + 1) & mask;
    // Backward-shift deletion: move later entries of the probe run into the hole when their home
    // slot allows, so runs stay unbroken without tombstones.
    for (let slot = (hole + 1) & mask; ; slot = (slot + 1) & mask) {
      const other = this.slots[slot]!;
      if (other < 0) break;
      const home = this.keyOf[other]! & mask;
      if (((slot - home) & mask) >= ((slot - hole) & mask)) {
        this.slots[hole] = other;
        hole = slot;
      }
    }
    this.slots[hole] = -1;
    this.classOf[block] = 0;
    this.numCachedBlocks--;
  }

  cachedBlockIds(): number[] {
    const out: number[] = [];
    for (let block = 0; block < this.classOf.length; block++) if (this.classOf[block] !== 0) out.push(block);
    return out;
  }

  /** Copies a cached block's token ids to `destination[offset …]`. */
  copyTokens(block: number, destination: Int32Array, offset: number): void {
    destination.set(this.tokensOf.subarray(block * this.blockSize, (block + 1) * this.blockSize), offset);
  }

  private holds(block: number, tokens: ArrayLike<number>, offset: number): boolean {
    const base = block * this.blockSize;
    for (let i = 0; i < this.blockSize; i++) if (this.tokensOf[base + i] !== tokens[offset + i]) return false;
    return true;
  }

  /** A 30-bit non-negative integer. */
  private key(parentClass: number, tokens: ArrayLike<number>, offset: number): number {
    let h = mixWord(this.seed, parentClass | 0);
    h = mixWord(h, Math.floor(parentClass / TWO_POW_32) | 0);
    for (let i = 0; i < this.blockSize; i++) h = mixWord(h, tokens[offset + i]!);
    return finishHash(h ^ this.blockSize) >>> 2;
  }
}

// ---- block pool -----------------------------------------------------------------------------

/**
 * One pool of blocks (device or host): ref counts, the free queue and, on
 * the device, the prefix cache. Invariant: a block other than the null block
 * is in the free queue iff its ref count is 0.
 */
class BlockPool {
  /** [numBlocks] sequences referencing each block (0 for the null block, which nobody counts). */
  readonly refCounts: Int32Array;
  readonly freeQueue: FreeBlockQueue;
  readonly cache: PrefixCache | null;
  /** Cached blocks with ref count 0. */
  numEvictableBlocks = 0;

  constructor(numBlocks: number, cache: PrefixCache | null) {
    this.refCounts = new Int32Array(numBlocks);
    const usable: number[] = [];
    for (let block = 1; block < numBlocks; block++) usable.push(block);
    this.freeQueue = new FreeBlockQueue(numBlocks, usable);
    this.cache = cache;
  }

  get numFree(): number {
    return this.freeQueue.length;
  }

  /** Pops the front block (evicting its cached content); the caller has checked numFree. */
  allocate(): number {
    const block = this.freeQueue.popFront();
    if (this.cache !== null && this.cache.isCached(block)) {
      this.cache.evict(block);
      this.numEvictableBlocks--;
    }
    this.refCounts[block] = 1;
    return block;
  }

  /** One more reference to a block that may be free (a prefix-cache hit on an evictable block). */
  touch(block: number): void {
    if (this.refCounts[block] === 0) {
      this.freeQueue.remove(block);
      if (this.cache !== null && this.cache.isCached(block)) this.numEvictableBlocks--;
    }
    this.refCounts[block]!++;
  }

  /** One reference fewer; at 0 the block goes to the back of the free queue (true). */
  release(block: number): boolean {
    if (--this.refCounts[block]! !== 0) return false;
    this.freeQueue.pushBack(block);
    if (this.cache !== null && this.cache.isCached(block)) this.numEvictableBlocks++;
    return true;
  }

  /** Evicts up to `maxBlocks` unreferenced cached blocks, front (least recently freed) first; they stay free. */
  evictUnreferenced(maxBlocks: number): number {
    const cache = this.cache!;
    let evicted = 0;
    for (let block = this.freeQueue.front(); block !== -1 && evicted < maxBlocks; block = this.freeQueue.after(block)) {
      if (!cache.isCached(block)) continue;
      cache.evict(block);
      this.numEvictableBlocks--;
      evicted++;
    }
    return evicted;
  }
}

// ---- sequences ------------------------------------------------------------------------------

interface SequenceState {
  location: SequenceLocation;
  /** Block ids in the pool of `location`, in logical order; NULL_BLOCK for released entries. */
  blockTable: number[];
  /** Committed tokens (lookahead slots excluded). */
  numTokens: number;
  /** Leading table entries released by the sliding window (all NULL_BLOCK). */
  numReleasedBlocks: number;
  /**
   * [blockSize] ids of the tokens in the trailing partial block, while every
   * token came with its id and prefix caching is on; null otherwise (the
   * sequence's blocks are not cached). Full blocks keep their ids with the
   * block: the prefix cache on the device, `hostTokens` on the host.
   */
  partialTokens: Int32Array | null;
  /** Content class of each full block (length floor(numTokens / blockSize) while `partialTokens` is kept). */
  blockClasses: number[];
  /** Root class: the tenant salt. */
  rootClass: number;
}

/** A new sequence's first allocation, worked out before anything changes. */
interface AdmissionPlan {
  /** Cached blocks for the leading full blocks, up to the first miss, and their classes. */
  hits: number[];
  hitClasses: number[];
  /** Leading hits wholly outside the sliding window of the first computed token: not taken (NULL_BLOCK). */
  numSkipped: number;
  numFresh: number;
  /** Free blocks the allocation consumes: fresh blocks plus hits on evictable blocks. */
  numRequired: number;
  /** Real blocks the table will hold. */
  numTableBlocks: number;
  lookedUp: boolean;
}

// ---- the manager ----------------------------------------------------------------------------

/**
 * Paged KV-cache bookkeeping for many sequences (see the module comment for
 * the semantics). Failure to fit returns `null` and changes nothing; only
 * caller bugs (unknown sequences, bad counts) throw {@link InvalidArgumentError}.
 *
 * @example
 * const blocks = new BlockManager({ numBlocks: 4096, blockSize: 16, numHostBlocks: 1024 });
 * const a = blocks.allocateSlots(7, prompt.length, { tokenIds: prompt });
 * if (a === null) { ... queue the request: no room now ... }
 * const table = blocks.blockTable(7, maxBlocksPerSeq); // int32 [maxBlocksPerSeq], padded with NULL_BLOCK
 * const pairs = blocks.swapOut(7);                       // [[device, host], ...] for swap_blocks, or null
 */
export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly numHostBlocks: number;
  readonly watermarkBlocks: number;
  readonly enablePrefixCaching: boolean;
  readonly slidingWindow: number | undefined;

  private readonly device: BlockPool;
  private readonly host: BlockPool;
  /** The device pool's prefix cache; null when prefix caching is off. */
  private readonly cache: PrefixCache | null;
  private readonly sequences = new Map<SequenceId, SequenceState>();
  /**
   * Swap links, so blocks shared by forked sequences are swapped once: [numBlocks] the host block
   * holding a copy of a device block, and [numHostBlocks] the reverse; −1 when none. A link is
   * made by a swap copy and broken when either block is freed or the device block is written.
   */
  private readonly hostCopyOf: Int32Array;
  private readonly deviceCopyOf: Int32Array;
  /** [numHostBlocks, blockSize] token ids of host blocks copied from cached device blocks (to look them up on swap-in). */
  private readonly hostTokens: Int32Array;
  /** [numHostBlocks] whether `hostTokens` holds a host block's ids. */
  private readonly hostTokensKnown: Uint8Array;
  private prefixRequests = 0;
  private prefixQueries = 0;
  private prefixHits = 0;

  constructor(options: BlockManagerOptions) {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('new BlockManager expects an options object');
    const { numBlocks, blockSize = 16, numHostBlocks = 0, watermark = 0.01, enablePrefixCaching = true, slidingWindow } = options;
    if (!isNonNegativeInteger(numBlocks) || numBlocks < 2) {
      throw new InvalidArgumentError(`Invalid numBlocks: expected an integer of at least 2 (block 0 is the reserved null block), got ${describe(numBlocks)}`);
    }
    if (!isNonNegativeInteger(blockSize) || blockSize === 0 || (blockSize & (blockSize - 1)) !== 0 || blockSize > 2 ** 30) {
      throw new InvalidArgumentError(`Invalid blockSize: expected a power of two (the attention kernels support 8, 16 and 32), got ${describe(blockSize)}`);
    }
    if (numBlocks * blockSize > MAX_SLOTS) {
      throw new InvalidArgumentError(
        `Invalid numBlocks: numBlocks × blockSize must be at most ${MAX_SLOTS} (slot ids are int32), got ${numBlocks} × ${blockSize}`,
      );
    }
    if (!isNonNegativeInteger(numHostBlocks) || numHostBlocks * blockSize > MAX_SLOTS) {
      throw new InvalidArgumentError(`Invalid numHostBlocks: expected a non-negative integer (with numHostBlocks × blockSize ≤ ${MAX_SLOTS}), got ${describe(numHostBlocks)}`);
    }
    if (typeof watermark !== 'number' || !(watermark >= 0 && watermark < 1)) {
      throw new InvalidArgumentError(`Invalid watermark: expected a fraction in [0, 1), got ${describe(watermark)}`);
    }
    if (typeof enablePrefixCaching !== 'boolean') {
      throw new InvalidArgumentError(`Invalid enablePrefixCaching: expected a boolean, got ${describe(enablePrefixCaching)}`);
    }
    if (slidingWindow !== undefined && (!isNonNegativeInteger(slidingWindow) || slidingWindow === 0)) {
      throw new InvalidArgumentError(`Invalid slidingWindow: expected a positive integer number of tokens, got ${describe(slidingWindow)}`);
    }
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.numHostBlocks = numHostBlocks;
    this.watermarkBlocks = Math.floor(watermark * numBlocks);
    this.enablePrefixCaching = enablePrefixCaching;
    this.slidingWindow = slidingWindow;
    this.cache = enablePrefixCaching ? new PrefixCache(numBlocks, blockSize) : null;
    this.device = new BlockPool(numBlocks, this.cache);
    this.host = new BlockPool(Math.max(numHostBlocks, 1), null);
    this.hostCopyOf = new Int32Array(numHostBlocks > 1 ? numBlocks : 0).fill(-1);
    this.deviceCopyOf = new Int32Array(numHostBlocks > 1 ? numHostBlocks : 0).fill(-1);
    const hostCaching = numHostBlocks > 1 && enablePrefixCaching;
    this.hostTokens = new Int32Array(hostCaching ? numHostBlocks * blockSize : 0);
    this.hostTokensKnown = new Uint8Array(hostCaching ? numHostBlocks : 0);
  }

  // ---- allocation ----

  /**
   * Makes room for `numNewTokens` more tokens of `seq` (plus `lookahead`
   * reserved positions) and returns where to write them, or `null` when the
   * blocks do not fit (nothing changes then). A sequence this manager does
   * not know is admitted: its prompt is looked up in the prefix cache, and
   * the admission must leave `watermarkBlocks` free. Blocks about to be
   * written that another sequence shares are copied first (`copies`).
   * Blocks that fill with tokens of this call are cached at once: write their
   * KV in the same (stream-ordered) step.
   *
   * @example
   * const r = blocks.allocateSlots('a', 100, { tokenIds: prompt });
   * if (r) { copyBlocks(r.copies); writeKv(keys.slice(r.numCachedTokens), r.slotMapping); }
   */
  allocateSlots(seq: SequenceId, numNewTokens: number, options?: AllocateSlotsOptions): SlotAllocation | null {
    const state = this.sequences.get(seq);
    if (state === undefined) checkSequenceId(seq);
    if (typeof numNewTokens !== 'number' || !Number.isSafeInteger(numNewTokens) || numNewTokens <= 0) {
      throw new InvalidArgumentError(`Invalid numNewTokens: expected a positive integer, got ${describe(numNewTokens)}`);
    }
    let lookahead = 0;
    let tokenIds: ArrayLike<number> | undefined;
    let salt: string | undefined;
    if (options !== undefined) {
      if (options === null || typeof options !== 'object') throw new InvalidArgumentError(`Invalid options: expected an object, got ${describe(options)}`);
      if (options.lookahead !== undefined) {
        lookahead = options.lookahead;
        if (!isNonNegativeInteger(lookahead)) throw new InvalidArgumentError(`Invalid lookahead: expected a non-negative integer, got ${describe(lookahead)}`);
      }
      tokenIds = options.tokenIds;
      if (tokenIds !== undefined) checkTokenIds(tokenIds, numNewTokens);
      salt = options.salt;
      if (salt !== undefined && typeof salt !== 'string') throw new InvalidArgumentError(`Invalid salt: expected a string, got ${describe(salt)}`);
    }
    if (state === undefined) return this.admit(seq, numNewTokens, lookahead, tokenIds, salt);
    if (state.location !== 'device') {
      throw new InvalidArgumentError(`Cannot allocate slots: ${describeSequence(seq)} is swapped out (call swapIn first)`);
    }
    return this.append(state, numNewTokens, lookahead, tokenIds);
  }

  /**
   * Whether a new sequence of `numTokens` prompt tokens would be admitted now
   * (`'ok'`), may be later (`'later'`), or can never fit with the watermark
   * kept free (`'never'`: reject the request instead of queueing it).
   * Takes prefix-cache hits into account; changes nothing.
   *
   * @example
   * if (blocks.canAllocate(prompt.length, { tokenIds: prompt }) === 'never') reject('prompt too long');
   */
  canAllocate(numTokens: number, options?: AllocateSlotsOptions): AllocationStatus {
    if (!isNonNegativeInteger(numTokens) || numTokens === 0) {
      throw new InvalidArgumentError(`Invalid numTokens: expected a positive integer, got ${describe(numTokens)}`);
    }
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw new InvalidArgumentError(`Invalid options: expected an object, got ${describe(options)}`);
    }
    const lookahead = options?.lookahead ?? 0;
    if (!isNonNegativeInteger(lookahead)) throw new InvalidArgumentError(`Invalid lookahead: expected a non-negative integer, got ${describe(lookahead)}`);
    if (options?.tokenIds !== undefined) checkTokenIds(options.tokenIds, numTokens);
    if (options?.salt !== undefined && typeof options.salt !== 'string') {
      throw new InvalidArgumentError(`Invalid salt: expected a string, got ${describe(options.salt)}`);
    }
    return this.admissionStatus(this.planAdmission(numTokens, lookahead, options?.tokenIds, options?.salt));
  }

  // ---- sequences ----

  /**
   * `child` shares every block of `parent` (ref counts +1; nothing is
   * allocated, so it cannot fail for lack of space). The first write into a
   * shared block copies it (see `copies` of {@link allocateSlots}).
   *
   * @example
   * blocks.fork('req', 'req#1'); // n = 2 samples from one prompt
   */
  fork(parent: SequenceId, child: SequenceId): void {
    const source = this.get(parent);
    checkSequenceId(child);
    if (this.sequences.has(child)) throw new InvalidArgumentError(`Cannot fork: ${describeSequence(child)} already exists`);
    const pool = source.location === 'device' ? this.device : this.host;
    for (const block of source.blockTable) if (block !== NULL_BLOCK) pool.refCounts[block]!++;
    this.sequences.set(child, {
      location: source.location,
      blockTable: source.blockTable.slice(),
      numTokens: source.numTokens,
      numReleasedBlocks: source.numReleasedBlocks,
      partialTokens: source.partialTokens === null ? null : source.partialTokens.slice(),
      blockClasses: source.blockClasses.slice(),
      rootClass: source.rootClass,
    });
  }

  /**
   * Forgets `seq` and releases its blocks, tail first (so among blocks freed
   * together the chain's tail is evicted first). Cached blocks stay reusable
   * until evicted.
   *
   * @example
   * blocks.free('req'); // finished, aborted or preempted by recompute
   */
  free(seq: SequenceId): void {
    const state = this.get(seq);
    if (state.location === 'device') {
      for (let i = state.blockTable.length - 1; i >= 0; i--) {
        const block = state.blockTable[i]!;
        if (block !== NULL_BLOCK) this.releaseDeviceBlock(block);
      }
    } else {
      for (let i = state.blockTable.length - 1; i >= 0; i--) {
        const block = state.blockTable[i]!;
        if (block !== NULL_BLOCK) this.releaseHostBlock(block);
      }
    }
    this.sequences.delete(seq);
  }

  // ---- swapping ----

  /**
   * Moves `seq`'s blocks to the host pool. Returns the `[device, host]`
   * pairs the caller copies with `swap_blocks` (device to host), or `null`
   * when the host pool lacks room (nothing changes). A block already copied
   * by the swap-out of a sequence that shares it (a fork) is not copied
   * again: the two share the host block, as they shared the device block.
   *
   * @example
   * const pairs = blocks.swapOut('req');
   * if (pairs) swapBlocks(deviceKv, hostKv, pairs); else blocks.free('req'); // recompute later
   */
  swapOut(seq: SequenceId): BlockCopy[] | null {
    const state = this.get(seq);
    if (state.location !== 'device') throw new InvalidArgumentError(`Cannot swap out: ${describeSequence(seq)} is already swapped out`);
    const table = state.blockTable;
    let numFresh = 0;
    for (const block of table) if (block !== NULL_BLOCK && !(this.hostCopyOf[block]! >= 0)) numFresh++;
    if (numFresh > this.host.numFree) return null;
    const pairs: BlockCopy[] = [];
    const deviceTable = table.slice();
    for (let i = 0; i < table.length; i++) {
      const block = table[i]!;
      if (block === NULL_BLOCK) continue;
      let hostBlock = this.hostCopyOf[block] ?? -1; // the links are empty without a host pool
      if (hostBlock >= 0) {
        this.host.touch(hostBlock);
      } else {
        hostBlock = this.host.allocate();
        pairs.push([block, hostBlock]);
        this.hostCopyOf[block] = hostBlock;
        this.deviceCopyOf[hostBlock] = block;
        if (this.cache !== null) {
          const known = this.cache.isCached(block);
          if (known) this.cache.copyTokens(block, this.hostTokens, hostBlock * this.blockSize);
          this.hostTokensKnown[hostBlock] = known ? 1 : 0;
        }
      }
      table[i] = hostBlock;
    }
    // Tail first, as in free(): the chain's tail is evicted before its head.
    for (let i = deviceTable.length - 1; i >= 0; i--) if (deviceTable[i] !== NULL_BLOCK) this.releaseDeviceBlock(deviceTable[i]!);
    state.location = 'host';
    return pairs;
  }

  /**
   * Moves `seq`'s blocks back to the device. Returns the `[host, device]`
   * pairs to copy (host to device), or `null` when the device lacks room with
   * the watermark kept free (swapping in admits a sequence). A block that a
   * fork still holds on the device, or whose content is still in the prefix
   * cache, is shared instead of copied.
   *
   * @example
   * const pairs = blocks.swapIn('req');
   * if (pairs) swapBlocks(hostKv, deviceKv, pairs);
   */
  swapIn(seq: SequenceId): BlockCopy[] | null {
    const state = this.get(seq);
    if (state.location !== 'host') throw new InvalidArgumentError(`Cannot swap in: ${describeSequence(seq)} is not swapped out`);
    const table = state.blockTable;
    const { blockClasses } = state;
    const cache = this.cache;
    const hostTokens = this.hostTokens;
    const blockSize = this.blockSize;
    // Per entry: the device block to share (a swap link or a cache hit), or −1 for a fresh copy;
    // and the content class of each full block on the device (NaN: decided when registered).
    const shared = new Int32Array(table.length).fill(-1);
    const classes = blockClasses.slice();
    let numRequired = 0;
    let parentClass = state.rootClass;
    let chainFound = cache !== null && state.partialTokens !== null; // look blocks up while the chain so far is cached
    for (let i = 0; i < table.length; i++) {
      const hostBlock = table[i]!;
      const full = i < blockClasses.length;
      if (hostBlock === NULL_BLOCK) {
        if (full) parentClass = classes[i]!;
        continue;
      }
      const linked = this.deviceCopyOf[hostBlock] ?? -1;
      if (linked >= 0) {
        shared[i] = linked;
        if (full && cache!.isCached(linked)) classes[i] = cache!.classOfBlock(linked);
      } else if (
        chainFound &&
        full &&
        this.hostTokensKnown[hostBlock] === 1 &&
        (shared[i] = cache!.find(parentClass, hostTokens, hostBlock * blockSize, this.device.refCounts)) >= 0
      ) {
        classes[i] = cache!.classOfBlock(shared[i]!);
        if (this.device.refCounts[shared[i]!] === 0) numRequired++;
      } else {
        numRequired++;
        chainFound = false;
        if (full) classes[i] = NaN;
      }
      if (full) parentClass = classes[i]!;
    }
    if (this.device.numFree - numRequired < this.watermarkBlocks) return null;
    // Take shared blocks first, so that fresh allocations cannot evict a hit.
    for (let i = 0; i < table.length; i++) if (shared[i]! >= 0) this.device.touch(shared[i]!);
    const pairs: BlockCopy[] = [];
    const hostTable = table.slice();
    parentClass = state.rootClass;
    for (let i = 0; i < table.length; i++) {
      const hostBlock = table[i]!;
      const full = i < classes.length;
      if (hostBlock !== NULL_BLOCK) {
        let block = shared[i]!;
        if (block < 0) {
          block = this.device.allocate();
          pairs.push([hostBlock, block]);
          this.hostCopyOf[block] = hostBlock;
          this.deviceCopyOf[hostBlock] = block;
          if (full && cache !== null && this.hostTokensKnown[hostBlock] === 1) {
            classes[i] = cache.register(block, parentClass, hostTokens, hostBlock * blockSize);
          } else if (full && Number.isNaN(classes[i])) {
            classes[i] = blockClasses[i]!; // ids unknown: not cached, keep the class it had
          }
        }
        table[i] = block;
      }
      if (full) parentClass = classes[i]!;
    }
    state.blockClasses = classes;
    for (let i = hostTable.length - 1; i >= 0; i--) if (hostTable[i] !== NULL_BLOCK) this.releaseHostBlock(hostTable[i]!);
    state.location = 'device';
    return pairs;
  }

  // ---- the prefix cache ----

  /**
   * Drops the cached content of up to `maxBlocks` unreferenced blocks, least
   * recently freed first (they stay free); referenced blocks keep theirs.
   * Returns how many were evicted. Allocation evicts on its own; this is for
   * invalidating the cache (e.g. new weights) or for tests.
   *
   * @example
   * blocks.evictCachedBlocks(); // all of them
   */
  evictCachedBlocks(maxBlocks = Infinity): number {
    if (maxBlocks !== Infinity && !isNonNegativeInteger(maxBlocks)) {
      throw new InvalidArgumentError(`Invalid maxBlocks: expected a non-negative integer, got ${describe(maxBlocks)}`);
    }
    return this.cache === null ? 0 : this.device.evictUnreferenced(maxBlocks);
  }

  // ---- queries ----

  /**
   * `seq`'s device block table: int32 `[max(numBlocksOfSeq, paddedLength)]`,
   * padded (and with released out-of-window entries) as NULL_BLOCK.
   *
   * @example
   * blockTables.set(blocks.blockTable(seq, maxBlocksPerSeq), row * maxBlocksPerSeq);
   */
  blockTable(seq: SequenceId, paddedLength = 0): Int32Array {
    const state = this.get(seq);
    if (state.location !== 'device') throw new InvalidArgumentError(`No device block table: ${describeSequence(seq)} is swapped out (call swapIn first)`);
    const length = state.blockTable.length;
    if (paddedLength !== 0 && (!isNonNegativeInteger(paddedLength) || paddedLength < length)) {
      throw new InvalidArgumentError(`Invalid paddedLength: expected an integer of at least ${length} (the table's length), got ${describe(paddedLength)}`);
    }
    const table = new Int32Array(Math.max(length, paddedLength));
    for (let i = 0; i < length; i++) table[i] = state.blockTable[i]!;
    return table;
  }

  /** Committed tokens of `seq` (lookahead excluded). */
  numTokens(seq: SequenceId): number {
    return this.get(seq).numTokens;
  }

  /** Whether `seq` is known (allocated and not freed). */
  has(seq: SequenceId): boolean {
    return this.sequences.has(seq);
  }

  location(seq: SequenceId): SequenceLocation {
    return this.get(seq).location;
  }

  /**
   * Block and prefix-cache counts, O(1).
   *
   * @example
   * const { usage, prefixCache } = blocks.stats(); // e.g. 0.73, { hitRate: 0.41, ... }
   */
  stats(): BlockManagerStats {
    const totalBlocks = this.numBlocks - 1;
    const freeBlocks = this.device.numFree;
    const hostTotal = Math.max(this.numHostBlocks - 1, 0);
    return {
      totalBlocks,
      freeBlocks,
      usedBlocks: totalBlocks - freeBlocks,
      cachedBlocks: this.cache === null ? 0 : this.cache.numCachedBlocks,
      evictableBlocks: this.device.numEvictableBlocks,
      usage: (totalBlocks - freeBlocks) / totalBlocks,
      watermarkBlocks: this.watermarkBlocks,
      host: { totalBlocks: hostTotal, freeBlocks: this.host.numFree, usedBlocks: hostTotal - this.host.numFree },
      prefixCache: {
        requests: this.prefixRequests,
        queries: this.prefixQueries,
        hits: this.prefixHits,
        hitRate: this.prefixQueries === 0 ? 0 : this.prefixHits / this.prefixQueries,
      },
      sequences: this.sequences.size,
    };
  }

  /** A copy of the whole state (tests, debugging). */
  snapshot(): BlockManagerSnapshot {
    return {
      device: {
        refCounts: this.device.refCounts.slice(),
        freeQueue: this.device.freeQueue.toArray(),
        cachedBlocks: this.cache === null ? [] : this.cache.cachedBlockIds(),
      },
      host: { refCounts: this.host.refCounts.slice(), freeQueue: this.host.freeQueue.toArray() },
      sequences: [...this.sequences].map(([id, state]) => ({
        id,
        location: state.location,
        numTokens: state.numTokens,
        blockTable: Int32Array.from(state.blockTable),
      })),
    };
  }

  // ---- internals ----

  private get(seq: SequenceId): SequenceState {
    const state = this.sequences.get(seq);
    if (state !== undefined) return state;
    checkSequenceId(seq);
    throw new InvalidArgumentError(`Unknown ${describeSequence(seq)}`);
  }

  private releaseDeviceBlock(block: number): void {
    if (this.device.release(block) && this.hostCopyOf.length > 0) this.unlinkDeviceBlock(block);
  }

  private releaseHostBlock(hostBlock: number): void {
    if (!this.host.release(hostBlock)) return;
    const block = this.deviceCopyOf[hostBlock]!;
    if (block >= 0) {
      this.hostCopyOf[block] = -1;
      this.deviceCopyOf[hostBlock] = -1;
    }
  }

  /** The device block is freed or about to be written: its host copy no longer matches it. */
  private unlinkDeviceBlock(block: number): void {
    const hostBlock = this.hostCopyOf[block]!;
    if (hostBlock < 0) return;
    this.hostCopyOf[block] = -1;
    this.deviceCopyOf[hostBlock] = -1;
  }

  private planAdmission(numTokens: number, lookahead: number, tokenIds: ArrayLike<number> | undefined, salt: string | undefined): AdmissionPlan {
    const blockSize = this.blockSize;
    const hits: number[] = [];
    const hitClasses: number[] = [];
    const lookedUp = this.cache !== null && tokenIds !== undefined;
    if (lookedUp) {
      const cache = this.cache!;
      let parentClass = cache.rootClass(salt, false);
      // The last prompt token is always computed (its logits are needed).
      const maxHits = Math.floor((numTokens - 1) / blockSize);
      for (let i = 0; i < maxHits; i++) {
        const block = cache.find(parentClass, tokenIds, i * blockSize, this.device.refCounts);
        if (block < 0) break;
        hits.push(block);
        hitClasses.push((parentClass = cache.classOfBlock(block)));
      }
    }
    const numCached = hits.length * blockSize;
    const window = this.slidingWindow;
    const numSkipped = window === undefined ? 0 : Math.max(0, Math.floor((numCached - window + 1) / blockSize));
    const numBlocks = Math.ceil((numTokens + lookahead) / blockSize);
    const numFresh = numBlocks - hits.length;
    let numRequired = numFresh;
    for (let i = numSkipped; i < hits.length; i++) if (this.device.refCounts[hits[i]!] === 0) numRequired++;
    return { hits, hitClasses, numSkipped, numFresh, numRequired, numTableBlocks: numBlocks - numSkipped, lookedUp };
  }

  private admissionStatus(plan: AdmissionPlan): AllocationStatus {
    if (this.numBlocks - 1 - plan.numTableBlocks < this.watermarkBlocks) return 'never';
    return this.device.numFree - plan.numRequired >= this.watermarkBlocks ? 'ok' : 'later';
  }

  private admit(
    seq: SequenceId,
    numTokens: number,
    lookahead: number,
    tokenIds: ArrayLike<number> | undefined,
    salt: string | undefined,
  ): SlotAllocation | null {
    const plan = this.planAdmission(numTokens, lookahead, tokenIds, salt);
    if (this.admissionStatus(plan) !== 'ok') return null;
    const { hits, numSkipped } = plan;
    const blockSize = this.blockSize;
    const blockTable: number[] = [];
    for (let i = 0; i < numSkipped; i++) blockTable.push(NULL_BLOCK);
    for (let i = numSkipped; i < hits.length; i++) {
      this.device.touch(hits[i]!);
      blockTable.push(hits[i]!);
    }
    const newBlocks: number[] = [];
    for (let i = 0; i < plan.numFresh; i++) {
      const block = this.device.allocate();
      blockTable.push(block);
      newBlocks.push(block);
    }
    const numCachedTokens = hits.length * blockSize;
    let partialTokens: Int32Array | null = null;
    const blockClasses = plan.hitClasses;
    let rootClass = -1;
    if (plan.lookedUp) {
      const cache = this.cache!;
      rootClass = cache.rootClass(salt, true);
      // The prompt's full blocks past the hits hold its tokens now: cache them.
      const numFull = Math.floor(numTokens / blockSize);
      for (let i = hits.length; i < numFull; i++) {
        blockClasses.push(cache.register(blockTable[i]!, i === 0 ? rootClass : blockClasses[i - 1]!, tokenIds!, i * blockSize));
      }
      partialTokens = new Int32Array(blockSize);
      for (let p = numFull * blockSize; p < numTokens; p++) partialTokens[p - numFull * blockSize] = tokenIds![p]!;
      this.prefixRequests++;
      this.prefixQueries += numTokens;
      this.prefixHits += numCachedTokens;
    }
    this.sequences.set(seq, {
      location: 'device',
      blockTable,
      numTokens,
      numReleasedBlocks: numSkipped,
      partialTokens,
      blockClasses,
      rootClass,
    });
    return {
      slotMapping: this.slotMapping(blockTable, numCachedTokens, numTokens + lookahead),
      firstPosition: numCachedTokens,
      copies: NONE,
      newBlocks,
      numCachedTokens,
    };
  }

  private append(state: SequenceState, numNewTokens: number, lookahead: number, tokenIds: ArrayLike<number> | undefined): SlotAllocation | null {
    const blockSize = this.blockSize;
    const device = this.device;
    const refCounts = device.refCounts;
    const table = state.blockTable;
    const start = state.numTokens;
    const end = start + numNewTokens + lookahead; // positions [start, end) become writable

    // Sliding window: blocks wholly before the window of the first new token are no longer read.
    let releaseEnd = state.numReleasedBlocks;
    let numFreedByRelease = 0;
    if (this.slidingWindow !== undefined) {
      releaseEnd = Math.max(releaseEnd, Math.floor((start - this.slidingWindow + 1) / blockSize));
      for (let i = state.numReleasedBlocks; i < releaseEnd; i++) {
        const block = table[i]!;
        if (block !== NULL_BLOCK && refCounts[block] === 1) numFreedByRelease++;
      }
    }

    // A fresh block for each position block past the table, and for each shared block to be written.
    const firstBlock = Math.floor(start / blockSize);
    const endBlock = Math.ceil(end / blockSize);
    let numFresh = 0;
    for (let i = firstBlock; i < endBlock; i++) if (i >= table.length || refCounts[table[i]!]! > 1) numFresh++;
    if (numFresh > device.numFree + numFreedByRelease) return null;

    for (let i = state.numReleasedBlocks; i < releaseEnd; i++) {
      const block = table[i]!;
      if (block === NULL_BLOCK) continue;
      table[i] = NULL_BLOCK;
      this.releaseDeviceBlock(block);
    }
    state.numReleasedBlocks = releaseEnd;

    let copies: BlockCopy[] | undefined;
    let newBlocks: number[] | undefined;
    for (let i = firstBlock; i < endBlock; i++) {
      if (i >= table.length) {
        const block = device.allocate();
        table.push(block);
        (newBlocks ??= []).push(block);
        continue;
      }
      const block = table[i]!;
      if (refCounts[block]! > 1) {
        // Copy-on-write. A shared block past the committed tokens (reserved lookahead) holds nothing to copy.
        const copy = device.allocate();
        if (i * blockSize < start) (copies ??= []).push([block, copy]);
        refCounts[block]!--;
        table[i] = copy;
        (newBlocks ??= []).push(copy);
      } else if (this.hostCopyOf.length > 0) {
        // Written in place: its host copy goes stale. (Else a later swap-out of this sequence would
        // reuse that copy and lose the tokens written now.)
        this.unlinkDeviceBlock(block);
      }
    }

    const partial = state.partialTokens;
    if (partial !== null) {
      if (tokenIds === undefined) {
        state.partialTokens = null; // contents unknown from here on: never cached again
        state.blockClasses = [];
      } else {
        for (let j = 0; j < numNewTokens; j++) {
          const position = start + j;
          const offset = position % blockSize;
          partial[offset] = tokenIds[j]!;
          if (offset !== blockSize - 1) continue;
          const index = (position + 1) / blockSize - 1; // this block just filled
          const parentClass = index === 0 ? state.rootClass : state.blockClasses[index - 1]!;
          state.blockClasses.push(this.cache!.register(table[index]!, parentClass, partial, 0));
        }
      }
    }
    state.numTokens = start + numNewTokens;
    return {
      slotMapping: this.slotMapping(table, start, end),
      firstPosition: start,
      copies: copies ?? NONE,
      newBlocks: newBlocks ?? NONE,
      numCachedTokens: 0,
    };
  }

  /** int32 [end − start]: the slot of each position in [start, end). */
  private slotMapping(table: readonly number[], start: number, end: number): Int32Array {
    const blockSize = this.blockSize;
    const slots = new Int32Array(end - start);
    let position = start;
    while (position < end) {
      const index = Math.floor(position / blockSize);
      const base = table[index]! * blockSize - index * blockSize; // slot = base + position within this block
      const blockEnd = Math.min(end, (index + 1) * blockSize);
      for (; position < blockEnd; position++) slots[position - start] = base + position;
    }
    return slots;
  }
}
