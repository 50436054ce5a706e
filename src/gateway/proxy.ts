import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { type Readable, Transform } from 'node:stream';
import type { Dispatcher } from 'undici';
import { sendEngineResponse } from '../adapters/node-io.js';
import { type EngineResponse, type ProblemCode, problemResponse } from '../core/problem.js';

/**
 * Why an upstream call failed, as counted in metrics and logs. `refused`: the request never reached
 * the upstream (connection refused, no route, connect timeout). `timeout`: no answer in time.
 * `error`: anything else, e.g. a reset after the request went out: the upstream may have done the work.
 */
export type UpstreamFailure = 'refused' | 'timeout' | 'error';

/** What the upstream client is built from. */
export interface ProxyOptions {
  /** A keep-alive pool to the upstream origin. */
  dispatcher: Dispatcher;
  upstream: URL;
  /** Time for the upstream's response head, then between body chunks. */
  timeoutMs: number;
  /** Largest request body forwarded untouched (guarded requests are limited by the engine). */
  maxBodyBytes: number;
  /** Keep `X-Forwarded-Proto` and `-Host` a client sent (only behind a proxy that sets them). */
  trustProxy: boolean;
  onFailure(kind: UpstreamFailure, error: unknown, req: IncomingMessage): void;
}

/** A call to the upstream that failed before its response head: the answer for the client is ready. */
export interface UpstreamFailed {
  failed: UpstreamFailure | 'too_large';
  answer: EngineResponse;
}

/** The upstream, as the gateway's two paths use it. */
export interface Upstream {
  /** Sends a request with `body` (bytes, a stream, or none); resolves with the response head or a failure. */
  call(
    req: IncomingMessage,
    body: Buffer | Readable | undefined,
  ): Promise<Dispatcher.ResponseData | UpstreamFailed>;
  /** Forwards an unguarded request, streaming both ways, with `--max-body` applied on the way. */
  pass(req: IncomingMessage, res: ServerResponse): Promise<void>;
  /** Reports a failure met while reading the upstream's answer. */
  failed(kind: UpstreamFailure, error: unknown, req: IncomingMessage): void;
}

/** Builds the upstream client: a streaming reverse proxy over undici, with problem+json for its failures. */
export function createUpstream(options: ProxyOptions): Upstream {
  const { dispatcher, timeoutMs } = options;
  const basePath = options.upstream.pathname.replace(/\/$/, '');
  const call: Upstream['call'] = async (req, body) => {
    try {
      return await dispatcher.request({
        origin: options.upstream.origin,
        path: basePath + (req.url ?? '/'),
        method: req.method as Dispatcher.HttpMethod,
        headers: forwardedHeaders(req, options.trustProxy),
        body,
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
      });
    } catch (error) {
      if (error instanceof BodyTooLarge) {
        const answer = problem(413, 'request_body_too_large', tooLarge(options.maxBodyBytes));
        answer.headers.push(['connection', 'close']);
        return { failed: 'too_large', answer };
      }
      const failed = failureOf(error);
      // A client that left while sending its body is not the upstream's failure.
      if (!(req.destroyed && !req.complete)) options.onFailure(failed, error, req);
      const answer =
        failed === 'timeout'
          ? problem(504, 'upstream_timeout', `The upstream API did not answer within ${timeoutMs} ms.`)
          : failed === 'refused'
            ? problem(502, 'upstream_unreachable', 'The upstream API could not be reached.')
            : problem(
                502,
                'upstream_unreachable',
                'The connection to the upstream API failed before its answer.',
              );
      return { failed, answer };
    }
  };
  return {
    call,
    failed: options.onFailure,
    async pass(req, res) {
      const declared = req.headers['content-length'];
      if (declared !== undefined && Number(declared) > options.maxBodyBytes) {
        return sendEngineResponse(
          res,
          problem(413, 'request_body_too_large', tooLarge(options.maxBodyBytes)),
        );
      }
      const upstream = await call(req, hasBody(req) ? limited(req, options.maxBodyBytes) : undefined);
      if ('failed' in upstream) {
        if (upstream.failed !== 'too_large' && req.destroyed && !req.complete) return; // the client left
        return sendEngineResponse(res, upstream.answer);
      }
      res.writeHead(upstream.statusCode, responseHeaders(upstream.headers));
      try {
        for await (const chunk of upstream.body) {
          if (!res.write(chunk) && !res.destroyed) await drainOrClose(res);
        }
      } catch (error) {
        options.onFailure(failureOf(error), error, req);
        res.destroy();
        return;
      }
      res.end();
    },
  };
}

/**
 * Hop-by-hop headers (RFC 9110 section 7.6.1), plus `host` (the upstream's comes from its URL) and
 * `proxy-connection` (a pre-standard spelling some clients still send). Headers that `Connection`
 * names are dropped as well.
 */
const HOP_BY_HOP = new Set([
  // Not hop-by-hop, but answered already: Node sent the client its `100 Continue` (undici refuses it).
  'expect',
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
]);

/**
 * The request headers for the upstream: end-to-end ones as sent, plus `X-Forwarded-For` (appended
 * to) and `X-Forwarded-Proto`/`-Host` (this hop's, unless `trustProxy` keeps a front proxy's: a
 * client could otherwise make the upstream build links to a host of its choosing).
 */
function forwardedHeaders(req: IncomingMessage, trustProxy: boolean): string[] {
  const raw = req.rawHeaders;
  const named = connectionTokens(req.headers.connection);
  const out: string[] = [];
  let forwardedFor: string | undefined;
  let hasProto = false;
  let hasHost = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named?.has(lower)) continue;
    if (lower === 'x-forwarded-for') {
      forwardedFor = forwardedFor === undefined ? raw[i + 1] : `${forwardedFor}, ${raw[i + 1]}`;
      continue;
    }
    if (lower === 'x-forwarded-proto' || lower === 'x-forwarded-host') {
      if (!trustProxy) continue;
      if (lower === 'x-forwarded-proto') hasProto = true;
      else hasHost = true;
    }
    out.push(name, raw[i + 1] as string);
  }
  const client = req.socket.remoteAddress ?? 'unknown';
  out.push('x-forwarded-for', forwardedFor === undefined ? client : `${forwardedFor}, ${client}`);
  if (!hasProto) out.push('x-forwarded-proto', 'encrypted' in req.socket ? 'https' : 'http');
  if (!hasHost && req.headers.host !== undefined) out.push('x-forwarded-host', req.headers.host);
  return out;
}

/** The upstream's response headers, less hop-by-hop ones. */
export function responseHeaders(headers: Dispatcher.ResponseData['headers']): OutgoingHttpHeaders {
  const named = connectionTokens(headers.connection);
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || named?.has(name)) continue;
    out[name] = headers[name];
  }
  return out;
}

function connectionTokens(value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const text = Array.isArray(value) ? value.join(',') : value;
  const tokens = text
    .split(',')
    .map((t) => t.trim().toLowerCase())
    .filter((t) => t !== '' && t !== 'close' && t !== 'keep-alive');
  return tokens.length === 0 ? undefined : new Set(tokens);
}

/** Errors by which the request cannot have reached the upstream. */
const NEVER_SENT = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** Sorts an undici error into the kinds the gateway counts and answers differently. */
export function failureOf(error: unknown): UpstreamFailure {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && NEVER_SENT.has(code)) return 'refused';
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  return 'error';
}

function problem(status: number, code: ProblemCode, detail: string): EngineResponse {
  return problemResponse({ code, status, detail, idempotencyKey: null }, undefined);
}

function tooLarge(limit: number): string {
  return `The request body exceeds ${limit} bytes, the most this gateway forwards.`;
}

class BodyTooLarge extends Error {}

/** Passes a streamed body through, failing it once it passes `limit` bytes. */
function limited(req: IncomingMessage, limit: number): Transform {
  let size = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      size += chunk.byteLength;
      callback(size > limit ? new BodyTooLarge() : null, chunk);
    },
  });
  // Not pipeline: it would destroy the request, and with it the socket the 413 must go out on. A
  // client that aborts its upload still fails the body, so the upstream call ends.
  req.once('close', () => {
    if (!req.complete) counter.destroy(new Error('the client aborted its request body'));
  });
  counter.once('error', () => {
    req.unpipe(counter);
    req.resume(); // read the rest away; the 413 closes the connection after it
  });
  return req.pipe(counter);
}

/** Whether the client sends a body: a non-zero Content-Length, or a chunked one. */
export function hasBody(req: IncomingMessage): boolean {
  const declared = req.headers['content-length'];
  return declared !== undefined ? declared !== '0' : req.headers['transfer-encoding'] !== undefined;
}

/** Resolves when `res` can take more, or is closed (writes to a closed response go nowhere). */
export function drainOrClose(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
