// A benchmark target, run in its own process: `node bench/server.js <plain|memory|sqlite|redis|postgres>`.
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

async function openStore(kind) {
  switch (kind) {
    case 'memory':
      return createMemoryStore({ maxEntries: Number(process.env.BENCH_MAX_ENTRIES ?? 10_000) });
    case 'sqlite': {
      const { createSqliteStore } = await import('idemkit/stores/sqlite');
      return createSqliteStore({ path: process.env.BENCH_SQLITE_PATH });
    }
    case 'redis': {
      const { Redis } = await import('ioredis');
      const { createRedisStore } = await import('idemkit/stores/redis');
      const client = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', {
        enableAutoPipelining: process.env.BENCH_REDIS_AUTOPIPELINING === '1',
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

const handler =
  mode === 'plain'
    ? createCharge
    : withIdempotency(createIdempotency({ store: await openStore(mode) }), createCharge);

const server = http.createServer(handler);
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
