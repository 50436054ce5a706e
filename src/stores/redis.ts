import * as crypto from 'node:crypto';

import { IdempotencyConfigError } from '../core/errors.js';
import type {
  AcquireInput,
  AcquireResult,
  IdempotencyRecord,
  IdempotencyStore,
  StoredResponse,
} from '../core/store.js';
import { decodeHeaders, encodeHeaders, guarded } from './shared.js';

const { createHash } = crypto;
// One-shot hashing (Node >= 20.12) costs less than a Hash object for a short key.
const oneShot = (crypto as { hash?: (algorithm: string, data: Buffer, encoding: 'base64url') => string })
  .hash;
const sha256Base64url: (data: Buffer) => string =
  oneShot === undefined
    ? (data) => createHash('sha256').update(data).digest('base64url')
    : (data) => oneShot('sha256', data, 'base64url');

/**
 * The Redis client a store is given. Structural, so the store imports neither library:
 * - ioredis: a `Redis` or a `Cluster` (recognised by `evalshaBuffer`), auto-pipelining or not;
 * - node-redis 5+: a client from `createClient` or a cluster from `createCluster`, connected
 *   (recognised by `sendCommand`; a cluster by `nodeClient`).
 */
export type RedisClientLike = IoredisLike | NodeRedisClientLike | NodeRedisClusterLike;

// Loose parameter types: ioredis declares its commands with many overloads. At run time the store
// calls the `…Buffer` variants (binary replies), which ioredis has but does not declare.
type IoCommand = (...args: never[]) => Promise<unknown>;
interface IoredisLike {
  evalsha: IoCommand;
  hget: IoCommand;
  duplicate(): IoredisSubscriber;
}
interface IoredisSubscriber {
  readonly status: string;
  subscribe(...channels: string[]): Promise<unknown>;
  unsubscribe(...channels: string[]): Promise<unknown>;
  on(event: 'message', listener: (channel: string, message: string) => void): unknown;
  on(event: 'error', listener: (error: unknown) => void): unknown;
  once(event: 'ready' | 'end', listener: () => void): unknown;
  disconnect(): void;
}
type NodeRedisListener = (message: string, channel: string) => void;
interface NodeRedisPubSub {
  connect(): Promise<unknown>;
  subscribe(channels: string, listener: NodeRedisListener): Promise<unknown>;
  unsubscribe(channels: string, listener?: NodeRedisListener): Promise<unknown>;
  on(event: 'error', listener: (error: unknown) => void): unknown;
  destroy(): void;
}
interface NodeRedisClientLike {
  sendCommand(
    args: Array<string | Buffer>,
    options?: { typeMapping?: Record<number, unknown> },
  ): Promise<unknown>;
  duplicate(): NodeRedisPubSub;
}
interface NodeRedisClusterLike {
  nodeClient(...args: never[]): unknown;
  sendCommand(
    firstKey: string | Buffer | undefined,
    isReadonly: boolean | undefined,
    args: Array<string | Buffer>,
    options?: { typeMapping?: Record<number, unknown> },
  ): Promise<unknown>;
  duplicate(): NodeRedisPubSub;
}

/** Options of `createRedisStore`. */
export interface RedisStoreOptions {
  /** A connected ioredis or node-redis client (single node or cluster). The store never closes it. */
  client: RedisClientLike;
  /** Prefix of every key and channel the store writes. @default 'idemkit:' */
  prefix?: string;
  /** How often a waiter re-reads a record, in case a completion message was missed. @default 500 */
  waitRecheckMs?: number;
}

/** The Redis store; `waitForCompletion` uses pub/sub on a connection it duplicates on first use. */
export interface RedisStore extends IdempotencyStore {
  /** The Redis key of a scope key: `prefix` + `{` hash tag `}`, so a record's keys share a slot. */
  keyOf(scopeKey: string): string;
}

// A record is one Redis hash. Field order of every script's reply:
const FIELDS = ['s', 't', 'f', 'm', 'p', 'bh', 'ca', 'le', 'ex', 'co', 'st', 'h', 'b', 'bs'] as const;
const HMGET_FIELDS = FIELDS.map((f) => `'${f}'`).join(',');

// Each transition is one script: atomic on the node that owns the key's slot. Times come from the
// engine's clock (ARGV); PEXPIRE only reclaims memory, the scripts themselves treat a record whose
// `ex` has passed as absent. The completion channel is passed in, so no key is computed in Lua.
const ACQUIRE = `
local k = KEYS[1]
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', k, ${HMGET_FIELDS})
local taken = 0
if cur[1] and tonumber(cur[9]) > now then
  if cur[1] == 'c' or tonumber(cur[8]) > now or cur[3] ~= ARGV[3] then
    table.insert(cur, 1, 'e')
    return cur
  end
  taken = 1
end
local ex = now + math.max(tonumber(ARGV[8]), tonumber(ARGV[7]))
if cur[1] then redis.call('DEL', k) end
redis.call('HSET', k, 's', 'p', 't', ARGV[2], 'f', ARGV[3], 'm', ARGV[4], 'p', ARGV[5], 'bh', ARGV[6],
  'ca', ARGV[1], 'le', string.format('%d', now + tonumber(ARGV[7])), 'ex', string.format('%d', ex))
redis.call('PEXPIRE', k, ex - now)
return {'a', taken}
`;

const RENEW = `
local k = KEYS[1]
local now = tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 's', 't', 'ex')
if cur[1] ~= 'p' or cur[2] ~= ARGV[1] or tonumber(cur[3]) <= now then return 0 end
local le = now + tonumber(ARGV[3])
local ex = math.max(tonumber(cur[3]), le)
redis.call('HSET', k, 'le', string.format('%d', le), 'ex', string.format('%d', ex))
redis.call('PEXPIRE', k, ex - now)
return 1
`;

const COMPLETE = `
local k = KEYS[1]
local now = tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 's', 't', 'ex')
if cur[1] ~= 'p' or cur[2] ~= ARGV[1] or tonumber(cur[3]) <= now then return 0 end
local ttl = tonumber(ARGV[3])
-- The token and lease stay behind, unread: every script checks the state first.
if ARGV[8] == '1' then
  redis.call('HSET', k, 's', 'c', 'co', ARGV[2], 'ex', string.format('%d', now + ttl), 'st', ARGV[4], 'h', ARGV[5],
    'bs', ARGV[7], 'b', ARGV[6])
else
  redis.call('HSET', k, 's', 'c', 'co', ARGV[2], 'ex', string.format('%d', now + ttl), 'st', ARGV[4], 'h', ARGV[5],
    'bs', ARGV[7])
end
redis.call('PEXPIRE', k, ttl)
redis.call('PUBLISH', ARGV[9], '1')
return 1
`;

const RELEASE = `
local cur = redis.call('HMGET', KEYS[1], 's', 't')
if cur[1] ~= 'p' or cur[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], '1')
return 1
`;

const GET = `
local cur = redis.call('HMGET', KEYS[1], ${HMGET_FIELDS})
if not cur[1] or tonumber(cur[9]) <= tonumber(ARGV[1]) then return false end
return cur
`;

const DELETE = `
local cur = redis.call('HMGET', KEYS[1], 's', 'ex')
if cur[1] ~= 'c' then return 0 end
redis.call('DEL', KEYS[1])
if tonumber(cur[2]) <= tonumber(ARGV[1]) then return 0 end
redis.call('PUBLISH', ARGV[2], '1')
return 1
`;

interface Script {
  source: string;
  sha: string;
}
const script = (source: string): Script => ({
  source,
  sha: createHash('sha1').update(source).digest('hex'),
});
const SCRIPTS = {
  acquire: script(ACQUIRE),
  renew: script(RENEW),
  complete: script(COMPLETE),
  release: script(RELEASE),
  get: script(GET),
  delete: script(DELETE),
};

type Arg = string | Buffer;
/** Sends one command whose first key is `key`; bulk strings come back as Buffers. */
type Send = (key: string, args: Arg[]) => Promise<unknown>;
type Subscriber = {
  subscribe(channel: string, listener: () => void): Promise<void>;
  unsubscribe(channel: string, listener: () => void): Promise<void>;
  close(): void;
};

const BUFFERS = { typeMapping: { 36: Buffer } }; // RESP blob string → Buffer (node-redis)

function driverOf(client: RedisClientLike): {
  send: Send;
  subscriber: (onError: () => void) => Promise<Subscriber>;
} {
  const c = client as unknown as Record<string, unknown>;
  if (typeof c.evalshaBuffer === 'function' && typeof c.evalBuffer === 'function') {
    const io = client as unknown as Record<'evalshaBuffer' | 'evalBuffer' | 'hgetBuffer', IoCommand> &
      IoredisLike;
    // The named commands, not `callBuffer`: ioredis's auto-pipelining only handles those.
    const call = (method: IoCommand, args: Arg[]) =>
      (method as (...a: Arg[]) => Promise<unknown>).apply(io, args);
    const send: Send = (_key, [command, ...args]) => {
      if (command === 'EVALSHA') return call(io.evalshaBuffer, args);
      if (command === 'EVAL') return call(io.evalBuffer, args);
      if (command === 'HGET') return call(io.hgetBuffer, args);
      throw new Error(`redis store: no ioredis method for ${String(command)}`);
    };
    return {
      send,
      subscriber: async (onError) => {
        const sub = io.duplicate();
        // The SUBSCRIBE of each channel, shared by its waiters: every waiter reads the record only
        // once the subscription is live.
        const channels = new Map<string, { listeners: Set<() => void>; ready: Promise<unknown> }>();
        sub.on('message', (channel) => {
          for (const wake of channels.get(channel)?.listeners ?? []) wake();
        });
        sub.on('error', onError);
        try {
          // Subscribing before the connection is ready fails outright without the offline queue.
          if (sub.status !== 'ready') {
            await new Promise<void>((resolve, reject) => {
              sub.once('ready', () => resolve());
              sub.once('end', () => reject(new Error('redis store: the pub/sub connection closed')));
            });
          }
        } catch (error) {
          sub.disconnect();
          throw error;
        }
        return {
          async subscribe(channel, listener) {
            let entry = channels.get(channel);
            if (entry === undefined) {
              entry = { listeners: new Set(), ready: sub.subscribe(channel) };
              channels.set(channel, entry);
            }
            entry.listeners.add(listener);
            await entry.ready;
          },
          async unsubscribe(channel, listener) {
            const entry = channels.get(channel);
            if (entry === undefined || !entry.listeners.delete(listener) || entry.listeners.size > 0) return;
            channels.delete(channel);
            await sub.unsubscribe(channel);
          },
          close: () => sub.disconnect(),
        };
      },
    };
  }
  if (typeof c.sendCommand === 'function' && typeof c.duplicate === 'function') {
    const send: Send =
      typeof c.nodeClient === 'function'
        ? (key, args) => (client as NodeRedisClusterLike).sendCommand(key, false, args, BUFFERS)
        : (_key, args) => (client as NodeRedisClientLike).sendCommand(args, BUFFERS);
    return {
      send,
      subscriber: async (onError) => {
        const sub = (client as NodeRedisClientLike).duplicate();
        sub.on('error', onError);
        try {
          await sub.connect();
        } catch (error) {
          sub.destroy();
          throw error;
        }
        return {
          subscribe: async (channel, listener) => void (await sub.subscribe(channel, listener)),
          unsubscribe: async (channel, listener) => void (await sub.unsubscribe(channel, listener)),
          close: () => sub.destroy(),
        };
      },
    };
  }
  throw new IdempotencyConfigError(
    'redis store: client must be an ioredis Redis or Cluster, or a connected node-redis client or cluster',
  );
}

/**
 * Records in Redis, one hash per key, each transition one Lua script sent with EVALSHA (EVAL when the
 * server answers NOSCRIPT). Keys are `prefix{digest}`: the hash tag puts everything of a record in one
 * slot, so Redis Cluster works. `waitForCompletion` subscribes to the record's channel, which every
 * complete, release and delete publishes to.
 *
 * ```ts
 * createRedisStore({ client: new Redis(process.env.REDIS_URL) })                   // ioredis
 * createRedisStore({ client: await createClient({ url: process.env.REDIS_URL }).connect() }) // node-redis
 * ```
 */
export function createRedisStore(options: RedisStoreOptions): RedisStore {
  if (typeof options !== 'object' || options === null || options.client === undefined) {
    throw new IdempotencyConfigError('redis store: options.client is required');
  }
  const { send, subscriber } = driverOf(options.client);
  const prefix = options.prefix ?? 'idemkit:';
  if (typeof prefix !== 'string' || /[{}]/.test(prefix)) {
    throw new IdempotencyConfigError('redis store: prefix must be a string without { or }');
  }
  const recheckMs = options.waitRecheckMs ?? 500;
  if (!Number.isSafeInteger(recheckMs) || recheckMs < 1) {
    throw new IdempotencyConfigError(
      `redis store: waitRecheckMs must be a positive integer, not ${recheckMs}`,
    );
  }
  let closed = false;
  let sub: Promise<Subscriber> | undefined;
  const waiting = new Set<() => void>();

  // Hashes UTF-16 code units, not UTF-8: UTF-8 turns every lone surrogate into U+FFFD, merging keys.
  const keyOf = (scopeKey: string) => `${prefix}{${sha256Base64url(Buffer.from(scopeKey, 'utf16le'))}}`;
  const channelOf = (key: string) => `${key}:done`;

  const run = async (name: keyof typeof SCRIPTS, key: string, args: Arg[]): Promise<unknown> => {
    if (closed) throw new Error('redis store is closed');
    const { sha, source } = SCRIPTS[name];
    try {
      return await send(key, ['EVALSHA', sha, '1', key, ...args]);
    } catch (error) {
      if (!String((error as Error)?.message ?? error).startsWith('NOSCRIPT')) throw error;
      return send(key, ['EVAL', source, '1', key, ...args]);
    }
  };

  const dropSubscriber = () => {
    const current = sub;
    sub = undefined;
    current?.then((s) => s.close()).catch(() => {});
    for (const wake of [...waiting]) wake();
  };

  const store: RedisStore = {
    keyOf,

    acquire: (scopeKey: string, input: AcquireInput) =>
      guarded('redis', 'acquire', async (): Promise<AcquireResult> => {
        const reply = (await run('acquire', keyOf(scopeKey), [
          String(input.now),
          input.token,
          input.fingerprint,
          input.request.method,
          input.request.path,
          input.request.bodyHash,
          String(input.leaseMs),
          String(input.ttlMs),
        ])) as unknown[];
        if (text(reply[0]) === 'a') return reply[1] === 1 ? TAKEN_OVER : ACQUIRED;
        const record = toRecord(reply.slice(1));
        return record.state === 'completed' ? { kind: 'completed', record } : { kind: 'in-progress', record };
      }),

    renew: (scopeKey, token, { leaseMs, now }) =>
      guarded('redis', 'renew', async () => {
        return (await run('renew', keyOf(scopeKey), [token, String(now), String(leaseMs)])) === 1;
      }),

    complete: (scopeKey, token, response: StoredResponse, { ttlMs, now }) =>
      guarded('redis', 'complete', async () => {
        const key = keyOf(scopeKey);
        const body = response.body;
        return (
          (await run('complete', key, [
            token,
            String(now),
            String(ttlMs),
            String(response.status),
            encodeHeaders(response.headers),
            body === null ? '' : Buffer.from(body.buffer, body.byteOffset, body.byteLength),
            String(response.bodySize),
            body === null ? '0' : '1',
            channelOf(key),
          ])) === 1
        );
      }),

    release: (scopeKey, token) =>
      guarded('redis', 'release', async () => {
        const key = keyOf(scopeKey);
        return (await run('release', key, [token, channelOf(key)])) === 1;
      }),

    get: (scopeKey, { now }) =>
      guarded('redis', 'get', async (): Promise<IdempotencyRecord | undefined> => {
        const reply = await run('get', keyOf(scopeKey), [String(now)]);
        return reply === null ? undefined : toRecord(reply as unknown[]);
      }),

    delete: (scopeKey, { now }) =>
      guarded('redis', 'delete', async () => {
        const key = keyOf(scopeKey);
        return (await run('delete', key, [String(now), channelOf(key)])) === 1;
      }),

    async waitForCompletion(scopeKey, { signal }) {
      if (closed || signal.aborted) return;
      const key = keyOf(scopeKey);
      const channel = channelOf(key);
      let wake!: () => void;
      const woken = new Promise<void>((resolve) => {
        wake = resolve;
      });
      waiting.add(wake);
      signal.addEventListener('abort', wake, { once: true });
      // Re-read the record now and then: a completion message can be missed (a reconnect), and
      // without pub/sub this poll is what wakes the waiter.
      const inProgress = async () => {
        const state = await send(key, ['HGET', key, 's']);
        if (state === null || text(state) !== 'p') wake();
      };
      const recheck = setInterval(() => void inProgress().catch(wake), recheckMs);
      let subscribed: Subscriber | undefined;
      // Set up in the background: an abort or close() ends the wait even while the pub/sub
      // connection is still being opened (or never opens).
      const setup = (async () => {
        sub ??= subscriber(dropSubscriber);
        const pending = sub;
        try {
          const s = await pending;
          subscribed = s;
          await s.subscribe(channel, wake);
        } catch {
          // Pub/sub unavailable now: close what was opened; this wait polls, the next one tries again.
          if (sub === pending) dropSubscriber();
        }
        // Subscribed first, read second: a completion in between is seen by the read.
        await inProgress().catch(wake);
      })();
      try {
        await woken;
      } finally {
        clearInterval(recheck);
        waiting.delete(wake);
        signal.removeEventListener('abort', wake);
        void setup.then(() => subscribed?.unsubscribe(channel, wake)).catch(() => {});
      }
    },

    async close() {
      closed = true;
      dropSubscriber();
    },
  };
  return store;
}

const ACQUIRED: AcquireResult = { kind: 'acquired', takenOver: false };
const TAKEN_OVER: AcquireResult = { kind: 'acquired', takenOver: true };

function text(value: unknown): string {
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (typeof value === 'string') return value;
  throw new Error(`unexpected reply from Redis: ${String(value)}`);
}

function int(value: unknown): number {
  const n = Number(text(value));
  if (!Number.isSafeInteger(n)) throw new Error(`corrupt idemkit record in Redis: ${String(value)}`);
  return n;
}

/** A record from the fields in `FIELDS` order. */
function toRecord(f: unknown[]): IdempotencyRecord {
  const base = {
    fingerprint: text(f[2]),
    request: { method: text(f[3]), path: text(f[4]), bodyHash: text(f[5]) },
    createdAt: int(f[6]),
    expiresAt: int(f[8]),
  };
  const state = text(f[0]);
  if (state === 'p') {
    return { state: 'in-progress', token: text(f[1]), leaseExpiresAt: int(f[7]), ...base };
  }
  if (state !== 'c') throw new Error(`corrupt idemkit record in Redis: state ${state}`);
  const body = f[12];
  return {
    state: 'completed',
    completedAt: int(f[9]),
    response: {
      status: int(f[10]),
      headers: decodeHeaders(text(f[11])),
      body: body === null || body === undefined ? null : new Uint8Array(body as Buffer),
      bodySize: int(f[13]),
    },
    ...base,
  };
}
