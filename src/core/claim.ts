import type { IdempotencyEvent } from './events.js';
import type { NormalizedOptions } from './options.js';
import { filterHeaders } from './replay-headers.js';
import type { OriginalRequest } from './store.js';

/** A handler's answer as an adapter captured it. */
export interface CapturedResponse {
  status: number;
  headers: Iterable<readonly [string, string]>;
  /** The body bytes, or `null` when they exceeded `maxResponseBytes` and were not kept. */
  body: Uint8Array | null;
  bodySize: number;
}

/**
 * The right to run the handler for one key, held as a lease until `finish` or `abandon`.
 * Both never throw: the handler's own response must reach the client whatever the store does.
 */
export interface Claim {
  /** Stores the response (or releases the key when `storeStatus` says so); stops the renewals. */
  finish(response: CapturedResponse): Promise<void>;
  /** Releases the key so that a retry runs the handler again; stops the renewals. */
  abandon(reason: 'handler_error' | 'aborted', error?: unknown): Promise<void>;
}

interface ClaimContext {
  options: NormalizedOptions;
  scopeKey: string;
  token: string;
  request: OriginalRequest;
  scope: string;
  key: string;
  emit: (event: IdempotencyEvent) => void;
}

/**
 * Lease against retention, the two clocks of a record:
 *
 *   acquire          renew       renew             complete
 *   |----leaseMs----|.....|----leaseMs----|....... |------------ ttlMs ------------|
 *   |<-- in progress: another process may take over only after a lease lapses -->|<- replayed ->| gone
 *
 * The lease is short (seconds) and renewed every leaseMs/3 while this process lives, so a crash is
 * noticed quickly; retention is long (hours) and counts from completion.
 */
export function startClaim(context: ClaimContext): Claim {
  const { options, scopeKey, token, emit } = context;
  const { store, clock } = options;
  const startedAt = clock.now();
  let settled = false;
  let timer: unknown;

  const base = () => ({
    at: clock.now(),
    method: context.request.method,
    path: context.request.path,
    scope: context.scope,
    key: context.key,
  });

  const renew = async () => {
    timer = undefined;
    let ok: boolean | undefined;
    try {
      ok = await store.renew(scopeKey, token, { leaseMs: options.leaseMs, now: clock.now() });
    } catch (error) {
      emit({ type: 'store_error', operation: 'renew', error, ...base() });
    }
    if (settled) return;
    if (ok === false) {
      emit({ type: 'lease_taken_over', operation: 'renew', ...base() });
      return;
    }
    timer = clock.setTimeout(renew, options.renewEveryMs);
  };
  timer = clock.setTimeout(renew, options.renewEveryMs);

  const settle = (): boolean => {
    if (settled) return false;
    settled = true;
    if (timer !== undefined) clock.clearTimeout(timer);
    return true;
  };

  const release = async (
    reason: 'handler_error' | 'status' | 'aborted',
    status?: number,
    error?: unknown,
  ) => {
    try {
      const ok = await store.release(scopeKey, token);
      if (!ok) emit({ type: 'lease_taken_over', operation: 'release', ...base() });
      else emit({ type: 'released', reason, status, error, ...base() });
    } catch (storeError) {
      emit({ type: 'store_error', operation: 'release', error: storeError, ...base() });
    }
  };

  return {
    async finish(response) {
      if (!settle()) return;
      if (!options.storeStatus(response.status)) return release('status', response.status);
      const stored = {
        status: response.status,
        headers: filterHeaders(response.headers, options.keepHeader),
        body: response.body,
        bodySize: response.bodySize,
      };
      try {
        const ok = await store.complete(scopeKey, token, stored, { ttlMs: options.ttlMs, now: clock.now() });
        if (!ok) {
          emit({ type: 'lease_taken_over', operation: 'complete', ...base() });
          return;
        }
        if (options.onEvent === undefined) return;
        emit({
          type: 'completed',
          status: response.status,
          bodyStored: response.body !== null,
          durationMs: clock.now() - startedAt,
          ...base(),
        });
      } catch (error) {
        emit({ type: 'store_error', operation: 'complete', error, ...base() });
      }
    },
    async abandon(reason, error) {
      if (!settle()) return;
      return release(reason, undefined, error);
    },
  };
}
