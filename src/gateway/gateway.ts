import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { Pool } from 'undici';
import { sendEngineResponse } from '../adapters/node-io.js';
import { createIdempotency, type Idempotency } from '../core/engine.js';
import { defaultScope } from '../core/options.js';
import { problemResponse } from '../core/problem.js';
import type { IdempotencyStore } from '../core/store.js';
import { createGuardedHandler } from './guarded.js';
import { createGatewayMetrics, type GatewayMetrics } from './metrics.js';
import {
  ADMIN_PREFIX,
  AdminLookup,
  badTarget,
  createAdminHandler,
  health,
  logEvent,
  refuseTunnel,
  scrape,
} from './operations.js';
import { createUpstream } from './proxy.js';
import { createRouteTable, DEFAULT_ROUTES, type GatewayRoute } from './routes.js';

/** Options of `createGateway`; the CLI fills them from flags, `IDEMKIT_*` and a config file. */
export interface GatewayOptions {
  /** The API to protect: an http(s) origin, optionally with a base path. */
  upstream: URL | string;
  /** Where records live. Yours to close, after the gateway's `close()`. */
  store: IdempotencyStore;
  /** Guarded routes. @default POST and PATCH on every path */
  routes?: GatewayRoute[];
  /** @default 86_400_000 (24 h) */
  ttlMs?: number;
  /** @default 10_000 */
  leaseMs?: number;
  /** @default true */
  requireKey?: boolean;
  /** @default 409 */
  conflictStatus?: 409 | 422 | 400;
  /** Larger request bodies get 413. @default 10_485_760 */
  maxBodyBytes?: number;
  /** Larger responses are passed on but not stored. @default 1_048_576 */
  maxResponseBytes?: number;
  /** Bearer token of the admin API under `/_idemkit/keys/`; without it that API answers 404. @default undefined */
  adminToken?: string;
  /** Keep the `X-Forwarded-Proto` and `-Host` a client sends: only behind a proxy that sets them. @default false */
  trustProxy?: boolean;
  /** Time for the upstream's response head, then between body chunks; then 504. @default 30_000 */
  upstreamTimeoutMs?: number;
  /**
   * Time for a client to send its whole request, head and body; then Node answers 408 and closes
   * the connection (a slow-loris client cannot hold a request open). @default 30_000
   */
  requestTimeoutMs?: number;
  /** Receives every event as a log line (the audit trail) and upstream failures. @default no logs */
  logger?: Logger;
}

/** A running gateway: a `node:http` server in front of the upstream. */
export interface Gateway {
  readonly server: http.Server;
  readonly engine: Idempotency;
  readonly metrics: GatewayMetrics;
  /** Starts listening; resolves with the bound address. */
  listen(port: number, host?: string): Promise<AddressInfo>;
  /**
   * Graceful stop: refuse new connections, let requests in flight finish (at most `timeoutMs`,
   * then cut them), then close the upstream pool. The store is left open for its owner to close.
   */
  close(timeoutMs?: number): Promise<void>;
}

/** Creates the gateway; call `listen` to start it. */
export function createGateway(options: GatewayOptions): Gateway {
  const upstream = typeof options.upstream === 'string' ? new URL(options.upstream) : options.upstream;
  const metrics = createGatewayMetrics();
  const log = options.logger;
  const routes = createRouteTable(options.routes ?? DEFAULT_ROUTES);
  const engine = createIdempotency({
    store: metrics.timed(options.store),
    methods: routes.methods,
    ...(options.ttlMs === undefined ? {} : { ttlMs: options.ttlMs }),
    ...(options.leaseMs === undefined ? {} : { leaseMs: options.leaseMs }),
    ...(options.requireKey === undefined ? {} : { required: options.requireKey }),
    ...(options.conflictStatus === undefined ? {} : { conflictStatus: options.conflictStatus }),
    ...(options.maxBodyBytes === undefined ? {} : { maxRequestBytes: options.maxBodyBytes }),
    ...(options.maxResponseBytes === undefined ? {} : { maxResponseBytes: options.maxResponseBytes }),
    lookupPath: ADMIN_PREFIX,
    scope: (request) => (request.raw instanceof AdminLookup ? request.raw.scope : defaultScope(request)),
    onEvent(event) {
      metrics.record(event);
      if (log !== undefined) logEvent(log, event);
    },
  });
  const dispatcher = new Pool(upstream.origin, { keepAliveTimeout: 10_000 });
  const upstreamClient = createUpstream({
    dispatcher,
    upstream,
    timeoutMs: options.upstreamTimeoutMs ?? 30_000,
    maxBodyBytes: engine.limits.maxRequestBytes,
    trustProxy: options.trustProxy ?? false,
    onFailure(kind, error, req) {
      metrics.upstreamFailure(kind);
      log?.warn(
        { event: 'upstream_failure', kind, method: req.method, path: req.url, err: error },
        'upstream failure',
      );
    },
  });
  const guarded = createGuardedHandler(engine, upstreamClient);
  const admin = createAdminHandler(engine, options.adminToken);
  let closing = false;
  let inFlight = 0;
  let idle: (() => void) | undefined;

  const requestTimeout = options.requestTimeoutMs ?? 30_000;
  const server = http.createServer(
    {
      requestTimeout,
      headersTimeout: Math.min(requestTimeout, 60_000),
      // Node looks for overdue requests this often (30 s by default, longer than a short timeout).
      connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(requestTimeout / 4))),
    },
    (req, res) => {
      if (closing) res.setHeader('connection', 'close');
      // In flight until the work is done, not until the client leaves: a guarded answer is still
      // being stored after a client has gone, and shutdown must wait for it.
      inFlight += 1;
      route(req, res)
        .catch((error: unknown) => failed(res, error))
        .finally(() => {
          inFlight -= 1;
          if (!closing) return;
          server.closeIdleConnections();
          if (inFlight === 0) idle?.();
        });
    },
  );

  server.on('connect', (_req, socket) => refuseTunnel(socket as Socket));

  function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url = req.url ?? '/';
    if (!url.startsWith('/')) {
      // Absolute form (RFC 9112 section 3.2.2), as a client that takes the gateway for its proxy
      // sends: routed and forwarded by its path, or the guard would not see it.
      const target = URL.canParse(url) ? new URL(url) : undefined;
      if (target === undefined || !url.includes('://')) return badTarget(res);
      url = target.pathname + target.search;
      req.url = url;
    }
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    if (path === '/healthz') return health(options.store, res);
    if (path === '/metrics') return scrape(metrics, res);
    if (path === ADMIN_PREFIX || path.startsWith(`${ADMIN_PREFIX}/`)) return admin(req, res);
    return routes.matches(req.method ?? 'GET', path) ? guarded(req, res) : passed(req, res);
  }

  function passed(req: IncomingMessage, res: ServerResponse): Promise<void> {
    metrics.passed();
    return upstreamClient.pass(req, res);
  }

  /** A failure of the gateway itself (never expected): logged, and a 500 problem if nothing was sent. */
  function failed(res: ServerResponse, error: unknown): void {
    log?.error({ event: 'gateway_error', err: error }, 'gateway error');
    if (res.headersSent) res.destroy();
    else
      sendEngineResponse(
        res,
        problemResponse(
          {
            code: 'handler_failed',
            status: 500,
            detail: 'The gateway failed; the request may be retried with the same key.',
            idempotencyKey: null,
          },
          undefined,
        ),
      );
  }

  return {
    server,
    engine,
    metrics,
    listen(port, host) {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    async close(timeoutMs = 30_000) {
      closing = true;
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      if (inFlight > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, timeoutMs);
          idle = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      server.closeAllConnections();
      await stopped;
      // After the deadline, calls still out to the upstream are cut rather than awaited.
      if (inFlight > 0) await dispatcher.destroy();
      else await dispatcher.close();
    },
  };
}
