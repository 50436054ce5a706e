import { afterEach, describe, expect, it } from 'vitest';
import {
  createClient,
  deriveKey,
  IdempotencyConflictError,
  idempotentFetch,
  isIdempotencyConflictError,
  isReplay,
  isUnreplayableBodyError,
} from '../../src/client/index.js';
import { type ClientTestServer, type ServerOptions, startIdemkitServer } from './server.js';

const servers: ClientTestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(options: ServerOptions = {}): Promise<ClientTestServer> {
  const server = await startIdemkitServer(options);
  servers.push(server);
  return server;
}

const fast = { baseDelayMs: 1, maxDelayMs: 5 };

describe('idempotentFetch against an idemkit server', () => {
  it('sends one UUIDv4 key and runs the handler once', async () => {
    const server = await serve();
    const response = await idempotentFetch(`${server.url}/charges`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"amount":100}',
    });
    expect(response.status).toBe(201);
    expect(await response.json()).toEqual({ run: 1, body: '{"amount":100}' });
    expect(isReplay(response)).toBe(false);
    expect(server.runs).toHaveLength(1);
    expect(server.runs[0]).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it('retries a lost first response with the same key and body, and gets the replay', async () => {
    const server = await serve({ fate: (i) => (i === 0 ? { kind: 'drop-after' } : { kind: 'pass' }) });
    const response = await idempotentFetch(`${server.url}/charges`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: new TextEncoder().encode('{"amount":7}'),
      retry: fast,
    });
    expect(response.status).toBe(201);
    expect(isReplay(response)).toBe(true);
    expect(await response.json()).toEqual({ run: 1, body: '{"amount":7}' });
    expect(server.runs).toHaveLength(1);
    expect(server.requests).toHaveLength(2);
    expect(new Set(server.requests).size).toBe(1);
  });

  it('shares one request among concurrent identical calls (double submit)', async () => {
    const server = await serve({ delayMs: 100 });
    const client = createClient({ baseUrl: server.url });
    const key = await deriveKey('order-', { cart: 42, items: ['a', 'b'] });
    const responses = await Promise.all(
      Array.from({ length: 5 }, () => client.post('/orders', { cart: 42 }, { idempotencyKey: key })),
    );
    expect(server.requests).toEqual([key]);
    expect(server.runs).toEqual([key]);
    const bodies = await Promise.all(responses.map((r) => r.json()));
    for (const body of bodies) expect(body).toEqual({ run: 1, body: '{"cart":42}' });
  });

  it('shares one request among concurrent calls of the same named operation', async () => {
    const server = await serve({ delayMs: 50 });
    const client = createClient({ baseUrl: server.url });
    const responses = await Promise.all(
      Array.from({ length: 3 }, () => client.post('/orders', { cart: 1 }, { operation: 'checkout-1' })),
    );
    expect(server.requests).toHaveLength(1);
    expect(responses.map((r) => r.status)).toEqual([201, 201, 201]);
    await Promise.all(responses.map((r) => r.text()));
  });

  it('marks a later call with the same key as a replay', async () => {
    const server = await serve();
    const client = createClient({ baseUrl: `${server.url}/v1` });
    const first = await client.post('/charges', { a: 1 }, { idempotencyKey: 'k-1' });
    const second = await client.post('/charges', { a: 1 }, { idempotencyKey: 'k-1' });
    expect([isReplay(first), isReplay(second)]).toEqual([false, true]);
    expect(await second.text()).toBe(await first.text());
    expect(server.runs).toEqual(['k-1']);
  });

  it('never retries a 400 or a 422: they are returned', async () => {
    for (const status of [400, 422]) {
      const server = await serve({
        answer: (_req, _body, res) => res.writeHead(status, { 'content-type': 'application/json' }).end('{}'),
      });
      const client = createClient({ baseUrl: server.url, retry: fast });
      const response = await client.post('/charges', { a: 1 });
      expect(response.status).toBe(status);
      expect(server.requests).toHaveLength(1);
    }
  });

  it('throws IdempotencyConflictError with original_request when the key was used for another body', async () => {
    const server = await serve();
    const client = createClient({ baseUrl: server.url, retry: fast });
    await (await client.post('/charges', { amount: 1 }, { idempotencyKey: 'same' })).text();
    const error = await client.post('/charges', { amount: 2 }, { idempotencyKey: 'same' }).catch((e) => e);
    expect(error).toBeInstanceOf(IdempotencyConflictError);
    expect(isIdempotencyConflictError(error)).toBe(true);
    expect(error.status).toBe(409);
    expect(error.idempotencyKey).toBe('same');
    expect(error.problem.code).toBe('idempotency_key_reused');
    expect(error.originalRequest).toMatchObject({ method: 'POST', path: '/charges' });
    expect(error.originalRequest.body_hash).toMatch(/^[0-9a-f]{64}$/);
    expect(server.requests).toHaveLength(2);
    expect(server.runs).toHaveLength(1);
  });

  it('recognises the reused conflict when the server answers it with 422', async () => {
    const server = await serve({ engine: { conflictStatus: 422 } });
    const client = createClient({ baseUrl: server.url, retry: fast });
    await (await client.post('/x', { a: 1 }, { idempotencyKey: 'k' })).text();
    const error = await client.post('/x', { a: 2 }, { idempotencyKey: 'k' }).catch((e) => e);
    expect(isIdempotencyConflictError(error) && error.status).toBe(422);
  });

  it('returns a 500 by default and retries it with retryOn500', async () => {
    let failures = 1;
    const answer: ServerOptions['answer'] = (_req, _body, res) => {
      if (failures-- > 0) res.writeHead(500).end('boom');
      else res.writeHead(201).end('ok');
    };
    const plain = await serve({ answer });
    expect((await createClient({ baseUrl: plain.url }).post('/a', {})).status).toBe(500);
    failures = 1;
    const retried = await serve({ answer });
    const client = createClient({ baseUrl: retried.url, retry: { ...fast, retryOn500: true } });
    const response = await client.post('/a', {});
    expect(response.status).toBe(201);
    expect(retried.runs).toHaveLength(2); // idemkit stores no 5xx, so the retry runs the handler again
    expect(new Set(retried.runs).size).toBe(1);
  });

  it('times out a slow attempt, waits out 409 in use, then gets the replay: one run', async () => {
    const server = await serve({ delayMs: (run) => (run === 1 ? 300 : 0) });
    const response = await idempotentFetch(`${server.url}/slow`, {
      method: 'POST',
      body: 'x',
      retry: {
        timeoutMs: 100,
        maxAttempts: 20,
        // Retry-After: 1 from the in-use answer is honoured, shortened here so the test stays fast.
        sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.min(ms, 50))),
      },
    });
    expect(response.status).toBe(201);
    expect(isReplay(response)).toBe(true);
    expect(server.runs).toHaveLength(1);
    expect(new Set(server.requests).size).toBe(1);
  });

  it('refuses a ReadableStream body before sending anything', async () => {
    const server = await serve();
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('x'));
        controller.close();
      },
    });
    const error = await idempotentFetch(`${server.url}/a`, { method: 'POST', body: stream }).catch((e) => e);
    expect(isUnreplayableBodyError(error)).toBe(true);
    expect(server.requests).toHaveLength(0);
  });

  it('sends Blob, URLSearchParams and FormData bodies byte-identically on every attempt', async () => {
    const form = new FormData();
    form.set('field', 'value');
    for (const body of [new Blob(['blob']), new URLSearchParams({ q: 'a b' }), form]) {
      const seen: string[] = [];
      const server = await serve({
        fate: (i) => (i === 0 ? { kind: 'drop-after' } : { kind: 'pass' }),
        answer: (req, text, res) => {
          seen.push(`${req.headers['content-type']}|${text}`);
          res.writeHead(200).end(text);
        },
      });
      const response = await idempotentFetch(`${server.url}/a`, { method: 'POST', body, retry: fast });
      expect(await response.text()).toBe(seen[0]?.split('|')[1]);
      expect(seen).toHaveLength(1);
      expect(server.requests).toHaveLength(2);
    }
  });
});
