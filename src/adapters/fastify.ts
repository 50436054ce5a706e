import { PassThrough, Readable } from 'node:stream';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import fastifyPlugin from 'fastify-plugin';
import type { Idempotency } from '../core/engine.js';
import { IdempotencyConfigError } from '../core/errors.js';
import type { IdempotencyRequest } from '../core/request.js';
import { captureClaimed, firstGuard } from './guard.js';
import { readAndRestoreBody, viewOfIncoming } from './node-io.js';
import { type ReplyLike, sendThroughReply } from './reply.js';

/** Options of the Fastify plugin. */
export interface IdempotencyPluginOptions {
  /** The engine from `createIdempotency`. */
  engine: Idempotency;
  /**
   * `'all'`: every route of the scope is guarded unless its config says `idempotency: false`.
   * `'opt-in'`: only routes whose config says `idempotency: true`.
   * @default 'all'
   */
  routes?: 'all' | 'opt-in';
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Guard this route (`true`) or leave it alone (`false`); see the plugin's `routes` option. */
    idempotency?: boolean;
  }
}

interface Pending {
  view: IdempotencyRequest;
  key: string;
  body?: Buffer | 'too_large' | 'unreadable';
}

const pending = new WeakMap<FastifyRequest, Pending>();

/**
 * Guards a Fastify 5 scope. The body is read in `preParsing`, where the bytes the client sent are
 * still a stream, and left to Fastify's parsers (which parse it once); the key is claimed in
 * `preHandler`. The answer is captured from the raw response, so objects,
 * Buffers, streams and the error handler's answers are all stored byte-exact.
 */
const plugin: FastifyPluginAsync<IdempotencyPluginOptions> = async (fastify, options) => {
  const { engine } = options;
  if (typeof engine?.inspect !== 'function') {
    throw new IdempotencyConfigError('the idempotency plugin needs { engine } from createIdempotency()');
  }
  if (options.routes !== undefined && options.routes !== 'all' && options.routes !== 'opt-in') {
    throw new IdempotencyConfigError(`routes must be 'all' or 'opt-in', got ${String(options.routes)}`);
  }
  const optIn = options.routes === 'opt-in';
  const send = (reply: FastifyReply, response: Parameters<typeof sendThroughReply>[1]) =>
    sendThroughReply(reply as unknown as ReplyLike, response) as unknown as FastifyReply;

  fastify.addHook('onRequest', async (request, reply) => {
    if (!firstGuard(request.raw)) return;
    const flag = request.routeOptions.config.idempotency;
    if (flag === false || (optIn && flag !== true)) return;
    const view = viewOfIncoming(request.raw, request.url);
    const inspection = engine.inspect(view);
    if (inspection.kind === 'respond') return send(reply, inspection.response);
    if (inspection.kind === 'guard') pending.set(request, { view, key: inspection.key });
  });

  fastify.addHook('preParsing', async (request, _reply, payload) => {
    const state = pending.get(request);
    if (state === undefined) return payload;
    if (payload === request.raw) {
      // The bytes the client sent: read them and leave the stream whole, for Fastify's parser and
      // for plugins that read request.raw themselves (@fastify/multipart).
      state.body = await readAndRestoreBody(request.raw, engine.limits.maxRequestBytes);
      return payload;
    }
    // An earlier preParsing hook transformed the stream (decompression): fingerprint what it gives.
    const { body, stream } = await collect(payload, engine.limits.maxRequestBytes);
    state.body = body;
    return stream;
  });

  fastify.addHook('preHandler', async (request, reply) => {
    const state = pending.get(request);
    if (state === undefined) return;
    pending.delete(request);
    const { view, key, body = EMPTY } = state;
    if (typeof body === 'string') {
      const reason = body === 'too_large' ? 'body_too_large' : 'body_unreadable';
      return send(reply, engine.rejectBody(view, key, reason));
    }
    const decision = await engine.begin(view, key, body);
    if (decision.kind === 'respond') return send(reply, decision.response);
    if (decision.kind === 'execute') captureClaimed(engine, decision.claim, reply.raw);
  });
};

/**
 * Reads the payload for the fingerprint and gives Fastify a stream of the same bytes. Past `limit`
 * it stops keeping them and hands on what it read followed by the rest, so Fastify's own bodyLimit
 * still applies, and the preHandler answers 413 if the parser let it through.
 */
function collect(
  payload: Readable & { receivedEncodedLength?: number },
  limit: number,
): Promise<{ body: Buffer | 'too_large'; stream: Readable }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = () => {
      payload.removeListener('data', onData);
      payload.removeListener('end', onEnd);
      payload.removeListener('error', reject);
      payload.removeListener('close', onClose);
    };
    // A client that leaves mid-body: Fastify answers nobody, and nothing is claimed.
    const onClose = () => {
      stop();
      reject(new Error('the request body ended before it was complete'));
    };
    const onData = (chunk: Buffer | string) => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      chunks.push(bytes);
      size += bytes.length;
      if (size <= limit) return;
      stop();
      payload.pause();
      const rest = new PassThrough();
      for (const kept of chunks) rest.write(kept);
      payload.pipe(rest);
      resolve({ body: 'too_large', stream: rest });
    };
    const onEnd = () => {
      stop();
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
      const stream = Readable.from(size === 0 ? [] : [body], { objectMode: false });
      // Fastify checks what it received against Content-Length; an earlier hook's decoding stays counted.
      Object.assign(stream, { receivedEncodedLength: payload.receivedEncodedLength ?? size });
      resolve({ body, stream });
    };
    payload.on('data', onData);
    payload.on('end', onEnd);
    payload.on('error', reject);
    payload.on('close', onClose);
  });
}
const EMPTY = Buffer.alloc(0);

/** The Fastify plugin: `app.register(idempotency, { engine })`. */
export const idempotency = fastifyPlugin(plugin, { fastify: '5.x', name: 'idemkit' });
