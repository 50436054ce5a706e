import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import express5 from 'express';
import express4 from 'express4';
import { idempotency, keepRawBody } from '../../src/adapters/express.js';
import type { Idempotency } from '../../src/core/engine.js';
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
