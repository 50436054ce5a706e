import type { PreparedRequest } from './body.js';
import { OperationMismatchError } from './errors.js';
import type { KeyStore, PendingOperation } from './key-store.js';

/**
 * Finds the key of a named operation: the pending one's when a previous run left it unfinished,
 * else `fresh`, recorded as pending before anything is sent so that a crash cannot lose it.
 * A pending operation with another method, URL, body or explicit key is refused, not overwritten.
 */
export async function resumeOrStart(
  store: KeyStore,
  operation: string,
  prepared: PreparedRequest,
  bodyHash: string,
  explicitKey: string | undefined,
  fresh: () => string,
  nowMs: number,
): Promise<string> {
  const pending = await store.get(operation);
  if (pending !== undefined) {
    const differs =
      pending.method !== prepared.method
        ? 'method'
        : pending.url !== prepared.url
          ? 'URL'
          : pending.bodyHash !== bodyHash
            ? 'body'
            : explicitKey !== undefined && explicitKey !== pending.key
              ? 'idempotency key'
              : undefined;
    if (differs !== undefined)
      throw new OperationMismatchError(
        operation,
        `Operation "${operation}" is pending with another ${differs}; finish or forget it first`,
      );
    return pending.key;
  }
  const started: PendingOperation = {
    key: explicitKey ?? fresh(),
    method: prepared.method,
    url: prepared.url,
    bodyHash,
    createdAt: nowMs,
  };
  await store.set(operation, started);
  return started.key;
}

/**
 * Whether an outcome settles the operation for good, so its pending record can go. A response below
 * 500 is the server's final word (stored, or a refusal no retry changes); a 5xx, a network failure or
 * running out of retries leaves it pending, to resume with the same key.
 */
export function isFinal(outcome: { response: Response } | { error: unknown }): boolean {
  if ('response' in outcome) return outcome.response.status < 500;
  const name = (outcome.error as { name?: unknown } | null)?.name;
  return name === 'IdempotencyConflictError';
}
