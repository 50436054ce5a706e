import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { firstGuard } from '../../src/adapters/guard.js';
import { createLookupHandler, withIdempotency } from '../../src/adapters/node.js';
import { createIdempotency } from '../../src/core/engine.js';
import type { IdempotencyEvent } from '../../src/core/events.js';
import type { IdempotencyOptions } from '../../src/core/options.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { deferred } from '../helpers/async.js';
import { createManualClock, settle } from '../helpers/clock.js';
import {
  openSocket,
  postAndHold,
  problemOf,
  request,
  startServer,
  type TestServer,
} from '../helpers/http.js';

const servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(
  handler: (req: IncomingMessage, res: ServerResponse) => unknown,
  options: Partial<IdempotencyOptions> = {},
) {
  const events: IdempotencyEvent[] = [];
  const engine = createIdempotency({
    store: createMemoryStore(),
    onEvent: (e) => events.push(e),
    ...options,
  });
  const server = await startServer(withIdempotency(engine, handler));
  servers.push(server);
  return { engine, events, url: `${server.url}/charges` };
}

const readAll = async (req: IncomingMessage) => {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
};

const json = { 'content-type': 'application/json' };

describe('node:http face', () => {
  it('runs 50 simultaneous same-key requests once; the others get 409 in use', async () => {
    let runs = 0;
    const { url } = await serve(async (req, res) => {
      await readAll(req);
      runs += 1;
      await new Promise((resolve) => setTimeout(resolve, 50));
      res.writeHead(201, json).end('{"id":"ch_1"}');
    });
    const responses = await Promise.all(
      Array.from({ length: 50 }, () =>
        request(url, { headers: { ...json, 'idempotency-key': 'burst' }, body: '{"a":1}' }),
      ),
    );
    expect(runs).toBe(1);
    // Requests that arrive after the first completed get its replay; the ones before, 409 in use.
    const original = responses.filter(
      (r) => r.status === 201 && r.headers['idempotent-replayed'] === undefined,
    );
    const replays = responses.filter((r) => r.headers['idempotent-replayed'] === 'true');
    const inUse = responses.filter((r) => r.status === 409);
    expect(original).toHaveLength(1);
    expect(replays.length + inUse.length).toBe(49);
    expect(inUse.length).toBeGreaterThan(0);
    for (const r of replays) expect(r.body.toString()).toBe('{"id":"ch_1"}');
    for (const r of inUse) expect(problemOf(r).code).toBe('idempotency_key_in_use');
  });

  it('runs 50 simultaneous same-key raw-body requests (hashed as they arrive) once; a changed body gets 409', async () => {
    let runs = 0;
    const payload = Buffer.alloc(40_000, 7);
    const { url } = await serve(async (req, res) => {
      const body = await readAll(req);
      runs += 1;
      await new Promise((resolve) => setTimeout(resolve, 50));
      res.writeHead(201, { 'content-type': 'text/plain' }).end(`got ${body.length}`);
    });
    const headers = { 'content-type': 'application/octet-stream', 'idempotency-key': 'raw-burst' };
    // Half in one piece, half in pieces, so that the bodies arrive chunked differently.
    const pieces = [payload.subarray(0, 10_000), payload.subarray(10_000)];
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, i) => request(url, { headers, body: i % 2 ? pieces : payload })),
    );
    expect(runs).toBe(1);
    const original = responses.filter(
      (r) => r.status === 201 && r.headers['idempotent-replayed'] === undefined,
    );
    expect(original).toHaveLength(1);
    expect(original[0]!.body.toString()).toBe('got 40000');
    const others = responses.filter((r) => r !== original[0]);
    for (const r of others) {
      if (r.status === 201)
        expect([r.headers['idempotent-replayed'], r.body.toString()]).toEqual(['true', 'got 40000']);
      else expect(problemOf(r).code).toBe('idempotency_key_in_use');
    }
    const changed = Buffer.from(payload);
    changed[39_999] = 8;
    const reused = await request(url, { headers, body: changed });
    expect(problemOf(reused).code).toBe('idempotency_key_reused');
    expect(runs).toBe(1);
  });

  it('with waitMs, answers all 50 simultaneous requests with the one stored response', async () => {
    let runs = 0;
    const { url } = await serve(
      async (req, res) => {
        await readAll(req);
        runs += 1;
        await new Promise((resolve) => setTimeout(resolve, 50));
        res.writeHead(201, json).end(`{"run":${runs}}`);
      },
      { waitMs: 5_000 },
    );
    const responses = await Promise.all(
      Array.from({ length: 50 }, () =>
        request(url, { headers: { ...json, 'idempotency-key': 'burst' }, body: '{"a":1}' }),
      ),
    );
    expect(runs).toBe(1);
    expect(new Set(responses.map((r) => `${r.status} ${r.body.toString()}`))).toEqual(
      new Set(['201 {"run":1}']),
    );
    expect(responses.filter((r) => r.headers['idempotent-replayed'] === 'true')).toHaveLength(49);
  });

  it('replays a binary body written in pieces byte for byte, with the original status and headers', async () => {
    const payload = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 7) % 256));
    const { url } = await serve((_req, res) => {
      res.statusCode = 202;
      res.setHeader('content-type', 'application/octet-stream');
      res.setHeader('x-multi', ['a', 'b']);
      res.write(payload.subarray(0, 1000));
      res.write(payload.subarray(1000, 50_000));
      res.end(payload.subarray(50_000));
    });
    const headers = { 'idempotency-key': 'bin' };
    const first = await request(url, { headers });
    const retry = await request(url, { headers });
    expect(first.status).toBe(202);
    expect(first.body.equals(payload)).toBe(true);
    expect(retry.status).toBe(202);
    expect(retry.body.equals(payload)).toBe(true);
    expect(retry.headers['content-type']).toBe('application/octet-stream');
    expect(retry.headers['x-multi']).toBe('a, b');
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.headers['content-length']).toBe(String(payload.length));
  });

  it('marks a guarded request without an enumerable property: a copy of it is not marked', () => {
    const req = { method: 'POST' };
    expect(firstGuard(req)).toBe(true);
    expect(firstGuard(req)).toBe(false);
    expect(Object.keys(req)).toEqual(['method']);
    expect(firstGuard({ ...req })).toBe(true);
  });

  it('hashes a body that is not JSON as it arrives (begin gets a digest), JSON and hooked bodies whole', async () => {
    const seen: string[] = [];
    const handler = async (req: IncomingMessage, res: ServerResponse) => {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      res.writeHead(201, { 'content-type': 'text/plain' });
      res.end(`read ${Buffer.concat(chunks).length}`);
    };
    const spy = (options: Partial<IdempotencyOptions> = {}) => {
      const engine = createIdempotency({ store: createMemoryStore(), ...options });
      const begin = engine.begin.bind(engine);
      engine.begin = (request, key, body) => {
        seen.push(body instanceof Uint8Array ? `bytes ${body.byteLength}` : `digest ${body.size}`);
        return begin(request, key, body);
      };
      return engine;
    };
    const server = await startServer(withIdempotency(spy(), handler));
    servers.push(server);
    const pieces = [Buffer.alloc(30_000, 1), Buffer.alloc(30_000, 2), Buffer.alloc(10, 3)];
    const raw = { 'content-type': 'application/octet-stream', 'idempotency-key': 'raw' };
    const first = await request(`${server.url}/up`, { headers: raw, body: pieces });
    const retry = await request(`${server.url}/up`, { headers: raw, body: Buffer.concat(pieces) });
    const other = await request(`${server.url}/up`, { headers: raw, body: Buffer.alloc(60_010, 1) });
    expect([first.status, first.body.toString()]).toEqual([201, 'read 60010']);
    expect([retry.status, retry.headers['idempotent-replayed']]).toEqual([201, 'true']);
    expect(other.status).toBe(409);
    const json = { 'content-type': 'application/json', 'idempotency-key': 'json' };
    expect((await request(`${server.url}/up`, { headers: json, body: '{"a":1}' })).status).toBe(201);
    expect(seen).toEqual(['digest 60010', 'digest 60010', 'digest 60010', 'bytes 7']);

    seen.length = 0;
    const hooked = await startServer(withIdempotency(spy({ fingerprint: (r) => r.body }), handler));
    servers.push(hooked);
    expect((await request(`${hooked.url}/up`, { headers: raw, body: pieces })).status).toBe(201);
    expect(seen).toEqual(['bytes 60010']);
  });

  it('captures a response piped from a stream, and writeHead with headers given inline', async () => {
    const parts = [Buffer.from([0, 1, 2]), Buffer.from('héllo', 'utf8'), Buffer.from([255, 254])];
    const { url } = await serve(async (_req, res) => {
      res.writeHead(200, 'Fine', [
        ['content-type', 'application/x-custom'],
        ['x-tag', 'one'],
      ]);
      await pipeline(Readable.from(parts), res);
    });
    const first = await request(url, { headers: { 'idempotency-key': 'pipe' } });
    const retry = await request(url, { headers: { 'idempotency-key': 'pipe' } });
    expect(retry.body.equals(Buffer.concat(parts))).toBe(true);
    expect(retry.body.equals(first.body)).toBe(true);
    expect(retry.headers['x-tag']).toBe('one');
    expect(retry.headers['content-type']).toBe('application/x-custom');
  });

  it('captures strings written with an explicit encoding', async () => {
    const { url } = await serve((_req, res) => {
      res.setHeader('content-type', 'text/plain; charset=latin1');
      res.write('caf\u00e9 ', 'latin1');
      res.end('6869', 'hex');
    });
    const first = await request(url, { headers: { 'idempotency-key': 'enc' } });
    const retry = await request(url, { headers: { 'idempotency-key': 'enc' } });
    expect(first.body.equals(Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0x68, 0x69]))).toBe(true);
    expect(retry.body.equals(first.body)).toBe(true);
  });

  describe('the handler reads its body as usual', () => {
    const bodies: Array<[string, string | Buffer | Buffer[]]> = [
      ['a small JSON body', '{"amount":1000}'],
      ['an empty body', ''],
      ['a 1 MiB binary body', Buffer.alloc(1 << 20, 7)],
      ['a body arriving in delayed chunks', [Buffer.from('{"am'), Buffer.from('ount"'), Buffer.from(':1}')]],
    ];
    const readers: Array<[string, (req: IncomingMessage) => Promise<Buffer>]> = [
      ['for await', readAll],
      [
        "on('data')",
        (req) =>
          new Promise((resolve) => {
            const chunks: Buffer[] = [];
            req.on('data', (c: Buffer) => chunks.push(c));
            req.on('end', () => resolve(Buffer.concat(chunks)));
          }),
      ],
      [
        'pipe',
        (req) =>
          new Promise((resolve) => {
            const chunks: Buffer[] = [];
            const sink = new Writable({
              write(chunk, _enc, cb) {
                chunks.push(chunk);
                cb();
              },
            });
            sink.on('finish', () => resolve(Buffer.concat(chunks)));
            req.pipe(sink);
          }),
      ],
      [
        "read() on 'readable'",
        (req) =>
          new Promise((resolve) => {
            const chunks: Buffer[] = [];
            req.on('readable', () => {
              for (let c = req.read(); c !== null; c = req.read()) chunks.push(c);
            });
            req.on('end', () => resolve(Buffer.concat(chunks)));
          }),
      ],
    ];
    for (const [bodyName, body] of bodies) {
      for (const [readerName, read] of readers) {
        it(`reads ${bodyName} with ${readerName}`, async () => {
          const expected = Array.isArray(body) ? Buffer.concat(body) : Buffer.from(body);
          let got: Buffer | undefined;
          const { url } = await serve(async (req, res) => {
            got = await read(req);
            res.end('ok');
          });
          const response = await request(url, {
            headers: { 'idempotency-key': 'read', 'content-type': 'application/octet-stream' },
            body,
          });
          expect(response.status).toBe(200);
          expect(got?.equals(expected)).toBe(true);
        });
      }
    }
  });

  describe('a body already buffered when the guard starts (the unshift path)', () => {
    const bodies: Array<[string, string | Buffer | Buffer[], Record<string, string>]> = [
      ['a small body', '{"amount":1}', {}],
      ['a 1 MiB body', Buffer.alloc(1 << 20, 3), {}],
      ['an empty chunked body', [], { 'transfer-encoding': 'chunked' }],
      ['a body still arriving', [Buffer.from('ab'), Buffer.from('cd')], {}],
    ];
    for (const [name, body, headers] of bodies) {
      it(`restores ${name} for a handler reading with on('data')`, async () => {
        const engine = createIdempotency({ store: createMemoryStore() });
        let got: Buffer | undefined;
        const guarded = withIdempotency(engine, (req, res) => {
          const chunks: Buffer[] = [];
          req.on('data', (c: Buffer) => chunks.push(c));
          req.on('end', () => {
            got = Buffer.concat(chunks);
            res.end('ok');
          });
        });
        const server = await startServer(async (req, res) => {
          await new Promise((resolve) => setTimeout(resolve, 30)); // the body arrives meanwhile
          return guarded(req, res);
        });
        servers.push(server);
        const response = await request(`${server.url}/x`, {
          headers: { ...headers, 'idempotency-key': 'late' },
          body,
        });
        expect(response.status).toBe(200);
        const expected = Array.isArray(body) ? Buffer.concat(body) : Buffer.from(body);
        expect(got?.equals(expected)).toBe(true);
      });
    }
  });

  describe('an empty body sent in the same packet as the headers still ends for the handler', () => {
    const raw: Array<[string, string]> = [
      ['chunked', 'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
      ['without any length', '\r\n'],
      ['chunked with a body', 'Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'],
    ];
    for (const [name, tail] of raw) {
      it(`when ${name}`, async () => {
        const { url } = await serve((req, res) => {
          const chunks: Buffer[] = [];
          req.on('data', (c: Buffer) => chunks.push(c));
          req.on('end', () => res.end(`got:${Buffer.concat(chunks).toString()}`));
        });
        const socket = await openSocket(url);
        const answer = new Promise<string>((resolve) => {
          let text = '';
          socket.on('data', (d) => {
            text += d.toString();
            if (text.includes('got:')) resolve(text);
          });
        });
        socket.write(
          `POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: raw-${name.replaceAll(' ', '-')}\r\n${tail}`,
        );
        const text = await answer;
        socket.destroy();
        expect(text).toMatch(/^HTTP\/1\.1 200/);
        expect(text).toContain(name === 'chunked with a body' ? 'got:abc' : 'got:');
      });
    }
  });

  it('serves many guarded requests on one keep-alive connection', async () => {
    const { url } = await serve(async (req, res) => {
      res.end(await readAll(req));
    });
    const { Agent } = await import('node:http');
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let i = 0; i < 20; i++) {
        const r = await request(url, { agent, headers: { 'idempotency-key': `ka-${i}` }, body: `body-${i}` });
        expect(r.body.toString()).toBe(`body-${i}`);
      }
    } finally {
      agent.destroy();
    }
  });

  it('renews the lease on the real clock: retries during a handler 4x slower than leaseMs all get 409', async () => {
    let runs = 0;
    const { url } = await serve(
      async (_req, res) => {
        runs += 1;
        await new Promise((resolve) => setTimeout(resolve, 1_200));
        res.writeHead(201).end('slow');
      },
      { leaseMs: 300 },
    );
    const headers = { 'idempotency-key': 'real-clock' };
    const first = request(url, { headers });
    const statuses: number[] = [];
    await new Promise((resolve) => setTimeout(resolve, 50));
    for (let i = 0; i < 10; i++) {
      statuses.push((await request(url, { headers })).status);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect((await first).status).toBe(201);
    expect(statuses.every((status) => status === 409)).toBe(true);
    expect(runs).toBe(1);
  });

  it('never runs a handler slower than 3x leaseMs twice: the lease is renewed meanwhile', async () => {
    const clock = createManualClock();
    let runs = 0;
    const { promise: slow, resolve: finish } = deferred();
    const { url } = await serve(
      async (_req, res) => {
        runs += 1;
        await slow;
        res.writeHead(201).end('slow');
      },
      { leaseMs: 1_000, clock },
    );
    const headers = { 'idempotency-key': 'slow' };
    const first = request(url, { headers });
    while (runs === 0) await settle();
    for (let i = 0; i < 12; i++) {
      await clock.advance(300);
      expect((await request(url, { headers })).status).toBe(409);
    }
    finish();
    expect((await first).status).toBe(201);
    const replay = await request(url, { headers });
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('lets another server take over a crashed claim once its lease lapses, and runs it once there', async () => {
    const store = createMemoryStore();
    const clock = createManualClock();
    // The crashed instance: a frozen clock (no renewals) and a handler that never answers.
    const crashed = createIdempotency({ store, leaseMs: 1_000, clock: createManualClock(clock.now()) });
    const dead = await startServer(withIdempotency(crashed, () => {}));
    servers.push(dead);
    let runs = 0;
    const alive = createIdempotency({ store, leaseMs: 1_000, clock });
    const live = await startServer(
      withIdempotency(alive, (_req, res) => {
        runs += 1;
        res.writeHead(201).end('ran');
      }),
    );
    servers.push(live);
    const headers = { 'idempotency-key': 'crash' };
    void request(`${dead.url}/c`, { headers }).catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect((await request(`${live.url}/c`, { headers })).status).toBe(409);
    await clock.advance(1_000);
    const takeover = await request(`${live.url}/c`, { headers });
    expect(takeover.status).toBe(201);
    expect((await request(`${live.url}/c`, { headers })).headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('releases the key when the handler throws, answering 500 without a stack trace', async () => {
    let calls = 0;
    const { url, events } = await serve((_req, res) => {
      calls += 1;
      if (calls === 1) throw new Error('secret internals');
      res.writeHead(201).end('second');
    });
    const headers = { 'idempotency-key': 'throw' };
    const failed = await request(url, { headers });
    expect(failed.status).toBe(500);
    expect(failed.headers['content-type']).toBe('application/problem+json');
    expect(failed.body.toString()).not.toContain('secret internals');
    expect((await request(url, { headers })).status).toBe(201);
    expect(calls).toBe(2);
    expect(events.find((e) => e.type === 'released')).toMatchObject({ reason: 'handler_error' });
  });

  it('releases the key when an async handler rejects', async () => {
    let calls = 0;
    const { url } = await serve(async (_req, res) => {
      calls += 1;
      if (calls === 1) throw new Error('async boom');
      res.end('ok');
    });
    const headers = { 'idempotency-key': 'reject' };
    expect((await request(url, { headers })).status).toBe(500);
    expect((await request(url, { headers })).status).toBe(200);
    expect(calls).toBe(2);
  });

  it('releases the key when the handler answers 503', async () => {
    let calls = 0;
    const { url } = await serve((_req, res) => {
      calls += 1;
      res.writeHead(calls === 1 ? 503 : 201).end();
    });
    const headers = { 'idempotency-key': '5xx' };
    expect((await request(url, { headers })).status).toBe(503);
    expect((await request(url, { headers })).status).toBe(201);
    expect((await request(url, { headers })).headers['idempotent-replayed']).toBe('true');
  });

  it('frees the key one lease after its client left a handler that never answers', async () => {
    const clock = createManualClock();
    let calls = 0;
    const { url } = await serve(
      (_req, res) => {
        calls += 1;
        if (calls > 1) res.end('second');
      },
      { leaseMs: 1_000, clock },
    );
    const socket = await postAndHold(url, 'gone');
    while (calls === 0) await settle();
    socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 20));
    // The handler might still be working (nothing tells), so a retry must not run beside it yet.
    expect((await request(url, { headers: { 'idempotency-key': 'gone' } })).status).toBe(409);
    await clock.advance(1_000);
    const retry = await request(url, { headers: { 'idempotency-key': 'gone' } });
    expect(retry.status).toBe(200);
    expect(retry.body.toString()).toBe('second');
    expect(calls).toBe(2);
  });

  it('stores a callback-style answer that comes after its client left, and never runs twice (regression)', async () => {
    let runs = 0;
    const { url, events } = await serve((req, res) => {
      req.resume();
      req.on('end', () => {
        runs += 1;
        setTimeout(() => res.writeHead(201).end('charged once'), 50);
      });
    });
    const socket = await postAndHold(url, 'cb');
    while (runs === 0) await settle();
    socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect((await request(url, { headers: { 'idempotency-key': 'cb' } })).status).toBe(409);
    while (!events.some((e) => e.type === 'completed')) await settle();
    const replay = await request(url, { headers: { 'idempotency-key': 'cb' } });
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body.toString()).toBe('charged once');
    expect(runs).toBe(1);
  });

  it('reads as ended while the record is stored: a fallback sees writableEnded (regression)', async () => {
    let sawEnded: boolean | undefined;
    const { url } = await serve((_req, res) => {
      res.setHeader('content-type', 'text/plain');
      res.end('found');
      // A framework's "nothing answered yet?" fallback, run while the record is being stored:
      sawEnded = res.writableEnded;
      if (!res.writableEnded) {
        res.statusCode = 404;
        res.end('not found');
      }
    });
    const first = await request(url, { headers: { 'idempotency-key': 'fallback' } });
    const replay = await request(url, { headers: { 'idempotency-key': 'fallback' } });
    expect([first.status, first.body.toString()]).toEqual([200, 'found']);
    expect([replay.status, replay.body.toString()]).toEqual([200, 'found']);
    expect(first.headers['content-length']).toBe('5');
    expect(sawEnded).toBe(true);
  });

  it('releases the key when end() itself throws on a bad chunk (regression)', async () => {
    let calls = 0;
    const { url } = await serve((_req, res) => {
      calls += 1;
      if (calls === 1) res.end(123 as unknown as string);
      else res.end('ok');
    });
    const first = await request(url, { headers: { 'idempotency-key': 'bad-chunk-end' } });
    expect(first.status).toBe(500);
    expect((await request(url, { headers: { 'idempotency-key': 'bad-chunk-end' } })).body.toString()).toBe(
      'ok',
    );
    expect(calls).toBe(2);
  });

  it('treats a second end() as Node does: the response and the replay stay whole (regression)', async () => {
    const { url } = await serve((_req, res) => {
      res.end('the body');
      if (!res.writableEnded) res.end();
    });
    const first = await request(url, { headers: { 'idempotency-key': 'twice' } });
    const replay = await request(url, { headers: { 'idempotency-key': 'twice' } });
    expect(first.body.toString()).toBe('the body');
    expect(replay.body.toString()).toBe('the body');
  });

  it('keeps the key while an async handler still runs after its client left, then stores its answer', async () => {
    const { promise: working, resolve: finish } = deferred();
    let runs = 0;
    const { url, events } = await serve(async (_req, res) => {
      runs += 1;
      await working;
      res.writeHead(201).end('late but stored');
    });
    const socket = await postAndHold(url, 'left');
    while (runs === 0) await settle();
    socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect((await request(url, { headers: { 'idempotency-key': 'left' } })).status).toBe(409);
    finish();
    while (!events.some((e) => e.type === 'completed')) await settle();
    const replay = await request(url, { headers: { 'idempotency-key': 'left' } });
    expect(replay.body.toString()).toBe('late but stored');
    expect(runs).toBe(1);
  });

  describe('bad input gets a specific 400 problem+json and the handler never runs', () => {
    const cases: Array<[string, Record<string, string | string[]>, string, string | undefined]> = [
      ['a missing key', {}, 'idempotency_key_missing', undefined],
      ['an empty key', { 'idempotency-key': '' }, 'idempotency_key_invalid', 'empty'],
      ['a header list', { 'idempotency-key': ['a', 'b'] }, 'idempotency_key_invalid', 'list'],
      ['an oversized key', { 'idempotency-key': 'k'.repeat(256) }, 'idempotency_key_invalid', 'too_long'],
      ['a non-ASCII key', { 'idempotency-key': 'cl\u00e9' }, 'idempotency_key_invalid', 'not_printable'],
      ['a broken quoted key', { 'idempotency-key': '"abc' }, 'idempotency_key_invalid', 'malformed'],
    ];
    for (const [name, headers, code, reason] of cases) {
      it(`answers ${name}`, async () => {
        let runs = 0;
        const { url } = await serve((_req, res) => {
          runs += 1;
          res.end();
        });
        const response = await request(url, { headers, body: '{}' });
        expect(response.status).toBe(400);
        expect(response.headers['content-type']).toBe('application/problem+json');
        const problem = problemOf(response);
        expect(problem).toMatchObject({ status: 400, code });
        if (reason !== undefined) expect(problem.reason).toBe(reason);
        expect(runs).toBe(0);
      });
    }

    it('answers 413 to a body over maxRequestBytes, by Content-Length or by counting', async () => {
      let runs = 0;
      const { url } = await serve(
        (_req, res) => {
          runs += 1;
          res.end();
        },
        { maxRequestBytes: 100 },
      );
      const declared = await request(url, { headers: { 'idempotency-key': 'big' }, body: Buffer.alloc(101) });
      expect(declared.status).toBe(413);
      expect(problemOf(declared).code).toBe('request_body_too_large');
      const chunked = await request(url, {
        headers: { 'idempotency-key': 'big2', 'transfer-encoding': 'chunked' },
        body: [Buffer.alloc(60), Buffer.alloc(60)],
      });
      expect(chunked.status).toBe(413);
      expect(runs).toBe(0);
    });

    it('leaves a malformed chunked body to Node’s own 400, without running the handler or holding the key', async () => {
      let runs = 0;
      const { url } = await serve((_req, res) => {
        runs += 1;
        res.end('ran');
      });
      const socket = await openSocket(url);
      const answer = new Promise<string>((resolve) => {
        let text = '';
        socket.on('data', (d) => {
          text += d.toString();
        });
        socket.on('close', () => resolve(text));
      });
      socket.write(
        'POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: bad-chunk\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      );
      // Node's HTTP parser refuses the chunk size and answers 400 itself before closing the socket.
      expect(await answer).toMatch(/^HTTP\/1\.1 400/);
      expect(runs).toBe(0);
      expect((await request(url, { headers: { 'idempotency-key': 'bad-chunk' } })).status).toBe(200);
    });

    it('does not run the handler, nor hold the key, when the body is cut off', async () => {
      let runs = 0;
      const { url, events } = await serve((_req, res) => {
        runs += 1;
        res.end('ran');
      });
      const socket = await openSocket(url);
      socket.write(
        'POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: cut\r\nContent-Length: 100\r\n\r\n0123456789',
      );
      await new Promise((resolve) => setTimeout(resolve, 20));
      socket.destroy();
      while (!events.some((e) => e.type === 'rejected')) await settle();
      expect(events.find((e) => e.type === 'rejected')).toMatchObject({
        reason: 'body_unreadable',
        key: 'cut',
      });
      expect(runs).toBe(0);
      expect((await request(url, { headers: { 'idempotency-key': 'cut' } })).status).toBe(200);
    });
  });

  it('passes GET and keyless requests with required: false straight to the handler', async () => {
    let runs = 0;
    const { url, events } = await serve(
      (_req, res) => {
        runs += 1;
        res.end('plain');
      },
      { required: false },
    );
    expect((await request(url, { method: 'GET', headers: { 'idempotency-key': 'x' } })).body.toString()).toBe(
      'plain',
    );
    expect((await request(url, { body: '{}' })).body.toString()).toBe('plain');
    expect(runs).toBe(2);
    expect(events).toEqual([]);
  });

  it('answers the lookup API for the caller’s own key', async () => {
    const engine = createIdempotency({ store: createMemoryStore() });
    const lookup = createLookupHandler(engine);
    const server = await startServer(
      withIdempotency(engine, async (req, res) => {
        if (await lookup(req, res)) return;
        res.writeHead(201, json).end('{"id":"ch_9"}');
      }),
    );
    servers.push(server);
    const alice = { authorization: 'Bearer alice' };
    await request(`${server.url}/charges`, { headers: { ...alice, 'idempotency-key': 'look' } });
    const own = await request(`${server.url}/idempotency-keys/look`, { method: 'GET', headers: alice });
    expect(own.status).toBe(200);
    expect(JSON.parse(own.body.toString())).toMatchObject({
      status: 'completed',
      response: { status: 201, body: '{"id":"ch_9"}' },
    });
    const other = await request(`${server.url}/idempotency-keys/look`, {
      method: 'GET',
      headers: { authorization: 'Bearer eve' },
    });
    expect(other.status).toBe(404);
    expect(
      (await request(`${server.url}/idempotency-keys/look`, { method: 'DELETE', headers: alice })).status,
    ).toBe(204);
    expect(
      (await request(`${server.url}/idempotency-keys/look`, { method: 'GET', headers: alice })).status,
    ).toBe(404);
  });
});
