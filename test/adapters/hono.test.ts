import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { stream } from 'hono/streaming';
import { describe, expect, it } from 'vitest';
import { idempotency } from '../../src/adapters/hono.js';
import { createIdempotency, type Idempotency } from '../../src/core/engine.js';
import { IdempotencyConfigError } from '../../src/core/errors.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import {
  binaryAnswer,
  chargeAnswer,
  describeAdapter,
  FailError,
  type Runs,
  sleep,
  streamAnswer,
} from './conformance.js';

/** The conformance routes on Hono, the middleware app-wide. */
function honoApp(engine: Idempotency, runs: Runs): Hono {
  const app = new Hono();
  app.onError((error, c) => (error instanceof HTTPException ? error.getResponse() : c.text('failed', 500)));
  app.use(idempotency(engine));
  app.get('/charges', (c) => c.json({ charges: [] }));
  app.post('/charges', async (c) => {
    const { amount } = await c.req.json<{ amount: number }>();
    const run = runs.hit('/charges');
    c.header('x-charge-id', `ch_${run}`);
    return c.json(chargeAnswer(amount, run), 201);
  });
  app.post('/binary', (c) => {
    runs.hit('/binary');
    return c.body(binaryAnswer(), 200, { 'content-type': 'application/octet-stream' });
  });
  app.post('/stream', (c) => {
    runs.hit('/stream');
    c.header('content-type', 'application/octet-stream');
    return stream(c, async (out) => {
      for await (const chunk of streamAnswer()) await out.write(chunk as Uint8Array);
    });
  });
  app.post('/throw', () => {
    runs.hit('/throw');
    throw new Error('the handler failed');
  });
  app.post('/fail', () => {
    runs.hit('/fail');
    throw new HTTPException(503, { message: 'the bank is down', cause: new FailError() });
  });
  app.post('/slow', async (c) => {
    const { amount } = await c.req.json<{ amount: number }>();
    const run = runs.hit('/slow');
    await sleep(200);
    return c.json(chargeAnswer(amount, run), 201);
  });
  app.post('/text', (c) => c.text(`accepted, run ${runs.hit('/text')}`, 202));
  app.post('/response', () => {
    const run = runs.hit('/response');
    return new Response(`<p>run ${run}</p>`, { status: 201, headers: { 'content-type': 'text/html' } });
  });
  app.post('/form', async (c) => {
    const form = await c.req.parseBody();
    return c.json({ form, run: runs.hit('/form') }, 201);
  });
  return app;
}

const honoCase = (name: string, bindings: boolean) => ({
  name,
  async start(engine: Idempotency, runs: Runs) {
    const app = honoApp(engine, runs);
    // Without node-server's bindings in c.env, the middleware takes the fetch face, as on Bun,
    // Deno and Workers.
    const fetch = bindings ? app.fetch : (request: Request) => app.fetch(request);
    const server = await new Promise<Server>((resolve) => {
      const s = serve({ fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s as Server));
    });
    const { port } = server.address() as { port: number };
    return {
      url: `http://127.0.0.1:${port}`,
      close: () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    };
  },
  captures: [
    { path: '/text', status: 202 },
    { path: '/response', status: 201 },
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

describeAdapter(honoCase('Hono 4 on @hono/node-server (its Node bindings)', true));
describeAdapter(honoCase('Hono 4, fetch face (no Node bindings, as on Bun, Deno and Workers)', false));

describe('Hono 4 middleware, in process', () => {
  it('refuses a body a middleware before it has read, with a setup error', async () => {
    const engine = createIdempotency({ store: createMemoryStore() });
    const app = new Hono();
    let seen: unknown;
    app.onError((error, c) => {
      seen = error;
      return c.text('setup error', 500);
    });
    app.use(async (c, next) => {
      await c.req.raw.clone().text(); // a clone leaves the body alone
      await c.req.raw.text(); // this does not
      await next();
    });
    app.use(idempotency(engine));
    app.post('/charges', (c) => c.text('ran'));
    const res = await app.request('/charges', {
      method: 'POST',
      headers: { 'idempotency-key': 'k', 'content-type': 'application/json' },
      body: '{}',
    });
    expect(res.status).toBe(500);
    expect(seen).toBeInstanceOf(IdempotencyConfigError);
    expect((seen as Error).message).toMatch(/read before the idempotency layer/);
  });

  it('keeps headers a middleware before it set on replays and refusals', async () => {
    const engine = createIdempotency({ store: createMemoryStore() });
    const app = new Hono();
    app.use(async (c, next) => {
      await next();
      c.header('x-request-id', 'r1');
    });
    app.use(idempotency(engine));
    app.post('/charges', (c) => c.json({ ok: true }, 201));
    const send = () =>
      app.request('/charges', { method: 'POST', headers: { 'idempotency-key': 'k' }, body: '{}' });
    await send();
    const replay = await send();
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.headers.get('x-request-id')).toBe('r1');
  });
});
