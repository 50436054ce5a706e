import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseIdempotencyKey } from '../../src/core/key.js';

const bareChar = fc.constantFrom(
  ...Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => String.fromCharCode(0x21 + i)).filter(
    (c) => c !== '"' && c !== ',',
  ),
);
const bareKey = fc.string({ unit: bareChar, minLength: 1, maxLength: 255 });
const printable = fc.string({
  unit: fc.constantFrom(...Array.from({ length: 0x7e - 0x20 + 1 }, (_, i) => String.fromCharCode(0x20 + i))),
  minLength: 1,
  maxLength: 255,
});

/** RFC 8941 section 4.1.6: serialize a String. */
function sfString(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

describe('parseIdempotencyKey', () => {
  it('reads a bare token and the quoted sf-string of it as the same key', () => {
    fc.assert(
      fc.property(bareKey, (key) => {
        expect(parseIdempotencyKey(key)).toEqual({ ok: true, key });
        expect(parseIdempotencyKey(sfString(key))).toEqual({ ok: true, key });
      }),
    );
  });

  it('round-trips any printable key through sf-string quoting', () => {
    fc.assert(
      fc.property(printable, (key) => {
        expect(parseIdempotencyKey(sfString(key))).toEqual({ ok: true, key });
      }),
    );
  });

  it('ignores surrounding spaces and tabs', () => {
    expect(parseIdempotencyKey(' \tabc \t')).toEqual({ ok: true, key: 'abc' });
    expect(parseIdempotencyKey('  "a b"  ')).toEqual({ ok: true, key: 'a b' });
  });

  it.each([
    ['', 'empty'],
    ['   ', 'empty'],
    ['""', 'empty'],
    ['a'.repeat(256), 'too_long'],
    [`"${'a'.repeat(256)}"`, 'too_long'],
    ['abc\u00e9', 'not_printable'],
    ['"abc\u00e9"', 'not_printable'],
    ['ab\u0001c', 'not_printable'],
    ['a b', 'malformed'],
    ['a, b', 'list'],
    ['a,b', 'list'],
    ['"a", "b"', 'list'],
    ['"a",', 'list'],
    ['"abc', 'malformed'],
    ['"a\\bc"', 'malformed'],
    ['"abc"x', 'malformed'],
    ['ab"c', 'malformed'],
  ])('refuses %j as %s', (raw, problem) => {
    const parsed = parseIdempotencyKey(raw);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) {
      expect(parsed.problem).toBe(problem);
      expect(parsed.detail.length).toBeGreaterThan(10);
    }
  });

  it('accepts exactly 255 characters', () => {
    expect(parseIdempotencyKey('k'.repeat(255))).toEqual({ ok: true, key: 'k'.repeat(255) });
  });

  it('never throws and never accepts a key outside printable ASCII or over 255 characters', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 300 }), (raw) => {
        const parsed = parseIdempotencyKey(raw);
        if (parsed.ok) {
          expect(parsed.key.length).toBeGreaterThan(0);
          expect(parsed.key.length).toBeLessThanOrEqual(255);
          expect(parsed.key).toMatch(/^[\x20-\x7e]+$/);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
