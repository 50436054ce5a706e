import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Claim } from '../core/claim.js';
import type { Idempotency } from '../core/engine.js';
import { IdempotencyConfigError } from '../core/errors.js';
import type { EngineResponse } from '../core/problem.js';
import type { IdempotencyRequest } from '../core/request.js';
import { sideTable } from './hook.js';
import { interceptResponse, readAndRestoreBody, sendEngineResponse } from './node-io.js';

/** A guarded request once its key is decided: answer it, or run the handler (under a claim, or fail-open without). */
export type Verdict =
  | { kind: 'respond'; response: EngineResponse }
  | { kind: 'execute'; claim: Claim; body: Buffer | undefined }
  | { kind: 'bypass'; body: Buffer | undefined };

const guarded = sideTable<{ guarded: true }>('idemkit.guarded');
const GUARDED = { guarded: true } as const;

/**
 * True the first time an idemkit layer sees this request (`req`, or the framework's per-request
 * context), false after: a route guarded twice (app-wide and on the route, or a Nest controller
 * and its method) is decided by the outer layer alone, which the inner one must let through, or it
 * would find the outer's claim in progress and answer 409 for it.
 */
export function firstGuard(request: object): boolean {
  if (guarded.get(request) !== undefined) return false;
  guarded.set(request, GUARDED);
  return true;
}

/** A request object that may carry the bytes a body parser read (`rawBody`: NestJS, `keepRawBody`). */
export type WithRawBody = IncomingMessage & { rawBody?: unknown; _body?: unknown };

/**
 * The guarded half shared by every face over node:http (node, Express, Fastify, NestJS, the
 * gateway): finds the body bytes the client sent, then claims the key or answers from the store.
 * `known` is the body when the framework already holds it; otherwise `req` is read, and its stream
 * is left to the handler untouched. A body a parser consumed without keeping its bytes cannot be
 * fingerprinted: that is a setup error, thrown as `IdempotencyConfigError`.
 */
export async function decideIncoming(
  engine: Idempotency,
  req: WithRawBody,
  view: IdempotencyRequest,
  key: string,
  known?: Buffer,
  keepBytes = false,
): Promise<Verdict> {
  const body = await bodyOf(engine, req, known, keepBytes);
  if (typeof body === 'string') {
    const reason = body === 'too_large' ? 'body_too_large' : 'body_unreadable';
    return { kind: 'respond', response: engine.rejectBody(view, key, reason) };
  }
  const decision = await engine.begin(view, key, body);
  if (decision.kind === 'respond') return { kind: 'respond', response: decision.response };
  const bytes = Buffer.isBuffer(body) ? body : undefined;
  return decision.kind === 'execute'
    ? { kind: 'execute', claim: decision.claim, body: bytes }
    : { kind: 'bypass', body: bytes };
}

/** `decideIncoming`, answering refusals and stored answers on `res`; `undefined` once answered. */
export async function beginIncoming(
  engine: Idempotency,
  req: IncomingMessage,
  res: ServerResponse,
  view: IdempotencyRequest,
  key: string,
  keepBytes = false,
): Promise<Exclude<Verdict, { kind: 'respond' }> | undefined> {
  const verdict = await decideIncoming(engine, req, view, key, undefined, keepBytes);
  if (verdict.kind !== 'respond') return verdict;
  sendEngineResponse(res, verdict.response);
  return undefined;
}

async function bodyOf(engine: Idempotency, req: WithRawBody, known: Buffer | undefined, keepBytes: boolean) {
  const limit = engine.limits.maxRequestBytes;
  const rawBody = known ?? req.rawBody;
  if (rawBody instanceof Uint8Array) {
    if (rawBody.byteLength > limit) return 'too_large' as const;
    return Buffer.isBuffer(rawBody)
      ? rawBody
      : Buffer.from(rawBody.buffer, rawBody.byteOffset, rawBody.byteLength);
  }
  // body-parser marks a body it read with `_body`; a stream read to its end by anyone else is ended.
  if (req._body === true || req.readableEnded) {
    if (req.headers['content-length'] === '0') return Buffer.alloc(0);
    throw new IdempotencyConfigError(
      `The body of ${req.method} ${req.url} was read before the idempotency layer saw it, so it cannot be fingerprinted. Mount the idempotency middleware before the body parser, or keep the raw bytes: Express \`express.json({ verify: keepRawBody })\`, NestJS \`NestFactory.create(AppModule, { rawBody: true })\`.`,
    );
  }
  // Read from the stream: a body that is not JSON is hashed as it arrives, unless its bytes are wanted.
  const hasher = keepBytes ? undefined : engine.bodyHasher(req.headers['content-type']);
  return readAndRestoreBody(req, limit, hasher);
}

/**
 * Captures the handler's answer on `res` for the claim: the record is completed when the handler
 * ends the response (and the status policy stores it or gives the key back). A response closed
 * before its end (the client left) keeps the claim but is not renewed again unless `busy()` says
 * the handler still runs: the handler may still answer, and a retry must not run beside it.
 */
export function captureClaimed(
  engine: Idempotency,
  claim: Claim,
  res: ServerResponse,
  busy: () => boolean = () => false,
): { readonly ended: boolean } {
  const capture = interceptResponse(res, engine.limits.maxResponseBytes, (captured, proceed) => {
    void claim.finish(captured).then(proceed);
  });
  // Asked only when a renewal falls due, instead of a close listener on every response.
  // (`destroyed` for responses without `closed`, such as HTTP/2's compatibility response.)
  claim.renewWhile(() => capture.ended || !(res.closed || res.destroyed) || busy());
  return capture;
}
