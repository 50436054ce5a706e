import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { DATABASE_URL, postgresAvailable, REDIS_URL, redisAvailable } from '../helpers/services.js';
import { runChaos } from './chaos.js';

// Chaos: three instances on one store, 5,000 logical operations each in CI (`npm run chaos`: 20,000;
// CHAOS_OPS sets it) through the client
// with retries, a random instance SIGKILLed and restarted every 2 s. Counted from the handlers' own
// execution log: no operation's handler completes twice in live instances, and every caller gets
// its own operation's one stored response or a retryable error.

const OPS = Number(process.env.CHAOS_OPS ?? 5_000);
const CONCURRENCY = Number(process.env.CHAOS_CONCURRENCY ?? 200);
const redisUp = await redisAvailable();
const postgresUp = await postgresAvailable();
const run = `${process.pid}_${Date.now()}`;
const dir = mkdtempSync(join(tmpdir(), 'idemkit-chaos-'));
const prefixes: string[] = [];
const tables: string[] = [];

afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  if (redisUp && prefixes.length > 0) {
    const redis = new Redis(REDIS_URL);
    for (const prefix of prefixes) {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length > 0) await redis.del(...keys);
    }
    redis.disconnect();
  }
  if (postgresUp && tables.length > 0) {
    const client = new pg.Client({ connectionString: DATABASE_URL });
    await client.connect();
    for (const table of tables) await client.query(`DROP TABLE IF EXISTS ${table}`);
    await client.query('DELETE FROM idemkit_schema WHERE table_name = ANY($1)', [tables]).catch(() => {});
    await client.end();
  }
});

const setups = [
  { kind: 'gateway', store: 'redis', up: redisUp },
  { kind: 'gateway', store: 'postgres', up: postgresUp },
  { kind: 'app', store: 'redis', up: redisUp },
  { kind: 'app', store: 'postgres', up: postgresUp },
] as const;

describe('chaos: SIGKILL a random instance every 2 s under load', () => {
  for (const setup of setups) {
    it.runIf(setup.up)(
      `3 ${setup.kind === 'gateway' ? 'gateways' : 'node:http apps'} on ${setup.store}: ${OPS} operations, 0 duplicates`,
      async () => {
        const name = `${setup.kind}_${setup.store}_${run}`;
        let store: string;
        let env: NodeJS.ProcessEnv = {};
        if (setup.store === 'redis') {
          const prefix = `idemkit-chaos-${name}:`;
          prefixes.push(prefix);
          store = setup.kind === 'gateway' ? withParam(REDIS_URL, 'prefix', prefix) : REDIS_URL;
          env = { REDIS_PREFIX: prefix };
        } else {
          const table = `idemkit_chaos_${name}`;
          tables.push(table);
          store = setup.kind === 'gateway' ? withParam(DATABASE_URL, 'table', table) : DATABASE_URL;
          env = { PG_TABLE: table };
        }
        const report = await runChaos({
          kind: setup.kind,
          store,
          env,
          log: join(dir, `${name}.log`),
          operations: OPS,
          concurrency: CONCURRENCY,
          killEveryMs: 2_000,
          // 3 s: the lease must outlast the store's worst delay under this load (see README).
          leaseMs: Number(process.env.CHAOS_LEASE_MS ?? 3_000),
        });
        console.log(
          `[chaos] ${setup.kind} on ${setup.store}: ${JSON.stringify({ ...report, duplicates: report.duplicates.length, wrongAnswers: report.wrongAnswers.length, unsettled: report.unsettled.length })}`,
        );
        expect(report.kills).toBeGreaterThan(0);
        expect(report.duplicates).toEqual([]);
        expect(report.wrongAnswers).toEqual([]);
        expect(report.unsettled).toEqual([]);
        expect(report.unexpectedExits).toEqual([]);
        // Re-runs after a crash: at most what the killed instances had in flight.
        expect(report.reRunAfterCrash).toBeLessThanOrEqual(report.kills * CONCURRENCY);
        expect(report.answered + report.retryableErrors).toBe(report.calls);
        // Every operation ran: at least one completed execution each.
        expect(report.executions).toBeGreaterThanOrEqual(OPS);
      },
      600_000,
    );
  }
});

function withParam(url: string, name: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(name, value);
  return u.href;
}
