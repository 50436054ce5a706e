import net from 'node:net';

// Raw HTTP/1.1 over a TCP socket, for requests no HTTP client would send (control characters in a
// header value, a header line repeated, unknown methods, raw bytes in the target, invalid UTF-8,
// a body trickled in) and for reading whatever comes back, byte for byte, with a deadline.

/** A header value is bytes on the wire: a string is written as latin1 (one byte per char). */
export type RawHeader = [name: string, value: string | Uint8Array];

export interface RawRequestSpec {
  method?: string;
  /** The request target, as bytes (latin1 string or bytes). */
  target?: string | Uint8Array;
  headers?: RawHeader[];
  /** Sent with `Content-Length` unless `chunks` says chunked. */
  body?: Uint8Array | string;
  /** Send the body chunked, cut at these sizes (the rest in a last chunk). */
  chunks?: number[];
  /** Leave out the `Host` header (added as `Host: x` otherwise). */
  noHost?: boolean;
}

const latin1 = (value: string | Uint8Array) =>
  typeof value === 'string' ? Buffer.from(value, 'latin1') : Buffer.from(value);

/** The request head; the body framing headers (`Content-Length` or chunked) are added from `spec`. */
export function rawHead(spec: RawRequestSpec, bodyLength: number | 'chunked' | 'none'): Buffer {
  const parts: Buffer[] = [
    Buffer.from(`${spec.method ?? 'POST'} `, 'latin1'),
    latin1(spec.target ?? '/'),
    Buffer.from(' HTTP/1.1\r\n', 'latin1'),
  ];
  if (spec.noHost !== true) parts.push(Buffer.from('Host: x\r\n'));
  for (const [name, value] of spec.headers ?? []) {
    parts.push(Buffer.from(`${name}: `, 'latin1'), latin1(value), Buffer.from('\r\n'));
  }
  if (bodyLength === 'chunked') parts.push(Buffer.from('Transfer-Encoding: chunked\r\n'));
  else if (bodyLength !== 'none') parts.push(Buffer.from(`Content-Length: ${bodyLength}\r\n`));
  parts.push(Buffer.from('\r\n'));
  return Buffer.concat(parts);
}

/** One chunk of a chunked body, or its end (`0\r\n\r\n`) for an empty one. */
export function chunkOf(bytes: Uint8Array): Buffer {
  if (bytes.length === 0) return Buffer.from('0\r\n\r\n');
  return Buffer.concat([
    Buffer.from(`${bytes.length.toString(16)}\r\n`),
    Buffer.from(bytes),
    Buffer.from('\r\n'),
  ]);
}

/** The whole request as bytes. */
export function rawRequest(spec: RawRequestSpec): Buffer {
  const body = spec.body === undefined ? undefined : latin1(spec.body);
  if (spec.chunks === undefined) {
    return Buffer.concat([rawHead(spec, body === undefined ? 0 : body.length), body ?? Buffer.alloc(0)]);
  }
  const parts = [rawHead(spec, 'chunked')];
  let at = 0;
  for (const size of spec.chunks) {
    if (body === undefined || at >= body.length) break;
    const piece = body.subarray(at, Math.min(body.length, at + Math.max(1, size)));
    parts.push(chunkOf(piece));
    at += piece.length;
  }
  if (body !== undefined && at < body.length) parts.push(chunkOf(body.subarray(at)));
  parts.push(chunkOf(Buffer.alloc(0)));
  return Buffer.concat(parts);
}

export interface RawAnswer {
  status: number;
  /** Lower-case names; every line of a repeated header kept. */
  headers: Record<string, string[]>;
  body: Buffer;
  /** Interim (1xx) statuses seen before the answer. */
  interim: number[];
  /** The server closed the connection right after (or as part of) the answer. */
  closed: boolean;
  /** Milliseconds from the first byte sent to the whole answer. */
  ms: number;
}

/** What came back: a whole answer, or a connection that ended without one, or nothing in time. */
export type RawOutcome =
  | { kind: 'answer'; answer: RawAnswer }
  | { kind: 'closed' | 'reset' | 'timeout'; received: Buffer; ms: number; error?: string };

/** One step of what the client sends: bytes, or a pause. */
export type Step = Uint8Array | { pauseMs: number };

/**
 * Opens a connection, sends `steps` (bytes and pauses), and resolves with the first whole final
 * answer (1xx skipped), or with how the connection ended without one, or `timeout` after `timeoutMs`.
 * The socket is destroyed once settled. `head: true` for a HEAD request (an answer without a body).
 */
export function exchange(
  port: number,
  steps: Step[] | Uint8Array,
  options: { timeoutMs?: number; head?: boolean } = {},
): Promise<RawOutcome> {
  const list = steps instanceof Uint8Array ? [steps] : steps;
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = Buffer.alloc(0);
    let settled = false;
    let ended = false;
    const settle = (outcome: RawOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(
      () => settle({ kind: 'timeout', received, ms: Date.now() - started }),
      options.timeoutMs ?? 5_000,
    );
    const check = (end: boolean) => {
      const answer = parseAnswer(received, end, options.head === true);
      if (answer !== undefined) {
        answer.ms = Date.now() - started;
        settle({ kind: 'answer', answer });
      }
    };
    socket.on('data', (data: Buffer) => {
      received = Buffer.concat([received, data]);
      check(false);
    });
    socket.on('end', () => {
      ended = true;
      check(true);
      settle({ kind: 'closed', received, ms: Date.now() - started });
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      // A reset after a whole close-delimited answer still counts as that answer.
      check(true);
      settle({ kind: ended ? 'closed' : 'reset', received, ms: Date.now() - started, error: error.code });
    });
    socket.on('close', () => {
      check(true);
      settle({ kind: 'closed', received, ms: Date.now() - started });
    });
    socket.once('connect', async () => {
      for (const step of list) {
        if (settled) return;
        if (step instanceof Uint8Array) socket.write(step);
        else await new Promise((r) => setTimeout(r, step.pauseMs));
      }
    });
  });
}

/**
 * Parses the first final answer in `bytes`: `undefined` while it is incomplete. A body without
 * `Content-Length` or chunked framing ends with the connection (`end`).
 */
export function parseAnswer(bytes: Buffer, end: boolean, head: boolean): RawAnswer | undefined {
  const interim: number[] = [];
  let at = 0;
  for (;;) {
    const headEnd = bytes.indexOf('\r\n\r\n', at, 'latin1');
    if (headEnd === -1) return undefined;
    const lines = bytes.subarray(at, headEnd).toString('latin1').split('\r\n');
    const match = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
    if (match === null) throw new Error(`not an HTTP answer: ${JSON.stringify(lines[0])}`);
    const status = Number(match[1]);
    const headers: Record<string, string[]> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).toLowerCase();
      const values = headers[name] ?? [];
      values.push(line.slice(colon + 1).trim());
      headers[name] = values;
    }
    const bodyStart = headEnd + 4;
    if (status >= 100 && status < 200) {
      interim.push(status);
      at = bodyStart;
      continue;
    }
    const connection = (headers.connection ?? []).join(',').toLowerCase();
    const answer = (body: Buffer, rest: number): RawAnswer => ({
      status,
      headers,
      body,
      interim,
      closed: connection.includes('close') || (end && rest === bytes.length),
      ms: 0,
    });
    if (head || status === 204 || status === 304) return answer(Buffer.alloc(0), bodyStart);
    const length = headers['content-length']?.[0];
    if (length !== undefined) {
      const n = Number(length);
      if (bytes.length - bodyStart < n) return undefined;
      return answer(bytes.subarray(bodyStart, bodyStart + n), bodyStart + n);
    }
    if ((headers['transfer-encoding'] ?? []).join(',').toLowerCase().includes('chunked')) {
      const pieces: Buffer[] = [];
      let p = bodyStart;
      for (;;) {
        const lineEnd = bytes.indexOf('\r\n', p, 'latin1');
        if (lineEnd === -1) return undefined;
        const size = Number.parseInt(bytes.subarray(p, lineEnd).toString('latin1'), 16);
        if (size === 0) {
          const trailerEnd = bytes.indexOf('\r\n\r\n', lineEnd, 'latin1');
          const done = trailerEnd === lineEnd ? lineEnd + 4 : trailerEnd === -1 ? -1 : trailerEnd + 4;
          if (done === -1) return undefined;
          return answer(Buffer.concat(pieces), done);
        }
        if (bytes.length < lineEnd + 2 + size + 2) return undefined;
        pieces.push(bytes.subarray(lineEnd + 2, lineEnd + 2 + size));
        p = lineEnd + 2 + size + 2;
      }
    }
    if (!end) return undefined;
    return answer(bytes.subarray(bodyStart), bytes.length);
  }
}

/** A readable account of an outcome, for assertion messages. */
export function describeOutcome(outcome: RawOutcome): string {
  if (outcome.kind === 'answer') {
    const { status, body, ms } = outcome.answer;
    return `${status} after ${ms} ms: ${body.subarray(0, 300).toString('latin1')}`;
  }
  const text = outcome.received.subarray(0, 300).toString('latin1');
  return `${outcome.kind}${outcome.error === undefined ? '' : ` (${outcome.error})`} after ${outcome.ms} ms, received ${JSON.stringify(text)}`;
}
