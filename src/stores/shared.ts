import { IdempotencyConfigError, IdempotencyStoreError, isIdempotencyStoreError } from '../core/errors.js';

/**
 * Helpers shared by the persistent stores (SQLite, Redis, PostgreSQL): the header codec, option
 * checks and the typed error every store failure surfaces as. Not a public entry point.
 */

/** Headers as stored: a JSON array of `[name, value]` pairs, order and repeats kept. */
export function encodeHeaders(headers: ReadonlyArray<readonly [string, string]>): string {
  return JSON.stringify(headers);
}

/** Reads headers written by `encodeHeaders`; anything else is a corrupt record and throws. */
export function decodeHeaders(text: string): Array<[string, string]> {
  const parsed: unknown = JSON.parse(text);
  if (
    !Array.isArray(parsed) ||
    !parsed.every(
      (pair) =>
        Array.isArray(pair) &&
        pair.length === 2 &&
        typeof pair[0] === 'string' &&
        typeof pair[1] === 'string',
    )
  ) {
    throw new Error('stored headers are not a list of [name, value] pairs');
  }
  return parsed as Array<[string, string]>;
}

/**
 * The typed error of a failed store operation; the engine answers it with 503 (fail closed).
 * An error that already is one passes through unchanged.
 */
export function storeError(store: string, operation: string, cause: unknown): IdempotencyStoreError {
  if (isIdempotencyStoreError(cause)) return cause;
  return new IdempotencyStoreError(`${store} ${operation}`, { cause });
}

/** Runs `work`, turning any failure into the store's typed error. */
export async function guarded<T>(store: string, operation: string, work: () => Promise<T> | T): Promise<T> {
  try {
    return await work();
  } catch (cause) {
    throw storeError(store, operation, cause);
  }
}

/** An integer option within bounds, or its default; otherwise a config error naming the option. */
export function integerOption(
  store: string,
  name: string,
  value: unknown,
  fallback: number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new IdempotencyConfigError(
      `${store}: ${name} must be an integer from ${min} to ${max}, not ${JSON.stringify(value) ?? String(value)}`,
    );
  }
  return value;
}

/** A SQL identifier idemkit will interpolate (table names): letters, digits and `_`, at most 63. */
export function sqlIdentifier(store: string, name: string, value: unknown, fallback: string): string {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(value)) {
    throw new IdempotencyConfigError(
      `${store}: ${name} must be a plain SQL identifier (letters, digits, _; at most 63), not ${JSON.stringify(value) ?? String(value)}`,
    );
  }
  return value;
}

/**
 * Runs `prune` every `intervalMs` on an unref'd timer (0: never), one run at a time. A failure goes
 * to `onError` as the store's typed error; an `onError` that throws is ignored, since nothing may
 * crash the process from a timer. Returns the function that stops it.
 */
export function schedulePrune(
  store: string,
  intervalMs: number,
  prune: () => unknown,
  onError: (error: IdempotencyStoreError) => void,
): () => void {
  if (intervalMs <= 0) return () => {};
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    Promise.resolve()
      .then(prune)
      .catch((error: unknown) => {
        try {
          onError(storeError(store, 'prune', error));
        } catch {
          // see above
        }
      })
      .finally(() => {
        running = false;
      });
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
