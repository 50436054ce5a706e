import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { CapturedResponse } from '../core/claim.js';
import type { EngineResponse } from '../core/problem.js';
import { type IdempotencyRequest, splitTarget } from '../core/request.js';

/** An `IncomingMessage` as the engine sees it. */
export function viewOfIncoming(req: IncomingMessage): IdempotencyRequest {
  let target = req.url ?? '/';
  if (!target.startsWith('/')) {
    // absolute-form (RFC 9112 section 3.2.2), as sent to proxies
    try {
      const url = new URL(target);
      target = url.pathname + url.search;
    } catch {
      target = '/';
    }
  }
  const { path, query } = splitTarget(target);
  return {
    method: req.method ?? 'GET',
    path,
    query,
    header(name) {
      const value = req.headers[name];
      return Array.isArray(value) ? value.join(', ') : value;
    },
    raw: req,
  };
}

/**
 * Reads the whole body, then puts it back with `unshift` so the handler reads the same stream as if
 * nobody had touched it (Node's documented use of unshift: "un-consume" data pulled out too early).
 *
 * `req.complete` turns true before the parser pushes the end of the body, so every `readable`
 * event that sees it has all the bytes, and an `end` that a read schedules is cancelled by the
 * unshift in the same tick. An empty body is never read at all, so `end` stays for the handler.
 * Listening starts a tick late: a body that arrived with the headers is then already complete, and
 * listening cannot make the stream announce its end to nobody (`on('readable')` schedules a
 * `read(0)`, which would emit `end` for an empty body that ended in the same parser pass).
 */
export function readAndRestoreBody(
  req: IncomingMessage,
  limit: number,
): Promise<Buffer | 'too_large' | 'unreadable'> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) return Promise.resolve('too_large');
  if (declared === '0') return Promise.resolve(EMPTY);
  return new Promise((resolve) => process.nextTick(collect, req, limit, resolve));
}

function collect(
  req: IncomingMessage,
  limit: number,
  resolve: (body: Buffer | 'too_large' | 'unreadable') => void,
): void {
  if (req.readableEnded || req.destroyed) {
    resolve('unreadable');
    return;
  }
  if (req.complete && req.readableLength === 0) {
    resolve(EMPTY);
    return;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  const finish = (result: Buffer | 'too_large' | 'unreadable') => {
    req.removeListener('readable', onReadable);
    req.removeListener('error', onError);
    req.removeListener('close', onClose);
    resolve(result);
  };
  const onReadable = () => {
    if (req.readableLength > 0) {
      for (let chunk: Buffer | null = req.read(); chunk !== null; chunk = req.read()) {
        size += chunk.length;
        if (size > limit) return finish('too_large');
        chunks.push(chunk);
      }
    }
    if (!req.complete) return;
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
    if (size > 0) req.unshift(body);
    finish(body);
  };
  const onError = () => finish('unreadable');
  const onClose = () => {
    if (!req.complete) finish('unreadable');
  };
  req.on('readable', onReadable);
  req.on('error', onError);
  req.on('close', onClose);
}
const EMPTY = Buffer.alloc(0);

/** Writes an engine answer (a replay or a problem); a response already under way is left alone. */
export function sendEngineResponse(res: ServerResponse, response: EngineResponse): void {
  if (res.headersSent || res.destroyed) return;
  const headers: OutgoingHttpHeaders = {};
  for (const [name, value] of response.headers) {
    const existing = headers[name];
    if (existing === undefined) headers[name] = value;
    else headers[name] = Array.isArray(existing) ? [...existing, value] : [String(existing), value];
  }
  headers['content-length'] = response.body.byteLength;
  res.writeHead(response.status, headers);
  res.end(response.body);
}

type EndArgs = [chunk?: unknown, encoding?: unknown, callback?: unknown];

/**
 * Tees everything the handler writes (writeHead, write, end; so pipe and pipeline too) into a
 * capture, byte-exact, up to `limit` bytes. When the handler calls `end`, `onEnd` gets the capture
 * and a `proceed` that performs the real end: the last bytes leave only once the record is stored,
 * so a client that has its response can count on a replay.
 */
export function interceptResponse(
  res: ServerResponse,
  limit: number,
  onEnd: (captured: CapturedResponse, proceed: () => void) => void,
): { readonly ended: boolean } {
  const chunks: Buffer[] = [];
  let size = 0;
  let overflow = false;
  const state = { ended: false };
  const { write, end, writeHead } = res;

  const keep = (chunk: unknown, encoding: unknown) => {
    if (chunk === undefined || chunk === null || typeof chunk === 'function') return;
    const buffer =
      typeof chunk === 'string'
        ? Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8')
        : Buffer.from(
            (chunk as Uint8Array).buffer,
            (chunk as Uint8Array).byteOffset,
            (chunk as Uint8Array).byteLength,
          );
    size += buffer.length;
    if (overflow) return;
    if (size > limit) {
      overflow = true;
      chunks.length = 0;
    } else {
      // A copy: the handler may reuse its buffer once write returns.
      chunks.push(typeof chunk === 'string' ? buffer : Buffer.from(buffer));
    }
  };

  res.writeHead = function idempotentWriteHead(this: ServerResponse, status: number, ...rest: unknown[]) {
    const reason = typeof rest[0] === 'string' ? rest[0] : undefined;
    const headers = reason === undefined ? rest[0] : rest[1];
    // Headers handed to writeHead bypass getHeaders(); set them so the capture sees them too.
    if (Array.isArray(headers)) {
      const pairs = Array.isArray(headers[0]) ? (headers as string[][]) : chunkPairs(headers as string[]);
      for (const [name, value] of pairs)
        if (name !== undefined && value !== undefined) this.appendHeader(name, value);
    } else if (headers !== undefined && headers !== null) {
      for (const [name, value] of Object.entries(headers as OutgoingHttpHeaders)) {
        if (value !== undefined) this.setHeader(name, value);
      }
    }
    const original = writeHead as (this: ServerResponse, ...a: unknown[]) => ServerResponse;
    return reason === undefined ? original.call(this, status) : original.call(this, status, reason);
  } as ServerResponse['writeHead'];

  res.write = function idempotentWrite(this: ServerResponse, chunk: unknown, encoding?: unknown) {
    if (!state.ended) keep(chunk, encoding);
    // biome-ignore lint/complexity/noArguments: forward exactly what the caller passed
    return (write as (...args: unknown[]) => boolean).apply(this, arguments as unknown as unknown[]);
  } as ServerResponse['write'];

  res.end = function idempotentEnd(this: ServerResponse, ...args: EndArgs) {
    if (state.ended) return (end as (...a: unknown[]) => ServerResponse).apply(this, args);
    state.ended = true;
    keep(args[0], args[1]);
    const captured: CapturedResponse = {
      status: this.statusCode,
      headers: headerPairs(this),
      body: overflow ? null : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size),
      bodySize: size,
    };
    onEnd(captured, () => (end as (...a: unknown[]) => ServerResponse).apply(this, args));
    return this;
  } as ServerResponse['end'];

  return state;
}

function chunkPairs(flat: string[]): string[][] {
  const pairs: string[][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) pairs.push([flat[i]!, flat[i + 1]!]);
  return pairs;
}

/** The response headers as name/value pairs, one pair per value of a repeated header. */
function headerPairs(res: ServerResponse): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  const headers = res.getHeaders();
  for (const name in headers) {
    const value = headers[name];
    if (Array.isArray(value)) for (const v of value) pairs.push([name, v]);
    else if (value !== undefined) pairs.push([name, String(value)]);
  }
  return pairs;
}
