// `npm run bench`: autocannon on loopback against plain node:http and node:http + idemkit (memory
// store), same handler, same run. Each target runs in its own process; rounds alternate targets so
// drift on this machine hits both alike. Prints ratios and writes bench/results/latest.json.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import autocannon from 'autocannon';

const DURATION_S = Number(process.env.BENCH_DURATION_S ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);
const BODY = JSON.stringify({
  amount: 1000,
  currency: 'usd',
  description: 'benchmark charge',
  customer: 'cus_123',
});

function startTarget(mode) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bench/server.js', mode], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const timer = setTimeout(() => reject(new Error(`${mode} did not start`)), 10_000);
    child.stdout.on('data', (data) => {
      const match = /listening (\d+)/.exec(String(data));
      if (match) {
        clearTimeout(timer);
        resolve({ child, url: `http://127.0.0.1:${match[1]}/charges` });
      }
    });
    child.on('exit', (code) => reject(new Error(`${mode} exited with ${code}`)));
  });
}

function stopTarget(target) {
  return new Promise((resolve) => {
    target.child.removeAllListeners('exit');
    target.child.once('exit', resolve);
    target.child.kill('SIGTERM');
  });
}

function load(url, path) {
  const fixedKey = `replay-${randomUUID()}`;
  return new Promise((resolve, reject) => {
    autocannon(
      {
        url,
        connections: CONNECTIONS,
        duration: DURATION_S,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: BODY,
        requests: [
          {
            setupRequest(request) {
              request.headers['idempotency-key'] = path === 'first' ? randomUUID() : fixedKey;
              return request;
            },
          },
        ],
      },
      (error, result) => (error ? reject(error) : resolve(result)),
    );
  });
}

const targets = ['plain', 'memory'];
const paths = ['first', 'replay'];
const samples = {};
for (let round = 0; round < ROUNDS; round++) {
  for (const path of paths) {
    for (const mode of round % 2 === 0 ? targets : [...targets].reverse()) {
      const target = await startTarget(mode);
      await load(target.url, path); // warm-up run, discarded
      const result = await load(target.url, path);
      await stopTarget(target);
      const bad = result.non2xx + result.errors + result.timeouts;
      if (bad > 0) throw new Error(`${mode}/${path}: ${bad} failed requests (non-2xx ${result.non2xx})`);
      const key = `${mode}/${path}`;
      samples[key] ??= [];
      samples[key].push({
        rps: result.requests.average,
        p50: result.latency.p50,
        p99: result.latency.p99,
      });
      console.log(
        `round ${round + 1} ${key.padEnd(14)} ${result.requests.average.toFixed(0).padStart(7)} req/s  p99 ${result.latency.p99} ms`,
      );
    }
  }
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const summary = {};
for (const [key, list] of Object.entries(samples)) {
  summary[key] = { rps: median(list.map((s) => s.rps)), p99Ms: median(list.map((s) => s.p99)) };
}
const rows = [];
for (const path of paths) {
  const base = summary[`plain/${path}`];
  const idem = summary[`memory/${path}`];
  rows.push({
    path,
    plainRps: base.rps,
    idemkitRps: idem.rps,
    ratio: idem.rps / base.rps,
    plainP99Ms: base.p99Ms,
    idemkitP99Ms: idem.p99Ms,
  });
}
console.log('\nnode:http + idemkit (memory store) against plain node:http, same handler, same run');
console.log(`${CONNECTIONS} connections, ${DURATION_S} s per sample, median of ${ROUNDS} rounds\n`);
console.log('| path | plain req/s | idemkit req/s | ratio | plain p99 | idemkit p99 |');
console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.path} | ${r.plainRps.toFixed(0)} | ${r.idemkitRps.toFixed(0)} | ${r.ratio.toFixed(2)}x | ${r.plainP99Ms} ms | ${r.idemkitP99Ms} ms |`,
  );
}
mkdirSync('bench/results', { recursive: true });
const machine = {
  node: process.version,
  cpus: os.cpus().length,
  cpu: os.cpus()[0]?.model,
  platform: `${os.platform()} ${os.release()}`,
};
writeFileSync(
  'bench/results/latest.json',
  JSON.stringify(
    {
      at: new Date().toISOString(),
      machine,
      connections: CONNECTIONS,
      durationS: DURATION_S,
      rounds: ROUNDS,
      rows,
      samples,
    },
    null,
    2,
  ),
);
