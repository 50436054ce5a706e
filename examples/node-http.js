// `npm start`: a demo charges API (POST /api/charges, as in the seed documents) behind idemkit's
// node:http face on the in-memory store. It prints the curl commands that show each answer.
import http from 'node:http';
import { createIdempotency } from 'idemkit';
import { createLookupHandler, withIdempotency } from 'idemkit/node';
import { createMemoryStore } from 'idemkit/stores/memory';

const port = Number(process.env.PORT ?? 8080);
const engine = createIdempotency({
  store: createMemoryStore(),
  onEvent: (event) => console.log(JSON.stringify({ event: event.type, key: event.key, path: event.path })),
});
const lookup = createLookupHandler(engine);
let charges = 0;

async function api(req, res) {
  if (await lookup(req, res)) return;
  if (req.method !== 'POST' || req.url !== '/api/charges') {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}');
    return;
  }
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  let input;
  try {
    input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"body must be JSON"}');
    return;
  }
  charges += 1;
  const charge = {
    id: `ch_${String(charges).padStart(5, '0')}`,
    amount: input.amount,
    currency: input.currency,
    status: 'succeeded',
  };
  console.log(`charged ${charge.amount} ${charge.currency} as ${charge.id} (charges so far: ${charges})`);
  res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify(charge));
}

const server = http.createServer(withIdempotency(engine, api));
server.listen(port, () => {
  const base = `http://localhost:${port}`;
  const post = (key, body) =>
    `curl -i -X POST ${base}/api/charges${key ? ` -H 'Idempotency-Key: ${key}'` : ''} -H 'Content-Type: application/json' -d '${body}'`;
  console.log(`demo charges API with idemkit on ${base} (memory store)

  # a first request runs and returns 201; run it again: the same 201 comes back, with Idempotent-Replayed: true
  ${post('order-1', '{"amount":1000,"currency":"usd"}')}

  # the same key with a changed body: 409 idempotency_key_reused
  ${post('order-1', '{"amount":2000,"currency":"usd"}')}

  # no key: 400 idempotency_key_missing
  ${post(null, '{"amount":1000,"currency":"usd"}')}

  # look the key up
  curl -i ${base}/idempotency-keys/order-1
`);
});
process.on('SIGINT', () => server.close(() => process.exit(0)));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
