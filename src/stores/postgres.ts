import { createHash } from 'node:crypto';
import { IdempotencyConfigError, type IdempotencyStoreError } from '../core/errors.js';
import type {
  AcquireInput,
  AcquireResult,
  IdempotencyRecord,
  IdempotencyStore,
  StoredResponse,
} from '../core/store.js';
import {
  decodeHeaders,
  encodeHeaders,
  guarded,
  integerOption,
  schedulePrune,
  sqlIdentifier,
  storeError,
} from './shared.js';

/** Anything that runs a parameterized query: a `pg.Pool`, `pg.Client` or `pg.PoolClient`. */
export interface PostgresQueryable {
  query(
    text: string,
    values?: unknown[],
  ): Promise<{ rows: Array<Record<string, unknown>>; rowCount?: number | null }>;
  /** A named statement: prepared once per connection, then only bound and executed. */
  query(config: {
    name: string;
    text: string;
    values: unknown[];
  }): Promise<{ rows: Array<Record<string, unknown>>; rowCount?: number | null }>;
}

/** A NOTIFY message as `pg` delivers it. */
export interface PostgresNotification {
  channel: string;
  payload?: string | undefined;
}

/** One connection that can LISTEN: a `pg.Client`, or a `pg.PoolClient` (with `release`). */
export interface PostgresClient extends PostgresQueryable {
  on(event: 'notification', listener: (message: PostgresNotification) => void): unknown;
  on(event: 'error', listener: (error: Error) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  removeListener(event: 'notification', listener: (message: PostgresNotification) => void): unknown;
  removeListener(event: 'error' | 'end', listener: (error?: Error) => void): unknown;
}

/** A connection checked out of a pool. */
export interface PostgresPoolClient extends PostgresClient {
  release(error?: Error | boolean): void;
}

/** A `pg.Pool`-like: queries on any connection, and `connect()` for one held connection. */
export interface PostgresPool extends PostgresQueryable {
  connect(): Promise<PostgresPoolClient>;
}

/**
 * Options of `createPostgresStore`: exactly one of `pool` (recommended) or `client`, which the store
 * never ends. A `client` should be the store's own: it runs the migration transaction and LISTEN on it.
 * A pool needs `max >= 2`: `waitForCompletion` holds one connection for LISTEN.
 */
export type PostgresStoreOptions = (
  | { pool: PostgresPool; client?: never }
  | { client: PostgresClient; pool?: never }
) & {
  /** The table of records (a plain identifier, unquoted, resolved by `search_path`). @default 'idemkit_keys' */
  table?: string;
  /** Create or migrate the schema lazily before the first operation; false if you run `postgresSchemaSql()` yourself. @default true */
  migrate?: boolean;
  /** How often expired records are deleted; 0 turns it off (expiry is still checked on access). @default 60_000 */
  pruneIntervalMs?: number;
  /** Rows deleted per prune statement. @default 1_000 */
  pruneBatchSize?: number;
  /** Called when a background prune fails. @default process.emitWarning */
  onPruneError?: (error: IdempotencyStoreError) => void;
  /**
   * Send the hot statements as named (prepared once per connection). Turn off behind PgBouncer in
   * transaction pooling mode, where a prepared statement may not exist on the next server connection.
   * @default true
   */
  namedStatements?: boolean;
  /**
   * Group the `acquire` calls (and the `complete` calls) made while a batch of the same kind is being
   * gathered or is in flight into one statement over arrays, each row still claimed or completed
   * atomically. false sends one statement per call.
   * @default true
   */
  batching?: boolean;
};

/** The PostgreSQL store's own extras. */
export interface PostgresStore extends IdempotencyStore {
  /** Creates or migrates the schema now (under an advisory lock; a no-op when it is current). */
  migrate(): Promise<void>;
  /** Deletes expired records in batches until a batch comes back short; resolves to how many. */
  prune(options?: { now?: number; batchSize?: number }): Promise<number>;
  /**
   * Over LISTEN/NOTIFY, with a re-check every 500 ms. An in-progress row counts as running until it is
   * completed, released, deleted or pruned (the store has no clock; the engine's deadline bounds the wait).
   */
  waitForCompletion(scopeKey: string, options: { signal: AbortSignal }): Promise<void>;
}

const STORE = 'postgres';
const SCHEMA_TABLE = 'idemkit_schema';
const SCHEMA_TABLE_SQL = `CREATE TABLE IF NOT EXISTS ${SCHEMA_TABLE} (table_name text PRIMARY KEY, version integer NOT NULL)`;
const POLL_MS = 500;
const ACQUIRE_ATTEMPTS = 10;
/** At most this many calls in one batch statement, and about this many body bytes in a `complete` one. */
const MAX_BATCH = 500;
const MAX_BATCH_BYTES = 8 * 1024 * 1024;
/** Batch statements in flight per operation, at most (fewer on a small pool, one on a client). */
const MAX_IN_FLIGHT = 4;
const COLUMNS =
  'state, token, fingerprint, method, path, body_hash, created_at, lease_expires_at, expires_at, completed_at, status, headers, body, body_size';

/** Ordered schema migrations; migration i brings the table to version i + 1. Each is re-runnable. */
const MIGRATIONS: ReadonlyArray<(table: string) => string> = [
  // key_hash: the hex SHA-256 of the scope key (see keyHash), so any scope key fits the index.
  (t) => `CREATE TABLE IF NOT EXISTS ${t} (
  key_hash text PRIMARY KEY,
  state text NOT NULL CHECK (state IN ('in-progress', 'completed')),
  token text,
  fingerprint text NOT NULL,
  method text NOT NULL,
  path text NOT NULL,
  body_hash text NOT NULL,
  created_at bigint NOT NULL,
  lease_expires_at bigint,
  expires_at bigint NOT NULL,
  completed_at bigint,
  status integer,
  headers text,
  body bytea,
  body_size bigint,
  taken_over boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS ${t}_expires_at_idx ON ${t} (expires_at)`,
];

const versionSql = (table: string, version: number) =>
  `INSERT INTO ${SCHEMA_TABLE} (table_name, version) VALUES ('${table}', ${version}) ON CONFLICT (table_name) DO UPDATE SET version = GREATEST(${SCHEMA_TABLE}.version, excluded.version)`;

/** A 64-bit advisory lock key from a name, as a decimal string. */
const lockKey = (name: string) =>
  createHash('sha256').update(`idemkit:${name}`).digest().readBigInt64BE(0).toString();

const noop = () => {};

/** Times go to bigint columns: a fractional clock reading must not fail the query. */
const ms = Math.floor;

const md5 = (text: string) => createHash('md5').update(text, 'utf8').digest('hex');

/**
 * The stored key: the hex SHA-256 of the scope key's UTF-16 code units. A btree row holds at most
 * about 2.7 kB and a text value no NUL, so the scope key itself cannot be the key; UTF-8 would merge
 * scope keys that differ only in lone surrogates (both become U+FFFD). Also the NOTIFY payload.
 */
const keyHash = (scopeKey: string) =>
  createHash('sha256').update(Buffer.from(scopeKey, 'utf16le')).digest('hex');

/** A serialization failure or deadlock: the statement rolled back and may simply run again. */
/**
 * The claim, shared by the one-key and the batched acquire: a new row, or the existing one replaced
 * when it expired or its lease lapsed under the same fingerprint (`taken_over` when it was still live).
 */
const CLAIM = `  ON CONFLICT (key_hash) DO UPDATE SET state = 'in-progress', token = excluded.token,
    fingerprint = excluded.fingerprint, method = excluded.method, path = excluded.path,
    body_hash = excluded.body_hash, created_at = excluded.created_at,
    lease_expires_at = excluded.lease_expires_at, expires_at = excluded.expires_at, completed_at = NULL,
    status = NULL, headers = NULL, body = NULL, body_size = NULL,
    taken_over = cur.expires_at > excluded.created_at
  WHERE cur.expires_at <= excluded.created_at
    OR (cur.state = 'in-progress' AND cur.lease_expires_at <= excluded.created_at
      AND cur.fingerprint = excluded.fingerprint)`;

/** Times one statement is sent when PostgreSQL answers 40001 or 40P01. */
const STATEMENT_ATTEMPTS = 10;
const retryable = (error: unknown) => {
  const code = (error as { code?: unknown } | null)?.code;
  return code === '40001' || code === '40P01';
};

/**
 * The full schema SQL, for a DBA to review and run by hand (then pass `migrate: false`): the version
 * table, every migration in order, and the version bookkeeping, in one transaction under the same
 * advisory lock `migrate()` takes.
 */
export function postgresSchemaSql(options: { table?: string } = {}): string {
  const table = sqlIdentifier(STORE, 'table', options.table, 'idemkit_keys');
  return [
    'BEGIN',
    `SELECT pg_advisory_xact_lock(${lockKey(table)})`,
    SCHEMA_TABLE_SQL,
    ...MIGRATIONS.map((migration) => migration(table)),
    versionSql(table, MIGRATIONS.length),
    'COMMIT',
  ]
    .map((statement) => `${statement};\n`)
    .join('');
}

/**
 * Records in a PostgreSQL table, for many instances when Postgres is already the system of record.
 * Every transition is one statement; `acquire` is an `INSERT … ON CONFLICT DO UPDATE … WHERE`
 * (expired, or a lapsed lease with the same fingerprint) that reads the existing record in the same
 * round trip. Concurrent `acquire`s (and `complete`s) are batched into one such statement over arrays
 * unless `batching: false`. `waitForCompletion` listens on a channel that `complete`, `release` and
 * `delete` notify in the same statement. Takes the user's `pool` or `client` and never ends it; with
 * a pool it holds one connection for migrations (briefly) and one for LISTEN (from the first wait
 * until `close`).
 */
export function createPostgresStore(options: PostgresStoreOptions): PostgresStore {
  if (typeof options !== 'object' || options === null) {
    throw new IdempotencyConfigError(`${STORE}: options with a pool or a client are required`);
  }
  const { pool, client } = options;
  if ((pool === undefined) === (client === undefined)) {
    throw new IdempotencyConfigError(`${STORE}: pass exactly one of pool or client`);
  }
  const given = (pool ?? client) as Partial<PostgresPool & PostgresClient>;
  if (typeof given.query !== 'function' || typeof (pool ? given.connect : given.on) !== 'function') {
    throw new IdempotencyConfigError(
      `${STORE}: ${pool ? 'pool must be a pg.Pool' : 'client must be a pg.Client'}`,
    );
  }
  // LISTEN holds one pooled connection from the first wait until close(): with max 1, every other
  // query would wait for it forever.
  const max = (pool as { options?: { max?: unknown } } | undefined)?.options?.max;
  if (typeof max === 'number' && max < 2) {
    throw new IdempotencyConfigError(
      `${STORE}: the pool's max is ${max}, but waitForCompletion holds one connection for LISTEN ` +
        'until close(), which would leave no connection for the queries; use a pool with max >= 2, ' +
        'or pass a client for the store alone',
    );
  }
  for (const name of ['migrate', 'namedStatements', 'batching'] as const) {
    if (options[name] !== undefined && typeof options[name] !== 'boolean') {
      throw new IdempotencyConfigError(`${STORE}: ${name} must be a boolean`);
    }
  }
  const table = sqlIdentifier(STORE, 'table', options.table, 'idemkit_keys');
  const autoMigrate = options.migrate ?? true;
  const namedStatements = options.namedStatements ?? true;
  const batching = options.batching ?? true;
  // A client runs one query at a time anyway: one batch in flight lets the next one gather the most.
  // On a pool, leave connections for the other operation's batches, LISTEN and the rest.
  const inFlightCap =
    pool === undefined
      ? 1
      : typeof max === 'number'
        ? Math.max(1, Math.min(MAX_IN_FLIGHT, Math.floor((max - 1) / 2)))
        : MAX_IN_FLIGHT;
  const pruneIntervalMs = integerOption(STORE, 'pruneIntervalMs', options.pruneIntervalMs, 60_000, 0);
  const pruneBatchSize = integerOption(STORE, 'pruneBatchSize', options.pruneBatchSize, 1_000, 1);
  const onPruneError = options.onPruneError ?? ((error: IdempotencyStoreError) => process.emitWarning(error));
  const db: PostgresQueryable = pool ?? serialized(client!);
  const channel = `idemkit:${table}`.slice(0, 63);
  const notifyFrom = (cte: string) =>
    `WITH d AS (${cte} RETURNING key_hash) SELECT pg_notify('${channel}', key_hash) FROM d`;
  // The hot statements are named, so each connection parses and plans them once (unless turned off).
  // Names stay under PostgreSQL's 63 bytes whatever the table's name is.
  const statementPrefix = `idemkit_${md5(table).slice(0, 16)}_`;
  const send = (op: keyof typeof sql, values: unknown[]) =>
    namedStatements
      ? db.query({ name: statementPrefix + op, text: sql[op], values })
      : db.query(sql[op], values);
  // Each statement is one conditional transition that a serialization failure or deadlock (only
  // possible above READ COMMITTED, or between batches) rolled back whole: running it again is safe.
  const exec = async (op: keyof typeof sql, values: unknown[]) => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await send(op, values);
      } catch (error) {
        if (!retryable(error) || attempt >= STATEMENT_ATTEMPTS) throw error;
        // A little jitter, so racers that just failed together do not collide again.
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 2 * attempt));
      }
    }
  };
  const sql = {
    acquire: `WITH existing AS (SELECT ${COLUMNS} FROM ${table} WHERE key_hash = $1),
claimed AS (
  INSERT INTO ${table} AS cur (key_hash, state, token, fingerprint, method, path, body_hash, created_at, lease_expires_at, expires_at)
  VALUES ($1, 'in-progress', $2, $3, $4, $5, $6, $7, $8, $9)
${CLAIM}
  RETURNING true AS acquired, taken_over, ${COLUMNS}
)
SELECT * FROM claimed
UNION ALL
SELECT false, false, ${COLUMNS} FROM existing WHERE NOT EXISTS (SELECT 1 FROM claimed)`,
    // The batched acquire: the same claim for many distinct keys, inserted in key order (so two
    // concurrent batches cannot deadlock), one row back per key: claimed, or the snapshot's row (all
    // NULL when there was none).
    acquireMany: `WITH input AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::bigint[], $8::bigint[], $9::bigint[])
    AS i(key_hash, token, fingerprint, method, path, body_hash, created_at, lease_expires_at, expires_at)
),
existing AS (SELECT key_hash, ${COLUMNS} FROM ${table} WHERE key_hash = ANY($1::text[])),
claimed AS (
  INSERT INTO ${table} AS cur (key_hash, state, token, fingerprint, method, path, body_hash, created_at, lease_expires_at, expires_at)
  SELECT key_hash, 'in-progress', token, fingerprint, method, path, body_hash, created_at, lease_expires_at, expires_at
  FROM input ORDER BY key_hash
${CLAIM}
  RETURNING key_hash, taken_over
)
SELECT i.key_hash, c.key_hash IS NOT NULL AS acquired, coalesce(c.taken_over, false) AS taken_over,
  ${COLUMNS.split(', ')
    .map((column) => `e.${column}`)
    .join(', ')}
FROM input i LEFT JOIN claimed c ON c.key_hash = i.key_hash
  LEFT JOIN existing e ON c.key_hash IS NULL AND e.key_hash = i.key_hash`,
    renew: `UPDATE ${table} SET lease_expires_at = $3, expires_at = GREATEST(expires_at, $3)
WHERE key_hash = $1 AND token = $2 AND state = 'in-progress' AND expires_at > $4`,
    complete: notifyFrom(`UPDATE ${table} SET state = 'completed', token = NULL, lease_expires_at = NULL,
  completed_at = $3, expires_at = $4, status = $5, headers = $6, body = $7, body_size = $8
WHERE key_hash = $1 AND token = $2 AND state = 'in-progress' AND expires_at > $3`),
    // The batched complete: the rows to complete are locked in key order first (the order the batched
    // acquire takes its locks in), then updated and notified; one row back per completed key.
    completeMany: `WITH input AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::integer[], $6::text[],
    $7::bytea[], $8::bigint[])
    AS i(key_hash, token, completed_at, expires_at, status, headers, body, body_size)
),
locked AS (
  SELECT i.* FROM ${table} t JOIN input i ON t.key_hash = i.key_hash
  WHERE t.token = i.token AND t.state = 'in-progress' AND t.expires_at > i.completed_at
  ORDER BY t.key_hash FOR UPDATE OF t
),
d AS (
  UPDATE ${table} t SET state = 'completed', token = NULL, lease_expires_at = NULL,
    completed_at = l.completed_at, expires_at = l.expires_at, status = l.status, headers = l.headers,
    body = l.body, body_size = l.body_size
  FROM locked l
  WHERE t.key_hash = l.key_hash AND t.token = l.token AND t.state = 'in-progress' AND t.expires_at > l.completed_at
  RETURNING t.key_hash
)
SELECT key_hash, pg_notify('${channel}', key_hash) FROM d`,
    release: notifyFrom(`DELETE FROM ${table} WHERE key_hash = $1 AND token = $2 AND state = 'in-progress'`),
    delete: notifyFrom(
      `DELETE FROM ${table} WHERE key_hash = $1 AND state = 'completed' AND expires_at > $2`,
    ),
    get: `SELECT ${COLUMNS} FROM ${table} WHERE key_hash = $1 AND expires_at > $2`,
    running: `SELECT 1 FROM ${table} WHERE key_hash = $1 AND state = 'in-progress'`,
    // Expired in-progress rows wake their waiters, as a release would.
    prune: `WITH victims AS (
  SELECT key_hash FROM ${table} WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
), d AS (
  DELETE FROM ${table} t USING victims WHERE t.key_hash = victims.key_hash RETURNING t.key_hash, t.state
), n AS (SELECT pg_notify('${channel}', key_hash) FROM d WHERE state = 'in-progress')
SELECT (SELECT count(*) FROM d)::int AS deleted, (SELECT count(*) FROM n)::int AS notified`,
  };

  let closed = false;
  let migration: Promise<void> | undefined;

  const assertOpen = () => {
    if (closed) throw new Error('postgres store is closed');
  };

  /** One transaction under the table's advisory lock: N processes starting together migrate once. */
  const runMigration = async () => {
    const conn = pool === undefined ? undefined : await pool.connect();
    const q = conn ?? db;
    try {
      await q.query('BEGIN');
      await q.query('SELECT pg_advisory_xact_lock($1)', [lockKey(table)]);
      const found = await q.query('SELECT to_regclass($1) IS NOT NULL AS found', [SCHEMA_TABLE]);
      if (found.rows[0]?.found !== true) {
        // Shared by every table: serialise its creation too (taken last, so no lock-order deadlock).
        await q.query('SELECT pg_advisory_xact_lock($1)', [lockKey(SCHEMA_TABLE)]);
        await q.query(SCHEMA_TABLE_SQL);
      }
      const row = await q.query(
        `SELECT version, to_regclass($1) IS NOT NULL AS present FROM ${SCHEMA_TABLE} WHERE table_name = $1`,
        [table],
      );
      // A version row whose table was dropped by hand counts as no schema at all.
      const current = row.rows[0]?.present === true ? Number(row.rows[0].version) : 0;
      if (current > MIGRATIONS.length) {
        throw new Error(`table ${table} is at schema version ${current}, newer than this idemkit knows`);
      }
      for (const migrate of MIGRATIONS.slice(current)) await q.query(migrate(table));
      if (current < MIGRATIONS.length) await q.query(versionSql(table, MIGRATIONS.length));
      await q.query('COMMIT');
      conn?.release();
    } catch (error) {
      await q.query('ROLLBACK').catch(noop);
      conn?.release(true);
      throw error;
    }
  };

  const ready = (): Promise<void> => {
    if (migration === undefined) {
      const attempt = runMigration();
      migration = attempt;
      attempt.catch(() => {
        if (migration === attempt) migration = undefined; // the next operation tries again
      });
    }
    return migration;
  };

  const run = <T>(operation: string, work: () => Promise<T>): Promise<T> =>
    guarded(STORE, operation, async () => {
      assertOpen();
      if (autoMigrate) await ready();
      return work();
    });

  // Group batching. Calls of one kind (acquire, or complete) queue up and go at setImmediate as one
  // statement over arrays; while `inFlightCap` such statements are running, they wait for the next.
  // A key is in at most one batch at a time (ON CONFLICT and UPDATE cannot touch a row twice in one
  // statement, and a second in-flight claim of one key would only lose to the first): a duplicate waits.
  interface Queued<I, R> {
    hash: string;
    input: I;
    /** Statements that carried it so far; bounded by ACQUIRE_ATTEMPTS. */
    attempts: number;
    failure?: unknown;
    resolve: (value: R) => void;
    reject: (error: unknown) => void;
  }
  /** What one batch statement did for one call: its answer, a retry in a later batch, or its failure. */
  type Outcome<R> = { value: R } | { retry: true } | { error: unknown };
  const batcher = <I, R>(
    operation: 'acquire' | 'complete',
    weigh: (input: I) => number,
    statement: (batch: ReadonlyArray<Queued<I, R>>) => Promise<Array<Outcome<R>>>,
    /** The answer a queued duplicate of a key may take from the call just answered, if any. */
    share?: (answer: R, answered: I, duplicate: I) => R | undefined,
  ) => {
    let queue: Array<Queued<I, R>> = [];
    const busy = new Set<string>();
    let inFlight = 0;
    let scheduled = false;
    const idle: Array<() => void> = [];
    const schedule = () => {
      if (scheduled || queue.length === 0 || inFlight >= inFlightCap) return;
      scheduled = true;
      setImmediate(flush);
    };
    const flush = () => {
      scheduled = false;
      while (inFlight < inFlightCap && queue.length > 0) {
        const batch: Array<Queued<I, R>> = [];
        const rest: Array<Queued<I, R>> = [];
        const keys = new Set<string>();
        let weight = 0;
        for (const item of queue) {
          const w = weigh(item.input);
          if (
            keys.has(item.hash) ||
            busy.has(item.hash) ||
            batch.length >= MAX_BATCH ||
            (batch.length > 0 && weight + w > MAX_BATCH_BYTES)
          ) {
            rest.push(item);
          } else {
            batch.push(item);
            keys.add(item.hash);
            weight += w;
          }
        }
        if (batch.length === 0) break; // only keys already in flight: they go when theirs come back
        queue = rest;
        void send(batch);
      }
    };
    const send = async (batch: Array<Queued<I, R>>) => {
      inFlight += 1;
      for (const item of batch) {
        busy.add(item.hash);
        item.attempts += 1;
      }
      batch.sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : 0));
      let outcomes: Array<Outcome<R>>;
      let failure: unknown;
      try {
        outcomes = await statement(batch);
      } catch (error) {
        // A deadlock or serialization failure rolled the whole statement back: every call runs again.
        if (retryable(error)) failure = error;
        outcomes = batch.map(() => (retryable(error) ? { retry: true } : { error }));
      }
      inFlight -= 1;
      const again: Array<Queued<I, R>> = [];
      batch.forEach((item, i) => {
        busy.delete(item.hash);
        const outcome = outcomes[i] ?? { error: new Error(`${operation} batch returned no outcome`) };
        if ('value' in outcome) {
          item.resolve(outcome.value);
          if (share !== undefined) settleDuplicates(item, outcome.value);
        } else if ('error' in outcome) item.reject(storeError(STORE, operation, outcome.error));
        else if (item.attempts >= ACQUIRE_ATTEMPTS) {
          const cause = failure ?? item.failure;
          const error = new Error(
            `${operation} did not settle after ${ACQUIRE_ATTEMPTS} attempts under contention`,
            { cause },
          );
          item.reject(storeError(STORE, operation, error));
        } else {
          if (failure !== undefined) item.failure = failure;
          again.push(item);
        }
      });
      // Retries first, in their order; resolved callers' next calls (complete after acquire) join the
      // queue in the microtasks before the setImmediate flush.
      queue = again.concat(queue);
      schedule();
      if (queue.length === 0 && inFlight === 0) for (const done of idle.splice(0)) done();
    };
    // A hot key (every retry of one key, the replay path) would otherwise go one call per statement.
    const settleDuplicates = (item: Queued<I, R>, answer: R) => {
      if (!queue.some((q) => q.hash === item.hash)) return;
      queue = queue.filter((q) => {
        if (q.hash !== item.hash) return true;
        const shared = share!(answer, item.input, q.input);
        if (shared === undefined) return true;
        q.resolve(shared);
        return false;
      });
    };
    return {
      enqueue: (hash: string, input: I) =>
        new Promise<R>((resolve, reject) => {
          queue.push({ hash, input, attempts: 0, resolve, reject });
          schedule();
        }),
      /** Resolves once every queued call has been answered. */
      drained: () =>
        queue.length === 0 && inFlight === 0
          ? Promise.resolve()
          : new Promise<void>((resolve) => {
              idle.push(resolve);
            }),
    };
  };

  /**
   * A snapshot row back to `acquire`'s answer; undefined when the row may lag the one ON CONFLICT saw
   * (absent, expired, or a takeover it should have made): the call runs again.
   */
  const decide = (
    row: Record<string, unknown> | undefined,
    now: number,
    fingerprint: string,
  ): AcquireResult | undefined => {
    if (row === undefined) return undefined; // inserted by a transaction our snapshot predates
    if (row.acquired === true) return { kind: 'acquired', takenOver: row.taken_over === true };
    if (row.state === null) return undefined; // the batched statement's "no row in the snapshot"
    const record = toRecord(row);
    // The snapshot read may lag the row ON CONFLICT saw: trust it only if it explains the refusal.
    if (record.expiresAt <= now) return undefined;
    if (record.state === 'completed') return { kind: 'completed', record };
    if (record.leaseExpiresAt <= now && record.fingerprint === fingerprint) return undefined;
    return { kind: 'in-progress', record };
  };

  /** Calls as parameter arrays: column j of every call's values. */
  const columns = (rows: ReadonlyArray<ReadonlyArray<unknown>>, width: number) => {
    const out = Array.from({ length: width }, () => new Array<unknown>(rows.length));
    rows.forEach((values, i) => {
      for (let j = 0; j < width; j++) out[j]![i] = values[j];
    });
    return out;
  };

  interface AcquireCall {
    values: unknown[];
    now: number;
    fingerprint: string;
  }
  const acquireBatches = batcher<AcquireCall, AcquireResult>(
    'acquire',
    () => 0,
    async (batch) => {
      if (batch.length === 1) {
        // A lone call: the one-key statement, which is cheaper to plan and run than the array one.
        const { input } = batch[0]!;
        const answer = decide((await exec('acquire', input.values)).rows[0], input.now, input.fingerprint);
        return [answer === undefined ? { retry: true } : { value: answer }];
      }
      const result = await exec(
        'acquireMany',
        columns(
          batch.map((item) => item.input.values),
          9,
        ),
      );
      const rows = new Map(result.rows.map((row) => [row.key_hash, row]));
      return batch.map((item): Outcome<AcquireResult> => {
        try {
          const answer = decide(rows.get(item.hash), item.input.now, item.input.fingerprint);
          return answer === undefined ? { retry: true } : { value: answer };
        } catch (error) {
          return { error };
        }
      });
    },
    (answer, answered, duplicate) => shareAcquire(answer, answered, duplicate),
  );
  /**
   * A queued acquire of a key that was just answered takes that answer's record, judged at its own
   * time as `decide` would: a claim just made is a live in-progress record, a completed record stays
   * until it expires. A takeover it could make (a lapsed lease, its fingerprint) goes to the database.
   */
  const shareAcquire = (answer: AcquireResult, answered: AcquireCall, duplicate: AcquireCall) => {
    let record: IdempotencyRecord;
    if (answer.kind === 'acquired') {
      const v = answered.values;
      record = {
        state: 'in-progress',
        token: v[1] as string,
        fingerprint: v[2] as string,
        request: { method: v[3] as string, path: v[4] as string, bodyHash: v[5] as string },
        createdAt: v[6] as number,
        leaseExpiresAt: v[7] as number,
        expiresAt: v[8] as number,
      };
    } else {
      record = answer.record;
    }
    const at = duplicate.now;
    if (record.expiresAt <= at) return undefined;
    if (record.state === 'completed') return { kind: 'completed', record } as const;
    if (record.leaseExpiresAt <= at && record.fingerprint === duplicate.fingerprint) return undefined;
    return { kind: 'in-progress', record } as const;
  };
  const completeBatches = batcher<unknown[], boolean>(
    'complete',
    (values) => (values[6] as Buffer | null)?.byteLength ?? 0,
    async (batch) => {
      if (batch.length === 1) return [{ value: (await exec('complete', batch[0]!.input)).rows.length === 1 }];
      const result = await exec(
        'completeMany',
        columns(
          batch.map((item) => item.input),
          8,
        ),
      );
      const done = new Set(result.rows.map((row) => row.key_hash));
      return batch.map((item) => ({ value: done.has(item.hash) }));
    },
  );

  // waitForCompletion: wake-ups by key hash, the NOTIFY payload, from one LISTEN connection.
  interface Listener {
    conn: Promise<PostgresClient>;
    drop: (error?: Error) => void;
    /** Set once the connection is in hand: from then on `close()` unlistens and releases it. */
    connected: boolean;
  }
  const waiters = new Map<string, Set<() => void>>();
  let listener: Listener | undefined;
  const wakeAll = () => {
    for (const set of waiters.values()) for (const wake of set) wake();
  };
  const onNotification = ({ channel: from, payload }: PostgresNotification) => {
    if (from === channel) for (const wake of waiters.get(payload ?? '') ?? []) wake();
  };
  const detach = (conn: PostgresClient, drop: (error?: Error) => void) => {
    conn.removeListener('notification', onNotification);
    conn.removeListener('error', drop);
    conn.removeListener('end', drop);
  };
  const listen = (): Promise<PostgresClient> => {
    if (closed) return Promise.reject(new Error('postgres store is closed'));
    if (listener !== undefined) return listener.conn;
    // The connection failed or ended: forget it (the next wait listens again), wake every waiter.
    // After close() it does nothing, but stays attached until the release: a pooled connection
    // without an 'error' listener would crash the process on an error.
    const drop = (error?: Error) => {
      if (listener !== current) return;
      listener = undefined;
      conn.then((c) => {
        detach(c, drop);
        if (pool !== undefined) (c as PostgresPoolClient).release(error ?? true);
      }, noop);
      wakeAll();
    };
    const open = async (): Promise<PostgresClient> => {
      const held = await pool?.connect();
      if (listener !== current) {
        // The store closed while the pool was busy: close() did not wait for this connection.
        held?.release();
        throw new Error('postgres store is closed');
      }
      current.connected = true;
      const c = held ?? client!;
      c.on('notification', onNotification);
      c.on('error', drop);
      c.on('end', drop);
      try {
        await (held ?? db).query(`LISTEN "${channel}"`);
        return c;
      } catch (error) {
        detach(c, drop);
        held?.release(true);
        throw error;
      }
    };
    const current: Listener = { conn: open(), drop, connected: false };
    const { conn } = current;
    listener = current;
    conn.catch(() => {
      if (listener === current) listener = undefined;
    });
    return conn;
  };

  const prune = async (opts: { now?: number; batchSize?: number } = {}): Promise<number> => {
    const batchSize = integerOption(STORE, 'batchSize', opts.batchSize, pruneBatchSize, 1);
    const now = integerOption(STORE, 'now', opts.now, Date.now(), 0);
    return run('prune', async () => {
      let total = 0;
      for (;;) {
        const result = await db.query(sql.prune, [now, batchSize]);
        const deleted = Number(result.rows[0]?.deleted ?? 0);
        total += deleted;
        if (deleted < batchSize) return total;
      }
    });
  };

  const stopPruning = schedulePrune(STORE, pruneIntervalMs, () => prune(), onPruneError);

  return {
    migrate: () =>
      guarded(STORE, 'migrate', () => {
        assertOpen();
        return ready();
      }),
    prune,

    acquire: (scopeKey: string, input: AcquireInput) =>
      run('acquire', async (): Promise<AcquireResult> => {
        const now = ms(input.now);
        const hash = keyHash(scopeKey);
        const values = [
          hash,
          input.token,
          input.fingerprint,
          input.request.method,
          input.request.path,
          input.request.bodyHash,
          now,
          ms(now + input.leaseMs),
          ms(now + Math.max(input.ttlMs, input.leaseMs)),
        ];
        if (batching) {
          assertOpen(); // closed while the migration ran
          return acquireBatches.enqueue(hash, { values, now, fingerprint: input.fingerprint });
        }
        let failure: unknown;
        for (let attempt = 0; attempt < ACQUIRE_ATTEMPTS; attempt++) {
          let row: Record<string, unknown> | undefined;
          try {
            row = (await exec('acquire', values)).rows[0];
          } catch (error) {
            // Under repeatable read or serializable, a concurrent acquire of the same key that won
            // fails this one; run again on a fresh snapshot, which sees the winner's row.
            if (!retryable(error)) throw error;
            failure = error;
            continue;
          }
          const answer = decide(row, now, input.fingerprint);
          if (answer !== undefined) return answer;
        }
        throw new Error(`acquire did not settle after ${ACQUIRE_ATTEMPTS} attempts under contention`, {
          cause: failure,
        });
      }),

    renew: (scopeKey, token, { leaseMs, now }) =>
      run('renew', async () => {
        const result = await exec('renew', [keyHash(scopeKey), token, ms(now + leaseMs), ms(now)]);
        return result.rowCount === 1;
      }),

    complete: (scopeKey, token, response: StoredResponse, { ttlMs, now }) =>
      run('complete', async () => {
        const { body } = response;
        const hash = keyHash(scopeKey);
        const values = [
          hash,
          token,
          ms(now),
          ms(now + ttlMs),
          response.status,
          encodeHeaders(response.headers),
          body === null ? null : Buffer.from(body.buffer, body.byteOffset, body.byteLength),
          response.bodySize,
        ];
        if (batching) {
          assertOpen(); // closed while the migration ran
          return completeBatches.enqueue(hash, values);
        }
        return (await exec('complete', values)).rows.length === 1;
      }),

    release: (scopeKey, token) =>
      run('release', async () => (await exec('release', [keyHash(scopeKey), token])).rows.length === 1),

    get: (scopeKey, { now }) =>
      run('get', async (): Promise<IdempotencyRecord | undefined> => {
        const row = (await exec('get', [keyHash(scopeKey), ms(now)])).rows[0];
        return row === undefined ? undefined : toRecord(row);
      }),

    delete: (scopeKey, { now }) =>
      run('delete', async () => (await exec('delete', [keyHash(scopeKey), ms(now)])).rows.length === 1),

    waitForCompletion: (scopeKey, { signal }) =>
      guarded(STORE, 'waitForCompletion', async () => {
        assertOpen();
        if (signal.aborted) return;
        const hash = keyHash(scopeKey);
        let wake!: () => void;
        const woken = new Promise<void>((resolve) => {
          wake = resolve;
        });
        // Registered before LISTEN and the state check, so no notification can slip between them.
        const set = waiters.get(hash) ?? new Set();
        waiters.set(hash, set.add(wake));
        signal.addEventListener('abort', wake, { once: true });
        let poll: NodeJS.Timeout | undefined;
        let done = false;
        const running = async () => (await exec('running', [hash])).rows.length > 0;
        // A safety net against a lost notification; a failing re-check wakes (the next acquire reports it).
        const recheck = () => {
          poll = setTimeout(
            () => running().then((still) => (still && !done ? recheck() : wake()), wake),
            POLL_MS,
          );
          poll.unref();
        };
        try {
          // The migration, LISTEN and the first check may each wait for a pooled connection: raced
          // against the wake-up, so an abort or close() ends the wait at once.
          const setup = (async () => {
            if (autoMigrate) await ready();
            if (done) return;
            await listen();
            if (done || signal.aborted) return;
            if (!(await running())) wake();
            else if (!done) recheck();
          })();
          await Promise.race([setup.then(() => woken), woken]);
        } finally {
          done = true;
          set.delete(wake);
          if (set.size === 0 && waiters.get(hash) === set) waiters.delete(hash);
          signal.removeEventListener('abort', wake);
          clearTimeout(poll);
        }
      }),

    async close() {
      if (closed) return;
      closed = true;
      stopPruning();
      const current = listener;
      listener = undefined;
      wakeAll();
      // Calls already queued are carried out (a request that ran must get its response stored).
      await Promise.all([acquireBatches.drained(), completeBatches.drained()]);
      // Still waiting for a pooled connection: the listener releases it when it comes.
      if (current === undefined || !current.connected) return;
      const conn = await current.conn.catch(noop);
      if (conn === undefined) return;
      const unlisten = await (pool === undefined ? db : conn).query(`UNLISTEN "${channel}"`).then(
        () => undefined,
        (e: Error) => e,
      );
      // Detached only now: until the release, its 'error' listener must stay (drop is inert by now).
      detach(conn, current.drop);
      if (pool !== undefined) (conn as PostgresPoolClient).release(unlisten);
    },
  };
}

const queues = new WeakMap<PostgresQueryable, PostgresQueryable>();

/**
 * One query at a time on a user's client, shared by every store on it: pg deprecates overlapping
 * queries on one client (removed in pg@9). A pool needs none of this.
 */
function serialized(client: PostgresQueryable): PostgresQueryable {
  let queue = queues.get(client);
  if (queue === undefined) {
    let tail: Promise<unknown> = Promise.resolve();
    queue = {
      query(text: string | { name: string; text: string; values: unknown[] }, values?: unknown[]) {
        const result = tail.then(() =>
          typeof text === 'string' ? client.query(text, values) : client.query(text),
        );
        tail = result.catch(noop);
        return result;
      },
    };
    queues.set(client, queue);
  }
  return queue;
}

/** A row as stored, back to a record; anything unexpected is a corrupt record and throws. */
function toRecord(row: Record<string, unknown>): IdempotencyRecord {
  const base = {
    fingerprint: text(row, 'fingerprint'),
    request: { method: text(row, 'method'), path: text(row, 'path'), bodyHash: text(row, 'body_hash') },
    createdAt: int(row, 'created_at'),
    expiresAt: int(row, 'expires_at'),
  };
  if (row.state === 'in-progress') {
    return {
      state: 'in-progress',
      token: text(row, 'token'),
      leaseExpiresAt: int(row, 'lease_expires_at'),
      ...base,
    };
  }
  if (row.state === 'completed') {
    const { body } = row;
    if (body !== null && !(body instanceof Uint8Array)) throw corrupt('body', body);
    return {
      state: 'completed',
      completedAt: int(row, 'completed_at'),
      response: {
        status: int(row, 'status'),
        headers: decodeHeaders(text(row, 'headers')),
        body,
        bodySize: int(row, 'body_size'),
      },
      ...base,
    };
  }
  throw corrupt('state', row.state);
}

function text(row: Record<string, unknown>, column: string): string {
  const value = row[column];
  if (typeof value !== 'string') throw corrupt(column, value);
  return value;
}

/** int8 comes back from pg as a string. */
function int(row: Record<string, unknown>, column: string): number {
  const value = row[column];
  const n = typeof value === 'number' ? value : typeof value === 'string' ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n)) throw corrupt(column, value);
  return n;
}

function corrupt(column: string, value: unknown): Error {
  return new Error(`corrupt record: column ${column} holds ${String(value)}`);
}
