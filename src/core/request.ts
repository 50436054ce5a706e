/** A framework-neutral view of an incoming request, handed to the `scope` and `fingerprint` hooks. */
export interface IdempotencyRequest {
  /** Upper-case method, e.g. `POST`. */
  method: string;
  /** The path without the query, as the client sent it (not decoded). */
  path: string;
  /** The query string without `?`; empty when there is none. */
  query: string;
  /** A header's value, by lower-case name; several lines of one header arrive joined with ", ". */
  header(name: string): string | undefined;
  /** The framework's own request object (`IncomingMessage`, `Request`, ...), for hooks that need it. */
  raw: unknown;
}

/** The request as the fingerprint hook sees it: the view plus the body bytes the client sent. */
export interface FingerprintRequest extends IdempotencyRequest {
  body: Uint8Array;
}

/** Splits an origin-form request target (`/a/b?x=1`) into path and query. */
export function splitTarget(target: string): { path: string; query: string } {
  const q = target.indexOf('?');
  return q === -1 ? { path: target, query: '' } : { path: target.slice(0, q), query: target.slice(q + 1) };
}
