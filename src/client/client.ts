import { type IdempotentRequestInit, idempotentFetch } from './fetch.js';
import { createMemoryKeyStore, type KeyStore } from './key-store.js';
import type { RetryOptions } from './retry.js';

/** Options of `createClient`. */
export interface ClientOptions {
  /** Resolved against for every path, e.g. `https://api.example.com/v1/`. */
  baseUrl: string | URL;
  /** Sent with every request; per-call headers win. @default {} */
  headers?: HeadersInit;
  /** Retry defaults for every call; a call's own `retry` overrides them field by field. @default {} */
  retry?: RetryOptions;
  /** Where calls given an `operation` name keep their pending key. @default a memory key store */
  keyStore?: KeyStore;
  /** The fetch to send with. @default globalThis.fetch */
  fetch?: typeof fetch;
}

/** Per-call options of the JSON helpers. */
export interface CallOptions extends Omit<IdempotentRequestInit, 'body' | 'method' | 'keyStore'> {}

/** An API client whose writes carry an Idempotency-Key and are retried safely. */
export interface IdempotentClient {
  /** `idempotentFetch` with the client's base URL, headers, retry options and key store. */
  fetch(path: string, init?: IdempotentRequestInit): Promise<Response>;
  /** POSTs `json` (as `application/json`). */
  post(path: string, json?: unknown, options?: CallOptions): Promise<Response>;
  /** PATCHes `json` (as `application/json`). */
  patch(path: string, json?: unknown, options?: CallOptions): Promise<Response>;
  /** PUTs `json` (as `application/json`). */
  put(path: string, json?: unknown, options?: CallOptions): Promise<Response>;
  /** Sends a DELETE. */
  delete(path: string, options?: CallOptions): Promise<Response>;
}

/** Creates a client for one API: `client.post('/charges', { amount: 100 }, { operation: 'checkout-42' })`. */
export function createClient(options: ClientOptions): IdempotentClient {
  const base = new URL(options.baseUrl);
  // A base path ending without '/' would lose its last segment when a relative path is resolved.
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  const defaults = new Headers(options.headers);
  const keyStore = options.keyStore ?? createMemoryKeyStore();
  const fetchImpl = options.fetch;

  const resolve = (path: string) => new URL(path.replace(/^\/+/, ''), base);

  const send = (path: string, init: IdempotentRequestInit = {}) => {
    const headers = new Headers(defaults);
    for (const [name, value] of new Headers(init.headers)) headers.set(name, value);
    return idempotentFetch(resolve(path), {
      ...init,
      headers,
      retry: { ...options.retry, ...init.retry },
      keyStore: init.keyStore ?? keyStore,
      fetch: init.fetch ?? fetchImpl,
    });
  };

  const withJson =
    (method: string) =>
    (path: string, json?: unknown, call: CallOptions = {}) => {
      const headers = new Headers(call.headers);
      if (json !== undefined && !headers.has('content-type')) headers.set('content-type', 'application/json');
      return send(path, {
        ...call,
        method,
        headers,
        body: json === undefined ? undefined : JSON.stringify(json),
      });
    };

  return {
    fetch: send,
    post: withJson('POST'),
    patch: withJson('PATCH'),
    put: withJson('PUT'),
    delete: (path, call = {}) => send(path, { ...call, method: 'DELETE' }),
  };
}
