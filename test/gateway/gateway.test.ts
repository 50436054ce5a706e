import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type GatewayProcess,
  killAll,
  startGateway,
  startUpstream,
  type Upstream,
} from '../helpers/gateway.js';
import { openSocket, problemOf, request } from '../helpers/http.js';
import { redisAvailable } from '../helpers/services.js';

// The gateway as an operator runs it: `idemkit serve` from the build, in its own process, in front
// of a real upstream process (test/fixtures/upstream.mjs) that counts what it executes.

const TOKEN = 'admin-token-0123456789';
const redisUp = await redisAvailable(); // CI installs redis-server; this suite runs its own
let upstream: Upstream;
let gateway: GatewayProcess;

beforeAll(async () => {
  upstream = await startUpstream();
  gateway = await startGateway([
    '--upstream',
    upstream.url,
    '--store',
    'memory:',
    '--max-body',
    '64kb',
    '--admin-token',
    TOKEN,
    '--upstream-timeout',
    '400ms',
  ]);
});
afterAll(killAll);

const json = (value: unknown) => JSON.stringify(value);
const post = (path: string, key: string | undefined, body = json({ amount: 1000, currency: 'usd' })) =>
  request(`${gateway.url}${path}`, {
    headers: {
      'content-type': 'application/json',
      ...(key === undefined ? {} : { 'idempotency-key': key }),
    },
    body,
  });

describe('idemkit serve in front of a real upstream', () => {
  it('replays the stored response byte for byte and runs the upstream once', async () => {
    const key = randomUUID();
    const first = await post('/charges', key);
    expect(first.status).toBe(201);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const again = await post('/charges', key, json({ currency: 'usd', amount: 1000 })); // same JSON, other order
    expect(again.status).toBe(201);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body.equals(first.body)).toBe(true);
    expect(again.headers['x-charge-count']).toBe('1');
    expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
  });

  it('replays a streamed binary response byte for byte, without Set-Cookie', async () => {
    const key = randomUUID();
    const first = await post('/binary', key, 'x');
    expect(first.status).toBe(201);
    expect(first.body.length).toBe(65_536);
    expect(first.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    const again = await post('/binary', key, 'x');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body.equals(first.body)).toBe(true);
    expect(again.headers['set-cookie']).toBeUndefined();
    expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
  });

  it('answers 409 problem+json to the same key with another body, and the upstream never sees it', async () => {
    const key = randomUUID();
    expect((await post('/charges', key)).status).toBe(201);
    const conflict = await post('/charges', key, json({ amount: 2000, currency: 'usd' }));
    expect(conflict.status).toBe(409);
    expect(conflict.headers['content-type']).toBe('application/problem+json');
    const problem = problemOf(conflict);
    expect(problem.code).toBe('idempotency_key_reused');
    expect(problem.original_request).toMatchObject({ method: 'POST', path: '/charges' });
    expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
  });

  it('answers 400 problem+json to a guarded request without a key', async () => {
    const response = await post('/charges', undefined);
    expect(response.status).toBe(400);
    expect(problemOf(response).code).toBe('idempotency_key_missing');
    expect(await upstream.count('')).toEqual({ started: 0, finished: 0 });
  });

  it('runs the upstream once for 50 simultaneous requests with one key', async () => {
    const key = randomUUID();
    const answers = await Promise.all(Array.from({ length: 50 }, () => post('/charges?ms=150', key)));
    const statuses = answers.map((a) => a.status);
    expect(statuses.filter((s) => s === 201).length).toBeGreaterThanOrEqual(1);
    expect(statuses.every((s) => s === 201 || s === 409)).toBe(true);
    for (const answer of answers.filter((a) => a.status === 409)) {
      expect(problemOf(answer).code).toBe('idempotency_key_in_use');
      expect(answer.headers['retry-after']).toBe('1');
    }
    expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
  });

  it('passes unguarded requests through untouched, key or not', async () => {
    const key = randomUUID();
    const put = () =>
      request(`${gateway.url}/echo?x=1`, {
        method: 'PUT',
        headers: { 'idempotency-key': key, 'content-type': 'text/plain' },
        body: 'abc',
      });
    const first = await put();
    const second = await put();
    for (const answer of [first, second]) {
      expect(answer.status).toBe(200);
      expect(answer.headers['idempotent-replayed']).toBeUndefined();
      const seen = JSON.parse(answer.body.toString()) as { method: string; url: string; bytes: number };
      expect(seen).toMatchObject({ method: 'PUT', url: '/echo?x=1', bytes: 3 });
    }
    expect(await upstream.count(key)).toEqual({ started: 2, finished: 2 });
  });

  it('strips hop-by-hop headers both ways and sets X-Forwarded-*', async () => {
    const response = await request(`${gateway.url}/echo`, {
      headers: {
        'idempotency-key': randomUUID(),
        connection: 'keep-alive, x-drop-me',
        'x-drop-me': 'secret',
        te: 'trailers',
        expect: '100-continue',
        'x-forwarded-for': '203.0.113.7',
        'x-forwarded-proto': 'https',
        'x-forwarded-host': 'evil.example',
        'x-kept': 'yes',
      },
      body: 'hello',
    });
    expect(response.status).toBe(200);
    const seen = JSON.parse(response.body.toString()) as { headers: Record<string, string>; bytes: number };
    expect(seen.headers['x-drop-me']).toBeUndefined();
    expect(seen.headers.te).toBeUndefined();
    expect(seen.headers['x-kept']).toBe('yes');
    expect(seen.headers['x-forwarded-for']).toBe('203.0.113.7, 127.0.0.1');
    expect(seen.headers.expect).toBeUndefined(); // answered by the gateway, which sent 100 Continue
    // Without --trust-proxy, a client's X-Forwarded-Proto and -Host are replaced by this hop's.
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe(`127.0.0.1:${gateway.port}`);
    expect(seen.headers.host).toBe(new URL(upstream.url).host);
    expect(seen.bytes).toBe(5);
    // The upstream's own hop-by-hop headers do not reach the client.
    expect(response.headers['x-hop']).toBeUndefined();
    expect(response.headers['keep-alive']).not.toBe('timeout=99');
  });

  it('answers 413 problem+json to a body over --max-body, guarded or not, without calling the upstream', async () => {
    const key = randomUUID();
    const big = Buffer.alloc(65 * 1024, 'a');
    const guarded = await post('/charges', key, big.toString());
    expect(guarded.status).toBe(413);
    expect(problemOf(guarded).code).toBe('request_body_too_large');
    const unguarded = await request(`${gateway.url}/charges`, { method: 'PUT', body: big });
    expect(unguarded.status).toBe(413);
    expect(unguarded.headers['content-type']).toBe('application/problem+json');
    const chunked = await request(`${gateway.url}/charges`, {
      method: 'PUT',
      body: [big.subarray(0, 40_000), big.subarray(40_000)],
    });
    expect(chunked.status).toBe(413);
    expect(await upstream.count(key)).toEqual({ started: 0, finished: 0 });
    // A declared length over the limit never reaches the upstream; a chunked body is cut off there.
    const declared = await request(`${gateway.url}/charges`, {
      method: 'PUT',
      headers: { 'idempotency-key': `${key}-declared` },
      body: big,
    });
    expect(declared.status).toBe(413);
    expect(await upstream.count(`${key}-declared`)).toEqual({ started: 0, finished: 0 });
    expect(await upstream.cut(`${key}-declared`)).toBe(0);
  });

  it('releases the key when the upstream answers 5xx, so the retry calls it again', async () => {
    const key = randomUUID();
    const first = await post('/fail', key);
    expect(first.status).toBe(503);
    expect(first.body.toString()).toBe('upstream overloaded'); // the upstream's own answer, passed on
    const retry = await post('/fail', key);
    expect(retry.status).toBe(503);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
    expect(await upstream.count(key)).toEqual({ started: 2, finished: 2 });
  });

  it('keeps one key of two callers apart (scope from Authorization)', async () => {
    const key = randomUUID();
    const as = (authorization: string) =>
      request(`${gateway.url}/charges`, {
        headers: { 'idempotency-key': key, 'content-type': 'application/json', authorization },
        body: '{"amount":1}',
      });
    const alice = await as('Bearer alice');
    const bob = await as('Bearer bob');
    expect(alice.status).toBe(201);
    expect(bob.status).toBe(201);
    expect(bob.headers['idempotent-replayed']).toBeUndefined();
    expect(bob.body.equals(alice.body)).toBe(false);
    expect((await as('Bearer alice')).body.equals(alice.body)).toBe(true);
    expect(await upstream.count(key)).toEqual({ started: 2, finished: 2 });
  });

  it('answers 504 when the upstream is slower than --upstream-timeout, and releases the key', async () => {
    const key = randomUUID();
    const slow = await post('/slow?first=1500', key);
    expect(slow.status).toBe(504);
    expect(slow.headers['content-type']).toBe('application/problem+json');
    expect(problemOf(slow).code).toBe('upstream_timeout');
    // Released: the retry runs again at once (the upstream answers fast the second time).
    const retry = await post('/slow?first=1500', key);
    expect(retry.status).toBe(201);
    expect((await post('/slow?first=1500', key)).headers['idempotent-replayed']).toBe('true');
  });

  it('stores the status without the body when the upstream breaks off its answer, and never runs it again', async () => {
    const key = randomUUID();
    const broken = await post('/break', key);
    expect(broken.status).toBe(502);
    expect(problemOf(broken).code).toBe('upstream_unreachable');
    const retry = await post('/break', key);
    expect(retry.status).toBe(409);
    expect(problemOf(retry).code).toBe('idempotency_response_not_stored');
    expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
  });

  it('keeps the key in use when the connection is cut after the request went out', async () => {
    const key = randomUUID();
    const cutOff = await post('/reset', key);
    expect(cutOff.status).toBe(502);
    // The upstream may have done the work: no second call before the lease lapses.
    const retry = await post('/reset', key);
    expect(retry.status).toBe(409);
    expect(problemOf(retry).code).toBe('idempotency_key_in_use');
    expect((await upstream.count(key)).started).toBe(1);
  });

  it('passes on an answer too long to store, and a retry is told it was not stored', async () => {
    const key = randomUUID();
    const first = await post('/big', key);
    expect(first.status).toBe(201);
    expect(first.body.length).toBe(24 * 65_536);
    expect(first.body.every((byte) => byte === 7)).toBe(true);
    const retry = await post('/big', key);
    expect(retry.status).toBe(409);
    expect(problemOf(retry).code).toBe('idempotency_response_not_stored');
    expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
  });

  it('guards a request sent in absolute form, as to a proxy', async () => {
    const socket = await openSocket(gateway.url);
    const body = '{"amount":1}';
    socket.write(
      `POST http://api.example/charges HTTP/1.1\r\nHost: api.example\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    );
    let text = '';
    for await (const chunk of socket) text += String(chunk);
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(text).toContain('idempotency_key_missing');
  });

  it('answers /healthz after a store round trip', async () => {
    const response = await request(`${gateway.url}/healthz`, { method: 'GET' });
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body.toString())).toEqual({ status: 'ok' });
  });

  it('counts outcomes, replays, conflicts and store latency in /metrics', async () => {
    const response = await request(`${gateway.url}/metrics`, { method: 'GET' });
    const text = response.body.toString();
    const value = (series: string) =>
      Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1]);
    expect(value('idemkit_requests_total{outcome="replayed"}')).toBeGreaterThanOrEqual(3);
    expect(value('idemkit_replays_total')).toBe(value('idemkit_requests_total{outcome="replayed"}'));
    expect(value('idemkit_conflicts_total{reason="reused"}')).toBeGreaterThanOrEqual(1);
    expect(value('idemkit_conflicts_total{reason="in_use"}')).toBeGreaterThanOrEqual(1);
    expect(value('idemkit_requests_total{outcome="rejected"}')).toBeGreaterThanOrEqual(1);
    expect(value('idemkit_upstream_failures_total{kind="timeout"}')).toBeGreaterThanOrEqual(1);
    expect(value('idemkit_store_duration_seconds_count{operation="acquire"}')).toBeGreaterThan(50);
    expect(value('idemkit_lease_takeovers_total')).toBe(0);
  });

  it('logs every decision as JSON with its key, never a body', async () => {
    const key = randomUUID();
    await post('/charges', key, json({ amount: 4242, currency: 'secret-body-marker' }));
    await post('/charges', key, json({ amount: 4242, currency: 'secret-body-marker' }));
    await new Promise((resolve) => setTimeout(resolve, 200)); // the log is written asynchronously
    const mine = gateway.logs.filter((entry) => entry.key === key).map((entry) => entry.event);
    expect(mine).toEqual(['claimed', 'completed', 'replayed']);
    expect(JSON.stringify(gateway.logs)).not.toContain('secret-body-marker');
  });

  it('guards the admin lookup API with --admin-token', async () => {
    const key = randomUUID();
    await post('/charges', key);
    const url = `${gateway.url}/_idemkit/keys/${key}`;
    const without = await request(url, { method: 'GET' });
    expect(without.status).toBe(401);
    expect(problemOf(without).code).toBe('unauthorized');
    const wrong = await request(url, { method: 'GET', headers: { authorization: `Bearer ${TOKEN}x` } });
    expect(wrong.status).toBe(401);
    const found = await request(url, { method: 'GET', headers: { authorization: `bearer ${TOKEN}` } });
    expect(found.status).toBe(200);
    const record = JSON.parse(found.body.toString()) as Record<string, unknown>;
    expect(record).toMatchObject({ idempotency_key: key, status: 'completed' });
    // Another caller's scope does not see it.
    const other = await request(`${url}?scope=${'0'.repeat(64)}`, {
      method: 'GET',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(other.status).toBe(404);
    // DELETE forgets the completed key: the next request with it runs again.
    const forget = await request(url, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(forget.status).toBe(204);
    expect(
      (await request(url, { method: 'GET', headers: { authorization: `Bearer ${TOKEN}` } })).status,
    ).toBe(404);
    expect((await post('/charges', key)).headers['idempotent-replayed']).toBeUndefined();
    expect(await upstream.count(key)).toEqual({ started: 2, finished: 2 });
  });
});

describe('idemkit serve with --route and --no-require-key', () => {
  it('guards only the listed routes, and lets keyless requests through when keys are optional', async () => {
    const gw = await startGateway([
      '--upstream',
      upstream.url,
      '--store',
      'memory:',
      '--route',
      'POST /charges',
      '--route',
      'PATCH /charges/:id',
      '--no-require-key',
    ]);
    const key = randomUUID();
    const send = (
      path: string,
      method = 'POST',
      headers: Record<string, string> = { 'idempotency-key': key },
    ) =>
      request(`${gw.url}${path}`, {
        method,
        headers: { 'content-type': 'application/json', ...headers },
        body: '{}',
      });
    // Not a listed route: forwarded as is, every time, key or not.
    expect((await send('/echo')).headers['idempotent-replayed']).toBeUndefined();
    expect((await send('/echo')).headers['idempotent-replayed']).toBeUndefined();
    expect(await upstream.count(key)).toEqual({ started: 2, finished: 2 });
    // A listed route: guarded.
    expect((await send('/charges')).status).toBe(201);
    expect((await send('/charges')).headers['idempotent-replayed']).toBe('true');
    expect(await upstream.count(key)).toEqual({ started: 3, finished: 3 });
    // Without a key, passed through unguarded instead of 400.
    expect((await send('/charges', 'POST', {})).status).toBe(201);
    await gw.stop();
  });
});

describe('idemkit serve when the upstream is down', () => {
  it('answers 502 when the upstream refuses the connection, and releases the key', async () => {
    const port = await freePort();
    const down = await startGateway(['--upstream', `http://127.0.0.1:${port}`, '--store', 'memory:']);
    const key = randomUUID();
    const send = () =>
      request(`${down.url}/charges`, {
        headers: { 'idempotency-key': key, 'content-type': 'application/json' },
        body: '{"amount":1}',
      });
    const refused = await send();
    expect(refused.status).toBe(502);
    expect(problemOf(refused).code).toBe('upstream_unreachable');
    const late = await startUpstream(port);
    const retry = await send();
    expect(retry.status).toBe(201);
    expect(await late.count(key)).toEqual({ started: 1, finished: 1 });
    await down.stop();
    await late.stop();
  });
});

describe.runIf(redisUp)('idemkit serve when its Redis goes away', () => {
  it('answers 503 problem+json without calling the upstream, and recovers when Redis is back', async () => {
    const port = await freePort();
    const startRedis = () => {
      const child = spawn(
        'redis-server',
        ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
        {
          stdio: 'ignore',
        },
      );
      return child;
    };
    let redis = startRedis();
    await waitUntil(async () => (await fetchOk(`redis://127.0.0.1:${port}`)) === true);
    const gw = await startGateway(['--upstream', upstream.url, '--store', `redis://127.0.0.1:${port}`]);
    const send = (key: string) =>
      request(`${gw.url}/charges`, {
        headers: { 'idempotency-key': key, 'content-type': 'application/json' },
        body: '{}',
      });
    expect((await send(randomUUID())).status).toBe(201);
    redis.kill('SIGKILL');
    await once(redis, 'exit');
    const key = randomUUID();
    const down = await send(key);
    expect(down.status).toBe(503);
    expect(problemOf(down).code).toBe('idempotency_store_unavailable');
    expect(down.headers['retry-after']).toBe('1');
    expect(await upstream.count(key)).toEqual({ started: 0, finished: 0 });
    expect((await request(`${gw.url}/healthz`, { method: 'GET' })).status).toBe(503);
    redis = startRedis();
    let answer = down;
    await waitUntil(async () => {
      answer = await send(key);
      return answer.status !== 503;
    });
    expect(answer.status).toBe(201);
    expect(await upstream.count(key)).toEqual({ started: 1, finished: 1 });
    await gw.stop();
    redis.kill('SIGKILL');
  });
});

describe('idemkit serve shutdown', () => {
  it('finishes the requests in flight on SIGTERM, then exits 0', async () => {
    const gw = await startGateway(['--upstream', upstream.url, '--store', 'memory:']);
    const key = randomUUID();
    const inFlight = request(`${gw.url}/slow?ms=600`, {
      headers: { 'idempotency-key': key, 'content-type': 'application/json' },
      body: '{}',
    });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const exited = gw.stop('SIGTERM');
    const answer = await inFlight;
    expect(answer.status).toBe(201);
    expect(await exited).toEqual({ code: 0, signal: null });
    await expect(request(`${gw.url}/healthz`, { method: 'GET' })).rejects.toThrow(/ECONNREFUSED/);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(gw.logs.map((e) => e.event)).toContain('stopped');
  });
});

async function waitUntil(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Whether a Redis server answers PING at `url`. */
async function fetchOk(url: string): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => {}); // a refusal is the answer here, told by connect() itself
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
