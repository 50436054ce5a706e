import { type ChildProcess, spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { request } from './helpers/http.js';

const running: ChildProcess[] = [];
afterEach(() => {
  for (const child of running.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
});

/** Starts `examples/<name>.js` from the build on a free port; resolves its base URL once it prints it. */
function startExample(name: string): Promise<string> {
  const child = spawn(process.execPath, [`examples/${name}.js`], {
    env: { ...process.env, PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.push(child);
  return new Promise((resolve, reject) => {
    let output = '';
    const timer = setTimeout(() => reject(new Error(`${name} printed no URL:\n${output}`)), 15_000);
    const read = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /on (http:\/\/localhost:\d+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    };
    child.stdout!.on('data', read);
    child.stderr!.on('data', read);
    child.once('exit', (code) => reject(new Error(`${name} exited with ${code}:\n${output}`)));
  });
}

describe('examples', () => {
  for (const name of ['express', 'fastify', 'hono', 'nestjs', 'node-http']) {
    it(`${name}: charges once, replays, refuses a changed body and a missing key`, async () => {
      const base = await startExample(name);
      const post = (key: string | undefined, body: string) =>
        request(`${base}/api/charges`, {
          headers: { 'content-type': 'application/json', ...(key ? { 'idempotency-key': key } : {}) },
          body,
        });
      const order = '{"amount":1000,"currency":"usd"}';
      const first = await post('order-1', order);
      expect(first.status).toBe(201);
      const replay = await post('order-1', order);
      expect(replay.status).toBe(201);
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body.equals(first.body)).toBe(true);
      expect((await post('order-1', '{"amount":2000,"currency":"usd"}')).status).toBe(409);
      expect((await post(undefined, order)).status).toBe(400);
      expect((await post('order-2', '{"amount":-1,"currency":"usd"}')).status).toBe(422);
      const count = await request(`${base}/api/charges`, { method: 'GET' });
      expect(JSON.parse(count.body.toString())).toEqual({ charges: 1 });
    });
  }
});
