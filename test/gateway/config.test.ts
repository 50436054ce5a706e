import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GatewayConfigError, resolveConfig } from '../../src/gateway/config.js';
import { createRouteTable, parseRoute } from '../../src/gateway/routes.js';
import { parseStoreUrl, redact } from '../../src/gateway/store-url.js';
import { parseDuration, parseSize } from '../../src/gateway/units.js';
import { killAll, runCli } from '../helpers/gateway.js';

const dir = mkdtempSync(join(tmpdir(), 'idemkit-config-'));
const file = (name: string, text: string) => {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
};
afterAll(killAll);

describe('gateway settings', () => {
  it('reads durations with a unit and refuses bare numbers', () => {
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('10s')).toBe(10_000);
    expect(parseDuration('1.5m')).toBe(90_000);
    expect(parseDuration('24h')).toBe(86_400_000);
    expect(parseDuration('7d')).toBe(604_800_000);
    for (const bad of ['10', '', 's', '-1s', '1 week', '1e3ms']) expect(parseDuration(bad)).toBeUndefined();
  });

  it('reads sizes in bytes or binary units', () => {
    expect(parseSize('1048576')).toBe(1_048_576);
    expect(parseSize('512kb')).toBe(524_288);
    expect(parseSize('10MB')).toBe(10_485_760);
    expect(parseSize('1gib')).toBe(1_073_741_824);
    for (const bad of ['', 'mb', '10 parsecs', '-1']) expect(parseSize(bad)).toBeUndefined();
  });

  it('reads routes and matches paths segment by segment', () => {
    const table = createRouteTable(
      ['POST /charges', 'PATCH /charges/:id', 'POST /api/*'].map((r) => parseRoute(r) as never),
    );
    expect(table.methods.sort()).toEqual(['PATCH', 'POST']);
    expect(table.matches('POST', '/charges')).toBe(true);
    expect(table.matches('POST', '/charges/')).toBe(true);
    expect(table.matches('POST', '/CHARGES')).toBe(true); // as case-insensitive routers see it
    expect(table.matches('POST', '/charges/x')).toBe(false);
    expect(table.matches('PATCH', '/charges/ch_1')).toBe(true);
    expect(table.matches('PATCH', '/charges/ch_1/refunds')).toBe(false);
    expect(table.matches('POST', '/api/a/b')).toBe(true);
    expect(table.matches('POST', '/api')).toBe(false);
    expect(table.matches('PUT', '/charges')).toBe(false);
    for (const bad of [
      '/charges',
      'post /charges',
      'POST charges',
      'POST /a/*/b',
      'POST /a?x=1',
      'POST /a b',
    ]) {
      expect(typeof parseRoute(bad)).toBe('string');
    }
  });

  it('reads every store URL form, and never repeats a password in an error', () => {
    expect(parseStoreUrl('memory:')).toEqual({ kind: 'memory' });
    expect(parseStoreUrl('sqlite:./x.db')).toEqual({ kind: 'sqlite', path: './x.db' });
    expect(parseStoreUrl('redis://127.0.0.1:6379/2?prefix=app1:')).toEqual({
      kind: 'redis',
      url: 'redis://127.0.0.1:6379/2',
      prefix: 'app1:',
    });
    expect(parseStoreUrl('rediss://u:p@h:6380')).toEqual({ kind: 'redis', url: 'rediss://u:p@h:6380' });
    expect(parseStoreUrl('redis+cluster://:pw@a:7000,b:7001')).toEqual({
      kind: 'redis-cluster',
      nodes: [
        { host: 'a', port: 7000 },
        { host: 'b', port: 7001 },
      ],
      tls: false,
      password: 'pw',
    });
    expect(parseStoreUrl('redis://a:7000,redis://b:7001')).toMatchObject({
      kind: 'redis-cluster',
      tls: false,
    });
    expect(parseStoreUrl('postgres://u@h/db?sslmode=disable&table=keys_v1')).toEqual({
      kind: 'postgres',
      url: 'postgres://u@h/db?sslmode=disable',
      table: 'keys_v1',
    });
    for (const bad of [
      'sqlite:',
      'mysql://h/db',
      'redis',
      'postgres://h/db?table=drop;table',
      '',
      'redis://h?prefix=%',
      'redis+cluster://u:%zz@a:1',
    ]) {
      expect(typeof parseStoreUrl(bad)).toBe('string');
    }
    expect(parseStoreUrl('mongodb://user:hunter2@h/db')).not.toContain('hunter2');
    expect(redact('redis://user:hunter2@h:6379')).toBe('redis://user:***@h:6379');
  });

  it('takes flags over IDEMKIT_* variables over the config file', () => {
    const config = file(
      'settings.json',
      JSON.stringify({ upstream: 'http://file:1', port: 1111, ttl: '1h', lease: '5s', route: ['PUT /file'] }),
    );
    const resolved = resolveConfig({
      flags: { port: '3333' },
      env: { IDEMKIT_PORT: '2222', IDEMKIT_TTL: '2h', IDEMKIT_ROUTE: 'POST /a,PATCH /b/:id' },
      configFile: config,
    });
    expect(resolved.upstream.href).toBe('http://file:1/');
    expect(resolved.port).toBe(3333);
    expect(resolved.ttlMs).toBe(7_200_000);
    expect(resolved.leaseMs).toBe(5_000);
    expect(resolved.routes).toEqual([
      { method: 'POST', path: '/a' },
      { method: 'PATCH', path: '/b/:id' },
    ]);
    expect(resolved.store).toEqual({ kind: 'sqlite', path: './idemkit.db' });
    expect(resolved.requireKey).toBe(true);
    expect(resolved.conflictStatus).toBe(409);
  });

  it('names the flag and the source of a bad value', () => {
    const attempt = (flags: Record<string, unknown>, env: NodeJS.ProcessEnv = {}, configFile?: string) => {
      try {
        resolveConfig({ flags: { upstream: 'http://127.0.0.1:1', ...flags }, env, configFile });
      } catch (error) {
        expect(error).toBeInstanceOf(GatewayConfigError);
        return (error as Error).message;
      }
      throw new Error('accepted');
    };
    expect(attempt({ ttl: '10' })).toMatch(/^--ttl must be a duration/);
    expect(attempt({}, { IDEMKIT_LEASE: 'soon' })).toMatch(/^IDEMKIT_LEASE \(--lease\) must be a duration/);
    expect(attempt({}, {}, file('bad-port.json', '{"port": 70000}'))).toMatch(
      /"port" in .* \(--port\) must be an integer/,
    );
    expect(attempt({ conflictStatus: '418' })).toMatch(/--conflict-status must be 409, 422 or 400/);
    expect(attempt({ store: 'mysql://h' })).toMatch(/^--store must be sqlite:PATH/);
    expect(attempt({ route: ['GET'] })).toMatch(/^--route: must be 'METHOD \/path'/);
    expect(attempt({ maxBody: 'lots' })).toMatch(/^--max-body must be a size/);
    expect(attempt({ adminToken: 'short' })).toMatch(/^--admin-token must be at least 16/);
    expect(attempt({ lease: '2d', ttl: '1d' })).toMatch(/--lease .* must not exceed --ttl/);
    expect(attempt({}, { IDEMKIT_TLL: '1h' })).toMatch(/^IDEMKIT_TLL is not a setting/);
    expect(attempt({}, {}, file('unknown.json', '{"tll": "1h"}'))).toMatch(/"tll" is not a setting/);
    expect(attempt({}, {}, file('broken.json', '{'))).toMatch(/is not valid JSON/);
    expect(attempt({}, {}, join(dir, 'missing.json'))).toMatch(/cannot be read \(ENOENT\)/);
    expect(() => resolveConfig({ flags: {}, env: {} })).toThrow(/^--upstream is required/);
  });
});

describe('idemkit serve with bad settings', () => {
  it.each([
    [['serve'], /--upstream is required/],
    [['serve', '--upstream', 'ftp://x'], /--upstream must be an http:\/\/ or https:\/\/ URL/],
    [['serve', '--upstream', 'http://127.0.0.1:1', '--ttl', 'forever'], /--ttl must be a duration/],
    [['serve', '--upstream', 'http://127.0.0.1:1', '--bogus'], /unknown option '--bogus'/],
    [
      ['serve', '--upstream', 'http://127.0.0.1:1', '--store', 'redis://:pw@127.0.0.1:1/?prefix='],
      /empty \?prefix=/,
    ],
    [['launch'], /unknown command 'launch'/],
  ])('exits 2 with a message, never a stack trace: %j', async (args, message) => {
    const result = await runCli(args as string[]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stderr).not.toMatch(/\n\s+at /);
  });

  it('exits 2 for a bad IDEMKIT_* variable, naming it', async () => {
    const result = await runCli(['serve'], {
      IDEMKIT_UPSTREAM: 'http://127.0.0.1:1',
      IDEMKIT_PORT: 'eighty',
    });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/IDEMKIT_PORT \(--port\) must be an integer/);
  });

  it('exits 1 with a message when the store cannot be reached', async () => {
    const result = await runCli([
      'serve',
      '--upstream',
      'http://127.0.0.1:1',
      '--store',
      'postgres://postgres@127.0.0.1:1/x',
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      /^idemkit serve: --store postgres:\/\/postgres@127\.0\.0\.1:1\/x: cannot reach the store/,
    );
    expect(result.stderr).not.toMatch(/\n\s+at /);
  });

  it('prints help and exits 0', async () => {
    const result = await runCli(['serve', '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('--upstream <url>');
    expect(result.stdout).toContain('IDEMKIT_STORE');
  });
});
