// Process-level lifecycle: worker threads loading the addon, process exit while
// native memory and queued work are outstanding, and GC as the safety net for
// tensors that are never disposed. Each scenario runs in a child process so a
// crash shows up as a failed exit status instead of killing jest.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

// Children load the compiled package in dist/ (built by `npm run build`, which `npm test` runs first).
const dist = JSON.stringify(path.resolve(__dirname, '..', '..', 'dist', 'index.js'));

function runChild(source: string, args: string[] = []): { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [...args, '-e', source], { encoding: 'utf8', timeout: 60_000, env: process.env });
  return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

beforeAll(() => {
  if (!fs.existsSync(JSON.parse(dist))) throw new Error('dist/ is missing: run `npm run build` first');
});

test('worker threads load the addon and use their own streams and tensors', () => {
  const source = `
    const { Worker } = require('node:worker_threads');
    const code = \`
      const { parentPort, workerData } = require('node:worker_threads');
      const p = require(workerData);
      const t = p.Tensor.fromArray([1, 2, 3, 4]).cast('float16').cast('float32');
      t.toArray().then((a) => parentPort.postMessage(Array.from(a).join(',')));
    \`;
    const results = [];
    let done = 0;
    for (let i = 0; i < 4; i++) {
      const w = new Worker(code, { eval: true, workerData: ${dist} });
      w.on('message', (m) => results.push(m));
      w.on('error', (e) => { console.error(e); process.exitCode = 2; });
      w.on('exit', () => { if (++done === 4) console.log(JSON.stringify(results)); });
    }`;
  const r = runChild(source);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual(['1,2,3,4', '1,2,3,4', '1,2,3,4', '1,2,3,4']);
});

test('a worker thread can be terminated while it holds tensors and queued work', () => {
  const source = `
    const { Worker } = require('node:worker_threads');
    const code = \`
      const { parentPort, workerData } = require('node:worker_threads');
      const p = require(workerData);
      const s = p.Stream.create('cpu');
      const big = p.Tensor.zeros([1 << 22], { stream: s });
      for (let i = 0; i < 20; i++) big.cast('float16');
      s.synchronize();
      parentPort.postMessage('queued');
      setInterval(() => {}, 1000);
    \`;
    const w = new Worker(code, { eval: true, workerData: ${dist} });
    w.on('message', () => w.terminate().then((code) => console.log('terminated', code)));
    w.on('error', (e) => { console.error(e); process.exitCode = 2; });`;
  const r = runChild(source);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  expect(r.stdout.trim()).toBe('terminated 1');
});

test('the process exits cleanly with undisposed tensors and pending work', () => {
  const source = `
    const p = require(${dist});
    const keep = [];
    for (let i = 0; i < 10; i++) keep.push(p.Tensor.zeros([1 << 20]).cast('bfloat16'));
    keep[0].toArray();            // a pending read-back, never awaited
    console.log('exiting');`;
  const r = runChild(source);
  expect(r.signal).toBeNull();
  expect(r.status).toBe(0);
  expect(r.stdout.trim()).toBe('exiting');
});

test('a pending read-back keeps the process alive until it settles', () => {
  const source = `
    const p = require(${dist});
    const t = p.Tensor.full([1 << 20], 3);
    for (let i = 0; i < 10; i++) t.cast('float16').dispose();
    t.toArray().then((a) => console.log('read', a.length, a[a.length - 1]));`;
  const r = runChild(source);
  expect(r.status).toBe(0);
  expect(r.stdout.trim()).toBe('read 1048576 3');
});

test('tensors dropped without dispose are freed by the garbage collector', () => {
  const source = `
    const p = require(${dist});
    const before = p.memoryReport('cpu').total.current;
    for (let i = 0; i < 200; i++) p.Tensor.zeros([1 << 20]);   // 200 x 4 MiB, never disposed
    const peak = p.memoryReport('cpu').total.current - before;
    p.Stream.default('cpu').synchronize().then(async () => {
      for (let i = 0; i < 5; i++) { global.gc(); await new Promise((r) => setTimeout(r, 20)); }
      const after = p.memoryReport('cpu').total.current - before;
      console.log(JSON.stringify({ peak, after }));
    });`;
  const r = runChild(source, ['--expose-gc']);
  expect(r.status).toBe(0);
  const { peak, after } = JSON.parse(r.stdout);
  // The garbage collector runs between allocations too; what matters is that
  // most of the 800 MiB went back to the pool once the tensors were unreachable.
  expect(peak).toBeGreaterThan(0);
  expect(after).toBeLessThan(64 * 2 ** 20);
});
