import { readFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  exports: Record<string, string | { types: string; import: string }>;
};

// What each public subpath must export, as a user imports it: by the package's own name, from the
// build in dist/ (npm test builds first).
const expected: Record<string, string[]> = {
  '.': [
    'createIdempotency',
    'parseIdempotencyKey',
    'canonicalizeJson',
    'isIdempotencyStoreError',
    'IdempotencyStoreError',
  ],
  './node': ['withIdempotency', 'createLookupHandler'],
  './express': ['idempotency', 'keepRawBody'],
  './fastify': ['idempotency'],
  './hono': ['idempotency'],
  './nestjs': ['IdempotencyModule', 'Idempotent', 'IdempotencyGuard', 'IdempotencyAnswerFilter'],
  './stores/memory': ['createMemoryStore'],
  './stores/sqlite': ['createSqliteStore', 'sqliteSchemaSql'],
  './stores/redis': ['createRedisStore'],
  './stores/postgres': ['createPostgresStore', 'postgresSchemaSql'],
  './client': [
    'idempotentFetch',
    'createClient',
    'deriveKey',
    'isReplay',
    'createMemoryKeyStore',
    'guardForm',
  ],
  './client/file-key-store': ['createFileKeyStore'],
  './gateway': ['createGateway', 'main', 'resolveConfig', 'openStore', 'parseStoreUrl', 'parseRoute'],
};

/** The package's own dependencies, which only the gateway may load. */
const GATEWAY_ONLY = ['undici', 'pino', 'prom-client', 'commander'];

/** Every bare module a built file imports, following its relative imports (chunks) through dist. */
function importsOf(file: URL, seen = new Set<string>()): Set<string> {
  const bare = new Set<string>();
  if (seen.has(file.href)) return bare;
  seen.add(file.href);
  const text = readFileSync(file, 'utf8');
  for (const match of text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) {
    const specifier = match[1] as string;
    if (specifier.startsWith('.'))
      for (const name of importsOf(new URL(specifier, file), seen)) bare.add(name);
    else bare.add(specifier);
  }
  return bare;
}

describe('package exports', () => {
  it('lists exactly the documented subpaths', () => {
    expect(
      Object.keys(pkg.exports)
        .filter((k) => k !== './package.json')
        .sort(),
    ).toEqual(Object.keys(expected).sort());
  });

  it('keeps the dependencies of the gateway out of every other entry', () => {
    for (const [subpath, entry] of Object.entries(pkg.exports)) {
      if (typeof entry === 'string' || subpath === './gateway') continue;
      const imported = importsOf(new URL(`../${entry.import}`, import.meta.url));
      for (const name of GATEWAY_ONLY) expect(imported.has(name), `${subpath} imports ${name}`).toBe(false);
    }
    const gateway = importsOf(new URL('../dist/gateway/index.js', import.meta.url));
    expect(GATEWAY_ONLY.every((name) => gateway.has(name))).toBe(true); // the check can see them
  });

  it('loads from each framework entry only that framework (optional peers) and Node built-ins', () => {
    const allowed: Record<string, string[]> = {
      express: [],
      fastify: ['fastify-plugin'],
      hono: [],
      nestjs: ['@nestjs/common'],
    };
    for (const [name, peers] of Object.entries(allowed)) {
      const imported = importsOf(new URL(`../dist/adapters/${name}.js`, import.meta.url));
      const foreign = [...imported].filter((m) => !isBuiltin(m) && !peers.includes(m));
      expect(foreign, `idemkit/${name} imports`).toEqual([]);
    }
    // The Hono entry runs on any runtime: it reaches no module at all.
    expect([...importsOf(new URL('../dist/adapters/hono.js', import.meta.url))]).toEqual([]);
  });

  it('builds idemkit/client for browsers: its entry reaches no module at all, node: or other', () => {
    expect([...importsOf(new URL('../dist/client/index.js', import.meta.url))]).toEqual([]);
  });

  for (const [subpath, names] of Object.entries(expected)) {
    it(`resolves idemkit${subpath.slice(1)} from dist with its exports and types`, async () => {
      const specifier = `idemkit${subpath.slice(1)}`;
      const module = (await import(/* @vite-ignore */ specifier)) as Record<string, unknown>;
      for (const name of names) expect(typeof module[name], `${specifier} exports ${name}`).toBe('function');
      const entry = pkg.exports[subpath] as { types: string; import: string };
      expect(() => readFileSync(new URL(`../${entry.types}`, import.meta.url))).not.toThrow();
    });
  }
});
