import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A throwaway Redis Cluster of three masters on loopback, started from redis-server for a suite. */
export interface RedisClusterFixture {
  nodes: Array<{ host: string; port: number }>;
  /** Kills the node on `port` with SIGKILL (a crash, not a shutdown). */
  kill(port: number): Promise<void>;
  stop(): Promise<void>;
}

export interface RedisClusterOptions {
  /** Replicas per master (`--cluster-replicas`). @default 0 */
  replicas?: number;
  /** `--cluster-node-timeout`, after which a silent master is failed over. @default 2000 */
  nodeTimeoutMs?: number;
}

/**
 * Starts three `redis-server --cluster-enabled yes` processes on free loopback ports (the cluster bus
 * uses port + 10000), joins them with `redis-cli --cluster create` and waits for `cluster_state:ok`.
 * `stop` ends exactly those processes, by their PIDs, and removes their directory.
 */
export async function startRedisCluster(options: RedisClusterOptions = {}): Promise<RedisClusterFixture> {
  // A port (or its bus port) can be taken by another process or an outgoing connection; try again
  // on other ports before giving up.
  let failure: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(options.replicas ?? 0, options.nodeTimeoutMs ?? 2_000);
    } catch (error) {
      failure = error;
    }
  }
  throw failure;
}

async function startOnce(replicas: number, nodeTimeoutMs: number): Promise<RedisClusterFixture> {
  const dir = mkdtempSync(join(tmpdir(), 'idemkit-cluster-'));
  // Ports and bus ports (port + 10000) stay below Linux's ephemeral range (32768 and up), so no
  // outgoing connection of this machine holds one of them.
  const count = 3 * (1 + replicas);
  const base = 20_000 + Math.floor((Math.random() * 2_700) / count) * count;
  const ports = Array.from({ length: count }, (_, i) => base + i);
  const children: ChildProcess[] = [];
  const output: string[] = [];
  const stop = async () => {
    await Promise.all(
      children.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGKILL');
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const port of ports) {
      const child = spawn(
        'redis-server',
        [
          '--port',
          String(port),
          '--bind',
          '127.0.0.1',
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          `nodes-${port}.conf`,
          '--cluster-node-timeout',
          String(nodeTimeoutMs),
          '--save',
          '',
          '--appendonly',
          'no',
          '--dir',
          dir,
          '--daemonize',
          'no',
          // A replica syncs at once (Redis 7 waits 5 s for more replicas to sync diskless together).
          '--repl-diskless-sync-delay',
          '0',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      const keep = (data: Buffer) => output.push(`[${port}] ${String(data).trim()}`);
      child.stdout?.on('data', keep);
      child.stderr?.on('data', keep);
      child.on('error', (error) => output.push(`[${port}] ${error.message}`)); // e.g. no redis-server
      children.push(child);
    }
    for (const port of ports) {
      await until(async () => {
        const exited = children.find((child) => child.exitCode !== null);
        if (exited !== undefined) {
          throw Object.assign(new Error(`redis-server exited: ${output.slice(-3).join(' | ')}`), {
            fatal: true,
          });
        }
        await run('redis-cli', ['-p', String(port), 'ping']);
      }, `node ${port} up`);
    }
    await run('redis-cli', [
      '--cluster',
      'create',
      ...ports.map((p) => `127.0.0.1:${p}`),
      '--cluster-replicas',
      String(replicas),
      '--cluster-yes',
    ]);
    for (const port of ports) {
      await until(async () => {
        const { stdout } = await run('redis-cli', ['-p', String(port), 'cluster', 'info']);
        if (!stdout.includes('cluster_state:ok')) throw new Error(stdout.split('\n')[0]);
      }, `cluster state ok on ${port}`);
    }
    // A replica that has not synced yet could not be promoted: wait for every replication link.
    for (const port of ports) {
      await until(async () => {
        const { stdout } = await run('redis-cli', ['-p', String(port), 'info', 'replication']);
        if (stdout.includes('role:slave') && !stdout.includes('master_link_status:up'))
          throw new Error('replica not in sync yet');
      }, `replica in sync on ${port}`);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  const kill = async (port: number) => {
    const child = children[ports.indexOf(port)];
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  };
  return { nodes: ports.map((port) => ({ host: '127.0.0.1', port })), kill, stop };
}

async function until(check: () => Promise<unknown>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await check();
      return;
    } catch (error) {
      if ((error as { fatal?: boolean }).fatal) throw error;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${String(error)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}
