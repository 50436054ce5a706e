// The two peers `npm run bench` measures idemkit against, on the same Redis and around the same
// handler as bench/server.js: each wrapped as a node:http handler the way its documentation shows.
//
// - node-idempotency (@node-idempotency/core with @node-idempotency/storage-adapter-redis, on node-redis
//   4): `onRequest` before the handler (SET NX, then GET when the key exists), `onResponse` after it
//   (SET); it fingerprints the parsed body, so the body is parsed before `onRequest`.
// - Powertools for AWS Lambda (@aws-lambda-powertools/idempotency, CachePersistenceLayer on
//   node-redis 6): `makeIdempotent` around a function of { key, body }, the key taken by JMESPath
//   from the event. Without payload validation: in 2.35.0 (the newest release) the cache layer drops
//   the validation hash when a record completes, so with `payloadValidationJmesPath` every replay
//   fails with IdempotencyValidationError (aws-powertools/powertools-lambda-typescript#5705, fixed by
//   #5706, not released yet). So this peer replays a reused key with another body instead of refusing
//   it: it does less than idemkit and node-idempotency, which fingerprint the body.
//
// Both answer a retry in progress with 409, as idemkit does.

const TTL_MS = 24 * 60 * 60 * 1000;

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(body);
}

/** @param charge (input) => string: the handler's work, the JSON it answers with 201. */
export async function nodeIdempotencyHandler(charge, { url, prefix }) {
  const { Idempotency, IdempotencyError, IdempotencyErrorCodes } = await import('@node-idempotency/core');
  const { RedisStorageAdapter } = await import('@node-idempotency/storage-adapter-redis');
  const storage = new RedisStorageAdapter({ url });
  await storage.connect();
  const idempotency = new Idempotency(storage, { cacheKeyPrefix: `${prefix}ni`, cacheTTLMS: TTL_MS });
  return async (req, res) => {
    const body = await readJson(req);
    const params = { headers: req.headers, method: req.method, path: req.url, body };
    let cached;
    try {
      cached = await idempotency.onRequest(params);
    } catch (error) {
      if (!(error instanceof IdempotencyError)) throw error;
      const status = error.code === IdempotencyErrorCodes.IDEMPOTENCY_KEY_LEN_EXEEDED ? 400 : 409;
      return send(res, status, JSON.stringify({ error: error.message }));
    }
    if (cached !== undefined) {
      res.setHeader('idempotent-replayed', 'true');
      return send(res, cached.additional.status, cached.body);
    }
    const answer = charge(body);
    await idempotency.onResponse(params, { body: answer, additional: { status: 201 } });
    send(res, 201, answer);
  };
}

/** Powertools: `makeIdempotent` around the charge, its record in Redis through node-redis. */
export async function powertoolsHandler(charge, { url, prefix }) {
  const { makeIdempotent, IdempotencyConfig } = await import('@aws-lambda-powertools/idempotency');
  const errors = await import('@aws-lambda-powertools/idempotency');
  const { CachePersistenceLayer } = await import('@aws-lambda-powertools/idempotency/cache');
  const { createClient } = await import('@redis/client');
  const client = createClient({ url });
  await client.connect();
  const persistenceStore = new CachePersistenceLayer({ client });
  const config = new IdempotencyConfig({
    eventKeyJmesPath: 'key',
    throwOnNoIdempotencyKey: true,
    expiresAfterSeconds: TTL_MS / 1000,
  });
  // Outside Lambda there is no invocation deadline: this stands for a 30 s one, so an in-progress
  // record gets a lapse time as in Lambda (without it the library logs a warning per request).
  config.registerLambdaContext({ getRemainingTimeInMillis: () => 30_000 });
  const idempotentCharge = makeIdempotent(async (event) => charge(event.body), {
    persistenceStore,
    config,
    keyPrefix: `${prefix}pt`,
  });
  return async (req, res) => {
    const body = await readJson(req);
    let answer;
    try {
      answer = await idempotentCharge({ key: req.headers['idempotency-key'], body });
    } catch (error) {
      if (
        error instanceof errors.IdempotencyAlreadyInProgressError ||
        error instanceof errors.IdempotencyValidationError
      ) {
        return send(res, 409, JSON.stringify({ error: error.message }));
      }
      throw error;
    }
    send(res, 201, answer);
  };
}
