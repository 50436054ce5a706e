import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface TestServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Starts a real node:http server on a loopback port. */
export async function startServer(
  listener: (req: IncomingMessage, res: ServerResponse) => unknown,
): Promise<TestServer> {
  const server = http.createServer((req, res) => {
    void listener(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One request with node:http (so headers may repeat and bodies may be binary or streamed). */
export function request(
  url: string,
  options: {
    method?: string;
    headers?: http.OutgoingHttpHeaders;
    body?: string | Buffer | Buffer[];
    agent?: http.Agent;
    /** The request target, sent exactly as given (no normalisation); the URL's path otherwise. */
    path?: string;
  } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: options.method ?? 'POST',
        headers: options.headers,
        agent: options.agent ?? false,
        ...(options.path === undefined ? {} : { path: options.path }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    const body = options.body;
    if (Array.isArray(body)) {
      // Sent as separate chunks with pauses, to exercise a body arriving in pieces.
      let i = 0;
      const next = () => {
        if (i === body.length) return req.end();
        req.write(body[i++]);
        setTimeout(next, 5);
      };
      next();
    } else {
      req.end(body);
    }
  });
}

export const problemOf = (response: RawResponse) =>
  JSON.parse(response.body.toString('utf8')) as Record<string, unknown>;

/** Opens a raw TCP connection to a test server, for requests no HTTP client would send. */
export async function openSocket(url: string): Promise<import('node:net').Socket> {
  const net = await import('node:net');
  const socket = net.connect(Number(new URL(url).port), '127.0.0.1');
  await new Promise((resolve) => socket.once('connect', resolve));
  return socket;
}

/** Sends a bodyless guarded POST on a raw connection and leaves it open, for tests that then drop it. */
export async function postAndHold(url: string, key: string): Promise<import('node:net').Socket> {
  const socket = await openSocket(url);
  socket.write(`POST /charges HTTP/1.1\r\nHost: x\r\nIdempotency-Key: ${key}\r\nContent-Length: 0\r\n\r\n`);
  return socket;
}
