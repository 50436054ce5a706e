import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../dist/gateway/bin.js', import.meta.url));
const UPSTREAM = fileURLToPath(new URL('../fixtures/upstream.mjs', import.meta.url));
const children = new Set<ChildProcess>();

/** Kills (SIGKILL) every process these helpers started and that is still running. */
export function killAll(): void {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  children.clear();
}

export interface Upstream {
  url: string;
  port: number;
  child: ChildProcess;
  /** How many requests under `key` the upstream started and finished. */
  count(key: string): Promise<{ started: number; finished: number }>;
  /** How many request bodies under `key` were cut off before their end. */
  cut(key: string): Promise<number>;
  stop(): Promise<void>;
}

/** Starts test/fixtures/upstream.mjs in its own process. */
export async function startUpstream(port = 0): Promise<Upstream> {
  const child = spawn(process.execPath, [UPSTREAM, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  const line = await firstLine(child, /upstream listening (\d+)/);
  const bound = Number(line[1]);
  const url = `http://127.0.0.1:${bound}`;
  return {
    url,
    port: bound,
    child,
    async count(key) {
      const response = await fetch(`${url}/_count?key=${encodeURIComponent(key)}`);
      return (await response.json()) as { started: number; finished: number };
    },
    async cut(key) {
      return Number(await (await fetch(`${url}/_cut?key=${encodeURIComponent(key)}`)).text());
    },
    stop: async () => {
      await stop(child, 'SIGTERM');
    },
  };
}

export interface GatewayProcess {
  url: string;
  port: number;
  child: ChildProcess;
  /** Every JSON log line so far. */
  logs: Array<Record<string, unknown>>;
  /** Text the process wrote to stderr. */
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: string | null }>;
}

/** Runs `idemkit serve --port 0 …args` from the build and waits for its `listening` log line. */
export async function startGateway(args: string[], env: NodeJS.ProcessEnv = {}): Promise<GatewayProcess> {
  const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, ...env },
  });
  children.add(child);
  const logs: Array<Record<string, unknown>> = [];
  let err = '';
  child.stderr?.on('data', (data) => {
    err += String(data);
  });
  let pending = '';
  const listening = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the gateway did not start: ${err}`)), 15_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited with ${code}: ${err}`));
    });
    child.stdout?.on('data', (data) => {
      pending += String(data);
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        let entry: Record<string, unknown>;
        try {
          entry = JSON.parse(line) as Record<string, unknown>;
        } catch {
          entry = { unparsed: line }; // not JSON: kept for the tests to see, never thrown
        }
        logs.push(entry);
        if (entry.event === 'listening') {
          clearTimeout(timer);
          resolve(entry.port as number);
        }
      }
    });
  });
  const port = await listening;
  child.removeAllListeners('exit');
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    child,
    logs,
    stderr: () => err,
    stop: (signal = 'SIGTERM') => stop(child, signal),
  };
}

/** Runs the CLI to its end (for settings it refuses); resolves with its status and output. */
export async function runCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, ...env },
  });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d) => {
    stdout += String(d);
  });
  child.stderr?.on('data', (d) => {
    stderr += String(d);
  });
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}

async function stop(child: ChildProcess, signal: NodeJS.Signals) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return { code: child.exitCode, signal: child.signalCode };
  }
  const exited = once(child, 'exit') as Promise<[number | null, string | null]>;
  child.kill(signal);
  const [code, by] = await exited;
  children.delete(child);
  return { code, signal: by };
}

function firstLine(child: ChildProcess, pattern: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`no line matching ${pattern}: ${text}`)), 10_000);
    child.stdout?.on('data', (data) => {
      text += String(data);
      const match = pattern.exec(text);
      if (match !== null) {
        clearTimeout(timer);
        resolve(match);
      }
    });
    child.once('exit', (code) => reject(new Error(`exited with ${code} before ${pattern}: ${text}`)));
  });
}
