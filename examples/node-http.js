// The demo charges API (examples/charges.js) guarded in-process by idemkit's node:http face on the
// memory store, with the lookup API: `node examples/node-http.js` (PORT, default 8080). It prints
// the curl commands that show each answer. (`npm start` runs the gateway instead.)
import http from 'node:http';
import { createIdempotency } from 'idemkit';
import { createLookupHandler, withIdempotency } from 'idemkit/node';
import { createMemoryStore } from 'idemkit/stores/memory';
import { createChargesApi, tryIt } from './charges.js';

const port = Number(process.env.PORT ?? 8080);
const engine = createIdempotency({
  store: createMemoryStore(),
  onEvent: (event) => console.log(JSON.stringify({ event: event.type, key: event.key, path: event.path })),
});
const lookup = createLookupHandler(engine);
const charges = createChargesApi();

async function api(req, res) {
  if (await lookup(req, res)) return;
  await charges(req, res);
}

const server = http.createServer(withIdempotency(engine, api));
server.listen(port, () => {
  const base = `http://localhost:${server.address().port}`;
  console.log(`demo charges API with idemkit on ${base} (memory store)

${tryIt(base)}

  # look the key up
  curl -i ${base}/idempotency-keys/order-1
`);
});
process.on('SIGINT', () => server.close(() => process.exit(0)));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
