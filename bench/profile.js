// `npm run bench:profile -- <target> <first|replay>`: where a request's time goes. Runs
// bench/server.js <target> (plain, memory, sqlite, redis, postgres, node-idempotency, powertools)
// under `node --cpu-prof`, sends BENCH_PROFILE_REQUESTS (20,000) requests, BENCH_PROFILE_CONCURRENCY
// (4) at a time, and prints:
// - the CPU time per request of the server process, user and system (from /proc), and of
//   redis-server when the target uses Redis;
// - the functions with the most self time, in µs per request (wall-clock samples: a frame that
//   waits for the CPU, such as a socket write while another process runs, is counted too).
// The profile stays in bench/results/profiles/ for Chrome DevTools or speedscope.
// BENCH_PROFILE_CPU_ONLY=1 leaves the profiler out (its own cost off the CPU figures).
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { dropPostgresTable, prime, removeRedisKeys, sendRequests } from './lib.js';

const [target = 'memory', path = 'first'] = process.argv.slice(2);
const REQUESTS = Number(process.env.BENCH_PROFILE_REQUESTS ?? 20_000);
const CONCURRENCY = Number(process.env.BENCH_PROFILE_CONCURRENCY ?? 4);
const PREFIX = `idemkit-bench-profile-${process.pid}:`;
const dir = join('bench/results/profiles', `tmp-${process.pid}`);
mkdirSync(dir, { recursive: true });

/** User and system CPU time of a process in µs (/proc/<pid>/stat fields 14 and 15, 10 ms ticks). */
function cpu(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return { user: Number(fields[11]) * 10_000, system: Number(fields[12]) * 10_000 };
}
const usesRedis = target === 'redis' || target === 'node-idempotency' || target === 'powertools';
const redisPid = (() => {
  if (!usesRedis) return undefined;
  try {
    return Number(execFileSync('pgrep', ['-x', 'redis-server']).toString().trim().split('\n')[0]);
  } catch {
    return undefined;
  }
})();

const CPU_ONLY = process.env.BENCH_PROFILE_CPU_ONLY === '1';
const flags = CPU_ONLY ? [] : ['--cpu-prof', `--cpu-prof-dir=${dir}`];
const child = spawn(process.execPath, [...flags, 'bench/server.js', target], {
  stdio: ['ignore', 'pipe', 'inherit'],
  env: { ...process.env, BENCH_REDIS_PREFIX: PREFIX, BENCH_PG_TABLE: `idemkit_bench_profile_${process.pid}` },
});
const port = await new Promise((resolve, reject) => {
  child.stdout.on('data', (data) => {
    const match = /listening (\d+)/.exec(String(data));
    if (match) resolve(Number(match[1]));
  });
  child.once('exit', (code) => reject(new Error(`${target} exited with ${code}`)));
});
const url = `http://127.0.0.1:${port}/charges`;
if (path === 'replay') await prime(url);
await sendRequests(url, path, Math.min(5_000, REQUESTS), CONCURRENCY); // warm-up, in the profile too
const server0 = cpu(child.pid);
const redis0 = redisPid === undefined ? undefined : cpu(redisPid);
const bad = await sendRequests(url, path, REQUESTS, CONCURRENCY);
const server1 = cpu(child.pid);
const redis1 = redisPid === undefined ? undefined : cpu(redisPid);
child.removeAllListeners('exit');
await new Promise((resolve) => {
  child.once('exit', resolve);
  child.kill('SIGTERM'); // bench/server.js exits on SIGTERM, and --cpu-prof writes the profile
});
if (usesRedis) await removeRedisKeys(PREFIX);
if (target === 'postgres') await dropPostgresTable(`idemkit_bench_profile_${process.pid}`);
if (bad > 0) throw new Error(`${bad} answers were not 201`);

const perRequest = (a, b, field) => ((b[field] - a[field]) / REQUESTS).toFixed(0);
console.log(`${target} ${path}: ${REQUESTS} requests, ${CONCURRENCY} at a time`);
console.log(
  `server CPU per request: user ${perRequest(server0, server1, 'user')} µs, system ${perRequest(server0, server1, 'system')} µs`,
);
if (redis0 !== undefined && redis1 !== undefined) {
  console.log(
    `redis-server CPU per request: user ${perRequest(redis0, redis1, 'user')} µs, system ${perRequest(redis0, redis1, 'system')} µs`,
  );
}

if (CPU_ONLY) {
  rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}
const file = readdirSync(dir).find((name) => name.endsWith('.cpuprofile'));
const kept = join('bench/results/profiles', `${target}-${path}.cpuprofile`);
renameSync(join(dir, file), kept);
rmSync(dir, { recursive: true, force: true });
const profile = JSON.parse(readFileSync(kept, 'utf8'));
const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
const interval = (profile.endTime - profile.startTime) / profile.samples.length;
const self = new Map();
for (const id of profile.samples) {
  const { functionName, url: source, lineNumber } = nodes.get(id).callFrame;
  const name = `${functionName || '(anonymous)'} ${source.split('/').slice(-2).join('/')}:${lineNumber + 1}`;
  self.set(name, (self.get(name) ?? 0) + interval);
}
// The profile spans the warm-up too: per request over all requests sent.
const sent = REQUESTS + Math.min(5_000, REQUESTS);
console.log(`\nself time per request (µs), profile in ${kept}:`);
for (const [name, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) {
  console.log(`${(us / sent).toFixed(2).padStart(8)}  ${name}`);
}
