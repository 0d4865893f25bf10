// The install flow users get: the packed tarball, installed with
// --ignore-scripts into an empty folder, loads its prebuilt binary (no
// compiler, no install script) and devices() works. Uses prebuilds/ when
// `npm run prebuild` made it from the current build, else packages the
// current build the same way (scripts/prebuild.js --from).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.resolve(__dirname, '..');
const prebuilt = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'pagedllm.node');

test('packed tarball installs with --ignore-scripts and loads its prebuilt binary', () => {
  const built = path.join(root, 'build', 'Release', 'pagedllm.node');
  // Package the current build unless prebuilds/ holds a binary at least as new.
  if (!fs.existsSync(prebuilt) || (fs.existsSync(built) && fs.statSync(built).mtimeMs > fs.statSync(prebuilt).mtimeMs)) {
    execFileSync(process.execPath, [path.join(root, 'scripts', 'prebuild.js'), '--from', built], { cwd: root });
  }
  expect(fs.existsSync(path.join(root, 'dist', 'index.js'))).toBe(true);
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pagedllm-pack-'));
  try {
    const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', scratch], { cwd: root, encoding: 'utf8' }));
    const files: string[] = packed[0].files.map((f: { path: string }) => f.path);
    expect(files).toContain(`prebuilds/${process.platform}-${process.arch}/pagedllm.node`);
    expect(files).toContain('dist/index.js');
    expect(files.some((f) => f.startsWith('build/'))).toBe(false);

    const app = path.join(scratch, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    execFileSync('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', path.join(scratch, packed[0].filename)], {
      cwd: app,
      encoding: 'utf8',
      stdio: 'pipe',
    });
    expect(fs.existsSync(path.join(app, 'node_modules', 'pagedllm', 'build'))).toBe(false);
    const script = `
      const p = require('pagedllm');
      const d = p.devices();
      const t = p.Tensor.fromArray([1.5, -2, 3]);
      t.cast('bfloat16').cast('float32').toArray().then((a) => {
        console.log(JSON.stringify({ selected: d.selected, cores: d.cpu.logicalCores, build: d.build, values: Array.from(a) }));
      });`;
    const env = { ...process.env };
    delete env.PAGEDLLM_ADDON;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: app, encoding: 'utf8', env }));
    const meta = JSON.parse(fs.readFileSync(path.join(path.dirname(prebuilt), 'pagedllm.json'), 'utf8'));
    expect(out.cores).toBeGreaterThan(0);
    expect(out.values).toEqual([1.5, -2, 3]);
    expect(out.build.cuda).toBe(meta.cuda);
    expect(out.build.version).toBe(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
});
