// What the benchmarks share: the request body, the autocannon load, the replay-key priming, medians
// and child processes that print "listening <port>".
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import autocannon from 'autocannon';

export const DURATION_S = Number(process.env.BENCH_DURATION_S ?? 5);
export const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
export const WARMUP_S = Number(process.env.BENCH_WARMUP_S ?? 2);
export const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const BODY = JSON.stringify({
  amount: 1000,
  currency: 'usd',
  description: 'benchmark charge',
  customer: 'cus_123',
});

// The replay path replays one key that a single request stored first (else the opening burst of
// concurrent requests would meet it in progress).
export const REPLAY_KEY = `replay-${randomUUID()}`;

export async function prime(url) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': REPLAY_KEY },
    body: BODY,
  });
  await response.arrayBuffer();
  if (response.status !== 201) throw new Error(`priming the replay key answered ${response.status}`);
}

/** Runs autocannon: `first` sends a new key per request, `replay` the primed key. */
export function load(url, path, duration = DURATION_S, connections = CONNECTIONS) {
  return new Promise((resolve, reject) => {
    autocannon(
      {
        url,
        connections,
        duration,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: BODY,
        requests: [
          {
            setupRequest(request) {
              request.headers['idempotency-key'] = path === 'first' ? randomUUID() : REPLAY_KEY;
              return request;
            },
          },
        ],
      },
      (error, result) => (error ? reject(error) : resolve(result)),
    );
  });
}

/**
 * CPU time (user + system) a process has used, in ms, from /proc (Linux); undefined elsewhere.
 * Fields 14 and 15 of /proc/<pid>/stat count clock ticks of 10 ms (proc(5)).
 */
export function cpuMs(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Starts `node <args>` and resolves once it reports its port: on stdout ("listening <port>"), or,
 * with `logFile` (stdout goes there, so reading it costs the benchmark nothing), in that file.
 */
export function startProcess(name, args, { env = process.env, logFd, logFile } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', logFd ?? 'pipe', 'inherit'],
      env,
    });
    const timer = setTimeout(() => reject(new Error(`${name} did not start`)), 15_000);
    const found = (text) => {
      const match = /listening (\d+)/.exec(text) ?? /"event":"listening".*?"port":(\d+)/.exec(text);
      if (match === null) return false;
      clearTimeout(timer);
      clearInterval(poll);
      resolve({ child, port: Number(match[1]) });
      return true;
    };
    const poll =
      logFile === undefined ? undefined : setInterval(() => found(readFileSync(logFile, 'utf8')), 50);
    child.stdout?.on('data', (data) => found(String(data)));
    child.on('exit', (code) => {
      clearTimeout(timer);
      clearInterval(poll);
      reject(new Error(`${name} exited with ${code}`));
    });
  });
}

export function stopProcess(child) {
  return new Promise((resolve) => {
    child.removeAllListeners('exit');
    if (child.exitCode !== null) return resolve();
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
}

/**
 * Sends `count` requests, `concurrency` at a time, on keep-alive connections (for counting work per
 * request rather than throughput): `first` a new key each, `replay` the primed key; the body is the
 * benchmark's JSON unless given. Resolves with the number of answers that were not 201.
 */
export async function sendRequests(
  url,
  path,
  count,
  concurrency = 4,
  { body = BODY, contentType = 'application/json' } = {},
) {
  const { default: http } = await import('node:http');
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const send = (key) =>
    new Promise((resolve, reject) => {
      const request = http.request(
        url,
        { method: 'POST', agent, headers: { 'content-type': contentType, 'idempotency-key': key } },
        (response) => {
          response.resume();
          response.on('end', () => resolve(response.statusCode));
        },
      );
      request.on('error', reject);
      request.end(body);
    });
  let left = count;
  let bad = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (left-- > 0) if ((await send(path === 'first' ? randomUUID() : REPLAY_KEY)) !== 201) bad++;
    }),
  );
  agent.destroy();
  return bad;
}

/** Deletes the Redis keys a benchmark wrote under `prefix`. */
export async function removeRedisKeys(prefix) {
  const { Redis } = await import('ioredis');
  const client = new Redis(REDIS_URL);
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await client.del(...keys);
  } while (cursor !== '0');
  client.disconnect();
}

/** Drops a table a benchmark's PostgreSQL store created, and its row in the store's schema table. */
export async function dropPostgresTable(table) {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: DATABASE_URL });
  await client.connect();
  try {
    await client.query(`drop table if exists ${table}`);
    await client.query('delete from idemkit_schema where table_name = $1', [table]).catch(() => {});
  } finally {
    await client.end();
  }
}

/** Writes `bench/results/<name>.json`: the figures with the time and the machine they were taken on. */
export function writeResults(name, figures) {
  const machine = {
    node: process.version,
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    platform: `${os.platform()} ${os.release()}`,
  };
  mkdirSync('bench/results', { recursive: true });
  writeFileSync(
    `bench/results/${name}.json`,
    JSON.stringify({ at: new Date().toISOString(), machine, ...figures }, null, 2),
  );
}
