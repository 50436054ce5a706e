import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalizeJson, canonicalizeJsonExact, canonicalNumber } from '../../src/core/canonical-json.js';
import { bodyHasher, fingerprintOf, hashBody } from '../../src/core/fingerprint.js';

/** Serializes with shuffled member order and random whitespace: the same value, other bytes. */
function scramble(value: unknown, random: () => number): string {
  const ws = () => [' ', '\n', '\t', '\r', ''][Math.floor(random() * 5)]!;
  if (Array.isArray(value))
    return `[${ws()}${value.map((v) => scramble(v, random)).join(`${ws()},${ws()}`)}${ws()}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value);
    for (let i = entries.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [entries[i], entries[j]] = [entries[j]!, entries[i]!];
    }
    return `{${ws()}${entries.map(([k, v]) => `${JSON.stringify(k)}${ws()}:${ws()}${scramble(v, random)}`).join(`${ws()},${ws()}`)}${ws()}}`;
  }
  return JSON.stringify(value);
}

const json = fc.jsonValue({ maxDepth: 4 });
const encode = (text: string) => new TextEncoder().encode(text);
const bodyHash = (text: string) => hashBody('application/json', encode(text));

describe('canonical JSON (RFC 8785)', () => {
  it('matches the RFC 8785 section 3.2.2 example, keeping the one inexact literal exact', () => {
    // JCS prints 333333333.33333329 as 333333333.3333333, the nearest double; we keep the literal's
    // exact value so that two literals rounding to one double still fingerprint apart.
    const input =
      '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}';
    expect(canonicalizeJson(input)).toBe(
      '{"literals":[null,true,false],"numbers":[333333333.33333329,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    );
  });

  it('sorts member names by UTF-16 code units (RFC 8785 section 3.2.3)', () => {
    expect(canonicalizeJson('{"\\u20ac":1,"\\r":2,"\\ud83d\\ude00":3,"1":4,"\\u0080":5,"\\u00f6":6}')).toBe(
      '{"\\r":2,"1":4,"\u0080":5,"ö":6,"€":1,"😀":3}',
    );
  });

  it('gives the same output as JSON.stringify with sorted keys for any JSON value', () => {
    const sorted = (v: unknown): unknown =>
      Array.isArray(v)
        ? v.map(sorted)
        : v !== null && typeof v === 'object'
          ? Object.fromEntries(
              Object.keys(v)
                .sort()
                .map((k) => [k, sorted((v as Record<string, unknown>)[k])]),
            )
          : v;
    fc.assert(
      fc.property(json, (value) => {
        // Object.fromEntries cannot order integer-like keys; compare with our own sort instead there.
        const text = JSON.stringify(value);
        const canonical = canonicalizeJson(text);
        expect(JSON.parse(canonical!)).toEqual(JSON.parse(JSON.stringify(sorted(value))));
      }),
    );
  });

  it('never lets member order or whitespace change the fingerprint', () => {
    fc.assert(
      fc.property(json, fc.integer(), (value, seed) => {
        let state = seed >>> 0;
        const random = () => {
          state = (state * 1664525 + 1013904223) >>> 0;
          return state / 2 ** 32;
        };
        const a = bodyHash(JSON.stringify(value));
        const b = bodyHash(scramble(value, random));
        expect(b).toBe(a);
        expect(fingerprintOf('POST', '/c', '', b)).toBe(fingerprintOf('POST', '/c', '', a));
      }),
    );
  });

  it('changes the fingerprint when any value changes', () => {
    const leafPaths = (value: unknown, path: Array<string | number> = []): Array<Array<string | number>> => {
      if (Array.isArray(value) && value.length > 0)
        return value.flatMap((v, i) => leafPaths(v, [...path, i]));
      if (value !== null && typeof value === 'object' && Object.keys(value).length > 0) {
        return Object.entries(value).flatMap(([k, v]) => leafPaths(v, [...path, k]));
      }
      return [path];
    };
    const setAt = (root: unknown, path: Array<string | number>, leaf: unknown): unknown => {
      if (path.length === 0) return leaf;
      const copy = structuredClone(root) as Record<string | number, unknown>;
      let node = copy;
      for (const step of path.slice(0, -1)) node = node[step] as Record<string | number, unknown>;
      node[path[path.length - 1]!] = leaf;
      return copy;
    };
    fc.assert(
      fc.property(json, fc.nat(), fc.jsonValue({ maxDepth: 1 }), (value, pick, replacement) => {
        const paths = leafPaths(value);
        const path = paths[pick % paths.length]!;
        const old = path.reduce<unknown>(
          (node, step) => (node as Record<string | number, unknown>)[step],
          value,
        );
        fc.pre(
          JSON.stringify(old) !== JSON.stringify(replacement) &&
            !Object.is(old, -0) &&
            !Object.is(replacement, -0),
        );
        const changed = setAt(value, path, replacement);
        expect(bodyHash(JSON.stringify(changed))).not.toBe(bodyHash(JSON.stringify(value)));
      }),
    );
  });

  it('formats numbers as ECMAScript does, from their exact decimal value', () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (x) => {
        expect(canonicalNumber(JSON.stringify(x))).toBe(JSON.stringify(x));
      }),
    );
    expect(canonicalNumber('1.0')).toBe('1');
    expect(canonicalNumber('-0')).toBe('0');
    expect(canonicalNumber('1E2')).toBe('100');
    expect(canonicalNumber('0.0000001')).toBe('1e-7');
    expect(canonicalNumber('123e20')).toBe('1.23e+22');
  });

  it('keeps exponents of any length exact, and leaves absurdly long ones to byte hashing', () => {
    expect(canonicalNumber('1e0000000000000000005')).toBe('100000'); // leading zeros: a short exponent
    expect(canonicalNumber('10e9999999999999999')).toBe('1e+10000000000000000'); // carries past 10^16
    expect(canonicalNumber('1.5e-99999999999999999')).toBe('1.5e-99999999999999999');
    expect(canonicalNumber('123.45e-10000000000000000')).toBe('1.2345e-9999999999999998');
    expect(canonicalNumber('-0.0e99999999999999999')).toBe('0');
    // The same object with its members in another order is the same request, huge exponent or not.
    const a = canonicalizeJson('{"a":1,"n":1e1000000000000000}');
    expect(a).toBe('{"a":1,"n":1e+1000000000000000}');
    expect(canonicalizeJson('{ "n": 10E+999999999999999, "a": 1 }')).toBe(a);
    // Over 1,000 exponent digits: not canonicalised (a BigInt of millions of digits costs seconds).
    expect(canonicalizeJson(`{"n":1e${'9'.repeat(1_001)}}`)).toBeUndefined();
    expect(canonicalizeJson(`{"n":1e${'9'.repeat(1_000)}}`)).toBe(`{"n":1e+${'9'.repeat(1_000)}}`);
  });

  it('gives the same answer on the fast path (native JSON.parse) as the exact parser, for any text', () => {
    // Member names and numbers that push the fast path to its limits: index-like names (enumerated
    // first by JavaScript), __proto__, names that sort before digits, duplicates, long and
    // exponent numbers, lone surrogates.
    const name = fc.oneof(
      fc.constantFrom('0', '1', '10', '2', '01', '-1', '__proto__', ' ', '!', 'a', 'b', 'toJSON', '\ud800'),
      fc.string({ maxLength: 4 }).map((n) => JSON.stringify(n).slice(1, -1)),
    );
    const number = fc.oneof(
      fc.integer().map(String),
      fc.double({ noNaN: true, noDefaultInfinity: true }).map(String),
      fc.constantFrom(
        '1e400',
        '-0',
        '0.1',
        '123456789012345',
        '1234567890123456',
        '1E5',
        '0.000000000000001',
        '10000000000000000001',
        '123456789.123456789',
        '100000000.000000001',
        '1234567.12345678',
      ),
      // Decimals whose two parts together pass 15 digits while each part alone does not.
      fc
        .tuple(fc.bigInt({ min: 0n, max: 10n ** 12n }), fc.bigInt({ min: 0n, max: 10n ** 12n }), fc.boolean())
        .map(([whole, fraction, negative]) => `${negative ? '-' : ''}${whole}.${fraction}`),
    );
    const text = fc.letrec((tie) => ({
      value: fc.oneof(
        { depthSize: 'small' },
        number,
        fc.constantFrom(
          'true',
          'false',
          'null',
          '"x"',
          '"\u00e9"',
          '"\ud83d"',
          '"\\u00e9"',
          '"\\ud83d"',
          '"\\n"',
        ),
        fc.array(tie('value'), { maxLength: 4 }).map((items) => `[${items.join(',')}]`),
        fc
          .array(fc.tuple(name, tie('value')), { maxLength: 4 })
          .map((members) => `{${members.map(([n, v]) => `"${n}":${v}`).join(',')}}`),
      ),
    })).value;
    const mutated = fc
      .tuple(text, fc.nat(), fc.constantFrom('', ',', '}', 'e', ' ', '"'))
      .map(([t, at, insert]) => {
        const i = at % (t.length + 1);
        return t.slice(0, i) + insert + t.slice(i);
      });
    fc.assert(
      fc.property(
        fc.oneof(
          text,
          mutated,
          json.map((v) => JSON.stringify(v)),
        ),
        (t) => {
          expect(canonicalizeJson(t)).toBe(canonicalizeJsonExact(t));
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('keeps decimals beyond double precision apart, however their digits fall about the point', () => {
    expect(canonicalizeJson('[123456789.123456789]')).toBe('[123456789.123456789]');
    expect(bodyHash('{"amount":1000000000.0000000001}')).not.toBe(
      bodyHash('{"amount":1000000000.0000000002}'),
    );
  });

  it('keeps integers beyond double precision apart', () => {
    expect(bodyHash('{"amount":10000000000000000001}')).not.toBe(bodyHash('{"amount":10000000000000000000}'));
    expect(canonicalizeJson('[10000000000000000001]')).toBe('[10000000000000000001]');
    expect(canonicalizeJson('[1e400]')).toBe('[1e+400]');
  });

  it('keeps duplicate member names, in order', () => {
    expect(canonicalizeJson('{"b":1,"a":2,"a":3}')).toBe('{"a":2,"a":3,"b":1}');
    expect(bodyHash('{"a":2,"a":3}')).not.toBe(bodyHash('{"a":3}'));
  });

  it('survives deep nesting without overflowing the stack', () => {
    const depth = 200_000;
    expect(canonicalizeJson(`${'['.repeat(depth)}${']'.repeat(depth)}`)).toHaveLength(2 * depth);
  });

  it.each([
    '',
    '{',
    '[1,]',
    '{"a":1,}',
    '01',
    '1.',
    '.5',
    '"\\x"',
    'tru',
    '{"a" 1}',
    '[1] [2]',
    '"a\u0001"',
    'NaN',
  ])('refuses invalid JSON %j', (text) => {
    expect(canonicalizeJson(text)).toBeUndefined();
  });

  it('hashes a body that is not valid JSON, or not UTF-8, as bytes, distinct from any canonical form', () => {
    expect(hashBody('application/json', encode('{"a":'))).toBe(hashBody('text/plain', encode('{"a":')));
    expect(hashBody('application/json', Uint8Array.of(0x22, 0xff, 0x22))).toBe(
      hashBody('application/octet-stream', Uint8Array.of(0x22, 0xff, 0x22)),
    );
    expect(hashBody('application/json', encode('{"a":1}'))).not.toBe(
      hashBody('text/plain', encode('{"a":1}')),
    );
  });

  it('hashes a body that is not JSON chunk by chunk to the digest of the whole', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }),
        fc.constantFrom('application/octet-stream', 'text/plain', undefined),
        (chunks, type) => {
          const hasher = bodyHasher(type)!;
          for (const chunk of chunks) hasher.update(chunk);
          const whole = Buffer.concat(chunks);
          expect(hasher.digest()).toEqual({ hash: hashBody(type, whole), size: whole.length });
        },
      ),
    );
    expect(bodyHasher('application/json; charset=utf-8')).toBeUndefined();
    expect(bodyHasher('application/problem+json')).toBeUndefined();
  });

  it('recognises JSON media types with parameters and +json suffixes', () => {
    const same = bodyHash('{"a":1}');
    expect(hashBody('Application/JSON; charset=utf-8', encode('{ "a" : 1 }'))).toBe(same);
    expect(hashBody('application/merge-patch+json', encode('{ "a" : 1 }'))).toBe(same);
  });

  it('binds the fingerprint to method, path and query as well as the body', () => {
    const h = bodyHash('{}');
    const base = fingerprintOf('POST', '/a', 'x=1', h);
    expect(fingerprintOf('PATCH', '/a', 'x=1', h)).not.toBe(base);
    expect(fingerprintOf('POST', '/b', 'x=1', h)).not.toBe(base);
    expect(fingerprintOf('POST', '/a', 'x=2', h)).not.toBe(base);
  });
});
