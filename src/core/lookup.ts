import { inUseAnswer } from './answers.js';
import type { IdempotencyEvent } from './events.js';
import { isJsonMediaType } from './fingerprint.js';
import { defaultScope, type NormalizedOptions } from './options.js';
import type { EngineResponse, Problem } from './problem.js';
import type { IdempotencyRequest } from './request.js';
import type { IdempotencyRecord } from './store.js';

const encoder = new TextEncoder();

/** What a scope hook that threw leaves behind. */
class HookError {
  constructor(readonly error: unknown) {}
}
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * `GET <lookupPath>/:key` returns the caller's own record; `DELETE` forgets a completed one. A key
 * stored under another scope is simply not found, so the answer never tells whether it exists.
 */
export async function lookup(
  o: NormalizedOptions,
  problem: (p: Problem) => EngineResponse,
  emit: (event: IdempotencyEvent) => void,
  request: IdempotencyRequest,
): Promise<EngineResponse | undefined> {
  if (!request.path.startsWith(o.lookupPrefix)) return undefined;
  let key: string;
  try {
    key = decodeURIComponent(request.path.slice(o.lookupPrefix.length));
  } catch {
    key = '';
  }
  if (!/^[\x20-\x7e]{1,255}$/.test(key)) {
    return problem({
      code: 'idempotency_key_invalid',
      status: 400,
      detail:
        'The key in the path must be 1 to 255 printable ASCII characters, percent-encoded where needed.',
      idempotencyKey: null,
    });
  }
  if (request.method !== 'GET' && request.method !== 'DELETE') {
    return {
      status: 405,
      headers: [
        ['allow', 'GET, DELETE'],
        ['content-type', 'text/plain; charset=utf-8'],
      ],
      body: encoder.encode('Method Not Allowed'),
    };
  }
  const at = () => ({ at: o.clock.now(), method: request.method, path: request.path, key });
  let scope: unknown;
  try {
    scope = o.scope === undefined ? defaultScope(request) : await o.scope(request);
  } catch (error) {
    scope = new HookError(error);
  }
  if (typeof scope !== 'string') {
    const error =
      scope instanceof HookError ? scope.error : new TypeError('options.scope must return a string');
    emit({ type: 'hook_error', hook: 'scope', error, ...at() });
    return problem({
      code: 'idempotency_hook_failed',
      status: 500,
      detail: 'The server could not tell whose key this is.',
      idempotencyKey: key,
    });
  }
  try {
    const response = await answer(o, problem, request.method, key, `${scope}\n${key}`);
    if (request.method === 'DELETE' && response.status === 204) emit({ type: 'forgotten', scope, ...at() });
    return response;
  } catch (error) {
    emit({ type: 'store_error', operation: `lookup ${request.method}`, error, scope, ...at() });
    return problem({
      code: 'idempotency_store_unavailable',
      status: 503,
      detail: 'The idempotency store cannot be reached.',
      idempotencyKey: key,
      retryAfterSeconds: o.retryAfterSeconds,
    });
  }
}

async function answer(
  o: NormalizedOptions,
  problem: (p: Problem) => EngineResponse,
  method: string,
  key: string,
  scopeKey: string,
): Promise<EngineResponse> {
  const now = o.clock.now();
  const notFound = () =>
    problem({
      code: 'idempotency_key_not_found',
      status: 404,
      detail:
        'No record for this Idempotency-Key under your credentials (never used, expired, or forgotten).',
      idempotencyKey: key,
    });
  if (method === 'DELETE') {
    if (await o.store.delete(scopeKey, { now })) return { status: 204, headers: [], body: new Uint8Array(0) };
    const record = await o.store.get(scopeKey, { now });
    if (record === undefined) return notFound();
    return inUseAnswer(
      o,
      key,
      'The request with this Idempotency-Key is still running; only a completed key can be forgotten.',
    );
  }
  const record = await o.store.get(scopeKey, { now });
  if (record === undefined) return notFound();
  return {
    status: 200,
    headers: [
      ['content-type', 'application/json'],
      ['cache-control', 'no-store'],
    ],
    body: encoder.encode(JSON.stringify(describeRecord(key, record))),
  };
}

function describeRecord(key: string, record: IdempotencyRecord): Record<string, unknown> {
  const common = {
    idempotency_key: key,
    status: record.state === 'completed' ? 'completed' : 'in_progress',
    fingerprint: record.fingerprint,
    request: { method: record.request.method, path: record.request.path, body_hash: record.request.bodyHash },
    created_at: new Date(record.createdAt).toISOString(),
    expires_at: new Date(record.expiresAt).toISOString(),
  };
  if (record.state === 'in-progress') return common;
  const { response } = record;
  const contentType = response.headers.find(([name]) => name === 'content-type')?.[1];
  return {
    ...common,
    completed_at: new Date(record.completedAt).toISOString(),
    response: {
      status: response.status,
      headers: response.headers,
      body_size: response.bodySize,
      body_stored: response.body !== null,
      ...describeBody(response.body, contentType),
    },
  };
}

/** The body as text when it is textual UTF-8, else as base64. */
function describeBody(body: Uint8Array | null, contentType: string | undefined): Record<string, string> {
  if (body === null) return {};
  if (contentType !== undefined && (isJsonMediaType(contentType) || contentType.startsWith('text/'))) {
    try {
      return { body: utf8.decode(body) };
    } catch {
      // not UTF-8 after all: fall through to base64
    }
  }
  return { body_base64: Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('base64') };
}
