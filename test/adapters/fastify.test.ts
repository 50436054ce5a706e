import { PassThrough } from 'node:stream';
import Fastify, { type FastifyInstance } from 'fastify';
import { afterEach, describe, expect, it } from 'vitest';
import { idempotency } from '../../src/adapters/fastify.js';
import { createIdempotency, type Idempotency } from '../../src/core/engine.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { request } from '../helpers/http.js';
import {
  binaryAnswer,
  chargeAnswer,
  describeAdapter,
  FailError,
  type Runs,
  sleep,
  streamAnswer,
} from './conformance.js';

async function listen(app: FastifyInstance) {
  const address = await app.listen({ port: 0, host: '127.0.0.1' });
  return { url: address, close: () => app.close() };
}

/** Fastify's own parsers (JSON) plus one of the app's: urlencoded, parsed with URLSearchParams. */
function withFormParser(app: FastifyInstance) {
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });
}

describeAdapter({
  name: 'Fastify 5',
  async start(engine: Idempotency, runs: Runs) {
    const app = Fastify();
    withFormParser(app);
    await app.register(idempotency, { engine });
    app.get('/charges', async () => ({ charges: [] }));
    app.post<{ Body: { amount: number } }>('/charges', async (req, reply) => {
      const run = runs.hit('/charges');
      reply.code(201).header('x-charge-id', `ch_${run}`);
      return chargeAnswer(req.body.amount, run);
    });
    app.post('/binary', async (_req, reply) => {
      runs.hit('/binary');
      return reply.type('application/octet-stream').send(binaryAnswer());
    });
    app.post('/stream', async (_req, reply) => {
      runs.hit('/stream');
      return reply.type('application/octet-stream').send(streamAnswer());
    });
    app.post('/throw', async () => {
      runs.hit('/throw');
      throw new Error('the handler failed');
    });
    app.post('/fail', async () => {
      runs.hit('/fail');
      throw new FailError('the bank is down');
    });
    app.post<{ Body: { amount: number } }>('/slow', async (req, reply) => {
      const run = runs.hit('/slow');
      await sleep(200);
      return reply.code(201).send(chargeAnswer(req.body.amount, run));
    });
    app.post('/send-object', (_req, reply) => {
      reply.code(202).send({ accepted: true, run: runs.hit('/send-object') });
    });
    app.post('/send-string', (_req, reply) => {
      reply.type('text/plain').send(`plain text, run ${runs.hit('/send-string')}`);
    });
    app.post('/bad-request', async (_req, reply) => {
      const run = runs.hit('/bad-request');
      return reply.code(422).send({ error: `declined, run ${run}` });
    });
    app.post<{ Body: Record<string, string> }>('/form', async (req, reply) => {
      return reply.code(201).send({ form: req.body, run: runs.hit('/form') });
    });
    return listen(app);
  },
  captures: [
    { path: '/send-object', status: 202 },
    { path: '/send-string', status: 200 },
    { path: '/bad-request', status: 422 },
  ],
  parsers: [
    {
      path: '/form',
      contentType: 'application/x-www-form-urlencoded',
      body: 'a=1&b=2',
      reordered: 'b=2&a=1',
    },
  ],
});

describe('Fastify 5 plugin, per-route config', () => {
  const apps: FastifyInstance[] = [];
  afterEach(async () => {
    await Promise.all(apps.splice(0).map((a) => a.close()));
  });

  async function serve(routes: 'all' | 'opt-in' | undefined) {
    const engine = createIdempotency({ store: createMemoryStore() });
    const app = Fastify();
    apps.push(app);
    await app.register(idempotency, { engine, routes });
    let runs = 0;
    const handler = async () => ({ run: ++runs });
    app.post('/default', handler);
    app.post('/in', { config: { idempotency: true } }, handler);
    app.post('/out', { config: { idempotency: false } }, handler);
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const post = (path: string, key?: string) =>
      request(`${url}${path}`, {
        headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
        body: '{}',
      });
    return { post, runs: () => runs };
  }

  it('guards every route by default, except those whose config opts out', async () => {
    const { post, runs } = await serve(undefined);
    expect((await post('/default')).status).toBe(400);
    await post('/default', 'k1');
    expect((await post('/default', 'k1')).headers['idempotent-replayed']).toBe('true');
    await post('/out', 'k2');
    await post('/out', 'k2');
    expect(runs()).toBe(3);
  });

  it("guards only the routes whose config opts in, with routes: 'opt-in'", async () => {
    const { post, runs } = await serve('opt-in');
    expect((await post('/default')).status).toBe(200);
    expect((await post('/in')).status).toBe(400);
    await post('/in', 'k1');
    expect((await post('/in', 'k1')).headers['idempotent-replayed']).toBe('true');
    expect(runs()).toBe(2);
  });

  it('never runs the handler after a refusal or replay, also with an async onSend hook', async () => {
    // Fastify goes on with the chain after a reply sent from preParsing while an async onSend hook
    // is pending; the plugin answers only from onRequest and preHandler, where it stops.
    const engine = createIdempotency({ store: createMemoryStore() });
    const app = Fastify();
    apps.push(app);
    app.addHook('onSend', async (_req, _reply, payload) => {
      await new Promise((resolve) => setTimeout(resolve, 10));
      return payload;
    });
    await app.register(idempotency, { engine });
    let runs = 0;
    app.post('/charges', async () => ({ run: ++runs }));
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const post = (key: string | undefined, body: string) =>
      request(`${url}/charges`, {
        headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
        body,
      });
    expect((await post('k', '{"a":1}')).status).toBe(200);
    expect((await post('k', '{"a":1}')).headers['idempotent-replayed']).toBe('true');
    expect((await post('k', '{"a":2}')).status).toBe(409);
    expect((await post(undefined, '{"a":1}')).status).toBe(400);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(runs).toBe(1);
  });

  it('leaves request.raw whole for plugins that read it themselves, as @fastify/multipart does (review regression)', async () => {
    const engine = createIdempotency({ store: createMemoryStore() });
    const app = Fastify();
    apps.push(app);
    // A parser that leaves the body to the handler, which reads request.raw, as multipart's busboy does.
    app.addContentTypeParser('multipart/form-data', (_req, _payload, done) => done(null));
    await app.register(idempotency, { engine });
    let runs = 0;
    app.post('/upload', async (req) => {
      let bytes = 0;
      for await (const chunk of req.raw) bytes += (chunk as Buffer).length;
      return { bytes, run: ++runs };
    });
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const body = '--b\r\ncontent-disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n';
    const send = () =>
      request(`${url}/upload`, {
        headers: { 'content-type': 'multipart/form-data; boundary=b', 'idempotency-key': 'up' },
        body,
      });
    const first = await send();
    expect(JSON.parse(first.body.toString())).toEqual({ bytes: Buffer.byteLength(body), run: 1 });
    expect((await send()).headers['idempotent-replayed']).toBe('true');
  });

  it('fingerprints the stream an earlier preParsing hook hands on (a decompressor), and Fastify parses it', async () => {
    const engine = createIdempotency({ store: createMemoryStore(), maxRequestBytes: 1024 });
    const app = Fastify();
    apps.push(app);
    // Stands for a decompressing hook: the body Fastify parses is another stream than request.raw.
    app.addHook('preParsing', async (_req, _reply, payload) => payload.pipe(new PassThrough()));
    await app.register(idempotency, { engine });
    let runs = 0;
    app.post<{ Body: { amount: number } }>('/charges', async (req) => ({
      amount: req.body.amount,
      run: ++runs,
    }));
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const post = (key: string, body: string) =>
      request(`${url}/charges`, {
        headers: { 'content-type': 'application/json', 'idempotency-key': key },
        body,
      });
    const first = await post('k', '{"amount":3}');
    expect(JSON.parse(first.body.toString())).toEqual({ amount: 3, run: 1 });
    expect((await post('k', '{"amount":3}')).headers['idempotent-replayed']).toBe('true');
    expect((await post('k', '{"amount":4}')).status).toBe(409);
    const tooLarge = await post('big', JSON.stringify({ amount: 1, pad: 'x'.repeat(2000) }));
    expect(tooLarge.status).toBe(413);
    expect(runs).toBe(1);
  });

  it('refuses a missing engine and an unknown routes mode when registered', async () => {
    await expect(
      Fastify()
        .register(idempotency, {} as never)
        .ready(),
    ).rejects.toThrow(/engine/);
    const engine = createIdempotency({ store: createMemoryStore() });
    await expect(
      Fastify()
        .register(idempotency, { engine, routes: 'some' as never })
        .ready(),
    ).rejects.toThrow(/'all' or 'opt-in'/);
  });
});
