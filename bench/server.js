// A benchmark target, run in its own process: `node bench/server.js <plain|memory>`.
// Prints "listening <port>" once ready. The handler is the same in every mode.
import http from 'node:http';
import { createIdempotency } from 'idemkit';
import { withIdempotency } from 'idemkit/node';
import { createMemoryStore } from 'idemkit/stores/memory';

const mode = process.argv[2] ?? 'plain';
let seq = 0;

async function createCharge(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  seq += 1;
  const body = JSON.stringify({
    id: `ch_${seq}`,
    amount: input.amount,
    currency: input.currency,
    status: 'succeeded',
  });
  res.writeHead(201, { 'content-type': 'application/json' });
  res.end(body);
}

let handler;
if (mode === 'plain') {
  handler = createCharge;
} else if (mode === 'memory') {
  const engine = createIdempotency({
    store: createMemoryStore({ maxEntries: Number(process.env.BENCH_MAX_ENTRIES ?? 10_000) }),
  });
  handler = withIdempotency(engine, createCharge);
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}

const server = http.createServer(handler);
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
