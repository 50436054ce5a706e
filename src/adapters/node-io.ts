import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { CapturedResponse } from '../core/claim.js';
import type { BodyDigest, BodyHasher } from '../core/fingerprint.js';
import type { EngineResponse } from '../core/problem.js';
import { type IdempotencyRequest, splitTarget } from '../core/request.js';
import { hook, type Method, sideTable } from './hook.js';

/**
 * An `IncomingMessage` as the engine sees it. `target` is the request target when a framework
 * rewrote `req.url` (Express under a mount point keeps the original in `originalUrl`).
 */
export function viewOfIncoming(req: IncomingMessage, requestTarget?: string): IdempotencyRequest {
  let target = requestTarget ?? req.url ?? '/';
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

type BodyResult = Buffer | BodyDigest | 'too_large' | 'unreadable';

/**
 * Reads the whole body for the fingerprint while leaving the stream to the handler, untouched.
 *
 * The usual case, a request whose body has not started to arrive: tee `push`, the method Node's
 * HTTP parser feeds the body through. Every chunk goes on into the stream as before and is kept here
 * as well; the parser's push of `null` (after it has set `req.complete`) ends the body. Since the
 * body is held in memory anyway, the tee tells the parser to keep going instead of pausing the
 * socket at the stream's high-water mark, which nobody would read down while we wait for the end.
 *
 * Otherwise (part of the body is buffered already, e.g. a handler attached late) read it out and
 * put it back with `unshift`, Node's documented way to "un-consume" data: see `readAndUnshift`.
 */
export function readAndRestoreBody(
  req: IncomingMessage,
  limit: number,
): Promise<Exclude<BodyResult, BodyDigest>>;
export function readAndRestoreBody(
  req: IncomingMessage,
  limit: number,
  hasher: BodyHasher | undefined,
): Promise<BodyResult>;
export function readAndRestoreBody(
  req: IncomingMessage,
  limit: number,
  hasher?: BodyHasher,
): Promise<BodyResult> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) return Promise.resolve('too_large');
  if (declared === '0') return Promise.resolve(Buffer.alloc(0));
  if (req.readableLength === 0 && !req.complete && !req.readableEnded && !req.destroyed)
    return teeBody(req, limit, hasher);
  return new Promise((resolve) => process.nextTick(readAndUnshift, req, limit, resolve));
}

/**
 * The tee. With a `hasher` (a body that is not JSON, when the engine allows it) each chunk is
 * hashed as it arrives and not kept: the stream holds the body for the handler anyway, and the
 * fingerprint needs only its digest, so no second copy is made.
 */
function teeBody(req: IncomingMessage, limit: number, hasher: BodyHasher | undefined): Promise<BodyResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = (result: BodyResult) => {
      settled = true;
      unhook();
      req.removeListener('close', onClose);
      resolve(result);
    };
    const teePush = function teePush(this: IncomingMessage, chunk: unknown, encoding?: BufferEncoding) {
      if (settled) return push.call(this, chunk, encoding);
      if (chunk === null) {
        const ended = push.call(this, chunk, encoding);
        if (hasher !== undefined) finish(hasher.digest());
        else finish(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
        return ended;
      }
      const buffer = chunk as Buffer;
      size += buffer.length;
      if (size > limit) {
        finish('too_large');
        return push.call(this, chunk, encoding);
      }
      if (hasher !== undefined) hasher.update(buffer);
      else chunks.push(buffer);
      push.call(this, chunk, encoding);
      return true;
    };
    const { original: push, unhook } = hook(req, 'push', teePush as Method);
    const onClose = () => {
      if (!req.complete) finish('unreadable');
    };
    req.on('close', onClose);
  });
}

/**
 * The fallback: read what is buffered and what follows, then `unshift` it all back. `req.complete`
 * turns true before the parser pushes the end of the body, so every `readable` event that sees it
 * has all the bytes, and an `end` that a read schedules is cancelled by the unshift in the same
 * tick. An empty body is never read at all, so `end` stays for the handler. This runs a tick late:
 * a body that arrived with the headers is then already complete, and listening cannot make the
 * stream announce its end to nobody (`on('readable')` schedules a `read(0)`, which would emit `end`
 * for an empty body that ended in the same parser pass).
 */
function readAndUnshift(req: IncomingMessage, limit: number, resolve: (body: BodyResult) => void): void {
  if (req.readableEnded || req.destroyed) {
    resolve('unreadable');
    return;
  }
  if (req.complete && req.readableLength === 0) {
    resolve(Buffer.alloc(0));
    return;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  const finish = (result: BodyResult) => {
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
/** One response's capture: what the handler wrote so far, and the methods it wraps. */
interface Capture {
  readonly limit: number;
  readonly onEnd: (captured: CapturedResponse, proceed: () => void) => void;
  writeHead: Method;
  write: Method;
  end: Method;
  chunks: Buffer[];
  size: number;
  overflow: boolean;
  ended: boolean;
  /**
   * The headers as the handler left them, taken when the head is written: before the hooks that
   * run inside writeHead (on-headers), so what an outer layer adds there (a compressor's
   * Content-Encoding) is added again, by that layer, to the replay.
   */
  head: Array<[string, string]> | undefined;
}

const captures = sideTable<Capture>('idemkit.capture');

/**
 * Tees everything the handler writes (writeHead, write, end; so pipe and pipeline too) into a
 * capture, byte-exact, up to `limit` bytes. When the handler calls `end`, `onEnd` gets the capture
 * and a `proceed` that performs the real end: the last bytes leave only once the record is stored,
 * so a client that has its response can count on a replay.
 *
 * One set of wrappers serves every response, each finding its capture in a side table; `hook`
 * puts them in front of the response's methods.
 */
export function interceptResponse(
  res: ServerResponse,
  limit: number,
  onEnd: (captured: CapturedResponse, proceed: () => void) => void,
): { readonly ended: boolean } {
  if (captures.get(res) !== undefined) throw new Error('this response is captured already');
  const capture: Capture = {
    limit,
    onEnd,
    writeHead: hook(res, 'writeHead', WRAPPERS.writeHead as Method).original,
    write: hook(res, 'write', WRAPPERS.write as Method).original,
    end: hook(res, 'end', WRAPPERS.end as Method).original,
    chunks: [],
    size: 0,
    overflow: false,
    ended: false,
    head: undefined,
  };
  captures.set(res, capture);
  return capture;
}

/** Keeps a chunk the handler writes (a copy: it may reuse its buffer once write returns). */
function keep(capture: Capture, chunk: unknown, encoding: unknown): Buffer | undefined {
  if (chunk === undefined || chunk === null || typeof chunk === 'function') return undefined;
  if (typeof chunk !== 'string' && !(chunk instanceof Uint8Array)) {
    throw new TypeError('The "chunk" argument must be of type string or an instance of Buffer or Uint8Array');
  }
  const buffer =
    typeof chunk === 'string'
      ? Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8')
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  capture.size += buffer.length;
  if (capture.overflow) return buffer;
  if (capture.size > capture.limit) {
    capture.overflow = true;
    capture.chunks.length = 0;
  } else {
    capture.chunks.push(typeof chunk === 'string' ? buffer : Buffer.from(buffer));
  }
  return buffer;
}

/** The wrappers, shared by every response; each finds its capture by the response. */
const WRAPPERS = {
  writeHead: function idempotentWriteHead(this: ServerResponse, status: number, ...rest: unknown[]) {
    const capture = captures.get(this)!;
    if (capture.head === undefined && !this.headersSent) {
      // Headers handed to writeHead never show in getHeaders(); they override those set before.
      const headers = typeof rest[0] === 'string' ? rest[1] : rest[0];
      const set = headerPairs(this);
      capture.head = headers === undefined || headers === null ? set : withOverrides(set, pairsOf(headers));
    }
    return capture.writeHead.call(this, status, ...rest);
  },
  write: function idempotentWrite(this: ServerResponse, ...args: unknown[]) {
    const capture = captures.get(this)!;
    if (!capture.ended) keep(capture, args[0], args[1]);
    return capture.write.apply(this, args);
  },
  end: function idempotentEnd(this: ServerResponse, ...args: EndArgs) {
    const capture = captures.get(this)!;
    if (capture.ended) return capture.end.apply(this, args);
    const last = keep(capture, args[0], args[1]); // throws, as Node would, before anything is captured
    capture.ended = true;
    const { size } = capture;
    if (!this.headersSent) {
      // Send the head now, as end() would have, so that nothing done while the record is stored
      // (a late setHeader, a framework's fallback status) can make the client's answer differ
      // from the stored one. Content-Length as Node computes it for a body given whole to end().
      const status = this.statusCode;
      if (status >= 200 && status !== 204 && status !== 304 && !this.hasHeader('content-length')) {
        if (!this.hasHeader('transfer-encoding')) this.setHeader('content-length', size);
      }
      // Through the current writeHead, so hooks installed after ours still run.
      this.writeHead(status);
    }
    // A string is encoded once, here; Node then writes our bytes instead of encoding it again.
    const callback =
      typeof args[0] === 'function' ? args[0] : typeof args[1] === 'function' ? args[1] : args[2];
    const endArgs = typeof args[0] === 'string' ? [last, callback] : args;
    const { chunks, head } = capture;
    const captured: CapturedResponse = {
      status: this.statusCode,
      headers: head ?? headerPairs(this),
      body: capture.overflow ? null : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size),
      bodySize: size,
    };
    // Until the real end, the response reads as ended (writableEnded, and Node's own after-end
    // errors for a stray write or a second end with data), exactly as after a plain end().
    this.finished = true;
    capture.onEnd(captured, () => {
      this.finished = false;
      try {
        capture.end.apply(this, endArgs);
      } catch (error) {
        this.destroy(error as Error);
      }
    });
    return this;
  },
};

/** writeHead's headers argument (an object, a flat `[k, v, k, v]` list, or `[[k, v]]`) as pairs. */
function pairsOf(headers: unknown): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  const add = (name: unknown, value: unknown) => {
    if (name === undefined || value === undefined || value === null) return;
    const lower = String(name).toLowerCase();
    if (Array.isArray(value)) for (const v of value) pairs.push([lower, String(v)]);
    else pairs.push([lower, String(value)]);
  };
  if (Array.isArray(headers)) {
    if (Array.isArray(headers[0])) for (const [name, value] of headers as unknown[][]) add(name, value);
    else for (let i = 0; i + 1 < headers.length; i += 2) add(headers[i], headers[i + 1]);
  } else {
    for (const [name, value] of Object.entries(headers as OutgoingHttpHeaders)) add(name, value);
  }
  return pairs;
}

/** Headers set with setHeader, overridden by those given to writeHead (Node's precedence). */
function withOverrides(
  set: Array<[string, string]>,
  inline: Array<[string, string]>,
): Array<[string, string]> {
  if (set.length === 0) return inline;
  const overridden = new Set(inline.map(([name]) => name));
  return [...set.filter(([name]) => !overridden.has(name)), ...inline];
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
