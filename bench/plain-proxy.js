// The gateway benchmark's baseline: a plain reverse proxy on undici (the same client and keep-alive
// pool the gateway uses), with no idempotency. `node bench/plain-proxy.js <upstream-url>`; prints
// "listening <port>".
import http from 'node:http';
import { Pool } from 'undici';

const upstream = new URL(process.argv[2]);
const pool = new Pool(upstream.origin, { keepAliveTimeout: 10_000 });
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'host',
]);

const server = http.createServer(async (req, res) => {
  const headers = {};
  for (const name in req.headers) if (!HOP_BY_HOP.has(name)) headers[name] = req.headers[name];
  try {
    const answer = await pool.request({ path: req.url, method: req.method, headers, body: req });
    const out = {};
    for (const name in answer.headers) if (!HOP_BY_HOP.has(name)) out[name] = answer.headers[name];
    res.writeHead(answer.statusCode, out);
    for await (const chunk of answer.body) res.write(chunk);
    res.end();
  } catch {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  }
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
