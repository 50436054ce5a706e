// `npm run bench:instructions`: what each framework adapter adds to a request, counted in machine
// instructions under valgrind's callgrind instead of timed, so that the figure repeats from run to
// run whatever else the machine does (two runs of one target here differ by well under 1%; timed
// CPU per request swings by a third). Each target (bench/adapter-server.js, memory store) runs
// under callgrind, is warmed up uncounted, then counted over a fixed number of requests. The bar
// (issue 5): an adapter adds at most 1.15 times what the node:http face adds. Needs valgrind.
// BENCH_FRAMEWORKS, BENCH_INSTR_REQUESTS (default 2000), BENCH_INSTR_WARMUP (default 1500).
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { prime, sendRequests, writeResults } from './lib.js';

const FRAMEWORKS = [
  'node',
  ...(process.env.BENCH_FRAMEWORKS ?? 'express,fastify,hono,nest-express,nest-fastify')
    .split(',')
    .filter((f) => f !== '' && f !== 'node' && f !== 'none'),
];
const REQUESTS = Number(process.env.BENCH_INSTR_REQUESTS ?? 2000);
const WARMUP = Number(process.env.BENCH_INSTR_WARMUP ?? 1500);
const tmp = mkdtempSync(join(os.tmpdir(), 'idemkit-callgrind-'));

/** Instructions per request of one target on one path. */
async function count(framework, variant, path) {
  const out = join(tmp, `${framework}-${variant}-${path}`);
  mkdirSync(out);
  const child = spawn(
    'valgrind',
    [
      '--tool=callgrind',
      `--callgrind-out-file=${out}/callgrind.%p`,
      '--instr-atstart=no',
      // One file per thread: only the main thread (JavaScript, and the GC work done on it) is
      // counted, not V8's compiler and GC helper threads, whose share of the window varies.
      '--separate-threads=yes',
      process.execPath,
      'bench/adapter-server.js',
      framework,
      variant,
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${framework}/${variant} did not start`)), 300_000);
    child.stdout.on('data', (data) => {
      const match = /listening (\d+)/.exec(String(data));
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once('exit', (code) => reject(new Error(`${framework}/${variant} exited with ${code}`)));
  });
  const url = `http://127.0.0.1:${port}/charges`;
  if (path === 'replay' && variant === 'idemkit') await prime(url);
  await sendRequests(url, path, WARMUP);
  const control = (...args) =>
    execFileSync('callgrind_control', [...args, String(child.pid)], { stdio: 'ignore' });
  control('-i', 'on');
  const bad = await sendRequests(url, path, REQUESTS);
  control('-i', 'off');
  control('-d');
  child.removeAllListeners('exit');
  await new Promise((resolve) => {
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
  if (bad > 0) throw new Error(`${framework}/${variant}/${path}: ${bad} answers were not 201`);
  let instructions = 0;
  for (const file of readdirSync(out).filter((name) => name.endsWith('-01'))) {
    const match = /^totals: (\d+)/m.exec(readFileSync(join(out, file), 'utf8'));
    if (match) instructions += Number(match[1]);
  }
  return instructions / REQUESTS;
}

const results = {};
try {
  for (const path of ['first', 'replay']) {
    for (const framework of FRAMEWORKS) {
      for (const variant of ['plain', 'idemkit']) {
        const perRequest = await count(framework, variant, path);
        results[`${framework}/${variant}/${path}`] = perRequest;
        console.log(
          `${`${framework}/${variant}/${path}`.padEnd(28)} ${Math.round(perRequest).toLocaleString('en')} instructions/request`,
        );
      }
    }
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

const rows = [];
for (const path of ['first', 'replay']) {
  const added = (f) => results[`${f}/idemkit/${path}`] - results[`${f}/plain/${path}`];
  for (const framework of FRAMEWORKS) {
    rows.push({
      framework,
      path,
      plain: results[`${framework}/plain/${path}`],
      idemkit: results[`${framework}/idemkit/${path}`],
      added: added(framework),
      ratioToNodeFace: added(framework) / added('node'),
    });
  }
}
const k = (n) => `${(n / 1000).toFixed(0)}k`;
console.log(
  `\ninstructions per request (callgrind, ${REQUESTS} requests after ${WARMUP} uncounted, memory store)\n`,
);
console.log('| framework | path | plain | with idemkit | added by idemkit | added / node face |');
console.log('| --- | --- | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.framework} | ${r.path} | ${k(r.plain)} | ${k(r.idemkit)} | ${k(r.added)} | ${r.ratioToNodeFace.toFixed(2)} |`,
  );
}
writeResults('adapters-instructions', { requests: REQUESTS, warmup: WARMUP, rows });
