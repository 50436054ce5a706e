import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Idempotency } from '../core/engine.js';
import { IdempotencyConfigError } from '../core/errors.js';
import { captureClaimed, decideIncoming, firstGuard, type WithRawBody } from './guard.js';
import { sendEngineResponse, viewOfIncoming } from './node-io.js';

/** Express's `next`: call it to go on, or with an error to reach the error handlers. */
export type NextFunction = (error?: unknown) => void;

/** The parts of an Express 4/5 request the middleware reads. */
export type ExpressRequest = IncomingMessage & { originalUrl?: string; rawBody?: unknown };

/**
 * Express 4 and 5 middleware: guards the routes it runs for. Mount it before the body parsers, or
 * keep the parsers' raw bytes with `keepRawBody`; the fingerprint is always over the bytes sent.
 * Refusals and replays are written on `res`; the handler's answer, however it is sent (`json`,
 * `send`, `write`, `pipe`, `sendFile`, the error handler's), is captured and stored.
 */
export function idempotency(
  engine: Idempotency,
): (req: ExpressRequest, res: ServerResponse, next: NextFunction) => void {
  if (typeof engine?.inspect !== 'function') {
    throw new IdempotencyConfigError('idempotency(engine) needs the engine from createIdempotency()');
  }
  return function idempotencyMiddleware(req, res, next) {
    if (!firstGuard(req)) return next();
    // Under a mount point Express rewrites req.url; the fingerprint is over the path the client sent.
    const view = viewOfIncoming(req, req.originalUrl);
    const inspection = engine.inspect(view);
    if (inspection.kind === 'pass') return next();
    if (inspection.kind === 'respond') return sendEngineResponse(res, inspection.response);
    decideIncoming(engine, req, view, inspection.key)
      .then((verdict) => {
        if (verdict.kind === 'respond') return sendEngineResponse(res, verdict.response);
        if (verdict.kind === 'execute') captureClaimed(engine, verdict.claim, res);
        return true;
      })
      .then((run) => run === true && next(), next);
  };
}

/**
 * A body-parser `verify` callback that keeps the bytes a parser read, for the idempotency
 * middleware mounted after it: `express.json({ verify: keepRawBody })`.
 */
export function keepRawBody(req: IncomingMessage, _res: ServerResponse, bytes: Buffer): void {
  (req as WithRawBody).rawBody = bytes;
}
