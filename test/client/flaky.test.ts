import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createClient, idempotentFetch, isReplay, isRetryLimitError } from '../../src/client/index.js';
import { type ClientTestServer, type Fate, problem, recordingSleep, startIdemkitServer } from './server.js';

const servers: ClientTestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(fate: (index: number) => Fate): Promise<ClientTestServer> {
  const server = await startIdemkitServer({ fate });
  servers.push(server);
  return server;
}

const NOW = Date.parse('2026-01-01T00:00:00Z');

describe('idempotentFetch against a flaky server', () => {
  it('rides out a lost answer, 503s with Retry-After in seconds and as a date, and 409 in use', async () => {
    const script: Fate[] = [
      { kind: 'drop-after' },
      { kind: 'answer', status: 503, headers: { 'retry-after': '2' } },
      { kind: 'answer', status: 503, headers: { 'retry-after': new Date(NOW + 5_000).toUTCString() } },
      {
        kind: 'answer',
        status: 409,
        headers: { 'content-type': 'application/problem+json', 'retry-after': '1' },
        body: problem(409, 'idempotency_key_in_use'),
      },
      { kind: 'drop-before' },
    ];
    const server = await serve((i) => script[i] ?? { kind: 'pass' });
    const { delays, sleep } = recordingSleep();
    const response = await idempotentFetch(`${server.url}/charges`, {
      method: 'POST',
      body: '{"amount":3}',
      retry: { maxAttempts: 6, baseDelayMs: 100, random: () => 0.5, sleep, now: () => NOW },
    });
    expect(response.status).toBe(201);
    expect(isReplay(response)).toBe(true);
    // Full jitter after the lost answer (0.5 * 100 * 2^0), then each Retry-After exactly, then jitter again.
    expect(delays).toEqual([50, 2_000, 5_000, 1_000, 800]);
    expect(server.runs).toHaveLength(1);
    expect(server.requests).toHaveLength(6);
    expect(new Set(server.requests).size).toBe(1);
  });

  it('retries 429, 502 and 504, with backoff capped at maxDelayMs', async () => {
    const statuses = [429, 502, 504, 503];
    const server = await serve((i) =>
      i < statuses.length ? { kind: 'answer', status: statuses[i] as number } : { kind: 'pass' },
    );
    const { delays, sleep } = recordingSleep();
    const response = await idempotentFetch(`${server.url}/a`, {
      method: 'POST',
      body: 'x',
      retry: { baseDelayMs: 100, maxDelayMs: 300, random: () => 0.999, sleep },
    });
    expect(response.status).toBe(201);
    expect(delays).toEqual([99, 199, 299, 299]);
    expect(server.runs).toHaveLength(1);
  });

  it('stops after maxAttempts with RetryLimitError carrying the last response', async () => {
    const server = await serve(() => ({ kind: 'answer', status: 503 }));
    const { sleep } = recordingSleep();
    const error = await idempotentFetch(`${server.url}/a`, {
      method: 'POST',
      body: 'x',
      idempotencyKey: 'k',
      retry: { maxAttempts: 3, sleep },
    }).catch((e) => e);
    expect(isRetryLimitError(error)).toBe(true);
    expect(error).toMatchObject({ limit: 'attempts', attempts: 3, idempotencyKey: 'k' });
    expect(error.lastResponse.status).toBe(503);
    expect(server.requests).toEqual(['k', 'k', 'k']);
  });

  it('stops before a wait that would pass maxElapsedMs', async () => {
    const server = await serve(() => ({ kind: 'answer', status: 503, headers: { 'retry-after': '60' } }));
    const { delays, sleep } = recordingSleep();
    const error = await idempotentFetch(`${server.url}/a`, {
      method: 'POST',
      body: 'x',
      retry: { maxElapsedMs: 30_000, sleep },
    }).catch((e) => e);
    expect(error).toMatchObject({ name: 'RetryLimitError', limit: 'elapsed', attempts: 1 });
    expect(delays).toEqual([]);
  });

  it('rejects promptly with the signal reason when aborted during a backoff wait', async () => {
    const server = await serve(() => ({ kind: 'answer', status: 503, headers: { 'retry-after': '20' } }));
    const controller = new AbortController();
    const started = performance.now();
    const pending = idempotentFetch(`${server.url}/a`, {
      method: 'POST',
      body: 'x',
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new Error('user left')), 50);
    await expect(pending).rejects.toThrow('user left');
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(server.requests).toHaveLength(1);
  });

  it('rejects promptly with the signal reason when aborted while a request is in flight', async () => {
    const server = await startIdemkitServer({ delayMs: 5_000 });
    servers.push(server);
    const controller = new AbortController();
    const started = performance.now();
    const pending = idempotentFetch(`${server.url}/a`, {
      method: 'POST',
      body: 'x',
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new Error('cancelled')), 50);
    await expect(pending).rejects.toThrow('cancelled');
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(server.requests).toHaveLength(1);
  });

  it('rejects a joined double submit on its own abort without cancelling the first call', async () => {
    const server = await startIdemkitServer({ delayMs: 100 });
    servers.push(server);
    const client = createClient({ baseUrl: server.url });
    const controller = new AbortController();
    const first = client.post('/a', { a: 1 }, { idempotencyKey: 'k' });
    const second = client.post('/a', { a: 1 }, { idempotencyKey: 'k', signal: controller.signal });
    setTimeout(() => controller.abort(), 20); // once it has joined the first call's request
    await expect(second).rejects.toMatchObject({ name: 'AbortError' });
    expect((await first).status).toBe(201);
    expect(server.requests).toEqual(['k']);
  });

  it('keeps the shared request going when the first caller aborts and a joiner has not', async () => {
    const server = await startIdemkitServer({ delayMs: 100 });
    servers.push(server);
    const client = createClient({ baseUrl: server.url });
    const controller = new AbortController();
    const first = client.post('/a', { a: 1 }, { idempotencyKey: 'k2', signal: controller.signal });
    const second = client.post('/a', { a: 1 }, { idempotencyKey: 'k2' });
    setTimeout(() => controller.abort(), 40); // while the one request is at the server
    await expect(first).rejects.toMatchObject({ name: 'AbortError' });
    const answer = await second;
    expect(answer.status).toBe(201);
    expect(await answer.json()).toMatchObject({ run: 1 });
    expect(server.runs).toEqual(['k2']);
  });

  it('cancels the shared request once every caller has aborted', async () => {
    const server = await startIdemkitServer({ delayMs: 300 });
    servers.push(server);
    const client = createClient({ baseUrl: server.url });
    const one = new AbortController();
    const two = new AbortController();
    const first = client.post('/a', { a: 1 }, { idempotencyKey: 'k3', signal: one.signal });
    const second = client.post('/a', { a: 1 }, { idempotencyKey: 'k3', signal: two.signal });
    setTimeout(() => {
      one.abort();
      two.abort();
    }, 40);
    await expect(first).rejects.toMatchObject({ name: 'AbortError' });
    await expect(second).rejects.toMatchObject({ name: 'AbortError' });
    // The request itself was cut: a third call with the key starts its own (and meets the first
    // in progress, or its stored answer), rather than joining a settled one.
    const third = await client.post('/a', { a: 1 }, { idempotencyKey: 'k3', retry: { baseDelayMs: 50 } });
    expect(third.status).toBe(201);
    expect(server.requests.length).toBeGreaterThanOrEqual(2); // the third did not join the cut one
    expect(server.runs).toEqual(['k3']);
  });

  it('refuses a second request under an operation name while the first is in flight (regression: its key was lost)', async () => {
    const server = await startIdemkitServer({ delayMs: 150 });
    servers.push(server);
    const client = createClient({ baseUrl: server.url });
    const first = client.post('/a', { a: 1 }, { operation: 'op' });
    while (server.requests.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    const other = client.post('/a', { a: 2 }, { operation: 'op' });
    await expect(other).rejects.toMatchObject({ name: 'OperationMismatchError' });
    const otherKey = client.post('/a', { a: 1 }, { operation: 'op', idempotencyKey: 'another' });
    await expect(otherKey).rejects.toMatchObject({ name: 'OperationMismatchError' });
    expect((await first).status).toBe(201);
    expect(server.requests).toHaveLength(1);
    // Once it has finished, the name is free again.
    expect((await client.post('/a', { a: 2 }, { operation: 'op' })).status).toBe(201);
  });

  it('retries an attempt that times out while its 409 body is read (regression: it was returned as final)', async () => {
    let count = 0;
    const stall = http.createServer((req, res) => {
      count += 1;
      req.resume();
      if (count === 1) {
        res.writeHead(409, { 'content-type': 'application/problem+json' });
        res.write('{"code":'); // and nothing more
        return;
      }
      res.writeHead(201, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
    await new Promise<void>((resolve) => stall.listen(0, '127.0.0.1', resolve));
    const { port } = stall.address() as AddressInfo;
    try {
      const response = await idempotentFetch(`http://127.0.0.1:${port}/a`, {
        method: 'POST',
        body: 'x',
        retry: { timeoutMs: 200, baseDelayMs: 10 },
      });
      expect(response.status).toBe(201);
      expect(count).toBe(2);
    } finally {
      stall.closeAllConnections();
      await new Promise<void>((resolve) => stall.close(() => resolve()));
    }
  });

  it('ends a call whose server never answers at maxElapsedMs, with no timeoutMs set (regression: it hung)', async () => {
    const silent = http.createServer((req) => req.resume()); // reads, never answers
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as AddressInfo;
    try {
      const call = idempotentFetch(`http://127.0.0.1:${port}/a`, {
        method: 'POST',
        body: 'x',
        retry: { maxElapsedMs: 300 },
      });
      await expect(call).rejects.toMatchObject({ name: 'RetryLimitError', limit: 'elapsed' });
    } finally {
      silent.closeAllConnections();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it('honours the signal of a Request passed as input (regression: it was ignored)', async () => {
    const server = await startIdemkitServer({ delayMs: 3_000 });
    servers.push(server);
    const controller = new AbortController();
    const request = new Request(`${server.url}/a`, { method: 'POST', body: 'x', signal: controller.signal });
    const started = performance.now();
    setTimeout(() => controller.abort(), 30);
    await expect(idempotentFetch(request)).rejects.toMatchObject({ name: 'AbortError' });
    expect(performance.now() - started).toBeLessThan(2_500); // long before the server's answer
  });

  it('runs 1,000 operations exactly once through drops and 503s (20 at a time)', async () => {
    const random = mulberry32(42);
    const server = await serve(() => {
      const roll = random();
      if (roll < 0.2) return { kind: 'drop-after' };
      if (roll < 0.3) return { kind: 'answer', status: 503, headers: { 'retry-after': '0' } };
      return { kind: 'pass' };
    });
    const client = createClient({
      baseUrl: server.url,
      retry: { baseDelayMs: 1, maxDelayMs: 5, maxAttempts: 12 },
    });
    let next = 0;
    const answers: Array<{ run: number; body: string }> = [];
    const worker = async () => {
      while (next < 1_000) {
        const index = next++;
        const response = await client.post('/orders', { index });
        expect(response.status).toBe(201);
        answers[index] = (await response.json()) as { run: number; body: string };
      }
    };
    await Promise.all(Array.from({ length: 20 }, worker));
    expect(server.runs).toHaveLength(1_000);
    expect(new Set(server.runs).size).toBe(1_000);
    answers.forEach((answer, index) => {
      expect(JSON.parse(answer.body)).toEqual({ index });
    });
    expect(server.requests.length).toBeGreaterThan(1_200); // the chaos really happened
  });
});

/** A small seeded PRNG, so the chaos is the same on every run. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}
