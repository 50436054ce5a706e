// `npm start`: the idemkit gateway on PORT (default 8080) with the embedded SQLite store
// (./idemkit.db), in front of the demo charges API (examples/charges-api.js), which it starts
// alongside on an ephemeral port. Prints the curl commands that show a replay, a 409 and a 400.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { main } from 'idemkit/gateway';
import { tryIt } from './charges.js';

const port = process.env.PORT ?? '8080';
const api = spawn(process.execPath, [fileURLToPath(new URL('./charges-api.js', import.meta.url)), '0'], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const apiPort = await new Promise((resolve, reject) => {
  api.once('exit', (code) => reject(new Error(`the demo charges API exited with ${code}`)));
  const ready = (data) => {
    const match = /listening on (\d+)/.exec(String(data));
    if (match === null) return;
    api.stdout.off('data', ready);
    api.stdout.on('data', (more) => process.stdout.write(more));
    resolve(match[1]);
  };
  api.stdout.on('data', ready);
});
api.removeAllListeners('exit');

const base = `http://localhost:${port}`;
console.log(`
idemkit gateway on ${base} (SQLite store ./idemkit.db) in front of the demo charges API on 127.0.0.1:${apiPort}.
The gateway's JSON log follows: every decision, with keys, never bodies.

${tryIt(base)}

  # metrics and health
  curl ${base}/metrics
  curl ${base}/healthz
`);

const status = await main(
  ['serve', '--upstream', `http://127.0.0.1:${apiPort}`, '--port', port, '--store', 'sqlite:./idemkit.db'],
  process.env,
);
api.kill('SIGTERM');
process.exitCode = status;
