import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createIdempotency } from '../../src/core/engine.js';
import type { AcquireInput, IdempotencyStore, StoredResponse } from '../../src/core/store.js';

/** What a store under test provides; `cleanup` runs after each case. */
export interface StoreUnderTest {
  store: IdempotencyStore;
  cleanup?: () => Promise<void>;
}

const T0 = Date.UTC(2026, 10, 23, 12);
const LEASE = 10_000;
const TTL = 86_400_000;
let seq = 0;

/** An `acquire` input with a fresh token; every store's own tests build theirs with it too. */
export function acquireInput(overrides: Partial<AcquireInput> = {}): AcquireInput {
  seq += 1;
  return {
    fingerprint: 'f'.repeat(64),
    request: { method: 'POST', path: '/charges', bodyHash: 'b'.repeat(64) },
    token: `token-${seq}`,
    leaseMs: LEASE,
    ttlMs: TTL,
    now: T0,
    ...overrides,
  };
}
const input = acquireInput;

/**
 * Fail closed: a guarded request through the engine on a `store` that cannot work answers 503
 * problem+json with Retry-After, and the handler never runs.
 */
export async function expectEngineFailsClosed(store: IdempotencyStore): Promise<void> {
  let runs = 0;
  const answer = await createIdempotency({ store }).handle(
    new Request('http://api.test/charges', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': 'key-1' },
      body: '{"amount":1000}',
    }),
    () => {
      runs += 1;
      return new Response('charged', { status: 201 });
    },
  );
  expect(answer.status).toBe(503);
  expect(answer.headers.get('content-type')).toBe('application/problem+json');
  expect(answer.headers.get('retry-after')).not.toBeNull();
  expect(((await answer.json()) as { code: string }).code).toBe('idempotency_store_unavailable');
  expect(runs).toBe(0);
}

const binary = Uint8Array.from({ length: 256 }, (_, i) => i);
const response: StoredResponse = {
  status: 201,
  headers: [
    ['content-type', 'application/octet-stream'],
    ['link', '</a>; rel="a"'],
    ['link', '</b>; rel="b"'],
  ],
  body: binary,
  bodySize: binary.byteLength,
};

/**
 * The contract of `IdempotencyStore`, run against every store (memory, SQLite, Redis, PostgreSQL)
 * with the real server behind it. Keys are unique per case so stores may share a database.
 */
export function describeStoreConformance(name: string, open: () => Promise<StoreUnderTest>): void {
  describe(`store conformance: ${name}`, () => {
    let subject: StoreUnderTest;
    let store: IdempotencyStore;
    let key: string;
    beforeEach(async () => {
      subject = await open();
      store = subject.store;
      key = `scope-${name}\nkey-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    });
    afterEach(async () => {
      await subject.cleanup?.();
    });

    it('acquires an absent key', async () => {
      expect(await store.acquire(key, input())).toEqual({ kind: 'acquired', takenOver: false });
    });

    it('returns the in-progress record to a second acquire, with its fingerprint and request', async () => {
      await store.acquire(key, input());
      const second = await store.acquire(key, input({ now: T0 + 1 }));
      expect(second.kind).toBe('in-progress');
      if (second.kind !== 'in-progress') return;
      expect(second.record.fingerprint).toBe('f'.repeat(64));
      expect(second.record.request).toEqual({ method: 'POST', path: '/charges', bodyHash: 'b'.repeat(64) });
      expect(second.record.leaseExpiresAt).toBe(T0 + LEASE);
    });

    it('completes with the holder token and replays status, headers in order and binary body', async () => {
      const first = input();
      await store.acquire(key, first);
      expect(await store.complete(key, first.token, response, { ttlMs: TTL, now: T0 + 5 })).toBe(true);
      const again = await store.acquire(key, input({ now: T0 + 6 }));
      expect(again.kind).toBe('completed');
      if (again.kind !== 'completed') return;
      expect(again.record.response.status).toBe(201);
      expect(again.record.response.headers).toEqual(response.headers);
      expect(Buffer.from(again.record.response.body!).equals(Buffer.from(binary))).toBe(true);
      expect(again.record.response.bodySize).toBe(256);
      expect(again.record.completedAt).toBe(T0 + 5);
      expect(again.record.expiresAt).toBe(T0 + 5 + TTL);
      expect(again.record.createdAt).toBe(T0);
    });

    it('keeps a response whose body was not stored as null with its size', async () => {
      const first = input();
      await store.acquire(key, first);
      const big: StoredResponse = { status: 200, headers: [], body: null, bodySize: 5_000_000 };
      await store.complete(key, first.token, big, { ttlMs: TTL, now: T0 });
      const again = await store.acquire(key, input({ now: T0 + 1 }));
      expect(again.kind === 'completed' && again.record.response).toEqual(big);
    });

    it('refuses complete, renew and release with a token that does not hold the key', async () => {
      await store.acquire(key, input());
      expect(await store.complete(key, 'not-the-token', response, { ttlMs: TTL, now: T0 })).toBe(false);
      expect(await store.renew(key, 'not-the-token', { leaseMs: LEASE, now: T0 })).toBe(false);
      expect(await store.release(key, 'not-the-token')).toBe(false);
      expect((await store.get(key, { now: T0 }))?.state).toBe('in-progress');
    });

    it('answers false for every token operation on an absent key', async () => {
      expect(await store.complete(key, 't', response, { ttlMs: TTL, now: T0 })).toBe(false);
      expect(await store.renew(key, 't', { leaseMs: LEASE, now: T0 })).toBe(false);
      expect(await store.release(key, 't')).toBe(false);
    });

    it('extends the lease on renew, so no takeover happens before the new expiry', async () => {
      const first = input();
      await store.acquire(key, first);
      expect(await store.renew(key, first.token, { leaseMs: LEASE, now: T0 + LEASE - 1 })).toBe(true);
      const during = await store.acquire(key, input({ now: T0 + LEASE + 1 }));
      expect(during.kind).toBe('in-progress');
      if (during.kind === 'in-progress') expect(during.record.leaseExpiresAt).toBe(T0 + 2 * LEASE - 1);
    });

    it('lets a same-fingerprint acquire take over a lapsed lease, and fences the old token out', async () => {
      const first = input();
      await store.acquire(key, first);
      const second = input({ now: T0 + LEASE });
      expect(await store.acquire(key, second)).toEqual({ kind: 'acquired', takenOver: true });
      expect(await store.renew(key, first.token, { leaseMs: LEASE, now: T0 + LEASE })).toBe(false);
      expect(await store.complete(key, first.token, response, { ttlMs: TTL, now: T0 + LEASE })).toBe(false);
      expect(await store.release(key, first.token)).toBe(false);
      expect(await store.complete(key, second.token, response, { ttlMs: TTL, now: T0 + LEASE + 1 })).toBe(
        true,
      );
    });

    it('never lets a different fingerprint take over a lapsed lease', async () => {
      await store.acquire(key, input());
      const other = await store.acquire(key, input({ now: T0 + LEASE * 5, fingerprint: 'e'.repeat(64) }));
      expect(other.kind).toBe('in-progress');
    });

    it('frees the key on release, so the next acquire runs again', async () => {
      const first = input();
      await store.acquire(key, first);
      expect(await store.release(key, first.token)).toBe(true);
      expect(await store.get(key, { now: T0 })).toBeUndefined();
      expect(await store.acquire(key, input({ now: T0 + 1 }))).toEqual({
        kind: 'acquired',
        takenOver: false,
      });
    });

    it('forgets a completed record once its ttl has passed', async () => {
      const first = input();
      await store.acquire(key, first);
      await store.complete(key, first.token, response, { ttlMs: 1_000, now: T0 });
      expect((await store.get(key, { now: T0 + 999 }))?.state).toBe('completed');
      expect(await store.get(key, { now: T0 + 1_000 })).toBeUndefined();
      expect(await store.acquire(key, input({ now: T0 + 1_000 }))).toEqual({
        kind: 'acquired',
        takenOver: false,
      });
    });

    it('forgets an in-progress record once its ttl has passed, whatever its fingerprint', async () => {
      await store.acquire(key, input({ ttlMs: 50_000 }));
      const late = await store.acquire(key, input({ now: T0 + 50_000, fingerprint: 'e'.repeat(64) }));
      expect(late.kind).toBe('acquired');
    });

    it('keeps a renewed in-progress record past its ttl: a slow handler is never run twice (regression)', async () => {
      const first = input({ ttlMs: 5_000, leaseMs: 3_000 });
      await store.acquire(key, first);
      for (let t = 2_000; t <= 8_000; t += 2_000) {
        expect(await store.renew(key, first.token, { leaseMs: 3_000, now: T0 + t })).toBe(true);
      }
      const retry = await store.acquire(key, input({ now: T0 + 9_000, ttlMs: 5_000, leaseMs: 3_000 }));
      expect(retry.kind).toBe('in-progress');
      expect(await store.complete(key, first.token, response, { ttlMs: 5_000, now: T0 + 9_500 })).toBe(true);
    });

    it('keeps scopes apart: the same key under another scope is another record', async () => {
      const first = input();
      await store.acquire(key, first);
      await store.complete(key, first.token, response, { ttlMs: TTL, now: T0 });
      expect(await store.acquire(`${key}-other-scope`, input())).toEqual({
        kind: 'acquired',
        takenOver: false,
      });
    });

    it('gets records in both states and nothing for an absent key', async () => {
      expect(await store.get(key, { now: T0 })).toBeUndefined();
      const first = input();
      await store.acquire(key, first);
      expect((await store.get(key, { now: T0 }))?.state).toBe('in-progress');
      await store.complete(key, first.token, response, { ttlMs: TTL, now: T0 });
      const record = await store.get(key, { now: T0 });
      expect(record?.state).toBe('completed');
      expect(record?.fingerprint).toBe('f'.repeat(64));
    });

    it('deletes a completed record but never an in-progress one', async () => {
      expect(await store.delete(key, { now: T0 })).toBe(false);
      const first = input();
      await store.acquire(key, first);
      expect(await store.delete(key, { now: T0 })).toBe(false);
      expect((await store.get(key, { now: T0 }))?.state).toBe('in-progress');
      await store.complete(key, first.token, response, { ttlMs: TTL, now: T0 });
      expect(await store.delete(key, { now: T0 })).toBe(true);
      expect(await store.get(key, { now: T0 })).toBeUndefined();
    });

    it('grants exactly one of 50 concurrent acquires of one key', async () => {
      const results = await Promise.all(Array.from({ length: 50 }, () => store.acquire(key, input())));
      expect(results.filter((r) => r.kind === 'acquired')).toHaveLength(1);
      expect(results.filter((r) => r.kind === 'in-progress')).toHaveLength(49);
    });

    it('grants exactly one of 50 concurrent takeovers of a lapsed lease', async () => {
      await store.acquire(key, input());
      const late = () => store.acquire(key, input({ now: T0 + LEASE + 1 }));
      const results = await Promise.all(Array.from({ length: 50 }, late));
      expect(results.filter((r) => r.kind === 'acquired')).toEqual([{ kind: 'acquired', takenOver: true }]);
    });

    describe('waitForCompletion', () => {
      it('resolves at once when the key is not in progress', async (ctx) => {
        if (store.waitForCompletion === undefined) return ctx.skip(`${name} has no waitForCompletion`);
        await store.waitForCompletion(key, { signal: new AbortController().signal });
      });

      it('resolves when the holder completes or releases', async (ctx) => {
        if (store.waitForCompletion === undefined) return ctx.skip(`${name} has no waitForCompletion`);
        for (const end of ['complete', 'release'] as const) {
          const k = `${key}-${end}`;
          const first = input();
          await store.acquire(k, first);
          let woke = false;
          const waiting = store.waitForCompletion(k, { signal: new AbortController().signal }).then(() => {
            woke = true;
          });
          await new Promise((resolve) => setTimeout(resolve, 20));
          expect(woke).toBe(false);
          if (end === 'complete') await store.complete(k, first.token, response, { ttlMs: TTL, now: T0 });
          else await store.release(k, first.token);
          await waiting;
          expect(woke).toBe(true);
        }
      });

      it('resolves when its signal aborts', async (ctx) => {
        if (store.waitForCompletion === undefined) return ctx.skip(`${name} has no waitForCompletion`);
        await store.acquire(key, input());
        const controller = new AbortController();
        const waiting = store.waitForCompletion(key, { signal: controller.signal });
        controller.abort();
        await waiting;
        expect((await store.get(key, { now: T0 }))?.state).toBe('in-progress');
      });
    });
  });
}
