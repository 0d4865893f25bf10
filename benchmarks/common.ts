/** What the benchmark scripts share: their command line, the commit they ran, where results go. */
import { execFileSync, execSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** `--name value` from the command line, else `fallback`. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const next = i > 0 ? process.argv[i + 1] : undefined;
  return next !== undefined && !next.startsWith('--') ? next : fallback;
}

/** `--name` given (as a bare flag). */
export function flag(name: string): boolean {
  return process.argv.includes(`--${name}`);
}

export function gitCommit(): string {
  try {
    return execSync('git describe --always --dirty --abbrev=7', { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return process.env.PAGEDLLM_COMMIT ?? 'unknown';
  }
}

export const RESULTS_DIR = path.resolve(__dirname, '..', 'benchmarks', 'results');

/** `benchmarks/results/<name>-<device>-<date>.json` (device name made file-safe). */
export function resultsFile(name: string, device: string, date = new Date().toISOString().slice(0, 10)): string {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  return path.join(RESULTS_DIR, `${name}-${device.replace(/[^A-Za-z0-9]+/g, '-')}-${date}.json`);
}

/** The native attention benchmark (built with the addon by `npm run build:native`). */
export function nativeBenchBinary(): string {
  const candidates = [process.env.PAGEDLLM_BENCH_BIN, path.resolve(__dirname, '..', 'build', 'pagedllm_bench_attention')];
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  throw new Error(`native benchmark not found (tried ${candidates.filter(Boolean).join(', ')}): run \`npm run build:native\` first`);
}

/**
 * The memory read bandwidth a roofline divides by, measured now: the native attention benchmark's
 * probe (CPU: the thread pool reading 1 GiB, best of several; CUDA: a device copy).
 */
export function readBandwidth(device: string): { what: string; bytesPerSecond: number } {
  const out = execFileSync(nativeBenchBinary(), ['--device', device.startsWith('cuda') ? 'cuda' : 'cpu', '--case', 'none', '--reps', '5'], { encoding: 'utf8' });
  return (JSON.parse(out) as { bandwidth: { what: string; bytesPerSecond: number } }).bandwidth;
}
