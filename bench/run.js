// `npm run bench`: autocannon on loopback against plain node:http and node:http + idemkit on each
// store (memory, SQLite, Redis, PostgreSQL), same handler, same run. Each target runs in its own
// process; rounds alternate the order of targets so drift on this machine hits all alike. With Redis,
// the two peers (bench/peers.js) run on the same Redis around the same handler. Prints ratios and
// writes bench/results/latest.json. BENCH_STORES=memory,redis picks stores, BENCH_PEERS= none.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import {
  CONNECTIONS,
  DURATION_S,
  dropPostgresTable,
  load,
  median,
  prime,
  ROUNDS,
  removeRedisKeys,
  startProcess,
  stopProcess,
  WARMUP_S,
  writeResults,
} from './lib.js';

const STORES = (process.env.BENCH_STORES ?? 'memory,sqlite,redis,postgres').split(',').filter(Boolean);
const PEERS = STORES.includes('redis')
  ? (process.env.BENCH_PEERS ?? 'node-idempotency,powertools').split(',').filter(Boolean)
  : [];
const RUN_ID = `${process.pid}_${Date.now()}`;
const tmp = mkdtempSync(join(os.tmpdir(), 'idemkit-bench-'));
const targetEnv = {
  ...process.env,
  BENCH_REDIS_PREFIX: `idemkit-bench-${RUN_ID}:`,
  BENCH_PG_TABLE: `idemkit_bench_${RUN_ID}`,
};
let sqliteFiles = 0;

async function startTarget(mode) {
  // A fresh SQLite file per target start, so every sample starts from the same state.
  const env = { ...targetEnv, BENCH_SQLITE_PATH: join(tmp, `bench-${sqliteFiles++}.db`) };
  const { child, port } = await startProcess(mode, ['bench/server.js', mode], { env });
  return { child, url: `http://127.0.0.1:${port}/charges` };
}

const stopTarget = (target) => stopProcess(target.child);

const targets = ['plain', ...STORES, ...PEERS];
const paths = ['first', 'replay'];
const samples = {};
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const path of paths) {
      for (const mode of round % 2 === 0 ? targets : [...targets].reverse()) {
        const target = await startTarget(mode);
        if (path === 'replay') await prime(target.url);
        await load(target.url, path, WARMUP_S); // warm-up run, discarded
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
} finally {
  await cleanup();
}

const summary = {};
for (const [key, list] of Object.entries(samples)) {
  summary[key] = { rps: median(list.map((s) => s.rps)), p99Ms: median(list.map((s) => s.p99)) };
}
const rows = [];
for (const store of [...STORES, ...PEERS]) {
  for (const path of paths) {
    const base = summary[`plain/${path}`];
    const idem = summary[`${store}/${path}`];
    // The plain server swings more between rounds than idemkit does on this machine, so each
    // round's own ratio (targets of one round run back to back) is shown beside the ratio of medians.
    const perRound = samples[`${store}/${path}`].map(
      (sample, i) => sample.rps / samples[`plain/${path}`][i].rps,
    );
    rows.push({
      store,
      path,
      plainRps: base.rps,
      idemkitRps: idem.rps,
      ratio: idem.rps / base.rps,
      ratioPerRound: perRound,
      plainP99Ms: base.p99Ms,
      idemkitP99Ms: idem.p99Ms,
    });
  }
}
const peerRows = PEERS.flatMap((peer) =>
  paths.map((path) => ({
    peer,
    path,
    ratio: summary[`redis/${path}`].rps / summary[`${peer}/${path}`].rps,
    ratioPerRound: samples[`redis/${path}`].map((s, i) => s.rps / samples[`${peer}/${path}`][i].rps),
  })),
);
console.log('\nnode:http + idemkit (and the peers) against plain node:http, same handler, same run');
console.log(`${CONNECTIONS} connections, ${DURATION_S} s per sample, median of ${ROUNDS} rounds\n`);
console.log(
  '| store | path | plain req/s | idemkit req/s | ratio | ratio per round | plain p99 | idemkit p99 |',
);
console.log('| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.store} | ${r.path} | ${r.plainRps.toFixed(0)} | ${r.idemkitRps.toFixed(0)} | ${r.ratio.toFixed(2)}x | ${r.ratioPerRound.map((x) => x.toFixed(2)).join(', ')} | ${r.plainP99Ms} ms | ${r.idemkitP99Ms} ms |`,
  );
}

async function cleanup() {
  rmSync(tmp, { recursive: true, force: true });
  if (STORES.includes('redis')) await removeRedisKeys(targetEnv.BENCH_REDIS_PREFIX);
  if (STORES.includes('postgres')) await dropPostgresTable(targetEnv.BENCH_PG_TABLE);
}

if (peerRows.length > 0) {
  console.log('\n| idemkit on Redis / peer | path | ratio of medians | per round |');
  console.log('| --- | --- | ---: | --- |');
  for (const r of peerRows) {
    console.log(
      `| ${r.peer} | ${r.path} | ${r.ratio.toFixed(2)}x | ${r.ratioPerRound.map((x) => x.toFixed(2)).join(', ')} |`,
    );
  }
}

writeResults('latest', {
  connections: CONNECTIONS,
  durationS: DURATION_S,
  rounds: ROUNDS,
  stores: STORES,
  peers: PEERS,
  rows,
  peerRows,
  samples,
});
