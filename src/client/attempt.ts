import type { PreparedRequest } from './body.js';
import type { ProblemDetails } from './errors.js';

/** What one attempt ended with. */
export type AttemptOutcome =
  | { kind: 'response'; response: Response; problem: ProblemDetails | undefined }
  | { kind: 'timeout'; error: unknown }
  | { kind: 'error'; error: unknown };

/** Statuses whose problem details steer the retry decision (409 in use/reused; 422 or 400 reused by config). */
const PROBLEM_STATUSES = new Set([400, 409, 422]);

/**
 * Sends one attempt with the operation's key and body bytes, for at most `timeoutMs` before its
 * response head (and problem body). The caller's abort rejects with its reason; the timeout or a
 * network failure becomes an outcome for the retry decision.
 */
export async function sendAttempt(
  fetchImpl: typeof fetch,
  prepared: PreparedRequest,
  key: string,
  passThrough: RequestInit,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<AttemptOutcome> {
  if (signal?.aborted) throw signal.reason;
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(new DOMException(`No response within ${timeoutMs} ms`, 'TimeoutError'));
  }, timeoutMs);
  const headers = new Headers(prepared.headers);
  headers.set('idempotency-key', key);
  try {
    const response = await fetchImpl(prepared.url, {
      ...passThrough,
      method: prepared.method,
      headers,
      body: prepared.body,
      signal: controller.signal,
    });
    const problem = await readProblem(response);
    // The timer or the caller may have ended the attempt while its problem body was read.
    if (signal?.aborted) throw signal.reason;
    if (timedOut) return { kind: 'timeout', error: controller.signal.reason };
    return { kind: 'response', response, problem };
  } catch (error) {
    if (signal?.aborted) throw signal.reason;
    return timedOut ? { kind: 'timeout', error } : { kind: 'error', error };
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}

/** The problem details of an error answer, read from a clone so the response stays unread. */
async function readProblem(response: Response): Promise<ProblemDetails | undefined> {
  if (!PROBLEM_STATUSES.has(response.status)) return undefined;
  if (!(response.headers.get('content-type') ?? '').toLowerCase().includes('json')) return undefined;
  try {
    const document: unknown = await response.clone().json();
    return typeof document === 'object' && document !== null ? (document as ProblemDetails) : undefined;
  } catch {
    return undefined;
  }
}

/** Frees the connection of an answer that will be retried. */
export async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // already read or errored: nothing to free
  }
}
