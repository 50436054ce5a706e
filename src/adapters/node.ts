import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Claim } from '../core/claim.js';
import type { Idempotency } from '../core/engine.js';
import { problemResponse } from '../core/problem.js';
import type { IdempotencyRequest } from '../core/request.js';
import { beginIncoming, captureClaimed, firstGuard } from './guard.js';
import { sendEngineResponse, viewOfIncoming } from './node-io.js';

/** A `node:http` request handler, sync or async. */
export type NodeHandler<
  Req extends IncomingMessage = IncomingMessage,
  Res extends ServerResponse = ServerResponse,
> = (req: Req, res: Res) => unknown;

/**
 * Guards a `node:http` handler. The handler reads its body as usual (the stream is restored after
 * fingerprinting) and answers however it likes; its answer is captured byte-exact and stored.
 */
export function withIdempotency<Req extends IncomingMessage, Res extends ServerResponse>(
  engine: Idempotency,
  handler: NodeHandler<Req, Res>,
): (req: Req, res: Res) => unknown {
  return function idempotencyHandler(req, res) {
    if (!firstGuard(req)) return handler(req, res);
    const view = viewOfIncoming(req);
    const inspection = engine.inspect(view);
    if (inspection.kind === 'pass') return handler(req, res);
    if (inspection.kind === 'respond') return sendEngineResponse(res, inspection.response);
    return guard(engine, handler, req, res, view, inspection.key);
  };
}

async function guard<Req extends IncomingMessage, Res extends ServerResponse>(
  engine: Idempotency,
  handler: NodeHandler<Req, Res>,
  req: Req,
  res: Res,
  view: IdempotencyRequest,
  key: string,
): Promise<unknown> {
  try {
    const begun = await beginIncoming(engine, req, res, view, key);
    if (begun === undefined) return undefined;
    if (begun.kind === 'bypass') return handler(req, res);
    return runClaimed(engine, begun.claim, handler, req, res);
  } catch (error) {
    return fail(res, error);
  }
}

/**
 * Runs the handler under a claim: its `end` completes the record, a throw releases it. A client
 * that leaves before the answer does not free the key at once: the handler may still be working
 * (a callback-style handler gives no sign of it), and a retry must not run beside it. The claim
 * is kept while an async handler is pending, then left to lapse: the key is free one lease later,
 * and an answer that comes before then is still stored.
 */
function runClaimed<Req extends IncomingMessage, Res extends ServerResponse>(
  engine: Idempotency,
  claim: Claim,
  handler: NodeHandler<Req, Res>,
  req: Req,
  res: Res,
): void {
  let pending = false;
  const capture = captureClaimed(engine, claim, res, () => pending);
  const failed = async (error: unknown) => {
    if (capture.ended) return; // the answer is out; an error after it changes nothing stored
    await claim.abandon('handler_error', error);
    fail(res, error);
  };
  let result: unknown;
  try {
    result = handler(req, res);
  } catch (error) {
    void failed(error);
    return;
  }
  if (isPromiseLike(result)) {
    pending = true;
    result.then(
      () => {
        pending = false;
        if ((res.closed || res.destroyed) && !capture.ended) claim.detach();
      },
      (error: unknown) => {
        pending = false;
        void failed(error);
      },
    );
  }
}

/** A failure outside the handler's answer: a 500 problem when nothing was sent, else cut the response. */
function fail(res: ServerResponse, error: unknown): void {
  void error;
  if (res.headersSent) {
    if (!res.writableEnded) res.destroy();
    return;
  }
  sendEngineResponse(
    res,
    problemResponse(
      {
        code: 'handler_failed',
        status: 500,
        detail: 'The request failed; it may be retried with the same key.',
        idempotencyKey: null,
      },
      undefined,
    ),
  );
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | undefined)?.then === 'function';
}

/**
 * The lookup API for `node:http`: answers `GET`/`DELETE <lookupPath>/:key` and resolves true, or
 * resolves false (and does nothing) for any other request.
 */
export function createLookupHandler(
  engine: Idempotency,
): (req: IncomingMessage, res: ServerResponse) => Promise<boolean> {
  return async function lookupHandler(req, res) {
    const answer = await engine.lookup(viewOfIncoming(req));
    if (answer === undefined) return false;
    sendEngineResponse(res, answer);
    return true;
  };
}

export { viewOfIncoming } from './node-io.js';
