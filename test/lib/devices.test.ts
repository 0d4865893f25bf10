/**
 * devices(), parseDevice(), defaultDevice() (lib/device.ts), the
 * PAGEDLLM_DEVICE override and the loader's ERR_NO_BACKEND (lib/native.ts).
 * Selection and loading are cached per process, so the environment-variable
 * cases run in child processes against the built package (dist/).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { defaultDevice, devices, InvalidArgumentError, parseDevice, PagedLLMError, Tensor } from '../../lib';
import { DIST, ensureDist, REPO, reportExpr, runChild } from './helpers';

const report = devices();
const gpuless = !report.cuda.available;
const reason = report.cuda.available ? '' : report.cuda.reason;

describe('devices()', () => {
  test('cpu', () => {
    const { cpu } = report;
    expect(cpu.device).toBe('cpu');
    expect(Number.isInteger(cpu.logicalCores) && cpu.logicalCores > 0).toBe(true);
    expect(Number.isInteger(cpu.physicalCores) && cpu.physicalCores > 0).toBe(true);
    expect(cpu.physicalCores).toBeLessThanOrEqual(cpu.logicalCores);
    expect(cpu.logicalCores).toBe(os.cpus().length);
    expect(cpu.totalMemory).toBeGreaterThan(0);
    expect(cpu.availableMemory).toBeGreaterThan(0);
    expect(cpu.availableMemory).toBeLessThanOrEqual(cpu.totalMemory);
    // Within a few percent of what Node sees.
    expect(Math.abs(cpu.totalMemory - os.totalmem()) / os.totalmem()).toBeLessThan(0.05);
    expect(typeof cpu.arch).toBe('string');
    if (process.arch === 'x64') expect(cpu.arch).toBe('x86_64');
    if (process.arch === 'arm64') expect(cpu.arch).toBe('aarch64');
    expect(typeof cpu.modelName).toBe('string');
    expect(Array.isArray(cpu.simd)).toBe(true);
    expect(cpu.simd.every((s) => typeof s === 'string' && s.length > 0)).toBe(true);
    expect(new Set(cpu.simd).size).toBe(cpu.simd.length);
    if (process.arch === 'x64') expect(cpu.simd).toContain('sse2'); // x86-64 baseline
    // The kernels chosen: the widest path whose features are all usable, unless PAGEDLLM_SIMD caps it.
    const avx2 = ['avx2', 'fma', 'f16c'].every((f) => cpu.simd.includes(f));
    const avx512 = avx2 && ['avx512f', 'avx512bw', 'avx512vl', 'avx512vnni'].every((f) => cpu.simd.includes(f));
    const cap = process.env.PAGEDLLM_SIMD;
    const expected = cap === 'portable' ? 'portable' : avx512 && cap !== 'avx2' ? 'avx512' : avx2 ? 'avx2' : 'portable';
    expect(cpu.simdPath).toBe(expected);
    expect(cpu.awqActivations).toBe(cpu.simdPath !== 'portable' && process.env.PAGEDLLM_AWQ_ACTIVATIONS !== 'float32' ? 'int8' : 'float32');
    expect(Number.isInteger(cpu.threads) && cpu.threads >= 1).toBe(true);
    if (process.env.PAGEDLLM_THREADS === undefined) expect(cpu.threads).toBe(cpu.physicalCores);
  });

  test('build', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    expect(report.build.version).toBe(pkg.version);
    expect(typeof report.build.cuda).toBe('boolean');
    expect(typeof report.build.buildSystem).toBe('string');
    expect(report.build.buildSystem.length).toBeGreaterThan(0);
  });

  (gpuless ? test : test.skip)('cuda without a usable GPU: unavailable, with a reason, consistent with the build', () => {
    const { cuda } = report;
    expect(cuda.available).toBe(false);
    if (cuda.available) return;
    expect(typeof cuda.reason).toBe('string');
    expect(cuda.reason.trim().length).toBeGreaterThan(0);
    expect(cuda.compiled).toBe(report.build.cuda);
    expect(Array.isArray(cuda.devices)).toBe(true);
    expect(cuda.devices.every((d) => !d.supported) || cuda.devices.length === 0).toBe(true);
    for (const v of [cuda.driverVersion, cuda.runtimeVersion]) {
      if (v !== null) expect(v).toMatch(/^\d+\.\d+$/);
    }
    if (!cuda.compiled) {
      expect(cuda.runtimeVersion).toBeNull();
      expect(cuda.reason).toMatch(/without CUDA/);
    }
    expect(report.selected).toBe('cpu');
    expect(report.selectionReason).toBe(`CUDA not used: ${cuda.reason}`);
  });

  (gpuless ? test.skip : test)('cuda with a usable GPU: a supported device is selected', () => {
    const { cuda } = report;
    expect(cuda.available).toBe(true);
    if (!cuda.available) return;
    expect(cuda.devices.length).toBeGreaterThan(0);
    const first = cuda.devices.find((d) => d.supported)!;
    expect(report.selected).toBe(first.device);
    expect(cuda.devices.map((d) => d.device)).toEqual(cuda.devices.map((d) => `cuda:${d.index}`));
  });

  test('selection is stable and is what defaultDevice() and tensors use', () => {
    expect(devices().selected).toBe(report.selected);
    expect(defaultDevice()).toBe(report.selected);
    const t = Tensor.zeros([1]);
    expect(t.device).toBe(report.selected);
    t.dispose();
  });

  test('the report is plain data (JSON round-trips)', () => {
    expect(JSON.parse(JSON.stringify(report))).toEqual(report);
  });
});

describe('parseDevice()', () => {
  test.each([
    ['cpu', { device: 'cpu', kind: 0, index: 0 }],
    ['cuda', { device: 'cuda:0', kind: 1, index: 0 }],
    ['cuda:0', { device: 'cuda:0', kind: 1, index: 0 }],
    ['cuda:7', { device: 'cuda:7', kind: 1, index: 7 }],
    ['cuda:10', { device: 'cuda:10', kind: 1, index: 10 }],
    ['cuda:1023', { device: 'cuda:1023', kind: 1, index: 1023 }],
  ])('%j', (spec, want) => {
    expect(parseDevice(spec)).toEqual(want);
  });

  test.each(['gpu', 'CPU', 'Cuda', 'cuda:', 'cuda:x', 'cuda:-1', 'cuda:01', 'cuda:1.0', 'cuda:0x1', 'cuda:10000', 'cuda :0', 'cpu ', 'cuda:0:0', ''])(
    'rejects %j',
    (spec) => {
      let error: unknown;
      try {
        parseDevice(spec);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect(error).toBeInstanceOf(PagedLLMError);
      expect((error as PagedLLMError).code).toBe('ERR_INVALID_ARGUMENT');
      expect((error as Error).message).toBe(`Invalid device ${JSON.stringify(spec)} (expected 'cpu', 'cuda' or 'cuda:N')`);
    },
  );

  test('rejects non-strings', () => {
    for (const spec of [undefined, null, 0, {}, ['cpu']]) {
      expect(() => parseDevice(spec)).toThrow(`Invalid device ${JSON.stringify(spec)} (expected 'cpu', 'cuda' or 'cuda:N')`);
    }
  });
});

describe('PAGEDLLM_DEVICE (child processes)', () => {
  beforeAll(() => ensureDist());

  const selectedExpr = `(() => { const r = PKG.devices(); return { selected: r.selected, reason: r.selectionReason, defaultDevice: PKG.defaultDevice(), tensorDevice: PKG.Tensor.zeros([1]).device }; })()`;
  // Children load the same binary as this process (PAGEDLLM_ADDON is kept: the variant builds set it).
  const env = (value: string | undefined) => ({ PAGEDLLM_DEVICE: value });

  test('unset, empty and "auto" pick the automatic choice', () => {
    for (const value of [undefined, '', 'auto']) {
      const r = runChild(reportExpr(selectedExpr), env(value));
      expect([value, r.json]).toEqual([
        value,
        { ok: { selected: report.selected, reason: report.selectionReason, defaultDevice: report.selected, tensorDevice: report.selected } },
      ]);
    }
  });

  test('cpu forces the CPU', () => {
    const r = runChild(reportExpr(selectedExpr), env('cpu'));
    expect(r.json).toEqual({ ok: { selected: 'cpu', reason: 'PAGEDLLM_DEVICE=cpu', defaultDevice: 'cpu', tensorDevice: 'cpu' } });
  });

  (gpuless ? test : test.skip)('cuda / cuda:N without a usable GPU -> ERR_NO_BACKEND with the reason; explicit cpu still works', () => {
    for (const value of ['cuda', 'cuda:0', 'cuda:1']) {
      const message = `PAGEDLLM_DEVICE=${value} but CUDA cannot be used: ${reason}`;
      const noBackend = { error: { code: 'ERR_NO_BACKEND', name: 'NoBackendError', message, isPagedLLMError: true } };
      expect([value, runChild(reportExpr('PKG.devices()'), env(value)).json]).toEqual([value, noBackend]);
      expect([value, runChild(reportExpr('PKG.defaultDevice()'), env(value)).json]).toEqual([value, noBackend]);
      expect([value, runChild(reportExpr('PKG.Tensor.zeros([1])'), env(value)).json]).toEqual([value, noBackend]);
    }
    const r = runChild(reportExpr(`PKG.Tensor.fromArray([1, 2], undefined, { device: 'cpu' }).device`), env('cuda'));
    expect(r.json).toEqual({ ok: 'cpu' });
  });

  test('an invalid value -> ERR_INVALID_ARGUMENT', () => {
    for (const value of ['bogus', 'CPU', 'gpu', 'cuda:x', 'cuda:-1']) {
      const r = runChild(reportExpr('PKG.devices()'), env(value));
      expect([value, r.json]).toEqual([
        value,
        {
          error: {
            code: 'ERR_INVALID_ARGUMENT',
            name: 'InvalidArgumentError',
            message: `Invalid PAGEDLLM_DEVICE=${JSON.stringify(value)} (expected cpu, cuda, cuda:N or auto)`,
            isPagedLLMError: true,
          },
        },
      ]);
    }
  });
});

describe('no loadable native binary -> ERR_NO_BACKEND (child processes)', () => {
  beforeAll(() => ensureDist());

  const tries = `
    const out = {};
    try { out.required = typeof PKG.devices === 'function'; } catch (e) { out.required = e.code; }
    for (const [name, f] of [['devices', () => PKG.devices()], ['again', () => PKG.devices()], ['zeros', () => PKG.Tensor.zeros([1])], ['stream', () => PKG.Stream.create('cpu')]]) {
      try { f(); out[name] = 'no error'; } catch (e) { out[name] = { code: e.code, name: e.name, message: e.message, isPagedLLMError: e instanceof PKG.PagedLLMError }; }
    }
    console.log(JSON.stringify(out));
  `;

  function expectNoBackend(json: Record<string, unknown>, file: string): void {
    expect(json.required).toBe(true); // require() itself never fails
    const e = json.devices as { code: string; name: string; message: string; isPagedLLMError: boolean };
    expect({ code: e.code, name: e.name, isPagedLLMError: e.isPagedLLMError }).toEqual({ code: 'ERR_NO_BACKEND', name: 'NoBackendError', isPagedLLMError: true });
    expect(e.message).toContain(`pagedllm: no native binary could be loaded for ${process.platform}-${process.arch} (Node ${process.version}).`);
    expect(e.message).toContain(`Tried:\n  - ${file}: `);
    expect(e.message).toContain('PAGEDLLM_ADDON=/path/to/pagedllm.node');
    expect(json.again).toEqual(json.devices); // the same error every time
    expect(json.zeros).toEqual(json.devices);
    expect(json.stream).toEqual(json.devices);
  }

  test('PAGEDLLM_ADDON names a missing file', () => {
    const file = '/nonexistent/x.node';
    const r = runChild(tries, { PAGEDLLM_ADDON: file });
    expect(r.status).toBe(0);
    expectNoBackend(r.json, file);
    expect((r.json.devices as { message: string }).message).toContain(`${file}: Cannot find module '${file}'`);
  });

  test('PAGEDLLM_ADDON names a file that is not a native addon', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-test-'));
    const file = path.join(dir, 'garbage.node');
    fs.writeFileSync(file, 'this is not a shared object\n');
    try {
      const r = runChild(tries, { PAGEDLLM_ADDON: file });
      expect(r.status).toBe(0);
      expectNoBackend(r.json, file);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('control: PAGEDLLM_ADDON naming the real binary loads it', () => {
    const file = path.join(REPO, 'build', 'Release', 'pagedllm.node');
    if (!fs.existsSync(file)) throw new Error(`${file} is missing: build the addon first`);
    const r = runChild(reportExpr(`PKG.devices().selected`), { PAGEDLLM_ADDON: file, PAGEDLLM_DEVICE: 'cpu' });
    expect(r.json).toEqual({ ok: 'cpu' });
  });

  test('the CLI reports the devices, and ERR_NO_BACKEND with exit code 1', () => {
    const cli = path.join(DIST, 'cli.js');
    const ok = spawnSync(process.execPath, [cli, 'devices', '--json'], { encoding: 'utf8', env: { ...process.env, PAGEDLLM_DEVICE: 'cpu' } });
    expect(ok.status).toBe(0);
    const json = JSON.parse(ok.stdout) as { selected: string; cpu: { logicalCores: number } };
    expect([json.selected, json.cpu.logicalCores]).toEqual(['cpu', report.cpu.logicalCores]);
    const bad = spawnSync(process.execPath, [cli], { encoding: 'utf8', env: { ...process.env, PAGEDLLM_ADDON: '/nonexistent/x.node' } });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^pagedllm: ERR_NO_BACKEND: pagedllm: no native binary could be loaded/);
  });
});
