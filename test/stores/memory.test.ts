import { describe, expect, it } from 'vitest';
import { createMemoryStore } from '../../src/stores/memory.js';
import { describeStoreConformance } from './conformance.js';

describeStoreConformance('memory', async () => {
  const store = createMemoryStore();
  return { store, cleanup: () => store.close() };
});

const T0 = Date.UTC(2026, 10, 23);
const acquire = (i: number, token = `t${i}`) => ({
  fingerprint: 'f',
  request: { method: 'POST', path: '/', bodyHash: 'b' },
  token,
  leaseMs: 1_000,
  ttlMs: 60_000,
  now: T0,
});
const done = { status: 200, headers: [], body: new Uint8Array(0), bodySize: 0 };

describe('memory store bounds', () => {
  it('evicts the least recently used completed record at maxEntries', async () => {
    const store = createMemoryStore({ maxEntries: 3, sweepIntervalMs: 0 });
    for (const i of [1, 2, 3]) {
      await store.acquire(`k${i}`, acquire(i));
      await store.complete(`k${i}`, `t${i}`, done, { ttlMs: 60_000, now: T0 });
    }
    // touch k1 so k2 becomes the least recently used
    expect((await store.acquire('k1', acquire(9))).kind).toBe('completed');
    await store.acquire('k4', acquire(4));
    expect(store.size).toBe(3);
    expect(await store.get('k2', { now: T0 })).toBeUndefined();
    expect((await store.get('k1', { now: T0 }))?.state).toBe('completed');
    expect((await store.get('k4', { now: T0 }))?.state).toBe('in-progress');
  });

  it('never evicts an in-progress record, and refuses a new key when only those remain', async () => {
    const store = createMemoryStore({ maxEntries: 2, sweepIntervalMs: 0 });
    await store.acquire('k1', acquire(1));
    await store.acquire('k2', acquire(2));
    await expect(store.acquire('k3', acquire(3))).rejects.toThrow(/memory store is full/);
    expect((await store.get('k1', { now: T0 }))?.state).toBe('in-progress');
    expect((await store.get('k2', { now: T0 }))?.state).toBe('in-progress');
  });

  it('drops an in-progress record whose lease lapsed when full, so leaving clients cannot fill it (regression)', async () => {
    const store = createMemoryStore({ maxEntries: 2, sweepIntervalMs: 0 });
    await store.acquire('k1', acquire(1));
    await store.acquire('k2', acquire(2));
    const later = { ...acquire(3), now: T0 + 1_000 };
    expect(await store.acquire('k3', later)).toEqual({ kind: 'acquired', takenOver: false });
    expect(store.size).toBe(2);
    expect(await store.complete('k1', 't1', done, { ttlMs: 60_000, now: T0 + 1_000 })).toBe(false);
  });

  it('sweeps expired records', async () => {
    let now = T0;
    const store = createMemoryStore({ sweepIntervalMs: 0, now: () => now });
    await store.acquire('k1', acquire(1));
    await store.complete('k1', 't1', done, { ttlMs: 1_000, now: T0 });
    await store.acquire('k2', acquire(2));
    expect(store.size).toBe(2);
    now = T0 + 1_000;
    store.sweep();
    expect(store.size).toBe(1);
    now = T0 + 60_000;
    store.sweep();
    expect(store.size).toBe(0);
  });

  it('rejects invalid options', () => {
    expect(() => createMemoryStore({ maxEntries: 0 })).toThrow(/maxEntries/);
    expect(() => createMemoryStore({ sweepIntervalMs: -1 })).toThrow(/sweepIntervalMs/);
  });
});
