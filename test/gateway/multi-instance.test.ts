import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type GatewayProcess,
  killAll,
  startGateway,
  startUpstream,
  type Upstream,
} from '../helpers/gateway.js';
import { problemOf, request } from '../helpers/http.js';
import { type RedisClusterFixture, startRedisCluster } from '../helpers/redis-cluster.js';
import { DATABASE_URL, postgresAvailable, REDIS_URL, redisAvailable } from '../helpers/services.js';

// Two `idemkit serve` processes on one store behave as one: one upstream execution per key, and a
// gateway killed with SIGKILL mid-request is taken over by the other once its lease lapses.

const redisUp = await redisAvailable();
const postgresUp = await postgresAvailable();
const run = `${process.pid}_${Date.now()}`;
const dir = mkdtempSync(join(tmpdir(), 'idemkit-gw-'));
const redisPrefix = `idemkit-gw-${run}:`;
const pgTable = `idemkit_gw_${run}`;

// The cluster is started in beforeAll; its store URL is filled in then.
let cluster: RedisClusterFixture | undefined;
const kinds = [
  { name: 'SQLite', up: true, store: `sqlite:${join(dir, 'shared.db')}` },
  { name: 'Redis', up: redisUp, store: `${REDIS_URL}?prefix=${redisPrefix}` },
  { name: 'Redis Cluster (redis+cluster://)', up: redisUp, store: '' },
  { name: 'PostgreSQL', up: postgresUp, store: `${DATABASE_URL}?table=${pgTable}` },
];

let upstream: Upstream;
beforeAll(async () => {
  upstream = await startUpstream();
  if (redisUp) {
    cluster = await startRedisCluster();
    const nodes = cluster.nodes.map((n) => `${n.host}:${n.port}`).join(',');
    (kinds[2] as { store: string }).store = `redis+cluster://${nodes}`;
  }
}, 60_000);
afterAll(async () => {
  killAll();
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
  if (redisUp) {
    const redis = new Redis(REDIS_URL);
    const keys = await redis.keys(`${redisPrefix}*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  }
  if (postgresUp) {
    const client = new pg.Client({ connectionString: DATABASE_URL });
    await client.connect();
    await client.query(`DROP TABLE IF EXISTS ${pgTable}`);
    await client.end();
  }
});

const post = (gateway: GatewayProcess, path: string, key: string) =>
  request(`${gateway.url}${path}`, {
    headers: { 'content-type': 'application/json', 'idempotency-key': key },
    body: '{"amount":1000,"currency":"usd"}',
  });

const metric = async (gateway: GatewayProcess, series: string) => {
  const text = (await request(`${gateway.url}/metrics`, { method: 'GET' })).body.toString();
  return Number(new RegExp(`^${series} (\\S+)$`, 'm').exec(text)?.[1]);
};

for (const kind of kinds) {
  describe.runIf(kind.up)(`two gateways on one ${kind.name} store`, () => {
    let a: GatewayProcess;
    let b: GatewayProcess;
    beforeAll(async () => {
      const args = ['--upstream', upstream.url, '--store', kind.store, '--lease', '1s'];
      a = await startGateway(args);
      b = await startGateway(args);
    });
    afterAll(async () => {
      await a.stop('SIGKILL');
      await b.stop();
    });

    it('runs the upstream once for 50 simultaneous requests spread over both', async () => {
      const key = randomUUID();
      const answers = await Promise.all(
        Array.from({ length: 50 }, (_, i) => post(i % 2 === 0 ? a : b, '/charges?ms=200', key)),
      );
      const statuses = answers.map((r) => r.status);
      expect(statuses.every((s) => s === 201 || s === 409)).toBe(true);
      expect(statuses).toContain(201);
      expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
      const replay = await post(b, '/charges?ms=200', key);
      const first = answers.find((r) => r.status === 201);
      expect(replay.body.equals(first?.body ?? Buffer.alloc(0))).toBe(true);
    });

    it('keeps renewing the lease while the upstream works longer than it', async () => {
      const key = randomUUID();
      const slow = post(a, '/slow?ms=2600', key);
      await waitFor(async () => (await upstream.count(key)).started === 1);
      await new Promise((resolve) => setTimeout(resolve, 1_600)); // past one whole lease of 1 s
      const meanwhile = await post(b, '/slow?ms=2600', key);
      expect(meanwhile.status).toBe(409);
      expect(problemOf(meanwhile).code).toBe('idempotency_key_in_use');
      const answer = await slow;
      expect(answer.status).toBe(201);
      const replay = await post(b, '/slow?ms=2600', key);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body.equals(answer.body)).toBe(true);
      expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
    });

    it('takes over from a gateway killed with SIGKILL mid-request once its lease lapses', async () => {
      const victim = await startGateway(['--upstream', upstream.url, '--store', kind.store, '--lease', '1s']);
      const key = randomUUID();
      // The first call for this key holds the upstream for 2.5 s; later calls answer at once.
      const cut = post(victim, '/slow?first=2500', key).catch((error: Error) => error);
      await waitFor(async () => (await upstream.count(key)).started === 1);
      await victim.stop('SIGKILL');
      expect(await cut).toBeInstanceOf(Error);

      // While the dead gateway's lease holds, the other answers 409 in use and calls nothing.
      const early = await post(b, '/slow?first=2500', key);
      expect(early.status).toBe(409);
      expect(problemOf(early).code).toBe('idempotency_key_in_use');
      expect((await upstream.count(key)).started).toBe(1);

      // Once it lapses, the retry takes the key over and runs.
      let answer = early;
      await waitFor(async () => {
        answer = await post(b, '/slow?first=2500', key);
        return answer.status !== 409;
      });
      expect(answer.status).toBe(201);
      // The killed gateway's upstream call lost its caller and never finished: one execution.
      expect(await upstream.count(key)).toEqual({ started: 2, finished: 1 });
      const replay = await post(a, '/slow?first=2500', key);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body.equals(answer.body)).toBe(true);
      expect(await metric(b, 'idemkit_lease_takeovers_total')).toBe(1);
    });
  });
}

async function waitFor(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
