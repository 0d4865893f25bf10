// Memory resources from TypeScript: creation and validation, tensors tagged by
// category, reports, trim, the [MemUsageChange] logger, and OOM ledgers.
import {
  createMemoryResource,
  defaultMemoryResource,
  devices,
  memoryReport,
  MEMORY_CATEGORIES,
  OutOfMemoryError,
  Tensor,
  type MemoryReport,
} from '../../lib';

const MiB = 2 ** 20;

describe('createMemoryResource', () => {
  test.each(['host', 'pinned-host', 'pool'] as const)('%s on the cpu accounts by category', (kind) => {
    const memory = createMemoryResource({ kind, device: 'cpu' });
    expect(memory.device).toBe('cpu');
    expect(memory.kind).toMatch(new RegExp(`^tracking\\(${kind === 'pool' ? 'pool\\(host\\)' : kind}\\)$`));
    const w = Tensor.zeros([1024, 256], { memory, category: 'weights' });
    const a = Tensor.empty([3, 1000], { memory, category: 'activations', dtype: 'float16' });
    const report = memory.report();
    expect(report.categories!.weights.current).toBe(1024 * 256 * 4);
    expect(report.categories!.activations.current).toBe(6000);
    expect(report.categories!['kv-cache'].current).toBe(0);
    expect(report.total!.current).toBe(1024 * 256 * 4 + 6000);
    expect(report.total!.count).toBe(2);
    w.dispose();
    a.dispose();
    const after = memory.report();
    expect(after.total!.current).toBe(0);
    expect(after.categories!.weights.peak).toBe(1024 * 256 * 4);
    expect(after.categories!.weights.totalCount).toBe(1);
  });

  test('bad options are rejected with exact messages', () => {
    const bad = (options: unknown, message: string): void =>
      expect(() => createMemoryResource(options as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message }));
    bad({ kind: 'slab' }, 'Invalid memory resource kind "slab" (supported: cuda, cuda-async, pool, pinned-host, host)');
    bad(null, 'createMemoryResource expects an options object');
    bad({ kind: 'pool', device: 'cpu', maxBytes: -1 }, 'Invalid maxBytes: expected a non-negative integer number of bytes, got -1');
    bad({ kind: 'pool', device: 'cpu', initialBytes: 1.5 }, 'Invalid initialBytes: expected a non-negative integer number of bytes, got 1.5');
    bad({ kind: 'pool', device: 'cpu', upstream: {} }, 'Invalid upstream: expected a MemoryResource');
    bad({ kind: 'pool', device: 'cpu', logger: 'yes' }, 'Invalid logger: expected a function');
    expect(() => createMemoryResource({ kind: 'pool', device: 'cpu', initialBytes: 4 * MiB, maxBytes: MiB })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: 'pool: initial size 4194304 exceeds the maximum 1048576' }),
    );
  });

  test('cuda kinds need a usable GPU', () => {
    const cuda = devices().cuda;
    if (cuda.available) return; // exercised by the GPU run of the native suite
    expect(() => createMemoryResource({ kind: 'cuda' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => createMemoryResource({ kind: 'cuda-async', device: 'cuda:0' })).toThrow(
      expect.objectContaining({ code: 'ERR_UNSUPPORTED', message: `Device cuda:0 cannot be used: ${cuda.reason}` }),
    );
  });

  test('a tensor cannot use memory of another device, nor an unknown category', () => {
    const memory = createMemoryResource({ kind: 'pool', device: 'cpu' });
    expect(() => Tensor.empty([2], { memory: {} as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: 'Invalid options.memory: expected a MemoryResource' }),
    );
    expect(() => Tensor.empty([2], { memory, category: 'scratch' as never })).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_ARGUMENT',
        message: 'Invalid memory category "scratch" (supported: weights, kv-cache, activations, workspace, other)',
      }),
    );
  });
});

describe('pool', () => {
  test('reports reserved, in use, free, largest free extent and fragmentation; trim returns to the baseline', () => {
    const pool = createMemoryResource({ kind: 'pool', device: 'cpu', initialBytes: 4 * MiB });
    const baseline = pool.report().pool!;
    expect(baseline.reserved).toBe(4 * MiB);
    expect(baseline.inUse).toBe(0);
    const tensors = [];
    for (let i = 0; i < 20; i++) tensors.push(Tensor.empty([(i + 1) * 50_000], { memory: pool, category: 'workspace', dtype: 'uint8' }));
    const busy = pool.report().pool!;
    expect(busy.reserved).toBeGreaterThan(baseline.reserved);
    expect(busy.inUse).toBe(tensors.reduce((sum, t) => sum + Math.ceil(t.byteLength / 256) * 256, 0));
    expect(busy.free).toBe(busy.reserved - busy.inUse);
    for (let i = 0; i < tensors.length; i += 2) tensors[i]!.dispose();
    const holes = pool.report().pool!;
    expect(holes.largestFreeExtent).toBeLessThanOrEqual(holes.free);
    expect(holes.fragmentation).toBeCloseTo(1 - holes.largestFreeExtent / holes.free, 12);
    for (let i = 1; i < tensors.length; i += 2) tensors[i]!.dispose();
    pool.trim();
    const after = pool.report();
    expect(after.pool!.reserved).toBe(baseline.reserved);
    expect(after.pool!.inUse).toBe(0);
    expect(after.counts.upstreamFrees).toBeGreaterThan(0);
    expect(after.counts.allocations).toBe(20);
    expect(after.counts.frees).toBe(20);
  });

  test('out of memory is an OutOfMemoryError with a ledger, after one trim-and-retry', () => {
    const pool = createMemoryResource({ kind: 'pool', device: 'cpu', maxBytes: 8 * MiB });
    const w = Tensor.empty([6 * MiB], { memory: pool, category: 'weights', dtype: 'uint8' });
    let error: unknown;
    try {
      Tensor.empty([4 * MiB], { memory: pool, category: 'kv-cache', dtype: 'uint8' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(OutOfMemoryError);
    const e = error as OutOfMemoryError & { requested: number; category: string; ledger: MemoryReport };
    expect(e.code).toBe('ERR_OUT_OF_MEMORY');
    expect(e.requested).toBe(4 * MiB);
    expect(e.category).toBe('kv-cache');
    expect(e.message).toMatch(/^out of memory: cannot allocate 4\.00 MiB \(kv-cache\) on cpu: pool holds 6\.00 MiB \(in use 6\.00 MiB, free 0 B, largest free extent 0 B\) of at most 8\.00 MiB; device free .* of .*; in use: weights 6\.00 MiB, kv-cache 0 B, activations 0 B, workspace 0 B, other 0 B$/);
    expect(e.ledger.categories!.weights.current).toBe(6 * MiB);
    expect(e.ledger.pool!.reserved).toBe(6 * MiB);
    expect(e.ledger.counts.retries).toBe(1);
    expect(e.ledger.counts.ooms).toBe(1);
    expect(e.ledger.deviceMemory.total).toBeGreaterThan(0);
    w.dispose();
    const again = Tensor.empty([4 * MiB], { memory: pool, category: 'kv-cache', dtype: 'uint8' }); // fits now
    again.dispose();
  });

  test('a limit adaptor caps the bytes in use', () => {
    const memory = createMemoryResource({ kind: 'pool', device: 'cpu', limitBytes: MiB });
    expect(memory.report().limit).toBe(MiB);
    const a = Tensor.empty([MiB / 2], { memory, dtype: 'uint8' });
    expect(() => Tensor.empty([MiB], { memory, dtype: 'uint8' })).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_MEMORY', message: expect.stringMatching(/^out of memory: cannot allocate 1\.00 MiB \(other\) on cpu: limit 1\.00 MiB, 512\.00 KiB in use/) }),
    );
    a.dispose();
  });

  test('the logger prints [MemUsageChange] lines when reserved memory changes', () => {
    const lines: string[] = [];
    const pool = createMemoryResource({ kind: 'pool', device: 'cpu', initialBytes: 2 * MiB, logger: (line) => lines.push(line) });
    expect(lines).toEqual(['[MemUsageChange] Allocated 2.00 MiB for tracking(pool(host)) on cpu (initial): reserved 2.00 MiB']);
    const small = Tensor.empty([1000], { memory: pool }); // fits the initial chunk: no line
    expect(lines).toHaveLength(1);
    const big = Tensor.empty([3 * MiB], { memory: pool, dtype: 'uint8', category: 'kv-cache' });
    expect(lines[1]).toBe('[MemUsageChange] Allocated 3.00 MiB for tracking(pool(host)) on cpu (kv-cache tensor): reserved 5.00 MiB, in use 3.00 MiB');
    big.dispose();
    small.dispose();
    pool.trim();
    expect(lines[2]).toBe('[MemUsageChange] Released 3.00 MiB for tracking(pool(host)) on cpu (trim): reserved 2.00 MiB, in use 0 B');
  });
});

describe('the default resource', () => {
  test('tensors allocate from the device default (a pool) and are counted by category', () => {
    const before = memoryReport('cpu');
    expect(before.kind).toBe('tracking(pool(host))');
    expect(defaultMemoryResource('cpu')).toBe(defaultMemoryResource());
    const t = Tensor.zeros([1000], { category: 'activations' });
    const during = memoryReport();
    expect(during.categories!.activations.current - before.categories!.activations.current).toBe(4000);
    t.dispose();
    expect(memoryReport('cpu').categories!.activations.current).toBe(before.categories!.activations.current);
    expect(Object.keys(during.categories!)).toEqual([...MEMORY_CATEGORIES]);
  });
});
