// The last step of `npm run bench`: bench/RESULTS.md from the JSON the benchmarks wrote in
// bench/results (latest.json: stores and peers; adapters.json; gateway.json; scale.json), with the
// machine, the versions of everything measured and the goals of issue 8 marked met or missed.
// A part whose JSON is missing is left out and named.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { DATABASE_URL, median, REDIS_URL } from './lib.js';

const require = createRequire(import.meta.url);
const read = (name) =>
  existsSync(`bench/results/${name}.json`)
    ? JSON.parse(readFileSync(`bench/results/${name}.json`, 'utf8'))
    : undefined;
const stores = read('latest');
const adapters = read('adapters');
const gateway = read('gateway');
const scaleFile = read('scale');
// Each part of bench/scale.js as { at, value } (see there); older files held the values directly.
const scale = scaleFile && {
  body: scaleFile.parts?.body?.value,
  records: scaleFile.parts?.records?.value,
  concurrency: scaleFile.parts?.concurrency?.value,
  at: Object.fromEntries(Object.entries(scaleFile.parts ?? {}).map(([k, v]) => [k, v.at])),
};

// Read from node_modules directly: some packages (hono) do not export their package.json.
const versionOf = (name) => {
  try {
    return JSON.parse(readFileSync(`node_modules/${name}/package.json`, 'utf8')).version;
  } catch {
    try {
      return require(`${name}/package.json`).version;
    } catch {
      return 'not installed';
    }
  }
};

async function serviceVersions() {
  const out = {};
  try {
    const { Redis } = await import('ioredis');
    const client = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0 });
    await client.connect();
    out.redis = /redis_version:(\S+)/.exec(await client.info('server'))?.[1];
    client.disconnect();
  } catch (error) {
    out.redis = `unreachable (${error.message})`;
  }
  try {
    const { default: pg } = await import('pg');
    const client = new pg.Client({ connectionString: DATABASE_URL });
    await client.connect();
    out.postgres = (await client.query('SHOW server_version')).rows[0].server_version;
    await client.end();
  } catch (error) {
    out.postgres = `unreachable (${error.message})`;
  }
  try {
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(':memory:');
    out.sqlite = db.prepare('SELECT sqlite_version() AS v').get().v;
    db.close();
  } catch (error) {
    out.sqlite = `unavailable (${error.message})`;
  }
  return out;
}

const services = await serviceVersions();
const x = (n) => `${n.toFixed(2)}×`;
const rounds = (list) => list.map((v) => v.toFixed(2)).join(', ');
const int = (n) => Math.round(n).toLocaleString('en');
const lines = [];
const say = (...l) => lines.push(...l);

say(
  '# Benchmark results',
  '',
  'Written by `npm run bench` (`bench/report.js`) from the JSON in `bench/results/`; every figure',
  'below comes from the run it describes. Loopback only: the load generator (autocannon), the',
  'servers and the databases share the machine.',
  '',
  '## Machine and versions',
  '',
  `- CPU: ${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores; memory ${Math.round(os.totalmem() / 2 ** 30)} GiB; ${os.platform()} ${os.release()}`,
  `- Node.js ${process.version}; Redis ${services.redis}; PostgreSQL ${services.postgres}; SQLite ${services.sqlite} (better-sqlite3 ${versionOf('better-sqlite3')})`,
  `- idemkit ${versionOf('idemkit')}; ioredis ${versionOf('ioredis')} (auto-pipelining on); pg ${versionOf('pg')}; autocannon ${versionOf('autocannon')}`,
  `- frameworks: express ${versionOf('express')}, fastify ${versionOf('fastify')}, hono ${versionOf('hono')} (@hono/node-server ${versionOf('@hono/node-server')}), @nestjs/core ${versionOf('@nestjs/core')}`,
  `- peers: @node-idempotency/core ${versionOf('@node-idempotency/core')} with @node-idempotency/storage-adapter-redis ${versionOf('@node-idempotency/storage-adapter-redis')}; @aws-lambda-powertools/idempotency ${versionOf('@aws-lambda-powertools/idempotency')} (CachePersistenceLayer) on @redis/client ${versionOf('@redis/client')}`,
  `- written ${new Date().toISOString()}`,
  '',
);

if (stores) {
  const goals = {
    'memory/first': 0.7,
    'memory/replay': 0.9,
    'redis/first': 0.5,
    'redis/replay': 0.7,
    'sqlite/first': 0.45,
    'postgres/first': 0.3,
  };
  say(
    '## Stores behind the node:http face, and the peers',
    '',
    `Measured ${stores.at}. \`bench/run.js\`: ${stores.connections} connections, ${stores.durationS} s per sample, median of ${stores.rounds} rounds; every target in its own process, rounds alternating the order. Ratio: req/s against plain node:http with the same handler in the same run, in two forms: the ratio of the medians, and each round's own ratio (a round runs its targets back to back) with their median. A goal is judged on the latter: the plain server's throughput swings between rounds here, and a ratio of medians can pair a slow plain round with a fast guarded one.`,
    '',
    '| target | path | plain req/s | req/s | ratio of medians | per round | median per round | goal | p99 plain → target |',
    '| --- | --- | ---: | ---: | ---: | --- | ---: | --- | --- |',
  );
  for (const r of stores.rows) {
    const goal = goals[`${r.store}/${r.path}`];
    const perRound = median(r.ratioPerRound);
    const verdict = goal === undefined ? '—' : `≥ ${goal}: ${perRound >= goal ? 'met' : '**missed**'}`;
    say(
      `| ${r.store} | ${r.path} | ${int(r.plainRps)} | ${int(r.idemkitRps)} | ${x(r.ratio)} | ${rounds(r.ratioPerRound)} | ${x(perRound)} | ${verdict} | ${r.plainP99Ms} → ${r.idemkitP99Ms} ms |`,
    );
  }
  if (stores.peerRows?.length > 0) {
    // The goal is against the best peer of each path: the one with the most req/s there.
    const rpsOf = (peer, path) => stores.rows.find((r) => r.store === peer && r.path === path).idemkitRps;
    const best = (path) =>
      stores.peerRows
        .filter((r) => r.path === path)
        .reduce((a, b) => (rpsOf(b.peer, path) > rpsOf(a.peer, path) ? b : a)).peer;
    say(
      '',
      'idemkit on Redis against each peer on the same Redis (goal: ≥ 1.5× the best peer of each path, the peer with the most req/s there):',
      '',
      '| peer | path | idemkit / peer, ratio of medians | per round | median per round | goal |',
      '| --- | --- | ---: | --- | ---: | --- |',
    );
    for (const r of stores.peerRows) {
      const perRound = median(r.ratioPerRound);
      const verdict =
        best(r.path) === r.peer
          ? `best peer; ≥ 1.5: ${perRound >= 1.5 ? 'met' : '**missed**'}`
          : 'not the best peer';
      say(
        `| ${r.peer} | ${r.path} | ${x(r.ratio)} | ${rounds(r.ratioPerRound)} | ${x(perRound)} | ${verdict} |`,
      );
    }
  }
  const own = stores.rows.filter((r) => !['node-idempotency', 'powertools'].includes(r.store));
  const over = own.filter((r) => r.idemkitP99Ms > 5);
  const within = own.filter((r) => r.idemkitP99Ms <= 5);
  const list = (rows) => rows.map((r) => `${r.store}/${r.path} (${r.idemkitP99Ms} ms)`).join(', ');
  say(
    '',
    `p99 at ${stores.connections} connections (goal ≤ 5 ms; median of the rounds' p99): ${over.length === 0 ? 'met on every store and path' : `met on ${list(within) || 'none'}; **missed** on ${list(over)}`}.`,
    '',
  );
} else say('(no bench/results/latest.json: bench/run.js did not run)', '');

if (adapters) {
  say(
    `## Framework adapters (store: ${adapters.store})`,
    '',
    `Measured ${adapters.at}. \`bench/adapters.js\`: each framework plain and guarded, ${adapters.connections} connections, ${adapters.durationS} s, median of ${adapters.rounds} rounds. CPU µs per request of the server process (from /proc), and what idemkit adds against what it adds on the node:http face.`,
    '',
    '| framework | path | plain req/s | idemkit req/s | ratio | CPU µs/req plain → idemkit | added | added / node face |',
    '| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |',
  );
  for (const r of adapters.rows) {
    say(
      `| ${r.framework} | ${r.path} | ${int(r.plainRps)} | ${int(r.idemkitRps)} | ${x(r.idemkitRps / r.plainRps)} | ${int(r.plainCpuUs)} → ${int(r.idemkitCpuUs)} | ${int(r.addedCpuUs)} | ${r.cpuCostRatio.toFixed(2)} |`,
    );
  }
  say('');
} else say('(no bench/results/adapters.json: bench/adapters.js did not run)', '');

if (gateway) {
  say(
    '## The gateway',
    '',
    `Measured ${gateway.at}. \`bench/gateway.js\`: \`idemkit serve\` against a plain undici reverse proxy on the same upstream, ${gateway.connections} connections, ${gateway.durationS} s, median of ${gateway.rounds} rounds.`,
    '',
    '| store | path | proxy req/s | gateway req/s | ratio | per round | p99 proxy → gateway | CPU µs/req proxy → gateway |',
    '| --- | --- | ---: | ---: | ---: | --- | --- | --- |',
  );
  for (const r of gateway.rows) {
    say(
      `| ${r.store} | ${r.path} | ${int(r.proxyRps)} | ${int(r.gatewayRps)} | ${x(r.ratio)} | ${rounds(r.ratioPerRound)} | ${r.proxyP99Ms} → ${r.gatewayP99Ms} ms | ${int(r.proxyCpuUs)} → ${int(r.gatewayCpuUs)} |`,
    );
  }
  say('');
} else say('(no bench/results/gateway.json: bench/gateway.js did not run)', '');

if (scale) {
  say('## Scale', '');
  if (scale.body) {
    say(
      '### Body size (memory store of 1,000 records, 4 requests in flight)',
      '',
      `Measured ${scale.at.body}.`,
      '',
      'Server CPU per request, what idemkit adds per MiB of body (flat = linear), and the peak RSS of the server process over the sample.',
      '',
      '| body | type | CPU µs/req plain → idemkit | added µs/req | added µs per MiB | peak RSS plain → idemkit |',
      '| ---: | --- | --- | ---: | ---: | --- |',
    );
    for (const r of scale.body) {
      say(
        `| ${int(r.bytes)} B | ${r.type} | ${int(r.plain.cpuUsPerRequest)} → ${int(r.memory.cpuUsPerRequest)} | ${int(r.addedUsPerRequest)} | ${int(r.addedUsPerMiB)} | ${int(r.plain.peakRssMiB)} → ${int(r.memory.peakRssMiB)} MiB |`,
      );
    }
    say('');
  }
  if (scale.records) {
    say(
      `### Record count (${int(scale.records.count)} completed records written beside the benchmark's own)`,
      '',
      `Measured ${scale.at.records}.`,
      '',
      '| store | path | empty req/s (p99) | full req/s (p99) | full / empty |',
      '| --- | --- | --- | --- | ---: |',
    );
    for (const r of scale.records.rows) {
      for (const path of ['first', 'replay']) {
        say(
          `| ${r.store} | ${path} | ${int(r.empty[path].rps)} (${r.empty[path].p99Ms} ms) | ${int(r.full[path].rps)} (${r.full[path].p99Ms} ms) | ${x(r.full[path].rps / r.empty[path].rps)} |`,
        );
      }
    }
    const pg = scale.records.rows.find((r) => r.store === 'postgres');
    if (pg?.prune) {
      say(
        '',
        `PostgreSQL prune: ${int(pg.prune.removed)} expired records deleted in ${int(pg.prune.ms)} ms (batches of 1,000) from a table of ${int(pg.rowsInTable)}. Redis needs no prune (each record carries a PEXPIRE).`,
      );
    }
    say('');
  }
  if (scale.concurrency) {
    say(
      '### Concurrency (first-request path)',
      '',
      `Measured ${scale.at.concurrency}.`,
      '',
      '| connections | plain req/s (p99) | memory req/s (p99) | Redis req/s (p99) |',
      '| ---: | --- | --- | --- |',
    );
    for (const r of scale.concurrency) {
      say(
        `| ${r.connections} | ${int(r.plain.rps)} (${r.plain.p99Ms} ms) | ${int(r.memory.rps)} (${r.memory.p99Ms} ms) | ${int(r.redis.rps)} (${r.redis.p99Ms} ms) |`,
      );
    }
    say('');
  }
} else say('(no bench/results/scale.json: bench/scale.js did not run)', '');

writeFileSync('bench/RESULTS.md', `${lines.join('\n')}\n`);
console.log('wrote bench/RESULTS.md');
