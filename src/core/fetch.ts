import type { Claim } from './claim.js';
import type { Idempotency } from './engine.js';
import { IdempotencyConfigError } from './errors.js';
import type { EngineResponse } from './problem.js';
import type { IdempotencyRequest } from './request.js';

/** A fetch `Request` as the engine sees it. */
export function viewOfRequest(request: Request): IdempotencyRequest {
  const url = new URL(request.url);
  return {
    method: request.method,
    path: url.pathname,
    query: url.search.length > 0 ? url.search.slice(1) : '',
    header: (name) => request.headers.get(name) ?? undefined,
    raw: request,
  };
}

/** Turns an engine answer into a fetch `Response`. */
export function toResponse(response: EngineResponse): Response {
  const body = NULL_BODY_STATUS.has(response.status) ? null : bytesBody(response.body);
  return new Response(body, { status: response.status, headers: headersInit(response.headers) });
}

/**
 * The headers as a plain record, which runtimes take faster than a list (Hono's node-server writes
 * a record straight to Node); as the list when a name repeats, which a record cannot hold.
 */
function headersInit(pairs: ReadonlyArray<readonly [string, string]>): HeadersInit {
  const record: Record<string, string> = {};
  for (const [name, value] of pairs) {
    if (Object.hasOwn(record, name)) return pairs as Array<[string, string]>;
    record[name] = value;
  }
  return record;
}
const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);

/** TypeScript's DOM types want an ArrayBuffer-backed view; ours always are. */
function bytesBody(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes as Uint8Array<ArrayBuffer>;
}

export async function handleFetch(
  engine: Idempotency,
  request: Request,
  next: (request: Request) => Response | Promise<Response>,
): Promise<Response> {
  const view = viewOfRequest(request);
  const inspection = engine.inspect(view);
  if (inspection.kind === 'pass') return next(request);
  if (inspection.kind === 'respond') return toResponse(inspection.response);
  const { key } = inspection;
  if (request.bodyUsed) {
    // A middleware before this one read the body: its bytes are gone, nothing can be fingerprinted.
    throw new IdempotencyConfigError(
      `The body of ${view.method} ${view.path} was read before the idempotency layer saw it; mount the idempotency middleware before anything that reads the body.`,
    );
  }
  const body = await readLimited(request, engine.limits.maxRequestBytes);
  if (body === 'too_large') return toResponse(engine.rejectBody(view, key, 'body_too_large'));
  if (body === 'unreadable') return toResponse(engine.rejectBody(view, key, 'body_unreadable'));
  const decision = await engine.begin(view, key, body);
  if (decision.kind === 'respond') return toResponse(decision.response);
  // The original body is consumed; the handler gets the same bytes in a fresh Request.
  const forwarded = new Request(request, { body: body.byteLength === 0 ? null : bytesBody(body) });
  if (decision.kind === 'bypass') return next(forwarded);
  const { claim } = decision;
  try {
    const response = await next(forwarded);
    return await captureResponse(response, engine.limits.maxResponseBytes, claim);
  } catch (error) {
    await claim.abandon('handler_error', error);
    throw error;
  }
}

/**
 * Reads the handler's body up to `limit` bytes: a body that ends within it is stored before the
 * response is returned (a client that has it can count on a replay). A longer one, or an endless
 * stream, is passed through as it comes and stored without its body when it ends or when the client
 * cancels it. (A response the runtime drops without reading or cancelling keeps its claim renewed.)
 */
async function captureResponse(response: Response, limit: number, claim: Claim): Promise<Response> {
  const { status } = response;
  const init = { status, statusText: response.statusText, headers: response.headers };
  const reader = response.body?.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const next = reader === undefined ? { done: true as const, value: undefined } : await reader.read();
    if (next.done) {
      const bytes = concat(chunks, size);
      await claim.finish({ status, headers: response.headers, body: bytes, bodySize: size });
      return new Response(NULL_BODY_STATUS.has(status) ? null : bytesBody(bytes), init);
    }
    chunks.push(next.value);
    size += next.value.byteLength;
    if (size > limit) break;
  }
  const body = reader!;
  let settled = false;
  const finishUnstored = async () => {
    if (settled) return;
    settled = true;
    await claim.finish({ status, headers: response.headers, body: null, bodySize: size });
  };
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks.splice(0)) controller.enqueue(chunk);
    },
    async pull(controller) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await body.read();
      } catch (error) {
        // The handler's own stream failed: like a throw, it gives the key back.
        settled = true;
        await claim.abandon('handler_error', error);
        controller.error(error);
        return;
      }
      if (settled) return; // cancelled meanwhile
      if (r.done) {
        await finishUnstored();
        controller.close();
        return;
      }
      size += r.value.byteLength;
      controller.enqueue(r.value);
    },
    async cancel(reason) {
      // The client stopped reading. The handler answered, so the key is not given back: the record
      // is completed without a body (its size as far as it went) and the handler's stream is stopped.
      await finishUnstored();
      await body.cancel(reason).catch(() => {});
    },
  });
  return new Response(stream, init);
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

export async function handleFetchLookup(
  engine: Idempotency,
  request: Request,
): Promise<Response | undefined> {
  const answer = await engine.lookup(viewOfRequest(request));
  return answer === undefined ? undefined : toResponse(answer);
}

/** Reads a request body, stopping early past `limit` bytes. */
async function readLimited(
  request: Request,
  limit: number,
): Promise<Uint8Array | 'too_large' | 'unreadable'> {
  const header = request.headers.get('content-length');
  const declared = header === null ? Number.NaN : Number(header);
  if (declared > limit) return 'too_large';
  if (Number.isSafeInteger(declared) && declared >= 0) {
    // The runtime holds a body to its declared length, so it can be read whole: one call, which
    // some runtimes answer without building a body stream at all.
    try {
      return new Uint8Array(await request.arrayBuffer());
    } catch {
      return 'unreadable';
    }
  }
  if (request.body === null) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel().catch(() => {});
        return 'too_large';
      }
      chunks.push(value);
    }
  } catch {
    return 'unreadable';
  }
  return concat(chunks, size);
}
