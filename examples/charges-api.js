// A small charges API with no idempotency of its own: POST /api/charges, as in the seed documents.
// `npm start` runs it behind the idemkit gateway; alone, every retry would charge again.
// Usage: node examples/charges-api.js [port]   (prints "charges API listening on PORT")
import http from 'node:http';

const port = Number(process.argv[2] ?? process.env.API_PORT ?? 3000);
let charges = 0;

const server = http.createServer(async (req, res) => {
  const json = (status, value) => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
  };
  if (req.url === '/api/charges' && req.method === 'GET') return json(200, { charges });
  if (req.url !== '/api/charges' || req.method !== 'POST') return json(404, { error: 'not found' });
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  let input;
  try {
    input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return json(400, { error: 'body must be JSON' });
  }
  if (!Number.isInteger(input?.amount) || input.amount <= 0 || typeof input.currency !== 'string') {
    return json(422, { error: 'amount (a positive integer) and currency are required' });
  }
  charges += 1;
  const charge = {
    id: `ch_${String(charges).padStart(5, '0')}`,
    amount: input.amount,
    currency: input.currency,
    status: 'succeeded',
  };
  console.log(
    `charges API: charged ${charge.amount} ${charge.currency} as ${charge.id} (charges so far: ${charges})`,
  );
  json(201, charge);
});

server.listen(port, '127.0.0.1', () => console.log(`charges API listening on ${server.address().port}`));
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
