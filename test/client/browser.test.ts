import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withIdempotency } from '../../src/adapters/node.js';
import { createIdempotency } from '../../src/index.js';
import { createMemoryStore } from '../../src/stores/memory.js';
import { cutAnswer } from './server.js';

// The seed's double-click, in a real browser: Debian's Chromium, headless, driven by playwright-core,
// loads a page whose form is guarded by the built `idemkit/client`, and the test double-clicks its
// button. The server is idemkit's node:http face; the first answer is lost on the wire after it was
// stored (the network dropping a response), so the client must retry with the same key.

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  if (process.env.CI)
    throw new Error(`${CHROMIUM} is missing and CI is set: .ci/run installs Debian's chromium`);
  console.warn(
    `[idemkit tests] skipping the browser suite: no Chromium at ${CHROMIUM} (apt-get install chromium)`,
  );
}

const DIST = fileURLToPath(new URL('../../dist/', import.meta.url));
const PAGE = `<!doctype html>
<html><body>
<form id="pay" method="post" action="/charges">
  <input name="amount" value="1000"><input name="currency" value="usd">
  <button id="submit" type="submit">Pay</button>
</form>
<pre id="result"></pre>
<script type="module">
  import { guardForm, isReplay } from '/dist/client/index.js';
  const form = document.getElementById('pay');
  window.busySeen = false;
  new MutationObserver(() => { if (document.getElementById('submit').disabled) window.busySeen = true; })
    .observe(form, { attributes: true, subtree: true });
  guardForm(form, {
    retry: { baseDelayMs: 50 },
    onResponse: async (response, key) => {
      document.getElementById('result').textContent =
        JSON.stringify({ status: response.status, replay: isReplay(response), key, body: await response.text() });
    },
    onError: (error) => { document.getElementById('result').textContent = 'error: ' + error; },
  });
  window.ready = true;
</script>
</body></html>`;

let server: http.Server;
let url: string;
let browser: Browser;
const runs: string[] = [];
const posts: Array<string | undefined> = [];

beforeAll(async () => {
  if (!haveChromium) return;
  const engine = createIdempotency({ store: createMemoryStore() });
  const charge = withIdempotency(engine, async (req: IncomingMessage, res: ServerResponse) => {
    let body = '';
    for await (const chunk of req) body += chunk;
    runs.push(String(req.headers['idempotency-key']));
    res
      .writeHead(201, { 'content-type': 'application/json' })
      .end(JSON.stringify({ run: runs.length, body }));
  });
  server = http.createServer(async (req, res) => {
    if (req.method === 'POST' && req.url === '/charges') {
      posts.push(req.headers['idempotency-key'] as string | undefined);
      if (posts.length === 1) cutAnswer(req, res);
      return void charge(req, res);
    }
    if (req.url === '/') return void res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    if (req.url?.startsWith('/dist/') && !req.url.includes('..')) {
      try {
        const file = await readFile(DIST + req.url.slice('/dist/'.length));
        return void res.writeHead(200, { 'content-type': 'text/javascript' }).end(file);
      } catch {
        // fall through to 404
      }
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
});

describe.runIf(haveChromium)('guardForm in headless Chromium', () => {
  it('runs the handler once for a double-clicked form whose first answer the network drops', async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(String(error)));
    await page.goto(url);
    await page.waitForFunction(() => (window as unknown as { ready?: boolean }).ready === true);
    await page.dblclick('#submit');
    await page.waitForFunction(() => document.getElementById('result')?.textContent !== '', undefined, {
      timeout: 15_000,
    });
    const result = JSON.parse((await page.textContent('#result')) ?? '') as {
      status: number;
      replay: boolean;
      key: string;
      body: string;
    };
    expect(errors).toEqual([]);
    expect(result.status).toBe(201);
    expect(result.replay).toBe(true); // the retry got the stored answer of the one run
    expect(JSON.parse(result.body)).toEqual({ run: 1, body: 'amount=1000&currency=usd' });
    expect(runs).toEqual([result.key]);
    // The double click made one submission; the lost answer made one retry, with the same key.
    expect(posts).toEqual([result.key, result.key]);
    expect(await page.evaluate(() => (window as unknown as { busySeen: boolean }).busySeen)).toBe(true);
    expect(await page.isDisabled('#submit')).toBe(false);
    expect(await page.getAttribute('#pay', 'aria-busy')).toBeNull();
    await page.close();
  });
});
