import type { EngineResponse } from '../core/problem.js';

/** The part of a Fastify reply an engine answer is sent through. */
export interface ReplyLike {
  code(status: number): ReplyLike;
  headers(values: Record<string, string | string[]>): ReplyLike;
  send(payload: Buffer): ReplyLike;
}

/**
 * Sends an engine answer (a refusal or a replay) through a Fastify reply, so that the app's onSend
 * hooks see it like any other answer. The bytes go as a Buffer, which Fastify never serializes.
 */
export function sendThroughReply(reply: ReplyLike, response: EngineResponse): ReplyLike {
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of response.headers) {
    const existing = headers[name];
    if (existing === undefined) headers[name] = value;
    else headers[name] = Array.isArray(existing) ? [...existing, value] : [existing, value];
  }
  const { body } = response;
  return reply
    .code(response.status)
    .headers(headers)
    .send(Buffer.from(body.buffer, body.byteOffset, body.byteLength));
}
