import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  type ArgumentsHost,
  applyDecorators,
  type CallHandler,
  Catch,
  type DynamicModule,
  type ExceptionFilter,
  type ExecutionContext,
  Inject,
  Injectable,
  Module,
  type NestInterceptor,
  UseFilters,
  UseInterceptors,
} from '@nestjs/common';
import { from, mergeMap, type Observable, throwError } from 'rxjs';
import type { Idempotency } from '../core/engine.js';
import { IdempotencyConfigError } from '../core/errors.js';
import type { EngineResponse } from '../core/problem.js';
import { captureClaimed, decideIncoming, type WithRawBody } from './guard.js';
import { sendEngineResponse, viewOfIncoming } from './node-io.js';
import { type ReplyLike, sendThroughReply } from './reply.js';

/** The injection token of the engine that `IdempotencyModule.forRoot` provides. */
export const IDEMPOTENCY_ENGINE = Symbol.for('idemkit.engine');

/**
 * An answer the engine gives instead of the handler (a refusal or a replay). Nest sends what a
 * route returns with the route's own status, so these leave the interceptor as a value for
 * `IdempotencyAnswerFilter`, which writes status, headers and bytes exactly.
 */
export class IdempotencyAnswer {
  constructor(readonly response: EngineResponse) {}
}

type PlatformRequest = WithRawBody & { originalUrl?: string };
type FastifyLike = { raw: PlatformRequest; url: string; rawBody?: unknown };

/** Runs a route under the engine: the raw body (`rawBody: true`), a claim, the answer captured. */
export class IdempotencyInterceptor implements NestInterceptor {
  constructor(private readonly engine: Idempotency) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle();
    const http = context.switchToHttp();
    // Express hands the node objects themselves; Fastify wraps them (request.raw, reply.raw).
    const request = http.getRequest<PlatformRequest | FastifyLike>();
    const response = http.getResponse<ServerResponse | { raw: ServerResponse }>();
    const req = 'raw' in request ? request.raw : request;
    const res = 'raw' in response ? response.raw : response;
    const target = 'raw' in request ? request.url : request.originalUrl;
    const { engine } = this;
    const view = viewOfIncoming(req as IncomingMessage, target);
    const inspection = engine.inspect(view);
    if (inspection.kind === 'pass') return next.handle();
    if (inspection.kind === 'respond') return throwError(() => new IdempotencyAnswer(inspection.response));
    const { rawBody } = request;
    const known = Buffer.isBuffer(rawBody) ? rawBody : undefined;
    return from(decideIncoming(engine, req, view, inspection.key, known)).pipe(
      mergeMap((verdict) => {
        if (verdict.kind === 'respond') return throwError(() => new IdempotencyAnswer(verdict.response));
        if (verdict.kind === 'execute') captureClaimed(engine, verdict.claim, res);
        return next.handle();
      }),
    );
  }
}
Inject(IDEMPOTENCY_ENGINE)(IdempotencyInterceptor, undefined, 0);
Injectable()(IdempotencyInterceptor);

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
  return applyDecorators(UseInterceptors(IdempotencyInterceptor), UseFilters(IdempotencyAnswerFilter));
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
      providers: [{ provide: IDEMPOTENCY_ENGINE, useValue: options.engine }, IdempotencyInterceptor],
      exports: [IDEMPOTENCY_ENGINE, IdempotencyInterceptor],
    };
  }
}
Module({})(IdempotencyModule);
