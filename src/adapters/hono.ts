import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Context, MiddlewareHandler } from 'hono';
import type { Idempotency } from '../core/engine.js';
import { IdempotencyConfigError } from '../core/errors.js';
import { toResponse } from '../core/fetch.js';
import type { EngineResponse } from '../core/problem.js';
import { captureClaimed, decideIncoming, firstGuard } from './guard.js';
import { viewOfIncoming } from './node-io.js';

/**
 * Hono 4 middleware, for every runtime Hono runs on. It is the fetch face (`engine.handle`) around
 * the rest of the chain: the handler gets a request with the same body bytes, and its response, a
 * return value or a stream, is stored. On Node with `@hono/node-server`, whose requests and
 * responses are Node's own underneath, it works on those instead (as the node:http face does),
 * which spares building Web streams for every body; the answers are the same. Refusals and
 * replays go out as Hono responses, so middleware before it sees them.
 */
export function idempotency(engine: Idempotency): MiddlewareHandler {
  if (typeof engine?.handle !== 'function') {
    throw new IdempotencyConfigError('idempotency(engine) needs the engine from createIdempotency()');
  }
  return async function idempotencyMiddleware(c, next) {
    if (!firstGuard(c)) return next();
    const node = nodeBindings(c);
    if (node !== undefined) return guardOnNode(engine, c, next, node.incoming, node.outgoing);
    // Hono's error handler turns a throw below into c.res, so a failed handler reaches the engine
    // as its 5xx answer, and the status policy gives the key back.
    let downstream: Response | undefined;
    const response = await engine.handle(c.req.raw, async (request) => {
      c.req.raw = request;
      await next();
      downstream = c.res;
      return downstream;
    });
    if (response === downstream) return;
    // The captured copy already carries every header the chain set: it replaces c.res whole, as
    // Hono's merge of the two would rebuild the body as a stream.
    if (downstream !== undefined) c.res = undefined;
    c.res = response;
  };
}

/** The node:http request and response under a `@hono/node-server` context (`c.env`), if any. */
function nodeBindings(c: Context): { incoming: IncomingMessage; outgoing: ServerResponse } | undefined {
  const env = c.env as { incoming?: IncomingMessage; outgoing?: ServerResponse } | undefined;
  const outgoing = env?.outgoing;
  if (env?.incoming === undefined || typeof outgoing?.writeHead !== 'function') return undefined;
  return { incoming: env.incoming, outgoing };
}

/** The guard on Node's own objects: the body read and left to the request, the answer captured as written. */
async function guardOnNode(
  engine: Idempotency,
  c: Context,
  next: () => Promise<void>,
  incoming: IncomingMessage,
  outgoing: ServerResponse,
): Promise<void> {
  const view = viewOfIncoming(incoming);
  const inspection = engine.inspect(view);
  if (inspection.kind === 'pass') return next();
  const answer = (response: EngineResponse) => {
    // No handler will read the body: let it flow out now, or node-server drains it on timers.
    incoming.resume();
    c.res = toResponse(response);
  };
  if (inspection.kind === 'respond') return answer(inspection.response);
  const verdict = await decideIncoming(engine, incoming, view, inspection.key);
  if (verdict.kind === 'respond') return answer(verdict.response);
  if (verdict.kind === 'execute') captureClaimed(engine, verdict.claim, outgoing);
  await next();
}
