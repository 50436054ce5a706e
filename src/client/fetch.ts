import { discard, sendAttempt } from './attempt.js';
import { prepareRequest } from './body.js';
import { newKey, sha256Hex } from './derive-key.js';
import { IdempotencyConflictError, OperationMismatchError, RetryLimitError } from './errors.js';
import { createInFlight } from './in-flight.js';
import type { KeyStore } from './key-store.js';
import { isFinal, resumeOrStart } from './operation.js';
import { backoffMs, decideRetry, type NormalizedRetry, normalizeRetry, type RetryOptions } from './retry.js';

/** `fetch`'s init, plus what makes a request safe to retry. */
export interface IdempotentRequestInit extends RequestInit {
  /** The operation's key; an `Idempotency-Key` header counts too. @default crypto.randomUUID() */
  idempotencyKey?: string;
  /** How to retry. @default {} (see `RetryOptions`) */
  retry?: RetryOptions;
  /** A name under which the pending key is kept in `keyStore` until the final answer. @default undefined */
  operation?: string;
  /** Where pending operations live; required with `operation`. @default undefined */
  keyStore?: KeyStore;
  /** The fetch to send with. @default globalThis.fetch */
  fetch?: typeof fetch;
}

const inFlight = createInFlight();
// Operations are deduplicated per key store: two stores may use the same names for different things.
const operationsInFlight = new WeakMap<KeyStore, ReturnType<typeof createInFlight>>();
/** Per key store: the request identity each operation name is running with. */
const activeOperations = new WeakMap<KeyStore, Map<string, string>>();
const encoder = new TextEncoder();

/**
 * `fetch` with one Idempotency-Key per logical operation, sent with the same body bytes on every
 * retry. Returns the final response; throws `IdempotencyConflictError` when the key belongs to another
 * request, `RetryLimitError` when retries run out, and the signal's reason on abort.
 */
export async function idempotentFetch(
  input: RequestInfo | URL,
  init: IdempotentRequestInit = {},
): Promise<Response> {
  const { idempotencyKey, retry, operation, keyStore, fetch: fetchOption, signal, ...requestInit } = init;
  const { method: _method, headers: _headers, body: _body, ...passThrough } = requestInit;
  // A Request passed as input carries its own signal (fetch honours it when init has none).
  const abortSignal = signal ?? (input instanceof Request ? input.signal : undefined);
  if (abortSignal?.aborted) throw abortSignal.reason;
  if (operation !== undefined && keyStore === undefined)
    throw new TypeError('idempotentFetch: `operation` needs a `keyStore` to keep the pending key in');
  const prepared = await prepareRequest(input, requestInit);
  const options = normalizeRetry(retry);
  const explicitKey = idempotencyKey ?? prepared.headers.get('idempotency-key') ?? undefined;
  const fetchImpl = fetchOption ?? globalThis.fetch;
  const sendWith = (key: string, sendSignal: AbortSignal | undefined) =>
    send(fetchImpl, prepared, key, passThrough, options, sendSignal);
  if (operation === undefined && explicitKey === undefined) return sendWith(newKey(), abortSignal);

  // A given key or operation name can be submitted twice at once: identical calls share one request.
  const bodyHash = await sha256Hex(prepared.body ?? encoder.encode(''));
  const request = `${prepared.method}\0${prepared.url}\0${bodyHash}`;
  if (operation === undefined || keyStore === undefined)
    return inFlight.share(`${explicitKey}\0${request}`, abortSignal, (shared) =>
      sendWith(explicitKey as string, shared),
    );
  let calls = operationsInFlight.get(keyStore);
  if (calls === undefined) {
    calls = createInFlight();
    operationsInFlight.set(keyStore, calls);
  }
  // One request per operation name at a time: an identical call joins it; another request under
  // the same name is refused (its pending record would otherwise be overwritten, its key lost).
  let active = activeOperations.get(keyStore);
  if (active === undefined) {
    active = new Map();
    activeOperations.set(keyStore, active);
  }
  const identity = `${explicitKey ?? ''}\0${request}`;
  const running = active.get(operation);
  if (running !== undefined && running !== identity) {
    throw new OperationMismatchError(operation, `Operation "${operation}" is in flight with another request`);
  }
  if (abortSignal?.aborted) throw abortSignal.reason; // so that share() below always starts or joins
  if (running === undefined) active.set(operation, identity);
  const operations = active;
  return calls.share(`${operation}\0${identity}`, abortSignal, async (shared) => {
    try {
      return await runOperation(shared);
    } finally {
      operations.delete(operation);
    }
  });

  async function runOperation(shared: AbortSignal): Promise<Response> {
    const store = keyStore as KeyStore;
    const name = operation as string;
    const key = await resumeOrStart(store, name, prepared, bodyHash, explicitKey, newKey, options.now());
    let response: Response;
    try {
      response = await sendWith(key, shared);
    } catch (error) {
      if (isFinal({ error })) await store.delete(name);
      throw error;
    }
    if (isFinal({ response })) await store.delete(name);
    return response;
  }
}

/** The retry loop of one operation: same key, same bytes, until a final answer or a limit. */
async function send(
  fetchImpl: typeof fetch,
  prepared: Parameters<typeof sendAttempt>[1],
  key: string,
  passThrough: RequestInit,
  retry: NormalizedRetry,
  signal: AbortSignal | undefined,
): Promise<Response> {
  const startedAt = retry.now();
  for (let attempt = 1; ; attempt++) {
    // No attempt outlives the whole call's budget: a server that never answers ends in a limit.
    const remainingMs = Math.max(1, retry.maxElapsedMs - (retry.now() - startedAt));
    const timeoutMs = Math.min(retry.timeoutMs ?? remainingMs, remainingMs);
    const outcome = await sendAttempt(fetchImpl, prepared, key, passThrough, timeoutMs, signal);
    const decision = decideRetry(outcome, retry);
    if (outcome.kind === 'response') {
      if (decision.kind === 'return') return outcome.response;
      if (decision.kind === 'conflict') {
        await discard(outcome.response);
        throw new IdempotencyConflictError(outcome.response.status, outcome.problem ?? {}, key);
      }
    } else if (decision.kind !== 'retry') throw outcome.error;
    const last = outcome.kind === 'response' ? { response: outcome.response } : { error: outcome.error };
    if (attempt >= retry.maxAttempts) throw new RetryLimitError('attempts', attempt, last, key);
    const delayMs =
      (decision.kind === 'retry' ? decision.retryAfterMs : undefined) ?? backoffMs(attempt, retry);
    if (retry.now() + delayMs - startedAt > retry.maxElapsedMs)
      throw new RetryLimitError('elapsed', attempt, last, key);
    if (outcome.kind === 'response') await discard(outcome.response);
    await retry.sleep(delayMs, signal);
  }
}

/** True when the server answered with a stored response (`Idempotent-Replayed: true`), not a fresh run. */
export function isReplay(response: Response): boolean {
  return response.headers.get('idempotent-replayed')?.trim().toLowerCase() === 'true';
}
