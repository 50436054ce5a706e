// A benchmark target, run in its own process:
// `node bench/server.js <plain|memory|sqlite|redis|postgres|node-idempotency|powertools>`.
// Prints "listening <port>" once ready. The handler is the same in every mode: read the JSON body,
// answer 201 with a JSON charge.
import http from 'node:http';
import { createIdempotency } from 'idemkit';
import { withIdempotency } from 'idemkit/node';
import { createMemoryStore } from 'idemkit/stores/memory';

const mode = process.argv[2] ?? 'plain';
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
let seq = 0;

/** The work: a charge for the parsed input, as the JSON to answer. */
function charge(input) {
  seq += 1;
  return JSON.stringify({
    id: `ch_${seq}`,
    amount: input.amount,
    currency: input.currency,
    status: 'succeeded',
  });
}

async function createCharge(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const bytes = Buffer.concat(chunks);
  // JSON is parsed; any other body (bench/scale.js sends bytes) is charged by its length.
  const json = req.headers['content-type'] === 'application/json';
  const body = charge(json ? JSON.parse(bytes.toString('utf8')) : { amount: bytes.length, currency: 'usd' });
  res.writeHead(201, { 'content-type': 'application/json' });
  res.end(body);
}

async function openStore(kind) {
  switch (kind) {
    case 'memory':
      return createMemoryStore({ maxEntries: Number(process.env.BENCH_MAX_ENTRIES ?? 10_000) });
    case 'sqlite': {
      const { createSqliteStore } = await import('idemkit/stores/sqlite');
      return createSqliteStore({ path: process.env.BENCH_SQLITE_PATH });
    }
    case 'redis': {
      const { createRedisStore } = await import('idemkit/stores/redis');
      if (process.env.BENCH_REDIS_CLIENT === 'node-redis') {
        const { createClient } = await import('redis');
        const client = await createClient({ url: REDIS_URL }).connect();
        return createRedisStore({ client, prefix: process.env.BENCH_REDIS_PREFIX });
      }
      const { Redis } = await import('ioredis');
      const client = new Redis(REDIS_URL, {
        enableAutoPipelining: process.env.BENCH_REDIS_AUTOPIPELINING !== '0',
      });
      return createRedisStore({ client, prefix: process.env.BENCH_REDIS_PREFIX });
    }
    case 'postgres': {
      const { default: pg } = await import('pg');
      const { createPostgresStore } = await import('idemkit/stores/postgres');
      const pool = new pg.Pool({
        connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
        max: 16,
      });
      return createPostgresStore({ pool, table: process.env.BENCH_PG_TABLE });
    }
    default:
      console.error(`unknown mode ${kind}`);
      process.exit(2);
  }
}

async function openHandler() {
  const peer = { url: REDIS_URL, prefix: process.env.BENCH_REDIS_PREFIX ?? 'idemkit-bench:' };
  if (mode === 'plain') return createCharge;
  if (mode === 'node-idempotency') return (await import('./peers.js')).nodeIdempotencyHandler(charge, peer);
  if (mode === 'powertools') return (await import('./peers.js')).powertoolsHandler(charge, peer);
  return withIdempotency(createIdempotency({ store: await openStore(mode) }), createCharge);
}
const handler = await openHandler();

const server = http.createServer(handler);
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
