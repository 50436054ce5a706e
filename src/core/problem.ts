/** A response the engine answers with itself (an error or a replay), framework-neutral. */
export interface EngineResponse {
  status: number;
  headers: Array<[string, string]>;
  body: Uint8Array;
}

/** Every `code` idemkit puts in a problem+json answer. */
export type ProblemCode =
  | 'idempotency_key_missing'
  | 'idempotency_key_invalid'
  | 'idempotency_key_in_use'
  | 'idempotency_key_reused'
  | 'idempotency_key_not_found'
  | 'idempotency_response_not_stored'
  | 'idempotency_store_unavailable'
  | 'idempotency_hook_failed'
  | 'request_body_unreadable'
  | 'request_body_too_large'
  | 'handler_failed'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'unauthorized'
  | 'not_found'
  | 'request_target_invalid'
  | 'method_not_allowed';

const TITLES: Record<ProblemCode, string> = {
  idempotency_key_missing: 'Idempotency-Key header missing',
  idempotency_key_invalid: 'Idempotency-Key header invalid',
  idempotency_key_in_use: 'Idempotency key in use',
  idempotency_key_reused: 'Idempotency key reused with a different request',
  idempotency_key_not_found: 'Idempotency key not found',
  idempotency_response_not_stored: 'Original response not stored',
  idempotency_store_unavailable: 'Idempotency store unavailable',
  idempotency_hook_failed: 'Idempotency scope or fingerprint hook failed',
  request_body_unreadable: 'Request body unreadable',
  request_body_too_large: 'Request body too large',
  handler_failed: 'Request handler failed',
  upstream_unreachable: 'Upstream unreachable',
  upstream_timeout: 'Upstream timed out',
  unauthorized: 'Unauthorized',
  not_found: 'Not found',
  request_target_invalid: 'Request target invalid',
  method_not_allowed: 'Method not allowed',
};

/** The members of an RFC 9457 problem details object that idemkit writes. */
export interface Problem {
  code: ProblemCode;
  status: number;
  detail: string;
  idempotencyKey: string | null;
  /** Extension members, written as given (snake_case on the wire). */
  extra?: Record<string, unknown>;
  retryAfterSeconds?: number;
}

const encoder = new TextEncoder();

/** RFC 9110 section 15 reason phrases of the statuses idemkit answers with (no node:http in the core). */
const STATUS_PHRASES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  409: 'Conflict',
  413: 'Content Too Large',
  422: 'Unprocessable Content',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/**
 * Renders a problem as `application/problem+json` (RFC 9457). Without a `problemTypeBase` the type is
 * `about:blank`, and then section 4.2.1 asks for the HTTP status phrase as title; `code` carries the
 * specific reason either way.
 */
export function problemResponse(problem: Problem, problemTypeBase: string | undefined): EngineResponse {
  const title =
    problemTypeBase === undefined ? (STATUS_PHRASES[problem.status] ?? 'Error') : TITLES[problem.code];
  const document = {
    type: problemTypeBase === undefined ? 'about:blank' : `${problemTypeBase}${problem.code}`,
    title,
    status: problem.status,
    detail: problem.detail,
    code: problem.code,
    idempotency_key: problem.idempotencyKey,
    ...problem.extra,
  };
  const headers: Array<[string, string]> = [
    ['content-type', 'application/problem+json'],
    ['cache-control', 'no-store'],
  ];
  if (problem.retryAfterSeconds !== undefined)
    headers.push(['retry-after', String(problem.retryAfterSeconds)]);
  return { status: problem.status, headers, body: encoder.encode(JSON.stringify(document)) };
}
