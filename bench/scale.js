// Part of `npm run bench`: how idemkit's cost grows (issue 8, "Scale"), on the node:http face with
// the same handler as bench/run.js, each target in its own process:
//
// - body size, 1 KiB to 5 MiB, JSON and raw bytes: server CPU time per request (from /proc), plain
//   against idemkit on the memory store, what idemkit adds per MiB (linear if that stays flat), and
//   the peak RSS of the process (VmHWM) with 4 requests in flight (memory store of 1,000 records);
// - record count: first-request and replay throughput on Redis and on PostgreSQL with an empty
//   store, then with 10^6 completed records written beside it; on PostgreSQL also the time to prune
//   10^5 expired records among them;
// - concurrency, 1 to 256 connections: throughput and p99 of plain, memory and Redis.
//
// BENCH_SCALE=body,records,concurrency picks parts; BENCH_SCALE_RECORDS (default 1000000).
// Writes bench/results/scale.json (a run of some parts keeps the others from the last run).
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import {
  cpuMs,
  DATABASE_URL,
  dropPostgresTable,
  load,
  prime,
  REDIS_URL,
  removeRedisKeys,
  sendRequests,
  startProcess,
  stopProcess,
  writeResults,
} from './lib.js';

const PARTS = (process.env.BENCH_SCALE ?? 'body,records,concurrency').split(',').filter(Boolean);
const RECORDS = Number(process.env.BENCH_SCALE_RECORDS ?? 1_000_000);
const SAMPLE_S = Number(process.env.BENCH_SCALE_SAMPLE_S ?? 3);
const RUN_ID = `${process.pid}_${Date.now()}`;
const PREFIX = `idemkit-bench-scale-${RUN_ID}:`;
const TABLE = `idemkit_bench_scale_${RUN_ID}`;
const tmp = mkdtempSync(join(os.tmpdir(), 'idemkit-bench-scale-'));
const env = { ...process.env, BENCH_REDIS_PREFIX: PREFIX, BENCH_PG_TABLE: TABLE };
let files = 0;

const start = async (mode, extraEnv = {}) => {
  const targetEnv = { ...env, ...extraEnv, BENCH_SQLITE_PATH: join(tmp, `scale-${files++}.db`) };
  const { child, port } = await startProcess(mode, ['bench/server.js', mode], { env: targetEnv });
  return { child, url: `http://127.0.0.1:${port}/charges` };
};

/** Peak and current resident set of a process, in MiB (/proc/<pid>/status, Linux). */
function rssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? Number.NaN) / 1024;
  return { peak: field('VmHWM'), now: field('VmRSS') };
}

const results = {};

// ---- body size ----------------------------------------------------------------------------
function jsonOfSize(bytes) {
  // An array of small charge-like objects, as an API would take many line items.
  const item = (i) => ({ sku: `sku_${i}`, quantity: i % 7, price: 1999, note: 'x'.repeat(40) });
  const per = JSON.stringify(item(100000)).length + 1;
  const items = Array.from({ length: Math.max(1, Math.floor((bytes - 20) / per)) }, (_, i) => item(i));
  return Buffer.from(JSON.stringify({ items }));
}

async function bodySizes() {
  const rows = [];
  for (const size of [1024, 16 * 1024, 256 * 1024, 1024 * 1024, 5 * 1024 * 1024]) {
    for (const type of ['application/octet-stream', 'application/json']) {
      const body = type === 'application/json' ? jsonOfSize(size) : randomBytes(size);
      // About 256 MiB per sample (at least 40 requests, at most 4,000), 4 in flight.
      const count = Math.min(4000, Math.max(40, Math.floor((256 * 1024 * 1024) / body.length)));
      const row = { bytes: body.length, type, requests: count };
      for (const mode of ['plain', 'memory']) {
        // A memory store of 1,000 records, so that what it holds does not hide what a body costs.
        const target = await start(mode, { BENCH_MAX_ENTRIES: '1000' });
        const options = { body, contentType: type };
        await sendRequests(target.url, 'first', Math.ceil(count / 4), 4, options); // warm-up
        const before = cpuMs(target.child.pid);
        const began = performance.now();
        const bad = await sendRequests(target.url, 'first', count, 4, options);
        const seconds = (performance.now() - began) / 1000;
        const cpu = cpuMs(target.child.pid) - before;
        const rss = rssMiB(target.child.pid);
        await stopProcess(target.child);
        if (bad > 0) throw new Error(`body ${body.length} ${type} ${mode}: ${bad} answers were not 201`);
        row[mode] = { cpuUsPerRequest: (cpu * 1000) / count, rps: count / seconds, peakRssMiB: rss.peak };
      }
      row.addedUsPerRequest = row.memory.cpuUsPerRequest - row.plain.cpuUsPerRequest;
      row.addedUsPerMiB = row.addedUsPerRequest / (body.length / 1048576);
      rows.push(row);
      console.log(
        `body ${String(body.length).padStart(8)} B ${type.padEnd(24)} CPU/req plain ${row.plain.cpuUsPerRequest.toFixed(0)} µs, idemkit ${row.memory.cpuUsPerRequest.toFixed(0)} µs (+${row.addedUsPerMiB.toFixed(0)} µs/MiB); peak RSS ${row.plain.peakRssMiB.toFixed(0)} → ${row.memory.peakRssMiB.toFixed(0)} MiB`,
      );
    }
  }
  results.body = rows;
}

// ---- record count -------------------------------------------------------------------------
async function measurePaths(mode) {
  const out = {};
  for (const path of ['first', 'replay']) {
    const target = await start(mode);
    if (path === 'replay') await prime(target.url);
    await load(target.url, path, 1);
    const result = await load(target.url, path, SAMPLE_S);
    await stopProcess(target.child);
    if (result.non2xx + result.errors + result.timeouts > 0)
      throw new Error(`${mode}/${path}: failed requests`);
    out[path] = { rps: result.requests.average, p99Ms: result.latency.p99 };
  }
  return out;
}

async function fillRedis(count) {
  const { Redis } = await import('ioredis');
  const { createRedisStore } = await import('idemkit/stores/redis');
  const client = new Redis(REDIS_URL);
  const store = createRedisStore({ client, prefix: PREFIX });
  const now = Date.now();
  const headers = JSON.stringify([['content-type', 'application/json']]);
  for (let i = 0; i < count; i += 10_000) {
    const pipeline = client.pipeline();
    for (let j = i; j < Math.min(count, i + 10_000); j++) {
      const key = store.keyOf(`filler\n${j}`);
      // A completed record, field for field as the store's scripts write one.
      pipeline.hset(key, {
        s: 'c',
        f: 'f'.repeat(64),
        m: 'POST',
        p: '/charges',
        bh: 'b'.repeat(64),
        ca: now,
        ex: now + 86_400_000,
        co: now,
        st: 201,
        h: headers,
        b: `{"id":"ch_${j}","amount":1000,"currency":"usd","status":"succeeded"}`,
        bs: 64,
      });
      pipeline.pexpire(key, 86_400_000);
    }
    await pipeline.exec();
  }
  const dbsize = await client.dbsize();
  await store.close();
  client.disconnect();
  return dbsize;
}

/** Runs `fn` with the benchmark's PostgreSQL store (its table migrated) and the pool under it. */
async function withPostgresStore(fn) {
  const { default: pg } = await import('pg');
  const { createPostgresStore } = await import('idemkit/stores/postgres');
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 2 });
  const store = createPostgresStore({ pool, table: TABLE, pruneIntervalMs: 0 });
  try {
    await store.get('create the table', { now: Date.now() }); // runs the migration
    return await fn(store, pool);
  } finally {
    await store.close();
    await pool.end();
  }
}

const fillPostgres = (count) =>
  withPostgresStore(async (_store, pool) => {
    const now = Date.now();
    await pool.query(
      `INSERT INTO ${TABLE} (key_hash, state, fingerprint, method, path, body_hash, created_at, expires_at, completed_at, status, headers, body, body_size)
     SELECT md5('filler' || i) || md5('filler2' || i), 'completed', repeat('f', 64), 'POST', '/charges', repeat('b', 64),
            $1::bigint, $1::bigint + 86400000, $1::bigint, 201, '[["content-type","application/json"]]',
            convert_to('{"id":"ch_' || i || '","status":"succeeded"}', 'UTF8'), 40
     FROM generate_series(1, $2::int) AS i`,
      [now, count],
    );
    await pool.query(`ANALYZE ${TABLE}`);
  });

const prunePostgres = (expired) =>
  withPostgresStore(async (store, pool) => {
    const now = Date.now();
    await pool.query(
      `UPDATE ${TABLE} SET expires_at = $1 WHERE key_hash IN (SELECT key_hash FROM ${TABLE} LIMIT $2)`,
      [now - 1, expired],
    );
    const began = performance.now();
    const removed = await store.prune({ now });
    const ms = performance.now() - began;
    return { removed, ms };
  });

async function recordCounts() {
  const rows = [];
  const redis = { empty: await measurePaths('redis') };
  const keys = await fillRedis(RECORDS);
  redis.full = await measurePaths('redis');
  redis.keysInDatabase = keys;
  rows.push({ store: 'redis', ...redis });
  await removeRedisKeys(PREFIX);

  const postgres = { empty: await measurePaths('postgres') };
  await fillPostgres(RECORDS);
  postgres.full = await measurePaths('postgres');
  postgres.rowsInTable = await withPostgresStore(
    async (_store, pool) => (await pool.query(`SELECT count(*)::int AS n FROM ${TABLE}`)).rows[0].n,
  );
  postgres.prune = await prunePostgres(Math.min(100_000, Math.floor(RECORDS / 10)));
  rows.push({ store: 'postgres', ...postgres });
  for (const r of rows) {
    for (const path of ['first', 'replay']) {
      console.log(
        `records ${r.store} ${path}: empty ${r.empty[path].rps.toFixed(0)} req/s (p99 ${r.empty[path].p99Ms} ms), with ${RECORDS} records ${r.full[path].rps.toFixed(0)} req/s (p99 ${r.full[path].p99Ms} ms), ratio ${(r.full[path].rps / r.empty[path].rps).toFixed(2)}`,
      );
    }
  }
  console.log(
    `postgres prune: ${postgres.prune.removed} expired records removed in ${postgres.prune.ms.toFixed(0)} ms among ${postgres.rowsInTable}`,
  );
  results.records = { count: RECORDS, rows };
}

// ---- concurrency --------------------------------------------------------------------------
async function concurrency() {
  const rows = [];
  for (const connections of [1, 8, 32, 128, 256]) {
    const row = { connections };
    for (const mode of ['plain', 'memory', 'redis']) {
      const target = await start(mode);
      await load(target.url, 'first', 1, connections);
      const result = await load(target.url, 'first', SAMPLE_S, connections);
      await stopProcess(target.child);
      if (result.non2xx + result.errors + result.timeouts > 0)
        throw new Error(`${mode}@${connections}: failures`);
      row[mode] = { rps: result.requests.average, p50Ms: result.latency.p50, p99Ms: result.latency.p99 };
    }
    rows.push(row);
    console.log(
      `connections ${String(connections).padStart(3)}: ${['plain', 'memory', 'redis'].map((m) => `${m} ${row[m].rps.toFixed(0)} req/s p99 ${row[m].p99Ms} ms`).join(', ')}`,
    );
  }
  results.concurrency = rows;
}

try {
  if (PARTS.includes('body')) await bodySizes();
  if (PARTS.includes('records')) await recordCounts();
  if (PARTS.includes('concurrency')) await concurrency();
} finally {
  rmSync(tmp, { recursive: true, force: true });
  await removeRedisKeys(PREFIX);
  await dropPostgresTable(TABLE);
}
// A run of some parts (BENCH_SCALE) keeps the other parts of the last run, each with its own time.
const previous = existsSync('bench/results/scale.json')
  ? JSON.parse(readFileSync('bench/results/scale.json', 'utf8'))
  : {};
const at = new Date().toISOString();
const parts = Object.fromEntries(Object.entries(results).map(([part, value]) => [part, { at, value }]));
writeResults('scale', { sampleS: SAMPLE_S, parts: { ...previous.parts, ...parts } });
