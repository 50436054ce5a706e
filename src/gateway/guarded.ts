import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { beginIncoming } from '../adapters/guard.js';
import { sendEngineResponse, viewOfIncoming } from '../adapters/node-io.js';
import type { Claim } from '../core/claim.js';
import type { Idempotency } from '../core/engine.js';
import { problemResponse } from '../core/problem.js';
import { drainOrClose, failureOf, hasBody, responseHeaders, type Upstream } from './proxy.js';

/**
 * The gateway's guarded path, on the engine's adapter API (inspect, begin, then the claim). The
 * request body is read once, fingerprinted, and sent to the upstream as those same bytes; the
 * upstream's answer is read whole (up to `maxResponseBytes`), stored, then sent in one write. A
 * longer answer is passed on as it comes and stored without its body. A client that leaves does not
 * stop the upstream call: its answer is still stored, so the retry is a replay, not a second run.
 */
export function createGuardedHandler(
  engine: Idempotency,
  upstream: Upstream,
): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  return async function guarded(req, res) {
    const view = viewOfIncoming(req);
    const inspection = engine.inspect(view);
    if (inspection.kind === 'pass') return upstream.pass(req, res);
    if (inspection.kind === 'respond') return sendEngineResponse(res, inspection.response);
    // The bytes are kept: the upstream gets them once the key is claimed.
    const begun = await beginIncoming(engine, req, res, view, inspection.key, true);
    if (begun === undefined) return;
    const claim = begun.kind === 'execute' ? begun.claim : undefined;
    const body = begun.body ?? Buffer.alloc(0);
    const sent = body.byteLength === 0 && !hasBody(req) ? undefined : body;
    const response = await upstream.call(req, sent);
    if ('failed' in response) {
      // Refused: the upstream never had the request, so the retry may run it. Timed out: released
      // too (the operator's --upstream-timeout says when to give up). Any other failure (a reset
      // after the request went out) leaves the upstream's work unknown: the claim stays until its
      // lease lapses, as for a gateway that died, and retries meanwhile get 409 in use.
      if (response.failed === 'error') claim?.detach();
      else await claim?.abandon('handler_error', new Error(`upstream ${response.failed}`));
      return sendEngineResponse(res, response.answer);
    }
    const onFailure = (error: unknown) => upstream.failed(failureOf(error), error, req);
    await relay(
      response.statusCode,
      responseHeaders(response.headers),
      response.body,
      res,
      claim,
      engine,
      onFailure,
    );
  };
}

async function relay(
  status: number,
  headers: OutgoingHttpHeaders,
  body: AsyncIterable<Buffer>,
  res: ServerResponse,
  claim: Claim | undefined,
  engine: Idempotency,
  onFailure: (error: unknown) => void,
): Promise<void> {
  const limit = engine.limits.maxResponseBytes;
  const chunks: Buffer[] = [];
  let size = 0;
  let streaming = false;
  try {
    for await (const chunk of body) {
      size += chunk.byteLength;
      if (!streaming) {
        chunks.push(chunk);
        if (size <= limit) continue;
        // Too long to keep: what was read goes out, the rest follows as it comes.
        streaming = true;
        res.writeHead(status, headers);
        for (const kept of chunks.splice(0)) res.write(kept);
        continue;
      }
      if (!res.write(chunk) && !res.destroyed) await drainOrClose(res);
    }
  } catch (error) {
    // The upstream answered, so it did the work, then broke off the body: the status is stored
    // without the body (a retry gets 409 idempotency_response_not_stored, never a second run;
    // a 5xx status is released as any 5xx is).
    onFailure(error);
    await claim?.finish({ status, headers: pairs(headers), body: null, bodySize: size });
    if (res.headersSent) res.destroy();
    else sendEngineResponse(res, badGateway());
    return;
  }
  const bytes = streaming ? null : chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
  // Stored before the client has it, so a client that has its answer can count on a replay.
  await claim?.finish({ status, headers: pairs(headers), body: bytes, bodySize: size });
  if (streaming) res.end();
  else res.writeHead(status, headers).end(bytes);
}

function pairs(headers: OutgoingHttpHeaders): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const name in headers) {
    const value = headers[name];
    if (Array.isArray(value)) for (const v of value) out.push([name, v]);
    else if (value !== undefined) out.push([name, String(value)]);
  }
  return out;
}

function badGateway() {
  return problemResponse(
    {
      code: 'upstream_unreachable',
      status: 502,
      detail: 'The upstream API broke off its response.',
      idempotencyKey: null,
    },
    undefined,
  );
}
