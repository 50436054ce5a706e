export { canonicalizeJson } from './core/canonical-json.js';
export type { CapturedResponse, Claim } from './core/claim.js';
export { type Clock, systemClock } from './core/clock.js';
export { createIdempotency, type Decision, type Idempotency, type Inspection } from './core/engine.js';
export {
  IdempotencyConfigError,
  IdempotencyError,
  IdempotencyStoreError,
  isIdempotencyError,
  isIdempotencyStoreError,
} from './core/errors.js';
export type { IdempotencyEvent, IdempotencyEventType } from './core/events.js';
export { hashBody, isJsonMediaType } from './core/fingerprint.js';
export { type KeyProblem, MAX_KEY_LENGTH, type ParsedKey, parseIdempotencyKey } from './core/key.js';
export { defaultScope, defaultStoreStatus, type IdempotencyOptions } from './core/options.js';
export type { EngineResponse, ProblemCode } from './core/problem.js';
export { DEFAULT_DENIED_HEADERS } from './core/replay-headers.js';
export type { FingerprintRequest, IdempotencyRequest } from './core/request.js';
export type {
  AcquireInput,
  AcquireResult,
  CompletedRecord,
  IdempotencyRecord,
  IdempotencyStore,
  InProgressRecord,
  OriginalRequest,
  StoredResponse,
} from './core/store.js';
