import type { MiddlewareHandler } from 'hono';
import type { Idempotency } from '../core/engine.js';
import { IdempotencyConfigError } from '../core/errors.js';

/**
 * Hono 4 middleware, on any runtime Hono runs on: the fetch face (`engine.handle`) around the rest
 * of the chain. The handler gets a request with the same body bytes; its response, a return value
 * or a stream, is stored, and refusals and replays go out as Hono responses.
 */
export function idempotency(engine: Idempotency): MiddlewareHandler {
  if (typeof engine?.handle !== 'function') {
    throw new IdempotencyConfigError('idempotency(engine) needs the engine from createIdempotency()');
  }
  return async function idempotencyMiddleware(c, next) {
    // Hono's error handler turns a throw below into c.res, so a failed handler reaches the engine
    // as its 5xx answer, and the status policy gives the key back.
    const response = await engine.handle(c.req.raw, async (request) => {
      c.req.raw = request;
      await next();
      return c.res;
    });
    if (response !== c.res) c.res = response;
  };
}
