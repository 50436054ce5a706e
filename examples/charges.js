// The demo charges API of the examples (POST /api/charges, as in the seed documents; GET
// /api/charges counts the charges made), with no idempotency of its own, and the curl commands
// that show each of idemkit's answers in front of it.

/**
 * The charges themselves, framework-neutral: `charge(input)` validates and makes one charge,
 * answering `{ status, body }`; `count()` says how many were made. Each call keeps its own count.
 */
export function createLedger() {
  let charges = 0;
  return {
    count: () => charges,
    charge(input) {
      if (!Number.isInteger(input?.amount) || input.amount <= 0 || typeof input.currency !== 'string') {
        return { status: 422, body: { error: 'amount (a positive integer) and currency are required' } };
      }
      charges += 1;
      const charge = {
        id: `ch_${String(charges).padStart(5, '0')}`,
        amount: input.amount,
        currency: input.currency,
        status: 'succeeded',
      };
      console.log(
        `charges API: charged ${charge.amount} ${charge.currency} as ${charge.id} (charges so far: ${charges})`,
      );
      return { status: 201, body: charge };
    },
  };
}

/** A node:http handler for the charges API; each call keeps its own count. */
export function createChargesApi() {
  const ledger = createLedger();
  return async function chargesApi(req, res) {
    const json = (status, value) => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
    };
    if (req.url === '/api/charges' && req.method === 'GET') return json(200, { charges: ledger.count() });
    if (req.url !== '/api/charges' || req.method !== 'POST') return json(404, { error: 'not found' });
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    let input;
    try {
      input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      return json(400, { error: 'body must be JSON' });
    }
    const { status, body } = ledger.charge(input);
    json(status, body);
  };
}

/** The curl commands that show a replay, a 409 on a changed body and a 400 without a key. */
export function tryIt(base) {
  const post = (key, body) =>
    `curl -i -X POST ${base}/api/charges${key ? ` -H 'Idempotency-Key: ${key}'` : ''} -H 'Content-Type: application/json' -d '${body}'`;
  return `  # a first request runs and returns 201; run it again: the same 201 comes back, with Idempotent-Replayed: true
  ${post('order-1', '{"amount":1000,"currency":"usd"}')}

  # the same key with a changed body: 409 idempotency_key_reused
  ${post('order-1', '{"amount":2000,"currency":"usd"}')}

  # no key: 400 idempotency_key_missing
  ${post(null, '{"amount":1000,"currency":"usd"}')}

  # how many charges the API really made
  curl ${base}/api/charges`;
}
