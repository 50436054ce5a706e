import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  createLocalStorageKeyStore,
  createMemoryKeyStore,
  deriveKey,
  IdempotencyClientError,
  isIdempotencyClientError,
  isIdempotencyConflictError,
  isRetryLimitError,
  KeyDerivationError,
  parseRetryAfter,
  RetryLimitError,
  UnreplayableBodyError,
} from '../../src/client/index.js';
import { backoffMs, normalizeRetry } from '../../src/client/retry.js';
import { isIdempotencyError } from '../../src/index.js';

const NOW = Date.parse('2026-03-01T12:00:00Z');

describe('parseRetryAfter (RFC 9110 section 10.2.3)', () => {
  it('reads delay-seconds as milliseconds', () => {
    expect(parseRetryAfter('0', NOW)).toBe(0);
    expect(parseRetryAfter(' 120 ', NOW)).toBe(120_000);
  });

  it('reads an HTTP-date, in the IMF-fixdate and obsolete forms, relative to now', () => {
    expect(parseRetryAfter('Sun, 01 Mar 2026 12:00:30 GMT', NOW)).toBe(30_000);
    expect(parseRetryAfter('Sunday, 01-Mar-26 12:00:30 GMT', NOW)).toBe(30_000);
    // asctime has no zone and means GMT, whatever the local time zone is.
    expect(parseRetryAfter('Sun Mar  1 12:00:30 2026', NOW)).toBe(30_000);
  });

  it('refuses what only looks like a date (regression: Date.parse took "Soon 5" and "Tue 2030")', () => {
    for (const value of [
      'Soon 5',
      'Tue 2030',
      'Sun, 31 Feb 2026 12:00:00 GMT',
      'Sun, 01 Mar 2026 25:00:00 GMT',
      'Sun, 01 Mar 2026 12:00:30 PST',
      'Sun, 1 Mar 2026 12:00:30 GMT',
    ]) {
      expect(parseRetryAfter(value, NOW), value).toBeUndefined();
    }
  });

  it('reads a two-digit RFC 850 year more than 50 years ahead as the past century', () => {
    expect(parseRetryAfter('Sunday, 01-Mar-99 12:00:00 GMT', NOW)).toBe(0); // 1999, in the past
  });

  it('treats a date in the past as now', () => {
    expect(parseRetryAfter('Sun, 01 Mar 2026 11:00:00 GMT', NOW)).toBe(0);
  });

  it('ignores values that are neither form', () => {
    for (const value of [null, undefined, '', '-1', '1.5', 'soon', '1e3']) {
      expect(parseRetryAfter(value, NOW)).toBeUndefined();
    }
  });
});

describe('backoff', () => {
  it('draws from [0, min(maxDelayMs, baseDelayMs * 2^(n-1))) (full jitter)', () => {
    const top = normalizeRetry({ baseDelayMs: 100, maxDelayMs: 1_000, random: () => 0.999_999 });
    expect([1, 2, 3, 4, 5, 10].map((n) => backoffMs(n, top))).toEqual([99, 199, 399, 799, 999, 999]);
    const bottom = normalizeRetry({ random: () => 0 });
    expect(backoffMs(3, bottom)).toBe(0);
  });

  it('has the documented defaults', () => {
    expect(normalizeRetry()).toMatchObject({
      maxAttempts: 5,
      maxElapsedMs: 30_000,
      baseDelayMs: 200,
      maxDelayMs: 10_000,
      timeoutMs: undefined,
      retryOn500: false,
    });
  });
});

describe('retry options', () => {
  it('refuses values that are not whole numbers in range, naming the option', () => {
    expect(() => normalizeRetry({ maxAttempts: 0 })).toThrow(
      /retry\.maxAttempts must be a whole number of at least 1; got 0/,
    );
    expect(() => normalizeRetry({ maxAttempts: Number.NaN })).toThrow(TypeError);
    expect(() => normalizeRetry({ maxElapsedMs: Number.POSITIVE_INFINITY })).toThrow(/retry\.maxElapsedMs/);
    expect(() => normalizeRetry({ baseDelayMs: -1 })).toThrow(/retry\.baseDelayMs/);
    expect(() => normalizeRetry({ timeoutMs: '5' as unknown as number })).toThrow(/retry\.timeoutMs/);
    expect(normalizeRetry({ maxAttempts: 1, timeoutMs: 10 })).toMatchObject({
      maxAttempts: 1,
      timeoutMs: 10,
    });
  });
});

describe('deriveKey', () => {
  it('is the prefix plus the SHA-256 of the canonical JSON, whatever the key order', async () => {
    const expected = createHash('sha256')
      .update('{"a":1,"b":[true,null,"x"],"c":{"d":2.5,"e":"é"}}')
      .digest('hex');
    const one = await deriveKey('order-', { c: { e: 'é', d: 2.5 }, b: [true, null, 'x'], a: 1 });
    const two = await deriveKey('order-', { a: 1, b: [true, null, 'x'], c: { d: 2.5, e: 'é' } });
    expect(one).toBe(`order-${expected}`);
    expect(two).toBe(one);
  });

  it('gives different keys to different data', async () => {
    expect(await deriveKey('', { a: 1 })).not.toBe(await deriveKey('', { a: 2 }));
  });

  it('refuses data JSON cannot represent', async () => {
    const cycle: Record<string, unknown> = {};
    cycle.self = cycle;
    for (const data of [undefined, () => 1, 10n, cycle, { a: undefined }, [Number.NaN], { a: Symbol('s') }]) {
      await expect(deriveKey('p-', data)).rejects.toBeInstanceOf(KeyDerivationError);
    }
  });

  it('refuses objects that are not plain, which would write as {} (regression: two Maps shared a key)', async () => {
    class Point {
      constructor(readonly x: number) {}
    }
    for (const data of [new Map([['a', 1]]), new Set([1]), { at: new Point(1) }, [new Error('x')]]) {
      await expect(deriveKey('p-', data)).rejects.toBeInstanceOf(KeyDerivationError);
    }
    // Dates still work: their toJSON runs first.
    expect(await deriveKey('p-', { at: new Date(0) })).toMatch(/^p-[0-9a-f]{64}$/);
  });
});

describe('errors', () => {
  it('share a base that is also an idemkit error', () => {
    const error = new UnreplayableBodyError('no');
    expect(error).toBeInstanceOf(IdempotencyClientError);
    expect(isIdempotencyClientError(error)).toBe(true);
    expect(isIdempotencyError(error)).toBe(true);
    expect(isRetryLimitError(error)).toBe(false);
  });

  it('are recognised by the guards when thrown by another copy of the package', () => {
    const foreign = Object.assign(new Error('x'), {
      name: 'IdempotencyConflictError',
      [Symbol.for('idemkit.client-error')]: true,
    });
    expect(isIdempotencyConflictError(foreign)).toBe(true);
    expect(isIdempotencyClientError(new Error('x'))).toBe(false);
  });

  it('RetryLimitError carries the attempts and the last failure', () => {
    const cause = new TypeError('fetch failed');
    const error = new RetryLimitError('attempts', 5, { error: cause }, 'k');
    expect(error).toMatchObject({ attempts: 5, lastError: cause, lastResponse: undefined, cause });
    expect(error.message).toContain('fetch failed');
  });
});

describe('key stores', () => {
  const pending = { key: 'k', method: 'POST', url: 'http://x/a', bodyHash: 'h', createdAt: 1 };

  it('memory: keeps and forgets pending operations', async () => {
    const store = createMemoryKeyStore();
    expect(await store.get('op')).toBeUndefined();
    await store.set('op', pending);
    expect(await store.get('op')).toEqual(pending);
    await store.delete('op');
    expect(await store.get('op')).toBeUndefined();
  });

  it('localStorage: one item per operation under the prefix; a corrupt item counts as absent', async () => {
    const items = new Map<string, string>();
    const storage = {
      getItem: (name: string) => items.get(name) ?? null,
      setItem: (name: string, value: string) => void items.set(name, value),
      removeItem: (name: string) => void items.delete(name),
    };
    const store = createLocalStorageKeyStore(storage, 'app:');
    await store.set('checkout-42', pending);
    expect([...items.keys()]).toEqual(['app:checkout-42']);
    expect(await store.get('checkout-42')).toEqual(pending);
    items.set('app:broken', '{not json');
    expect(await store.get('broken')).toBeUndefined();
    await store.delete('checkout-42');
    expect(items.has('app:checkout-42')).toBe(false);
  });
});

describe('the browser entry', () => {
  it('reaches no node: module through its imports', async () => {
    const { readFile } = await import('node:fs/promises');
    const { dirname, resolve } = await import('node:path');
    const { fileURLToPath } = await import('node:url');
    const entry = fileURLToPath(new URL('../../src/client/index.ts', import.meta.url));
    const seen = new Set<string>();
    const offending: string[] = [];
    const visit = async (file: string): Promise<void> => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = await readFile(file, 'utf8');
      for (const [, specifier] of text.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)) {
        if (specifier === undefined) continue;
        if (!specifier.startsWith('.')) offending.push(`${file}: ${specifier}`);
        else await visit(resolve(dirname(file), specifier.replace(/\.js$/, '.ts')));
      }
    };
    await visit(entry);
    expect(offending).toEqual([]);
    expect([...seen].some((file) => file.endsWith('file-key-store.ts'))).toBe(false);
    expect(seen.size).toBeGreaterThan(8);
  });
});
