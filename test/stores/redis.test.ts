import type { AddressInfo } from 'node:net';
import { createServer } from 'node:net';
import { Cluster, Redis } from 'ioredis';
import { createClient, createCluster } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdempotencyConfigError, isIdempotencyStoreError } from '../../src/core/errors.js';
import type { AcquireInput, IdempotencyStore } from '../../src/core/store.js';
import { createRedisStore, type RedisClientLike } from '../../src/stores/redis.js';
import { startRedisCluster } from '../helpers/redis-cluster.js';
import { REDIS_URL, redisAvailable } from '../helpers/services.js';
import { acquireInput, describeStoreConformance, expectEngineFailsClosed } from './conformance.js';

const available = await redisAvailable();

const prefix = `idemkit-test-${process.pid}-${Date.now()}:`;
const T0 = Date.UTC(2026, 10, 23, 12);
const input = (token: string, overrides: Partial<AcquireInput> = {}) =>
  acquireInput({ token, now: T0, ttlMs: 60_000, ...overrides });
const response = { status: 201, headers: [['x-a', '1']] as Array<[string, string]>, body: null, bodySize: 0 };

describe.runIf(available)('redis store', () => {
  let io: Redis;
  let nodeRedis: ReturnType<typeof createClient>;
  beforeAll(async () => {
    io = new Redis(REDIS_URL);
    nodeRedis = createClient({ url: REDIS_URL });
    nodeRedis.on('error', () => {});
    await nodeRedis.connect();
  });
  afterAll(async () => {
    const keys = await io.keys(`${prefix}*`);
    if (keys.length > 0) await io.del(...keys);
    io.disconnect();
    nodeRedis.destroy();
  });

  describeStoreConformance('redis (ioredis)', async () => {
    const store = createRedisStore({ client: io, prefix });
    return { store, cleanup: () => store.close() };
  });

  describeStoreConformance('redis (ioredis, auto-pipelining)', async () => {
    const client = new Redis(REDIS_URL, { enableAutoPipelining: true });
    const store = createRedisStore({ client, prefix });
    return {
      store,
      cleanup: async () => {
        await store.close();
        client.disconnect();
      },
    };
  });

  describeStoreConformance('redis (node-redis)', async () => {
    const store = createRedisStore({ client: nodeRedis as unknown as RedisClientLike, prefix });
    return { store, cleanup: () => store.close() };
  });

  it('keeps every key of a record under one hash tag, and a physical expiry as a backstop', async () => {
    const store = createRedisStore({ client: io, prefix });
    const scopeKey = `tenant-{a}\nkey-${Math.random()}`;
    const key = store.keyOf(scopeKey);
    expect(key).toMatch(new RegExp(`^${prefix}\\{[A-Za-z0-9_-]{43}\\}$`));
    await store.acquire(scopeKey, input('t1', { leaseMs: 10_000, ttlMs: 60_000 }));
    const ttl = await io.pttl(key);
    expect(ttl).toBeGreaterThan(59_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    await store.complete(scopeKey, 't1', response, { ttlMs: 5_000, now: T0 });
    expect(await io.pttl(key)).toBeLessThanOrEqual(5_000);
    await store.close();
  });

  it('loads its scripts again after SCRIPT FLUSH (EVALSHA answered NOSCRIPT → EVAL)', async () => {
    for (const client of [io, nodeRedis as unknown as RedisClientLike]) {
      const store = createRedisStore({ client, prefix });
      await io.script('FLUSH');
      const scopeKey = `flush-${Math.random()}`;
      expect(await store.acquire(scopeKey, input('t1'))).toEqual({ kind: 'acquired', takenOver: false });
      expect((await store.get(scopeKey, { now: T0 }))?.state).toBe('in-progress');
      await store.close();
    }
  });

  it('wakes a waiter on another connection when the holder completes (pub/sub across clients)', async () => {
    const other = new Redis(REDIS_URL);
    const holder = createRedisStore({ client: io, prefix });
    const waiter = createRedisStore({ client: other, prefix, waitRecheckMs: 60_000 });
    const scopeKey = `wake-${Math.random()}`;
    await holder.acquire(scopeKey, input('t1'));
    let woke = false;
    const waiting = waiter.waitForCompletion!(scopeKey, { signal: new AbortController().signal }).then(() => {
      woke = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(woke).toBe(false);
    await holder.complete(scopeKey, 't1', response, { ttlMs: 60_000, now: T0 });
    await waiting;
    expect(woke).toBe(true);
    await waiter.close();
    await holder.close();
    other.disconnect();
  });

  it('ends a wait on abort even while its pub/sub connection never opens (review finding)', async () => {
    const blackHole = createServer(() => {}); // accepts connections, never answers
    await new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve));
    const port = (blackHole.address() as AddressInfo).port;
    const stuck = new Redis({ port, lazyConnect: true, maxRetriesPerRequest: 0 });
    stuck.on('error', () => {});
    // The real client for the scripts; its duplicate (the pub/sub connection) goes to the black hole.
    const client = Object.assign(Object.create(io) as Redis, { duplicate: () => stuck });
    const store = createRedisStore({ client, prefix, waitRecheckMs: 60_000 });
    const scopeKey = `stuck-${Math.random()}`;
    await store.acquire(scopeKey, input('t1'));
    const controller = new AbortController();
    const started = Date.now();
    const waiting = store.waitForCompletion!(scopeKey, { signal: controller.signal });
    setTimeout(() => controller.abort(), 100);
    await waiting;
    expect(Date.now() - started).toBeLessThan(1_000);
    await store.close();
    stuck.disconnect();
    await new Promise((resolve) => blackHole.close(resolve));
  });

  it('waits through pub/sub on a client without the offline queue, and leaves no connection behind (review finding)', async () => {
    const connections = async () => (String(await io.client('LIST')).match(/^id=/gm) ?? []).length;
    const before = await connections();
    const client = new Redis(REDIS_URL, { enableOfflineQueue: false });
    await new Promise((resolve) => client.once('ready', resolve));
    const store = createRedisStore({ client, prefix, waitRecheckMs: 60_000 });
    for (let i = 0; i < 5; i++) {
      const scopeKey = `offline-${i}-${Math.random()}`;
      await store.acquire(scopeKey, input('t1'));
      const waiting = store.waitForCompletion!(scopeKey, { signal: new AbortController().signal });
      await new Promise((resolve) => setTimeout(resolve, 30));
      await store.complete(scopeKey, 't1', response, { ttlMs: 60_000, now: T0 });
      await waiting; // woken by the message: the recheck is a minute away
    }
    await store.close();
    client.disconnect();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await connections()).toBe(before);
  });

  it('keeps scope keys apart that differ only in lone surrogates (review finding)', async () => {
    const store = createRedisStore({ client: io, prefix });
    const n = Math.random();
    expect(store.keyOf(`\uD800\nk${n}`)).not.toBe(store.keyOf(`\uDC00\nk${n}`));
    expect((await store.acquire(`\uD800\nk${n}`, input('t1'))).kind).toBe('acquired');
    expect((await store.acquire(`\uDC00\nk${n}`, input('t2'))).kind).toBe('acquired');
    await store.close();
  });

  it('does not close the client it was given', async () => {
    const store = createRedisStore({ client: io, prefix });
    await store.waitForCompletion!('absent', { signal: new AbortController().signal });
    await store.close();
    expect(await io.ping()).toBe('PONG');
    expect(await nodeRedis.ping()).toBe('PONG');
  });

  it('surfaces an unreachable server as a typed store error, which the engine answers with 503', async () => {
    const down = new Redis({
      port: 1,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    down.on('error', () => {});
    const store = createRedisStore({ client: down, prefix });
    const error = await store.acquire('k', input('t1')).catch((e: unknown) => e);
    expect(isIdempotencyStoreError(error)).toBe(true);
    expect((error as Error).message).toMatch(/redis acquire/);
    await expectEngineFailsClosed(store);
    await store.close();
    down.disconnect();
  });

  it('refuses a client it does not know and a prefix with a hash-tag brace', () => {
    expect(() => createRedisStore({ client: {} as RedisClientLike })).toThrow(IdempotencyConfigError);
    expect(() => createRedisStore({ client: io, prefix: 'a{b}' })).toThrow(/prefix/);
    expect(() => createRedisStore({ client: io, waitRecheckMs: 0 })).toThrow(/waitRecheckMs/);
  });
});

describe.runIf(available)('redis store on a Redis Cluster of three masters', () => {
  let cluster: Awaited<ReturnType<typeof startRedisCluster>>;
  let io: Cluster;
  let nodeCluster: ReturnType<typeof createCluster>;
  beforeAll(async () => {
    cluster = await startRedisCluster();
    io = new Cluster(cluster.nodes);
    nodeCluster = createCluster({
      rootNodes: cluster.nodes.map((n) => ({ url: `redis://${n.host}:${n.port}` })),
    });
    nodeCluster.on('error', () => {});
    await nodeCluster.connect();
  }, 60_000);
  afterAll(async () => {
    io?.disconnect();
    nodeCluster?.destroy();
    await cluster?.stop();
  });

  describeStoreConformance('redis cluster (ioredis)', async () => {
    const store = createRedisStore({ client: io });
    return { store, cleanup: () => store.close() };
  });

  describeStoreConformance('redis cluster (node-redis)', async () => {
    const store = createRedisStore({ client: nodeCluster as unknown as RedisClientLike });
    return { store, cleanup: () => store.close() };
  });

  it('spreads records over all three masters', async () => {
    const store: IdempotencyStore = createRedisStore({ client: io, prefix: 'spread:' });
    for (let i = 0; i < 60; i++) await store.acquire(`key-${i}`, input(`t${i}`));
    const counts = await Promise.all(io.nodes('master').map((node) => node.dbsize()));
    expect(counts).toHaveLength(3);
    for (const count of counts) expect(count).toBeGreaterThan(0);
    await store.close();
  });
});
