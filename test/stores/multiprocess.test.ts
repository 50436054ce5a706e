import { type ChildProcess, fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { IdempotencyStore } from '../../src/core/store.js';
import { createPostgresStore } from '../../src/stores/postgres.js';
import { createRedisStore } from '../../src/stores/redis.js';
import { createSqliteStore } from '../../src/stores/sqlite.js';
import { type RawResponse, request } from '../helpers/http.js';
import { DATABASE_URL, postgresAvailable, REDIS_URL, redisAvailable } from '../helpers/services.js';

// Several real server processes (test/fixtures/app-process.mjs: node:http + the engine from the build)
// on one shared store. Proves what a single process cannot: one execution per key across processes,
// takeover after a SIGKILL, records that outlive their process.

const redisUp = await redisAvailable();
const postgresUp = await postgresAvailable();

const FIXTURE = new URL('../fixtures/app-process.mjs', import.meta.url).pathname;
const LEASE_MS = 1_000;
const run = `${process.pid}-${Date.now()}`;
const dir = mkdtempSync(join(tmpdir(), 'idemkit-mp-'));
const pgTable = `idemkit_mp_${run.replace(/-/g, '_')}`;
const redisPrefix = `idemkit-mp-${run}:`;

interface Kind {
  name: string;
  up: boolean;
  env: Record<string, string>;
  /** The same store, opened by the test itself to look at records. */
  open(): IdempotencyStore & { close(): Promise<void> };
}
const kinds: Kind[] = [
  {
    name: 'sqlite',
    up: true,
    env: { IDEMKIT_STORE: `sqlite:${join(dir, 'shared.db')}` },
    open: () => createSqliteStore({ path: join(dir, 'shared.db') }),
  },
  {
    name: 'redis',
    up: redisUp,
    env: { IDEMKIT_STORE: REDIS_URL, REDIS_PREFIX: redisPrefix },
    open() {
      const client = new Redis(REDIS_URL);
      const store = createRedisStore({ client, prefix: redisPrefix });
      return {
        ...store,
        close: async () => {
          await store.close();
          client.disconnect();
        },
      };
    },
  },
  {
    name: 'postgres',
    up: postgresUp,
    env: { IDEMKIT_STORE: DATABASE_URL, PG_TABLE: pgTable },
    open() {
      const pool = new pg.Pool({ connectionString: DATABASE_URL });
      const store = createPostgresStore({ pool, table: pgTable });
      return {
        ...store,
        close: async () => {
          await store.close();
          await pool.end();
        },
      };
    },
  },
];

interface App {
  child: ChildProcess;
  url: string;
  executions: number;
}
const children = new Set<ChildProcess>();
let executions: Array<{ pid: number; key: string }> = [];

async function startApp(kind: Kind, env: Record<string, string> = {}): Promise<App> {
  const child = fork(FIXTURE, [], {
    env: { ...process.env, ...kind.env, LEASE_MS: String(LEASE_MS), ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const app: App = { child, url: '', executions: 0 };
  child.on('message', (message: { type: string; key: string; pid: number }) => {
    if (message.type !== 'executed') return;
    app.executions += 1;
    executions.push({ pid: message.pid, key: message.key });
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.on('message', (m: { type: string; port: number }) => m.type === 'listening' && resolve(m.port));
    child.once('exit', (code) => reject(new Error(`app process exited with ${code} before listening`)));
  });
  app.url = `http://127.0.0.1:${port}`;
  return app;
}

async function kill(app: App, signal: NodeJS.Signals = 'SIGKILL') {
  if (app.child.exitCode !== null || app.child.signalCode !== null) return;
  await new Promise((resolve) => {
    app.child.once('exit', resolve);
    app.child.kill(signal);
  });
}

const post = (app: App, key: string, holdMs = 100) =>
  request(`${app.url}/charges`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': key, 'x-hold-ms': String(holdMs) },
    body: '{"amount":1000,"currency":"usd"}',
  });

const scopeKeyOf = (key: string) => `${createHash('sha256').update('').digest('hex')}\n${key}`;
const json = (r: RawResponse) => JSON.parse(r.body.toString('utf8')) as Record<string, unknown>;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

afterEach(async () => {
  await Promise.all([...children].map((child) => kill({ child, url: '', executions: 0 })));
  executions = [];
});
afterAll(async () => {
  if (postgresUp) {
    const client = new pg.Client({ connectionString: DATABASE_URL });
    await client.connect();
    await client.query(`drop table if exists ${pgTable}`);
    await client.query('delete from idemkit_schema where table_name = $1', [pgTable]);
    await client.end();
  }
  if (redisUp) {
    const client = new Redis(REDIS_URL);
    const keys = await client.keys(`${redisPrefix}*`);
    if (keys.length > 0) await client.del(...keys);
    client.disconnect();
  }
  rmSync(dir, { recursive: true, force: true });
});

for (const kind of kinds) {
  describe.runIf(kind.up)(`several processes on one ${kind.name} store`, () => {
    it('4 processes × 25 simultaneous requests with one key → exactly one execution', async () => {
      const apps = await Promise.all([1, 2, 3, 4].map(() => startApp(kind)));
      const key = `burst-${kind.name}-${run}`;
      const answers = await Promise.all(
        apps.flatMap((app) => Array.from({ length: 25 }, () => post(app, key, 300))),
      );
      expect(executions.filter((e) => e.key === key)).toHaveLength(1);
      const created = answers.filter((a) => a.status === 201);
      const inUse = answers.filter((a) => a.status === 409);
      expect(created.length + inUse.length).toBe(100);
      expect(created.length).toBeGreaterThanOrEqual(1);
      for (const a of inUse) expect(json(a).code).toBe('idempotency_key_in_use');
      // After the first finishes, every process replays the one stored answer.
      const replays = await Promise.all(apps.map((app) => post(app, key)));
      const original = created[0]!.body.toString();
      for (const r of replays) {
        expect(r.status).toBe(201);
        expect(r.headers['idempotent-replayed']).toBe('true');
        expect(r.body.toString()).toBe(original);
      }
      expect(executions.filter((e) => e.key === key)).toHaveLength(1);
    }, 60_000);

    it('a process killed with SIGKILL mid-handler: another takes over within leaseMs + 1 s, once, and the dead token cannot complete', async () => {
      const [a, b] = await Promise.all([startApp(kind), startApp(kind)]);
      const key = `crash-${kind.name}-${run}`;
      const hanging = post(a!, key, 60_000).catch((error: unknown) => error);
      while (a!.executions === 0) await sleep(10);
      const observer = kind.open();
      const held = await observer.get(scopeKeyOf(key), { now: Date.now() });
      expect(held?.state).toBe('in-progress');
      const deadToken = held?.state === 'in-progress' ? held.token : '';

      await kill(a!);
      const killedAt = Date.now();
      expect(await hanging).toBeInstanceOf(Error);
      let answer: RawResponse;
      for (;;) {
        answer = await post(b!, key, 50);
        if (answer.status !== 409) break;
        expect(json(answer).code).toBe('idempotency_key_in_use');
        await sleep(50);
      }
      const tookOverAfter = Date.now() - killedAt;
      expect(answer.status).toBe(201);
      console.log(`[${kind.name}] takeover ${tookOverAfter} ms after SIGKILL (leaseMs ${LEASE_MS})`);
      expect(tookOverAfter).toBeLessThanOrEqual(LEASE_MS + 1_000);
      expect(b!.executions).toBe(1);
      expect(executions.filter((e) => e.key === key)).toHaveLength(2); // the killed run and the takeover

      const late = { status: 201, headers: [], body: new TextEncoder().encode('stale'), bodySize: 5 };
      expect(
        await observer.complete(scopeKeyOf(key), deadToken, late, { ttlMs: 60_000, now: Date.now() }),
      ).toBe(false);
      const replay = await post(b!, key);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body.toString()).toBe(answer.body.toString());
      await observer.close();
    }, 30_000);

    it('a retry on another process with waitMs waits for the first to finish and gets its replay', async () => {
      const [first, waiting] = await Promise.all([startApp(kind), startApp(kind, { WAIT_MS: '5000' })]);
      const key = `wait-${kind.name}-${run}`;
      const original = post(first, key, 600);
      while (first.executions === 0) await sleep(10);
      const retry = await post(waiting, key);
      const answer = await original;
      expect(answer.status).toBe(201);
      expect(retry.status).toBe(201);
      expect(retry.headers['idempotent-replayed']).toBe('true');
      expect(retry.body.toString()).toBe(answer.body.toString());
      expect(executions.filter((e) => e.key === key)).toHaveLength(1);
    }, 30_000);

    it('records survive a process restart', async () => {
      const first = await startApp(kind);
      const key = `restart-${kind.name}-${run}`;
      const original = await post(first, key);
      expect(original.status).toBe(201);
      await kill(first);
      const second = await startApp(kind);
      const replay = await post(second, key);
      expect(replay.status).toBe(201);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body.toString()).toBe(original.body.toString());
      expect(second.executions).toBe(0);
    }, 30_000);
  });
}
