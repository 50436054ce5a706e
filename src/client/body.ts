import { UnreplayableBodyError } from './errors.js';

/** A request reduced to what every attempt re-sends: the same URL, method, headers and body bytes. */
export interface PreparedRequest {
  url: string;
  method: string;
  headers: Headers;
  body: Uint8Array<ArrayBuffer> | undefined;
}

/**
 * Reads the request once, buffering its body so that every retry sends identical bytes. Strings,
 * ArrayBuffers, typed arrays, DataViews, Blobs, URLSearchParams and FormData are serialised the way
 * fetch would (with the same default `Content-Type`, multipart boundary included). A `ReadableStream`
 * body is refused: a stream is read once, and buffering one the caller chose to stream could be
 * unbounded. A `Request` passed as `input` is buffered whole.
 */
export async function prepareRequest(input: RequestInfo | URL, init: RequestInit): Promise<PreparedRequest> {
  if (isReadableStream(init.body))
    throw new UnreplayableBodyError(
      'A ReadableStream body cannot be replayed on retry; pass a string, ArrayBuffer, Uint8Array or Blob',
    );
  const request = new Request(input, {
    method: init.method,
    headers: init.headers,
    body: init.body,
  });
  const body = request.body === null ? undefined : new Uint8Array(await request.arrayBuffer());
  return { url: request.url, method: request.method, headers: new Headers(request.headers), body };
}

function isReadableStream(value: unknown): boolean {
  return typeof ReadableStream !== 'undefined' && value instanceof ReadableStream;
}
