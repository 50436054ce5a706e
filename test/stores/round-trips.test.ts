// What the hot path costs in store work, counted on real stores: a first request is exactly two
// store operations (acquire, complete), a replay exactly one (acquire); nothing else is read or
// written, and renewals happen only for handlers slower than leaseMs/3. On Redis each operation
// is one command on the wire (counted by the server itself, through MONITOR); on PostgreSQL one
// statement.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Pool } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { createIdempotency } from '../../src/core/engine.js';
import type { IdempotencyStore } from '../../src/core/store.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { createPostgresStore, type PostgresPool } from '../../src/stores/postgres.js';
import { createRedisStore } from '../../src/stores/redis.js';
import { createSqliteStore } from '../../src/stores/sqlite.js';
import { DATABASE_URL, postgresAvailable, REDIS_URL, redisAvailable } from '../helpers/services.js';

const redisUp = await redisAvailable();
const postgresUp = await postgresAvailable();
const REQUESTS = 20;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type Operation = keyof Omit<IdempotencyStore, 'close'>;

/** The store, with every call of each operation counted on its way to the real one. */
function counted(store: IdempotencyStore) {
  const calls: Partial<Record<Operation, number>> = {};
  const wrapped = { ...store } as IdempotencyStore;
  for (const name of [
    'acquire',
    'renew',
    'complete',
    'release',
    'get',
    'delete',
    'waitForCompletion',
  ] as const) {
    const original = store[name] as ((...args: unknown[]) => unknown) | undefined;
    if (original === undefined) continue;
    (wrapped as unknown as Record<string, unknown>)[name] = (...args: unknown[]) => {
      calls[name] = (calls[name] ?? 0) + 1;
      return original.apply(store, args);
    };
  }
  return { store: wrapped, calls };
}

const post = (key: string, body = '{"amount":1000,"currency":"usd"}') =>
  new Request('http://api.test/charges', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    body,
  });

/** Sends `REQUESTS` first requests one after the other, then the same keys again (replays). */
async function drive(store: IdempotencyStore, handlerMs = 0) {
  const engine = createIdempotency({ store });
  const keys = Array.from({ length: REQUESTS }, () => randomUUID());
  for (const key of keys) {
    const response = await engine.handle(post(key), async () => {
      if (handlerMs > 0) await sleep(handlerMs);
      return Response.json({ id: key }, { status: 201 });
    });
    expect(response.status).toBe(201);
  }
  return { engine, keys };
}

const stores: Array<[string, boolean, () => Promise<{ store: IdempotencyStore; close(): Promise<void> }>]> = [
  ['memory', true, async () => ({ store: createMemoryStore(), close: async () => {} })],
  [
    'sqlite',
    true,
    async () => {
      const dir = mkdtempSync(join(os.tmpdir(), 'idemkit-rt-'));
      const store = createSqliteStore({ path: join(dir, 'keys.db') });
      return {
        store,
        close: async () => {
          await store.close();
          rmSync(dir, { recursive: true });
        },
      };
    },
  ],
  [
    'redis',
    redisUp,
    async () => {
      const client = new Redis(REDIS_URL);
      const store = createRedisStore({ client, prefix: `idemkit-rt-${randomUUID()}:` });
      return {
        store,
        close: async () => {
          await store.close();
          client.disconnect();
        },
      };
    },
  ],
  [
    'postgres',
    postgresUp,
    async () => {
      const pool = new Pool({ connectionString: DATABASE_URL, max: 4 });
      const table = `idemkit_rt_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
      const store = createPostgresStore({ pool, table });
      return {
        store,
        close: async () => {
          await store.close();
          await pool.query(`drop table if exists ${table}`);
          await pool.query('delete from idemkit_schema where table_name = $1', [table]).catch(() => {});
          await pool.end();
        },
      };
    },
  ],
];

describe('store operations per request', () => {
  for (const [name, up, open] of stores) {
    describe.runIf(up)(name, () => {
      it('first request: acquire + complete; replay: acquire; nothing else', async () => {
        const { store: real, close } = await open();
        try {
          const { store, calls } = counted(real);
          const { engine, keys } = await drive(store);
          expect(calls).toEqual({ acquire: REQUESTS, complete: REQUESTS });
          for (const key of keys) {
            const replay = await engine.handle(post(key), () => {
              throw new Error('a replay must not run the handler');
            });
            expect(replay.headers.get('idempotent-replayed')).toBe('true');
          }
          expect(calls).toEqual({ acquire: 2 * REQUESTS, complete: REQUESTS });
        } finally {
          await close();
        }
      });
    });
  }

  it('renews only a handler slower than leaseMs/3', async () => {
    const { store, calls } = counted(createMemoryStore());
    const leaseMs = 600; // renewals fall due 200 ms into a handler
    const engine = createIdempotency({ store, leaseMs });
    const run = (handlerMs: number) =>
      engine.handle(post(randomUUID()), async () => {
        await sleep(handlerMs);
        return new Response('ok', { status: 201 });
      });
    await Promise.all(Array.from({ length: 10 }, () => run(30)));
    expect(calls.renew ?? 0).toBe(0);
    await run(450);
    expect(calls.renew ?? 0).toBeGreaterThanOrEqual(1);
    expect(calls.renew ?? 0).toBeLessThanOrEqual(3);
  });

  it('does not renew a claim whose renewWhile says no (a response the client closed), and keeps one whose predicate throws', async () => {
    const { store, calls } = counted(createMemoryStore());
    const renewedKeys: string[] = [];
    const renew = store.renew;
    store.renew = (scopeKey, ...rest) => {
      renewedKeys.push(scopeKey.slice(scopeKey.lastIndexOf('\n') + 1));
      return renew(scopeKey, ...rest);
    };
    const engine = createIdempotency({ store, leaseMs: 600 });
    const view = {
      method: 'POST',
      path: '/charges',
      query: '',
      header: (name: string) => (name === 'content-type' ? 'text/plain' : undefined),
      raw: undefined,
    };
    const begin = async (key: string) => {
      const decision = await engine.begin(view, key, new Uint8Array([1]));
      if (decision.kind !== 'execute') throw new Error(`expected a claim, got ${decision.kind}`);
      return decision.claim;
    };
    const wanted = await begin('wanted');
    const unwanted = await begin('unwanted');
    const throwing = await begin('throwing');
    let asked = 0;
    wanted.renewWhile(() => true);
    throwing.renewWhile(() => {
      throw new Error('a predicate that throws keeps the lease');
    });
    unwanted.renewWhile(() => {
      asked++;
      return false;
    });
    await sleep(450);
    expect(asked).toBeGreaterThanOrEqual(1);
    expect(asked).toBe(1); // asked once, then no longer tracked
    const renewed = calls.renew ?? 0;
    expect(new Set(renewedKeys)).toEqual(new Set(['wanted', 'throwing']));
    await wanted.finish({ status: 201, headers: [], body: new Uint8Array(), bodySize: 0 });
    await throwing.finish({ status: 201, headers: [], body: new Uint8Array(), bodySize: 0 });
    await sleep(250);
    expect(calls.renew ?? 0).toBe(renewed);
  });
});

describe.runIf(redisUp)('redis: one command per store operation, counted by the server', () => {
  let monitor: Awaited<ReturnType<Redis['monitor']>> | undefined;
  afterAll(() => monitor?.disconnect());

  it.each([
    ['without auto-pipelining', false],
    ['with auto-pipelining', true],
  ])('%s: 2 commands per first request, 1 per replay', async (_label, enableAutoPipelining) => {
    const prefix = `idemkit-rt-${randomUUID()}:`;
    const admin = new Redis(REDIS_URL);
    monitor = await admin.monitor();
    const seen: string[][] = [];
    // Commands a script runs show up too, with "lua" as their source: only the client's count.
    monitor.on('monitor', (_time: string, args: string[], source: string) => {
      if (source !== 'lua' && args.some((arg) => arg.startsWith(prefix))) seen.push(args);
    });
    const client = new Redis(REDIS_URL, { enableAutoPipelining });
    const store = createRedisStore({ client, prefix });
    try {
      const { engine, keys } = await drive(store);
      for (const key of keys) await engine.handle(post(key), () => new Response('unused'));
      const deadline = Date.now() + 5_000;
      while (seen.length < 3 * REQUESTS && Date.now() < deadline) await sleep(20);
      await sleep(100); // anything beyond would show up now
      const commands = seen.map((args) => args[0]!.toUpperCase());
      const scripted = commands.filter((c) => c === 'EVALSHA' || c === 'EVAL').length;
      const evalFallbacks = commands.filter((c) => c === 'EVAL').length;
      // A script the server has not cached yet is sent once more, whole, as EVAL after NOSCRIPT.
      expect(scripted - evalFallbacks).toBe(3 * REQUESTS);
      expect(commands.filter((c) => c !== 'EVALSHA' && c !== 'EVAL')).toEqual([]);
    } finally {
      monitor.disconnect();
      monitor = undefined;
      await store.close();
      const leftovers = await admin.keys(`${prefix}*`);
      if (leftovers.length > 0) await admin.del(...leftovers);
      admin.disconnect();
      client.disconnect();
    }
  });
});

describe.runIf(postgresUp)('postgres: one statement per store operation', () => {
  it('2 statements per first request, 1 per replay, after the schema is in place', async () => {
    const pool = new Pool({ connectionString: DATABASE_URL, max: 4 });
    const table = `idemkit_rt_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
    let statements = 0;
    const countingPool: PostgresPool = {
      query: ((...args: Parameters<Pool['query']>) => {
        statements += 1;
        return (pool.query as (...a: unknown[]) => unknown)(...args);
      }) as PostgresPool['query'],
      connect: () => pool.connect(),
    };
    const store = createPostgresStore({ pool: countingPool, table, pruneIntervalMs: 0 });
    try {
      // The lazy migration runs on a held connection before the first operation; warm it up.
      await store.get('warm-up', { now: Date.now() });
      statements = 0;
      const { engine, keys } = await drive(store);
      expect(statements).toBe(2 * REQUESTS);
      for (const key of keys) await engine.handle(post(key), () => new Response('unused'));
      expect(statements).toBe(3 * REQUESTS);
    } finally {
      await store.close();
      await pool.query(`drop table if exists ${table}`);
      await pool.query('delete from idemkit_schema where table_name = $1', [table]).catch(() => {});
      await pool.end();
    }
  });
});
