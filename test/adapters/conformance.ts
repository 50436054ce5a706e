import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createIdempotency, type Idempotency } from '../../src/core/engine.js';
import type { IdempotencyOptions } from '../../src/core/options.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { type RawResponse, request } from '../helpers/http.js';

/**
 * The routes every adapter's test app serves, each written the framework's natural way, each
 * counting its runs with `runs.hit(path)` once it has the request's parsed body:
 *
 * - POST /charges: JSON parsed by the framework; 201 `{ id, amount, run }` (`chargeAnswer`), header `x-charge-id`.
 * - POST /binary: 200 `application/octet-stream`, `binaryAnswer()` (fresh random bytes every run).
 * - POST /stream: 200, `streamAnswer()` (64 KiB of fresh random bytes in 16 chunks) sent as a stream.
 * - POST /throw: throws an Error before answering.
 * - POST /fail: an error the framework's error handling renders as 503.
 * - POST /slow: waits 200 ms, then answers like /charges.
 */
export interface AdapterUnderTest {
  name: string;
  /** Starts the app on a loopback port with `engine` guarding the routes above. */
  start(engine: Idempotency, runs: Runs): Promise<{ url: string; close(): Promise<void> }>;
  /** Framework-specific ways of answering, each at its own path: captured and replayed byte for byte. */
  captures?: Array<{ path: string; status: number }>;
  /** Bodies a framework parser reads: `reordered` means the same to the parser, in other bytes. */
  parsers?: Array<{ path: string; contentType: string; body: string; reordered: string }>;
}

/** Handler runs per path. */
export class Runs {
  private readonly counts = new Map<string, number>();
  hit(path: string): number {
    const n = (this.counts.get(path) ?? 0) + 1;
    this.counts.set(path, n);
    return n;
  }
  of(path: string): number {
    return this.counts.get(path) ?? 0;
  }
}

export const chargeAnswer = (amount: unknown, run: number) => ({ id: `ch_${run}`, amount, run });
export const binaryAnswer = () => randomBytes(256);
export const streamAnswer = () => Readable.from(Array.from({ length: 16 }, () => randomBytes(4096)));
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
export class FailError extends Error {
  readonly status = 503;
  readonly statusCode = 503;
}

const MAX_REQUEST_BYTES = 64 * 1024;
const json = { 'content-type': 'application/json' };
let counter = 0;
const newKey = () => `key-${process.pid}-${++counter}`;

/** The adapter conformance suite: real HTTP against the app, the same cases for every framework. */
export function describeAdapter(adapter: AdapterUnderTest): void {
  describe(`${adapter.name} adapter`, () => {
    const runs = new Runs();
    let app: { url: string; close(): Promise<void> };
    beforeAll(async () => {
      app = await adapter.start(engineWith(), runs);
    });
    afterAll(() => app?.close());

    const post = (path: string, key: string | undefined, body: string | Buffer, headers = json) =>
      request(`${app.url}${path}`, {
        headers: key === undefined ? headers : { ...headers, 'idempotency-key': key },
        body,
      });

    it('replays a JSON answer byte for byte with its status and headers, and runs the handler once', async () => {
      const key = newKey();
      const before = runs.of('/charges');
      const first = await post('/charges', key, '{"amount":100}');
      expect(first.status).toBe(201);
      expect(JSON.parse(first.body.toString())).toMatchObject({ amount: 100 });
      const again = await post('/charges', key, '{"amount":100}');
      expectReplayOf(again, first);
      expect(again.headers['x-charge-id']).toBe(first.headers['x-charge-id']);
      expect(runs.of('/charges')).toBe(before + 1);
    });

    it('takes the same JSON in another key order and spacing as the same request', async () => {
      const key = newKey();
      const first = await post('/charges', key, '{"amount":7,"currency":"eur"}');
      const again = await post('/charges', key, '{ "currency": "eur",\n  "amount": 7 }');
      expectReplayOf(again, first);
    });

    it('answers 409 problem+json to the key reused with another body, and the handler never sees it', async () => {
      const key = newKey();
      await post('/charges', key, '{"amount":1}');
      const before = runs.of('/charges');
      const reused = await post('/charges', key, '{"amount":2}');
      expect(reused.status).toBe(409);
      expect(problemOf(reused)).toMatchObject({ code: 'idempotency_key_reused', idempotency_key: key });
      expect(runs.of('/charges')).toBe(before);
    });

    it('replays a binary answer byte for byte', async () => {
      const key = newKey();
      const first = await post('/binary', key, '{}');
      expect(first.status).toBe(200);
      expect(first.body.length).toBe(256);
      expectReplayOf(await post('/binary', key, '{}'), first);
    });

    it('replays a streamed answer byte for byte', async () => {
      const key = newKey();
      const before = runs.of('/stream');
      const first = await post('/stream', key, '{}');
      expect(first.status).toBe(200);
      expect(first.body.length).toBe(64 * 1024);
      expectReplayOf(await post('/stream', key, '{}'), first);
      expect(runs.of('/stream')).toBe(before + 1);
    });

    it('answers 400 problem+json to a missing or malformed key, and the handler never runs', async () => {
      const before = runs.of('/charges');
      const missing = await post('/charges', undefined, '{"amount":1}');
      expect(missing.status).toBe(400);
      expect(problemOf(missing)).toMatchObject({ code: 'idempotency_key_missing' });
      const invalid = await post('/charges', 'a b', '{"amount":1}');
      expect(invalid.status).toBe(400);
      expect(problemOf(invalid)).toMatchObject({ code: 'idempotency_key_invalid' });
      expect(runs.of('/charges')).toBe(before);
    });

    it('answers 413 problem+json to a body over maxRequestBytes, and the handler never runs', async () => {
      const before = runs.of('/charges');
      const body = JSON.stringify({ amount: 1, pad: 'x'.repeat(MAX_REQUEST_BYTES + 10) });
      const tooLarge = await post('/charges', newKey(), body);
      expect(tooLarge.status).toBe(413);
      expect(problemOf(tooLarge)).toMatchObject({ code: 'request_body_too_large' });
      expect(runs.of('/charges')).toBe(before);
    });

    it('answers 409 in use with Retry-After while the first request runs', async () => {
      const key = newKey();
      const first = post('/slow', key, '{"amount":3}');
      await sleep(60);
      const second = await post('/slow', key, '{"amount":3}');
      expect(second.status).toBe(409);
      expect(second.headers['retry-after']).toBe('1');
      expect(problemOf(second)).toMatchObject({ code: 'idempotency_key_in_use' });
      expect((await first).status).toBe(201);
    });

    it('runs 50 simultaneous requests with one key once; the others get 409 in use or the replay', async () => {
      const key = newKey();
      const before = runs.of('/slow');
      const answers = await Promise.all(
        Array.from({ length: 50 }, () => post('/slow', key, '{"amount":50}')),
      );
      expect(runs.of('/slow')).toBe(before + 1);
      const created = answers.filter((a) => a.status === 201);
      expect(created.length).toBeGreaterThanOrEqual(1);
      for (const a of created) expect(a.body.equals(created[0]!.body)).toBe(true);
      for (const a of answers.filter((x) => x.status !== 201)) {
        expect(a.status).toBe(409);
        expect(problemOf(a)).toMatchObject({ code: 'idempotency_key_in_use' });
      }
    });

    it('releases the key when the handler throws, so the retry runs it again', async () => {
      const key = newKey();
      const before = runs.of('/throw');
      expect((await post('/throw', key, '{}')).status).toBe(500);
      expect((await post('/throw', key, '{}')).status).toBe(500);
      expect(runs.of('/throw')).toBe(before + 2);
    });

    it('releases the key when the error handler answers 5xx, so the retry runs it again', async () => {
      const key = newKey();
      const before = runs.of('/fail');
      expect((await post('/fail', key, '{}')).status).toBe(503);
      expect((await post('/fail', key, '{}')).status).toBe(503);
      expect(runs.of('/fail')).toBe(before + 2);
    });

    it('passes a GET through untouched, key or not', async () => {
      const answer = await request(`${app.url}/charges`, {
        method: 'GET',
        headers: { 'idempotency-key': 'x' },
      });
      expect(answer.status).not.toBe(400);
      expect(answer.headers['idempotent-replayed']).toBeUndefined();
    });

    for (const capture of adapter.captures ?? []) {
      it(`captures an answer sent by ${capture.path.slice(1)} and replays it byte for byte`, async () => {
        const key = newKey();
        const before = runs.of(capture.path);
        const first = await post(capture.path, key, '{"amount":5}');
        expect(first.status).toBe(capture.status);
        expect(first.body.length).toBeGreaterThan(0);
        expectReplayOf(await post(capture.path, key, '{"amount":5}'), first);
        expect(runs.of(capture.path)).toBe(before + 1);
      });
    }

    for (const parser of adapter.parsers ?? []) {
      it(`fingerprints the raw bytes of a ${parser.contentType} body read by ${parser.path.slice(1)}`, async () => {
        const headers = { 'content-type': parser.contentType };
        const key = newKey();
        const before = runs.of(parser.path);
        const first = await post(parser.path, key, parser.body, headers);
        expect(first.status).toBe(201);
        expectReplayOf(await post(parser.path, key, parser.body, headers), first);
        // The parser reads both bodies alike; the bytes differ, so the key is refused.
        const reordered = await post(parser.path, key, parser.reordered, headers);
        expect(reordered.status).toBe(409);
        expect(runs.of(parser.path)).toBe(before + 1);
      });
    }
  });

  describe(`${adapter.name} adapter, store unreachable`, () => {
    const runs = new Runs();
    let app: { url: string; close(): Promise<void> };
    beforeAll(async () => {
      const store = createMemoryStore();
      await store.close(); // a real store that fails every call
      app = await adapter.start(engineWith({ store }), runs);
    });
    afterAll(() => app?.close());

    it('answers 503 problem+json with Retry-After, and the handler never runs', async () => {
      const answer = await request(`${app.url}/charges`, {
        headers: { ...json, 'idempotency-key': newKey() },
        body: '{"amount":1}',
      });
      expect(answer.status).toBe(503);
      expect(answer.headers['content-type']).toBe('application/problem+json');
      expect(answer.headers['retry-after']).toBeDefined();
      expect(problemOf(answer)).toMatchObject({ code: 'idempotency_store_unavailable' });
      expect(runs.of('/charges')).toBe(0);
    });
  });
}

function engineWith(options: Partial<IdempotencyOptions> = {}): Idempotency {
  return createIdempotency({ store: createMemoryStore(), maxRequestBytes: MAX_REQUEST_BYTES, ...options });
}

/** A replay: the first answer's status, body bytes and content type, marked as replayed. */
function expectReplayOf(replay: RawResponse, first: RawResponse): void {
  expect(first.headers['idempotent-replayed']).toBeUndefined();
  expect(replay.headers['idempotent-replayed']).toBe('true');
  expect(replay.status).toBe(first.status);
  expect(replay.headers['content-type']).toBe(first.headers['content-type']);
  expect(replay.body.equals(first.body)).toBe(true);
}

/** The problem+json body of an engine answer, checking it is one. */
function problemOf(answer: RawResponse): Record<string, unknown> {
  expect(answer.headers['content-type']).toBe('application/problem+json');
  return JSON.parse(answer.body.toString('utf8')) as Record<string, unknown>;
}
