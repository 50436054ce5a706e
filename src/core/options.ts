import { type Clock, systemClock } from './clock.js';
import { IdempotencyConfigError } from './errors.js';
import type { IdempotencyEvent } from './events.js';
import { sha256Hex } from './fingerprint.js';
import { createHeaderFilter, type HeaderFilter } from './replay-headers.js';
import type { FingerprintRequest, IdempotencyRequest } from './request.js';
import type { IdempotencyStore } from './store.js';

/** Options of `createIdempotency`. */
export interface IdempotencyOptions {
  /** Where records live: `createMemoryStore()`, or a persistent store. */
  store: IdempotencyStore;
  /** Methods the engine guards; others pass untouched. @default ['POST', 'PATCH'] */
  methods?: readonly string[];
  /** Whether a guarded request without a key is refused with 400. @default true */
  required?: boolean;
  /** How long a completed key is remembered. @default 86_400_000 (24 h) */
  ttlMs?: number;
  /** The claim's lease; renewed once `leaseMs / 3` old while the handler runs. @default 10_000 */
  leaseMs?: number;
  /** How long a duplicate waits for the first request before a 409 in-use answer. @default 0 */
  waitMs?: number;
  /** Responses with larger bodies are not stored (a retry then gets 409 `idempotency_response_not_stored`). @default 1_048_576 */
  maxResponseBytes?: number;
  /** Guarded requests with larger bodies are refused with 413 before the handler runs. @default 10_485_760 */
  maxRequestBytes?: number;
  /** Status of a reused-key answer: 409 (default), 422 (IETF draft) or 400 (Stripe). @default 409 */
  conflictStatus?: 409 | 422 | 400;
  /** The caller a key belongs to (tenant, account). @default a SHA-256 of the Authorization header */
  scope?: (request: IdempotencyRequest) => string | Promise<string>;
  /** Material to fingerprint instead of method, path, query and body. @default undefined */
  fingerprint?: (request: FingerprintRequest) => string | Uint8Array | Promise<string | Uint8Array>;
  /** Whether a response with this status is stored; otherwise the key is released. @default not 5xx, 408, 425, 429 */
  storeStatus?: (status: number) => boolean;
  /** Response headers kept for replay: the default deny-list plus `deny`, or only `allow`. @default {} */
  replayHeaders?: { deny?: readonly string[]; allow?: readonly string[] };
  /** Run the handler unguarded when the store fails, instead of answering 503. @default false */
  failOpen?: boolean;
  /** Receives every decision; exceptions it throws are ignored. @default undefined */
  onEvent?: (event: IdempotencyEvent) => void;
  /** Time source. @default the system clock */
  clock?: Clock;
  /** Prefix of problem `type` URIs (`${base}${code}`); without it the type is `about:blank`. @default undefined */
  problemTypeBase?: string;
  /** `Retry-After` sent with 409 in-use and 503 answers, rounded up to whole seconds. @default 1_000 */
  retryAfterMs?: number;
  /** Where the lookup handler answers `GET` and `DELETE /<path>/:key`. @default '/idempotency-keys' */
  lookupPath?: string;
}

/** Options after validation and defaults; computed once per engine. */
export interface NormalizedOptions {
  store: IdempotencyStore;
  methods: ReadonlySet<string>;
  required: boolean;
  ttlMs: number;
  leaseMs: number;
  waitMs: number;
  maxResponseBytes: number;
  maxRequestBytes: number;
  conflictStatus: 409 | 422 | 400;
  scope: ((request: IdempotencyRequest) => string | Promise<string>) | undefined;
  fingerprint: IdempotencyOptions['fingerprint'];
  storeStatus: (status: number) => boolean;
  keepHeader: HeaderFilter;
  failOpen: boolean;
  onEvent: ((event: IdempotencyEvent) => void) | undefined;
  clock: Clock;
  problemTypeBase: string | undefined;
  retryAfterSeconds: number;
  lookupPrefix: string;
}

/** The default status policy: store everything but server errors and "try again later" answers. */
export function defaultStoreStatus(status: number): boolean {
  return status < 500 && status !== 408 && status !== 425 && status !== 429;
}

/** SHA-256 of the Authorization header; the hash of the empty string when there is none. */
export function defaultScope(request: IdempotencyRequest): string {
  const authorization = request.header('authorization');
  return authorization === undefined ? EMPTY_SCOPE : sha256Hex(authorization);
}
const EMPTY_SCOPE = sha256Hex('');

export function normalizeOptions(options: IdempotencyOptions): NormalizedOptions {
  if (typeof options !== 'object' || options === null)
    throw new IdempotencyConfigError('options are required');
  const { store } = options;
  if (typeof store?.acquire !== 'function') {
    throw new IdempotencyConfigError('options.store must be an idemkit store, e.g. createMemoryStore()');
  }
  const methods = options.methods ?? ['POST', 'PATCH'];
  if (
    !Array.isArray(methods) ||
    methods.some((m) => typeof m !== 'string' || !/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(m))
  ) {
    throw new IdempotencyConfigError('options.methods must be a list of HTTP method names');
  }
  const leaseMs = duration('leaseMs', options.leaseMs, 10_000, 6);
  const conflictStatus = options.conflictStatus ?? 409;
  if (conflictStatus !== 409 && conflictStatus !== 422 && conflictStatus !== 400) {
    throw new IdempotencyConfigError(
      `options.conflictStatus must be 409, 422 or 400, not ${String(conflictStatus)}`,
    );
  }
  const lookupPath = options.lookupPath ?? '/idempotency-keys';
  if (typeof lookupPath !== 'string' || !lookupPath.startsWith('/') || lookupPath.endsWith('/')) {
    throw new IdempotencyConfigError('options.lookupPath must start with "/" and not end with one');
  }
  for (const hook of ['scope', 'fingerprint', 'storeStatus', 'onEvent'] as const) {
    if (options[hook] !== undefined && typeof options[hook] !== 'function') {
      throw new IdempotencyConfigError(`options.${hook} must be a function`);
    }
  }
  return {
    store,
    // Method names are case-sensitive on the wire (RFC 9110 section 9.1), but `['post']` can only
    // mean POST: a set that silently guards nothing would be worse.
    methods: new Set(methods.map((m) => m.toUpperCase())),
    required: options.required ?? true,
    ttlMs: duration('ttlMs', options.ttlMs, 86_400_000, 1),
    leaseMs,
    waitMs: duration('waitMs', options.waitMs, 0, 0),
    maxResponseBytes: duration(
      'maxResponseBytes',
      options.maxResponseBytes,
      1_048_576,
      0,
      Number.MAX_SAFE_INTEGER,
    ),
    maxRequestBytes: duration(
      'maxRequestBytes',
      options.maxRequestBytes,
      10_485_760,
      0,
      Number.MAX_SAFE_INTEGER,
    ),
    conflictStatus,
    scope: options.scope,
    fingerprint: options.fingerprint,
    storeStatus: options.storeStatus ?? defaultStoreStatus,
    keepHeader: createHeaderFilter(options.replayHeaders ?? {}),
    failOpen: options.failOpen ?? false,
    onEvent: options.onEvent,
    clock: options.clock ?? systemClock,
    problemTypeBase: options.problemTypeBase,
    retryAfterSeconds: Math.ceil(duration('retryAfterMs', options.retryAfterMs, 1_000, 0) / 1000),
    lookupPrefix: `${lookupPath}/`,
  };
}

/** A non-negative integer option (a duration or a byte count) at least `min`. */
/** The longest ttlMs and leaseMs: one year, so `now + ttlMs` stays an exact integer in every store. */
const MAX_DURATION_MS = 365 * 86_400_000;

function duration(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max = MAX_DURATION_MS,
): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    const range = max === MAX_DURATION_MS ? `from ${min} to ${max} (one year)` : `>= ${min}`;
    throw new IdempotencyConfigError(`options.${name} must be an integer ${range}, not ${String(value)}`);
  }
  return value;
}
