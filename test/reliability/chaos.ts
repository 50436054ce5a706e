import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { Agent } from 'undici';
import { idempotentFetch, isRetryLimitError } from '../../src/client/index.js';

// The chaos harness: three server instances (gateways in front of one upstream, or idemkit-guarded
// apps) on one shared store; a bounded number of logical operations sent through idemkit's client
// with retries, some as two concurrent calls with one key, some slower than the client's timeout;
// every `killEveryMs` a random instance is killed with SIGKILL and started again on its port. Then it
// counts, from the handlers' own execution log and what every caller got.

const GATEWAY = fileURLToPath(new URL('../../dist/gateway/bin.js', import.meta.url));
const APP = fileURLToPath(new URL('../fixtures/chaos-app.mjs', import.meta.url));

export interface ChaosOptions {
  /** 'gateway': three `idemkit serve` in front of one plain upstream; 'app': three guarded apps. */
  kind: 'gateway' | 'app';
  /** A `--store` URL for the gateways; IDEMKIT_STORE (+ env) for the apps. */
  store: string;
  env?: NodeJS.ProcessEnv;
  /** Where the executions are logged (one file, appended by every handler process). */
  log: string;
  operations: number;
  concurrency: number;
  killEveryMs: number;
  leaseMs: number;
}

export interface ChaosReport {
  kind: string;
  operations: number;
  calls: number;
  attempts: number;
  attemptsBy: Record<string, number>;
  kills: number;
  durationMs: number;
  /** Calls that ended with the operation's original response (2xx). */
  answered: number;
  /** Calls that ran out of retries on a retryable answer or error. */
  retryableErrors: number;
  /** Handler executions that completed their work. */
  executions: number;
  /** Operations whose handler completed more than once, the extra runs in live instances: must be 0. */
  duplicates: string[];
  /** Executions that completed in an instance killed before its answer was stored, and ran again. */
  reRunAfterCrash: number;
  /** Calls that got something other than their operation's stored response: must be empty. */
  wrongAnswers: string[];
  /** Operations with no stored response after the run (each is replayed once at the end). */
  unsettled: string[];
  /** Instances that died of something other than the chaos's SIGKILL: must be empty. */
  unexpectedExits: string[];
}

interface Instance {
  index: number;
  port: number;
  gen: number;
  child: ChildProcess | undefined;
}

interface Execution {
  ev: 'start' | 'end';
  exec: string;
  key: string;
  via: string;
  t: number;
}

interface Outcome {
  op: number;
  key: string;
  body: string;
  bodySha: string;
  answer?: { status: number; body: Record<string, unknown> };
  error?: string;
  retryable?: boolean;
}

/** Runs one chaos scenario and counts; throws only when the harness itself cannot run. */
export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const spawned = new Set<ChildProcess>();
  try {
    return await chaos(options, spawned);
  } finally {
    for (const child of spawned)
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

async function chaos(options: ChaosOptions, spawned: Set<ChildProcess>): Promise<ChaosReport> {
  const started = Date.now();
  const stderr: string[] = [];
  let upstream: ChildProcess | undefined;
  let upstreamUrl = '';
  if (options.kind === 'gateway') {
    const port = (await freePorts(1))[0]!;
    upstream = spawnApp(options, { PORT: String(port), CHAOS_INSTANCE: 'upstream' }, false, stderr);
    spawned.add(upstream);
    await listening(port, upstream, stderr);
    upstreamUrl = `http://127.0.0.1:${port}`;
  }
  const unexpectedExits: string[] = [];
  const ports = await freePorts(3);
  const instances: Instance[] = ports.map((port, index) => ({ index, port, gen: 0, child: undefined }));
  const start = async (instance: Instance) => {
    instance.gen += 1;
    const child =
      options.kind === 'gateway'
        ? spawn(
            process.execPath,
            [
              GATEWAY,
              'serve',
              '--upstream',
              upstreamUrl,
              '--store',
              options.store,
              '--port',
              String(instance.port),
              '--lease',
              `${options.leaseMs}ms`,
              '--log-level',
              'error',
            ],
            { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH } },
          )
        : spawnApp(
            options,
            {
              PORT: String(instance.port),
              IDEMKIT_STORE: options.store,
              LEASE_MS: String(options.leaseMs),
              CHAOS_INSTANCE: String(instance.index),
              CHAOS_GEN: String(instance.gen),
              ...options.env,
            },
            true,
            stderr,
          );
    if (options.kind === 'gateway') child.stderr?.on('data', (data) => keepTail(stderr, String(data)));
    instance.child = child;
    spawned.add(child);
    // An instance that dies of anything but the killer's SIGKILL is a finding, not chaos.
    child.once('exit', (code, signal) => {
      if (signal !== 'SIGKILL')
        unexpectedExits.push(
          `instance ${instance.index}:${instance.gen} exited (${code ?? signal}): ${stderr.slice(-3).join('')}`,
        );
    });
    await listening(instance.port, child, stderr);
  };
  await Promise.all(instances.map(start));

  // SIGKILL a random instance every killEveryMs, and start it again on its port.
  const kills: Array<{ via: string; t: number }> = [];
  let chaosOn = true;
  let killerFailed: unknown;
  const killer = (async () => {
    while (chaosOn) {
      await sleep(options.killEveryMs);
      if (!chaosOn) break;
      const victim = instances[Math.floor(Math.random() * instances.length)]!;
      const child = victim.child!;
      kills.push({ via: `${victim.index}:${victim.gen}`, t: Date.now() });
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
      }
      if (!chaosOn) break; // the load is over: nothing to start again
      await start(victim);
    }
  })().catch((error: unknown) => {
    killerFailed = error;
  });

  // Each attempt goes to a random instance; x-chaos-via names it for the upstream's log.
  // No limit on connections: a request never waits in a queue for an instance that is restarted
  // meanwhile, so x-chaos-via names the process that got it.
  const agent = new Agent({ keepAliveTimeout: 10_000 });
  const attemptsBy: Record<string, number> = {};
  let attempts = 0;
  const count = (what: string) => {
    attemptsBy[what] = (attemptsBy[what] ?? 0) + 1;
  };
  let final = false;
  const routed: typeof fetch = async (input, init) => {
    attempts += 1;
    const instance = instances[Math.floor(Math.random() * instances.length)]!;
    const url = new URL(String(input));
    const headers = new Headers(init?.headers);
    headers.set('x-chaos-via', `${instance.index}:${instance.gen}`);
    try {
      const response = await fetch(`http://127.0.0.1:${instance.port}${url.pathname}`, {
        ...init,
        headers,
        // @ts-expect-error undici's dispatcher option, not in the DOM RequestInit type
        dispatcher: agent,
      });
      if (!final) count(String(response.status));
      return response;
    } catch (error) {
      if (!final)
        count(
          (error as Error).name === 'AbortError' || (error as Error).name === 'TimeoutError'
            ? 'timeout'
            : 'network',
        );
      throw error;
    }
  };

  const call = async (
    op: number,
    key: string,
    body: string,
    host: string,
    slow: boolean,
  ): Promise<Outcome> => {
    const bodySha = createHash('sha256').update(body).digest('hex');
    try {
      const response = await idempotentFetch(`http://${host}/op`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-hold-ms': slow ? '600' : String(op % 7) },
        body,
        idempotencyKey: key,
        fetch: routed,
        retry: {
          maxAttempts: 40,
          maxElapsedMs: 60_000,
          baseDelayMs: 50,
          maxDelayMs: 1_000,
          // The slow operations' first attempt times out: the retry meets the first still running.
          timeoutMs: slow ? 300 : 5_000,
        },
      });
      const text = await response.text();
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(text) as Record<string, unknown>;
      } catch {
        parsed = { unparsed: text };
      }
      return { op, key, body, bodySha, answer: { status: response.status, body: parsed } };
    } catch (error) {
      return { op, key, body, bodySha, error: String(error), retryable: isRetryLimitError(error) };
    }
  };

  // The operations: 70% one call, 15% two concurrent calls (a double submit through two hosts, so
  // the client's own de-duplication does not merge them), 15% slower than the client's timeout.
  const outcomes: Outcome[] = [];
  let next = 0;
  const worker = async () => {
    while (next < options.operations) {
      const op = next++;
      const key = randomUUID();
      const body = JSON.stringify({ op, payload: randomUUID() });
      const kind = op % 20;
      if (kind < 3) {
        outcomes.push(
          ...(await Promise.all([call(op, key, body, 'a', false), call(op, key, body, 'b', false)])),
        );
      } else if (kind < 6) {
        outcomes.push(await call(op, key, body, 'a', true));
      } else {
        outcomes.push(await call(op, key, body, 'a', false));
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: options.concurrency }, worker));
  } finally {
    chaosOn = false;
    await killer;
  }
  if (killerFailed !== undefined) throw killerFailed;
  const durationMs = Date.now() - started;
  const loadAttempts = attempts;

  // What each key holds now: one more call per operation through the live instances (a replay, or
  // the first run of an operation whose every call ran out of retries).
  final = true;
  const stored = new Map<string, Outcome>();
  const byOp = new Map<number, Outcome>();
  for (const outcome of outcomes) if (!byOp.has(outcome.op)) byOp.set(outcome.op, outcome);
  const pending = [...byOp.values()];
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let o = pending.pop(); o !== undefined; o = pending.pop()) {
        stored.set(o.key, await call(o.op, o.key, o.body, 'final', false));
      }
    }),
  );
  await agent.close();

  // The executions every handler logged.
  const lines = existsSync(options.log) ? readFileSync(options.log, 'utf8').split('\n') : [];
  const executions = lines.filter((l) => l !== '').map((l) => JSON.parse(l) as Execution);
  const ended = new Map<string, Execution[]>();
  const startedAt = new Map<string, number>();
  for (const e of executions) {
    if (e.ev === 'start') startedAt.set(e.exec, e.t);
    else ended.set(e.key, [...(ended.get(e.key) ?? []), e]);
  }
  const killedAt = new Map(kills.map((k) => [k.via, k.t]));

  const wrongAnswers: string[] = [];
  const duplicates: string[] = [];
  const unsettled: string[] = [];
  let reRunAfterCrash = 0;
  let answered = 0;
  let retryableErrors = 0;
  for (const o of outcomes) {
    const final = stored.get(o.key);
    const exec = final?.answer?.status === 201 ? final.answer.body.exec : undefined;
    if (o.answer !== undefined) {
      const b = o.answer.body;
      if (
        o.answer.status !== 201 ||
        b.key !== o.key ||
        b.op !== o.op ||
        b.bodySha !== o.bodySha ||
        b.exec !== exec
      ) {
        wrongAnswers.push(
          `op ${o.op}: ${o.answer.status} ${JSON.stringify(b)} (stored exec ${String(exec)})`,
        );
      } else answered += 1;
    } else if (o.retryable) retryableErrors += 1;
    else wrongAnswers.push(`op ${o.op}: ${o.error}`);
  }
  for (const o of byOp.values()) {
    const final = stored.get(o.key);
    const exec = final?.answer?.status === 201 ? (final.answer.body.exec as string) : undefined;
    if (exec === undefined) {
      unsettled.push(`op ${o.op}: ${final?.error ?? final?.answer?.status}`);
      continue;
    }
    const runs = ended.get(o.key) ?? [];
    const winner = runs.find((r) => r.exec === exec);
    if (winner === undefined) {
      duplicates.push(`op ${o.op}: the stored execution ${exec} is not in the log`);
      continue;
    }
    const winnerStart = startedAt.get(winner.exec) ?? winner.t;
    for (const run of runs) {
      if (run === winner) continue;
      // Another completed execution is allowed only if its instance was killed before the stored
      // one began (a crash between the handler's work and the store's record: at-least-once
      // there), and the stored one began no sooner than the dead instance's lease allows: its claim
      // was taken before its run started and lasts leaseMs, so the takeover comes at least about a
      // lease after that start (half a lease of slack for the time between claim and start).
      const killed = killedAt.get(run.via);
      const runStart = startedAt.get(run.exec) ?? run.t;
      // (The handler may log its start after the kill: the request was in its socket already.)
      if (killed !== undefined && killed <= winnerStart && winnerStart >= runStart + options.leaseMs / 2) {
        reRunAfterCrash += 1;
      } else {
        duplicates.push(
          `op ${o.op}: ${run.exec} via ${run.via} (ran ${runStart}–${run.t}, that instance killed ${killed ?? 'never'}) besides ${exec} via ${winner.via} (ran ${winnerStart}–${winner.t})`,
        );
      }
    }
  }
  return {
    kind: options.kind,
    operations: options.operations,
    calls: outcomes.length,
    attempts: loadAttempts,
    attemptsBy,
    kills: kills.length,
    durationMs,
    answered,
    retryableErrors,
    executions: executions.filter((e) => e.ev === 'end').length,
    duplicates,
    reRunAfterCrash,
    wrongAnswers,
    unsettled,
    unexpectedExits,
  };
}

function spawnApp(
  options: ChaosOptions,
  env: NodeJS.ProcessEnv,
  guarded: boolean,
  stderr: string[],
): ChildProcess {
  const child = spawn(process.execPath, [APP], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      PATH: process.env.PATH,
      CHAOS_LOG: options.log,
      ...env,
      ...(guarded ? {} : { IDEMKIT_STORE: undefined }),
    },
  });
  child.stderr?.on('data', (data) => keepTail(stderr, String(data)));
  return child;
}

function keepTail(lines: string[], text: string) {
  lines.push(text);
  if (lines.length > 50) lines.shift();
}

/** Resolves once `port` accepts connections; rejects if the child exits first. */
async function listening(port: number, child: ChildProcess, stderr: string[]): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `a chaos process exited (${child.exitCode ?? child.signalCode}) before listening: ${stderr.join('')}`,
      );
    }
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after 20 s`);
    await sleep(25);
  }
}

async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, async () => {
      const server = net.createServer();
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return server;
    }),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
