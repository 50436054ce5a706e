import type { NormalizedOptions } from './options.js';
import { type EngineResponse, problemResponse } from './problem.js';
import type { CompletedRecord, IdempotencyRecord } from './store.js';

const REPLAYED_HEADER: [string, string] = ['idempotent-replayed', 'true'];

/** The stored response, replayed; or, when its body was too large to keep, a problem that says so. */
export function replayAnswer(o: NormalizedOptions, record: CompletedRecord, key: string): EngineResponse {
  const { response } = record;
  if (response.body === null) {
    return problemResponse(
      {
        code: 'idempotency_response_not_stored',
        status: 409,
        detail: `The original request completed with status ${response.status}, but its ${response.bodySize}-byte response exceeded maxResponseBytes and was not stored. Do not retry it with this key.`,
        idempotencyKey: key,
        extra: { original_status: response.status },
      },
      o.problemTypeBase,
    );
  }
  return { status: response.status, headers: [...response.headers, REPLAYED_HEADER], body: response.body };
}

/** A key reused with another request: the seed documents' contract, with the original request. */
export function reusedAnswer(o: NormalizedOptions, record: IdempotencyRecord, key: string): EngineResponse {
  return problemResponse(
    {
      code: 'idempotency_key_reused',
      status: o.conflictStatus,
      detail:
        'This Idempotency-Key was already used with a different request; use a new key for a new request.',
      idempotencyKey: key,
      extra: {
        original_request: {
          method: record.request.method,
          path: record.request.path,
          body_hash: record.request.bodyHash,
        },
      },
    },
    o.problemTypeBase,
  );
}

/** A key whose first request still runs. */
export function inUseAnswer(o: NormalizedOptions, key: string, detail?: string): EngineResponse {
  return problemResponse(
    {
      code: 'idempotency_key_in_use',
      status: 409,
      detail:
        detail ??
        'A request with this Idempotency-Key is still being processed; retry later with the same key.',
      idempotencyKey: key,
      retryAfterSeconds: o.retryAfterSeconds,
    },
    o.problemTypeBase,
  );
}
