// The demo charges API on Express, guarded by idemkit (memory store): `node examples/express.js`
// (PORT, default 8080). The middleware runs before express.json(), so it fingerprints the bytes the
// client sent; mounted after a parser it needs `express.json({ verify: keepRawBody })`.
import express from 'express';
import { createIdempotency } from 'idemkit';
import { idempotency } from 'idemkit/express';
import { createMemoryStore } from 'idemkit/stores/memory';
import { createLedger, tryIt } from './charges.js';

const engine = createIdempotency({ store: createMemoryStore() });
const ledger = createLedger();
const app = express();

app.get('/api/charges', (_req, res) => res.json({ charges: ledger.count() }));
app.post('/api/charges', idempotency(engine), express.json(), (req, res) => {
  const { status, body } = ledger.charge(req.body);
  res.status(status).json(body);
});

const server = app.listen(Number(process.env.PORT ?? 8080), () => {
  const base = `http://localhost:${server.address().port}`;
  console.log(`demo charges API on Express with idemkit on ${base}\n\n${tryIt(base)}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.on('SIGINT', () => server.close(() => process.exit(0)));
