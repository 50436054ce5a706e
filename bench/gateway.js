// `npm run bench` (second part): the gateway (`idemkit serve`, audit log on) on SQLite and on
// Redis against a plain undici reverse proxy (bench/plain-proxy.js), all in front of one upstream
// (bench/server.js plain, the same handler as the store benchmark), same run, rounds alternating
// the order of targets. Writes bench/results/gateway.json. BENCH_GATEWAY_STORES=sqlite picks stores.
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import {
  CONNECTIONS,
  cpuMs,
  DURATION_S,
  load,
  median,
  prime,
  REDIS_URL,
  ROUNDS,
  removeRedisKeys,
  startProcess,
  stopProcess,
  WARMUP_S,
  writeResults,
} from './lib.js';

const STORES = (process.env.BENCH_GATEWAY_STORES ?? 'sqlite,redis').split(',').filter(Boolean);
const RUN_ID = `${process.pid}_${Date.now()}`;
const PREFIX = `idemkit-bench-gw-${RUN_ID}:`;
const tmp = mkdtempSync(join(os.tmpdir(), 'idemkit-bench-gw-'));
let starts = 0;

const upstream = await startProcess('upstream', ['bench/server.js', 'plain']);
const upstreamUrl = `http://127.0.0.1:${upstream.port}`;

async function startTarget(mode) {
  if (mode === 'plain-proxy') {
    const { child, port } = await startProcess(mode, ['bench/plain-proxy.js', upstreamUrl]);
    return { child, url: `http://127.0.0.1:${port}/charges` };
  }
  const n = starts++;
  const store = mode === 'sqlite' ? `sqlite:${join(tmp, `gw-${n}.db`)}` : `${REDIS_URL}?prefix=${PREFIX}`;
  // The log (every decision: the audit trail) goes to a file, as an operator's would.
  const logFile = join(tmp, `gw-${n}.log`);
  const logFd = openSync(logFile, 'w');
  const args = ['dist/gateway/bin.js', 'serve', '--upstream', upstreamUrl, '--port', '0', '--store', store];
  const { child, port } = await startProcess(mode, args, { logFd, logFile });
  return { child, url: `http://127.0.0.1:${port}/charges` };
}

const targets = ['plain-proxy', ...STORES];
const paths = ['first', 'replay'];
const samples = {};
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const path of paths) {
      for (const mode of round % 2 === 0 ? targets : [...targets].reverse()) {
        const target = await startTarget(mode);
        if (path === 'replay') await prime(target.url);
        await load(target.url, path, WARMUP_S);
        const cpuBefore = cpuMs(target.child.pid);
        const result = await load(target.url, path);
        const cpuAfter = cpuMs(target.child.pid);
        // CPU per request of the proxy or gateway process: steadier than req/s on a shared machine.
        const cpuUs =
          cpuBefore === undefined ? undefined : ((cpuAfter - cpuBefore) * 1000) / result.requests.total;
        await stopProcess(target.child);
        const bad = result.non2xx + result.errors + result.timeouts;
        if (bad > 0) throw new Error(`${mode}/${path}: ${bad} failed requests (non-2xx ${result.non2xx})`);
        const key = `${mode}/${path}`;
        samples[key] ??= [];
        samples[key].push({
          rps: result.requests.average,
          p50: result.latency.p50,
          p99: result.latency.p99,
          cpuUs,
        });
        console.log(
          `round ${round + 1} ${key.padEnd(19)} ${result.requests.average.toFixed(0).padStart(7)} req/s  p99 ${result.latency.p99} ms  cpu ${cpuUs?.toFixed(0)} µs/req`,
        );
      }
    }
  }
} finally {
  await stopProcess(upstream.child);
  await cleanup();
}

const rows = [];
for (const store of STORES) {
  for (const path of paths) {
    const base = samples[`plain-proxy/${path}`];
    const mine = samples[`${store}/${path}`];
    rows.push({
      store,
      path,
      proxyRps: median(base.map((s) => s.rps)),
      gatewayRps: median(mine.map((s) => s.rps)),
      ratio: median(mine.map((s) => s.rps)) / median(base.map((s) => s.rps)),
      ratioPerRound: mine.map((s, i) => s.rps / base[i].rps),
      proxyP99Ms: median(base.map((s) => s.p99)),
      gatewayP99Ms: median(mine.map((s) => s.p99)),
      proxyCpuUs: median(base.map((s) => s.cpuUs ?? Number.NaN)),
      gatewayCpuUs: median(mine.map((s) => s.cpuUs ?? Number.NaN)),
    });
  }
}
console.log('\nidemkit serve against a plain undici reverse proxy, same upstream, same run');
console.log(`${CONNECTIONS} connections, ${DURATION_S} s per sample, median of ${ROUNDS} rounds\n`);
console.log(
  '| gateway store | path | plain proxy req/s | gateway req/s | ratio | ratio per round | proxy p99 | gateway p99 | CPU µs/req proxy → gateway |',
);
console.log('| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |');
for (const r of rows) {
  console.log(
    `| ${r.store} | ${r.path} | ${r.proxyRps.toFixed(0)} | ${r.gatewayRps.toFixed(0)} | ${r.ratio.toFixed(2)}x | ${r.ratioPerRound.map((x) => x.toFixed(2)).join(', ')} | ${r.proxyP99Ms} ms | ${r.gatewayP99Ms} ms | ${r.proxyCpuUs.toFixed(0)} → ${r.gatewayCpuUs.toFixed(0)} |`,
  );
}

async function cleanup() {
  rmSync(tmp, { recursive: true, force: true });
  if (STORES.includes('redis')) await removeRedisKeys(PREFIX);
}

writeResults('gateway', {
  connections: CONNECTIONS,
  durationS: DURATION_S,
  rounds: ROUNDS,
  rows,
  samples,
});
