import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import compression from 'compression';
import express5 from 'express';
import express4 from 'express4';
import { afterEach, describe, expect, it } from 'vitest';
import { idempotency, keepRawBody } from '../../src/adapters/express.js';
import { createIdempotency, type Idempotency } from '../../src/core/engine.js';
import { IdempotencyConfigError } from '../../src/core/errors.js';
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

const file = join(mkdtempSync(join(tmpdir(), 'idemkit-express-')), 'receipt.txt');
writeFileSync(file, 'receipt: one charge, captured\n'.repeat(64));

type Express = typeof express5;

/**
 * The conformance app on Express. `placement` says where the middleware runs: `before` the body
 * parsers (it reads the stream itself), or `after` them (their bytes kept with `keepRawBody`).
 */
function start(express: Express, placement: 'before' | 'after') {
  return async (engine: Idempotency, runs: Runs) => {
    const app = express();
    const guard = idempotency(engine);
    const verify = placement === 'after' ? keepRawBody : undefined;
    if (placement === 'before') app.use(guard);
    app.use(express.json({ verify }));
    app.use(express.urlencoded({ extended: false, verify }));
    app.use(express.raw({ verify }));
    if (placement === 'after') app.use(guard);

    app.get('/charges', (_req, res) => {
      res.json({ charges: [] });
    });
    app.post('/charges', (req, res) => {
      const run = runs.hit('/charges');
      res.set('x-charge-id', `ch_${run}`).status(201).json(chargeAnswer(req.body.amount, run));
    });
    app.post('/binary', (_req, res) => {
      runs.hit('/binary');
      res.type('application/octet-stream').send(binaryAnswer());
    });
    app.post('/stream', (_req, res) => {
      runs.hit('/stream');
      res.status(200).type('application/octet-stream');
      streamAnswer().pipe(res);
    });
    app.post('/throw', () => {
      runs.hit('/throw');
      throw new Error('the handler failed');
    });
    app.post('/fail', (_req, _res, next) => {
      runs.hit('/fail');
      next(new FailError('the bank is down'));
    });
    app.post('/slow', async (req, res) => {
      const run = runs.hit('/slow');
      await sleep(200);
      res.status(201).json(chargeAnswer(req.body.amount, run));
    });
    app.post('/send', (_req, res) => {
      res.status(202).send(`<p>accepted, run ${runs.hit('/send')}</p>`);
    });
    app.post('/end', (_req, res) => {
      res.writeHead(201, { 'content-type': 'text/plain' });
      res.end(`created, run ${runs.hit('/end')}`);
    });
    app.post('/write', (_req, res) => {
      const run = runs.hit('/write');
      res.status(200).type('text/plain');
      res.write('part one, ');
      res.write(Buffer.from(`run ${run}, `));
      res.end('the end');
    });
    app.post('/sendfile', (_req, res) => {
      runs.hit('/sendfile');
      res.sendFile(file);
    });
    app.post('/next-error', (_req, _res, next) => {
      const run = runs.hit('/next-error');
      next(Object.assign(new Error(`declined, run ${run}`), { status: 422 }));
    });
    app.post('/form', (req, res) => {
      res.status(201).json({ form: req.body, run: runs.hit('/form') });
    });
    app.post('/raw', (req, res) => {
      res.status(201).json({ bytes: (req.body as Buffer).length, run: runs.hit('/raw') });
    });
    app.use((error: Error & { status?: number }, _req: unknown, res: express5.Response, _next: unknown) => {
      res.status(error.status ?? 500).json({ error: error.message });
    });

    const server: Server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    const { port } = server.address() as AddressInfo;
    return {
      url: `http://127.0.0.1:${port}`,
      close: () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    };
  };
}

const captures = [
  { path: '/send', status: 202 },
  { path: '/end', status: 201 },
  { path: '/write', status: 200 },
  { path: '/sendfile', status: 200 },
  { path: '/next-error', status: 422 },
];
const parsers = [
  { path: '/form', contentType: 'application/x-www-form-urlencoded', body: 'a=1&b=2', reordered: 'b=2&a=1' },
  { path: '/raw', contentType: 'application/octet-stream', body: 'abc', reordered: 'cba' },
];

for (const [version, express] of [
  ['5', express5],
  ['4', express4 as unknown as Express],
] as const) {
  for (const placement of ['before', 'after'] as const) {
    describeAdapter({
      name: `Express ${version} (mounted ${placement} the body parsers)`,
      start: start(express, placement),
      captures,
      parsers,
    });
  }
}

describe('Express middleware, placement', () => {
  const engine = () => createIdempotency({ store: createMemoryStore() });
  async function listen(app: ReturnType<Express>) {
    const server: Server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    servers.push(server);
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }
  const servers: Server[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      s.close();
    }
  });
  const post = (url: string, key: string, body = '{"amount":1}') =>
    request(url, { headers: { 'content-type': 'application/json', 'idempotency-key': key }, body });

  it('passes a setup error to the error handlers when a parser before it kept no raw bytes', async () => {
    const app = express5();
    let runs = 0;
    let seen: unknown;
    app.use(express5.json(), idempotency(engine()));
    app.post('/charges', (_req, res) => {
      runs += 1;
      res.json({});
    });
    app.use((error: unknown, _req: unknown, res: express5.Response, _next: unknown) => {
      seen = error;
      res.status(500).end();
    });
    const url = await listen(app);
    expect((await post(`${url}/charges`, 'k')).status).toBe(500);
    expect(seen).toBeInstanceOf(IdempotencyConfigError);
    expect((seen as Error).message).toMatch(/keepRawBody/);
    expect(runs).toBe(0);
  });

  it('fingerprints the path the client sent, also under a mount point', async () => {
    const app = express5();
    const router = express5.Router();
    router.use(idempotency(engine()));
    router.post('/charges', (req, res) => {
      res.status(201).json({ at: req.originalUrl });
    });
    app.use('/v1', router);
    app.use('/v2', router);
    const url = await listen(app);
    expect((await post(`${url}/v1/charges`, 'k')).status).toBe(201);
    // Same key and body on another path: another request, not a replay of the first.
    const other = await post(`${url}/v2/charges`, 'k');
    expect(other.status).toBe(409);
    expect(JSON.parse(other.body.toString())).toMatchObject({
      original_request: { path: '/v1/charges' },
    });
  });

  it('keeps capturing inside a mounted sub-app, which swaps the response prototype (review regression)', async () => {
    const app = express5();
    const sub = express5();
    let runs = 0;
    app.use(idempotency(engine()));
    sub.use(express5.json());
    sub.post('/charges', (_req, res) => {
      res.status(201).json({ run: ++runs });
    });
    sub.post('/throw', () => {
      runs += 1;
      throw new Error('failed');
    });
    app.use('/v1', sub);
    const url = await listen(app);
    const first = await post(`${url}/v1/charges`, 'k');
    const again = await post(`${url}/v1/charges`, 'k');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body.equals(first.body)).toBe(true);
    expect((await post(`${url}/v1/throw`, 't')).status).toBe(500);
    expect((await post(`${url}/v1/throw`, 't')).status).toBe(500); // released, not 409
    expect(runs).toBe(3);
  });

  it('lets an inner guard on a route already guarded through, so the handler runs once (review regression)', async () => {
    const app = express5();
    let runs = 0;
    app.use(idempotency(engine()));
    app.post('/charges', idempotency(engine()), express5.json(), (_req, res) => {
      res.status(201).json({ run: ++runs });
    });
    const url = await listen(app);
    expect((await post(`${url}/charges`, 'k')).status).toBe(201);
    expect((await post(`${url}/charges`, 'k')).headers['idempotent-replayed']).toBe('true');
    expect(runs).toBe(1);
  });

  it('replays through compression mounted before it, compressed again (review regression)', async () => {
    const app = express5();
    app.use(compression({ threshold: 0 }));
    app.use(idempotency(engine()));
    app.post('/charges', (_req, res) => {
      res.status(201).json({ id: 'ch_1', pad: 'x'.repeat(2000) });
    });
    const url = await listen(app);
    const send = () =>
      request(`${url}/charges`, {
        headers: { 'content-type': 'application/json', 'idempotency-key': 'gz', 'accept-encoding': 'gzip' },
        body: '{}',
      });
    const first = await send();
    const replay = await send();
    expect(first.headers['content-encoding']).toBe('gzip');
    expect(replay.headers['content-encoding']).toBe('gzip');
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(gunzipSync(replay.body).equals(gunzipSync(first.body))).toBe(true);
  });

  it('runs writeHead hooks installed after it, as on-headers does (review regression)', async () => {
    const app = express5();
    app.use(idempotency(engine()));
    app.use((_req, res, next) => {
      const writeHead = res.writeHead;
      res.writeHead = function timed(this: typeof res, ...args: Parameters<typeof writeHead>) {
        this.setHeader('x-response-time', '1ms');
        return writeHead.apply(this, args);
      } as typeof writeHead;
      next();
    });
    app.post('/charges', (_req, res) => {
      res.status(201).json({ ok: true });
    });
    const url = await listen(app);
    expect((await post(`${url}/charges`, 'k')).headers['x-response-time']).toBe('1ms');
  });

  it('refuses to be created without an engine', () => {
    expect(() => idempotency(undefined as never)).toThrow(IdempotencyConfigError);
  });
});
