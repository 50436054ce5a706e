import 'reflect-metadata';
import {
  Body,
  Controller,
  Get,
  HttpCode,
  type INestApplication,
  Module,
  Post,
  Res,
  ServiceUnavailableException,
  StreamableFile,
  UnprocessableEntityException,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ExpressAdapter } from '@nestjs/platform-express';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { of } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { IdempotencyModule, Idempotent } from '../../src/adapters/nestjs.js';
import { createIdempotency, type Idempotency } from '../../src/core/engine.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { request } from '../helpers/http.js';
import {
  binaryAnswer,
  chargeAnswer,
  describeAdapter,
  type Runs,
  sleep,
  streamAnswer,
} from './conformance.js';

/** Applies decorators the way TypeScript's `@Decorator()` syntax does, without needing it here. */
function route(target: object, method: string, ...decorators: MethodDecorator[]) {
  const descriptor = Object.getOwnPropertyDescriptor(target, method)!;
  for (const decorate of decorators.reverse()) decorate(target, method, descriptor);
  Object.defineProperty(target, method, descriptor);
}
const param = (target: object, method: string, index: number, decorator: ParameterDecorator) =>
  decorator(target, method, index);

type Reply = { header?(name: string, value: string): void; setHeader?(name: string, value: string): void };
const setHeader = (res: Reply, name: string, value: string) =>
  res.header ? res.header(name, value) : res.setHeader!(name, value);

/** The conformance routes as one Nest controller, every route `@Idempotent()`. */
function chargesModule(engine: Idempotency, runs: Runs) {
  class ChargesController {
    list() {
      return { charges: [] };
    }
    create(body: { amount: number }, res: Reply) {
      const run = runs.hit('/charges');
      setHeader(res, 'x-charge-id', `ch_${run}`);
      return chargeAnswer(body.amount, run);
    }
    binary() {
      runs.hit('/binary');
      return new StreamableFile(binaryAnswer(), { type: 'application/octet-stream' });
    }
    stream() {
      runs.hit('/stream');
      return new StreamableFile(streamAnswer(), { type: 'application/octet-stream' });
    }
    throws() {
      runs.hit('/throw');
      throw new Error('the handler failed');
    }
    fail() {
      runs.hit('/fail');
      throw new ServiceUnavailableException('the bank is down');
    }
    async slow(body: { amount: number }) {
      const run = runs.hit('/slow');
      await sleep(200);
      return chargeAnswer(body.amount, run);
    }
    observable() {
      return of({ observed: true, run: runs.hit('/observable') });
    }
    text() {
      return `accepted, run ${runs.hit('/text')}`;
    }
    declined() {
      throw new UnprocessableEntityException(`declined, run ${runs.hit('/declined')}`);
    }
    form(body: Record<string, string>) {
      return { form: body, run: runs.hit('/form') };
    }
  }
  const p = ChargesController.prototype;
  route(p, 'list', Get('charges'));
  route(p, 'create', Post('charges'), Idempotent());
  param(p, 'create', 0, Body());
  param(p, 'create', 1, Res({ passthrough: true }));
  route(p, 'binary', Post('binary'), HttpCode(200), Idempotent());
  route(p, 'stream', Post('stream'), HttpCode(200), Idempotent());
  route(p, 'throws', Post('throw'), Idempotent());
  route(p, 'fail', Post('fail'), Idempotent());
  route(p, 'slow', Post('slow'), Idempotent());
  param(p, 'slow', 0, Body());
  route(p, 'observable', Post('observable'), HttpCode(202), Idempotent());
  route(p, 'text', Post('text'), HttpCode(200), Idempotent());
  route(p, 'declined', Post('declined'), Idempotent());
  route(p, 'form', Post('form'), Idempotent());
  param(p, 'form', 0, Body());
  Controller()(ChargesController);

  class AppModule {}
  Module({ imports: [IdempotencyModule.forRoot({ engine })], controllers: [ChargesController] })(AppModule);
  return AppModule;
}

async function startNest(app: INestApplication) {
  await app.listen(0, '127.0.0.1');
  const url = await app.getUrl();
  return { url: url.replace('[::1]', '127.0.0.1'), close: () => app.close() };
}

for (const platform of ['Express', 'Fastify'] as const) {
  const adapter = () => (platform === 'Express' ? new ExpressAdapter() : new FastifyAdapter());
  describeAdapter({
    name: `NestJS 11 on ${platform}`,
    async start(engine, runs) {
      const app = await NestFactory.create(chargesModule(engine, runs), adapter(), {
        rawBody: true,
        logger: false,
      });
      return startNest(app);
    },
    captures: [
      { path: '/observable', status: 202 },
      { path: '/text', status: 200 },
      { path: '/declined', status: 422 },
    ],
    parsers: [
      {
        path: '/form',
        contentType: 'application/x-www-form-urlencoded',
        body: 'a=1&b=2',
        reordered: 'b=2&a=1',
      },
    ],
  });

  describe(`NestJS 11 on ${platform}, @Idempotent() twice`, () => {
    it('runs the handler once when the controller and its route are both @Idempotent() (review regression)', async () => {
      const engine = createIdempotency({ store: createMemoryStore() });
      let runs = 0;
      class TwiceController {
        create() {
          return { run: ++runs };
        }
      }
      route(TwiceController.prototype, 'create', Post('twice'), Idempotent());
      Idempotent()(TwiceController);
      Controller()(TwiceController);
      class TwiceModule {}
      Module({ imports: [IdempotencyModule.forRoot({ engine })], controllers: [TwiceController] })(
        TwiceModule,
      );
      const app = await NestFactory.create(TwiceModule, adapter(), { rawBody: true, logger: false });
      const { url, close } = await startNest(app);
      try {
        const send = () =>
          request(`${url}/twice`, {
            headers: { 'content-type': 'application/json', 'idempotency-key': 'k' },
            body: '{}',
          });
        expect((await send()).status).toBe(201);
        expect((await send()).headers['idempotent-replayed']).toBe('true');
        expect(runs).toBe(1);
      } finally {
        await close();
      }
    });
  });

  describe(`NestJS 11 on ${platform}, without rawBody`, () => {
    it('answers 500 and never runs the handler when Nest parsed the body without keeping its bytes', async () => {
      const engine = createIdempotency({ store: createMemoryStore() });
      const runs = new (await import('./conformance.js')).Runs();
      const app = await NestFactory.create(chargesModule(engine, runs), adapter(), { logger: false });
      const { url, close } = await startNest(app);
      try {
        const answer = await request(`${url}/charges`, {
          headers: { 'content-type': 'application/json', 'idempotency-key': 'k' },
          body: '{"amount":1}',
        });
        expect(answer.status).toBe(500);
        expect(runs.of('/charges')).toBe(0);
      } finally {
        await close();
      }
    });
  });
}
