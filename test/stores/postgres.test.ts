import { createHash, randomBytes } from 'node:crypto';
import { Client, Pool, type PoolClient } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdempotencyConfigError, isIdempotencyStoreError } from '../../src/core/errors.js';
import type { AcquireInput, StoredResponse } from '../../src/core/store.js';
import {
  createPostgresStore,
  type PostgresPool,
  type PostgresStore,
  postgresSchemaSql,
} from '../../src/stores/postgres.js';
import { DATABASE_URL, postgresAvailable } from '../helpers/services.js';
import { acquireInput, describeStoreConformance, expectEngineFailsClosed } from './conformance.js';

const available = await postgresAvailable();

// One prefix per run of this file; every table it creates is dropped afterwards.
const PREFIX = `idemkit_t_${randomBytes(4).toString('hex')}`;
const tables: string[] = [];
const tableName = (suffix: string) => {
  const name = `${PREFIX}_${suffix}`;
  tables.push(name);
  return name;
};

const T0 = Date.UTC(2026, 10, 23);
const TTL = 86_400_000;
const input = (token: string, overrides: Partial<AcquireInput> = {}) =>
  acquireInput({ token, now: T0, ttlMs: TTL, ...overrides });
const binary = Uint8Array.from({ length: 512 }, (_, i) => (i * 7) % 256);
const response: StoredResponse = {
  status: 201,
  headers: [['content-type', 'application/octet-stream']],
  body: binary,
  bodySize: binary.byteLength,
};
const newPool = (max = 4) => new Pool({ connectionString: DATABASE_URL, max });
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** A pool-like over `pool` without `options`: what a wrapper around a pg.Pool may look like. */
const newPoolLike = (pool: Pool): PostgresPool => ({
  query: (text: unknown, values?: unknown[]) => pool.query(text as string, values),
  connect: () => pool.connect(),
});
/** The stored key of a scope key, as the store computes it. */
const keyHash = (scopeKey: string) =>
  createHash('sha256').update(Buffer.from(scopeKey, 'utf16le')).digest('hex');
/** `promise`, or a rejection naming `what` once `ms` have passed. */
const within = <T>(promise: Promise<T>, ms: number, what: string): Promise<T> => {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took more than ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
};

describe.runIf(available)('postgres store', () => {
  const table = tableName('main');
  let admin: Pool;
  let client: Client;

  beforeAll(async () => {
    admin = newPool(10);
    client = new Client({ connectionString: DATABASE_URL });
    await client.connect();
  });

  afterAll(async () => {
    await client?.end();
    if (admin === undefined) return;
    for (const name of tables) await admin.query(`DROP TABLE IF EXISTS ${name}`);
    await admin.query('DELETE FROM idemkit_schema WHERE table_name = ANY($1)', [tables]).catch(() => {});
    await admin.end();
  });

  describeStoreConformance('postgres (Pool)', async () => {
    const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
    return { store, cleanup: () => store.close() };
  });

  describeStoreConformance('postgres (Client)', async () => {
    const store = createPostgresStore({ client, table, pruneIntervalMs: 0 });
    return { store, cleanup: () => store.close() };
  });

  describeStoreConformance('postgres (unnamed statements)', async () => {
    const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0, namedStatements: false });
    return { store, cleanup: () => store.close() };
  });

  describeStoreConformance('postgres (no batching)', async () => {
    const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0, batching: false });
    return { store, cleanup: () => store.close() };
  });

  describeStoreConformance('postgres (Client, no batching)', async () => {
    const store = createPostgresStore({ client, table, pruneIntervalMs: 0, batching: false });
    return { store, cleanup: () => store.close() };
  });

  describe('batching', () => {
    /** A pool-like over `admin` that records every statement sent (its text, or its name). */
    const recordingPool = () => {
      const sent: string[] = [];
      const pool = {
        options: { max: 10 },
        connect: () => admin.connect(),
        query: (text: unknown, values?: unknown[]) => {
          sent.push(typeof text === 'string' ? text : (text as { text: string }).text);
          return typeof text === 'string' ? admin.query(text, values) : admin.query(text as never);
        },
      };
      return { pool, sent };
    };
    const run = () => randomBytes(4).toString('hex');

    it('answers concurrent acquires of one hot key from one statement: the replay path and a burst (regression)', async () => {
      const { pool, sent } = recordingPool();
      const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
      const id = run();
      try {
        await store.migrate();
        const hot = `hot-${id}`;
        await store.acquire(hot, input('first'));
        await store.complete(hot, 'first', response, { ttlMs: TTL, now: T0 });
        sent.length = 0;
        const replays = await Promise.all(
          Array.from({ length: 100 }, (_, i) => store.acquire(hot, input(`r${i}`, { now: T0 + 1 }))),
        );
        expect(replays.every((r) => r.kind === 'completed')).toBe(true);
        expect(sent.length).toBeLessThanOrEqual(4); // was one statement per call
        const burstKey = `burst-${id}`;
        sent.length = 0;
        const burst = await Promise.all(
          Array.from({ length: 50 }, (_, i) =>
            store.acquire(
              burstKey,
              input(`b${i}`, { now: T0 + 1, fingerprint: i % 2 ? 'f'.repeat(64) : 'e'.repeat(64) }),
            ),
          ),
        );
        const winners = burst.filter((r) => r.kind === 'acquired');
        expect(winners).toHaveLength(1);
        const winner = burst.indexOf(winners[0]!);
        for (const r of burst) {
          if (r.kind === 'in-progress') expect(r.record.token).toBe(`b${winner}`);
        }
        expect(burst.filter((r) => r.kind === 'in-progress')).toHaveLength(49);
        expect(sent.length).toBeLessThanOrEqual(4);
        // A lapsed lease with the same fingerprint is still taken over through the database, once.
        const late = await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            store.acquire(
              burstKey,
              input(`l${i}`, {
                now: T0 + 1 + 10_000,
                fingerprint: winner % 2 ? 'f'.repeat(64) : 'e'.repeat(64),
              }),
            ),
          ),
        );
        expect(late.filter((r) => r.kind === 'acquired')).toEqual([{ kind: 'acquired', takenOver: true }]);
      } finally {
        await store.close();
      }
    });

    it('sends 40 concurrent acquires and then 40 completes in far fewer statements, every answer right', async () => {
      const { pool, sent } = recordingPool();
      const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
      const id = run();
      try {
        await store.migrate();
        // Keys already held by someone else, and keys already completed, in the same batches.
        const held = Array.from({ length: 10 }, (_, i) => `batch-${id}-held-${i}`);
        const done = Array.from({ length: 10 }, (_, i) => `batch-${id}-done-${i}`);
        for (const key of [...held, ...done]) await store.acquire(key, input(`old-${key}`));
        for (const key of done) {
          expect(await store.complete(key, `old-${key}`, response, { ttlMs: TTL, now: T0 })).toBe(true);
        }
        sent.length = 0;
        const fresh = Array.from({ length: 40 }, (_, i) => `batch-${id}-new-${i}`);
        const [claims, others] = await Promise.all([
          Promise.all(fresh.map((key) => store.acquire(key, input(`new-${key}`, { now: T0 + 1 })))),
          Promise.all(
            [...held, ...done].map((key) => store.acquire(key, input(`late-${key}`, { now: T0 + 1 }))),
          ),
        ]);
        expect(claims).toEqual(fresh.map(() => ({ kind: 'acquired', takenOver: false })));
        others.forEach((result, i) => {
          const key = [...held, ...done][i]!;
          expect(result.kind).toBe(i < 10 ? 'in-progress' : 'completed');
          if (result.kind === 'in-progress') expect(result.record.token).toBe(`old-${key}`);
          if (result.kind === 'completed') {
            expect(Buffer.from(result.record.response.body!).equals(Buffer.from(binary))).toBe(true);
          }
        });
        const bodies = fresh.map((key) => Buffer.from(`body of ${key}`));
        const completed = await Promise.all(
          fresh.map((key, i) =>
            store.complete(
              key,
              i === 0 ? 'not-the-token' : `new-${key}`,
              { status: 200 + i, headers: [['x-key', key]], body: bodies[i]!, bodySize: bodies[i]!.length },
              { ttlMs: TTL, now: T0 + 2 },
            ),
          ),
        );
        expect(completed).toEqual(fresh.map((_, i) => i !== 0));
        const statements = sent.filter((text) => text.includes('unnest('));
        expect(statements.length).toBe(sent.length);
        expect(sent.length).toBeGreaterThanOrEqual(2);
        expect(sent.length).toBeLessThanOrEqual(6); // 100 calls
        for (const [i, key] of fresh.entries()) {
          const record = await store.get(key, { now: T0 + 2 });
          if (i === 0) {
            expect(record?.state).toBe('in-progress');
            continue;
          }
          expect(record?.state).toBe('completed');
          if (record?.state !== 'completed') continue;
          expect(record.response.status).toBe(200 + i);
          expect(record.response.headers).toEqual([['x-key', key]]);
          expect(Buffer.from(record.response.body!).equals(bodies[i]!)).toBe(true);
          expect([record.completedAt, record.expiresAt]).toEqual([T0 + 2, T0 + 2 + TTL]);
        }
      } finally {
        await store.close();
      }
    });

    it('decides every key of one batch as the one-key statement would: takeover, expiry, fingerprint', async () => {
      const { pool, sent } = recordingPool();
      const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
      const id = run();
      const k = (name: string) => `decide-${id}-${name}`;
      const other = 'e'.repeat(64);
      try {
        await store.acquire(k('lapsed-same'), input('old-a'));
        await store.acquire(k('lapsed-other'), input('old-b'));
        await store.acquire(k('live'), input('old-c', { leaseMs: 100_000 }));
        await store.acquire(k('expired-running'), input('old-e', { ttlMs: 50_000 }));
        await store.acquire(k('expired-done'), input('old-d'));
        await store.complete(k('expired-done'), 'old-d', response, { ttlMs: 1_000, now: T0 });
        await store.acquire(k('done'), input('old-f'));
        await store.complete(k('done'), 'old-f', response, { ttlMs: TTL, now: T0 });
        sent.length = 0;
        const now = T0 + 60_000;
        const cases: Array<[string, Partial<AcquireInput>, unknown]> = [
          ['lapsed-same', {}, { kind: 'acquired', takenOver: true }],
          ['lapsed-other', { fingerprint: other }, 'in-progress'],
          ['live', {}, 'in-progress'],
          ['expired-running', { fingerprint: other }, { kind: 'acquired', takenOver: false }],
          ['expired-done', {}, { kind: 'acquired', takenOver: false }],
          ['done', {}, 'completed'],
          ['absent', {}, { kind: 'acquired', takenOver: false }],
        ];
        const results = await Promise.all(
          cases.map(([name, overrides]) =>
            store.acquire(k(name), input(`new-${name}`, { now, ...overrides })),
          ),
        );
        expect(sent).toHaveLength(1);
        expect(sent[0]).toContain('unnest(');
        results.forEach((result, i) => {
          const expected = cases[i]![2];
          if (typeof expected === 'string') expect(result.kind).toBe(expected);
          else expect(result).toEqual(expected);
        });
        const live = results[2]!;
        expect(live.kind === 'in-progress' && [live.record.token, live.record.leaseExpiresAt]).toEqual([
          'old-c',
          T0 + 100_000,
        ]);
        // The taken-over key is fenced: the old token fails, the new one completes (in one batch).
        expect(
          await Promise.all([
            store.complete(k('lapsed-same'), 'old-a', response, { ttlMs: TTL, now }),
            store.complete(k('expired-running'), 'new-expired-running', response, { ttlMs: TTL, now }),
          ]),
        ).toEqual([false, true]);
        expect(await store.complete(k('lapsed-same'), 'new-lapsed-same', response, { ttlMs: TTL, now })).toBe(
          true,
        );
      } finally {
        await store.close();
      }
    });

    it('batches on a client too', async () => {
      const sent: string[] = [];
      const recording = Object.create(client) as Client;
      (recording as { query: unknown }).query = (text: unknown, values?: unknown[]) => {
        sent.push(typeof text === 'string' ? text : (text as { text: string }).text);
        return typeof text === 'string' ? client.query(text, values) : client.query(text as never);
      };
      const store = createPostgresStore({ client: recording, table, pruneIntervalMs: 0 });
      const id = run();
      try {
        await store.migrate();
        sent.length = 0;
        const keys = Array.from({ length: 30 }, (_, i) => `client-batch-${id}-${i}`);
        const results = await Promise.all(keys.map((key) => store.acquire(key, input(`t-${key}`))));
        expect(results.every((r) => r.kind === 'acquired')).toBe(true);
        const completed = await Promise.all(
          keys.map((key) => store.complete(key, `t-${key}`, response, { ttlMs: TTL, now: T0 })),
        );
        expect(completed.every(Boolean)).toBe(true);
        expect(sent.length).toBeLessThanOrEqual(3);
      } finally {
        await store.close();
      }
    });

    it('grants exactly one acquire per key: two pools x 100 concurrent acquires over 20 shared keys', async () => {
      const pools = [newPool(10), newPool(10)];
      const stores = pools.map((pool) => createPostgresStore({ pool, table, pruneIntervalMs: 0 }));
      const id = run();
      try {
        await Promise.all(stores.map((store) => store.migrate()));
        for (let round = 0; round < 2; round++) {
          const keys = Array.from({ length: 20 }, (_, i) => `shared-${id}-${round}-${i}`);
          const calls = stores.flatMap((store, s) =>
            Array.from({ length: 100 }, (_, i) => {
              const key = keys[i % 20]!;
              const token = `s${s}-${i}`;
              return store.acquire(key, input(token)).then((result) => ({ key, token, result }));
            }),
          );
          const answers = await Promise.all(calls);
          for (const key of keys) {
            const mine = answers.filter((a) => a.key === key);
            const winners = mine.filter((a) => a.result.kind === 'acquired');
            expect(winners).toHaveLength(1);
            expect(mine).toHaveLength(10);
            for (const { result } of mine) {
              if (result.kind === 'acquired') continue;
              expect(result.kind).toBe('in-progress');
              if (result.kind === 'in-progress') expect(result.record.token).toBe(winners[0]!.token);
            }
          }
        }
      } finally {
        await Promise.all(stores.map((store) => store.close()));
        await Promise.all(pools.map((pool) => pool.end()));
      }
    });

    it('round-trips binary bodies byte-exact through one batched complete: empty, 0..255, 1 MiB, a view, null', async () => {
      const { pool, sent } = recordingPool();
      const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
      const id = run();
      const backing = randomBytes(1_000);
      const bodies: Array<Uint8Array | null> = [
        new Uint8Array(0),
        Uint8Array.from({ length: 256 }, (_, i) => i),
        new Uint8Array(randomBytes(1024 * 1024)),
        new Uint8Array(backing.buffer, backing.byteOffset + 100, 300), // a view with an offset
        Buffer.from([0, 92, 34, 123, 125, 44, 0]), // NUL, backslash, quote, braces, comma
        null,
      ];
      const keys = bodies.map((_, i) => `binary-${id}-${i}`);
      try {
        await store.migrate();
        await Promise.all(keys.map((key) => store.acquire(key, input(`t-${key}`))));
        sent.length = 0;
        const completed = await Promise.all(
          keys.map((key, i) =>
            store.complete(
              key,
              `t-${key}`,
              { status: 200, headers: [], body: bodies[i]!, bodySize: bodies[i]?.byteLength ?? 7_000_000 },
              { ttlMs: TTL, now: T0 },
            ),
          ),
        );
        expect(completed).toEqual(keys.map(() => true));
        expect(sent).toHaveLength(1);
        for (const [i, key] of keys.entries()) {
          const record = await store.get(key, { now: T0 });
          expect(record?.state).toBe('completed');
          if (record?.state !== 'completed') continue;
          const body = bodies[i]!;
          if (body === null) {
            expect(record.response.body).toBeNull();
            expect(record.response.bodySize).toBe(7_000_000);
            continue;
          }
          expect(record.response.body).toBeInstanceOf(Uint8Array);
          expect(Buffer.from(record.response.body!).equals(Buffer.from(body))).toBe(true);
          expect(record.response.bodySize).toBe(body.byteLength);
        }
        const lengths = await admin.query(
          `SELECT key_hash, octet_length(body) AS n FROM ${table} WHERE key_hash = ANY($1)`,
          [keys.map(keyHash)],
        );
        const byHash = new Map(lengths.rows.map((row) => [row.key_hash, row.n]));
        expect(keys.map((key) => byHash.get(keyHash(key)))).toEqual(bodies.map((b) => b?.byteLength ?? null));
      } finally {
        await store.close();
      }
    });

    it('rejects every call of a failing batch with IdempotencyStoreError (table dropped, migrate: false)', async () => {
      const name = tableName('batch_fail');
      const setup = createPostgresStore({ pool: admin, table: name, pruneIntervalMs: 0 });
      await setup.migrate();
      await setup.close();
      const { pool, sent } = recordingPool();
      const store = createPostgresStore({ pool, table: name, migrate: false, pruneIntervalMs: 0 });
      try {
        const keys = Array.from({ length: 10 }, (_, i) => `fail-${i}`);
        expect(
          (await Promise.all(keys.map((key) => store.acquire(key, input(key))))).map((r) => r.kind),
        ).toEqual(keys.map(() => 'acquired'));
        await admin.query(`DROP TABLE ${name}`);
        sent.length = 0;
        const settled = await Promise.allSettled([
          ...keys.map((key) => store.complete(key, key, response, { ttlMs: TTL, now: T0 })),
          ...keys.map((key) => store.acquire(`${key}-again`, input(key))),
        ]);
        expect(sent.length).toBeLessThanOrEqual(4);
        for (const [i, outcome] of settled.entries()) {
          expect(outcome.status).toBe('rejected');
          if (outcome.status !== 'rejected') continue;
          expect(isIdempotencyStoreError(outcome.reason)).toBe(true);
          expect(outcome.reason.operation).toBe(i < 10 ? 'postgres complete' : 'postgres acquire');
          expect(String(outcome.reason.cause)).toMatch(/does not exist/);
        }
      } finally {
        await store.close();
      }
    });

    it('close() carries out the calls already queued; later calls fail typed; none is left pending', async () => {
      const id = run();
      const quick = createPostgresStore({ pool: admin, table, migrate: false, pruneIntervalMs: 0 });
      const keys = Array.from({ length: 20 }, (_, i) => `closing-${id}-${i}`);
      const acquiring = Promise.all(keys.map((key) => quick.acquire(key, input(`t-${key}`))));
      await within(quick.close(), 2_000, 'close()');
      expect(await within(acquiring, 2_000, 'queued acquires')).toEqual(
        keys.map(() => ({ kind: 'acquired', takenOver: false })),
      );
      await expect(quick.acquire(`${keys[0]}-late`, input('late'))).rejects.toSatisfy(
        isIdempotencyStoreError,
      );
      await expect(
        quick.complete(keys[0]!, `t-${keys[0]}`, response, { ttlMs: TTL, now: T0 }),
      ).rejects.toSatisfy(isIdempotencyStoreError);

      // Behind the (lazy) migration, calls made before close() settle one way or the other.
      const lazy = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
      const calls = [
        ...keys.map((key) => lazy.acquire(`${key}-lazy`, input('t'))),
        ...keys.map((key) => lazy.complete(key, `t-${key}`, response, { ttlMs: TTL, now: T0 })),
      ];
      await lazy.close();
      const settled = await within(Promise.allSettled(calls), 2_000, 'calls on a closing store');
      for (const outcome of settled) {
        if (outcome.status === 'rejected') expect(isIdempotencyStoreError(outcome.reason)).toBe(true);
      }
    });
  });

  const columnsOf = async (name: string) =>
    (
      await admin.query(
        `SELECT column_name, data_type, is_nullable FROM information_schema.columns
         WHERE table_name = $1 ORDER BY ordinal_position`,
        [name],
      )
    ).rows;
  const versionOf = async (name: string) =>
    (await admin.query('SELECT version FROM idemkit_schema WHERE table_name = $1', [name])).rows;

  describe('migrations', () => {
    it('migrates one fresh table exactly once when 8 stores on 8 pools start together', async () => {
      const name = tableName('race');
      const pools = Array.from({ length: 8 }, () => newPool(2));
      const stores = pools.map((pool) => createPostgresStore({ pool, table: name, pruneIntervalMs: 0 }));
      try {
        await Promise.all(stores.map((store, i) => store.acquire(`k${i}`, input(`t${i}`))));
        const found = await admin.query('SELECT count(*)::int AS n FROM pg_class WHERE relname = $1', [name]);
        expect(found.rows).toEqual([{ n: 1 }]);
        expect(await versionOf(name)).toEqual([{ version: 1 }]);
        const index = await admin.query('SELECT indexdef FROM pg_indexes WHERE tablename = $1', [name]);
        expect(index.rows.map((r) => r.indexdef).join('\n')).toMatch(/\(expires_at\)/);
        expect((await admin.query(`SELECT count(*)::int AS n FROM ${name}`)).rows).toEqual([{ n: 8 }]);
        // A second migrate, on this store or a fresh one, changes nothing.
        await stores[0]!.migrate();
        const fresh = createPostgresStore({ pool: admin, table: name, pruneIntervalMs: 0 });
        await fresh.migrate();
        await fresh.close();
        expect(await versionOf(name)).toEqual([{ version: 1 }]);
        expect((await admin.query(`SELECT count(*)::int AS n FROM ${name}`)).rows).toEqual([{ n: 8 }]);
      } finally {
        await Promise.all(stores.map((store) => store.close()));
        await Promise.all(pools.map((pool) => pool.end()));
      }
    });

    it('creates the table again when it was dropped by hand but its version row was left', async () => {
      const name = tableName('dropped');
      const first = createPostgresStore({ pool: admin, table: name, pruneIntervalMs: 0 });
      await first.migrate();
      await first.close();
      await admin.query(`DROP TABLE ${name}`);
      const second = createPostgresStore({ pool: admin, table: name, pruneIntervalMs: 0 });
      expect(await second.acquire('k', input('t'))).toEqual({ kind: 'acquired', takenOver: false });
      expect(await versionOf(name)).toEqual([{ version: 1 }]);
      await second.close();
    });

    it('with migrate: false, a missing table is a typed store error and nothing is created', async () => {
      const name = tableName('missing');
      const store = createPostgresStore({ pool: admin, table: name, migrate: false, pruneIntervalMs: 0 });
      const error = await store.get('k', { now: T0 }).catch((e: unknown) => e);
      expect(isIdempotencyStoreError(error)).toBe(true);
      expect(String((error as Error).cause)).toMatch(/does not exist/);
      await expect(store.acquire('k', input('t'))).rejects.toSatisfy(isIdempotencyStoreError);
      expect((await admin.query('SELECT to_regclass($1) AS t', [name])).rows).toEqual([{ t: null }]);
      await store.close();
    });

    it('prints the schema SQL that migrate runs; a store on it works with migrate: false', async () => {
      expect(postgresSchemaSql()).toContain('CREATE TABLE IF NOT EXISTS idemkit_keys (');
      const name = tableName('printed');
      const sql = postgresSchemaSql({ table: name });
      expect(sql).toContain(`CREATE TABLE IF NOT EXISTS ${name} (`);
      expect(sql).toMatch(/pg_advisory_xact_lock\(-?\d+\)/);
      await admin.query(sql);
      await admin.query(sql); // re-runnable
      expect(await versionOf(name)).toEqual([{ version: 1 }]);
      const migrated = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
      await migrated.migrate();
      await migrated.close();
      expect(await columnsOf(name)).toEqual(await columnsOf(table));

      const store = createPostgresStore({ pool: admin, table: name, migrate: false, pruneIntervalMs: 0 });
      expect(await store.acquire('k', input('t'))).toEqual({ kind: 'acquired', takenOver: false });
      expect(await store.complete('k', 't', response, { ttlMs: TTL, now: T0 })).toBe(true);
      expect((await store.get('k', { now: T0 }))?.state).toBe('completed');
      await store.migrate(); // already current: a no-op
      expect(await versionOf(name)).toEqual([{ version: 1 }]);
      await store.close();
    });
  });

  describe('prune', () => {
    let store: PostgresStore;
    const name = tableName('prune');
    beforeAll(async () => {
      store = createPostgresStore({ pool: admin, table: name, pruneIntervalMs: 0, pruneBatchSize: 1_000 });
      await store.migrate();
    });
    afterAll(() => store?.close());

    it('deletes every expired record in batches and no live one', async () => {
      await admin.query(
        `INSERT INTO ${name} (key_hash, state, fingerprint, method, path, body_hash, created_at,
           expires_at, completed_at, status, headers, body, body_size)
         SELECT 'old-' || i, 'completed', 'f', 'POST', '/', 'b', 0, $1::bigint - i, 0, 200, '[]', '\\x00', 1
         FROM generate_series(1, 2500) AS i`,
        [T0],
      );
      await store.acquire('stale', input('s', { now: T0 - TTL - 1 })); // in progress, expired at T0
      await store.acquire('live', input('l'));
      await store.complete('live', 'l', response, { ttlMs: 1, now: T0 }); // expires at T0 + 1
      await store.acquire('running', input('r'));
      expect(await store.prune({ now: T0 })).toBe(2_501);
      const left = await admin.query(`SELECT key_hash FROM ${name}`);
      expect(left.rows.map((r) => r.key_hash).sort()).toEqual([keyHash('live'), keyHash('running')].sort());
      expect(await store.prune({ now: T0 })).toBe(0);
      expect(await store.prune({ now: T0 + 1, batchSize: 1 })).toBe(1);
    });

    it('prunes on its interval, and reports a failing prune to onPruneError', async () => {
      await admin.query(
        `INSERT INTO ${name} (key_hash, state, fingerprint, method, path, body_hash, created_at, expires_at,
           completed_at, status, headers, body_size) VALUES ($1, 'completed', 'f', 'POST', '/', 'b', 0, 1, 0, 200, '[]', 0)`,
        [keyHash('gone')],
      );
      const errors: Error[] = [];
      const timed = createPostgresStore({ pool: admin, table: name, pruneIntervalMs: 20 });
      const broken = createPostgresStore({
        pool: admin,
        table: tableName('never'),
        migrate: false,
        pruneIntervalMs: 20,
        onPruneError: (error) => errors.push(error),
      });
      try {
        const settled = async () => errors.length > 0 && (await store.get('gone', { now: 0 })) === undefined;
        for (let i = 0; i < 100 && !(await settled()); i++) await sleep(20);
        expect(await store.get('gone', { now: 0 })).toBeUndefined();
        expect(errors.length).toBeGreaterThan(0);
        expect(isIdempotencyStoreError(errors[0])).toBe(true);
      } finally {
        await timed.close();
        await broken.close();
      }
    });

    it('survives an onPruneError hook that throws: no unhandled rejection (regression)', async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      let calls = 0;
      const broken = createPostgresStore({
        pool: admin,
        table: tableName('never_hook'),
        migrate: false,
        pruneIntervalMs: 10,
        onPruneError: () => {
          calls += 1;
          throw new Error('the hook failed');
        },
      });
      try {
        for (let i = 0; i < 100 && calls < 3; i++) await sleep(10);
        await sleep(20); // unhandledRejection is emitted after the microtask queue drains
        expect(calls).toBeGreaterThanOrEqual(3);
        expect(unhandled).toEqual([]);
      } finally {
        await broken.close();
        process.off('unhandledRejection', onUnhandled);
      }
    });
  });

  describe('waitForCompletion over LISTEN/NOTIFY', () => {
    it('wakes a waiter on another pool when the holder completes, releases or the key is pruned', async () => {
      const name = tableName('notify');
      const [poolA, poolB] = [newPool(), newPool()];
      const a = createPostgresStore({ pool: poolA, table: name, pruneIntervalMs: 0 });
      const b = createPostgresStore({ pool: poolB, table: name, pruneIntervalMs: 0 });
      try {
        for (const end of ['complete', 'release', 'prune'] as const) {
          const key = `k-${end}`;
          await a.acquire(key, input(end));
          let woke = false;
          const waiting = b.waitForCompletion(key, { signal: new AbortController().signal }).then(() => {
            woke = true;
          });
          await sleep(50);
          expect(woke).toBe(false);
          const started = Date.now();
          if (end === 'complete') await a.complete(key, end, response, { ttlMs: TTL, now: T0 });
          else if (end === 'release') await a.release(key, end);
          else await a.prune({ now: T0 + TTL });
          await waiting;
          expect(Date.now() - started).toBeLessThan(400); // the notification, not the 500 ms re-check
        }
      } finally {
        await a.close();
        await b.close();
        await poolA.end();
        await poolB.end();
      }
    });

    it('wakes its waiters when the listening connection dies, and listens again on the next wait', async () => {
      const name = tableName('listener');
      const pool = newPool();
      const store = createPostgresStore({ pool, table: name, pruneIntervalMs: 0 });
      try {
        await store.acquire('k', input('t'));
        const waiting = store.waitForCompletion('k', { signal: new AbortController().signal });
        await sleep(50);
        const killed = await admin.query(
          'SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE query = $1',
          [`LISTEN "idemkit:${name}"`],
        );
        expect(killed.rows).toEqual([{ ok: true }]);
        await waiting; // woken: the engine would acquire again
        expect((await store.get('k', { now: T0 }))?.state).toBe('in-progress');
        const again = store.waitForCompletion('k', { signal: new AbortController().signal });
        await sleep(50);
        const started = Date.now();
        await store.release('k', 't');
        await again;
        expect(Date.now() - started).toBeLessThan(400);
      } finally {
        await store.close();
        await pool.end();
      }
    });
  });

  describe('waitForCompletion on a busy pool', () => {
    it('resolves at once on abort or close while LISTEN waits for a pooled connection (regression)', async () => {
      const pool = newPool(2);
      const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
      const fresh = createPostgresStore({ pool, table: tableName('busy'), pruneIntervalMs: 0 });
      await store.acquire('busy-k', input('t')); // migrated: only the wait needs a connection now
      const held: PoolClient[] = [await pool.connect(), await pool.connect()];
      try {
        // On `fresh`, the wait is still behind its migration, which waits for a connection too.
        for (const s of [store, fresh]) {
          const controller = new AbortController();
          const waiting = s.waitForCompletion('busy-k', { signal: controller.signal });
          await sleep(100);
          controller.abort();
          await within(waiting, 500, 'an aborted wait');
        }
        const waiting = store.waitForCompletion('busy-k', { signal: new AbortController().signal });
        await sleep(100);
        const closing = store.close();
        await within(waiting, 500, 'a wait on a closing store');
        await within(closing, 500, 'close()');
      } finally {
        for (const conn of held) conn.release();
      }
      await fresh.migrate(); // its pending migration ran once the pool had a connection again
      await fresh.close();
      // The connection LISTEN was waiting for went back to the pool on arrival.
      for (let i = 0; i < 100 && pool.idleCount < pool.totalCount; i++) await sleep(10);
      expect(pool.totalCount).toBe(pool.idleCount);
      await admin.query(`DELETE FROM ${table} WHERE key_hash = $1`, [keyHash('busy-k')]);
      await pool.end();
    });

    it('refuses a pool with max 1, whose only connection LISTEN would hold (regression)', async () => {
      const tiny = newPool(1);
      try {
        expect(() => createPostgresStore({ pool: tiny, table })).toThrow(IdempotencyConfigError);
        expect(() => createPostgresStore({ pool: tiny, table })).toThrow(/LISTEN.*max >= 2.*client/);
        const store = createPostgresStore({ pool: newPoolLike(tiny), table, pruneIntervalMs: 0 });
        await store.close(); // a pool-like without options.max is taken on trust
      } finally {
        await tiny.end();
      }
    });
  });

  describe('scope keys, isolation levels, statements and times', () => {
    it('stores any scope key: 10,000 characters, or with a NUL (regression)', async () => {
      const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
      try {
        const keys = [`long-${randomBytes(5_000).toString('hex')}`, 'scope\0key\0'];
        for (const key of keys) {
          expect(await store.acquire(key, input('t1'))).toEqual({ kind: 'acquired', takenOver: false });
          expect((await store.acquire(key, input('t2', { now: T0 + 1 }))).kind).toBe('in-progress');
          const waiting = store.waitForCompletion(key, { signal: new AbortController().signal });
          await sleep(20);
          const started = Date.now();
          expect(await store.complete(key, 't1', response, { ttlMs: TTL, now: T0 })).toBe(true);
          await waiting;
          expect(Date.now() - started).toBeLessThan(400); // woken by the notification
          expect((await store.get(key, { now: T0 }))?.state).toBe('completed');
          expect(await store.delete(key, { now: T0 })).toBe(true);
          expect(await store.get(key, { now: T0 })).toBeUndefined();
          // A key nobody holds: the wait returns at once.
          await store.waitForCompletion(key, { signal: new AbortController().signal });
        }
      } finally {
        await store.close();
      }
    });

    it('keeps scope keys that differ only in lone surrogates apart (regression)', async () => {
      const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
      try {
        const [high, low] = ['\uD800\nk', '\uDC00\nk'];
        expect(await store.acquire(high, input('t1'))).toEqual({ kind: 'acquired', takenOver: false });
        expect(await store.acquire(low, input('t2'))).toEqual({ kind: 'acquired', takenOver: false });
        expect(await store.complete(high, 't1', response, { ttlMs: TTL, now: T0 })).toBe(true);
        expect((await store.get(low, { now: T0 }))?.state).toBe('in-progress');
        expect(await store.release(low, 't2')).toBe(true);
        expect(await store.delete(high, { now: T0 })).toBe(true);
      } finally {
        await store.close();
      }
    });

    it('grants exactly one of 30 concurrent acquires under serializable or repeatable read (regression)', async () => {
      for (const level of ['serializable', 'repeatable\\ read']) {
        const pool = new Pool({
          connectionString: DATABASE_URL,
          max: 10,
          options: `-c default_transaction_isolation=${level}`,
        });
        const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
        try {
          const shown = await pool.query('SHOW default_transaction_isolation');
          expect(shown.rows[0]?.default_transaction_isolation).toBe(level.replace('\\', ''));
          await store.migrate();
          // Every connection open first, so the acquires really run at the same time.
          for (const conn of await Promise.all(Array.from({ length: 10 }, () => pool.connect()))) {
            conn.release();
          }
          for (let round = 0; round < 3; round++) {
            const key = `isolation-${level}-${randomBytes(4).toString('hex')}`;
            const results = await Promise.all(
              Array.from({ length: 30 }, (_, i) => store.acquire(key, input(`t${i}`))),
            );
            expect(results.filter((r) => r.kind === 'acquired')).toHaveLength(1);
            expect(results.filter((r) => r.kind === 'in-progress')).toHaveLength(29);
          }
        } finally {
          await store.close();
          await pool.end();
        }
      }
    });

    it('runs renew, release and complete again after a serialization failure (serializable, 8 racers)', async () => {
      const pool = new Pool({
        connectionString: DATABASE_URL,
        max: 10,
        options: '-c default_transaction_isolation=serializable',
      });
      const store = createPostgresStore({ pool, table, pruneIntervalMs: 0, batching: false });
      try {
        await store.migrate();
        for (const conn of await Promise.all(Array.from({ length: 10 }, () => pool.connect())))
          conn.release();
        const key = `serial-${randomBytes(4).toString('hex')}`;
        await store.acquire(key, input('holder'));
        // Concurrent UPDATEs of one row: without the retry, most fail with 40001 (a 503 upstream).
        const renewals = await Promise.all(
          Array.from({ length: 8 }, (_, i) => store.renew(key, 'holder', { leaseMs: 10_000, now: T0 + i })),
        );
        expect(renewals.every((r) => r === true)).toBe(true);
        const ends = await Promise.all([
          ...Array.from({ length: 15 }, () =>
            store.complete(key, 'holder', response, { ttlMs: TTL, now: T0 + 50 }),
          ),
          ...Array.from({ length: 15 }, () => store.release(key, 'holder')),
        ]);
        expect(ends.filter((r) => r === true)).toHaveLength(1);
      } finally {
        await store.close();
        await pool.end();
      }
    });

    it('sends no named statement with namedStatements: false (for PgBouncer transaction pooling)', async () => {
      const sent: unknown[] = [];
      const recording = {
        options: { max: 10 },
        connect: () => admin.connect(),
        query: (text: unknown, values?: unknown[]) => {
          sent.push(text);
          return admin.query(text as string, values);
        },
      };
      for (const namedStatements of [false, true]) {
        sent.length = 0;
        const store = createPostgresStore({ pool: recording, table, pruneIntervalMs: 0, namedStatements });
        const key = `unnamed-${namedStatements}-${randomBytes(4).toString('hex')}`;
        await store.acquire(key, input('t'));
        await store.renew(key, 't', { leaseMs: 10_000, now: T0 });
        await store.complete(key, 't', response, { ttlMs: TTL, now: T0 });
        await store.get(key, { now: T0 });
        await store.delete(key, { now: T0 });
        await store.close();
        const named = sent.filter((text) => typeof text !== 'string');
        expect(named).toHaveLength(namedStatements ? 5 : 0);
      }
    });

    it('keeps times up to Number.MAX_SAFE_INTEGER', async () => {
      const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
      const max = Number.MAX_SAFE_INTEGER;
      try {
        const far = input('t', { ttlMs: max - T0, leaseMs: max - T0 });
        expect(await store.acquire('far-k', far)).toEqual({ kind: 'acquired', takenOver: false });
        const running = await store.acquire('far-k', input('t2', { now: max - 1 }));
        expect(running.kind === 'in-progress' && running.record.leaseExpiresAt).toBe(max);
        expect(running.kind === 'in-progress' && running.record.expiresAt).toBe(max);
        expect(await store.renew('far-k', 't', { leaseMs: 1, now: max - 1 })).toBe(true);
        expect(await store.complete('far-k', 't', response, { ttlMs: 1, now: max - 1 })).toBe(true);
        const done = await store.get('far-k', { now: max - 1 });
        expect(done?.state === 'completed' && [done.completedAt, done.expiresAt]).toEqual([max - 1, max]);
        expect(await store.delete('far-k', { now: max - 1 })).toBe(true);
      } finally {
        await store.close();
      }
    });
  });

  describe('close, failures and restarts', () => {
    it('close() never ends the pool or client passed in, and releases its listening connection', async () => {
      const pool = newPool();
      const onPool = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
      const onClient = createPostgresStore({ client, table, pruneIntervalMs: 0 });
      for (const store of [onPool, onClient]) {
        await store.acquire('close-k', input('t'));
        const waiting = store.waitForCompletion('close-k', { signal: new AbortController().signal });
        await sleep(20);
        await store.close();
        await waiting; // close wakes waiters
        await expect(store.get('close-k', { now: T0 })).rejects.toSatisfy(isIdempotencyStoreError);
        await admin.query(`DELETE FROM ${table} WHERE key_hash = $1`, [keyHash('close-k')]);
      }
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(pool.totalCount).toBe(pool.idleCount);
      await pool.end();
    });

    it('keeps an error listener on its LISTEN connection until close() releases it (regression)', async () => {
      const pool = newPool(2);
      const checkedOut: PoolClient[] = [];
      const store = createPostgresStore({
        pool: {
          ...newPoolLike(pool),
          connect: async () => {
            const conn = await pool.connect();
            checkedOut.push(conn);
            return conn;
          },
        },
        table,
        pruneIntervalMs: 0,
      });
      // Holds UNLISTEN until the test lets it go: the window between detaching and releasing.
      let letGo!: () => void;
      const gate = new Promise<void>((resolve) => {
        letGo = resolve;
      });
      let closing: Promise<void> | undefined;
      try {
        await store.acquire('window-k', input('t'));
        const waiting = store.waitForCompletion('window-k', { signal: new AbortController().signal });
        await sleep(50);
        const conn = checkedOut.at(-1)!;
        const query = conn.query.bind(conn) as (...args: unknown[]) => Promise<unknown>;
        (conn as { query: unknown }).query = (...args: unknown[]) =>
          typeof args[0] === 'string' && args[0].startsWith('UNLISTEN')
            ? gate.then(() => query(...args))
            : query(...args);
        closing = store.close();
        await waiting;
        await sleep(20);
        expect(() => conn.emit('error', new Error('connection lost during close'))).not.toThrow();
        letGo();
        await closing;
        expect(pool.totalCount).toBe(pool.idleCount); // released all the same
      } finally {
        letGo();
        await (closing ?? store.close());
        await admin.query(`DELETE FROM ${table} WHERE key_hash = $1`, [keyHash('window-k')]);
        await pool.end();
      }
    });

    it('surfaces an ended pool or a refused connection as IdempotencyStoreError, and the engine answers 503', async () => {
      const ended = newPool();
      await ended.end();
      const refused = new Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/test' });
      for (const pool of [ended, refused]) {
        const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
        const error = await store.get('k', { now: T0 }).catch((e: unknown) => e);
        expect(isIdempotencyStoreError(error)).toBe(true);
        await expectEngineFailsClosed(store);
        await store.close();
      }
      await refused.end();
    });

    it('stores a fractional clock reading as whole milliseconds', async () => {
      const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
      expect((await store.acquire('fraction', input('t', { now: T0 + 0.5 }))).kind).toBe('acquired');
      expect(await store.renew('fraction', 't', { leaseMs: 10_000, now: T0 + 1.5 })).toBe(true);
      expect((await store.get('fraction', { now: T0 + 0.25 }))?.createdAt).toBe(T0);
      await store.close();
    });

    it('reports a corrupt row as a typed store error', async () => {
      const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
      await store.acquire('corrupt', input('t'));
      await store.complete('corrupt', 't', response, { ttlMs: TTL, now: T0 });
      await admin.query(`UPDATE ${table} SET headers = 'not json' WHERE key_hash = $1`, [keyHash('corrupt')]);
      await expect(store.get('corrupt', { now: T0 })).rejects.toSatisfy(isIdempotencyStoreError);
      await store.close();
    });

    it('reads back records written before a restart with a fresh pool', async () => {
      const before = newPool();
      const first = createPostgresStore({ pool: before, table, pruneIntervalMs: 0 });
      await first.acquire('restart-done', input('t1'));
      await first.complete('restart-done', 't1', response, { ttlMs: TTL, now: T0 + 5 });
      await first.acquire('restart-running', input('t2'));
      await first.close();
      await before.end();

      const after = newPool();
      const second = createPostgresStore({ pool: after, table, pruneIntervalMs: 0 });
      const done = await second.acquire('restart-done', input('t3', { now: T0 + 6 }));
      expect(done.kind).toBe('completed');
      if (done.kind === 'completed') {
        expect(done.record.response.status).toBe(201);
        expect(done.record.response.body).toBeInstanceOf(Uint8Array);
        expect(Buffer.from(done.record.response.body!).equals(Buffer.from(binary))).toBe(true);
        expect(done.record.createdAt).toBe(T0);
        expect(done.record.completedAt).toBe(T0 + 5);
      }
      expect(await second.complete('restart-running', 't2', response, { ttlMs: TTL, now: T0 })).toBe(true);
      await second.close();
      await after.end();
    });
  });

  it('rejects invalid options with IdempotencyConfigError', async () => {
    const bad: unknown[] = [
      undefined,
      {},
      { pool: admin, client },
      { pool: {} },
      { pool: admin, table: 'bad-name' },
      { pool: admin, table: 'x; DROP TABLE users' },
      { pool: admin, pruneIntervalMs: -1 },
      { pool: admin, pruneIntervalMs: 1.5 },
      { pool: admin, pruneBatchSize: 0 },
      { pool: admin, migrate: 'yes' },
      { pool: admin, namedStatements: 'no' },
      { pool: admin, namedStatements: 0 },
      { pool: admin, batching: 'yes' },
      { pool: admin, batching: 1 },
    ];
    for (const options of bad) {
      expect(() => createPostgresStore(options as never)).toThrow(IdempotencyConfigError);
    }
    expect(() => postgresSchemaSql({ table: 'a b' })).toThrow(IdempotencyConfigError);
    const store = createPostgresStore({ pool: admin, table, pruneIntervalMs: 0 });
    await expect(store.prune({ batchSize: 0 })).rejects.toBeInstanceOf(IdempotencyConfigError);
    await store.close();
  });
});
