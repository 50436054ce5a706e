import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A throwaway Redis Cluster of three masters on loopback, started from redis-server for a suite. */
export interface RedisClusterFixture {
  nodes: Array<{ host: string; port: number }>;
  stop(): Promise<void>;
}

/**
 * Starts three `redis-server --cluster-enabled yes` processes on free loopback ports (the cluster bus
 * uses port + 10000), joins them with `redis-cli --cluster create` and waits for `cluster_state:ok`.
 * `stop` ends exactly those processes, by their PIDs, and removes their directory.
 */
export async function startRedisCluster(): Promise<RedisClusterFixture> {
  // A port (or its bus port) can be taken by another process or an outgoing connection; try again
  // on other ports before giving up.
  let failure: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce();
    } catch (error) {
      failure = error;
    }
  }
  throw failure;
}

async function startOnce(): Promise<RedisClusterFixture> {
  const dir = mkdtempSync(join(tmpdir(), 'idemkit-cluster-'));
  // Ports and bus ports (port + 10000) stay below Linux's ephemeral range (32768 and up), so no
  // outgoing connection of this machine holds one of them.
  const base = 20_000 + Math.floor(Math.random() * 900) * 3;
  const ports = [base, base + 1, base + 2];
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
          '2000',
          '--save',
          '',
          '--appendonly',
          'no',
          '--dir',
          dir,
          '--daemonize',
          'no',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      const keep = (data: Buffer) => output.push(`[${port}] ${String(data).trim()}`);
      child.stdout?.on('data', keep);
      child.stderr?.on('data', keep);
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
      '0',
      '--cluster-yes',
    ]);
    for (const port of ports) {
      await until(async () => {
        const { stdout } = await run('redis-cli', ['-p', String(port), 'cluster', 'info']);
        if (!stdout.includes('cluster_state:ok')) throw new Error(stdout.split('\n')[0]);
      }, `cluster state ok on ${port}`);
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { nodes: ports.map((port) => ({ host: '127.0.0.1', port })), stop };
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
