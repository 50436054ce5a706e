import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withIdempotency } from '../../src/adapters/node.js';
import { createIdempotency } from '../../src/core/engine.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import {
  type GatewayProcess,
  killAll,
  startGateway,
  startUpstream,
  type Upstream,
} from '../helpers/gateway.js';
import {
  chunkOf,
  describeOutcome,
  exchange,
  type RawAnswer,
  type RawHeader,
  type RawRequestSpec,
  rawHead,
  rawRequest,
  type Step,
} from './raw-http.js';

// Bad input, fuzzed with fast-check and sent over raw TCP: Idempotency-Key values, header lists,
// methods, request targets, JSON bodies (deep, huge numbers, duplicate names, invalid UTF-8), body
// sizes around the limit and slow-loris clients. Two targets: the node:http face in this process
// (withIdempotency over a memory store, in front of a handler that counts its runs and answers 201
// JSON) and the gateway process (`idemkit serve --store memory:` from the build) in front of
// test/fixtures/upstream.mjs. Every request must get a whole HTTP answer within 5 s, never a 5xx;
// where idemkit answers, the problem `code` must be the one for the case; where Node's own parser
// refuses the bytes, a bare 400 with `Connection: close`. Afterwards both are alive and work.
//
// The node face's server is created with the same request timeout as the gateway's
// `--request-timeout 1s` (http.createServer({ requestTimeout, headersTimeout,
// connectionsCheckingInterval })): Node, not idemkit, answers a slow-loris client with 408.

const LIMIT = 1024; // maxRequestBytes of the node face's first server, and the gateway's --max-body
const ROOMY = 1 << 20; // maxRequestBytes of the node face's server for the JSON properties
const REQUEST_TIMEOUT_MS = 1_000;
const ANSWER_WITHIN_MS = 5_000;

const KNOWN_METHODS = new Set(http.METHODS);
const ALL_REASONS = ['empty', 'too_long', 'not_printable', 'list', 'malformed'] as const;
type Reason = (typeof ALL_REASONS)[number];

interface Target {
  name: 'node' | 'gateway';
  /** The server whose body limit is LIMIT. */
  port: number;
  /** The server for JSON bodies, and its body limit. */
  jsonPort: number;
  jsonLimit: number;
  /** Prefix of fuzzed request targets (the upstream fixture parses its URL with WHATWG rules). */
  pathPrefix: string;
  /** What the app answers a first guarded POST to `target` with; undefined: not a case to try. */
  statusFor(target: string): number | undefined;
  /** Calls of the handler (or the upstream) so far whose Idempotency-Key Node read as `value`. */
  runs(value: string): Promise<number>;
  /** Whether unguarded requests are held to the body limit (the gateway's --max-body is). */
  limitsUnguarded: boolean;
}

// ---- the node:http face, in process ------------------------------------------------------------

const calls = new Map<string, number>();
let totalCalls = 0;

/** The app: counts its runs by Idempotency-Key, reads the body, answers 201 JSON. */
async function app(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const header = req.headers['idempotency-key'];
  const key = Array.isArray(header) ? header.join(', ') : (header ?? '');
  calls.set(key, (calls.get(key) ?? 0) + 1);
  totalCalls += 1;
  let bytes = 0;
  try {
    for await (const chunk of req) bytes += (chunk as Buffer).length;
  } catch {
    return; // the client left mid-body (or Node timed it out): nobody to answer
  }
  res.writeHead(201, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ call: totalCalls, bytes }));
}

const servers: http.Server[] = [];
async function nodeFace(maxRequestBytes: number): Promise<number> {
  const engine = createIdempotency({ store: createMemoryStore(), maxRequestBytes });
  const server = http.createServer(
    {
      requestTimeout: REQUEST_TIMEOUT_MS,
      headersTimeout: REQUEST_TIMEOUT_MS,
      connectionsCheckingInterval: 100,
    },
    withIdempotency(engine, app),
  );
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

// ---- the gateway process ------------------------------------------------------------------------

let upstream: Upstream;
let gateway: GatewayProcess;
/** Upstream paths that do something other than 201 / 404 (test/fixtures/upstream.mjs). */
const SPECIAL = new Set([
  '/slow',
  '/binary',
  '/fail',
  '/echo',
  '/big',
  '/break',
  '/reset',
  '/_count',
  '/_cut',
]);

const targets = {} as Record<'node' | 'gateway', Target>;

beforeAll(async () => {
  const port = await nodeFace(LIMIT);
  const jsonPort = await nodeFace(ROOMY);
  targets.node = {
    name: 'node',
    port,
    jsonPort,
    jsonLimit: ROOMY,
    pathPrefix: '',
    statusFor: () => 201,
    runs: async (value) => calls.get(value) ?? 0,
    limitsUnguarded: false,
  };
  upstream = await startUpstream();
  gateway = await startGateway([
    '--upstream',
    upstream.url,
    '--store',
    'memory:',
    '--max-body',
    `${LIMIT}`,
    '--request-timeout',
    `${REQUEST_TIMEOUT_MS}ms`,
  ]);
  targets.gateway = {
    name: 'gateway',
    port: gateway.port,
    jsonPort: gateway.port,
    jsonLimit: LIMIT,
    pathPrefix: '/fz',
    statusFor(target) {
      let pathname: string;
      try {
        pathname = new URL(target, 'http://upstream').pathname;
      } catch {
        return undefined;
      }
      if (pathname === '/charges') return 201;
      return SPECIAL.has(pathname) ? undefined : 404;
    },
    runs: async (value) => (await upstream.count(value)).started,
    limitsUnguarded: true,
  };
}, 30_000);

afterAll(async () => {
  await Promise.all(
    servers.map(
      (server) =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    ),
  );
  killAll();
});

// ---- helpers -----------------------------------------------------------------------------------

let sequence = 0;
/** A fresh caller (the default scope is a digest of Authorization), so every run starts clean. */
const freshScope = (): RawHeader => ['Authorization', `Bearer fuzz-${process.pid}-${++sequence}`];
const freshKey = (prefix = 'k') => `${prefix}-${randomUUID()}`;
const chr = (code: number) => String.fromCharCode(code);
const ows = (value: string) => value.replace(/^[ \t]+|[ \t]+$/g, '');
const isAscii = (value: string) => /^[\x20-\x7e]*$/.test(value);

/** Sends raw bytes; the answer must come whole within 5 s and must not be a 5xx. */
async function send(
  port: number,
  request: Step[] | Uint8Array,
  options: { head?: boolean; timeoutMs?: number } = {},
): Promise<RawAnswer> {
  const outcome = await exchange(port, request, { timeoutMs: ANSWER_WITHIN_MS, ...options });
  if (outcome.kind !== 'answer') {
    const sent = request instanceof Uint8Array ? request : Buffer.concat(request.filter(isBytes));
    throw new Error(
      `no answer: ${describeOutcome(outcome)} to ${JSON.stringify(sent.subarray(0, 400).toString('latin1'))}`,
    );
  }
  expect(outcome.answer.status, describeOutcome(outcome)).toBeLessThan(500);
  return outcome.answer;
}
const isBytes = (step: Step): step is Uint8Array => step instanceof Uint8Array;

const post = (port: number, spec: RawRequestSpec, head = false) =>
  send(port, rawRequest({ method: 'POST', ...spec }), { head });

/** A problem+json answer from idemkit, with the status and code of the case. */
function expectProblem(answer: RawAnswer, status: number, code: string): Record<string, unknown> {
  const text = answer.body.toString('utf8');
  expect(answer.status, text).toBe(status);
  expect(answer.headers['content-type']?.[0], text).toBe('application/problem+json');
  expect(answer.headers['cache-control']?.[0]).toBe('no-store');
  const problem = JSON.parse(text) as Record<string, unknown>;
  expect(problem.code, text).toBe(code);
  expect(problem.status).toBe(status);
  return problem;
}

/** Node's own parser refusing the bytes: a bare 400 that closes the connection, never a reset. */
function expectParser400(answer: RawAnswer): void {
  expect(answer.status, answer.body.toString('latin1')).toBe(400);
  expect(answer.closed).toBe(true);
  expect(answer.headers['content-type']).toBeUndefined();
}

/** The same bytes again: the stored answer, marked as a replay, byte for byte. */
function expectReplay(again: RawAnswer, first: RawAnswer): void {
  expect(again.status, again.body.toString('latin1')).toBe(first.status);
  expect(again.headers['idempotent-replayed']).toEqual(['true']);
  expect(again.body.equals(first.body)).toBe(true);
}

const quote = (key: string) => `"${key.replace(/[\\"]/g, '\\$&')}"`;

/**
 * An oracle for one Idempotency-Key line, written from the README (not from src/core/key.ts):
 * Node refuses control characters (tab aside) and DEL; it trims spaces and tabs around the value;
 * a valid key is a bare token of printable ASCII (no `"` or `,`) or an RFC 8941 string (printable
 * ASCII, `\"` and `\\` the only escapes), of 1 to 255 characters.
 */
type KeyCase =
  | { kind: 'parser' }
  | { kind: 'valid'; key: string }
  | { kind: 'invalid'; reasons: readonly Reason[] };
function classifyKey(bytes: Uint8Array): KeyCase {
  const raw = Buffer.from(bytes).toString('latin1');
  if (bytes.some((b) => (b < 0x20 && b !== 0x09) || b === 0x7f)) return { kind: 'parser' };
  const value = ows(raw);
  if (value === '') return { kind: 'invalid', reasons: ['empty'] };
  if (/^[\x21\x23-\x2b\x2d-\x7e]+$/.test(value)) {
    return value.length <= 255 ? { kind: 'valid', key: value } : { kind: 'invalid', reasons: ['too_long'] };
  }
  const quoted = /^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$/.exec(value);
  if (quoted !== null) {
    const key = quoted[1]!.replace(/\\(["\\])/g, '$1');
    if (key === '') return { kind: 'invalid', reasons: ['empty'] };
    return key.length <= 255 ? { kind: 'valid', key } : { kind: 'invalid', reasons: ['too_long'] };
  }
  return { kind: 'invalid', reasons: ALL_REASONS };
}

// ---- arbitraries -------------------------------------------------------------------------------

const latin1 = (text: string) => new Uint8Array(Buffer.from(text, 'latin1'));
const utf8 = (text: string) => new Uint8Array(Buffer.from(text, 'utf8'));
const concatBytes = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

const bareChar = fc
  .integer({ min: 0x21, max: 0x7e })
  .filter((c) => c !== 0x22 && c !== 0x2c)
  .map(chr);
const bareKey = fc.string({ unit: bareChar, minLength: 1, maxLength: 255 });
const quotedUnit = fc.oneof(
  fc
    .integer({ min: 0x20, max: 0x7e })
    .filter((c) => c !== 0x22 && c !== 0x5c)
    .map(chr),
  fc.constantFrom('\\"', '\\\\'),
);
const quotedKey = fc.string({ unit: quotedUnit, minLength: 1, maxLength: 80 }).map((s) => `"${s}"`);
/** The inside of an sf-string in whole units (an escape is never cut). */
const quotedUnits = fc.string({ unit: quotedUnit, maxLength: 40 });
const owsArb = fc.string({ unit: fc.constantFrom(' ', '\t'), maxLength: 3 });
const validValue = fc.tuple(owsArb, fc.oneof(bareKey, quotedKey), owsArb).map(([a, k, b]) => a + k + b);
/** Bytes Node accepts in a header value but no key may hold: obs-text, or a character as UTF-8. */
const nonAscii = fc.oneof(
  fc.integer({ min: 0x80, max: 0xff }).map((b) => new Uint8Array([b])),
  fc
    .string({ unit: 'grapheme', minLength: 1, maxLength: 1 })
    .filter((s) => [...s].every((c) => c.codePointAt(0)! > 0x7f))
    .map(utf8),
);
const insertAt = (text: string, at: number, piece: Uint8Array) => {
  const i = at % (text.length + 1);
  return concatBytes(latin1(text.slice(0, i)), piece, latin1(text.slice(i)));
};
/** CR and LF frame the header line; they are left out of generated values. */
const noFraming = (bytes: Uint8Array) => bytes.map((b) => (b === 0x0a || b === 0x0d ? 0x20 : b));

/** Idempotency-Key values, each with the reasons a refusal may give (undefined: any, or none). */
const keyValue: fc.Arbitrary<{ bytes: Uint8Array; reasons?: readonly Reason[] }> = fc.oneof(
  validValue.map((v) => ({ bytes: latin1(v) })),
  fc
    .oneof(
      fc.string({ unit: bareChar, minLength: 256, maxLength: 400 }),
      fc.string({ unit: quotedUnit, minLength: 256, maxLength: 300 }).map((s) => `"${s}"`),
    )
    .map((v) => ({ bytes: latin1(v), reasons: ['too_long'] as const })),
  fc
    .oneof(
      owsArb,
      fc.tuple(owsArb, owsArb).map(([a, b]) => `${a}""${b}`),
    )
    .map((v) => ({ bytes: latin1(v), reasons: ['empty'] as const })),
  fc
    .tuple(
      fc.oneof(bareKey, quotedKey, fc.constant('')),
      fc.constantFrom(',', ', ', ' ,', ' , ', ',,'),
      fc.oneof(bareKey, quotedKey, fc.constant('')),
    )
    .map(([a, sep, b]) => ({ bytes: latin1(a + sep + b), reasons: ['list'] as const })),
  fc
    .oneof(
      fc.tuple(bareKey, fc.nat(), nonAscii).map(([k, at, piece]) => insertAt(k, at, piece)),
      fc
        .tuple(quotedUnits, nonAscii, quotedUnits)
        .map(([a, piece, b]) => concatBytes(latin1(`"${a}`), piece, latin1(`${b}"`))),
    )
    .map((bytes) => ({ bytes, reasons: ['not_printable'] as const })),
  fc
    .oneof(
      fc.tuple(bareKey, fc.constantFrom(' ', '\t', '  '), bareKey).map(([a, s, b]) => a + s + b),
      fc.tuple(bareKey, bareKey).map(([a, b]) => `${a}"${b}`),
      quotedKey.map((q) => q.slice(0, -1)), // no closing quote
      fc.tuple(quotedKey, bareKey).map(([q, b]) => q + b), // characters after the closing quote
      fc.constantFrom('"a\\x"', '"\\"', '"a\\'),
    )
    .map((v) => ({ bytes: latin1(v), reasons: ['malformed'] as const })),
  // a tab inside an sf-string is not printable (Node lets tabs through)
  fc
    .tuple(quotedUnits, quotedUnits)
    .map(([a, b]) => ({ bytes: latin1(`"${a}\t${b}"`), reasons: ['not_printable'] as const })),
  // control characters and DEL: Node's parser refuses the request
  fc
    .tuple(bareKey, fc.nat(), fc.constantFrom(0, 1, 7, 8, 0x0b, 0x0c, 0x1b, 0x1f, 0x7f))
    .map(([k, at, c]) => ({ bytes: insertAt(k, at, new Uint8Array([c])) })),
  fc.uint8Array({ maxLength: 300 }).map((b) => ({ bytes: noFraming(b) })),
  fc.string({ unit: 'binary', maxLength: 80 }).map((s) => ({ bytes: noFraming(utf8(s)) })),
);

// ---- the properties ----------------------------------------------------------------------------

const CHARGE = '{"amount":1000,"currency":"usd"}';
const jsonType: RawHeader = ['Content-Type', 'application/json'];

/** Whatever the Idempotency-Key value: the answer its kind calls for, and the handler only for valid keys. */
async function keyValues(t: Target): Promise<void> {
  await fc.assert(
    fc.asyncProperty(keyValue, async ({ bytes, reasons }) => {
      const verdict = classifyKey(bytes);
      if (reasons !== undefined)
        expect(verdict.kind, 'the generator and the oracle disagree').toBe('invalid');
      const scope = freshScope();
      const value = Buffer.from(bytes).toString('latin1');
      const counted = verdict.kind === 'valid' || (verdict.kind === 'invalid' && isAscii(value));
      const before = counted ? await t.runs(ows(value)) : 0;
      const calledBefore = totalCalls;
      const spec = (key: Uint8Array | string): RawRequestSpec => ({
        target: '/charges',
        headers: [scope, jsonType, ['Idempotency-Key', key]],
        body: CHARGE,
      });
      const first = await post(t.port, spec(bytes));
      if (verdict.kind === 'parser') {
        expectParser400(first);
      } else if (verdict.kind === 'invalid') {
        const problem = expectProblem(first, 400, 'idempotency_key_invalid');
        expect(reasons ?? verdict.reasons).toContain(problem.reason);
        expect(problem.idempotency_key).toBeNull();
      } else {
        expect(first.status, first.body.toString()).toBe(201);
        expect(first.headers['idempotent-replayed']).toBeUndefined();
        // The other spelling of the same key (an sf-string) is the same key: a replay.
        expectReplay(await post(t.port, spec(quote(verdict.key))), first);
      }
      if (t.name === 'node' && verdict.kind !== 'valid') expect(totalCalls).toBe(calledBefore);
      if (counted) expect(await t.runs(ows(value))).toBe(before + (verdict.kind === 'valid' ? 1 : 0));
    }),
    { numRuns: 250 },
  );
}

const headerNameCase = fc.constantFrom(
  'Idempotency-Key',
  'idempotency-key',
  'IDEMPOTENCY-KEY',
  'IdEmPoTeNcY-kEy',
);
const tokenChar = fc.constantFrom(..."abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~".split(''));
const noiseHeader: fc.Arbitrary<RawHeader> = fc.tuple(
  fc.string({ unit: tokenChar, minLength: 1, maxLength: 12 }).map((n) => `X-${n}`),
  fc
    .uint8Array({ maxLength: 40 })
    .map((b) => b.map((c) => (c < 0x20 && c !== 0x09 ? c + 0x20 : c === 0x7f ? 0x7e : c))),
);

/**
 * Header lists: several Idempotency-Key lines (any spelling of the name, values that would each be
 * valid, even identical) are one list: 400 `list`. One line among any other headers is a normal
 * request, and a retry with other noise headers is a replay (they are not in the fingerprint).
 */
async function headerLists(t: Target): Promise<void> {
  const lines = fc.oneof(
    fc.array(fc.oneof(validValue, fc.constantFrom('', ' ', '""')), { minLength: 1, maxLength: 4 }),
    validValue.map((v) => [v, v]),
  );
  await fc.assert(
    fc.asyncProperty(
      lines,
      fc.array(headerNameCase, { minLength: 4, maxLength: 4 }),
      fc.array(noiseHeader, { maxLength: 6 }),
      fc.array(noiseHeader, { maxLength: 6 }),
      fc.nat(),
      async (values, names, noise, otherNoise, at) => {
        const scope = freshScope();
        const keyLines: RawHeader[] = values.map((v, i) => [names[i]!, v]);
        const headers = [...noise];
        headers.splice(at % (noise.length + 1), 0, ...keyLines);
        const calledBefore = totalCalls;
        const spec = (list: RawHeader[]): RawRequestSpec => ({
          target: '/charges',
          headers: [scope, jsonType, ...list],
          body: CHARGE,
        });
        const first = await post(t.port, spec(headers));
        const single = values.length === 1 ? classifyKey(latin1(values[0]!)) : undefined;
        if (single === undefined) {
          const problem = expectProblem(first, 400, 'idempotency_key_invalid');
          expect(problem.reason).toBe('list');
          if (t.name === 'node') expect(totalCalls).toBe(calledBefore);
        } else if (single.kind === 'invalid') {
          expectProblem(first, 400, 'idempotency_key_invalid');
          if (t.name === 'node') expect(totalCalls).toBe(calledBefore);
        } else {
          expect(single.kind).toBe('valid');
          expect(first.status, first.body.toString()).toBe(201);
          expectReplay(await post(t.port, spec([...otherNoise, ...keyLines])), first);
          if (t.name === 'node') expect(totalCalls).toBe(calledBefore + 1);
        }
      },
    ),
    { numRuns: 150 },
  );
}

/**
 * Methods: one Node does not know (or in lower case) is refused by its parser with 400; POST and
 * PATCH are guarded (missing / invalid / runs once); every other method passes untouched, key or
 * not, and runs each time it comes.
 */
async function methods(t: Target): Promise<void> {
  const method = fc.oneof(
    fc.constantFrom(...http.METHODS.filter((m) => m !== 'CONNECT')),
    fc.constantFrom('PRI', 'HTTP', 'PLAY', 'DESCRIBE', 'GETS', 'POS', 'get', 'Post', 'patch', 'M-GET'),
    fc.stringMatching(/^[A-Za-z_-]{1,10}$/),
  );
  const key = fc.oneof(
    fc.constant(undefined),
    fc.constant('fresh'),
    fc.constantFrom('a b', '', '"x', 'a,b', 'x'.repeat(256), '"a"b'),
  );
  await fc.assert(
    fc.asyncProperty(method, key, fc.boolean(), async (m, k, withBody) => {
      if (m === 'CONNECT') return; // a tunnel, not a request: see its own test
      const value = k === 'fresh' ? freshKey('m') : k;
      const head = m === 'HEAD';
      const spec: RawRequestSpec = {
        method: m,
        target: '/charges',
        headers: [
          freshScope(),
          jsonType,
          ...(value === undefined ? [] : [['Idempotency-Key', value] as RawHeader]),
        ],
        ...(withBody ? { body: CHARGE } : {}),
      };
      const countAs = value === undefined ? '' : ows(value);
      const before = await t.runs(countAs);
      const calledBefore = totalCalls;
      const first = await send(t.port, rawRequest(spec), { head });
      if (!KNOWN_METHODS.has(m)) {
        expectParser400(first);
        expect(await t.runs(countAs)).toBe(before);
        if (t.name === 'node') expect(totalCalls).toBe(calledBefore);
        return;
      }
      if (m === 'POST' || m === 'PATCH') {
        if (value === undefined) expectProblem(first, 400, 'idempotency_key_missing');
        else if (k !== 'fresh') expectProblem(first, 400, 'idempotency_key_invalid');
        else expect(first.status, first.body.toString()).toBe(201);
        expect(await t.runs(countAs)).toBe(before + (k === 'fresh' ? 1 : 0));
        return;
      }
      // Untouched: the app answers, every time, whatever the key.
      expect(first.status, first.body.toString()).toBe(201);
      expect(first.headers['idempotent-replayed']).toBeUndefined();
      const again = await send(t.port, rawRequest(spec), { head });
      expect(again.status).toBe(201);
      expect(again.headers['idempotent-replayed']).toBeUndefined();
      expect(await t.runs(countAs)).toBe(before + 2);
    }),
    { numRuns: 200 },
  );
}

/** Pieces of a request target: printable ASCII (Node takes 0x21-0x7E), %-escapes good and bad, dot segments, raw bytes. */
const targetPiece = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0x21, max: 0x7e }).map((c) => latin1(chr(c))) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.integer({ min: 0, max: 255 }))
      .map(([b]) => latin1(`%${b.toString(16).padStart(2, '0')}`)),
  },
  { weight: 1, arbitrary: fc.constantFrom('%', '%z', '%zz', '%G0', '%%', '%0', '%u1234').map(latin1) },
  { weight: 1, arbitrary: fc.constantFrom('/', '//', '/..', '/./', '..', '?', '#', '\\').map(latin1) },
  { weight: 1, arbitrary: nonAscii },
  {
    weight: 1,
    arbitrary: fc.constantFrom(0x00, 0x01, 0x09, 0x0b, 0x1f, 0x20, 0x7f).map((b) => new Uint8Array([b])),
  },
);

/**
 * Request targets: any byte outside 0x21-0x7E is refused by Node's parser (400). Anything else is
 * a normal request: it runs once, the same bytes replay, and the same key on another path is 409
 * `idempotency_key_reused` naming the path as it was sent.
 */
async function targetsProperty(t: Target): Promise<void> {
  await fc.assert(
    fc.asyncProperty(fc.array(targetPiece, { maxLength: 24 }), async (pieces) => {
      const bytes = concatBytes(latin1(`${t.pathPrefix}/`), ...pieces);
      // Node takes spaces before ` HTTP/1.1` as part of the separator: the target ends before them.
      const target = Buffer.from(bytes).toString('latin1').replace(/ +$/, '');
      const parsable = /^[\x21-\x7e]+$/.test(target);
      const expected = parsable ? t.statusFor(target) : 400;
      fc.pre(expected !== undefined);
      const scope = freshScope();
      const key = freshKey('p');
      const spec = (to: Uint8Array | string): RawRequestSpec => ({
        target: to,
        headers: [scope, jsonType, ['Idempotency-Key', key]],
        body: CHARGE,
      });
      const first = await post(t.port, spec(bytes));
      if (!parsable) {
        expectParser400(first);
        expect(await t.runs(key)).toBe(0);
        return;
      }
      expect(first.status, first.body.toString()).toBe(expected);
      expect(first.headers['idempotent-replayed']).toBeUndefined();
      expectReplay(await post(t.port, spec(bytes)), first);
      const other = await post(t.port, spec(`${t.pathPrefix}/another-path`));
      const problem = expectProblem(other, 409, 'idempotency_key_reused');
      const q = target.indexOf('?');
      expect(problem.original_request).toMatchObject({
        method: 'POST',
        path: q === -1 ? target : target.slice(0, q),
      });
      expect(await t.runs(key)).toBe(1);
    }),
    { numRuns: 200 },
  );
}

// JSON text, written out by hand so that it can hold what JSON.stringify never writes: duplicate
// names, numbers no double holds, exponents, deep nesting, lone surrogates as escapes.
const digits = (min: number, max: number) =>
  fc
    .tuple(
      fc.integer({ min: 1, max: 9 }),
      fc.string({ unit: fc.constantFrom(...'0123456789'), minLength: min, maxLength: max }),
    )
    .map(([d, rest]) => `${d}${rest}`);
/** Number literals; `exponentDigits` bounds the length of an exponent. */
const numbers = (exponentDigits: number) =>
  fc.oneof(
    fc.integer().map(String),
    fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)),
    fc.tuple(fc.boolean(), digits(15, 400)).map(([neg, d]) => (neg ? '-' : '') + d),
    fc
      .tuple(
        fc.constantFrom('', '-'),
        fc.oneof(fc.constant('0'), digits(0, 30)),
        fc.option(fc.string({ unit: fc.constantFrom(...'0123456789'), minLength: 1, maxLength: 30 })),
        fc.constantFrom('e', 'E', 'e+', 'e-', 'E-'),
        fc.oneof(fc.integer({ min: 0, max: 400 }).map(String), digits(9, exponentDigits - 1)),
      )
      .map(([s, i, f, e, x]) => `${s}${i}${f === null ? '' : `.${f}`}${e}${x}`),
  );
const numberText = numbers(25);
/** Numbers the README's fingerprint rules cover: exponents of at most 15 digits (see its own test). */
const exactNumberText = numbers(15);
const stringText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 20 }).map((s) => JSON.stringify(s)),
  fc.string({ unit: 'grapheme', maxLength: 10 }).map((s) => JSON.stringify(s)),
  fc.constantFrom('"\\ud800"', '"\\udc00\\ud800"', '"\\u0000"', '"\\/"', '"\\uD83D\\uDE00"'),
);
const nameText = fc.oneof(
  fc
    .constantFrom('a', 'b', '__proto__', '0', '1', '10', '', 'constructor', 'é', '\u{1f600}')
    .map((n) => JSON.stringify(n)),
  stringText,
);
const ws = fc.constantFrom('', '', ' ', '\n', '\t', ' \r\n ');
const jsonText = (numberLiteral: fc.Arbitrary<string>) =>
  fc.letrec<{ json: string; array: string; object: string }>((tie) => ({
    json: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.constantFrom('null', 'true', 'false'),
      numberLiteral,
      stringText,
      tie('array'),
      tie('object'),
    ),
    array: fc
      .tuple(fc.array(fc.tuple(ws, tie('json'), ws), { maxLength: 5 }), ws)
      .map(([items, w]) => `[${w}${items.map(([a, v, b]) => a + v + b).join(',')}]`),
    object: fc
      .array(fc.tuple(nameText, ws, tie('json')), { maxLength: 5 })
      .map((members) => `{${members.map(([n, w, v]) => `${n}${w}:${w}${v}`).join(',')}}`),
  }));
const json = jsonText(numberText).json;
const exactJson = jsonText(exactNumberText).json;
const deep = fc
  .tuple(
    fc.constantFrom('[', '{"a":', '[{"":[', '{"a":1,"a":'),
    fc.integer({ min: 1, max: 30_000 }),
    numberText,
  )
  .map(([open, depth, leaf]) => {
    const close = open === '[' ? ']' : open === '[{"":[' ? ']}]' : '}';
    return `${open.repeat(depth)}${leaf}${close.repeat(depth)}`;
  });
/** Invalid UTF-8: lone continuation bytes, overlong forms, encoded surrogates, cut sequences, bytes never used. */
const badUtf8 = fc.constantFrom(
  [0x80],
  [0xbf],
  [0xc0, 0xaf],
  [0xe0, 0x80, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xf0, 0x9f],
  [0xf4, 0x90, 0x80, 0x80],
  [0xfe],
  [0xff, 0xff],
);
const jsonBody = fc.oneof(
  { weight: 4, arbitrary: json.map(utf8) },
  { weight: 2, arbitrary: deep.map(utf8) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(json, fc.nat(), badUtf8)
      .map(([text, at, bad]) => insertBytes(utf8(text), at, new Uint8Array(bad))),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }) },
);
function insertBytes(bytes: Uint8Array, at: number, piece: Uint8Array): Uint8Array {
  const i = at % (bytes.length + 1);
  return concatBytes(bytes.subarray(0, i), piece, bytes.subarray(i));
}
const jsonTypes = fc.constantFrom(
  'application/json',
  'application/json; charset=utf-8',
  'Application/JSON',
  'application/problem+json',
  'text/plain',
);

/**
 * JSON bodies of every shape (deep, huge numbers, duplicate names, invalid UTF-8, not JSON at all)
 * are normal requests: run once, the same bytes replay. Over the body limit: 413.
 */
async function jsonBodies(t: Target): Promise<void> {
  await fc.assert(
    fc.asyncProperty(jsonBody, jsonTypes, async (body, type) => {
      const key = freshKey('j');
      const spec: RawRequestSpec = {
        target: '/charges',
        headers: [freshScope(), ['Content-Type', type], ['Idempotency-Key', key]],
        body,
      };
      const first = await post(t.jsonPort, spec);
      if (body.length > t.jsonLimit) {
        expect(expectProblem(first, 413, 'request_body_too_large').idempotency_key).toBe(key);
        expect(await t.runs(key)).toBe(0);
        return;
      }
      expect(first.status, first.body.toString()).toBe(201);
      expect(JSON.parse(first.body.toString()).bytes).toBe(body.length);
      expectReplay(await post(t.jsonPort, spec), first);
      expect(await t.runs(key)).toBe(1);
    }),
    { numRuns: 150 },
  );
}

/** Pairs of JSON bodies that are (or are not) the same request, per the README's fingerprint rules. */
const jsonPair: fc.Arbitrary<{ a: string | Uint8Array; b: string | Uint8Array; same: boolean }> = fc.oneof(
  // the same members in another order, other whitespace: the same request
  fc
    .uniqueArray(fc.tuple(nameText, fc.oneof(exactNumberText, stringText, exactJson)), {
      selector: ([n]) => JSON.parse(n) as string,
      minLength: 1,
      maxLength: 6,
    })
    .chain((members) =>
      fc
        .tuple(fc.shuffledSubarray(members, { minLength: members.length, maxLength: members.length }), ws)
        .map(([shuffled, w]) => ({
          a: `{${members.map(([n, v]) => `${n}:${v}`).join(',')}}`,
          b: `${w}{${w}${shuffled.map(([n, v]) => `${n}${w}:${w}${v}`).join(`${w},`)}}${w}`,
          same: true,
        })),
    ),
  // one number spelled two ways (digits, or mantissa and exponent): the same exact value
  digits(0, 60).map((d) => ({
    a: `{"n":${d}}`,
    b: `{"n":${d[0]}${d.length > 1 ? `.${d.slice(1)}` : ''}e+${d.length - 1}}`,
    same: true,
  })),
  // huge integers one apart: a double would merge them; the fingerprint must not
  digits(16, 60).map((d) => ({ a: `{"n":${d}}`, b: `{"n":${(BigInt(d) + 1n).toString()}}`, same: false })),
  // duplicate names kept, in order: swapping their values is another request (values whose
  // spellings differ only where their values do: plain integers and JSON.stringify'd strings)
  fc
    .tuple(
      nameText,
      fc.oneof(
        fc.integer().map(String),
        fc.string().map((s) => JSON.stringify(s)),
      ),
      fc.oneof(
        fc.integer().map(String),
        fc.string().map((s) => JSON.stringify(s)),
      ),
    )
    .filter(([, x, y]) => x !== y)
    .map(([n, x, y]) => ({ a: `{${n}:${x},${n}:${y}}`, b: `{${n}:${y},${n}:${x}}`, same: false })),
  // invalid UTF-8 is hashed as bytes: one invalid byte changed is another request
  fc
    .tuple(fc.string({ unit: 'grapheme-ascii', maxLength: 20 }), fc.integer({ min: 0x80, max: 0xfe }))
    .map(([s, b]) => ({
      a: concatBytes(utf8(`{"s":"${s.replace(/["\\]/g, '')}`), new Uint8Array([b]), utf8('"}')),
      b: concatBytes(utf8(`{"s":"${s.replace(/["\\]/g, '')}`), new Uint8Array([b + 1]), utf8('"}')),
      same: false,
    })),
);

async function jsonPairs(t: Target): Promise<void> {
  await fc.assert(
    fc.asyncProperty(jsonPair, async ({ a, b, same }) => {
      const bytesA = typeof a === 'string' ? utf8(a) : a;
      const bytesB = typeof b === 'string' ? utf8(b) : b;
      fc.pre(bytesA.length <= t.jsonLimit && bytesB.length <= t.jsonLimit);
      const key = freshKey('jp');
      const scope = freshScope();
      const spec = (body: Uint8Array): RawRequestSpec => ({
        target: '/charges',
        headers: [scope, jsonType, ['Idempotency-Key', key]],
        body,
      });
      const first = await post(t.jsonPort, spec(bytesA));
      expect(first.status, first.body.toString()).toBe(201);
      const second = await post(t.jsonPort, spec(bytesB));
      if (same) expectReplay(second, first);
      else expectProblem(second, 409, 'idempotency_key_reused');
      expect(await t.runs(key)).toBe(1);
    }),
    { numRuns: 150 },
  );
}

/**
 * RFC 8259 puts no bound on an exponent, and the README says a JSON body is canonicalized (another
 * member order is the same request). A 16-digit exponent must not turn the body into bytes.
 */
async function longExponent(t: Target): Promise<void> {
  const scope = freshScope();
  const key = freshKey('exp');
  const spec = (body: string): RawRequestSpec => ({
    target: '/charges',
    headers: [scope, jsonType, ['Idempotency-Key', key]],
    body,
  });
  const first = await post(t.jsonPort, spec('{"a":1,"n":1e1000000000000000}'));
  expect(first.status, first.body.toString()).toBe(201);
  expectReplay(await post(t.jsonPort, spec('{"n":1e1000000000000000,"a":1}')), first);
}

/**
 * Body sizes around the limit, declared or chunked (cut anywhere), JSON or not: exactly the limit
 * runs, one byte more is 413 `request_body_too_large` and does not hold the key. Unguarded (PUT)
 * bodies pass untouched on the node face; the gateway holds them to --max-body too.
 */
async function bodySizes(t: Target): Promise<void> {
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(fc.integer({ min: LIMIT - 2, max: LIMIT + 2 }), fc.integer({ min: 0, max: 3 * LIMIT })),
      fc.option(fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 8 })),
      fc.constantFrom('application/json', 'application/octet-stream', undefined),
      fc.constantFrom('POST', 'PUT'),
      async (size, chunks, type, method) => {
        const body =
          type === 'application/json' && size >= 2 ? `"${'a'.repeat(size - 2)}"` : Buffer.alloc(size, 0x62);
        const key = freshKey('s');
        const headers: RawHeader[] = [freshScope(), ['Idempotency-Key', key]];
        if (type !== undefined) headers.push(['Content-Type', type]);
        const spec: RawRequestSpec = {
          method,
          target: '/charges',
          headers,
          body,
          ...(chunks === null ? {} : { chunks }),
        };
        const first = await send(t.port, rawRequest(spec));
        const limited = method === 'POST' || t.limitsUnguarded;
        if (limited && size > LIMIT) {
          const problem = expectProblem(first, 413, 'request_body_too_large');
          if (method === 'POST') expect(problem.idempotency_key).toBe(key);
          expect(await t.runs(key)).toBe(0);
          if (method === 'POST') {
            // Refused before any claim: the key is free for the request done right.
            const retry = await send(t.port, rawRequest({ ...spec, body: CHARGE, chunks: undefined }));
            expect(retry.status, retry.body.toString()).toBe(201);
            expect(await t.runs(key)).toBe(1);
          }
          return;
        }
        expect(first.status, first.body.toString()).toBe(201);
        expect(JSON.parse(first.body.toString()).bytes).toBe(size);
        expect(await t.runs(key)).toBe(1);
      },
    ),
    { numRuns: 150 },
  );
}

/**
 * Slow-loris: a head or a body trickled in slower than the request timeout gets 408 (Node's answer,
 * the gateway's --request-timeout, the node face's server option) about a timeout after it began,
 * and a guarded request cut off that way has held nothing: the same key then runs.
 */
async function slowLoris(t: Target): Promise<void> {
  const scenario = fc.record({
    phase: fc.constantFrom('head', 'body'),
    chunked: fc.boolean(),
    method: fc.constantFrom('POST', 'PUT'),
    pauseMs: fc.integer({ min: 120, max: 300 }),
    piece: fc.integer({ min: 1, max: 4 }),
  });
  await fc.assert(
    fc.asyncProperty(fc.array(scenario, { minLength: 4, maxLength: 6 }), async (scenarios) => {
      await Promise.all(
        scenarios.map(async ({ phase, chunked, method, pauseMs, piece }) => {
          const key = freshKey('slow');
          const scope = freshScope();
          const spec: RawRequestSpec = {
            method,
            target: '/charges',
            headers: [scope, jsonType, ['Idempotency-Key', key]],
          };
          const steps: Step[] = [];
          if (phase === 'head') {
            steps.push(Buffer.from(`${method} /charges HTTP/1.1\r\nHost: x\r\nX-Slow: `));
            for (let i = 0; i < 40; i++) steps.push({ pauseMs }, Buffer.from('a'.repeat(piece)));
          } else {
            steps.push(rawHead(spec, chunked ? 'chunked' : 400));
            for (let i = 0; i < 40; i++) {
              const bytes = Buffer.from('7'.repeat(piece));
              steps.push({ pauseMs }, chunked ? chunkOf(bytes) : bytes);
            }
          }
          const answer = await send(t.port, steps);
          expect(answer.status, answer.body.toString()).toBe(408);
          expect(answer.closed).toBe(true);
          expect(answer.ms).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
          // Node looks for overdue requests every connectionsCheckingInterval; a loaded box adds to it.
          expect(answer.ms).toBeLessThan(REQUEST_TIMEOUT_MS + 4_000);
          if (method === 'POST') {
            expect(await t.runs(key)).toBe(0);
            const retry = await post(t.port, { ...spec, body: CHARGE });
            expect(retry.status, retry.body.toString()).toBe(201);
            expect(await t.runs(key)).toBe(1);
          }
        }),
      );
    }),
    { numRuns: 2 },
  );
}

/** A normal request still runs once and replays. */
async function stillWorks(t: Target): Promise<void> {
  const key = freshKey('alive');
  const spec: RawRequestSpec = {
    target: '/charges',
    headers: [freshScope(), jsonType, ['Idempotency-Key', key]],
    body: CHARGE,
  };
  const first = await post(t.port, spec);
  expect(first.status).toBe(201);
  expectReplay(await post(t.port, spec), first);
  expect(await t.runs(key)).toBe(1);
}

/** Requests Node itself treats specially, each with what the target must answer. */
interface SpecialCase {
  name: string;
  bytes: (key: string, scope: string) => string;
  head?: boolean;
  check(answer: RawAnswer, t: Target, key: string): void | Promise<void>;
}
const h = (key: string, scope: string) =>
  `Authorization: ${scope}\r\nContent-Type: application/json\r\nIdempotency-Key: ${key}\r\n`;
const ran = async (answer: RawAnswer, t: Target, key: string) => {
  expect(answer.status, answer.body.toString()).toBe(201);
  expect(await t.runs(key)).toBe(1);
};
const SPECIAL_CASES: SpecialCase[] = [
  {
    name: 'an Upgrade nobody accepts is a normal request',
    bytes: (k, s) =>
      `POST /charges HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${h(k, s)}Content-Length: 2\r\n\r\n{}`,
    check: ran,
  },
  {
    name: 'Expect: 100-continue gets 100, then the answer',
    bytes: (k, s) =>
      `POST /charges HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n${h(k, s)}Content-Length: 2\r\n\r\n{}`,
    async check(answer, t, key) {
      expect(answer.interim).toEqual([100]);
      await ran(answer, t, key);
    },
  },
  {
    name: 'an Expect Node does not know is 417',
    bytes: (k, s) =>
      `POST /charges HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n${h(k, s)}Content-Length: 2\r\n\r\n{}`,
    async check(answer, t, key) {
      expect(answer.status).toBe(417);
      expect(await t.runs(key)).toBe(0);
    },
  },
  {
    name: 'HTTP/1.0 is a normal request',
    bytes: (k, s) => `POST /charges HTTP/1.0\r\n${h(k, s)}Content-Length: 2\r\n\r\n{}`,
    check: ran,
  },
  {
    name: 'an absolute-form target is routed by its path',
    bytes: (k, s) => `POST http://x/charges HTTP/1.1\r\nHost: x\r\n${h(k, s)}Content-Length: 2\r\n\r\n{}`,
    check: ran,
  },
  {
    name: 'a declared Content-Length over the limit is 413 before the body comes',
    bytes: (k, s) => `POST /charges HTTP/1.1\r\nHost: x\r\n${h(k, s)}Content-Length: ${LIMIT + 1}\r\n\r\n`,
    async check(answer, t, key) {
      expect(expectProblem(answer, 413, 'request_body_too_large').idempotency_key).toBe(key);
      expect(await t.runs(key)).toBe(0);
    },
  },
  ...[
    [
      'no Host in HTTP/1.1',
      (k: string, s: string) => `POST /charges HTTP/1.1\r\n${h(k, s)}Content-Length: 0\r\n\r\n`,
    ],
    [
      'an obs-folded header line',
      (k: string, s: string) =>
        `POST /charges HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n${h(k, s)}Content-Length: 0\r\n\r\n`,
    ],
    [
      'space before the colon',
      (k: string, s: string) =>
        `POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key : x\r\n${h(k, s)}Content-Length: 0\r\n\r\n`,
    ],
    [
      'Content-Length and Transfer-Encoding both',
      (k: string, s: string) =>
        `POST /charges HTTP/1.1\r\nHost: x\r\n${h(k, s)}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    ],
    [
      'two different Content-Lengths',
      (k: string, s: string) =>
        `POST /charges HTTP/1.1\r\nHost: x\r\n${h(k, s)}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{} `,
    ],
    [
      'a Content-Length beyond any integer',
      (k: string, s: string) =>
        `POST /charges HTTP/1.1\r\nHost: x\r\n${h(k, s)}Content-Length: 99999999999999999999999\r\n\r\n`,
    ],
    [
      'a bad chunk size',
      (k: string, s: string) =>
        `POST /charges HTTP/1.1\r\nHost: x\r\n${h(k, s)}Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n`,
    ],
    [
      'an HTTP version that does not exist',
      (k: string, s: string) => `POST /charges HTTP/9.9\r\nHost: x\r\n${h(k, s)}\r\n`,
    ],
  ].map(
    ([name, bytes]): SpecialCase => ({
      name: `Node's parser refuses ${name as string}`,
      bytes: bytes as SpecialCase['bytes'],
      async check(answer, t, key) {
        expectParser400(answer);
        expect(await t.runs(key)).toBe(0);
      },
    }),
  ),
];

/** The asterisk form and an absolute form with no path: the gateway refuses; the node face runs the app. */
const TARGET_FORMS = ['*', 'http://', 'http://[::1/x'];

async function specialCases(t: Target): Promise<void> {
  for (const special of SPECIAL_CASES) {
    const key = freshKey('sp');
    const bytes = Buffer.from(special.bytes(key, `Bearer ${key}`), 'latin1');
    const answer = await send(t.port, bytes, { head: special.head ?? false });
    try {
      await special.check(answer, t, key);
    } catch (error) {
      throw new Error(`${special.name}: ${(error as Error).message}`);
    }
  }
  for (const form of TARGET_FORMS) {
    const key = freshKey('form');
    const answer = await post(t.port, {
      target: form,
      headers: [freshScope(), jsonType, ['Idempotency-Key', key]],
      body: '{}',
    });
    if (t.name === 'node') await ran(answer, t, key);
    else expectProblem(answer, 400, 'request_target_invalid');
  }
}

// ---- the suites --------------------------------------------------------------------------------

for (const name of ['node', 'gateway'] as const) {
  const title =
    name === 'node'
      ? 'bad input: node:http face (withIdempotency, memory store)'
      : 'bad input: gateway process (idemkit serve --store memory:)';
  describe(title, () => {
    const t = () => targets[name];
    it('Idempotency-Key values: valid ones run once (both spellings one key), the rest 400 with the reason', () =>
      keyValues(t()));
    it('header lists: repeated Idempotency-Key lines are a list; other headers change nothing', () =>
      headerLists(t()));
    it('methods: unknown ones 400 from Node, POST/PATCH guarded, the rest untouched', () => methods(t()));
    it('request targets: raw bytes 400 from Node; escapes and odd paths replay, and conflict across paths', () =>
      targetsProperty(t()));
    it('JSON bodies: deep, huge numbers, duplicate names, invalid UTF-8 run once and replay', () =>
      jsonBodies(t()));
    it('JSON bodies: the same request spelled otherwise replays; a different one is 409 reused', () =>
      jsonPairs(t()));
    it('JSON bodies: a number with a 16-digit exponent is still JSON (member order does not matter)', () =>
      longExponent(t()));
    it('body sizes: the limit passes, one byte more is 413, declared or chunked', () => bodySizes(t()));
    it('slow-loris: a head or body slower than the request timeout gets 408', () => slowLoris(t()));
    it('requests Node treats specially get their specific answer', () => specialCases(t()));
    it(
      name === 'node'
        ? "CONNECT never reaches the face: Node's server closes it (no 'connect' listener)"
        : 'CONNECT (a tunnel request to a reverse proxy) gets a 4xx answer',
      async () => {
        const outcome = await exchange(
          t().port,
          Buffer.from(
            'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nIdempotency-Key: c\r\n\r\n',
          ),
          { timeoutMs: ANSWER_WITHIN_MS },
        );
        if (name === 'node') {
          // The user's http.Server owns CONNECT (its 'connect' event); withIdempotency is a request
          // listener and never sees it. Without a listener Node destroys the socket, unanswered.
          expect(outcome.kind, describeOutcome(outcome)).toBe('closed');
          if (outcome.kind !== 'answer') expect(outcome.received.length).toBe(0);
        } else {
          // The gateway owns its server: a CONNECT must get an answer, not a silently closed socket.
          expect(outcome.kind, describeOutcome(outcome)).toBe('answer');
          if (outcome.kind === 'answer') {
            const { answer } = outcome;
            expect(answer.status).toBe(405);
            expect(answer.headers['content-type']).toEqual(['application/problem+json']);
            expect(answer.headers.connection).toEqual(['close']);
            expect(answer.headers.allow?.[0]).toContain('POST');
            const problem = JSON.parse(answer.body.toString()) as Record<string, unknown>;
            expect(problem).toMatchObject({
              status: 405,
              title: 'Method Not Allowed',
              code: 'method_not_allowed',
            });
            expect(answer.closed).toBe(true);
          }
        }
        await stillWorks(t());
      },
    );
    it('is alive after the run and answers a normal request', async () => {
      if (name === 'gateway') {
        expect(gateway.child.exitCode).toBeNull();
        expect(gateway.child.signalCode).toBeNull();
        expect(gateway.logs.filter((line) => line.event === 'gateway_error')).toEqual([]);
        expect(gateway.stderr()).toBe('');
      }
      await stillWorks(t());
    });
  });
}
