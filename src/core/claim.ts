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
  /**
   * Stops the renewals but keeps the claim: the key frees itself when the lease lapses, unless
   * `finish` stores an answer first. For a handler that may or may not still be working.
   */
  detach(): void;
  /**
   * Renew only while `wanted()` says so: it is asked when a renewal falls due (handlers slower
   * than leaseMs/3 only), and a false answer detaches the claim. Costs nothing per request, unlike
   * a listener that would detach at once.
   */
  renewWhile(wanted: () => boolean): void;
}

interface ClaimContext {
  options: NormalizedOptions;
  scopeKey: string;
  token: string;
  request: OriginalRequest;
  scope: string;
  key: string;
  emit: (event: IdempotencyEvent) => void;
  renewer: Renewer;
}

/**
 * Lease against retention, the two clocks of a record:
 *
 *   acquire          renew       renew             complete
 *   |----leaseMs----|.....|----leaseMs----|....... |------------ ttlMs ------------|
 *   |<-- in progress: another process may take over only after a lease lapses -->|<- replayed ->| gone
 *
 * The lease is short (seconds) and renewed while this process lives, so a crash is noticed quickly;
 * retention is long (hours) and counts from completion. Renewal: see `createRenewer`.
 */
export class ActiveClaim implements Claim {
  /** When the lease was last extended (engine clock); read by the renewer. */
  renewedAt: number;
  private settled = false;
  private renewing = false;
  private wanted: (() => boolean) | undefined;
  private readonly startedAt: number;

  constructor(private readonly context: ClaimContext) {
    this.startedAt = context.options.clock.now();
    this.renewedAt = this.startedAt;
    context.renewer.track(this);
  }

  /** Extends the lease; on a lost lease stops renewing and says so. One renewal at a time. */
  async renew(now: number): Promise<void> {
    if (this.renewing) return;
    const { options, scopeKey, token, renewer } = this.context;
    if (this.wanted !== undefined && !wants(this.wanted)) {
      renewer.untrack(this);
      return;
    }
    let ok: boolean;
    this.renewing = true;
    try {
      ok = await options.store.renew(scopeKey, token, { leaseMs: options.leaseMs, now });
    } catch (error) {
      this.emit({ type: 'store_error', operation: 'renew', error, ...this.base() });
      return; // tried again on the next tick, while the lease may still hold
    } finally {
      this.renewing = false;
    }
    if (ok) {
      this.renewedAt = now;
      return;
    }
    renewer.untrack(this);
    if (!this.settled) this.emit({ type: 'lease_taken_over', operation: 'renew', ...this.base() });
  }

  async finish(response: CapturedResponse): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    const { options, scopeKey, token, renewer } = this.context;
    if (!options.storeStatus(response.status)) {
      renewer.untrack(this);
      return this.release('status', response.status);
    }
    const stored = {
      status: response.status,
      headers: filterHeaders(response.headers, options.keepHeader),
      body: response.body,
      bodySize: response.bodySize,
    };
    // The handler has run: losing its answer to a store that is down for a while would let a retry
    // run it again once the lease lapses. So keep trying, renewals going on meanwhile, for two
    // leases from the first failure: waits grow to 500 ms, so a store that comes back has the answer within half a second.
    // The lease itself lapses leaseMs after the last renewal that landed (renewals come every
    // leaseMs/3 to leaseMs/2), so an outage longer than about half a lease can let a retry take the
    // key over first; this token's complete is then refused, and the handler has run twice. The
    // client waits for its answer meanwhile (the faces send it once this returns).
    let giveUpAt: number | undefined; // set at the first failure: nothing extra on the common path
    for (let attempt = 0; ; attempt++) {
      try {
        const ok = await options.store.complete(scopeKey, token, stored, {
          ttlMs: options.ttlMs,
          now: options.clock.now(),
        });
        renewer.untrack(this);
        if (!ok) {
          this.emit({ type: 'lease_taken_over', operation: 'complete', ...this.base() });
        } else if (options.onEvent !== undefined) {
          this.emit({
            type: 'completed',
            status: response.status,
            bodyStored: response.body !== null,
            durationMs: options.clock.now() - this.startedAt,
            ...this.base(),
          });
        }
        return;
      } catch (error) {
        this.emit({ type: 'store_error', operation: 'complete', error, ...this.base() });
        const delay = Math.min(COMPLETE_RETRY_FIRST_MS * 2 ** attempt, COMPLETE_RETRY_MAX_MS);
        const now = options.clock.now();
        giveUpAt ??= now + 2 * options.leaseMs;
        if (now + delay > giveUpAt) {
          renewer.untrack(this);
          return;
        }
        await new Promise<void>((resolve) => options.clock.setTimeout(resolve, delay));
      }
    }
  }

  async abandon(reason: 'handler_error' | 'aborted', error?: unknown): Promise<void> {
    if (!this.settle()) return;
    return this.release(reason, undefined, error);
  }

  detach(): void {
    if (!this.settled) this.context.renewer.untrack(this);
  }

  renewWhile(wanted: () => boolean): void {
    this.wanted = wanted;
  }

  private settle(): boolean {
    if (this.settled) return false;
    this.settled = true;
    this.context.renewer.untrack(this);
    return true;
  }

  private async release(reason: 'handler_error' | 'status' | 'aborted', status?: number, error?: unknown) {
    const { options, scopeKey, token } = this.context;
    try {
      const ok = await options.store.release(scopeKey, token);
      if (!ok) this.emit({ type: 'lease_taken_over', operation: 'release', ...this.base() });
      else this.emit({ type: 'released', reason, status, error, ...this.base() });
    } catch (storeError) {
      this.emit({ type: 'store_error', operation: 'release', error: storeError, ...this.base() });
    }
  }

  private emit(event: IdempotencyEvent): void {
    this.context.emit(event);
  }

  private base() {
    const { options, request, scope, key } = this.context;
    return { at: options.clock.now(), method: request.method, path: request.path, scope, key };
  }
}

/** A `renewWhile` predicate's answer; one that throws keeps the lease (never a second run). */
function wants(wanted: () => boolean): boolean {
  try {
    return wanted();
  } catch {
    return true;
  }
}

/** Waits between attempts to store a finished handler's answer when the store fails: 100, 200, 400, 500, 500… ms. */
const COMPLETE_RETRY_FIRST_MS = 100;
const COMPLETE_RETRY_MAX_MS = 500;

/** Keeps the leases of one engine's running handlers alive. */
export interface Renewer {
  track(claim: ActiveClaim): void;
  untrack(claim: ActiveClaim): void;
}

/**
 * One ticker per engine instead of a timer per request: every leaseMs/6 it renews the claims whose
 * lease was last extended leaseMs/3 or more ago. So only handlers slower than leaseMs/3 are ever
 * renewed, and a live lease is extended at most leaseMs/2 after the last time, well inside leaseMs.
 * The ticker runs only while some handler does.
 */
export function createRenewer(options: NormalizedOptions): Renewer {
  const { clock, leaseMs } = options;
  const period = Math.max(1, Math.floor(leaseMs / 6));
  const due = Math.floor(leaseMs / 3);
  const active = new Set<ActiveClaim>();
  let timer: unknown;
  const tick = () => {
    timer = undefined;
    const now = clock.now();
    for (const claim of active) if (now - claim.renewedAt >= due) void claim.renew(now);
    if (active.size > 0) timer = clock.setTimeout(tick, period);
  };
  return {
    track(claim) {
      active.add(claim);
      if (timer === undefined) timer = clock.setTimeout(tick, period);
    },
    untrack(claim) {
      active.delete(claim);
    },
  };
}
