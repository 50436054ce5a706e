import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createFileKeyStore } from '../../src/client/file-key-store.js';
import {
  createClient,
  isOperationMismatchError,
  isReplay,
  isRetryLimitError,
} from '../../src/client/index.js';
import { type ClientTestServer, freePort, startIdemkitServer } from './server.js';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function tempFile(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'idemkit-client-'));
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'nested', 'pending.json');
}

async function serveOn(port: number, options: Parameters<typeof startIdemkitServer>[0] = {}) {
  const server: ClientTestServer = await startIdemkitServer({ ...options, port });
  cleanup.push(() => server.close());
  return server;
}

const fast = { baseDelayMs: 1, maxDelayMs: 2, maxAttempts: 3 };

describe('resuming pending operations', () => {
  it('resumes with the same key after a restart: the server runs once', async () => {
    const path = await tempFile();
    const port = await freePort();
    const baseUrl = `http://127.0.0.1:${port}`;

    // First process: the server is down, retries run out, the key stays pending on disk.
    const first = createClient({ baseUrl, keyStore: createFileKeyStore(path), retry: fast });
    const error = await first.post('/checkout', { cart: 42 }, { operation: 'checkout-42' }).catch((e) => e);
    expect(isRetryLimitError(error)).toBe(true);
    expect(error.attempts).toBe(3);
    const onDisk = JSON.parse(await readFile(path, 'utf8'));
    expect(onDisk['checkout-42']).toMatchObject({ key: error.idempotencyKey, method: 'POST' });

    // Second process: the server is back; a new client and store over the same file.
    const server = await serveOn(port);
    const second = createClient({ baseUrl, keyStore: createFileKeyStore(path), retry: fast });
    const response = await second.post('/checkout', { cart: 42 }, { operation: 'checkout-42' });
    expect(response.status).toBe(201);
    expect(server.runs).toEqual([error.idempotencyKey]);
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({});
  });

  it('resumes an operation whose answer was lost before a restart: the replay, not a second run', async () => {
    const path = await tempFile();
    const server = await serveOn(0, { fate: (i) => (i === 0 ? { kind: 'drop-after' } : { kind: 'pass' }) });
    const once = { ...fast, maxAttempts: 1 };
    const first = createClient({ baseUrl: server.url, keyStore: createFileKeyStore(path), retry: once });
    const error = await first.post('/checkout', { cart: 7 }, { operation: 'checkout-7' }).catch((e) => e);
    expect(isRetryLimitError(error)).toBe(true);
    expect(server.runs).toHaveLength(1); // it ran; the answer was lost on the way back

    const second = createClient({ baseUrl: server.url, keyStore: createFileKeyStore(path) });
    const response = await second.post('/checkout', { cart: 7 }, { operation: 'checkout-7' });
    expect(response.status).toBe(201);
    expect(isReplay(response)).toBe(true);
    expect(server.runs).toEqual([error.idempotencyKey]);
    expect(server.requests).toEqual([error.idempotencyKey, error.idempotencyKey]);
  });

  it('refuses another body under a pending operation name, before sending', async () => {
    const path = await tempFile();
    const port = await freePort();
    const client = createClient({
      baseUrl: `http://127.0.0.1:${port}`,
      keyStore: createFileKeyStore(path),
      retry: fast,
    });
    await client.post('/checkout', { cart: 1 }, { operation: 'op' }).catch(() => undefined);
    const server = await serveOn(port);
    const error = await client.post('/checkout', { cart: 2 }, { operation: 'op' }).catch((e) => e);
    expect(isOperationMismatchError(error)).toBe(true);
    expect(server.requests).toHaveLength(0);
  });

  it('forgets a completed operation, so the next one under that name gets a new key', async () => {
    const server = await serveOn(0);
    const client = createClient({ baseUrl: server.url });
    await (await client.post('/a', { n: 1 }, { operation: 'op' })).text();
    const again = await client.post('/a', { n: 1 }, { operation: 'op' });
    expect(isReplay(again)).toBe(false);
    expect(server.runs).toHaveLength(2);
    expect(new Set(server.runs).size).toBe(2);
  });
});
