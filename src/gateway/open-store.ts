import type { IdempotencyStore } from '../core/store.js';
import { GatewayConfigError } from './config.js';
import { describeStore, type StoreSpec } from './store-url.js';

/** A store the gateway opened, with what closes it and the clients under it. */
export interface OpenedStore {
  store: IdempotencyStore;
  close(): Promise<void>;
}

/** Receives connection errors of the store's clients (they reconnect by themselves). */
export type StoreErrorLog = (error: unknown, message: string) => void;

const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Opens the store a `--store` URL names, with its driver (an optional peer dependency) loaded on
 * demand. The clients are set to fail at once while disconnected (no offline queue), and after a
 * few seconds when the server hangs, so a request meets a 503 instead of waiting for a store that
 * is down. Throws when the store cannot be reached
 * within 10 s.
 */
export async function openStore(spec: StoreSpec, onError: StoreErrorLog): Promise<OpenedStore> {
  switch (spec.kind) {
    case 'memory': {
      const { createMemoryStore } = await import('../stores/memory.js');
      const store = createMemoryStore();
      return { store, close: () => Promise.resolve(store.close()) };
    }
    case 'sqlite': {
      await driver('better-sqlite3', 'sqlite:');
      const { createSqliteStore } = await import('../stores/sqlite.js');
      const store = createSqliteStore({ path: spec.path });
      return { store, close: () => Promise.resolve(store.close()) };
    }
    case 'redis':
    case 'redis-cluster': {
      const ioredis = (await driver('ioredis', 'redis:')) as typeof import('ioredis');
      // Reconnect every 50 ms, then at most every 500 ms (ioredis waits up to 2 s by default), so
      // service resumes within about half a second of the store's return.
      const reconnect = (times: number) => Math.min(times * 50, 500);
      // A server that hangs (rather than refuses) answers 503 after 2 s instead of holding requests.
      const common = {
        enableOfflineQueue: false,
        enableAutoPipelining: true,
        commandTimeout: 2_000,
      } as const;
      const client =
        spec.kind === 'redis'
          ? new ioredis.Redis(spec.url, { ...common, maxRetriesPerRequest: 1, retryStrategy: reconnect })
          : new ioredis.Cluster(spec.nodes, {
              ...common,
              clusterRetryStrategy: reconnect,
              redisOptions: {
                maxRetriesPerRequest: 1,
                ...(spec.tls ? { tls: {} } : {}),
                ...(spec.username === undefined ? {} : { username: spec.username }),
                ...(spec.password === undefined ? {} : { password: spec.password }),
              },
            });
      client.on('error', (error: unknown) => onError(error, 'redis connection error'));
      try {
        await readyWithin(client, describeStore(spec));
      } catch (error) {
        client.disconnect();
        throw error;
      }
      const { createRedisStore } = await import('../stores/redis.js');
      const store = createRedisStore({
        client,
        ...(spec.prefix === undefined ? {} : { prefix: spec.prefix }),
      });
      return {
        store,
        async close() {
          await store.close();
          await client.quit().catch(() => client.disconnect());
        },
      };
    }
    case 'postgres': {
      const pg = (await driver('pg', 'postgres:')) as typeof import('pg');
      const Pool = pg.Pool ?? (pg as unknown as { default: typeof import('pg') }).default.Pool;
      // query_timeout: a server that hangs answers 503 after 5 s instead of holding requests.
      const pool = new Pool({
        connectionString: spec.url,
        connectionTimeoutMillis: 5_000,
        query_timeout: 5_000,
        max: 20,
      });
      pool.on('error', (error: unknown) => onError(error, 'postgres idle client error'));
      const { createPostgresStore } = await import('../stores/postgres.js');
      const store = createPostgresStore({ pool, ...(spec.table === undefined ? {} : { table: spec.table }) });
      try {
        await store.migrate();
      } catch (error) {
        await store.close().catch(() => {});
        await pool.end().catch(() => {});
        throw new Error(`cannot reach the store at ${describeStore(spec)}: ${messageOf(error)}`);
      }
      return {
        store,
        async close() {
          await store.close();
          await pool.end();
        },
      };
    }
  }
}

async function driver(name: string, scheme: string): Promise<unknown> {
  try {
    return await import(name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND') {
      throw new GatewayConfigError(`--store ${scheme} needs the ${name} package: npm install ${name}`);
    }
    throw error;
  }
}

interface Connectable {
  status: string;
  once(event: 'ready', listener: () => void): unknown;
  removeListener(event: 'ready', listener: () => void): unknown;
}

function readyWithin(client: Connectable, what: string): Promise<void> {
  if (client.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeListener('ready', ready);
      reject(new Error(`cannot reach the store at ${what} within ${CONNECT_TIMEOUT_MS / 1000} s`));
    }, CONNECT_TIMEOUT_MS);
    const ready = () => {
      clearTimeout(timer);
      resolve();
    };
    client.once('ready', ready);
  });
}

function messageOf(error: unknown): string {
  const cause = (error as { cause?: unknown }).cause;
  const inner = cause instanceof Error ? cause : error;
  return inner instanceof Error
    ? inner.message || String((inner as NodeJS.ErrnoException).code)
    : String(inner);
}
