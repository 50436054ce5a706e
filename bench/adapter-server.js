// A benchmark target for the framework adapters, in its own process:
// `node bench/adapter-server.js <node|express|fastify|hono|nest-express|nest-fastify> <plain|idemkit>`.
// The same charge handler in each framework, written its natural way (the framework parses the
// JSON); `idemkit` guards it with that framework's adapter on the store BENCH_ADAPTER_STORE
// (memory or redis). Prints "listening <port>" once ready.
import 'reflect-metadata';
import http from 'node:http';
import { createIdempotency } from 'idemkit';
import { createMemoryStore } from 'idemkit/stores/memory';

const [framework = 'node', variant = 'plain'] = process.argv.slice(2);
const guarded = variant === 'idemkit';
let seq = 0;
const charge = (input) => ({
  id: `ch_${++seq}`,
  amount: input.amount,
  currency: input.currency,
  status: 'succeeded',
});

async function openEngine() {
  if (process.env.BENCH_ADAPTER_STORE === 'redis') {
    const { Redis } = await import('ioredis');
    const { createRedisStore } = await import('idemkit/stores/redis');
    const client = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', {
      enableAutoPipelining: true,
    });
    return createIdempotency({ store: createRedisStore({ client, prefix: process.env.BENCH_REDIS_PREFIX }) });
  }
  return createIdempotency({ store: createMemoryStore({ maxEntries: 10_000 }) });
}
const engine = guarded ? await openEngine() : undefined;

const servers = {
  async node() {
    const { withIdempotency } = await import('idemkit/node');
    const handler = async (req, res) => {
      const chunks = [];
      for await (const chunk of req) chunks.push(chunk);
      const body = JSON.stringify(charge(JSON.parse(Buffer.concat(chunks).toString('utf8'))));
      res.writeHead(201, { 'content-type': 'application/json' }).end(body);
    };
    return http.createServer(guarded ? withIdempotency(engine, handler) : handler);
  },
  async express() {
    const { default: express } = await import('express');
    const { idempotency } = await import('idemkit/express');
    const app = express();
    if (guarded) app.use(idempotency(engine));
    app.use(express.json());
    app.post('/charges', (req, res) => {
      res.status(201).json(charge(req.body));
    });
    return http.createServer(app);
  },
  async fastify() {
    const { default: Fastify } = await import('fastify');
    const { idempotency } = await import('idemkit/fastify');
    let server;
    const app = Fastify({
      serverFactory: (handler) => {
        server = http.createServer(handler);
        return server;
      },
    });
    if (guarded) await app.register(idempotency, { engine });
    app.post('/charges', async (req, reply) => reply.code(201).send(charge(req.body)));
    await app.ready();
    return server;
  },
  async hono() {
    const { Hono } = await import('hono');
    const { getRequestListener } = await import('@hono/node-server');
    const { idempotency } = await import('idemkit/hono');
    const app = new Hono();
    if (guarded) app.use(idempotency(engine));
    app.post('/charges', async (c) => c.json(charge(await c.req.json()), 201));
    return http.createServer(getRequestListener(app.fetch));
  },
  'nest-express': () => nest('express'),
  'nest-fastify': () => nest('fastify'),
};

async function nest(platform) {
  const { Body, Controller, Module, Post } = await import('@nestjs/common');
  const { NestFactory } = await import('@nestjs/core');
  const { IdempotencyModule, Idempotent } = await import('idemkit/nestjs');
  const adapter =
    platform === 'express'
      ? new (await import('@nestjs/platform-express')).ExpressAdapter()
      : new (await import('@nestjs/platform-fastify')).FastifyAdapter();
  class ChargesController {
    create(input) {
      return charge(input);
    }
  }
  const methods = ChargesController.prototype;
  const descriptor = Object.getOwnPropertyDescriptor(methods, 'create');
  if (guarded) Idempotent()(methods, 'create', descriptor);
  Post()(methods, 'create', descriptor);
  Body()(methods, 'create', 0);
  Controller('charges')(ChargesController);
  class AppModule {}
  const imports = guarded ? [IdempotencyModule.forRoot({ engine })] : [];
  Module({ imports, controllers: [ChargesController] })(AppModule);
  const app = await NestFactory.create(AppModule, adapter, { rawBody: guarded, logger: false });
  // Nest's listen readies Fastify too (its hooks are only in place once it is ready).
  await app.listen(0, '127.0.0.1');
  const server = app.getHttpServer();
  server.keepAliveTimeout = 60_000;
  return server;
}

const make = servers[framework];
if (make === undefined) {
  console.error(`unknown framework ${framework}`);
  process.exit(2);
}
const server = await make();
const ready = () => console.log(`listening ${server.address().port}`);
if (server.listening) ready();
else {
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', ready);
}
process.on('SIGTERM', () => server.close(() => process.exit(0)));
