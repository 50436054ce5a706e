// The browser-safe entry of `idemkit/client`: Web APIs only. The Node file key store lives in
// './file-key-store.js' and is deliberately not re-exported here.
export { type CallOptions, type ClientOptions, createClient, type IdempotentClient } from './client.js';
export { deriveKey } from './derive-key.js';
export {
  IdempotencyClientError,
  IdempotencyConflictError,
  isIdempotencyClientError,
  isIdempotencyConflictError,
  isOperationMismatchError,
  isRetryLimitError,
  isUnreplayableBodyError,
  KeyDerivationError,
  OperationMismatchError,
  type OriginalRequest,
  type ProblemDetails,
  type RetryLimit,
  RetryLimitError,
  UnreplayableBodyError,
} from './errors.js';
export { type IdempotentRequestInit, idempotentFetch, isReplay } from './fetch.js';
export { type GuardFormEventDetail, type GuardFormOptions, guardForm } from './guard-form.js';
export {
  createLocalStorageKeyStore,
  createMemoryKeyStore,
  type KeyStore,
  type MaybePromise,
  type PendingOperation,
  type WebStorageLike,
} from './key-store.js';
export type { RetryOptions } from './retry.js';
export { parseRetryAfter } from './retry-after.js';
