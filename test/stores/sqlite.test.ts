import fs, { mkdtempSync, rmSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { IdempotencyConfigError, isIdempotencyStoreError } from '../../src/core/errors.js';
import type { AcquireInput, StoredResponse } from '../../src/core/store.js';
import { createSqliteStore, type SqliteStore, sqliteSchemaSql } from '../../src/stores/sqlite.js';
import { acquireInput, describeStoreConformance, expectEngineFailsClosed } from './conformance.js';

const dir = fs.mkdtempSync(join(os.tmpdir(), 'idemkit-sqlite-'));
let files = 0;
const freshPath = () => join(dir, `store-${files++}.db`);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// Everything a case opens, closed after it even when it fails.
const opened: Array<{ close(): unknown }> = [];
afterEach(async () => {
  for (const thing of opened.splice(0).reverse()) await thing.close();
});
function track<T extends { close(): unknown }>(thing: T): T {
  opened.push(thing);
  return thing;
}

const sharedFile = freshPath();
describeStoreConformance('sqlite (file)', async () => {
  const store = createSqliteStore({ path: sharedFile });
  return { store, cleanup: () => store.close() };
});

describeStoreConformance('sqlite (database)', async () => {
  const db = new Database(':memory:');
  const store = createSqliteStore({ database: db });
  return {
    store,
    cleanup: async () => {
      await store.close();
      db.close();
    },
  };
});

const T0 = Date.UTC(2026, 10, 23, 12);
const TTL = 86_400_000;
const input = (overrides: Partial<AcquireInput> = {}) => acquireInput({ now: T0, ttlMs: TTL, ...overrides });
const binary = Uint8Array.from({ length: 300 }, (_, i) => (i * 7) % 256).subarray(20, 280);
const response: StoredResponse = {
  status: 201,
  headers: [['content-type', 'application/octet-stream']],
  body: binary,
  bodySize: binary.byteLength,
};
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const count = (store: SqliteStore) =>
  (store.database.prepare('SELECT count(*) AS n FROM idemkit_keys').get() as { n: number }).n;
const totalChanges = (db: Database.Database) =>
  (db.prepare('SELECT total_changes() AS n').get() as { n: number }).n;
const schemaOf = (db: Database.Database) =>
  db.prepare('SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name').all();
const rejection = (promise: Promise<unknown>) =>
  promise.then(
    () => undefined,
    (error: unknown) => error,
  );

describe('sqlite store: one file, two connections (as two processes)', () => {
  it('sees the other connection’s claim, replays its completion, and wakes a waiter by polling', async () => {
    const path = freshPath();
    const a = track(createSqliteStore({ path, pollIntervalMs: 5 }));
    const b = track(createSqliteStore({ path, pollIntervalMs: 5 }));
    const first = input();
    expect(await a.acquire('k', first)).toEqual({ kind: 'acquired', takenOver: false });
    const held = await b.acquire('k', input({ now: T0 + 1 }));
    expect(held.kind === 'in-progress' && held.record.leaseExpiresAt).toBe(T0 + 10_000);

    let woke = false;
    const waiting = b.waitForCompletion!('k', { signal: new AbortController().signal }).then(() => {
      woke = true;
    });
    await sleep(40);
    expect(woke).toBe(false);
    // `a` cannot notify `b`'s waiters in-process: only b's poll of the row can see this.
    expect(await a.complete('k', first.token, response, { ttlMs: TTL, now: T0 + 2 })).toBe(true);
    await waiting;

    const replay = await b.acquire('k', input({ now: T0 + 3 }));
    expect(replay.kind).toBe('completed');
    if (replay.kind !== 'completed') return;
    expect(Buffer.from(replay.record.response.body!).equals(Buffer.from(binary))).toBe(true);
    expect(replay.record.response.headers).toEqual(response.headers);
  });

  it('fences a holder out once the other connection took its lapsed lease over', async () => {
    const path = freshPath();
    const a = track(createSqliteStore({ path }));
    const b = track(createSqliteStore({ path }));
    const first = input();
    await a.acquire('k', first);
    expect(await b.acquire('k', input({ now: T0 + 10_000 }))).toEqual({ kind: 'acquired', takenOver: true });
    expect(await a.complete('k', first.token, response, { ttlMs: TTL, now: T0 + 10_001 })).toBe(false);
  });

  it('never rewrites the row on a replay (no write reaches the file)', async () => {
    const path = freshPath();
    const store = track(createSqliteStore({ path }));
    const first = input();
    await store.acquire('k', first);
    await store.complete('k', first.token, response, { ttlMs: TTL, now: T0 });
    const watcher = track(new Database(path));
    const version = () => watcher.pragma('data_version', { simple: true });
    const before = version();
    for (let i = 0; i < 5; i += 1)
      expect((await store.acquire('k', input({ now: T0 + i }))).kind).toBe('completed');
    expect(version()).toBe(before);
    await store.delete('k', { now: T0 });
    expect(version()).not.toBe(before);
  });
});

describe('sqlite store: opening', () => {
  it('opens a path in WAL mode, synchronous NORMAL, with the busy timeout', () => {
    const path = freshPath();
    const store = track(createSqliteStore({ path, busyTimeoutMs: 1_234 }));
    expect(store.database.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(store.database.pragma('synchronous', { simple: true })).toBe(1);
    expect(store.database.pragma('busy_timeout', { simple: true })).toBe(1_234);
    const other = track(new Database(path));
    expect(other.pragma('journal_mode', { simple: true })).toBe('wal');
    const defaults = track(createSqliteStore({ path: freshPath() }));
    expect(defaults.database.pragma('busy_timeout', { simple: true })).toBe(5_000);
  });

  it('leaves the journal mode of a database the user opened alone', () => {
    const db = track(new Database(freshPath()));
    track(createSqliteStore({ database: db }));
    expect(db.pragma('journal_mode', { simple: true })).toBe('delete');
  });

  it('records the schema version once; re-opening changes nothing', () => {
    const db = track(new Database(':memory:'));
    track(createSqliteStore({ database: db }));
    track(createSqliteStore({ database: db, table: 'other_keys' }));
    expect(db.prepare('SELECT * FROM idemkit_schema ORDER BY table_name').all()).toEqual([
      { table_name: 'idemkit_keys', version: 1 },
      { table_name: 'other_keys', version: 1 },
    ]);
    const changes = totalChanges(db);
    const schema = schemaOf(db);
    track(createSqliteStore({ database: db }));
    expect(totalChanges(db)).toBe(changes);
    expect(schemaOf(db)).toEqual(schema);
  });

  it('runs exactly sqliteSchemaSql(): applied by hand, the store finds its schema and works', async () => {
    const auto = track(new Database(':memory:'));
    track(createSqliteStore({ database: auto, table: 'keys_x' }));
    const manual = track(new Database(':memory:'));
    manual.exec(sqliteSchemaSql({ table: 'keys_x' }));
    expect(schemaOf(manual)).toEqual(schemaOf(auto));
    const changes = totalChanges(manual);
    const store = track(createSqliteStore({ database: manual, table: 'keys_x' }));
    expect(totalChanges(manual)).toBe(changes);
    const first = input();
    expect((await store.acquire('k', first)).kind).toBe('acquired');
    expect(await store.complete('k', first.token, response, { ttlMs: TTL, now: T0 })).toBe(true);
    expect((await store.get('k', { now: T0 }))?.state).toBe('completed');
  });

  it('reads plain numbers from a database that defaults to BigInt integers', async () => {
    const db = track(new Database(':memory:'));
    db.defaultSafeIntegers(true);
    const store = track(createSqliteStore({ database: db }));
    const first = input();
    await store.acquire('k', first);
    await store.complete('k', first.token, response, { ttlMs: TTL, now: T0 + 5 });
    const record = await store.get('k', { now: T0 });
    expect(record?.state === 'completed' && [record.completedAt, record.response.status]).toEqual([
      T0 + 5,
      201,
    ]);
  });

  it('refuses a schema newer than it knows with the typed error', () => {
    const db = track(new Database(':memory:'));
    db.exec(sqliteSchemaSql());
    db.exec('UPDATE idemkit_schema SET version = 99');
    let error: unknown;
    try {
      createSqliteStore({ database: db });
    } catch (caught) {
      error = caught;
    }
    expect(isIdempotencyStoreError(error)).toBe(true);
    expect(String((error as Error).message)).toMatch(/schema version 99/);
    expect(db.open).toBe(true);
  });

  it('keeps records across close and re-open of the same path', async () => {
    const path = freshPath();
    const before = createSqliteStore({ path });
    const first = input();
    await before.acquire('done', first);
    await before.complete('done', first.token, response, { ttlMs: TTL, now: T0 + 5 });
    await before.acquire('running', input());
    await before.close();

    const after = track(createSqliteStore({ path }));
    const record = await after.get('done', { now: T0 + 6 });
    expect(record?.state === 'completed' && record.completedAt).toBe(T0 + 5);
    if (record?.state !== 'completed') return;
    expect(Buffer.from(record.response.body!).equals(Buffer.from(binary))).toBe(true);
    expect(record.createdAt).toBe(T0);
    expect((await after.acquire('running', input({ now: T0 + 1 }))).kind).toBe('in-progress');
  });
});

describe('sqlite store: prune', () => {
  it('deletes 2,500 expired rows in batches of 1,000 and keeps the live ones', async () => {
    const store = track(createSqliteStore({ path: freshPath(), pruneIntervalMs: 0 }));
    for (let i = 0; i < 2_500; i += 1) {
      const claim = input({ ttlMs: 1_000, leaseMs: 1_000 });
      await store.acquire(`old-${i}`, claim);
      if (i % 2 === 0) await store.complete(`old-${i}`, claim.token, response, { ttlMs: 1_000, now: T0 });
    }
    for (let i = 0; i < 7; i += 1) await store.acquire(`live-${i}`, input());
    expect(store.prune({ now: T0 + 999, batchSize: 1_000 })).toBe(0);
    expect(store.prune({ now: T0 + 1_000, batchSize: 1_000 })).toBe(2_500);
    expect(count(store)).toBe(7);
    expect((await store.get('live-3', { now: T0 + 1_000 }))?.state).toBe('in-progress');
  });

  it('prunes on its timer, with the clock it was given', async () => {
    let now = T0;
    const store = track(createSqliteStore({ path: ':memory:', pruneIntervalMs: 5, now: () => now }));
    await store.acquire('old', input({ ttlMs: 1_000, leaseMs: 1_000 }));
    await store.acquire('live', input());
    await sleep(30);
    expect(count(store)).toBe(2);
    now = T0 + 1_000;
    for (let i = 0; i < 100 && count(store) > 1; i += 1) await sleep(5);
    expect(count(store)).toBe(1);
    expect(await store.get('live', { now })).toBeDefined();
  });

  it('hands a failed scheduled prune to onPruneError as the typed error', async () => {
    const db = new Database(':memory:');
    const errors: unknown[] = [];
    track(
      createSqliteStore({ database: db, pruneIntervalMs: 5, onPruneError: (error) => errors.push(error) }),
    );
    db.close();
    for (let i = 0; i < 100 && errors.length === 0; i += 1) await sleep(5);
    expect(isIdempotencyStoreError(errors[0])).toBe(true);
  });
});

describe('sqlite store: close', () => {
  it('never closes a database the user passed', async () => {
    const db = track(new Database(':memory:'));
    const store = createSqliteStore({ database: db });
    await store.acquire('k', input());
    await store.close();
    expect(db.open).toBe(true);
    expect(db.prepare('SELECT count(*) AS n FROM idemkit_keys').get()).toEqual({ n: 1 });
  });

  it('closes a database it opened, wakes its waiters, and refuses later operations', async () => {
    const store = createSqliteStore({ path: freshPath() });
    await store.acquire('k', input());
    const waiting = store.waitForCompletion!('k', { signal: new AbortController().signal });
    await store.close();
    await waiting;
    expect(store.database.open).toBe(false);
    expect(isIdempotencyStoreError(await rejection(store.acquire('k', input())))).toBe(true);
    expect(isIdempotencyStoreError(await rejection(store.get('k', { now: T0 })))).toBe(true);
    expect(() => store.prune()).toThrow(/sqlite prune/);
    await store.close();
  });
});

describe('sqlite store: errors', () => {
  it('turns every failure of a database the user closed into IdempotencyStoreError', async () => {
    const db = new Database(':memory:');
    const store = track(createSqliteStore({ database: db }));
    db.close();
    const error = await rejection(store.acquire('k', input()));
    expect(isIdempotencyStoreError(error)).toBe(true);
    expect((error as { operation: string }).operation).toBe('sqlite acquire');
    for (const attempt of [
      () => store.renew('k', 't', { leaseMs: 1, now: T0 }),
      () => store.complete('k', 't', response, { ttlMs: TTL, now: T0 }),
      () => store.release('k', 't'),
      () => store.get('k', { now: T0 }),
      () => store.delete('k', { now: T0 }),
      () => store.waitForCompletion!('k', { signal: new AbortController().signal }),
    ]) {
      expect(isIdempotencyStoreError(await rejection(attempt()))).toBe(true);
    }
  });

  it('rejects a pending wait with the typed error when its polls fail', async () => {
    const db = new Database(':memory:');
    const store = track(createSqliteStore({ database: db, pollIntervalMs: 5 }));
    await store.acquire('k', input());
    const waiting = rejection(store.waitForCompletion!('k', { signal: new AbortController().signal }));
    db.close();
    expect(isIdempotencyStoreError(await waiting)).toBe(true);
  });

  it('reports SQLITE_BUSY after the busy timeout as the typed error', async () => {
    const path = freshPath();
    const store = track(createSqliteStore({ path, busyTimeoutMs: 30 }));
    const holder = track(new Database(path));
    holder.exec('BEGIN IMMEDIATE');
    const error = await rejection(store.acquire('k', input()));
    expect(isIdempotencyStoreError(error)).toBe(true);
    expect(((error as Error).cause as { code?: string }).code).toBe('SQLITE_BUSY');
    holder.exec('ROLLBACK');
    expect((await store.acquire('k', input())).kind).toBe('acquired');
  });

  it('reports a corrupt row as the typed error', async () => {
    const store = track(createSqliteStore({ path: ':memory:' }));
    const first = input();
    await store.acquire('k', first);
    await store.complete('k', first.token, response, { ttlMs: TTL, now: T0 });
    store.database.exec(`UPDATE idemkit_keys SET headers = '{"not":"pairs"}'`);
    expect(isIdempotencyStoreError(await rejection(store.get('k', { now: T0 })))).toBe(true);
    expect(isIdempotencyStoreError(await rejection(store.acquire('k', input())))).toBe(true);
  });

  it('answers 503 through the engine, without running the handler, when the database is gone', async () => {
    const db = new Database(':memory:');
    const store = track(createSqliteStore({ database: db }));
    db.close();
    await expectEngineFailsClosed(store);
  });

  it('refuses invalid options with IdempotencyConfigError', () => {
    const db = track(new Database(':memory:'));
    const invalid: unknown[] = [
      {},
      { path: ':memory:', database: db },
      { path: 42 },
      { database: db, busyTimeoutMs: 100 },
      { path: ':memory:', table: 'keys; DROP TABLE x' },
      { path: ':memory:', pruneIntervalMs: -1 },
      { path: ':memory:', pruneBatchSize: 0 },
      { path: ':memory:', pollIntervalMs: 1.5 },
      { path: ':memory:', busyTimeoutMs: '5s' },
    ];
    for (const [i, options] of invalid.entries()) {
      expect(() => createSqliteStore(options as never), `case ${i}`).toThrow(IdempotencyConfigError);
    }
    expect(() => sqliteSchemaSql({ table: 'a-b' })).toThrow(IdempotencyConfigError);
  });
});

describe('sqlite store: group commit', () => {
  it('runs writes asked for in one turn of the event loop in one transaction, each with its own answer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'idemkit-gc-'));
    try {
      const store = track(createSqliteStore({ path: join(dir, 'gc.db') }));
      store.database.pragma('wal_autocheckpoint = 0');
      // WAL frames written since the last checkpoint: every commit appends at least one.
      const framesOf = () => {
        const [row] = store.database.pragma('wal_checkpoint(PASSIVE)') as Array<{ log: number }>;
        store.database.pragma('wal_checkpoint(TRUNCATE)');
        return row!.log;
      };
      framesOf();
      for (let i = 0; i < 20; i++) await store.acquire(`one-by-one-${i}`, input());
      const separate = framesOf();
      const results = await Promise.all([
        ...Array.from({ length: 20 }, (_, i) => store.acquire(`together-${i}`, input())),
        store.acquire('together-0', input()),
      ]);
      const together = framesOf();
      expect(results.slice(0, 20).every((r) => r.kind === 'acquired')).toBe(true);
      expect(results[20]?.kind).toBe('in-progress'); // sees the claim made earlier in the same batch
      expect(separate).toBeGreaterThanOrEqual(20);
      expect(together).toBeLessThan(separate / 4);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('carries out the writes already asked for when closed in the same turn (review finding)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'idemkit-gc-'));
    try {
      const path = join(dir, 'close.db');
      const first = createSqliteStore({ path });
      const claim = input();
      await first.acquire('k', claim);
      const completing = first.complete('k', claim.token, response, { ttlMs: TTL, now: T0 });
      await first.close();
      expect(await completing).toBe(true);
      const reopened = track(createSqliteStore({ path }));
      expect((await reopened.get('k', { now: T0 }))?.state).toBe('completed');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails every write of a batch whose transaction cannot begin (SQLITE_BUSY past the timeout), and recovers', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'idemkit-gc-'));
    try {
      const path = join(dir, 'gc.db');
      const store = track(createSqliteStore({ path, busyTimeoutMs: 50 }));
      const blocker = new Database(path);
      blocker.exec('BEGIN IMMEDIATE');
      const attempts = await Promise.allSettled([store.acquire('a', input()), store.acquire('b', input())]);
      expect(attempts.map((a) => a.status)).toEqual(['rejected', 'rejected']);
      for (const a of attempts) {
        expect(isIdempotencyStoreError((a as PromiseRejectedResult).reason)).toBe(true);
      }
      blocker.exec('ROLLBACK');
      blocker.close();
      expect(await store.acquire('a', input())).toEqual({ kind: 'acquired', takenOver: false });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
