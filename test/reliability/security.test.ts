/**
 * Security properties of the engine, the stores and the gateway's admin API:
 *
 * 1. Scope isolation, model-based: random interleavings of requests (held open or finished), lookups
 *    and forgets by several callers on overlapping keys and bodies, on every store and through both
 *    the fetch and the node:http face. Each caller must get exactly what a world holding only its
 *    own scope's requests would give it.
 * 2. Fingerprints (and the gateway's admin token) are compared through crypto.timingSafeEqual: a
 *    pass-through spy on node:crypto whose forced answers must decide the verdict, and a static scan
 *    of src for `===` on digests.
 * 3. Authorization, Cookie and Proxy-Authorization never reach a store, raw bytes searched;
 *    Set-Cookie is neither stored nor replayed unless an allow-list names it.
 * 4. The gateway's admin API refuses every request without its token (property over methods, path
 *    spellings and credential spellings), and answers 404 when no token is configured.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import pg from 'pg';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createLookupHandler, withIdempotency } from '../../src/adapters/node.js';
import { createIdempotency, type Idempotency } from '../../src/core/engine.js';
import type { IdempotencyEvent } from '../../src/core/events.js';
import { hashBody } from '../../src/core/fingerprint.js';
import type { IdempotencyOptions } from '../../src/core/options.js';
import type { IdempotencyStore } from '../../src/core/store.js';
import { createAdminHandler } from '../../src/gateway/operations.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { createPostgresStore } from '../../src/stores/postgres.js';
import { createRedisStore } from '../../src/stores/redis.js';
import { createSqliteStore } from '../../src/stores/sqlite.js';
import {
  type GatewayProcess,
  killAll,
  startGateway,
  startUpstream,
  type Upstream,
} from '../helpers/gateway.js';
import { request, startServer, type TestServer } from '../helpers/http.js';
import { DATABASE_URL, postgresAvailable, REDIS_URL, redisAvailable } from '../helpers/services.js';

// A pass-through spy on timingSafeEqual: every module under src that imports node:crypto gets it.
vi.mock('node:crypto', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:crypto')>();
  const spy = vi.fn(actual.timingSafeEqual);
  return { ...actual, timingSafeEqual: spy, default: { ...actual, timingSafeEqual: spy } };
});
const timingSafeEqualSpy = vi.mocked(timingSafeEqual);

const redisUp = await redisAvailable();
const postgresUp = await postgresAvailable();

const RUN = randomBytes(4).toString('hex');
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

// ---------------------------------------------------------------------------------------------
// Stores under test: each opened once per file, with a way to read back everything it holds raw.
// ---------------------------------------------------------------------------------------------

interface OpenedStore {
  store: IdempotencyStore;
  /** Every byte the store holds for this run (rows, hashes, files), for searching. */
  rawDump(scopeKeys: string[]): Promise<Buffer>;
  cleanup(): Promise<void>;
}

interface StoreKind {
  name: string;
  available: boolean;
  open(): Promise<OpenedStore>;
}

const STORE_KINDS: StoreKind[] = [
  {
    name: 'memory',
    available: true,
    async open() {
      const store = createMemoryStore();
      return {
        store,
        async rawDump(scopeKeys) {
          // The memory store has no raw form: every record reachable by the scope keys, serialized whole.
          const parts: Buffer[] = [];
          for (const scopeKey of scopeKeys) {
            const record = await store.get(scopeKey, { now: Date.now() });
            parts.push(Buffer.from(JSON.stringify(record, bytesAsLatin1), 'latin1'));
            if (record?.state === 'completed' && record.response.body !== null) {
              parts.push(Buffer.from(record.response.body));
            }
          }
          return Buffer.concat(parts);
        },
        cleanup: () => store.close(),
      };
    },
  },
  {
    name: 'sqlite',
    available: true,
    async open() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idemkit-security-'));
      const file = path.join(dir, 'keys.db');
      const store = createSqliteStore({ path: file, pruneIntervalMs: 0 });
      return {
        store,
        async rawDump() {
          // Every column of every row, through a second connection, and the database files' bytes.
          const db = new Database(file, { readonly: true });
          try {
            const rows = db.prepare('SELECT * FROM idemkit_keys').all() as Array<Record<string, unknown>>;
            const parts = rows.flatMap((row) => Object.values(row).map(valueBytes));
            for (const name of fs.readdirSync(dir)) parts.push(fs.readFileSync(path.join(dir, name)));
            return Buffer.concat(parts);
          } finally {
            db.close();
          }
        },
        async cleanup() {
          await store.close();
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  },
  {
    name: 'redis',
    available: redisUp,
    async open() {
      const client = new Redis(REDIS_URL);
      const prefix = `idemkit-security-${RUN}:`;
      const store = createRedisStore({ client, prefix });
      const keys = () => client.keys(`${prefix}*`);
      return {
        store,
        async rawDump() {
          const parts: Buffer[] = [];
          for (const key of await keys()) {
            parts.push(Buffer.from(key));
            const type = await client.type(key);
            if (type === 'hash') {
              for (const [field, value] of Object.entries(await client.hgetallBuffer(key))) {
                parts.push(Buffer.from(field), value);
              }
            } else {
              const dumped = await client.dumpBuffer(key);
              if (dumped !== null) parts.push(dumped);
            }
          }
          return Buffer.concat(parts);
        },
        async cleanup() {
          await store.close();
          const left = await keys();
          if (left.length > 0) await client.del(...left);
          client.disconnect();
        },
      };
    },
  },
  {
    name: 'postgres',
    available: postgresUp,
    async open() {
      const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 4 });
      const table = `idemkit_security_${RUN}`;
      const store = createPostgresStore({ pool, table, pruneIntervalMs: 0 });
      return {
        store,
        async rawDump() {
          const { rows } = await pool.query<Record<string, unknown>>(`SELECT * FROM ${table}`);
          return Buffer.concat(rows.flatMap((row) => Object.values(row).map(valueBytes)));
        },
        async cleanup() {
          await store.close();
          await pool.query(`DROP TABLE IF EXISTS ${table}`);
          await pool.query('DELETE FROM idemkit_schema WHERE table_name = $1', [table]).catch(() => {});
          await pool.end();
        },
      };
    },
  },
];

function bytesAsLatin1(_key: string, value: unknown): unknown {
  return value instanceof Uint8Array ? Buffer.from(value).toString('latin1') : value;
}

function valueBytes(value: unknown): Buffer {
  if (value === null || value === undefined) return Buffer.alloc(0);
  if (value instanceof Uint8Array) return Buffer.from(value);
  return Buffer.from(String(value), 'utf8');
}

// ---------------------------------------------------------------------------------------------
// Part 1: scope isolation, model-based.
// ---------------------------------------------------------------------------------------------

interface Caller {
  name: string;
  /** The model's name for the caller's scope: callers with the same one share records. */
  scope: string;
  headers: Record<string, string>;
}

/** Default scope (a digest of Authorization): an empty header is the same caller as none (DESIGN.md). */
const AUTHORIZATION_CALLERS: Caller[] = [
  { name: 'no Authorization', scope: 'anonymous', headers: {} },
  { name: 'empty Authorization', scope: 'anonymous', headers: { authorization: '' } },
  { name: 'Bearer alice', scope: 'alice', headers: { authorization: 'Bearer alice' } },
  { name: 'bearer alice', scope: 'bearer alice', headers: { authorization: 'bearer alice' } },
  { name: 'Basic alice', scope: 'basic alice', headers: { authorization: 'Basic alice' } },
  { name: 'Bearer bob', scope: 'bob', headers: { authorization: 'Bearer bob' } },
];

/** Scope strings a `scope(req)` hook may return, chosen to collide in any sloppy encoding. */
const TENANT_SCOPES: Record<string, string> = {
  t0: '',
  t1: 'a',
  t2: 'A',
  t3: 'a\n',
  t4: 'x\u0000y',
  t5: 'x\u0000z',
  t6: '\u00e9',
  t7: 'e\u0301',
  t8: '\ud83d\ude00',
};
const tenantScope = (request: { header(name: string): string | undefined }) => {
  const tenant = request.header('x-tenant');
  return tenant !== undefined && Object.hasOwn(TENANT_SCOPES, tenant) ? TENANT_SCOPES[tenant]! : 'anonymous';
};
/** Custom scope: the tenant decides, whatever the Authorization header says. */
const TENANT_CALLERS: Caller[] = [
  ...Object.entries(TENANT_SCOPES).map(([tenant, scope]) => ({
    name: `tenant ${JSON.stringify(scope)}`,
    scope,
    headers: { 'x-tenant': tenant, authorization: 'Bearer alice' },
  })),
  { name: 'tenant "a" as bob', scope: 'a', headers: { 'x-tenant': 't1', authorization: 'Bearer bob' } },
  { name: 'no tenant', scope: 'anonymous', headers: { authorization: 'Bearer alice' } },
];

const PATHS = ['/charges', '/refunds'] as const;
/** Bodies 0 and 1 are one JSON object (one fingerprint); 2 is another. */
const BODIES = [
  '{"amount":100,"currency":"usd"}',
  '{ "currency": "usd",\n "amount": 100 }',
  '{"amount":200}',
];
const bodyClass = (body: number) => (body === 2 ? 1 : 0);
const BODY_HASHES = [BODIES[0]!, BODIES[2]!].map((b) => hashBody('application/json', Buffer.from(b)));
const KEYS = 3;

/**
 * `again`: repeat the key, path and body class of an earlier POST of the run (a retry), by the same
 * caller when `sameCaller`, else by `caller`: so retries, and one key under several scopes, are common.
 */
type Op =
  | {
      type: 'post';
      caller: number;
      key: number;
      quoted: boolean;
      path: (typeof PATHS)[number];
      body: number;
      status: 201 | 422 | 503;
      again: number | undefined;
      sameCaller: boolean;
    }
  | { type: 'finish'; pick: number }
  | {
      type: 'lookup' | 'forget';
      caller: number;
      key: number;
      again: number | undefined;
      sameCaller: boolean;
    };

const opsArbitrary = (callers: number) => {
  const caller = fc.nat(callers - 1);
  const key = fc.nat(KEYS - 1);
  const again = fc.option(fc.nat(), { nil: undefined, freq: 2 });
  return fc.array(
    fc.oneof(
      {
        weight: 6,
        arbitrary: fc.record({
          type: fc.constant('post' as const),
          caller,
          key,
          quoted: fc.boolean(),
          path: fc.constantFrom(...PATHS),
          body: fc.nat(BODIES.length - 1),
          status: fc.constantFrom(201 as const, 201 as const, 422 as const, 503 as const),
          again,
          sameCaller: fc.boolean(),
        }),
      },
      { weight: 4, arbitrary: fc.record({ type: fc.constant('finish' as const), pick: fc.nat(7) }) },
      {
        weight: 3,
        arbitrary: fc.record({
          type: fc.constantFrom('lookup' as const, 'lookup' as const, 'forget' as const),
          caller,
          key,
          again,
          sameCaller: fc.boolean(),
        }),
      },
    ),
    { minLength: 1, maxLength: 40, size: 'max' },
  );
};

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** Handlers held open by the test: each request carries `x-op`, its handler waits for its release. */
class Gates {
  private readonly gates = new Map<string, { enter: () => void; answer: Promise<number> }>();
  private readonly releases = new Set<(status: number) => void>();

  open(op: string): { entered: Promise<void>; release(status: number): void } {
    let enter!: () => void;
    let release!: (status: number) => void;
    const entered = new Promise<void>((resolve) => {
      enter = resolve;
    });
    const answer = new Promise<number>((resolve) => {
      release = resolve;
    });
    this.gates.set(op, { enter, answer });
    this.releases.add(release);
    return {
      entered,
      release: (status) => {
        this.releases.delete(release);
        release(status);
      },
    };
  }

  /** What the handler of request `op` answers, once the test releases it. */
  async run(op: string): Promise<{ status: number; headers: Record<string, string>; body: string }> {
    const gate = this.gates.get(op);
    if (gate === undefined) throw new Error(`no gate for op ${op}`);
    gate.enter();
    const status = await gate.answer;
    return { status, headers: { 'content-type': 'application/json', 'x-exec': op }, body: handlerBody(op) };
  }

  /** Lets every handler still held go (after a failed assertion), answering 503. */
  releaseAll(): void {
    for (const release of this.releases) release(503);
    this.releases.clear();
  }
}
const handlerBody = (op: string) => JSON.stringify({ exec: op, note: 'the handler ran for this request' });

interface Face {
  post(caller: Caller, op: string, keyHeader: string, path: string, body: string): Promise<Reply>;
  lookup(caller: Caller, method: 'GET' | 'DELETE', key: string): Promise<Reply>;
  close(): Promise<void>;
}

async function fromResponse(response: Response): Promise<Reply> {
  return {
    status: response.status,
    headers: Object.fromEntries(response.headers),
    body: Buffer.from(await response.arrayBuffer()),
  };
}

function fetchFace(engine: Idempotency, gates: Gates): Face {
  const handler = async (request: Request) => {
    const { status, headers, body } = await gates.run(request.headers.get('x-op') ?? '');
    return new Response(body, { status, headers });
  };
  return {
    async post(caller, op, keyHeader, path, body) {
      const request = new Request(`http://api.test${path}`, {
        method: 'POST',
        headers: {
          ...caller.headers,
          'content-type': 'application/json',
          'idempotency-key': keyHeader,
          'x-op': op,
        },
        body,
      });
      return fromResponse(await engine.handle(request, handler));
    },
    async lookup(caller, method, key) {
      const url = `http://api.test/idempotency-keys/${encodeURIComponent(key)}`;
      const response = await engine.handleLookup(new Request(url, { method, headers: caller.headers }));
      if (response === undefined) throw new Error('the lookup handler did not answer');
      return fromResponse(response);
    },
    close: async () => {},
  };
}

async function nodeFace(engine: Idempotency, gates: Gates): Promise<Face> {
  const lookup = createLookupHandler(engine);
  const guarded = withIdempotency(engine, async (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    const { status, headers, body } = await gates.run(String(req.headers['x-op']));
    res.writeHead(status, headers);
    res.end(body);
  });
  const server = await startServer((req, res) =>
    req.url?.startsWith('/idempotency-keys/') ? lookup(req, res) : guarded(req, res),
  );
  return {
    post: (caller, op, keyHeader, path, body) =>
      request(`${server.url}${path}`, {
        method: 'POST',
        headers: {
          ...caller.headers,
          'content-type': 'application/json',
          'idempotency-key': keyHeader,
          'x-op': op,
        },
        body,
      }),
    lookup: (caller, method, key) =>
      request(`${server.url}/idempotency-keys/${encodeURIComponent(key)}`, {
        method,
        headers: caller.headers,
      }),
    close: () => server.close(),
  };
}

const header = (reply: Reply, name: string) => {
  const value = reply.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
};
const problemOf = (reply: Reply, status: number, code: string, what: string) => {
  expect(reply.status, `${what}: status (body ${reply.body.toString()})`).toBe(status);
  expect(header(reply, 'content-type'), `${what}: content-type`).toMatch(/^application\/problem\+json/);
  const problem = JSON.parse(reply.body.toString()) as Record<string, unknown>;
  expect(problem.code, `${what}: code`).toBe(code);
  return problem;
};

type Entry =
  | { state: 'in-progress'; op: string; path: string; cls: number }
  | { state: 'completed'; op: string; path: string; cls: number; status: number };

interface Pending {
  op: string;
  scope: string;
  key: string;
  path: string;
  cls: number;
  status: number;
  release(status: number): void;
  reply: Promise<Reply>;
}

let runCounter = 0;

/**
 * Runs `ops` against `face` and against a model holding one independent key table per scope; every
 * answer must be the model's for the caller's own scope. Keys are fresh per run, so runs (and
 * shrinks) never see each other's records.
 */
async function checkAgainstModel(
  face: Face,
  gates: Gates,
  callers: Caller[],
  ops: Op[],
  seen: Map<string, number>,
): Promise<void> {
  const saw = (what: string) => seen.set(what, (seen.get(what) ?? 0) + 1);
  const run = `${RUN}-${++runCounter}`;
  const keyOf = (n: number) => `${run}-k${n}`;
  const model = new Map<string, Map<string, Entry>>();
  const table = (scope: string) => {
    const t = model.get(scope) ?? new Map<string, Entry>();
    model.set(scope, t);
    return t;
  };
  const pending: Pending[] = [];
  const posts: Array<{ caller: number; key: number; route: (typeof PATHS)[number]; body: number }> = [];
  let opCounter = 0;

  const finish = async (p: Pending) => {
    p.release(p.status);
    const reply = await p.reply;
    const what = `op ${p.op} (${p.scope}/${p.key}) finished with ${p.status}`;
    expect(reply.status, what).toBe(p.status);
    expect(header(reply, 'idempotent-replayed'), what).toBeUndefined();
    expect(reply.body.toString(), what).toBe(handlerBody(p.op));
    const t = table(p.scope);
    saw(`finish ${p.status}`);
    if (p.status >= 500) t.delete(p.key);
    else t.set(p.key, { state: 'completed', op: p.op, path: p.path, cls: p.cls, status: p.status });
  };

  try {
    for (const op of ops) {
      if (op.type === 'finish') {
        if (pending.length === 0) continue;
        await finish(pending.splice(op.pick % pending.length, 1)[0]!);
        continue;
      }
      // A retry of an earlier POST takes its key, path and body class (and maybe its caller).
      const earlier =
        op.again === undefined || posts.length === 0 ? undefined : posts[op.again % posts.length]!;
      const callerIndex = earlier !== undefined && op.sameCaller ? earlier.caller : op.caller;
      const caller = callers[callerIndex]!;
      const key = keyOf(earlier?.key ?? op.key);
      const t = table(caller.scope);
      const entry = t.get(key);
      const elsewhere = [...model].some(([scope, other]) => scope !== caller.scope && other.has(key));
      if (elsewhere)
        saw(entry === undefined ? `${op.type}: key only in another scope` : `${op.type}: key in both`);
      if (op.type !== 'post') {
        const method = op.type === 'lookup' ? 'GET' : 'DELETE';
        const what = `${method} lookup of ${key} by ${caller.name}`;
        const reply = await face.lookup(caller, method, key);
        saw(`${method} ${entry === undefined ? 'absent' : entry.state}`);
        if (entry === undefined) {
          problemOf(reply, 404, 'idempotency_key_not_found', what);
        } else if (method === 'DELETE') {
          if (entry.state === 'completed') {
            expect(reply.status, what).toBe(204);
            t.delete(key);
          } else {
            problemOf(reply, 409, 'idempotency_key_in_use', what);
          }
        } else {
          expect(reply.status, `${what}: ${reply.body.toString()}`).toBe(200);
          const record = JSON.parse(reply.body.toString()) as {
            idempotency_key: string;
            status: string;
            request: unknown;
            response?: { status: number; body: string };
          };
          expect(record.idempotency_key, what).toBe(key);
          expect(record.request, what).toEqual({
            method: 'POST',
            path: entry.path,
            body_hash: BODY_HASHES[entry.cls],
          });
          if (entry.state === 'completed') {
            expect(record.status, what).toBe('completed');
            expect(record.response?.status, what).toBe(entry.status);
            expect(record.response?.body, what).toBe(handlerBody(entry.op));
          } else {
            expect(record.status, what).toBe('in_progress');
            expect(record.response, what).toBeUndefined();
          }
        }
        continue;
      }
      // A POST: the model decides between running the handler, replaying, and the two conflicts.
      const id = `${run}-op${++opCounter}`;
      const route = earlier?.route ?? op.path;
      // A retry sends its body class again, in either spelling of the first class.
      const bodyIndex =
        earlier === undefined ? op.body : earlier.body === 2 ? 2 : op.body === 2 ? 1 : op.body;
      posts.push({ caller: callerIndex, key: earlier?.key ?? op.key, route, body: bodyIndex });
      const cls = bodyClass(bodyIndex);
      const gate = gates.open(id);
      const replyPromise = face.post(caller, id, op.quoted ? `"${key}"` : key, route, BODIES[bodyIndex]!);
      replyPromise.catch(() => {}); // awaited below or in the clean-up
      const first = await Promise.race([
        gate.entered.then(() => 'entered' as const),
        replyPromise.then(() => 'answered' as const),
      ]);
      const what = `op ${id}: POST ${route} body ${bodyIndex} key ${key} by ${caller.name} (scope ${JSON.stringify(caller.scope)}), model ${JSON.stringify(entry)}`;
      saw(
        `POST ${entry === undefined ? 'new' : entry.path !== route || entry.cls !== cls ? 'reused' : entry.state}`,
      );
      if (entry === undefined) {
        if (first !== 'entered') {
          const reply = await replyPromise;
          expect.fail(`${what}: expected the handler to run, got ${reply.status} ${reply.body.toString()}`);
        }
        t.set(key, { state: 'in-progress', op: id, path: route, cls });
        pending.push({
          op: id,
          scope: caller.scope,
          key,
          path: route,
          cls,
          status: op.status,
          release: gate.release,
          reply: replyPromise,
        });
        continue;
      }
      gate.release(500); // never needed: the handler must not run
      const reply = await replyPromise;
      expect(first, `${what}: the handler ran`).toBe('answered');
      if (entry.path !== route || entry.cls !== cls) {
        const problem = problemOf(reply, 409, 'idempotency_key_reused', what);
        expect(problem.idempotency_key, what).toBe(key);
        expect(problem.original_request, what).toEqual({
          method: 'POST',
          path: entry.path,
          body_hash: BODY_HASHES[entry.cls],
        });
      } else if (entry.state === 'in-progress') {
        problemOf(reply, 409, 'idempotency_key_in_use', what);
      } else {
        expect(reply.status, `${what}: replay status (${reply.body.toString()})`).toBe(entry.status);
        expect(header(reply, 'idempotent-replayed'), what).toBe('true');
        expect(header(reply, 'x-exec'), what).toBe(entry.op);
        expect(reply.body.toString(), what).toBe(handlerBody(entry.op));
      }
    }
    while (pending.length > 0) await finish(pending.shift()!);
  } finally {
    gates.releaseAll();
    await Promise.allSettled(pending.map((p) => p.reply));
  }
}

const SCOPE_CONFIGS = [
  { name: 'default scope (Authorization)', callers: AUTHORIZATION_CALLERS, scope: undefined },
  { name: 'custom scope(req)', callers: TENANT_CALLERS, scope: tenantScope },
] as const;
const FACES = [
  { name: 'fetch face', make: async (engine: Idempotency, gates: Gates) => fetchFace(engine, gates) },
  { name: 'node:http face', make: nodeFace },
] as const;
const PROPERTY_RUNS = 50;
const EXPECTED_SITUATIONS = [
  'POST new',
  'POST completed',
  'POST in-progress',
  'POST reused',
  'finish 201',
  'finish 422',
  'finish 503',
  'GET absent',
  'GET completed',
  'GET in-progress',
  'DELETE completed',
  'post: key only in another scope',
  'post: key in both',
  'lookup: key only in another scope',
  'forget: key only in another scope',
];

// ---------------------------------------------------------------------------------------------
// Part 3 material: secrets in requests, and a handler that sets cookies.
// ---------------------------------------------------------------------------------------------

const SECRET = {
  authorization: `Bearer sk_live_AUTHSECRET${RUN}`,
  cookie: `session=COOKIESECRET${RUN}; csrf=CSRFSECRET${RUN}`,
  proxyAuthorization: `Basic PROXYSECRET${RUN}`,
};
/** What must never be found in a store: the distinctive part of each request secret. */
const NEVER_STORED = [`AUTHSECRET${RUN}`, `COOKIESECRET${RUN}`, `CSRFSECRET${RUN}`, `PROXYSECRET${RUN}`];
const setCookies = (tag: string) => [
  `sid=SETCOOKIE${tag}${RUN}; HttpOnly; Path=/`,
  `theme=SETCOOKIE2${tag}${RUN}; Path=/`,
];
const has = (haystack: Buffer, needle: string) => haystack.includes(Buffer.from(needle, 'utf8'));

async function secretsServer(engine: Idempotency, tag: string): Promise<TestServer> {
  const lookup = createLookupHandler(engine);
  const guarded = withIdempotency(engine, (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on('end', () => {
      res.setHeader('set-cookie', setCookies(tag));
      res.setHeader('content-type', 'application/json');
      res.setHeader('x-request-id', `REQUESTID${tag}${RUN}`);
      res.statusCode = 201;
      res.end(JSON.stringify({ charge: `BODYMARKER${tag}${RUN}` }));
    });
  });
  return startServer((req, res) =>
    req.url?.startsWith('/idempotency-keys/') ? lookup(req, res) : guarded(req, res),
  );
}

const secretHeaders = (key: string) => ({
  authorization: SECRET.authorization,
  cookie: SECRET.cookie,
  'proxy-authorization': SECRET.proxyAuthorization,
  'content-type': 'application/json',
  'idempotency-key': key,
});

// ---------------------------------------------------------------------------------------------
// Parts 1 and 3, per store.
// ---------------------------------------------------------------------------------------------

for (const kind of STORE_KINDS) {
  describe.runIf(kind.available)(`${kind.name} store`, () => {
    let opened: OpenedStore;
    beforeAll(async () => {
      opened = await kind.open();
    });
    afterAll(async () => {
      await opened?.cleanup();
    });

    for (const config of SCOPE_CONFIGS) {
      for (const face of FACES) {
        it(`isolates scopes: ${config.name}, ${face.name}, against a per-scope model`, async () => {
          const options: IdempotencyOptions = { store: opened.store };
          if (config.scope !== undefined) options.scope = config.scope;
          const gates = new Gates();
          const f = await face.make(createIdempotency(options), gates);
          const seen = new Map<string, number>();
          try {
            await fc.assert(
              fc.asyncProperty(opsArbitrary(config.callers.length), (ops) =>
                checkAgainstModel(f, gates, config.callers, ops, seen),
              ),
              { numRuns: PROPERTY_RUNS },
            );
            // Not vacuous: every kind of answer came up, and so did keys held by another scope.
            for (const what of EXPECTED_SITUATIONS) expect(seen.get(what) ?? 0, what).toBeGreaterThan(0);
          } finally {
            await f.close();
          }
        });
      }
    }

    it('never stores Authorization, Cookie or Proxy-Authorization, nor Set-Cookie unless allowed', async () => {
      const events: IdempotencyEvent[] = [];
      const plain = createIdempotency({ store: opened.store, onEvent: (event) => events.push(event) });
      const allow = createIdempotency({
        store: opened.store,
        replayHeaders: { allow: ['Content-Type', 'Set-Cookie'] },
      });
      const deny = createIdempotency({ store: opened.store, replayHeaders: { deny: ['x-request-id'] } });
      const allowWithout = createIdempotency({
        store: opened.store,
        replayHeaders: { allow: ['content-type', 'x-request-id'] },
      });
      const scope = sha256(SECRET.authorization);
      const scopeKeys: string[] = [];
      const check = async (engine: Idempotency, tag: string, cookieReplayed: boolean) => {
        const server = await secretsServer(engine, tag);
        const key = `secrets-${tag}-${RUN}`;
        scopeKeys.push(`${scope}\n${key}`);
        try {
          const post = () =>
            request(`${server.url}/charges`, {
              method: 'POST',
              headers: secretHeaders(key),
              body: '{"a":1}',
            });
          const first = await post();
          expect(first.status).toBe(201);
          expect(first.headers['set-cookie']).toEqual(setCookies(tag)); // the first answer keeps them
          const again = await post();
          expect(again.status).toBe(201);
          expect(again.headers['idempotent-replayed']).toBe('true');
          expect(again.body.equals(first.body)).toBe(true);
          if (cookieReplayed) expect(again.headers['set-cookie']).toEqual(setCookies(tag));
          else expect(again.headers['set-cookie']).toBeUndefined();
          // The lookup API shows the stored headers: no secret there either.
          const looked = await request(`${server.url}/idempotency-keys/${key}`, {
            method: 'GET',
            headers: { authorization: SECRET.authorization },
          });
          expect(looked.status).toBe(200);
          for (const secret of NEVER_STORED) expect(has(looked.body, secret), secret).toBe(false);
          expect(has(looked.body, `SETCOOKIE${tag}${RUN}`)).toBe(cookieReplayed);
          return again;
        } finally {
          await server.close();
        }
      };
      const replay = await check(plain, 'plain', false);
      expect(replay.headers['x-request-id']).toBe(`REQUESTIDplain${RUN}`); // other headers do replay
      await check(allow, 'allow', true);
      expect((await check(deny, 'deny', false)).headers['x-request-id']).toBeUndefined();
      await check(allowWithout, 'allowwithout', false);

      const raw = await opened.rawDump(scopeKeys);
      // Positive controls: the dump holds the records (bodies, a kept header, the allowed cookie)...
      for (const tag of ['plain', 'allow', 'deny', 'allowwithout']) {
        expect(has(raw, `BODYMARKER${tag}${RUN}`), `${tag} body in the raw store`).toBe(true);
      }
      expect(has(raw, `REQUESTIDplain${RUN}`)).toBe(true);
      expect(has(raw, `SETCOOKIEallow${RUN}`)).toBe(true);
      // ...and never a request secret, nor a cookie the replay policy does not keep.
      for (const secret of NEVER_STORED) expect(has(raw, secret), `${secret} in the raw store`).toBe(false);
      for (const tag of ['plain', 'deny', 'allowwithout']) {
        expect(has(raw, `SETCOOKIE${tag}${RUN}`), `Set-Cookie of ${tag} in the raw store`).toBe(false);
        expect(has(raw, `SETCOOKIE2${tag}${RUN}`), `Set-Cookie of ${tag} in the raw store`).toBe(false);
      }
      // The audit trail carries the scope's digest, never the header.
      expect(events.length).toBeGreaterThan(0);
      const trail = JSON.stringify(events);
      expect(trail).toContain(scope);
      for (const secret of NEVER_STORED) expect(trail).not.toContain(secret);
    });
  });
}

describe('the scope model is not vacuous', () => {
  it('it notices a scope hook that merges two callers (scopes "x\\0y" and "x\\0z" cut at the NUL)', async () => {
    const store = createMemoryStore();
    const leaky = createIdempotency({
      store,
      scope: (request) => tenantScope(request).split('\u0000')[0]!,
    });
    const gates = new Gates();
    const face = fetchFace(leaky, gates);
    const outcome = await fc.check(
      fc.asyncProperty(opsArbitrary(TENANT_CALLERS.length), (ops) =>
        checkAgainstModel(face, gates, TENANT_CALLERS, ops, new Map()),
      ),
      { numRuns: 300, endOnFailure: true },
    );
    expect(outcome.failed).toBe(true);
    await store.close();
  });
});

// ---------------------------------------------------------------------------------------------
// Part 2: constant-time comparison.
// ---------------------------------------------------------------------------------------------

describe('fingerprints and the admin token are compared with crypto.timingSafeEqual', () => {
  const latin1 = (text: string) => Buffer.from(text, 'latin1');

  it('the replay/conflict verdict is whatever timingSafeEqual answers on the two fingerprints', async () => {
    const store = createMemoryStore();
    const engine = createIdempotency({ store });
    const handler = () =>
      new Response('{"id":1}', { status: 201, headers: { 'content-type': 'application/json' } });
    const post = (key: string, body: string) =>
      engine.handle(
        new Request('http://api.test/charges', {
          method: 'POST',
          headers: { 'idempotency-key': key, 'content-type': 'application/json' },
          body,
        }),
        handler,
      );
    const stored = async (key: string) => {
      const record = await store.get(`${sha256('')}\n${key}`, { now: Date.now() });
      return record!.fingerprint;
    };
    const fingerprintCalls = (fingerprint: string) =>
      timingSafeEqualSpy.mock.calls.filter(([a, b]) =>
        [a, b].some((side) => Buffer.isBuffer(side) && side.equals(latin1(fingerprint))),
      );

    expect((await post('ct-1', '{"a":1}')).status).toBe(201);
    const fingerprint = await stored('ct-1');
    expect(fingerprint).toMatch(/^[0-9a-f]{64}$/);

    // A same-request retry: one comparison, of the stored fingerprint with itself, and a replay.
    timingSafeEqualSpy.mockClear();
    const replay = await post('ct-1', '{ "a": 1 }');
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(fingerprintCalls(fingerprint)).toEqual([[latin1(fingerprint), latin1(fingerprint)]]);

    // A different request: one comparison, stored against the new fingerprint, and a conflict.
    timingSafeEqualSpy.mockClear();
    const conflict = await post('ct-1', '{"a":2}');
    expect(conflict.status).toBe(409);
    const calls = fingerprintCalls(fingerprint);
    expect(calls).toHaveLength(1);
    const [storedSide, newSide] = calls[0] as [Buffer, Buffer];
    expect(storedSide.equals(latin1(fingerprint))).toBe(true);
    expect(newSide.toString('latin1')).toMatch(/^[0-9a-f]{64}$/);
    expect(newSide.equals(storedSide)).toBe(false);

    // The verdict follows timingSafeEqual's answer, not another equality test beside it.
    timingSafeEqualSpy.mockClear();
    timingSafeEqualSpy.mockReturnValueOnce(false);
    const forcedConflict = await post('ct-1', '{"a":1}'); // the very same request
    expect(forcedConflict.status).toBe(409);
    expect(((await forcedConflict.json()) as { code: string }).code).toBe('idempotency_key_reused');
    timingSafeEqualSpy.mockReturnValueOnce(true);
    const forcedReplay = await post('ct-1', '{"a":3}'); // another request
    expect(forcedReplay.status).toBe(201);
    expect(forcedReplay.headers.get('idempotent-replayed')).toBe('true');
    expect(timingSafeEqualSpy).toHaveBeenCalledTimes(2);
    await store.close();
  });

  it("the gateway admin API's token check is whatever timingSafeEqual answers on the SHA-256 digests", async () => {
    const token = 'admin-token-ct-0123456789';
    const engine = createIdempotency({ store: createMemoryStore(), lookupPath: '/_idemkit/keys' });
    const admin = createAdminHandler(engine, token);
    const server = await startServer((req, res) => admin(req, res));
    const digest = (text: string) => createHash('sha256').update(text).digest();
    const get = (authorization: string) =>
      request(`${server.url}/_idemkit/keys/k`, { method: 'GET', headers: { authorization } });
    try {
      timingSafeEqualSpy.mockClear();
      expect((await get('Bearer wrong-token')).status).toBe(401);
      expect(timingSafeEqualSpy.mock.calls).toEqual([[digest('wrong-token'), digest(token)]]);
      timingSafeEqualSpy.mockClear();
      expect((await get(`Bearer ${token}`)).status).toBe(404); // let in: no record under that key
      expect(timingSafeEqualSpy.mock.calls).toEqual([[digest(token), digest(token)]]);
      timingSafeEqualSpy.mockReturnValueOnce(false);
      expect((await get(`Bearer ${token}`)).status).toBe(401);
      timingSafeEqualSpy.mockReturnValueOnce(true);
      expect((await get('Bearer wrong-token')).status).toBe(404);
    } finally {
      await server.close();
    }
  });

  it('no === / !== on a fingerprint, digest, hash or token in the server code outside the stores', () => {
    // The server side: the engine, the adapters, the gateway and the stores. (src/client compares a
    // pending operation's body hash with its own caller's, in the caller's process: nothing secret.)
    const found = digestComparisons(fileURLToPath(new URL('../../src', import.meta.url))).filter(
      (c) => !c.file.startsWith('client/'),
    );
    expect(found.length).toBeGreaterThan(0); // the scan sees the stores' comparisons below
    const outsideStores = found.filter((c) => !c.file.startsWith('stores/'));
    expect(outsideStores).toEqual([]);
    // Inside the stores: fencing-token checks (server-made UUIDs no client ever sees) and the
    // lease-takeover re-check of the fingerprint; the verdict a client sees is the engine's.
    const known = [
      // fencing: the holder's token (a random UUID made by the engine, never sent to a client)
      /^(record|row|running|waiter)\??\.token (!==|===) (waiter\.)?token$/,
      // takeover of a lapsed lease only by the same request (memory, sqlite, postgres)
      /^(record|running)\.fingerprint (!==|===) (input|duplicate)\.fingerprint$/,
      /^record\.fingerprint (!==|===) fingerprint$/,
      // postgres batching: grouping calls by key_hash, the digest that addresses a row
      /^q\.hash (!==|===) item\.hash$/,
      // postgres waiters: object identity of a Set in a Map keyed by key_hash
      /^waiters\.get\(hash\) (!==|===) set$/,
    ];
    const unknown = found.filter((c) => c.file.startsWith('stores/') && !known.some((k) => k.test(c.text)));
    expect(unknown).toEqual([]);
  });
});

/** Equality tests (and Buffer equals/compare) whose operands name a digest-like value, in src/**.ts. */
function digestComparisons(root: string): Array<{ file: string; line: number; text: string }> {
  const SECRETISH = /fingerprint|digest|token|hash|secret/i;
  const EQUALITY = new Set([
    ts.SyntaxKind.EqualsEqualsEqualsToken,
    ts.SyntaxKind.ExclamationEqualsEqualsToken,
    ts.SyntaxKind.EqualsEqualsToken,
    ts.SyntaxKind.ExclamationEqualsToken,
  ]);
  const trivial = (node: ts.Expression): boolean => {
    const text = node.getText();
    return (
      ts.isLiteralExpression(node) ||
      ts.isNoSubstitutionTemplateLiteral(node) ||
      node.kind === ts.SyntaxKind.TrueKeyword ||
      node.kind === ts.SyntaxKind.FalseKeyword ||
      node.kind === ts.SyntaxKind.NullKeyword ||
      text === 'undefined' ||
      ts.isTypeOfExpression(node) ||
      /\.(length|size|byteLength|kind|state|type|changes)$/.test(text)
    );
  };
  const out: Array<{ file: string; line: number; text: string }> = [];
  const files = fs.readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  for (const relative of files) {
    const text = fs.readFileSync(path.join(root, relative), 'utf8');
    const source = ts.createSourceFile(relative, text, ts.ScriptTarget.Latest, true);
    const visit = (node: ts.Node) => {
      let hit = false;
      if (ts.isBinaryExpression(node) && EQUALITY.has(node.operatorToken.kind)) {
        const sides = [node.left, node.right];
        hit = sides.some((s) => SECRETISH.test(s.getText())) && !sides.some(trivial);
      } else if (ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression)) {
        const name = node.expression.name.text;
        hit = ['equals', 'compare', 'localeCompare'].includes(name) && SECRETISH.test(node.getText());
      }
      if (hit) {
        const { line } = source.getLineAndCharacterOfPosition(node.getStart());
        out.push({ file: relative.split(path.sep).join('/'), line: line + 1, text: node.getText() });
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Part 4: the gateway's admin API.
// ---------------------------------------------------------------------------------------------

describe('the gateway admin API refuses every request without its token', () => {
  const TOKEN = `adm1n-${RUN}-Tok3n_0123456789`;
  const KEY = `admin-key-${RUN}`;
  let upstream: Upstream;
  let guardedGateway: GatewayProcess;
  let openGateway: GatewayProcess;
  let fingerprint: string;

  beforeAll(async () => {
    upstream = await startUpstream();
    const args = ['--upstream', upstream.url, '--store', 'memory:'];
    [guardedGateway, openGateway] = await Promise.all([
      startGateway([...args, '--admin-token', TOKEN]),
      startGateway(args),
    ]);
    for (const gateway of [guardedGateway, openGateway]) {
      const created = await request(`${gateway.url}/charges`, {
        method: 'POST',
        headers: { 'idempotency-key': KEY, 'content-type': 'application/json' },
        body: '{"amount":1}',
      });
      expect(created.status).toBe(201);
    }
    const record = await request(`${guardedGateway.url}/_idemkit/keys/${KEY}`, {
      method: 'GET',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(record.status).toBe(200);
    fingerprint = (JSON.parse(record.body.toString()) as { fingerprint: string }).fingerprint;
    expect(fingerprint).toMatch(/^[0-9a-f]{64}$/);
  });
  afterAll(async () => {
    await Promise.all([guardedGateway?.stop(), openGateway?.stop(), upstream?.stop()]);
    killAll();
  });

  const PATH_VARIANTS = (gateway: GatewayProcess) => [
    `/_idemkit/keys/${KEY}`,
    `/_idemkit/keys/${KEY}/`,
    `/_idemkit/keys/${KEY}?scope=${sha256('')}`,
    `/_idemkit/keys/${encodeURIComponent(KEY).replace(/-/g, '%2D')}`,
    `/_idemkit/keys`,
    `/_idemkit/keys/`,
    `/_idemkit/keys//${KEY}`,
    `/_idemkit/keys/./${KEY}`,
    `/_idemkit/keys/../keys/${KEY}`,
    `/_idemkit/keys/%2E%2E/keys/${KEY}`,
    `/_idemkit/keys/${KEY};x=1`,
    `/_idemkit/keys/${KEY}%00`,
    `/_idemkit/keys\\${KEY}`,
    `/_idemkit/keys%2F${KEY}`,
    `/_idemkit%2Fkeys%2F${KEY}`,
    `/%5Fidemkit/keys/${KEY}`,
    `/_IDEMKIT/KEYS/${KEY}`,
    `//_idemkit/keys/${KEY}`,
    `/_idemkit//keys/${KEY}`,
    `/./_idemkit/keys/${KEY}`,
    `/x/../_idemkit/keys/${KEY}`,
    `http://127.0.0.1:${gateway.port}/_idemkit/keys/${KEY}`,
    `http://evil.test/_idemkit/keys/${KEY}`,
  ];
  const basic = (text: string) => `Basic ${Buffer.from(text).toString('base64')}`;
  /** Credentials that are not `Authorization: Bearer <token>`: headers, and a query to append. */
  const WRONG_CREDENTIALS: Array<{
    name: string;
    headers: Record<string, string | string[]>;
    query?: string;
    /** The token, a space, then more: see its own test below. */
    afterSpace?: true;
  }> = [
    { name: 'none', headers: {} },
    { name: 'empty', headers: { authorization: '' } },
    { name: 'scheme only', headers: { authorization: 'Bearer' } },
    { name: 'Bearer and a space', headers: { authorization: 'Bearer ' } },
    { name: 'token without scheme', headers: { authorization: TOKEN } },
    { name: 'Basic token', headers: { authorization: `Basic ${TOKEN}` } },
    { name: 'Basic base64 :token', headers: { authorization: basic(`:${TOKEN}`) } },
    { name: 'Basic base64 admin:token', headers: { authorization: basic(`admin:${TOKEN}`) } },
    { name: 'Token scheme', headers: { authorization: `Token ${TOKEN}` } },
    { name: 'Bearer glued', headers: { authorization: `Bearer${TOKEN}` } },
    { name: 'Bearer tab', headers: { authorization: `Bearer\t${TOKEN}` } },
    { name: 'wrong token', headers: { authorization: 'Bearer wrong-token-0123456789' } },
    { name: 'token + suffix', headers: { authorization: `Bearer ${TOKEN}x` } },
    { name: 'prefix + token', headers: { authorization: `Bearer x${TOKEN}` } },
    { name: 'token truncated', headers: { authorization: `Bearer ${TOKEN.slice(0, -1)}` } },
    { name: 'token upper-cased', headers: { authorization: `Bearer ${TOKEN.toUpperCase()}` } },
    { name: 'token quoted', headers: { authorization: `Bearer "${TOKEN}"` } },
    {
      name: 'space inside token',
      headers: { authorization: `Bearer ${TOKEN.slice(0, 5)} ${TOKEN.slice(5)}` },
    },
    { name: 'token, space, suffix', headers: { authorization: `Bearer ${TOKEN} x` }, afterSpace: true },
    { name: 'token, space, token', headers: { authorization: `Bearer ${TOKEN} ${TOKEN}` }, afterSpace: true },
    { name: 'token, space, param', headers: { authorization: `Bearer ${TOKEN} a=b` }, afterSpace: true },
    { name: 'token as a list', headers: { authorization: `Bearer ${TOKEN}, Bearer ${TOKEN}` } },
    { name: 'token as auth-param', headers: { authorization: `Bearer token=${TOKEN}` } },
    { name: 'wrong first of two', headers: { authorization: ['Bearer wrong', `Bearer ${TOKEN}`] } },
    { name: 'Proxy-Authorization', headers: { 'proxy-authorization': `Bearer ${TOKEN}` } },
    { name: 'X-Admin-Token', headers: { 'x-admin-token': TOKEN } },
    { name: 'X-Api-Key', headers: { 'x-api-key': TOKEN } },
    { name: 'Cookie', headers: { cookie: `token=${TOKEN}; admin_token=${TOKEN}` } },
    { name: 'query access_token', headers: {}, query: `access_token=${TOKEN}` },
    { name: 'query token', headers: {}, query: `token=${TOKEN}` },
    {
      name: 'query and wrong header',
      headers: { authorization: 'Bearer nope' },
      query: `access_token=${TOKEN}`,
    },
  ];
  const METHODS = ['GET', 'HEAD', 'DELETE', 'POST', 'PUT', 'PATCH', 'OPTIONS', 'PURGE'];
  const MOST = WRONG_CREDENTIALS.flatMap((c, i) => (c.afterSpace ? [] : [i]));
  const AFTER_SPACE = WRONG_CREDENTIALS.flatMap((c, i) => (c.afterSpace ? [i] : []));

  /** Whether the gateway routes this target to the admin handler (its own rule, applied to the path). */
  const isAdmin = (target: string) => {
    const pathOnly = (target.startsWith('/') ? target : new URL(target).pathname).split('?')[0]!;
    return pathOnly === '/_idemkit/keys' || pathOnly.startsWith('/_idemkit/keys/');
  };

  const expectUnauthorized = (method: string, reply: Reply, what: string) => {
    expect(reply.status, what).toBe(401);
    expect(reply.headers['content-type'], what).toMatch(/^application\/problem\+json/);
    expect(reply.headers['www-authenticate'], what).toBe('Bearer');
    if (method !== 'HEAD') expect(JSON.parse(reply.body.toString()).code, what).toBe('unauthorized');
  };

  const attempt = async (gateway: GatewayProcess, method: string, target: string, credentials: number) => {
    const { headers, query } = WRONG_CREDENTIALS[credentials]!;
    const withQuery = query === undefined ? target : `${target}${target.includes('?') ? '&' : '?'}${query}`;
    const reply = await request(gateway.url, { method, headers, path: withQuery });
    const what = `${method} ${withQuery} with ${WRONG_CREDENTIALS[credentials]!.name}: ${reply.status} ${reply.body.toString()}`;
    // Never a record, whatever the answer.
    expect(has(reply.body, fingerprint), what).toBe(false);
    expect(has(reply.body, `ch_${KEY}`), what).toBe(false);
    expect([200, 204], what).not.toContain(reply.status);
    return { reply, what };
  };

  it('401 problem+json (with WWW-Authenticate) for every wrong credential, method and admin path', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...METHODS),
        fc.constantFrom(...PATH_VARIANTS(guardedGateway)),
        fc.constantFrom(...MOST),
        async (method, target, credentials) => {
          const { reply, what } = await attempt(guardedGateway, method, target, credentials);
          if (isAdmin(target)) expectUnauthorized(method, reply, what);
          // else: proxied or guarded like any other path; `attempt` checked it holds no record
        },
      ),
      { numRuns: 300 },
    );
    // Every credential on the plain path, whatever the sampling picked.
    for (const credentials of MOST) {
      for (const method of ['GET', 'DELETE']) {
        const { reply, what } = await attempt(guardedGateway, method, `/_idemkit/keys/${KEY}`, credentials);
        expectUnauthorized(method, reply, what);
      }
    }
    // The DELETEs forgot nothing: the record is still there for the token.
    const still = await request(`${guardedGateway.url}/_idemkit/keys/${KEY}`, {
      method: 'GET',
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(still.status).toBe(200);
  });

  // RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token, and a b64token has no space. Whatever
  // follows the token after a space makes the credentials malformed, not the token.
  it('401 for the token followed by a space and anything (the credentials are not the token)', async () => {
    for (const credentials of AFTER_SPACE) {
      for (const method of ['GET', 'DELETE']) {
        for (const target of [`/_idemkit/keys/${KEY}`, `/_idemkit/keys/${KEY}?scope=${sha256('')}`]) {
          const { reply, what } = await attempt(guardedGateway, method, target, credentials);
          expectUnauthorized(method, reply, what);
        }
      }
    }
  });

  it('404 problem+json for everything under the prefix when no --admin-token is configured', async () => {
    const credentials = [
      ...WRONG_CREDENTIALS.map((c) => c.headers),
      { authorization: `Bearer ${TOKEN}` },
      { authorization: 'Bearer ' },
    ];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...METHODS),
        fc.constantFrom(...PATH_VARIANTS(openGateway)),
        fc.constantFrom(...credentials),
        async (method, target, headers) => {
          const reply = await request(openGateway.url, { method, headers, path: target });
          const what = `${method} ${target} ${JSON.stringify(headers)}: ${reply.status} ${reply.body.toString()}`;
          expect(has(reply.body, `ch_${KEY}`), what).toBe(false);
          expect(has(reply.body, '"fingerprint"'), what).toBe(false);
          expect([200, 204], what).not.toContain(reply.status);
          if (!isAdmin(target)) return;
          expect(reply.status, what).toBe(404);
          expect(reply.headers['content-type'], what).toMatch(/^application\/problem\+json/);
          if (method !== 'HEAD') expect(JSON.parse(reply.body.toString()).code, what).toBe('not_found');
        },
      ),
      { numRuns: 150 },
    );
    // The record is still there: a retry through this gateway is a replay.
    const retry = await request(`${openGateway.url}/charges`, {
      method: 'POST',
      headers: { 'idempotency-key': KEY, 'content-type': 'application/json' },
      body: '{"amount":1}',
    });
    expect(retry.status).toBe(201);
    expect(retry.headers['idempotent-replayed']).toBe('true');
  });

  it('with the right token it works: the record, 404 for another scope, and DELETE forgets', async () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
      const reply = await request(`${guardedGateway.url}/_idemkit/keys/${KEY}`, {
        method: 'GET',
        headers: { authorization: `${scheme} ${TOKEN}` },
      });
      expect(reply.status, scheme).toBe(200);
      expect(JSON.parse(reply.body.toString())).toMatchObject({ idempotency_key: KEY, status: 'completed' });
    }
    const auth = { authorization: `Bearer ${TOKEN}` };
    const other = await request(`${guardedGateway.url}/_idemkit/keys/${KEY}?scope=${sha256('Bearer x')}`, {
      method: 'GET',
      headers: auth,
    });
    expect(other.status).toBe(404);
    expect(has(other.body, fingerprint)).toBe(false);
    const url = `${guardedGateway.url}/_idemkit/keys/${KEY}`;
    expect((await request(url, { method: 'DELETE', headers: auth })).status).toBe(204);
    expect((await request(url, { method: 'GET', headers: auth })).status).toBe(404);
  });
});
