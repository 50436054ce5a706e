// The demo charges API on NestJS (Express platform), guarded by idemkit (memory store):
// `node examples/nestjs.js` (PORT, default 8080). Plain JavaScript, so the decorators are applied
// as calls; in TypeScript the controller reads:
//
//   @Controller('api/charges')
//   class ChargesController {
//     @Get() count() { ... }
//     @Post() @Idempotent() create(@Body() input) { ... }
//   }
//
// `rawBody: true` keeps the bytes Nest's body parser reads: the fingerprint is over those.
import 'reflect-metadata';
import { Body, Controller, Get, HttpException, Module, Post } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { createIdempotency } from 'idemkit';
import { IdempotencyModule, Idempotent } from 'idemkit/nestjs';
import { createMemoryStore } from 'idemkit/stores/memory';
import { createLedger, tryIt } from './charges.js';

const engine = createIdempotency({ store: createMemoryStore() });
const ledger = createLedger();

class ChargesController {
  count() {
    return { charges: ledger.count() };
  }
  create(input) {
    const { status, body } = ledger.charge(input);
    // Nest answers a POST with 201; any other status leaves as an exception.
    if (status !== 201) throw new HttpException(body, status);
    return body;
  }
}
const methods = ChargesController.prototype;
const decorate = (name, ...decorators) => {
  const descriptor = Object.getOwnPropertyDescriptor(methods, name);
  for (const d of decorators.reverse()) d(methods, name, descriptor);
};
decorate('count', Get());
decorate('create', Post(), Idempotent());
Body()(methods, 'create', 0);
Controller('api/charges')(ChargesController);

class AppModule {}
Module({ imports: [IdempotencyModule.forRoot({ engine })], controllers: [ChargesController] })(AppModule);

const app = await NestFactory.create(AppModule, { rawBody: true, logger: ['error', 'warn'] });
app.enableShutdownHooks();
await app.listen(Number(process.env.PORT ?? 8080), '127.0.0.1');
const base = `http://localhost:${app.getHttpServer().address().port}`;
console.log(`demo charges API on NestJS with idemkit on ${base}\n\n${tryIt(base)}\n`);
