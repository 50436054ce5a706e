// The demo charges API on Hono, guarded by idemkit (memory store), served on Node by
// @hono/node-server: `node examples/hono.js` (PORT, default 8080). The middleware and the app are
// the same on Bun, Deno and Workers; only the last lines (serving) change.
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { createIdempotency } from 'idemkit';
import { idempotency } from 'idemkit/hono';
import { createMemoryStore } from 'idemkit/stores/memory';
import { createLedger, tryIt } from './charges.js';

const engine = createIdempotency({ store: createMemoryStore() });
const ledger = createLedger();
const app = new Hono();

app.use('/api/*', idempotency(engine));
app.get('/api/charges', (c) => c.json({ charges: ledger.count() }));
app.post('/api/charges', async (c) => {
  const { status, body } = ledger.charge(await c.req.json());
  return c.json(body, status);
});

const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 8080) }, (info) => {
  const base = `http://localhost:${info.port}`;
  console.log(`demo charges API on Hono with idemkit on ${base}\n\n${tryIt(base)}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
