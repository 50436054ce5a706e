// Part of `npm run bench`: what each framework adapter adds to a request, against what idemkit's
// node:http face adds, same store (BENCH_ADAPTER_STORE: memory, or redis), same run. Every framework
// runs the same charge handler plain and guarded, each in its own process; rounds alternate the
// order of targets. The cost of idemkit in a framework is the server CPU time per request it adds
// (from /proc; the steadier figure on this machine) and the time per request it adds at saturation
// (1/throughput). The bar (issue 5): an adapter's cost at most 1.15 times the node face's.
// BENCH_FRAMEWORKS=express,hono picks frameworks (node always runs). Writes bench/results/adapters.json.
import {
  CONNECTIONS,
  cpuMs,
  DURATION_S,
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

const FRAMEWORKS = [
  'node',
  ...(process.env.BENCH_FRAMEWORKS ?? 'express,fastify,hono,nest-express,nest-fastify')
    .split(',')
    .filter((f) => f !== '' && f !== 'node'),
];
const STORE = process.env.BENCH_ADAPTER_STORE ?? 'redis';
const PREFIX = `idemkit-bench-adapters-${process.pid}:`;
const env = { ...process.env, BENCH_ADAPTER_STORE: STORE, BENCH_REDIS_PREFIX: PREFIX };
const targets = FRAMEWORKS.flatMap((f) => [`${f}/plain`, `${f}/idemkit`]);
const paths = ['first', 'replay'];
const samples = {};

try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const path of paths) {
      for (const target of round % 2 === 0 ? targets : [...targets].reverse()) {
        const [framework, variant] = target.split('/');
        const args = ['bench/adapter-server.js', framework, variant];
        const { child, port } = await startProcess(target, args, { env });
        const url = `http://127.0.0.1:${port}/charges`;
        if (path === 'replay' && variant === 'idemkit') await prime(url);
        await load(url, path, WARMUP_S);
        const before = cpuMs(child.pid);
        const result = await load(url, path);
        const after = cpuMs(child.pid);
        await stopProcess(child);
        const bad = result.non2xx + result.errors + result.timeouts;
        if (bad > 0) throw new Error(`${target}/${path}: ${bad} failed requests (non-2xx ${result.non2xx})`);
        const cpuUs = before === undefined ? Number.NaN : ((after - before) * 1000) / result.requests.total;
        const key = `${target}/${path}`;
        samples[key] ??= [];
        samples[key].push({ rps: result.requests.average, p99: result.latency.p99, cpuUs });
        console.log(
          `round ${round + 1} ${key.padEnd(28)} ${result.requests.average.toFixed(0).padStart(7)} req/s  p99 ${result.latency.p99} ms  cpu ${cpuUs.toFixed(0)} µs/req`,
        );
      }
    }
  }
} finally {
  if (STORE === 'redis') await removeRedisKeys(PREFIX);
}

/** What idemkit adds per request in one framework, per round: CPU µs and wall µs at saturation. */
function costs(framework, path) {
  const plain = samples[`${framework}/plain/${path}`];
  const guarded = samples[`${framework}/idemkit/${path}`];
  return plain.map((p, i) => ({
    cpuUs: guarded[i].cpuUs - p.cpuUs,
    wallUs: 1e6 / guarded[i].rps - 1e6 / p.rps,
  }));
}

const rows = [];
for (const path of paths) {
  const node = costs('node', path);
  for (const framework of FRAMEWORKS) {
    const mine = costs(framework, path);
    const plain = samples[`${framework}/plain/${path}`];
    const guarded = samples[`${framework}/idemkit/${path}`];
    rows.push({
      framework,
      path,
      plainRps: median(plain.map((s) => s.rps)),
      idemkitRps: median(guarded.map((s) => s.rps)),
      plainCpuUs: median(plain.map((s) => s.cpuUs)),
      idemkitCpuUs: median(guarded.map((s) => s.cpuUs)),
      addedCpuUs: median(mine.map((c) => c.cpuUs)),
      addedWallUs: median(mine.map((c) => c.wallUs)),
      // Each round's own ratio: the adapter's added CPU over the node face's, measured back to back.
      cpuCostRatioPerRound: mine.map((c, i) => c.cpuUs / node[i].cpuUs),
      cpuCostRatio: median(mine.map((c) => c.cpuUs)) / median(node.map((c) => c.cpuUs)),
      wallCostRatio: median(mine.map((c) => c.wallUs)) / median(node.map((c) => c.wallUs)),
    });
  }
}

console.log(
  `\nwhat idemkit adds per request, by framework, store ${STORE}; the node:http face is the bar's base`,
);
console.log(`${CONNECTIONS} connections, ${DURATION_S} s per sample, median of ${ROUNDS} rounds\n`);
console.log(
  '| framework | path | plain req/s | idemkit req/s | plain CPU µs/req | idemkit CPU µs/req | added CPU µs | added wall µs | CPU cost / node face | per round | wall cost / node face |',
);
console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.framework} | ${r.path} | ${r.plainRps.toFixed(0)} | ${r.idemkitRps.toFixed(0)} | ${r.plainCpuUs.toFixed(0)} | ${r.idemkitCpuUs.toFixed(0)} | ${r.addedCpuUs.toFixed(0)} | ${r.addedWallUs.toFixed(0)} | ${r.cpuCostRatio.toFixed(2)} | ${r.cpuCostRatioPerRound.map((x) => x.toFixed(2)).join(', ')} | ${r.wallCostRatio.toFixed(2)} |`,
  );
}

writeResults('adapters', {
  store: STORE,
  connections: CONNECTIONS,
  durationS: DURATION_S,
  rounds: ROUNDS,
  rows,
  samples,
});
