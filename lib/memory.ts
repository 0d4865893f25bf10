/**
 * Memory resources (DESIGN.md §3): where tensors' bytes come from, and an
 * account of every byte by category.
 *
 * Each device has a default resource: our stream-ordered pool over `host`
 * memory (CPU) or `cudaMalloc` (GPU), under an accounting adaptor. Create
 * others with {@link createMemoryResource} and pass them to tensors with
 * `{ memory, category }`.
 *
 * @example
 * const pool = createMemoryResource({ kind: 'pool', device: 'cpu', maxBytes: 1 << 30 });
 * const w = Tensor.zeros([4096, 4096], { memory: pool, category: 'weights' });
 * console.log(pool.report().categories?.weights.current);  // 67108864
 * w.dispose();
 * pool.trim();                                             // idle chunks go back
 */
import { resolveDevice, type Device, type DeviceSpec } from './device';
import { InvalidArgumentError } from './errors';
import { native, type NativeMemoryResourceHandle } from './native';

export type MemoryCategory = 'weights' | 'kv-cache' | 'activations' | 'workspace' | 'other';
export const MEMORY_CATEGORIES: readonly MemoryCategory[] = Object.freeze(['weights', 'kv-cache', 'activations', 'workspace', 'other']);

/**
 * - `cuda`: cudaMalloc / cudaFree.
 * - `cuda-async`: cudaMallocAsync / cudaFreeAsync on a driver pool of its own (`releaseThreshold`).
 * - `pool`: ours, stream-ordered, over `upstream` (default: `host` on the CPU, `cuda` on a GPU).
 * - `pinned-host`: page-locked host memory (pageable, with `pinnedFallback` set, when pinning fails).
 * - `host`: aligned host memory.
 */
export type MemoryResourceKind = 'cuda' | 'cuda-async' | 'pool' | 'pinned-host' | 'host';
const KINDS: readonly MemoryResourceKind[] = ['cuda', 'cuda-async', 'pool', 'pinned-host', 'host'];

export interface MemoryResourceOptions {
  kind: MemoryResourceKind;
  /** Default: `defaultDevice()`; `host`/`pinned-host` are `'cpu'`. */
  device?: DeviceSpec;
  /** pool: reserved at creation, kept by trim(). */
  initialBytes?: number;
  /** pool: the most it holds from its upstream. */
  maxBytes?: number;
  /** cuda-async: bytes the driver pool keeps cached when idle (default 0). */
  releaseThreshold?: number;
  /** Any kind: allocations that would take the bytes in use past this fail with ERR_OUT_OF_MEMORY. */
  limitBytes?: number;
  /** pool: the resource it grows from. */
  upstream?: MemoryResource;
  /** Receives a TensorRT-LLM-style `[MemUsageChange]` line whenever reserved memory changes. */
  logger?: (line: string) => void;
}

export interface UsageCounters {
  /** Bytes currently allocated, and the most ever at once. */
  current: number;
  peak: number;
  /** Bytes allocated over the lifetime. */
  total: number;
  count: number;
  peakCount: number;
  totalCount: number;
}

export interface MemoryReport {
  /** The resource chain, e.g. `tracking(pool(cuda))`. */
  kind: string;
  device: Device;
  /** Per category (every allocation is tagged), and in total. */
  categories: Record<MemoryCategory, UsageCounters> | null;
  total: UsageCounters | null;
  /** Pools (ours and the driver's): what is held from the upstream and how it is used. */
  pool: {
    reserved: number;
    peakReserved: number;
    inUse: number;
    peakInUse: number;
    free: number;
    largestFreeExtent: number;
    /** 1 − largest free extent / free bytes (0 when nothing is free). */
    fragmentation: number;
  } | null;
  counts: { allocations: number; frees: number; upstreamAllocations: number; upstreamFrees: number; retries: number; ooms: number };
  limit: number | null;
  releaseThreshold: number;
  /** The device's free and total bytes (0 where unknown). */
  deviceMemory: { free: number; total: number };
  pinnedFallback: boolean;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(2)} ${units[unit]}`;
}

function checkBytes(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new InvalidArgumentError(`Invalid ${name}: expected a non-negative integer number of bytes, got ${String(value)}`);
  }
  return value;
}

export class MemoryResource {
  readonly kind: string;
  readonly device: Device;
  /** @internal */
  readonly handle: NativeMemoryResourceHandle;
  private logger: ((line: string) => void) | undefined;
  private loggedReserved = 0;

  /** @internal */
  constructor(handle: NativeMemoryResourceHandle, device: Device, logger?: (line: string) => void) {
    this.handle = handle;
    this.device = device;
    const report = native().memoryReport(handle) as MemoryReport;
    this.kind = report.kind;
    this.loggedReserved = report.pool?.reserved ?? 0;
    this.logger = logger;
    if (logger && this.loggedReserved > 0) {
      logger(`[MemUsageChange] Allocated ${formatBytes(this.loggedReserved)} for ${this.kind} on ${device} (initial): reserved ${formatBytes(this.loggedReserved)}`);
    }
  }

  /** Current and peak bytes per category, pool usage, counts. */
  report(): MemoryReport {
    return native().memoryReport(this.handle) as MemoryReport;
  }

  /**
   * @internal Bytes in use per category (`report().categories[c].current`, 0 without accounting),
   * in MEMORY_CATEGORIES order, without building the whole report: for per-step callers.
   */
  currentByCategory(): number[] {
    return native().memoryCurrent(this.handle);
  }

  /** Returns idle memory to the upstream (pool: whole free chunks; cuda-async: the driver pool). */
  trim(): void {
    native().memoryTrim(this.handle);
    this.noteReservedChange('trim');
  }

  /** Sets (or clears) the `[MemUsageChange]` logger. */
  setLogger(logger: ((line: string) => void) | undefined): void {
    this.logger = logger;
    this.loggedReserved = this.report().pool?.reserved ?? 0;
  }

  /** @internal called after allocations: logs when the reserved bytes changed. */
  noteReservedChange(cause: string): void {
    if (!this.logger) return;
    const report = native().memoryReport(this.handle, false) as MemoryReport;  // (runs on every allocation: no device query)
    const reserved = report.pool?.reserved ?? report.total?.current ?? 0;
    if (reserved === this.loggedReserved) return;
    const delta = reserved - this.loggedReserved;
    this.loggedReserved = reserved;
    const inUse = report.pool?.inUse ?? report.total?.current ?? 0;
    this.logger(
      `[MemUsageChange] ${delta > 0 ? 'Allocated' : 'Released'} ${formatBytes(Math.abs(delta))} for ${report.kind} on ${this.device} (${cause}): ` +
        `reserved ${formatBytes(reserved)}, in use ${formatBytes(inUse)}`,
    );
  }
}

const defaults = new Map<Device, MemoryResource>();

/** The resource tensors on `device` use unless given another: tracking(pool(host | cuda)). */
export function defaultMemoryResource(device?: DeviceSpec): MemoryResource {
  const d = resolveDevice(device);
  let resource = defaults.get(d.device);
  if (!resource) {
    resource = new MemoryResource(native().defaultMemoryResource(d.kind, d.index), d.device);
    defaults.set(d.device, resource);
  }
  return resource;
}

/** A new memory resource; every one accounts by category. */
export function createMemoryResource(options: MemoryResourceOptions): MemoryResource {
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError('createMemoryResource expects an options object');
  const { kind } = options;
  if (!KINDS.includes(kind)) {
    throw new InvalidArgumentError(`Invalid memory resource kind ${JSON.stringify(kind)} (supported: ${KINDS.join(', ')})`);
  }
  const hostKind = kind === 'host' || kind === 'pinned-host';
  const d = resolveDevice(options.device ?? (hostKind ? 'cpu' : undefined));
  if (hostKind && d.kind !== 0) throw new InvalidArgumentError(`${kind} memory belongs to the cpu device, not ${d.device}`);
  if ((kind === 'cuda' || kind === 'cuda-async') && d.kind !== 1) throw new InvalidArgumentError(`${kind} memory needs a cuda device, not ${d.device}`);
  if (options.upstream !== undefined && !(options.upstream instanceof MemoryResource)) {
    throw new InvalidArgumentError('Invalid upstream: expected a MemoryResource');
  }
  if (options.logger !== undefined && typeof options.logger !== 'function') throw new InvalidArgumentError('Invalid logger: expected a function');
  const handle = native().createMemoryResource(kind, d.kind, d.index, {
    initialBytes: checkBytes(options.initialBytes, 'initialBytes'),
    maxBytes: checkBytes(options.maxBytes, 'maxBytes'),
    releaseThreshold: checkBytes(options.releaseThreshold, 'releaseThreshold'),
    limitBytes: checkBytes(options.limitBytes, 'limitBytes'),
    upstream: options.upstream?.handle,
  });
  return new MemoryResource(handle, d.device, options.logger);
}

/** The memory report of `device`'s default resource, or of `resource`. */
export function memoryReport(target?: DeviceSpec | MemoryResource): MemoryReport {
  return (target instanceof MemoryResource ? target : defaultMemoryResource(target)).report();
}

/**
 * @internal After an allocation from `memory` (or, when undefined, the device's default
 * resource): logs a reserved-memory change if that resource has a logger. A Map look-up,
 * no device parsing: it runs on every tensor allocation.
 */
export function noteAllocation(memory: MemoryResource | undefined, device: Device, cause: string): void {
  (memory ?? defaults.get(device))?.noteReservedChange(cause);
}

/** @internal */
export function categoryCode(category: unknown): number {
  const index = MEMORY_CATEGORIES.indexOf(category as MemoryCategory);
  if (index < 0) throw new InvalidArgumentError(`Invalid memory category ${JSON.stringify(category)} (supported: ${MEMORY_CATEGORIES.join(', ')})`);
  return index;
}
