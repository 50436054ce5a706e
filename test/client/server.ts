import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { withIdempotency } from '../../src/adapters/node.js';
import type { IdempotencyOptions } from '../../src/index.js';
import { createIdempotency } from '../../src/index.js';
import { createMemoryStore } from '../../src/stores/memory.js';

/** What the test server does with one incoming request, before idemkit sees it. */
export type Fate =
  | { kind: 'pass' }
  /** idemkit and the handler run, the answer is stored, then the connection is cut: the answer is lost. */
  | { kind: 'drop-after' }
  /** The connection is cut before anything runs. */
  | { kind: 'drop-before' }
  /** The test server answers by itself (a 503, a 409 in use…); idemkit never sees the request. */
  | { kind: 'answer'; status: number; headers?: Record<string, string>; body?: string };

export interface ClientTestServer {
  url: string;
  port: number;
  /** The Idempotency-Key of every handler execution, in order. */
  runs: string[];
  /** The Idempotency-Key of every request that reached the server, in order. */
  requests: Array<string | undefined>;
  close(): Promise<void>;
}

export interface ServerOptions {
  /** Decides each request's fate by its arrival number (0-based). @default pass */
  fate?: (index: number, req: IncomingMessage) => Fate;
  /** What the handler answers. @default 201 with `{ run, body }` */
  answer?: (req: IncomingMessage, body: string, res: ServerResponse) => unknown;
  /** Handler delay before answering, ms. @default 0 */
  delayMs?: number | ((run: number) => number);
  engine?: Partial<IdempotencyOptions>;
  port?: number;
}

/** A real idemkit node:http server on loopback, with a wrapper that can drop or pre-empt requests. */
export async function startIdemkitServer(options: ServerOptions = {}): Promise<ClientTestServer> {
  const runs: string[] = [];
  const requests: Array<string | undefined> = [];
  const engine = createIdempotency({ store: createMemoryStore(), ...options.engine });
  const guarded = withIdempotency(engine, async (req, res) => {
    const body = await readAll(req);
    runs.push(String(req.headers['idempotency-key']));
    const run = runs.length;
    const delay = typeof options.delayMs === 'function' ? options.delayMs(run) : (options.delayMs ?? 0);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    if (options.answer) return options.answer(req, body, res);
    res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ run, body }));
  });
  const server = http.createServer((req, res) => {
    const index = requests.length;
    requests.push(req.headers['idempotency-key'] as string | undefined);
    const fate = options.fate?.(index, req) ?? { kind: 'pass' };
    if (fate.kind === 'drop-before') {
      req.socket.destroy();
      return;
    }
    if (fate.kind === 'answer') {
      req.resume();
      res.writeHead(fate.status, fate.headers).end(fate.body);
      return;
    }
    if (fate.kind === 'drop-after') cutAnswer(req, res);
    void guarded(req, res);
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    runs,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// idemkit stores the answer before it writes it (the adapter calls these methods only after the
// record is complete), so cutting the socket here loses the answer on the wire, never in the store.
// writeHead stays real: Node sends the head with the first write, which never comes.
export function cutAnswer(req: IncomingMessage, res: ServerResponse): void {
  res.write = (() => true) as typeof res.write;
  res.end = (() => {
    req.socket.destroy();
    return res;
  }) as typeof res.end;
}

async function readAll(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A problem+json body as idemkit writes it. */
export function problem(status: number, code: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ type: 'about:blank', title: 'Conflict', status, detail: code, code, ...extra });
}

/** A port nothing listens on (bound, then released). */
export async function freePort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Records each wait instead of waiting; resolves at once. */
export function recordingSleep(): { delays: number[]; sleep: (ms: number) => Promise<void> } {
  const delays: number[] = [];
  return {
    delays,
    sleep: async (ms) => {
      delays.push(ms);
    },
  };
}
