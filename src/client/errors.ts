import { IdempotencyError } from '../core/errors.js';

// A brand looked up by Symbol.for, so that the guards below recognise errors thrown by another copy
// of the package (two versions in one bundle), where `instanceof` would fail (as ky's guards do).
const CLIENT_BRAND = Symbol.for('idemkit.client-error');

/** The server's RFC 9457 problem details, as parsed from an `application/problem+json` answer. */
export interface ProblemDetails {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  code?: string;
  idempotency_key?: string | null;
  [member: string]: unknown;
}

/** What the server remembers of the request that first used a key. */
export interface OriginalRequest {
  method: string;
  path: string;
  body_hash: string;
}

/** Base class of every error the idemkit client throws; see `isIdempotencyClientError`. */
export class IdempotencyClientError extends IdempotencyError {
  readonly [CLIENT_BRAND] = true;
  override name = 'IdempotencyClientError';
}

/** The server refused the key: it was first used for a different request (`idempotency_key_reused`). */
export class IdempotencyConflictError extends IdempotencyClientError {
  override name = 'IdempotencyConflictError';
  /** The HTTP status of the answer (409 by default; 422 or 400 when the server is so configured). */
  readonly status: number;
  /** The problem details the server sent. */
  readonly problem: ProblemDetails;
  /** The request the key was first used for, when the server said. */
  readonly originalRequest: OriginalRequest | undefined;
  /** The key that was refused. */
  readonly idempotencyKey: string;

  constructor(status: number, problem: ProblemDetails, idempotencyKey: string) {
    super(`Idempotency-Key "${idempotencyKey}" was already used for a different request`);
    this.status = status;
    this.problem = problem;
    this.idempotencyKey = idempotencyKey;
    this.originalRequest = problem.original_request as OriginalRequest | undefined;
  }
}

/** Why retrying stopped: too many attempts, or the next wait would pass `maxElapsedMs`. */
export type RetryLimit = 'attempts' | 'elapsed';

/** Retries ran out; carries the last response or error and the number of attempts made. */
export class RetryLimitError extends IdempotencyClientError {
  override name = 'RetryLimitError';
  /** Which limit was reached. */
  readonly limit: RetryLimit;
  /** Requests sent, the first included. */
  readonly attempts: number;
  /** The last answer, when the last attempt got one (its body is unread). */
  readonly lastResponse: Response | undefined;
  /** The last failure, when the last attempt got no answer. */
  readonly lastError: unknown;
  /** The key every attempt carried; retry later with the same key. */
  readonly idempotencyKey: string;

  constructor(
    limit: RetryLimit,
    attempts: number,
    last: { response?: Response; error?: unknown },
    idempotencyKey: string,
  ) {
    const what = last.response ? `status ${last.response.status}` : describe(last.error);
    super(`Gave up after ${attempts} attempt(s) (${limit} limit); last: ${what}`, { cause: last.error });
    this.limit = limit;
    this.attempts = attempts;
    this.lastResponse = last.response;
    this.lastError = last.error;
    this.idempotencyKey = idempotencyKey;
  }
}

/** The request body cannot be sent twice (a `ReadableStream`); nothing was sent. */
export class UnreplayableBodyError extends IdempotencyClientError {
  override name = 'UnreplayableBodyError';
}

/** `deriveKey` got data that JSON cannot represent (undefined, a function, a bigint, a cycle…). */
export class KeyDerivationError extends IdempotencyClientError {
  override name = 'KeyDerivationError';
}

/** A pending operation of that name exists with another request or key; nothing was sent. */
export class OperationMismatchError extends IdempotencyClientError {
  override name = 'OperationMismatchError';
  /** The operation name the caller gave. */
  readonly operation: string;

  constructor(operation: string, message: string) {
    super(message);
    this.operation = operation;
  }
}

/** True for any idemkit client error, also one thrown by another copy of the package. */
export function isIdempotencyClientError(value: unknown): value is IdempotencyClientError {
  return (
    typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[CLIENT_BRAND] === true
  );
}

/** True for an `IdempotencyConflictError`, also from another copy of the package. */
export function isIdempotencyConflictError(value: unknown): value is IdempotencyConflictError {
  return isIdempotencyClientError(value) && value.name === 'IdempotencyConflictError';
}

/** True for a `RetryLimitError`, also from another copy of the package. */
export function isRetryLimitError(value: unknown): value is RetryLimitError {
  return isIdempotencyClientError(value) && value.name === 'RetryLimitError';
}

/** True for an `UnreplayableBodyError`, also from another copy of the package. */
export function isUnreplayableBodyError(value: unknown): value is UnreplayableBodyError {
  return isIdempotencyClientError(value) && value.name === 'UnreplayableBodyError';
}

/** True for an `OperationMismatchError`, also from another copy of the package. */
export function isOperationMismatchError(value: unknown): value is OperationMismatchError {
  return isIdempotencyClientError(value) && value.name === 'OperationMismatchError';
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
