/** The original request a key was first used with: what a conflict answer reports back. */
export interface OriginalRequest {
  method: string;
  path: string;
  /** Hex SHA-256 of the body as fingerprinted (canonical JSON, or the raw bytes). */
  bodyHash: string;
}

/** A response as stored and replayed: status, headers (deny-list already applied) and body bytes. */
export interface StoredResponse {
  status: number;
  /** Header name (lower case) and value pairs, in order; a repeated header appears once per value. */
  headers: Array<[string, string]>;
  /** The body bytes, or `null` when the body exceeded `maxResponseBytes` and was not kept. */
  body: Uint8Array | null;
  /** The body's length in bytes, also when `body` is `null`. */
  bodySize: number;
}

interface RecordBase {
  fingerprint: string;
  request: OriginalRequest;
  createdAt: number;
  /** When the record is forgotten; for a completed record, `completedAt + ttlMs`. */
  expiresAt: number;
}

/** A key whose first request is still running, held by a lease. */
export interface InProgressRecord extends RecordBase {
  state: 'in-progress';
  /** The fencing token of the current holder. Stores never hand it out beyond the engine. */
  token: string;
  leaseExpiresAt: number;
}

/** A key whose first request finished; its response is replayed to every retry. */
export interface CompletedRecord extends RecordBase {
  state: 'completed';
  completedAt: number;
  response: StoredResponse;
}

export type IdempotencyRecord = InProgressRecord | CompletedRecord;

/** What `acquire` is given: everything a new in-progress record needs. */
export interface AcquireInput {
  fingerprint: string;
  request: OriginalRequest;
  token: string;
  leaseMs: number;
  ttlMs: number;
  now: number;
}

/**
 * The answer of `acquire`, decided atomically in one store operation:
 * - `acquired`: the caller holds the key (new, expired, or a lapsed lease with the same fingerprint,
 *   then `takenOver` is true);
 * - `in-progress` / `completed`: someone else's record, returned in the same round trip.
 */
export type AcquireResult =
  | { kind: 'acquired'; takenOver: boolean }
  | { kind: 'in-progress'; record: InProgressRecord }
  | { kind: 'completed'; record: CompletedRecord };

/**
 * Persistence for idempotency records. Every transition is one atomic operation; the engine decides,
 * stores only persist. Times are epoch milliseconds passed in by the engine (its injected clock).
 *
 * Rules every store follows (checked by `test/stores/conformance.ts`):
 * - `acquire` claims a key that is absent or expired; it takes over an in-progress record whose lease
 *   lapsed only when the fingerprint is the same (a different request must see the conflict);
 * - `renew`, `complete` and `release` act only while `token` is the current holder's (fencing);
 * - an expired record behaves as absent everywhere;
 * - an in-progress record never expires while its lease holds: `acquire` and `renew` keep
 *   `expiresAt >= leaseExpiresAt`, so a handler slower than `ttlMs` is not run twice.
 */
export interface IdempotencyStore {
  acquire(scopeKey: string, input: AcquireInput): Promise<AcquireResult>;
  renew(scopeKey: string, token: string, options: { leaseMs: number; now: number }): Promise<boolean>;
  complete(
    scopeKey: string,
    token: string,
    response: StoredResponse,
    options: { ttlMs: number; now: number },
  ): Promise<boolean>;
  release(scopeKey: string, token: string): Promise<boolean>;
  get(scopeKey: string, options: { now: number }): Promise<IdempotencyRecord | undefined>;
  /** Forgets a completed record; an in-progress one is left alone (returns false). */
  delete(scopeKey: string, options: { now: number }): Promise<boolean>;
  /**
   * Resolves when the record stops being in progress (completed, released, deleted or expired), at
   * once if it already has, or when `signal` aborts; never rejects for the abort. Optional: without
   * it the engine polls with `acquire`. The engine owns the deadline and aborts the signal.
   */
  waitForCompletion?(scopeKey: string, options: { signal: AbortSignal }): Promise<void>;
  /** Frees what the store created (timers, its own connections); never a client the user passed in. */
  close(): Promise<void>;
}
