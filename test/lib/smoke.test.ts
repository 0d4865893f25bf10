import { devices, Tensor } from '../../lib';

test('devices() reports the CPU', () => {
  expect(devices().cpu.logicalCores).toBeGreaterThan(0);
});

test('round trip', async () => {
  const t = Tensor.fromArray([1, 2, 3]);
  expect(Array.from(await t.toArray())).toEqual([1, 2, 3]);
  t.dispose();
});
