/** Fields every event about a request carries. */
export interface RequestEventBase {
  /** Epoch ms, from the engine's clock. */
  at: number;
  method: string;
  path: string;
  /** The caller's scope (by default a SHA-256 of the Authorization header). */
  scope: string;
  key: string;
}

/**
 * Every decision the engine takes, as one typed union: the audit trail. Keys are included, bodies
 * never.
 */
export type IdempotencyEvent =
  | (RequestEventBase & { type: 'claimed'; takenOver: boolean })
  | (RequestEventBase & { type: 'completed'; status: number; bodyStored: boolean; durationMs: number })
  | (RequestEventBase & {
      type: 'released';
      reason: 'handler_error' | 'status' | 'aborted';
      status?: number;
      error?: unknown;
    })
  | (RequestEventBase & { type: 'replayed'; status: number })
  | (RequestEventBase & { type: 'conflict'; reason: 'reused' | 'in_use' })
  | (Omit<RequestEventBase, 'scope' | 'key'> & {
      type: 'rejected';
      reason: 'missing' | 'invalid' | 'body_unreadable' | 'body_too_large';
      detail: string;
      key?: string;
    })
  | (RequestEventBase & { type: 'forgotten' })
  | (RequestEventBase & { type: 'lease_taken_over'; operation: 'renew' | 'complete' | 'release' })
  | (Omit<RequestEventBase, 'scope'> & { type: 'hook_error'; hook: 'scope' | 'fingerprint'; error: unknown })
  | (Omit<RequestEventBase, 'scope' | 'key'> & {
      type: 'store_error';
      operation: string;
      error: unknown;
      scope?: string;
      key?: string;
    });

/** The `type` of each event. */
export type IdempotencyEventType = IdempotencyEvent['type'];
