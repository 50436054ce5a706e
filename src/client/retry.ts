import type { AttemptOutcome } from './attempt.js';
import { parseRetryAfter } from './retry-after.js';

/** How `idempotentFetch` retries; every retry sends the same key and the same body bytes. */
export interface RetryOptions {
  /** Requests sent at most, the first included. @default 5 */
  maxAttempts?: number;
  /** The whole call's budget, waits and attempts included: no attempt runs past it, no retry starts after it. @default 30_000 */
  maxElapsedMs?: number;
  /** Backoff base: the wait before retry n is random(0, min(maxDelayMs, baseDelayMs * 2^(n-1))). @default 200 */
  baseDelayMs?: number;
  /** Backoff cap, before jitter. @default 10_000 */
  maxDelayMs?: number;
  /** Each attempt is aborted and retried after this long without response headers. @default undefined (only `maxElapsedMs` bounds it) */
  timeoutMs?: number;
  /** Whether a 500 is retried too (safe against idemkit, which stores no 5xx). @default false */
  retryOn500?: boolean;
  /** Source of jitter in [0, 1). @default Math.random */
  random?: () => number;
  /** Waits `ms`, rejecting with `signal.reason` as soon as the signal aborts. @default a setTimeout-based wait */
  sleep?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  /** Current time in epoch ms, for `maxElapsedMs` and `Retry-After` dates. @default Date.now */
  now?: () => number;
}

/** Retry options with every default applied; computed once per call. */
export interface NormalizedRetry {
  maxAttempts: number;
  maxElapsedMs: number;
  baseDelayMs: number;
  maxDelayMs: number;
  timeoutMs: number | undefined;
  retryOn500: boolean;
  random: () => number;
  sleep: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  now: () => number;
}

/** Applies the defaults to retry options; later layers (per call) override earlier ones (client). */
export function normalizeRetry(...layers: Array<RetryOptions | undefined>): NormalizedRetry {
  const o: RetryOptions = Object.assign({}, ...layers.filter((layer) => layer !== undefined));
  return {
    maxAttempts: count('maxAttempts', o.maxAttempts ?? 5, 1),
    maxElapsedMs: count('maxElapsedMs', o.maxElapsedMs ?? 30_000, 0),
    baseDelayMs: count('baseDelayMs', o.baseDelayMs ?? 200, 0),
    maxDelayMs: count('maxDelayMs', o.maxDelayMs ?? 10_000, 0),
    timeoutMs: o.timeoutMs === undefined ? undefined : count('timeoutMs', o.timeoutMs, 1),
    retryOn500: o.retryOn500 ?? false,
    random: o.random ?? Math.random,
    sleep: o.sleep ?? abortableSleep,
    now: o.now ?? Date.now,
  };
}

/** A whole number of at least `min`; anything else (NaN, Infinity, a string) is a caller's mistake. */
function count(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new TypeError(`retry.${name} must be a whole number of at least ${min}; got ${String(value)}`);
  }
  return value;
}

/** What to do after an attempt. */
export type RetryDecision =
  | { kind: 'return' }
  | { kind: 'conflict' }
  | { kind: 'retry'; retryAfterMs: number | undefined }
  | { kind: 'throw' };

const RETRIED_STATUSES = new Set([429, 502, 503, 504]);

/**
 * The retry decision, as an ordered list: the first matching rule wins. Only answers known to be
 * safe and transient are retried; anything unknown is returned (a status) or thrown (an error).
 */
export function decideRetry(outcome: AttemptOutcome, retry: NormalizedRetry): RetryDecision {
  // 1. No answer within timeoutMs: the request may or may not have run; the same key makes it safe.
  if (outcome.kind === 'timeout') return { kind: 'retry', retryAfterMs: undefined };
  // 2. fetch rejects network failures (reset, refused, DNS) with a TypeError; nothing else is known safe.
  if (outcome.kind === 'error')
    return outcome.error instanceof TypeError
      ? { kind: 'retry', retryAfterMs: undefined }
      : { kind: 'throw' };
  const { response } = outcome;
  const problemCode = outcome.problem?.code;
  const retryAfterMs = () => parseRetryAfter(response.headers.get('retry-after'), retry.now());
  // 3. The key is bound to another request: retrying can never succeed (409, or 422/400 by config).
  if (problemCode === 'idempotency_key_reused') return { kind: 'conflict' };
  // 4. The first request with this key is still running: wait, then get its replay.
  if (response.status === 409 && problemCode === 'idempotency_key_in_use')
    return { kind: 'retry', retryAfterMs: retryAfterMs() };
  // 5. Rate limited, or a gateway/overload answer: nothing was stored.
  if (RETRIED_STATUSES.has(response.status)) return { kind: 'retry', retryAfterMs: retryAfterMs() };
  // 6. 500 only when asked: a server other than idemkit may have stored it or half-done the work.
  if (response.status === 500 && retry.retryOn500) return { kind: 'retry', retryAfterMs: retryAfterMs() };
  // 7. Everything else (2xx, 3xx, 400, 422, other 409s, 500) is the final answer.
  return { kind: 'return' };
}

/** Full-jitter backoff (AWS Architecture Blog, "Exponential Backoff And Jitter"), `retryNumber` from 1. */
export function backoffMs(retryNumber: number, retry: NormalizedRetry): number {
  const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (retryNumber - 1));
  return Math.floor(retry.random() * ceiling);
}

/** Waits `ms`; rejects with the signal's reason as soon as it aborts. */
export function abortableSleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
