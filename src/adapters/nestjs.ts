import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  type ArgumentsHost,
  applyDecorators,
  type CanActivate,
  Catch,
  type DynamicModule,
  type ExceptionFilter,
  type ExecutionContext,
  Inject,
  Injectable,
  Module,
  UseFilters,
  UseGuards,
} from '@nestjs/common';
import type { Idempotency } from '../core/engine.js';
import { IdempotencyConfigError } from '../core/errors.js';
import type { EngineResponse } from '../core/problem.js';
import { captureClaimed, decideIncoming, firstGuard, type WithRawBody } from './guard.js';
import { sendEngineResponse, viewOfIncoming } from './node-io.js';
import { type ReplyLike, sendThroughReply } from './reply.js';

/** The injection token of the engine that `IdempotencyModule.forRoot` provides. */
export const IDEMPOTENCY_ENGINE = Symbol.for('idemkit.engine');

/**
 * An answer the engine gives instead of the handler (a refusal or a replay). Nest would send what
 * a route returns with the route's own status, so these leave the guard as an exception for
 * `IdempotencyAnswerFilter`, which writes status, headers and bytes exactly.
 */
export class IdempotencyAnswer {
  constructor(readonly response: EngineResponse) {}
}

type PlatformRequest = WithRawBody & { originalUrl?: string };
type FastifyLike = { raw: PlatformRequest; url: string; rawBody?: unknown };

/**
 * Guards a route: checks the key, claims it with the raw body (`rawBody: true`) and captures the
 * route's answer on the response. A guard rather than an interceptor: nothing needs to wrap the
 * handler (its answer is captured where it is written), and Nest runs guards after the app's own,
 * so a caller an auth guard turns away never claims a key.
 */
export class IdempotencyGuard implements CanActivate {
  constructor(private readonly engine: Idempotency) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    if (context.getType() !== 'http') return true;
    const http = context.switchToHttp();
    // Express hands the node objects themselves; Fastify wraps them (request.raw, reply.raw).
    const request = http.getRequest<PlatformRequest | FastifyLike>();
    const response = http.getResponse<ServerResponse | { raw: ServerResponse }>();
    const req = 'raw' in request ? request.raw : request;
    if (!firstGuard(req)) return true;
    const target = 'raw' in request ? request.url : request.originalUrl;
    const { engine } = this;
    const view = viewOfIncoming(req as IncomingMessage, target);
    const inspection = engine.inspect(view);
    if (inspection.kind === 'pass') return true;
    if (inspection.kind === 'respond') throw new IdempotencyAnswer(inspection.response);
    const { rawBody } = request;
    const known = Buffer.isBuffer(rawBody) ? rawBody : undefined;
    const verdict = await decideIncoming(engine, req, view, inspection.key, known);
    if (verdict.kind === 'respond') throw new IdempotencyAnswer(verdict.response);
    if (verdict.kind === 'execute') {
      captureClaimed(engine, verdict.claim, 'raw' in response ? response.raw : response);
    }
    return true;
  }
}
Inject(IDEMPOTENCY_ENGINE)(IdempotencyGuard, undefined, 0);
Injectable()(IdempotencyGuard);

/** Writes an `IdempotencyAnswer` as it is, on Express (`res`) or Fastify (`reply.send`). */
export class IdempotencyAnswerFilter implements ExceptionFilter<IdempotencyAnswer> {
  catch(answer: IdempotencyAnswer, host: ArgumentsHost): void {
    const response = host.switchToHttp().getResponse<ServerResponse | ReplyLike>();
    if ('code' in response) sendThroughReply(response, answer.response);
    else sendEngineResponse(response, answer.response);
  }
}
Catch(IdempotencyAnswer)(IdempotencyAnswerFilter);

/**
 * Guards a route (or every route of a controller): `@Idempotent()`. Needs `IdempotencyModule`
 * and, for bodies a Nest parser reads, `NestFactory.create(AppModule, { rawBody: true })`.
 */
export function Idempotent(): MethodDecorator & ClassDecorator {
  return applyDecorators(UseGuards(IdempotencyGuard), UseFilters(IdempotencyAnswerFilter));
}

/** Provides the engine to `@Idempotent()` routes in every module: `IdempotencyModule.forRoot({ engine })`. */
export class IdempotencyModule {
  static forRoot(options: { engine: Idempotency }): DynamicModule {
    if (typeof options?.engine?.inspect !== 'function') {
      throw new IdempotencyConfigError('IdempotencyModule.forRoot needs { engine } from createIdempotency()');
    }
    return {
      module: IdempotencyModule,
      global: true,
      providers: [{ provide: IDEMPOTENCY_ENGINE, useValue: options.engine }, IdempotencyGuard],
      exports: [IDEMPOTENCY_ENGINE, IdempotencyGuard],
    };
  }
}
Module({})(IdempotencyModule);
