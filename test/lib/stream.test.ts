/**
 * Streams and events (lib/stream.ts) on the CPU: caching of default streams,
 * events, cross-stream ordering with wait(), and the project's event-loop
 * responsiveness requirement (awaiting a busy stream never blocks JS).
 */
import { performance } from 'node:perf_hooks';

import { native } from '../../lib/native';
import { defaultDevice, Stream, StreamEvent, Tensor } from '../../lib';
import { ensureDist, runChild } from './helpers';

const F32 = 0;
const I32 = 3;

/** Milliseconds of one 16M-element float32 -> float16 cast on this machine (timed once). */
let castMs: number | undefined;
async function timeOneCast(): Promise<number> {
  if (castMs === undefined) {
    const s = Stream.create('cpu');
    const src = Tensor.full([1 << 24], 1.5, { stream: s });
    src.cast('float16').dispose(); // warm-up
    await s.synchronize();
    let best = Infinity; // the fastest of three: a disturbed measurement only makes the busy work longer
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      src.cast('float16').dispose();
      await s.synchronize();
      best = Math.min(best, performance.now() - t0);
    }
    castMs = Math.max(1, best);
    src.dispose();
  }
  return castMs;
}

/** Keeps `stream` busy for roughly `ms` milliseconds. */
async function enqueueBusyWork(stream: Stream, ms: number): Promise<void> {
  const per = await timeOneCast();
  const src = Tensor.zeros([1 << 24], { stream });
  for (let i = 0, n = Math.max(1, Math.ceil(ms / per)); i < n; i++) src.cast('float16').dispose();
  src.dispose();
}

describe('streams', () => {
  test('Stream.default is cached per device; Stream.create makes new streams', () => {
    const a = Stream.default('cpu');
    expect(Stream.default('cpu')).toBe(a);
    expect(Stream.default(defaultDevice())).toBe(Stream.default());
    expect(a.device).toBe('cpu');
    expect(a).toBeInstanceOf(Stream);
    const c1 = Stream.create('cpu');
    const c2 = Stream.create('cpu');
    expect(c1).not.toBe(a);
    expect(c2).not.toBe(c1);
    expect(c1.handle).not.toBe(c2.handle);
    expect(c1.handle).not.toBe(a.handle);
    expect(c1.device).toBe('cpu');
    const t = Tensor.zeros([1], { device: 'cpu' });
    expect(t.stream).toBe(a);
    t.dispose();
  });

  test('synchronize() resolves to undefined on an idle stream and after queued work', async () => {
    const s = Stream.create('cpu');
    await expect(s.synchronize()).resolves.toBeUndefined();
    const t = Tensor.fromArray([1, 2, 3], undefined, { stream: s });
    const c = t.cast('int32');
    await expect(s.synchronize()).resolves.toBeUndefined();
    expect(Array.from(await c.toArray())).toEqual([1, 2, 3]);
    t.dispose();
    c.dispose();
  });

  test('record(): query() is false while earlier work runs, true after; synchronize() waits for it', async () => {
    const s = Stream.create('cpu');
    const before = s.record();
    expect(before).toBeInstanceOf(StreamEvent);
    expect(before.device).toBe('cpu');
    await enqueueBusyWork(s, 300);
    const after = s.record();
    expect(after.query()).toBe(false);
    await before.synchronize();
    expect(before.query()).toBe(true);
    expect(after.query()).toBe(false); // the busy work is still running
    const t0 = performance.now();
    await expect(after.synchronize()).resolves.toBeUndefined();
    expect(after.query()).toBe(true);
    expect(performance.now() - t0).toBeGreaterThan(20);
    // An event on an idle stream completes by itself.
    const idle = s.record();
    await idle.synchronize();
    expect(idle.query()).toBe(true);
    await idle.synchronize(); // again: still resolves
  });

  test('wait(): a stream waits for another stream\'s event (and does not without it)', async () => {
    const A = Stream.create('cpu');
    const B = Stream.create('cpu');
    const C = Stream.create('cpu');
    // A: a tensor and a long chain of casts (values survive every cast).
    const n = 1 << 22;
    const values = Float32Array.from({ length: n }, (_, i) => (i % 201) - 100);
    let cur = Tensor.fromArray(values, undefined, { stream: A });
    const chain = ['float16', 'float32', 'bfloat16', 'int32', 'float32', 'int8', 'float32'] as const;
    for (let round = 0; round < 3; round++) {
      for (const d of chain) {
        const next = cur.cast(d);
        cur.dispose();
        cur = next;
      }
    }
    await enqueueBusyWork(A, 200); // and then some
    const doneA = A.record();
    expect(doneA.query()).toBe(false);
    B.wait(doneA);
    const doneB = B.record();
    expect(doneB.query()).toBe(false);
    // Control: C did not wait, so it finishes while A is still busy.
    const doneC = C.record();
    await doneC.synchronize();
    expect(doneA.query()).toBe(false);
    // B's event completes only after A's.
    await doneB.synchronize();
    expect(doneA.query()).toBe(true);
    // A copy onto B of A's result holds the chain's values.
    const onB = cur.to('cpu', { stream: B });
    expect(onB.stream).toBe(B);
    expect(onB.dtype).toBe('float32');
    const got = await onB.toArray();
    let bad = -1;
    for (let i = 0; i < n && bad < 0; i++) if (got[i] !== values[i]) bad = i;
    expect(bad < 0 ? 'all equal' : `index ${bad}: got ${got[bad]}, expected ${values[bad]}`).toBe('all equal');
    onB.dispose();
    cur.dispose();
  });

  describe('wait() at the binding level: B reads memory that A writes', () => {
    async function run(useWait: boolean): Promise<Int32Array> {
      const n = native();
      const A = Stream.create('cpu');
      const B = Stream.create('cpu');
      const count = 1 << 20;
      const src = n.allocate(A.handle, count * 4);
      const out = n.allocate(B.handle, count * 4);
      n.fill(src, 0, F32, count, 0, A.handle);
      await A.synchronize();
      await enqueueBusyWork(A, 300);
      n.fill(src, 0, F32, count, 42, A.handle);
      if (useWait) B.wait(A.record());
      n.cast(src, 0, F32, out, 0, I32, count, B.handle); // on B, no implicit ordering with A
      const result = new Int32Array(await n.download(out, 0, count * 4));
      await A.synchronize();
      n.free(src);
      n.free(out);
      return result;
    }

    test('with wait(): B sees A\'s write', async () => {
      const got = await run(true);
      expect([got[0], got[got.length - 1], got.every((x) => x === 42)]).toEqual([42, 42, true]);
    });

    test('control, without wait(): B runs ahead and sees the old contents', async () => {
      const got = await run(false);
      expect([got[0], got[got.length - 1]]).toEqual([0, 0]);
    });
  });

  /**
   * One measurement: times a 16M-element float32 -> float16 cast, enqueues about
   * 2 s of such casts, and records how late a 5 ms interval timer fires while
   * `await stream.synchronize()` is pending.
   */
  async function measureResponsiveness() {
    const stream = Stream.create('cpu');
    const src = Tensor.full([1 << 24], 3.25, { stream });
    // The fastest of three timed casts (after a warm-up), so that a disturbed
    // measurement can only make the work below longer.
    src.cast('float16').dispose();
    await stream.synchronize();
    let perCast = Infinity;
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      src.cast('float16').dispose();
      await stream.synchronize();
      perCast = Math.min(perCast, performance.now() - start);
    }
    perCast = Math.max(1, perCast);
    // About 2 s of work (twice the 1 s asserted), adapted to this machine.
    const count = Math.min(4000, Math.max(2, Math.ceil(2000 / perCast)));

    const t0 = performance.now();
    let last: Tensor | undefined;
    for (let i = 0; i < count; i++) {
      last?.dispose();
      last = src.cast('float16');
    }
    const enqueueMs = performance.now() - t0;

    const lags: number[] = [];
    let prev = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      lags.push(now - prev - 5);
      prev = now;
    }, 5);
    await stream.synchronize();
    const totalMs = performance.now() - t0;
    clearInterval(timer);

    const values = await last!.toArray();
    last!.dispose();
    src.dispose();
    const maxLag = lags.length ? Math.max(...lags) : Infinity;
    const sorted = [...lags].sort((a, b) => a - b);
    const p99Lag = sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))]! : Infinity;
    const r = (x: number) => Math.round(x * 10) / 10;
    return {
      perCast: r(perCast),
      count,
      enqueueMs: r(enqueueMs),
      totalMs: r(totalMs),
      ticks: lags.length,
      maxLag: r(maxLag),
      p99Lag: r(p99Lag),
      // 3.25 in float16 at both ends: the work really ran.
      ran: values[0] === 0x4280 && values[values.length - 1] === 0x4280,
      // The work took long enough for the measurement to mean something...
      longEnough: totalMs >= 1000,
      // ...enqueuing returned at once (the work ran on the stream's thread)...
      enqueueFast: enqueueMs < totalMs / 4,
      // ...the timer kept firing throughout...
      enoughTicks: lags.length >= (totalMs - enqueueMs) / 5 / 3,
      // ...and was late by 20 ms or more at most 1 % of the time, never by 100 ms. (A blocking wait
      // delays a tick by the whole run, 1-2 s; on a shared 2-core VM, steal time alone has
      // descheduled the JS thread for 20-31 ms in every one of three attempts, seen in CI.)
      responsive: p99Lag < 20 && maxLag < 100,
    };
  }

  test('the EVENT LOOP stays responsive while awaiting a busy stream', async () => {
    const ok = (m: Awaited<ReturnType<typeof measureResponsiveness>>) => m.ran && m.longEnough && m.enqueueFast && m.enoughTicks && m.responsive;
    // Up to three attempts: on a 2-core VM the pool's two threads plus the JS thread
    // outnumber the cores, and steal time from a neighbour can deschedule the JS
    // thread for 20-30 ms now and then (seen in CI). A blocking wait fails every
    // attempt (enoughTicks / responsive), so the retries hide no real bug.
    const attempts = [await measureResponsiveness()];
    while (!ok(attempts[attempts.length - 1]!) && attempts.length < 3) attempts.push(await measureResponsiveness());
    const result = { ...attempts[attempts.length - 1]!, ...(attempts.length > 1 ? { earlierAttempts: attempts.slice(0, -1) } : {}) };
    expect(result).toEqual({
      ...result,
      ran: true,
      longEnough: true,
      enqueueFast: true,
      enoughTicks: true,
      responsive: true,
    });
  });
});

// Regression (a bug this suite found, now fixed): memory is freed in the order of the stream it
// was allocated on only. Tensor.to(device, { stream }) onto another CPU stream
// queues the copy on the destination stream (after an event on the source
// stream), but the source's memory can then be freed on the source stream before
// the copy has run, so the copy reads freed memory:
//   (1) when the caller disposes the source right after to();
//   (2) always, for a non-contiguous source: to() copies from a temporary
//       contiguous copy that it disposes itself (`finally { source.dispose() }`).
// Each child keeps the destination stream B busy, lets the source stream A run
// its frees, then allocates a tensor of the same size on A and fills it with 9,
// so the freed memory is either unmapped (SIGSEGV) or reused (9s in the copy),
// whichever the allocator does. They run in child processes and assert the correct
// outcome.
describe('cross-stream copies and memory lifetime (child processes)', () => {
  beforeAll(() => ensureDist());

  /** `make` defines x (on A) and y (its copy on B); the child prints how many of y's elements are not 7. */
  const scenario = (make: string, reuseShape: string) => `
    const A = PKG.Stream.create('cpu'), B = PKG.Stream.create('cpu');
    const busy = PKG.Tensor.zeros([1 << 24], { stream: B });
    for (let i = 0; i < 12; i++) busy.cast('float16').dispose();
    (async () => {
      ${make}
      await A.synchronize(); // A has run its frees
      const reuse = PKG.Tensor.full(${reuseShape}, 9, { stream: A });
      await A.synchronize();
      const v = await y.toArray();
      let bad = 0; for (let i = 0; i < v.length; i++) if (v[i] !== 7) bad++;
      console.log(JSON.stringify({ ok: { bad, n: v.length } }));
      reuse.dispose();
    })();
  `;
  const expectCorrect = (r: ReturnType<typeof runChild>, n: number) =>
    expect({ status: r.status, signal: r.signal, json: r.json }).toEqual({ status: 0, signal: null, json: { ok: { bad: 0, n } } });

  test('control: the same copies are right when the source outlives them', () => {
    expectCorrect(runChild(scenario(`const x = PKG.Tensor.full([1 << 24], 7, { stream: A }); const y = x.to('cpu', { stream: B });`, '[1 << 24]')), 1 << 24);
    expectCorrect(
      runChild(
        scenario(
          `const x = PKG.Tensor.full([4096, 8192], 7, { stream: A }); const packed = x.slice(1, 0, 4096).contiguous(); const y = packed.to('cpu', { stream: B });`,
          '[4096, 4096]',
        ),
      ),
      4096 * 4096,
    );
  });

  test('disposing the source right after to(other stream) does not corrupt the copy', () => {
    expectCorrect(
      runChild(scenario(`const x = PKG.Tensor.full([1 << 24], 7, { stream: A }); const y = x.to('cpu', { stream: B }); x.dispose();`, '[1 << 24]')),
      1 << 24,
    );
  });

  test('to(other stream) of a non-contiguous tensor copies the right values', () => {
    expectCorrect(
      runChild(scenario(`const x = PKG.Tensor.full([4096, 8192], 7, { stream: A }); const y = x.slice(1, 0, 4096).to('cpu', { stream: B });`, '[4096, 4096]')),
      4096 * 4096,
    );
  });
});
