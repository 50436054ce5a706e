const BRAND = Symbol.for('idemkit.error');

/** Base class of every error idemkit throws; `isIdempotencyError` recognises it across package copies. */
export class IdempotencyError extends Error {
  readonly [BRAND] = true;
  override name = 'IdempotencyError';
}

/** A store could not be reached or failed; the engine answers 503 (fail closed) unless `failOpen`. */
export class IdempotencyStoreError extends IdempotencyError {
  override name = 'IdempotencyStoreError';
  constructor(
    /** The store operation that failed, e.g. `acquire`. */
    readonly operation: string,
    options: { cause: unknown },
  ) {
    super(`idemkit store operation "${operation}" failed: ${describe(options.cause)}`, options);
  }
}

/** The setup is wrong: an invalid option, or an adapter mounted where it cannot see the request body. */
export class IdempotencyConfigError extends IdempotencyError {
  override name = 'IdempotencyConfigError';
}

/** True for any idemkit error, also one thrown by another copy of the package. */
export function isIdempotencyError(value: unknown): value is IdempotencyError {
  return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
}

/** True for a store failure, also one thrown by another copy of the package. */
export function isIdempotencyStoreError(value: unknown): value is IdempotencyStoreError {
  return isIdempotencyError(value) && value.name === 'IdempotencyStoreError';
}

function describe(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}
