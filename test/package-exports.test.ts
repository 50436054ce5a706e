import { readFileSync } from 'node:fs';
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
  './stores/memory': ['createMemoryStore'],
  './stores/sqlite': ['createSqliteStore', 'sqliteSchemaSql'],
  './stores/redis': ['createRedisStore'],
  './stores/postgres': ['createPostgresStore', 'postgresSchemaSql'],
};

describe('package exports', () => {
  it('lists exactly the documented subpaths', () => {
    expect(
      Object.keys(pkg.exports)
        .filter((k) => k !== './package.json')
        .sort(),
    ).toEqual(Object.keys(expected).sort());
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
