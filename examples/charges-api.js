// The demo charges API alone (examples/charges.js), for `npm start` to put the gateway in front
// of; alone, every retry would charge again. Usage: node examples/charges-api.js [port]
// (prints "charges API listening on PORT").
import http from 'node:http';
import { createChargesApi } from './charges.js';

const port = Number(process.argv[2] ?? process.env.API_PORT ?? 3000);
const server = http.createServer(createChargesApi());
server.listen(port, '127.0.0.1', () => console.log(`charges API listening on ${server.address().port}`));
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
