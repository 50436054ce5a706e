import { randomBytes } from 'node:crypto';
import { Client, Pool } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createIdempotency } from '../../src/core/engine.js';
import { IdempotencyConfigError, isIdempotencyStoreError } from '../../src/core/errors.js';
import type { AcquireInput, StoredResponse } from '../../src/core/store.js';
import { createPostgresStore, type PostgresStore, postgresSchemaSql } from '../../src/stores/postgres.js';
import { DATABASE_URL, serviceAvailable } from '../helpers/services.js';
import { describeStoreConformance } from './conformance.js';

const available = await serviceAvailable(`PostgreSQL at ${DATABASE_URL}`, async () => {
  const probe = new Client({ connectionString: DATABASE_URL, connectionTimeoutMillis: 2_000 });
  try {
    await probe.connect();
    await probe.query('SELECT 1');
  } finally {
    await probe.end().catch(() => {});
  }
});

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
function input(token: string, overrides: Partial<AcquireInput> = {}): AcquireInput {
  return {
    fingerprint: 'f'.repeat(64),
    request: { method: 'POST', path: '/charges', bodyHash: 'b'.repeat(64) },
    token,
    leaseMs: 10_000,
    ttlMs: TTL,
    now: T0,
    ...overrides,
  };
}
const binary = Uint8Array.from({ length: 512 }, (_, i) => (i * 7) % 256);
const response: StoredResponse = {
  status: 201,
  headers: [['content-type', 'application/octet-stream']],
  body: binary,
  bodySize: binary.byteLength,
};
const newPool = (max = 4) => new Pool({ connectionString: DATABASE_URL, max });
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

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
        `INSERT INTO ${name} (scope_key, state, fingerprint, method, path, body_hash, created_at,
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
      const left = await admin.query(`SELECT scope_key FROM ${name} ORDER BY scope_key`);
      expect(left.rows.map((r) => r.scope_key)).toEqual(['live', 'running']);
      expect(await store.prune({ now: T0 })).toBe(0);
      expect(await store.prune({ now: T0 + 1, batchSize: 1 })).toBe(1);
    });

    it('prunes on its interval, and reports a failing prune to onPruneError', async () => {
      await admin.query(
        `INSERT INTO ${name} (scope_key, state, fingerprint, method, path, body_hash, created_at, expires_at,
           completed_at, status, headers, body_size) VALUES ('gone', 'completed', 'f', 'POST', '/', 'b', 0, 1, 0, 200, '[]', 0)`,
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
        await admin.query(`DELETE FROM ${table} WHERE scope_key = 'close-k'`);
      }
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      expect(pool.totalCount).toBe(pool.idleCount);
      await pool.end();
    });

    it('surfaces an ended pool or a refused connection as IdempotencyStoreError, and the engine answers 503', async () => {
      const ended = newPool();
      await ended.end();
      const refused = new Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/test' });
      for (const pool of [ended, refused]) {
        const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
        const error = await store.get('k', { now: T0 }).catch((e: unknown) => e);
        expect(isIdempotencyStoreError(error)).toBe(true);
        const engine = createIdempotency({ store });
        let ran = false;
        const answer = await engine.handle(
          new Request('http://api.test/charges', {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'idempotency-key': 'key-1' },
            body: '{"amount":1000}',
          }),
          () => {
            ran = true;
            return new Response('created', { status: 201 });
          },
        );
        expect(answer.status).toBe(503);
        expect(ran).toBe(false);
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
      await admin.query(`UPDATE ${table} SET headers = 'not json' WHERE scope_key = 'corrupt'`);
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
