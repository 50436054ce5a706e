import { describe, expect, it } from 'vitest';
import { createIdempotency } from '../../src/core/engine.js';
import { IdempotencyConfigError } from '../../src/core/errors.js';
import type { IdempotencyEvent } from '../../src/core/events.js';
import type { IdempotencyOptions } from '../../src/core/options.js';
import type { IdempotencyStore } from '../../src/core/store.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { deferred } from '../helpers/async.js';
import { createManualClock, settle } from '../helpers/clock.js';

type Handler = (request: Request) => Response | Promise<Response>;

function setup(options: Partial<IdempotencyOptions> = {}, handler?: Handler) {
  const clock = (options.clock as ReturnType<typeof createManualClock> | undefined) ?? createManualClock();
  const store = options.store ?? createMemoryStore({ sweepIntervalMs: 0, now: clock.now });
  const events: IdempotencyEvent[] = [];
  const engine = createIdempotency({ clock, onEvent: (e) => events.push(e), ...options, store });
  let runs = 0;
  const seen: string[] = [];
  const defaultHandler: Handler = async (request) => {
    const text = await request.text();
    seen.push(text);
    return new Response(JSON.stringify({ id: `ch_${runs}`, echo: text }), {
      status: 201,
      headers: { 'content-type': 'application/json', 'set-cookie': 'session=1', 'x-request-id': `r${runs}` },
    });
  };
  const send = (
    init: {
      key?: string | null;
      body?: string;
      method?: string;
      path?: string;
      headers?: Record<string, string>;
    } = {},
  ) => {
    const headers: Record<string, string> = { 'content-type': 'application/json', ...init.headers };
    if (init.key !== null) headers['idempotency-key'] = init.key ?? 'key-1';
    const method = init.method ?? 'POST';
    return engine.handle(
      new Request(`http://api.test${init.path ?? '/charges'}`, {
        method,
        headers,
        body: method === 'GET' || method === 'HEAD' ? undefined : (init.body ?? '{"amount":1000}'),
      }),
      (request) => {
        runs += 1;
        return (handler ?? defaultHandler)(request);
      },
    );
  };
  return { engine, store, clock, events, send, seen, runs: () => runs };
}

const json = async (response: Response) => JSON.parse(await response.text()) as Record<string, unknown>;
const types = (events: IdempotencyEvent[]) => events.map((e) => e.type);

describe('engine: the answer for every situation (DESIGN.md)', () => {
  it('runs a first request once and returns the handler response unchanged', async () => {
    const t = setup();
    const response = await t.send();
    expect(response.status).toBe(201);
    expect(response.headers.get('set-cookie')).toBe('session=1');
    expect(response.headers.get('idempotent-replayed')).toBeNull();
    expect(await json(response)).toEqual({ id: 'ch_1', echo: '{"amount":1000}' });
    expect(t.runs()).toBe(1);
    expect(t.seen).toEqual(['{"amount":1000}']);
    expect(types(t.events)).toEqual(['claimed', 'completed']);
  });

  it('replays the stored response to a retry: same status and body bytes, deny-listed headers dropped', async () => {
    const t = setup();
    const first = await t.send();
    const firstBody = await first.arrayBuffer();
    const retry = await t.send({ body: '{ "amount" : 1000 }' });
    expect(retry.status).toBe(201);
    expect(Buffer.from(await retry.arrayBuffer()).equals(Buffer.from(firstBody))).toBe(true);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.headers.get('x-request-id')).toBe('r1');
    expect(retry.headers.get('content-type')).toBe('application/json');
    expect(retry.headers.get('set-cookie')).toBeNull();
    expect(t.runs()).toBe(1);
    expect(types(t.events)).toEqual(['claimed', 'completed', 'replayed']);
  });

  it('treats the quoted sf-string and the bare token as one key', async () => {
    const t = setup();
    await t.send({ key: 'abc' });
    const retry = await t.send({ key: '"abc"' });
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(t.runs()).toBe(1);
  });

  it('answers 409 in use, with Retry-After, to a duplicate while the first still runs; nothing is stored', async () => {
    const { promise: gate, resolve: release } = deferred();
    const t = setup({}, async () => {
      await gate;
      return new Response('done', { status: 201 });
    });
    const first = t.send();
    await settle();
    const duplicate = await t.send();
    expect(duplicate.status).toBe(409);
    expect(duplicate.headers.get('retry-after')).toBe('1');
    expect(duplicate.headers.get('content-type')).toBe('application/problem+json');
    expect(duplicate.headers.get('cache-control')).toBe('no-store');
    expect(await json(duplicate)).toMatchObject({
      status: 409,
      code: 'idempotency_key_in_use',
      idempotency_key: 'key-1',
    });
    release();
    expect((await first).status).toBe(201);
    expect(t.runs()).toBe(1);
    expect(t.events.filter((e) => e.type === 'conflict')).toMatchObject([{ reason: 'in_use' }]);
  });

  it('with waitMs, lets a duplicate wait for the first and then replays it', async () => {
    const { promise: gate, resolve: release } = deferred();
    const t = setup({ waitMs: 5_000 }, async () => {
      await gate;
      return new Response('done', { status: 201 });
    });
    const first = t.send();
    await settle();
    const duplicate = t.send();
    await t.clock.advance(1_000);
    release();
    const [a, b] = await Promise.all([first, duplicate]);
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    expect(b.headers.get('idempotent-replayed')).toBe('true');
    expect(await b.text()).toBe('done');
    expect(t.runs()).toBe(1);
  });

  it('with waitMs, answers 409 in use once the wait is over and the first still runs', async () => {
    const t = setup({ waitMs: 2_000 }, () => new Promise<Response>(() => {}));
    void t.send();
    await settle();
    const duplicate = t.send();
    await t.clock.advance(2_000);
    expect((await duplicate).status).toBe(409);
    expect(t.runs()).toBe(1);
  });

  it('with waitMs, runs the duplicate itself when the first is released', async () => {
    let calls = 0;
    const { promise: gate, resolve: fail } = deferred();
    const t = setup({ waitMs: 5_000 }, async () => {
      calls += 1;
      if (calls === 1) {
        await gate;
        return new Response('busy', { status: 503 });
      }
      return new Response('ok', { status: 201 });
    });
    const first = t.send();
    await settle();
    const duplicate = t.send();
    await settle();
    fail();
    expect((await first).status).toBe(503);
    expect((await duplicate).status).toBe(201);
    expect(t.runs()).toBe(2);
  });

  it('rejects a reused key with another body: 409 with original_request, the record untouched', async () => {
    const t = setup();
    await t.send({ body: '{"amount":1000}' });
    const conflict = await t.send({ body: '{"amount":2000}' });
    expect(conflict.status).toBe(409);
    const problem = await json(conflict);
    expect(problem).toMatchObject({
      type: 'about:blank',
      title: 'Conflict',
      status: 409,
      code: 'idempotency_key_reused',
      idempotency_key: 'key-1',
      original_request: { method: 'POST', path: '/charges' },
    });
    expect((problem.original_request as { body_hash: string }).body_hash).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(problem)).not.toContain('ch_1');
    const replay = await t.send({ body: '{"amount":1000}' });
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(t.runs()).toBe(1);
  });

  it('rejects a reused key with another path or method too', async () => {
    const t = setup();
    await t.send({ path: '/charges' });
    expect((await t.send({ path: '/refunds' })).status).toBe(409);
    expect((await t.send({ method: 'PATCH' })).status).toBe(409);
    expect((await t.send({ path: '/charges?x=1' })).status).toBe(409);
  });

  it.each([422, 400] as const)(
    'answers a reused key with conflictStatus %i when configured',
    async (status) => {
      const t = setup({ conflictStatus: status });
      await t.send();
      const conflict = await t.send({ body: '{"amount":2}' });
      expect(conflict.status).toBe(status);
      expect(await json(conflict)).toMatchObject({ code: 'idempotency_key_reused', status });
    },
  );

  it('refuses a guarded request without a key with 400 missing; the handler never runs', async () => {
    const t = setup();
    const response = await t.send({ key: null });
    expect(response.status).toBe(400);
    expect(await json(response)).toMatchObject({ code: 'idempotency_key_missing', idempotency_key: null });
    expect(t.runs()).toBe(0);
    expect(t.events).toMatchObject([{ type: 'rejected', reason: 'missing' }]);
  });

  it('lets a keyless request through untouched with required: false', async () => {
    const t = setup({ required: false });
    expect((await t.send({ key: null })).status).toBe(201);
    expect((await t.send({ key: null })).status).toBe(201);
    expect(t.runs()).toBe(2);
    expect(t.events).toEqual([]);
  });

  it.each([
    ['', 'empty'],
    ['x'.repeat(256), 'too_long'],
    ['k\u00e9y', 'not_printable'],
    ['a, b', 'list'],
    ['"abc', 'malformed'],
  ])('refuses the malformed key %j with 400 invalid (%s); the handler never runs', async (key, reason) => {
    const t = setup();
    const response = await t.send({ key });
    expect(response.status).toBe(400);
    expect(await json(response)).toMatchObject({ code: 'idempotency_key_invalid', reason });
    expect(t.runs()).toBe(0);
  });

  it.each(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'])('leaves %s untouched, key or not', async (method) => {
    const t = setup({}, () => new Response('ok'));
    for (const key of ['same', 'same', '"broken']) expect((await t.send({ method, key })).status).toBe(200);
    expect(t.runs()).toBe(3);
    expect(t.events).toEqual([]);
  });

  it('guards a fetch request whose method arrives in lower case (fetch does not normalise patch)', async () => {
    const t = setup();
    await t.send({ method: 'patch' });
    expect((await t.send({ method: 'patch' })).headers.get('idempotent-replayed')).toBe('true');
    expect(t.runs()).toBe(1);
  });

  it('guards more methods when `methods` widens the set', async () => {
    const t = setup({ methods: ['POST', 'PUT'] });
    await t.send({ method: 'PUT' });
    expect((await t.send({ method: 'PUT' })).headers.get('idempotent-replayed')).toBe('true');
    expect(t.runs()).toBe(1);
  });

  it('releases the key when the handler throws, so the retry runs again', async () => {
    let calls = 0;
    const t = setup({}, () => {
      calls += 1;
      if (calls === 1) throw new Error('boom');
      return new Response('ok', { status: 201 });
    });
    await expect(t.send()).rejects.toThrow('boom');
    expect((await t.send()).status).toBe(201);
    expect(t.runs()).toBe(2);
    expect(t.events.find((e) => e.type === 'released')).toMatchObject({ reason: 'handler_error' });
  });

  it.each([500, 502, 503, 408, 425, 429])('releases the key when the handler answers %i', async (status) => {
    const t = setup({}, () => new Response('no', { status }));
    expect((await t.send()).status).toBe(status);
    expect((await t.send()).status).toBe(status);
    expect(t.runs()).toBe(2);
    expect(t.events.find((e) => e.type === 'released')).toMatchObject({ reason: 'status', status });
  });

  it('stores 4xx answers by default, and 5xx too when storeStatus says so', async () => {
    const t4 = setup({}, () => new Response('bad', { status: 400 }));
    await t4.send();
    expect((await t4.send()).headers.get('idempotent-replayed')).toBe('true');
    const t5 = setup({ storeStatus: () => true }, () => new Response('err', { status: 500 }));
    await t5.send();
    const replay = await t5.send();
    expect(replay.status).toBe(500);
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(t5.runs()).toBe(1);
  });

  it('renews the lease while a slow handler runs, so it is never taken over', async () => {
    const { promise: gate, resolve: release } = deferred();
    const t = setup({ leaseMs: 3_000 }, async () => {
      await gate;
      return new Response('slow', { status: 201 });
    });
    const first = t.send();
    await settle();
    for (let i = 0; i < 10; i++) {
      await t.clock.advance(1_000);
      expect((await t.send()).status).toBe(409);
    }
    release();
    expect((await first).status).toBe(201);
    expect(t.runs()).toBe(1);
    expect(t.events.some((e) => e.type === 'lease_taken_over')).toBe(false);
  });

  it('lets a retry take over a lapsed lease of a dead process, and drops the late completion', async () => {
    const store = createMemoryStore({ sweepIntervalMs: 0 });
    const alive = setup({ store, leaseMs: 3_000 });
    // The "dead" process: its clock is frozen, so it never renews, and its handler hangs.
    const { promise: hung, resolve: wake } = deferred();
    const deadEvents: IdempotencyEvent[] = [];
    const dead = createIdempotency({
      store,
      leaseMs: 3_000,
      clock: createManualClock(),
      onEvent: (e) => deadEvents.push(e),
    });
    const deadRequest = dead.handle(
      new Request('http://api.test/charges', {
        method: 'POST',
        headers: { 'idempotency-key': 'key-1', 'content-type': 'application/json' },
        body: '{"amount":1000}',
      }),
      async () => {
        await hung;
        return new Response('late', { status: 201 });
      },
    );
    await settle();
    await alive.clock.advance(2_999);
    expect((await alive.send()).status).toBe(409);
    await alive.clock.advance(1);
    const takeover = await alive.send();
    expect(takeover.status).toBe(201);
    expect(alive.events.find((e) => e.type === 'claimed')).toMatchObject({ takenOver: true });
    wake();
    expect(await (await deadRequest).text()).toBe('late');
    expect(deadEvents.map((e) => e.type)).toContain('lease_taken_over');
    const replay = await alive.send();
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(await json(replay)).toMatchObject({ id: 'ch_1' });
    expect(alive.runs()).toBe(1);
  });

  it('forgets a key after ttlMs: the same key then runs as new', async () => {
    const t = setup({ ttlMs: 60_000 });
    await t.send();
    await t.clock.advance(59_999);
    expect((await t.send()).headers.get('idempotent-replayed')).toBe('true');
    await t.clock.advance(1);
    const fresh = await t.send({ body: '{"amount":5}' });
    expect(fresh.status).toBe(201);
    expect(fresh.headers.get('idempotent-replayed')).toBeNull();
    expect(t.runs()).toBe(2);
  });

  it('keeps scopes apart: the same key under other credentials runs independently', async () => {
    const t = setup();
    await t.send({ headers: { authorization: 'Bearer alice' } });
    const bob = await t.send({ headers: { authorization: 'Bearer bob' }, body: '{"amount":9}' });
    expect(bob.status).toBe(201);
    expect(await json(bob)).toMatchObject({ id: 'ch_2' });
    expect(t.runs()).toBe(2);
    const scopes = new Set(
      t.events.filter((e) => e.type === 'claimed').map((e) => (e as { scope: string }).scope),
    );
    expect(scopes.size).toBe(2);
  });

  it('uses the scope hook instead of the Authorization header when given', async () => {
    const t = setup({ scope: (request) => request.header('x-tenant') ?? 'anonymous' });
    await t.send({ headers: { 'x-tenant': 'acme', authorization: 'a' } });
    expect(
      (await t.send({ headers: { 'x-tenant': 'acme', authorization: 'b' } })).headers.get(
        'idempotent-replayed',
      ),
    ).toBe('true');
    expect(
      (await t.send({ headers: { 'x-tenant': 'globex' } })).headers.get('idempotent-replayed'),
    ).toBeNull();
  });

  it('fails closed with 503 and Retry-After when the store fails; the handler does not run', async () => {
    const broken = brokenStore();
    const t = setup({ store: broken, retryAfterMs: 2_500 });
    const response = await t.send();
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('3');
    expect(await json(response)).toMatchObject({ code: 'idempotency_store_unavailable' });
    expect(t.runs()).toBe(0);
    expect(t.events).toMatchObject([{ type: 'store_error', operation: 'acquire' }]);
  });

  it('retries storing the answer when complete fails for a moment, so a retry replays it (regression)', async () => {
    const clock = createManualClock();
    const memory = createMemoryStore({ sweepIntervalMs: 0, now: clock.now });
    let failures = 2;
    const flaky: IdempotencyStore = {
      ...memory,
      acquire: (...args) => memory.acquire(...args),
      complete: async (...args) => {
        if (failures-- > 0) throw new Error('ECONNRESET');
        return memory.complete(...args);
      },
    };
    const t = setup({ store: flaky, clock });
    const first = t.send();
    await t.clock.advance(2_000);
    expect((await first).status).toBe(201);
    const replay = await t.send();
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(t.runs()).toBe(1);
    expect(t.events.filter((e) => e.type === 'store_error')).toHaveLength(2);
  });

  it('keeps trying to store the answer through an outage shorter than the lease, then replays it', async () => {
    const clock = createManualClock();
    const memory = createMemoryStore({ sweepIntervalMs: 0, now: clock.now });
    let down = true;
    let attempts = 0;
    const outage: IdempotencyStore = {
      ...memory,
      acquire: (...args) => memory.acquire(...args),
      renew: async (...args) => {
        if (down) throw new Error('ECONNREFUSED');
        return memory.renew(...args);
      },
      complete: async (...args) => {
        attempts += 1;
        if (down) throw new Error('ECONNREFUSED');
        return memory.complete(...args);
      },
    };
    const t = setup({ store: outage, clock, leaseMs: 10_000 });
    const first = t.send();
    await t.clock.advance(8_000); // 8 s of outage: more than the old 2.1 s of retries
    down = false;
    await t.clock.advance(500); // the next try (every 500 ms by now) stores it
    expect((await first).status).toBe(201);
    expect(attempts).toBeGreaterThan(10);
    const replay = await t.send();
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(t.runs()).toBe(1);
  });

  for (const renewals of ['failing', 'landing'] as const) {
    it(`gives up storing the answer two leases after its first failed try (renewals ${renewals}), and the client still gets it`, async () => {
      const clock = createManualClock();
      const start = clock.now();
      const memory = createMemoryStore({ sweepIntervalMs: 0, now: clock.now });
      const tries: number[] = [];
      const broken: IdempotencyStore = {
        ...memory,
        acquire: (...args) => memory.acquire(...args),
        renew: async (...args) => {
          if (renewals === 'failing') throw new Error('ECONNREFUSED');
          return memory.renew(...args);
        },
        complete: async () => {
          tries.push(clock.now() - start);
          throw new Error('ECONNREFUSED');
        },
      };
      const t = setup({ store: broken, clock, leaseMs: 1_000 });
      const first = t.send();
      await t.clock.advance(5_000);
      expect((await first).status).toBe(201);
      // 100, 200, 400, then 500 ms apart, none past two leases (2 s) after the first try.
      expect(tries).toEqual([0, 100, 300, 700, 1_200, 1_700]);
      await t.clock.advance(5_000);
      expect(tries).toHaveLength(6); // no try after it gave up
    });
  }

  it('runs the handler unguarded when the store fails and failOpen is set', async () => {
    const t = setup({ store: brokenStore(), failOpen: true });
    expect((await t.send()).status).toBe(201);
    expect(t.seen).toEqual(['{"amount":1000}']);
  });

  it('does not store a body over maxResponseBytes and tells a retry so', async () => {
    const t = setup({ maxResponseBytes: 10 }, () => new Response('x'.repeat(11), { status: 201 }));
    expect(await (await t.send()).text()).toBe('x'.repeat(11));
    const retry = await t.send();
    expect(retry.status).toBe(409);
    expect(await json(retry)).toMatchObject({
      code: 'idempotency_response_not_stored',
      original_status: 201,
    });
    expect(t.runs()).toBe(1);
  });

  it('streams a response past maxResponseBytes through instead of buffering it, and stores only its size', async () => {
    const parts = ['aaaa', 'bbbb', 'cccc'];
    const t = setup({ maxResponseBytes: 6 }, () => {
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          const part = parts.shift();
          if (part === undefined) controller.close();
          else controller.enqueue(new TextEncoder().encode(part));
        },
      });
      return new Response(body, { status: 201 });
    });
    const first = await t.send();
    expect(await first.text()).toBe('aaaabbbbcccc');
    await settle();
    const retry = await t.send();
    expect(await json(retry)).toMatchObject({
      code: 'idempotency_response_not_stored',
      original_status: 201,
    });
    expect(t.runs()).toBe(1);
  });

  it('completes the record, never releases it, when the client cancels a streamed response (regression)', async () => {
    let pulls = 0;
    const t = setup({ maxResponseBytes: 4 }, () => {
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          pulls += 1;
          controller.enqueue(new TextEncoder().encode('chunk'));
        },
      });
      return new Response(body, { status: 200 });
    });
    const first = await t.send();
    const reader = first.body!.getReader();
    await reader.read();
    await reader.cancel();
    await settle();
    const retry = await t.send();
    expect(await json(retry)).toMatchObject({
      code: 'idempotency_response_not_stored',
      original_status: 200,
    });
    expect(t.runs()).toBe(1);
    expect(t.events.some((e) => e.type === 'released')).toBe(false);
    const pullsAfterCancel = pulls;
    await settle();
    expect(pulls).toBe(pullsAfterCancel);
  });

  it('replays a streamed response within maxResponseBytes byte for byte', async () => {
    const t = setup({}, () => {
      const parts = [Uint8Array.of(0, 255), Uint8Array.of(1, 254)];
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          const part = parts.shift();
          if (part === undefined) controller.close();
          else controller.enqueue(part);
        },
      });
      return new Response(body, { status: 200 });
    });
    await t.send();
    const replay = await t.send();
    expect([...new Uint8Array(await replay.arrayBuffer())]).toEqual([0, 255, 1, 254]);
  });

  it('refuses a body over maxRequestBytes with 413 before the handler runs', async () => {
    const t = setup({ maxRequestBytes: 8 });
    const response = await t.send({ body: '{"amount":1000}' });
    expect(response.status).toBe(413);
    expect(await json(response)).toMatchObject({ code: 'request_body_too_large', idempotency_key: 'key-1' });
    expect(t.runs()).toBe(0);
  });

  it('answers 400 request_body_unreadable when the body stream fails; the handler never runs', async () => {
    const t = setup();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"amo'));
        controller.error(new Error('connection reset'));
      },
    });
    const response = await t.engine.handle(
      new Request('http://api.test/charges', {
        method: 'POST',
        headers: { 'idempotency-key': 'broken-body' },
        body,
        duplex: 'half',
      } as RequestInit),
      () => new Response('ran'),
    );
    expect(response.status).toBe(400);
    expect(await json(response)).toMatchObject({
      code: 'request_body_unreadable',
      idempotency_key: 'broken-body',
    });
    expect((await t.send({ key: 'broken-body' })).status).toBe(201);
  });

  it('narrows the fingerprint with the fingerprint hook', async () => {
    const t = setup({
      fingerprint: (request) => JSON.stringify(JSON.parse(new TextDecoder().decode(request.body)).amount),
    });
    await t.send({ body: '{"amount":1,"note":"a"}' });
    expect((await t.send({ body: '{"amount":1,"note":"b"}' })).headers.get('idempotent-replayed')).toBe(
      'true',
    );
    expect((await t.send({ body: '{"amount":2,"note":"a"}' })).status).toBe(409);
  });

  it.each([
    [
      'a scope hook that throws',
      {
        scope: () => {
          throw new Error('no tenant');
        },
      },
    ],
    ['a scope hook that returns no string', { scope: () => 42 as unknown as string }],
    // UTF-8 would turn both lone surrogates into U+FFFD: two tenants would share records (review finding).
    ['a scope hook that returns a lone surrogate', { scope: () => 'tenant-\uD800' }],
    ['a fingerprint hook that throws', { fingerprint: () => JSON.parse('not json') as string }],
  ] as Array<[string, Partial<IdempotencyOptions>]>)(
    'answers %s with a 500 problem and never runs the handler (regression)',
    async (_name, options) => {
      const t = setup(options);
      const response = await t.send();
      expect(response.status).toBe(500);
      expect(await json(response)).toMatchObject({
        code: 'idempotency_hook_failed',
        idempotency_key: 'key-1',
      });
      expect(t.runs()).toBe(0);
      expect(t.events.map((e) => e.type)).toEqual(['hook_error']);
    },
  );

  it('answers the lookup with a 500 problem when the scope hook throws (regression)', async () => {
    const t = setup({
      scope: () => {
        throw new Error('no tenant');
      },
    });
    const response = (await t.engine.handleLookup(new Request('http://api.test/idempotency-keys/k1')))!;
    expect(response.status).toBe(500);
    expect(await json(response)).toMatchObject({ code: 'idempotency_hook_failed' });
  });

  it('keeps method and path in a narrowed fingerprint: a key never crosses endpoints (regression)', async () => {
    const t = setup({ fingerprint: () => 'same material' });
    await t.send({ path: '/charges' });
    expect((await t.send({ path: '/refunds' })).status).toBe(409);
  });

  it('reads lower-case method names in `methods` as the methods they name (regression)', async () => {
    const t = setup({ methods: ['post'] });
    await t.send();
    expect((await t.send()).headers.get('idempotent-replayed')).toBe('true');
    expect(t.runs()).toBe(1);
  });

  it('replays only allow-listed headers in allow-list mode', async () => {
    const t = setup({ replayHeaders: { allow: ['content-type'] } });
    await t.send();
    const replay = await t.send();
    expect(replay.headers.get('content-type')).toBe('application/json');
    expect(replay.headers.get('x-request-id')).toBeNull();
  });

  it('drops user-denied headers as well as the defaults', async () => {
    const t = setup({ replayHeaders: { deny: ['X-Request-Id'] } });
    await t.send();
    const replay = await t.send();
    expect(replay.headers.get('x-request-id')).toBeNull();
    expect(replay.headers.get('content-type')).toBe('application/json');
  });

  it('uses problemTypeBase for problem types and specific titles', async () => {
    const t = setup({ problemTypeBase: 'https://api.example.com/problems/' });
    const body = await json(await t.send({ key: null }));
    expect(body).toMatchObject({
      type: 'https://api.example.com/problems/idempotency_key_missing',
      title: 'Idempotency-Key header missing',
    });
  });

  it('refuses invalid options with IdempotencyConfigError', () => {
    const store = createMemoryStore();
    const bad: Array<Partial<IdempotencyOptions>> = [
      { ttlMs: 0 },
      { leaseMs: 2 },
      { waitMs: -1 },
      { ttlMs: 1.5 },
      { ttlMs: 365 * 86_400_000 + 1 },
      { leaseMs: Number.MAX_SAFE_INTEGER },
      { conflictStatus: 418 as 409 },
      { methods: ['PO ST'] },
      { lookupPath: 'keys' },
      { onEvent: 'x' as unknown as () => void },
    ];
    for (const options of bad)
      expect(() => createIdempotency({ store, ...options })).toThrow(IdempotencyConfigError);
    expect(() => createIdempotency({} as IdempotencyOptions)).toThrow(/store/);
  });

  it('keeps answering when onEvent throws', async () => {
    const t = setup({
      onEvent: () => {
        throw new Error('observer bug');
      },
    });
    expect((await t.send()).status).toBe(201);
    expect((await t.send()).headers.get('idempotent-replayed')).toBe('true');
  });
});

describe('engine: lookup', () => {
  const lookup = (t: ReturnType<typeof setup>, method: string, key: string, authorization?: string) =>
    t.engine.handleLookup(
      new Request(`http://api.test/idempotency-keys/${encodeURIComponent(key)}`, {
        method,
        headers: authorization === undefined ? {} : { authorization },
      }),
    );

  it('returns the caller’s own record with its stored response', async () => {
    const t = setup();
    await t.send({ key: 'k/1', headers: { authorization: 'alice' } });
    const response = (await lookup(t, 'GET', 'k/1', 'alice'))!;
    expect(response.status).toBe(200);
    const record = await json(response);
    expect(record).toMatchObject({
      idempotency_key: 'k/1',
      status: 'completed',
      request: { method: 'POST', path: '/charges' },
      response: { status: 201, body_stored: true },
    });
    expect(JSON.parse((record.response as { body: string }).body)).toMatchObject({ id: 'ch_1' });
  });

  it('answers 404 for another caller’s key', async () => {
    const t = setup();
    await t.send({ key: 'k1', headers: { authorization: 'alice' } });
    const response = (await lookup(t, 'GET', 'k1', 'mallory'))!;
    expect(response.status).toBe(404);
    expect(await response.text()).not.toContain('ch_1');
  });

  it('forgets a completed key on DELETE, after which the key runs anew', async () => {
    const t = setup();
    await t.send({ key: 'k1' });
    expect((await lookup(t, 'DELETE', 'k1'))!.status).toBe(204);
    expect(t.events.at(-1)).toMatchObject({ type: 'forgotten', key: 'k1' });
    expect((await lookup(t, 'GET', 'k1'))!.status).toBe(404);
    expect((await t.send({ key: 'k1', body: '{"amount":3}' })).status).toBe(201);
    expect(t.runs()).toBe(2);
  });

  it('refuses to forget a key still in progress', async () => {
    const t = setup({}, () => new Promise<Response>(() => {}));
    void t.send({ key: 'k1' });
    await settle();
    expect((await lookup(t, 'DELETE', 'k1'))!.status).toBe(409);
    expect(await json((await lookup(t, 'GET', 'k1'))!)).toMatchObject({ status: 'in_progress' });
  });

  it('ignores other paths and refuses other methods', async () => {
    const t = setup();
    expect(await t.engine.handleLookup(new Request('http://api.test/charges'))).toBeUndefined();
    const post = (await lookup(t, 'POST', 'k1'))!;
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, DELETE');
  });
});

describe('engine: lookup when the store fails', () => {
  it('answers 503 and reports a store_error', async () => {
    const t = setup({ store: brokenStore() });
    const response = (await t.engine.handleLookup(new Request('http://api.test/idempotency-keys/k1')))!;
    expect(response.status).toBe(503);
    expect(t.events).toMatchObject([{ type: 'store_error', operation: 'lookup GET', key: 'k1' }]);
  });
});

function brokenStore(): IdempotencyStore {
  const fail = async (): Promise<never> => {
    throw new Error('ECONNREFUSED');
  };
  return {
    acquire: fail,
    renew: fail,
    complete: fail,
    release: fail,
    get: fail,
    delete: fail,
    close: async () => {},
  };
}
