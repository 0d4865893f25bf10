/**
 * Devices: `'cpu'` or `'cuda:N'` (DESIGN.md §2). One binary holds both
 * backends; CUDA is used when a supported device and a new enough driver
 * exist, else the CPU, and {@link devices} says which and why.
 * `PAGEDLLM_DEVICE=cpu|cuda|cuda:N|auto` overrides the choice.
 */
import { InvalidArgumentError, NoBackendError, UnsupportedError } from './errors';
import { native, type NativeDeviceKind } from './native';

/** `'cpu'`, `'cuda'` (= `'cuda:0'`) or `'cuda:N'`. */
export type DeviceSpec = 'cpu' | 'cuda' | `cuda:${number}`;
/** A canonical device name: `'cpu'` or `'cuda:N'`. */
export type Device = 'cpu' | `cuda:${number}`;

export interface CpuDeviceInfo {
  device: 'cpu';
  arch: string;
  modelName: string;
  logicalCores: number;
  physicalCores: number;
  totalMemory: number;
  availableMemory: number;
  /** SIMD features this process can use (CPUID and OS support), e.g. `['avx2', 'fma', 'f16c']`. */
  simd: string[];
  /**
   * The kernels CPU ops run, the widest this CPU has: `'avx512'` (AVX-512 F/BW/VL + VNNI, with AVX2,
   * FMA and F16C), `'avx2'` (AVX2 + FMA + F16C) or `'portable'`; `PAGEDLLM_SIMD=avx2|portable` caps it.
   */
  simdPath: 'avx512' | 'avx2' | 'portable';
  /**
   * How AWQ int4 linears of a model loaded on the CPU multiply at decode (≤ 8 tokens): `'int8'`
   * quantizes the activations per 16 values (the avx2 and avx512 paths' default, within Σ|W|·scale/2 of
   * float32; the loader repacks the weights in place to the 'slab8' layout this GEMV reads) or
   * `'float32'` (the portable path, weights as the checkpoint stores them;
   * `PAGEDLLM_AWQ_ACTIVATIONS=float32` forces it).
   */
  awqActivations: 'int8' | 'float32';
  /** Threads CPU ops use (one pool per process): `PAGEDLLM_THREADS`, else the physical cores. */
  threads: number;
}

export interface CudaDeviceInfo {
  device: Device;
  index: number;
  name: string;
  /** e.g. `'9.0'` */
  computeCapability: string;
  totalMemory: number;
  freeMemory: number;
  multiprocessors: number;
  /** sm_75 or newer: pagedllm runs on it. */
  supported: boolean;
}

export type CudaReport =
  | { available: true; driverVersion: string; runtimeVersion: string; archs: string; devices: CudaDeviceInfo[] }
  | {
      available: false;
      /** Why CUDA cannot be used: not built with CUDA, no driver, driver too old, no (supported) device. */
      reason: string;
      compiled: boolean;
      driverVersion: string | null;
      runtimeVersion: string | null;
      devices: CudaDeviceInfo[];
    };

export interface DevicesReport {
  cpu: CpuDeviceInfo;
  cuda: CudaReport;
  /** The device tensors use when none is given. */
  selected: Device;
  /** Why `selected` was chosen. */
  selectionReason: string;
  build: { version: string; cuda: boolean; buildSystem: string };
}

function cudaVersion(v: number): string | null {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : null;
}

function cudaReport(): CudaReport {
  const info = native().cudaInfo();
  const devices = info.devices.map((d): CudaDeviceInfo => ({ device: `cuda:${d.index}`, ...d }));
  if (info.available) {
    return {
      available: true,
      driverVersion: cudaVersion(info.driverVersion)!,
      runtimeVersion: cudaVersion(info.runtimeVersion)!,
      archs: info.archs,
      devices,
    };
  }
  return {
    available: false,
    reason: info.reason,
    compiled: info.compiled,
    driverVersion: cudaVersion(info.driverVersion),
    runtimeVersion: cudaVersion(info.runtimeVersion),
    devices,
  };
}

/** Parses `'cpu' | 'cuda' | 'cuda:N'` into its canonical name; throws ERR_INVALID_ARGUMENT otherwise. */
export function parseDevice(spec: unknown): { device: Device; kind: NativeDeviceKind; index: number } {
  if (spec === 'cpu') return { device: 'cpu', kind: 0, index: 0 };
  if (typeof spec === 'string') {
    const match = /^cuda(?::(0|[1-9][0-9]{0,3}))?$/.exec(spec);
    if (match) {
      const index = match[1] === undefined ? 0 : Number(match[1]);
      return { device: `cuda:${index}`, kind: 1, index };
    }
  }
  throw new InvalidArgumentError(`Invalid device ${JSON.stringify(spec)} (expected 'cpu', 'cuda' or 'cuda:N')`);
}

let selection: { device: Device; reason: string } | undefined;

function select(cuda: CudaReport): { device: Device; reason: string } {
  const override = process.env.PAGEDLLM_DEVICE;
  const firstSupported = cuda.devices.find((d) => d.supported);
  if (override === undefined || override === '' || override === 'auto') {
    if (cuda.available && firstSupported) return { device: firstSupported.device, reason: `CUDA device found: ${firstSupported.name}` };
    return { device: 'cpu', reason: `CUDA not used: ${cuda.available ? 'no supported device' : cuda.reason}` };
  }
  if (override === 'cpu') return { device: 'cpu', reason: 'PAGEDLLM_DEVICE=cpu' };
  let parsed;
  try {
    parsed = parseDevice(override);
  } catch {
    throw new InvalidArgumentError(`Invalid PAGEDLLM_DEVICE=${JSON.stringify(override)} (expected cpu, cuda, cuda:N or auto)`);
  }
  if (!cuda.available) throw new NoBackendError(`PAGEDLLM_DEVICE=${override} but CUDA cannot be used: ${cuda.reason}`);
  const dev = cuda.devices[parsed.index];
  if (!dev || !dev.supported) {
    throw new NoBackendError(`PAGEDLLM_DEVICE=${override} but ${parsed.device} ${dev ? `(${dev.name}, sm_${dev.computeCapability.replace('.', '')}) is older than sm_75` : 'does not exist'}`);
  }
  return { device: parsed.device, reason: `PAGEDLLM_DEVICE=${override}` };
}

/** The device used when none is given (decided once per process). */
export function defaultDevice(): Device {
  selection ??= select(cudaReport());
  return selection.device;
}

/**
 * What this machine offers and which backend pagedllm chose.
 *
 * @example
 * const { selected, cpu, cuda } = devices();
 * if (!cuda.available) console.log(`CPU backend (${cuda.reason})`);
 */
export function devices(): DevicesReport {
  const binding = native();
  const c = binding.cpuInfo();
  const cuda = cudaReport();
  selection ??= select(cuda);
  return {
    cpu: { device: 'cpu', ...c },
    cuda,
    selected: selection.device,
    selectionReason: selection.reason,
    build: binding.buildInfo(),
  };
}

/** @internal Resolves a device option (default: {@link defaultDevice}) and checks it can be used. */
export function resolveDevice(spec: unknown): { device: Device; kind: NativeDeviceKind; index: number } {
  const parsed = parseDevice(spec ?? defaultDevice());
  if (parsed.kind === 1) {
    const cuda = cudaAvailability();
    if (!cuda.available) throw new UnsupportedError(`Device ${parsed.device} cannot be used: ${cuda.reason}`);
    if (parsed.index >= cuda.count) throw new InvalidArgumentError(`Device ${parsed.device} does not exist (${cuda.count} CUDA device${cuda.count === 1 ? '' : 's'})`);
  }
  return parsed;
}

let availability: { available: boolean; reason: string; count: number } | undefined;
function cudaAvailability(): { available: boolean; reason: string; count: number } {
  if (!availability) {
    const info = native().cudaInfo();
    availability = { available: info.available, reason: info.reason, count: info.devices.length };
  }
  return availability;
}
