// The demo charges API on Fastify, guarded by idemkit's plugin (memory store):
// `node examples/fastify.js` (PORT, default 8080). Every route of the scope is guarded; a route
// opts out with `config: { idempotency: false }` (or in, with the plugin's `routes: 'opt-in'`).
import Fastify from 'fastify';
import { createIdempotency } from 'idemkit';
import { idempotency } from 'idemkit/fastify';
import { createMemoryStore } from 'idemkit/stores/memory';
import { createLedger, tryIt } from './charges.js';

const engine = createIdempotency({ store: createMemoryStore() });
const ledger = createLedger();
const app = Fastify();

await app.register(idempotency, { engine });
app.get('/api/charges', async () => ({ charges: ledger.count() }));
app.post('/api/charges', async (request, reply) => {
  const { status, body } = ledger.charge(request.body);
  return reply.code(status).send(body);
});

await app.listen({ port: Number(process.env.PORT ?? 8080), host: '127.0.0.1' });
const base = `http://localhost:${app.server.address().port}`;
console.log(`demo charges API on Fastify with idemkit on ${base}\n\n${tryIt(base)}\n`);
process.on('SIGTERM', () => app.close().then(() => process.exit(0)));
process.on('SIGINT', () => app.close().then(() => process.exit(0)));
