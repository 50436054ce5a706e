import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { sendEngineResponse, viewOfIncoming } from '../adapters/node-io.js';
import type { Idempotency } from '../core/engine.js';
import type { IdempotencyEvent } from '../core/events.js';
import { defaultScope } from '../core/options.js';
import { problemResponse } from '../core/problem.js';
import type { IdempotencyRequest } from '../core/request.js';
import type { IdempotencyStore } from '../core/store.js';
import type { GatewayMetrics } from './metrics.js';

// The gateway's own endpoints (health, metrics, the admin lookup API) and its audit log.

/** Where the admin lookup API answers; `/healthz` and `/metrics` are the gateway's own too. */
export const ADMIN_PREFIX = '/_idemkit/keys';

/** An admin lookup names the caller's scope itself (`?scope=`, as the audit log prints it). */
export class AdminLookup {
  constructor(readonly scope: string) {}
}

/** The admin lookup API: the engine's lookup, for any scope, behind a bearer token. */
const BEARER = /^bearer +([^\s]+)$/i;

export function createAdminHandler(
  engine: Idempotency,
  token: string | undefined,
): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const adminToken = token === undefined ? undefined : digest(token);
  return async function admin(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // The scheme is case-insensitive (RFC 9110 section 11.1), then one token and nothing after it
    // (RFC 6750 section 2.1). The token is compared as SHA-256 digests in constant time: equal
    // lengths, so not even its length leaks.
    const credentials = BEARER.exec(req.headers.authorization ?? '');
    const given = digest(credentials?.[1] ?? '');
    if (adminToken === undefined || !timingSafeEqual(given, adminToken)) {
      const status = adminToken === undefined ? 404 : 401;
      const detail =
        adminToken === undefined
          ? 'The admin API is off; start the gateway with --admin-token to turn it on.'
          : 'The admin API needs Authorization: Bearer <admin token>.';
      const response = problemResponse(
        {
          code: adminToken === undefined ? 'not_found' : 'unauthorized',
          status,
          detail,
          idempotencyKey: null,
        },
        undefined,
      );
      if (status === 401) response.headers.push(['www-authenticate', 'Bearer']);
      return sendEngineResponse(res, response);
    }
    const view = viewOfIncoming(req);
    const scope = new URLSearchParams(view.query).get('scope') ?? defaultScope(withoutAuthorization(view));
    const answer = await engine.lookup({ ...view, raw: new AdminLookup(scope) });
    sendEngineResponse(
      res,
      answer ??
        problemResponse(
          {
            code: 'idempotency_key_invalid',
            status: 400,
            detail: `Use ${ADMIN_PREFIX}/<key>?scope=<scope>.`,
            idempotencyKey: null,
          },
          undefined,
        ),
    );
  };
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** A request target that is neither a path nor an absolute URL. */
export function badTarget(res: ServerResponse): Promise<void> {
  sendEngineResponse(
    res,
    problemResponse(
      {
        code: 'request_target_invalid',
        status: 400,
        detail: 'The request target must be a path or an absolute URL.',
        idempotencyKey: null,
      },
      undefined,
    ),
  );
  return Promise.resolve();
}

/**
 * A CONNECT request: the gateway is a reverse proxy, not a tunnel. Node would close the socket
 * without a word when the server has no 'connect' listener; this answers 405 and closes it.
 */
export function refuseTunnel(socket: Socket): void {
  const answer = problemResponse(
    {
      code: 'method_not_allowed',
      status: 405,
      detail: 'The gateway does not open tunnels (CONNECT); send requests to it directly.',
      idempotencyKey: null,
    },
    undefined,
  );
  const head = [
    'HTTP/1.1 405 Method Not Allowed',
    ...answer.headers.map(([name, value]) => `${name}: ${value}`),
    'allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS',
    `content-length: ${answer.body.byteLength}`,
    'connection: close',
    '',
    '',
  ].join('\r\n');
  socket.on('error', () => {}); // a client that is gone already
  // Closed once written: Node's server sockets allow half-open connections, and this one is no
  // longer covered by the server's request timeouts.
  socket.setTimeout(5_000, () => socket.destroy());
  socket.end(Buffer.concat([Buffer.from(head, 'latin1'), answer.body]), () => socket.destroy());
}

/** The view an admin request's scope defaults to: that of a caller without credentials. */
function withoutAuthorization(view: IdempotencyRequest): IdempotencyRequest {
  return { ...view, header: (name) => (name === 'authorization' ? undefined : view.header(name)) };
}

/** `GET /healthz`: 200 after a round trip to the store, else 503 problem+json. */
export async function health(store: IdempotencyStore, res: ServerResponse): Promise<void> {
  try {
    // One round trip to the store: a read of a key no caller can have (keys are printable ASCII).
    await store.get('\n\u0000healthz', { now: Date.now() });
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end('{"status":"ok"}');
  } catch {
    sendEngineResponse(
      res,
      problemResponse(
        {
          code: 'idempotency_store_unavailable',
          status: 503,
          detail: 'The idempotency store cannot be reached.',
          idempotencyKey: null,
          retryAfterSeconds: 1,
        },
        undefined,
      ),
    );
  }
}

/** `GET /metrics`: the Prometheus text format. */
export async function scrape(metrics: GatewayMetrics, res: ServerResponse): Promise<void> {
  const body = await metrics.registry.metrics();
  res.writeHead(200, { 'content-type': metrics.registry.contentType });
  res.end(body);
}

/** One JSON log line per engine event: keys, scopes and statuses, never a body. */
export function logEvent(log: Logger, event: IdempotencyEvent): void {
  const { type, ...fields } = event;
  if (type === 'store_error' || type === 'hook_error') {
    const { error, ...rest } = fields as { error: unknown };
    log.error({ event: type, ...rest, err: error }, type);
  } else if (type === 'released' && event.error !== undefined) {
    const { error, ...rest } = fields as { error: unknown };
    log.warn({ event: type, ...rest, err: error }, type);
  } else if (type === 'lease_taken_over') log.warn({ event: type, ...fields }, type);
  else log.info({ event: type, ...fields }, type);
}
