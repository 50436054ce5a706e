import { randomUUID } from 'node:crypto';
import { inUseAnswer, replayAnswer, reusedAnswer } from './answers.js';
import { ActiveClaim, type Claim, createRenewer } from './claim.js';
import { IdempotencyConfigError, IdempotencyStoreError, isIdempotencyStoreError } from './errors.js';
import type { IdempotencyEvent } from './events.js';
import { handleFetch, handleFetchLookup } from './fetch.js';
import {
  type BodyDigest,
  type BodyHasher,
  bodyHasher,
  fingerprintOf,
  fingerprintOfMaterial,
  hashBody,
  sameDigest,
} from './fingerprint.js';
import { parseIdempotencyKey } from './key.js';
import { lookup } from './lookup.js';
import {
  defaultScope,
  type IdempotencyOptions,
  type NormalizedOptions,
  normalizeOptions,
} from './options.js';
import { type EngineResponse, type Problem, problemResponse } from './problem.js';
import type { FingerprintRequest, IdempotencyRequest } from './request.js';
import type { OriginalRequest } from './store.js';

/** What to do with a request before its body is read. */
export type Inspection =
  | { kind: 'pass' }
  | { kind: 'respond'; response: EngineResponse }
  | { kind: 'guard'; key: string };

/** What to do once the body is read: answer without the handler, run it under a claim, or bypass. */
export type Decision =
  | { kind: 'respond'; response: EngineResponse; replayed: boolean }
  | { kind: 'execute'; claim: Claim }
  | { kind: 'bypass' };

/** The idempotency engine: one per app, shared by every face. */
export interface Idempotency {
  /** The fetch face: guards `next` for any runtime with `Request`/`Response` (Workers, Bun, Deno, Node). */
  handle(request: Request, next: (request: Request) => Response | Promise<Response>): Promise<Response>;
  /** The lookup API for fetch runtimes; `undefined` when the request is not for `lookupPath`. */
  handleLookup(request: Request): Promise<Response | undefined>;
  /** Adapter API, step 1: whether a request is guarded, refused, or passes untouched. */
  inspect(request: IdempotencyRequest): Inspection;
  /**
   * Adapter API, step 2: with the body read, claim the key or answer from the store. The body is
   * its bytes, or its digest from a `bodyHasher`.
   */
  begin(request: IdempotencyRequest, key: string, body: Uint8Array | BodyDigest): Promise<Decision>;
  /**
   * Adapter API: a hasher to feed a body chunk by chunk as it arrives, then hand `begin` its
   * digest, without keeping the bytes; `undefined` when `begin` needs the body whole (JSON, whose
   * canonical form needs the whole document, or an engine with a `fingerprint` hook).
   */
  bodyHasher(contentType: string | undefined): BodyHasher | undefined;
  /** Adapter API: the 400/413 answer for a body that cannot be read or is too large. */
  rejectBody(
    request: IdempotencyRequest,
    key: string,
    reason: 'body_unreadable' | 'body_too_large',
  ): EngineResponse;
  /** The lookup API, framework-neutral; `undefined` when the request is not for `lookupPath`. */
  lookup(request: IdempotencyRequest): Promise<EngineResponse | undefined>;
  /** The limits adapters enforce while reading and capturing. */
  readonly limits: { readonly maxRequestBytes: number; readonly maxResponseBytes: number };
}

/** Creates the engine. Options are validated here, once; a bad one throws `IdempotencyConfigError`. */
export function createIdempotency(options: IdempotencyOptions): Idempotency {
  const o = normalizeOptions(options);
  const emit = createEmitter(o);
  const renewer = createRenewer(o);
  const observed = o.onEvent !== undefined; // skips building hot-path events nobody reads
  const problem = (p: Problem) => problemResponse(p, o.problemTypeBase);
  const base = (request: IdempotencyRequest, scope: string, key: string) => ({
    at: o.clock.now(),
    method: request.method,
    path: request.path,
    scope,
    key,
  });

  const engine: Idempotency = {
    limits: { maxRequestBytes: o.maxRequestBytes, maxResponseBytes: o.maxResponseBytes },
    bodyHasher: (contentType) => (o.fingerprint === undefined ? bodyHasher(contentType) : undefined),

    inspect(request) {
      // fetch does not normalise `patch` (Fetch standard, "normalize a method"); node:http sends upper case.
      if (!o.methods.has(request.method) && !o.methods.has(request.method.toUpperCase())) return PASS;
      const raw = request.header('idempotency-key');
      if (raw === undefined) {
        if (!o.required) return PASS;
        const detail = `${request.method} requests to this API need an Idempotency-Key header.`;
        emit({
          type: 'rejected',
          reason: 'missing',
          detail,
          at: o.clock.now(),
          method: request.method,
          path: request.path,
        });
        return respond(
          problem({ code: 'idempotency_key_missing', status: 400, detail, idempotencyKey: null }),
        );
      }
      const parsed = parseIdempotencyKey(raw);
      if (!parsed.ok) {
        const { detail } = parsed;
        emit({
          type: 'rejected',
          reason: 'invalid',
          detail,
          at: o.clock.now(),
          method: request.method,
          path: request.path,
        });
        return respond(
          problem({
            code: 'idempotency_key_invalid',
            status: 400,
            detail,
            idempotencyKey: null,
            extra: { reason: parsed.problem },
          }),
        );
      }
      return { kind: 'guard', key: parsed.key };
    },

    rejectBody(request, key, reason) {
      const tooLarge = reason === 'body_too_large';
      const detail = tooLarge
        ? `The request body exceeds ${o.maxRequestBytes} bytes, the most this API fingerprints.`
        : 'The request body could not be read to the end.';
      emit({
        type: 'rejected',
        reason,
        detail,
        key,
        at: o.clock.now(),
        method: request.method,
        path: request.path,
      });
      return problem({
        code: tooLarge ? 'request_body_too_large' : 'request_body_unreadable',
        status: tooLarge ? 413 : 400,
        detail,
        idempotencyKey: key,
      });
    },

    async begin(request, key, body) {
      const scope = o.scope === undefined ? defaultScope(request) : await runHook('scope', request);
      // A lone surrogate would be merged with another by any store that encodes keys as UTF-8.
      if (typeof scope !== 'string' || LONE_SURROGATE.test(scope)) {
        return respond(hookFailure('scope', scope, request, key));
      }
      const digested = !(body instanceof Uint8Array);
      const bodyHash = digested ? body.hash : hashBody(request.header('content-type'), body);
      let fingerprint: string;
      if (o.fingerprint === undefined) {
        fingerprint = fingerprintOf(request.method, request.path, request.query, bodyHash);
      } else if (digested) {
        throw new IdempotencyConfigError(
          'begin() was given a body digest, but the fingerprint hook needs the bytes (see bodyHasher)',
        );
      } else {
        const material = await runHook('fingerprint', { ...request, body });
        if (typeof material !== 'string' && !(material instanceof Uint8Array)) {
          return respond(hookFailure('fingerprint', material, request, key));
        }
        fingerprint = fingerprintOfMaterial(request.method, request.path, material);
      }
      // A key never holds "\n" (printable ASCII only), so splitting at the last one is unambiguous.
      const scopeKey = `${scope}\n${key}`;
      const original: OriginalRequest = { method: request.method, path: request.path, bodyHash };
      const token = randomUUID();
      const deadline = o.clock.now() + o.waitMs;
      for (;;) {
        let result: Awaited<ReturnType<typeof o.store.acquire>>;
        try {
          const input = {
            fingerprint,
            request: original,
            token,
            leaseMs: o.leaseMs,
            ttlMs: o.ttlMs,
            now: o.clock.now(),
          };
          result = await o.store.acquire(scopeKey, input);
        } catch (error) {
          return storeFailure('acquire', error, request, scope, key);
        }
        if (result.kind === 'acquired') {
          if (observed) emit({ type: 'claimed', takenOver: result.takenOver, ...base(request, scope, key) });
          const claim = new ActiveClaim({
            options: o,
            scopeKey,
            token,
            request: original,
            scope,
            key,
            emit,
            renewer,
          });
          return { kind: 'execute', claim };
        }
        const { record } = result;
        if (!sameDigest(record.fingerprint, fingerprint)) {
          emit({ type: 'conflict', reason: 'reused', ...base(request, scope, key) });
          return respond(reusedAnswer(o, record, key));
        }
        if (result.kind === 'completed') {
          if (observed)
            emit({ type: 'replayed', status: result.record.response.status, ...base(request, scope, key) });
          return { kind: 'respond', response: replayAnswer(o, result.record, key), replayed: true };
        }
        const remaining = deadline - o.clock.now();
        if (remaining <= 0) {
          emit({ type: 'conflict', reason: 'in_use', ...base(request, scope, key) });
          return respond(inUseAnswer(o, key));
        }
        try {
          await waitForChange(o, scopeKey, remaining);
        } catch (error) {
          return storeFailure('waitForCompletion', error, request, scope, key);
        }
      }
    },

    lookup: (request) => lookup(o, problem, emit, request),
    handle: (request, next) => handleFetch(engine, request, next),
    handleLookup: (request) => handleFetchLookup(engine, request),
  };

  /** Runs a user hook; a throw or a wrong type comes back as a HookFailed marker, never an exception. */
  async function runHook(hook: 'scope' | 'fingerprint', request: FingerprintRequest | IdempotencyRequest) {
    try {
      return hook === 'scope' ? await o.scope!(request) : await o.fingerprint!(request as FingerprintRequest);
    } catch (error) {
      return new HookFailed(error);
    }
  }

  function hookFailure(
    hook: 'scope' | 'fingerprint',
    outcome: unknown,
    request: IdempotencyRequest,
    key: string,
  ) {
    const error =
      outcome instanceof HookFailed
        ? outcome.error
        : new IdempotencyConfigError(
            `options.${hook} must return ${hook === 'scope' ? 'a well-formed string (no lone surrogates)' : 'a string or bytes'}`,
          );
    emit({
      type: 'hook_error',
      hook,
      error,
      key,
      at: o.clock.now(),
      method: request.method,
      path: request.path,
    });
    return problem({
      code: 'idempotency_hook_failed',
      status: 500,
      detail: `The server could not ${hook === 'scope' ? 'tell whose key this is' : 'fingerprint this request'}; the request was not processed.`,
      idempotencyKey: key,
    });
  }

  function storeFailure(
    operation: string,
    cause: unknown,
    request: IdempotencyRequest,
    scope: string,
    key: string,
  ): Decision {
    // A store that already threw a typed error keeps it (its operation and cause stay exact).
    const error = isIdempotencyStoreError(cause) ? cause : new IdempotencyStoreError(operation, { cause });
    emit({ type: 'store_error', operation, error, ...base(request, scope, key) });
    if (o.failOpen) return { kind: 'bypass' };
    return respond(
      problem({
        code: 'idempotency_store_unavailable',
        status: 503,
        detail:
          'The idempotency store cannot be reached; the request was not processed. Retry with the same key.',
        idempotencyKey: key,
        retryAfterSeconds: o.retryAfterSeconds,
      }),
    );
  }

  return engine;
}

const PASS: Inspection = { kind: 'pass' };

/** What a user hook that threw leaves behind. */
class HookFailed {
  constructor(readonly error: unknown) {}
}

function respond(response: EngineResponse): { kind: 'respond'; response: EngineResponse; replayed: false } {
  return { kind: 'respond', response, replayed: false };
}

function createEmitter(o: NormalizedOptions): (event: IdempotencyEvent) => void {
  const { onEvent } = o;
  if (onEvent === undefined) return () => {};
  return (event) => {
    try {
      onEvent(event);
    } catch {
      // An observer must never change what the client gets.
    }
  };
}

/** Waits until the record may have changed, at most `timeoutMs`: the store's signal, or a short poll. */
async function waitForChange(o: NormalizedOptions, scopeKey: string, timeoutMs: number): Promise<void> {
  const { clock, store } = o;
  if (store.waitForCompletion === undefined) {
    await new Promise<void>((resolve) => clock.setTimeout(resolve, Math.min(timeoutMs, POLL_MS)));
    return;
  }
  const controller = new AbortController();
  const timer = clock.setTimeout(() => controller.abort(), timeoutMs);
  try {
    await store.waitForCompletion(scopeKey, { signal: controller.signal });
  } finally {
    clock.clearTimeout(timer);
  }
}
const POLL_MS = 25;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
