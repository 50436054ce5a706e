/**
 * Canonical JSON after RFC 8785 (JCS): no insignificant whitespace, object members sorted by the
 * UTF-16 code units of their names (section 3.2.3), strings escaped as ECMAScript's JSON.stringify
 * does (3.2.2.2), numbers in ECMAScript's Number::toString form (3.2.2.3).
 *
 * One deliberate difference, so that a changed value always changes the fingerprint: numbers are
 * formatted from their exact decimal value, never rounded through an IEEE-754 double. Where a literal
 * is the shortest form of a double (every literal of 15 significant digits or fewer, and whatever
 * JSON.stringify wrote) the output is byte-identical to JCS; `10000000000000000001` stays distinct
 * from `10000000000000000000` where JCS would merge them, and `1e400` is kept instead of rejected.
 * Duplicate member names are kept, in their order, instead of rejected: two bodies that differ only
 * there still get different fingerprints.
 *
 * The parser is iterative, so deep nesting cannot overflow the stack.
 *
 * Most bodies take a fast path through the native `JSON.parse` (several times faster on large
 * bodies): one scan first makes sure that nothing `JSON.parse` would change is there (numbers of
 * more than 15 digits in all, both sides of the point, or with an exponent, which a double may not
 * hold exactly; nesting deeper than the serializer recurses) and counts the members, so that a
 * duplicate name, which `JSON.parse` drops, is noticed; any of these sends the body to the exact
 * parser below instead.
 *
 * @returns the canonical text, or `undefined` when `text` is not valid JSON.
 */
export function canonicalizeJson(text: string): string | undefined {
  try {
    return canonicalizeFast(text) ?? canonicalize(text);
  } catch {
    return undefined;
  }
}

/** The exact parser alone, without the fast path (for tests that hold the two against each other). */
export function canonicalizeJsonExact(text: string): string | undefined {
  try {
    return canonicalize(text);
  } catch {
    return undefined;
  }
}

/** Deepest nesting the fast path serializes (recursively); deeper goes to the iterative parser. */
const FAST_MAX_DEPTH = 256;
/** Longest run of digits the fast path takes: up to 15 significant digits a double holds exactly. */
const FAST_MAX_DIGITS = 15;

/**
 * The fast path: `undefined` when the body needs the exact parser. A number of at most 15 digits
 * and no exponent is the shortest form of the double nearest to it, so ECMAScript's Number::toString
 * of the parsed value prints the very value the literal has, as the exact path does.
 */
function canonicalizeFast(text: string): string | undefined {
  let members = 0;
  let depth = 0;
  let digits = 0;
  const length = text.length;
  for (let i = 0; i < length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      // Skip the string; JSON.parse validates it.
      for (i++; i < length; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x22) break;
        if (d === 0x5c) i++;
      }
      digits = 0;
    } else if (c >= 0x30 && c <= 0x39) {
      // Every digit of the literal counts, both sides of the point and leading zeros included (an
      // overestimate of its significant digits, so never too few).
      if (++digits > FAST_MAX_DIGITS) return undefined;
    } else if (c === 0x2e /* . */ && digits > 0) {
      // A decimal point inside a number: keep counting.
    } else {
      // An exponent follows a digit (the e of true and false does not).
      if ((c === 0x65 || c === 0x45) && digits > 0) return undefined;
      digits = 0;
      if (c === 0x3a /* : */) members++;
      else if (c === 0x7b || c === 0x5b) {
        if (++depth > FAST_MAX_DEPTH) return undefined;
      } else if (c === 0x7d || c === 0x5d) depth--;
    }
  }
  const value: unknown = JSON.parse(text);
  const counted = { members: 0 };
  const sorted = sortMembers(value, counted);
  // Fewer members than colons: JSON.parse kept only the last of a repeated name.
  return sorted !== NEEDS_EXACT && counted.members === members ? JSON.stringify(sorted) : undefined;
}

const NEEDS_EXACT = Symbol('needs the exact parser');
const INDEX_LIKE = /^(?:0|[1-9][0-9]*)$/;

/**
 * The parsed value with every object's members in UTF-16 code-unit order (RFC 8785 section 3.2.3;
 * the default sort), so that the native JSON.stringify writes the canonical text. Counts members.
 * Gives up (NEEDS_EXACT) where property order cannot be chosen: an array-index-like name, which
 * JavaScript always enumerates first, and `__proto__`, which an assignment would not create.
 */
function sortMembers(value: unknown, counted: { members: number }): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item = value[i];
      if (typeof item === 'object' && item !== null) {
        const done = sortMembers(item, counted);
        if (done === NEEDS_EXACT) return NEEDS_EXACT;
        value[i] = done;
      }
    }
    return value;
  }
  const record = value as Record<string, unknown>;
  const names = Object.keys(record);
  counted.members += names.length;
  let inOrder = true;
  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    if (name === '__proto__' || (name.charCodeAt(0) <= 0x39 && INDEX_LIKE.test(name))) return NEEDS_EXACT;
    if (i > 0 && names[i - 1]! > name) inOrder = false;
    const member = record[name];
    if (typeof member === 'object' && member !== null) {
      const done = sortMembers(member, counted);
      if (done === NEEDS_EXACT) return NEEDS_EXACT;
      record[name] = done;
    }
  }
  if (inOrder) return record;
  names.sort();
  const copy: Record<string, unknown> = {};
  for (const name of names) copy[name] = record[name];
  return copy;
}

interface ArrayFrame {
  members: null;
  parts: string[];
}
interface ObjectFrame {
  members: Array<{ name: string; text: string }>;
  parts: null;
  name: string;
  nameText: string;
}
type Frame = ArrayFrame | ObjectFrame;

class Invalid extends Error {}
const invalid = new Invalid('invalid JSON');

function canonicalize(text: string): string {
  const stack: Frame[] = [];
  let i = skipWs(text, 0);
  for (;;) {
    // Parse one value starting at i.
    let value: string;
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */) {
      i = skipWs(text, i + 1);
      if (text.charCodeAt(i) === 0x7d /* } */) {
        value = '{}';
        i++;
      } else {
        const frame: ObjectFrame = { members: [], parts: null, name: '', nameText: '' };
        i = readMemberName(text, i, frame);
        stack.push(frame);
        continue;
      }
    } else if (c === 0x5b /* [ */) {
      i = skipWs(text, i + 1);
      if (text.charCodeAt(i) === 0x5d /* ] */) {
        value = '[]';
        i++;
      } else {
        stack.push({ members: null, parts: [] });
        continue;
      }
    } else if (c === 0x22 /* " */) {
      const end = scanString(text, i);
      value = canonicalString(text, i, end).text;
      i = end;
    } else if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) {
      const end = scanNumber(text, i);
      value = canonicalNumber(text.slice(i, end));
      i = end;
    } else if (text.startsWith('true', i)) {
      value = 'true';
      i += 4;
    } else if (text.startsWith('false', i)) {
      value = 'false';
      i += 5;
    } else if (text.startsWith('null', i)) {
      value = 'null';
      i += 4;
    } else {
      throw invalid;
    }

    // Hand the value to the enclosing containers, closing those that end here.
    for (;;) {
      i = skipWs(text, i);
      const frame = stack[stack.length - 1];
      if (frame === undefined) {
        if (i !== text.length) throw invalid;
        return value;
      }
      const next = text.charCodeAt(i);
      if (frame.parts !== null) {
        frame.parts.push(value);
        if (next === 0x2c /* , */) {
          i = skipWs(text, i + 1);
          break;
        }
        if (next !== 0x5d /* ] */) throw invalid;
        value = `[${frame.parts.join(',')}]`;
      } else {
        frame.members.push({ name: frame.name, text: `${frame.nameText}:${value}` });
        if (next === 0x2c /* , */) {
          i = readMemberName(text, skipWs(text, i + 1), frame);
          break;
        }
        if (next !== 0x7d /* } */) throw invalid;
        value = `{${closeObject(frame.members)}}`;
      }
      stack.pop();
      i++;
    }
  }
}

function closeObject(members: Array<{ name: string; text: string }>): string {
  // Array.prototype.sort is stable and compares UTF-16 code units, exactly what JCS 3.2.3 asks.
  members.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let out = members[0]!.text;
  for (let m = 1; m < members.length; m++) out += `,${members[m]!.text}`;
  return out;
}

/** Reads `"name" :` at i into the frame; returns the index of the member's value. */
function readMemberName(text: string, i: number, frame: ObjectFrame): number {
  if (text.charCodeAt(i) !== 0x22) throw invalid;
  const end = scanString(text, i);
  const { name, text: nameText } = canonicalString(text, i, end);
  frame.name = name;
  frame.nameText = nameText;
  const colon = skipWs(text, end);
  if (text.charCodeAt(colon) !== 0x3a /* : */) throw invalid;
  return skipWs(text, colon + 1);
}

function skipWs(text: string, i: number): number {
  for (;;) {
    const c = text.charCodeAt(i);
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return i;
    i++;
  }
}

let plainString = true;

/** Returns the index just past the closing quote of the string starting at i. */
function scanString(text: string, i: number): number {
  plainString = true;
  for (let j = i + 1; j < text.length; j++) {
    const c = text.charCodeAt(j);
    if (c === 0x22) return j + 1;
    if (c === 0x5c) {
      plainString = false;
      j++;
    } else if (c < 0x20) {
      throw invalid;
    } else if (c >= 0xd800 && c <= 0xdfff) {
      plainString = false;
    }
  }
  throw invalid;
}

/** A string without escapes or surrogates is already in JSON.stringify's form. */
function canonicalString(text: string, start: number, end: number): { name: string; text: string } {
  const lexeme = text.slice(start, end);
  if (plainString) return { name: lexeme.slice(1, -1), text: lexeme };
  const decoded = JSON.parse(lexeme) as string;
  return { name: decoded, text: JSON.stringify(decoded) };
}

function scanNumber(text: string, i: number): number {
  let j = i;
  if (text.charCodeAt(j) === 0x2d) j++;
  const intStart = j;
  while (isDigit(text.charCodeAt(j))) j++;
  const intLength = j - intStart;
  if (intLength === 0 || (intLength > 1 && text.charCodeAt(intStart) === 0x30)) throw invalid;
  if (text.charCodeAt(j) === 0x2e /* . */) {
    const fracStart = ++j;
    while (isDigit(text.charCodeAt(j))) j++;
    if (j === fracStart) throw invalid;
  }
  const e = text.charCodeAt(j);
  if (e === 0x65 || e === 0x45) {
    j++;
    const sign = text.charCodeAt(j);
    if (sign === 0x2b || sign === 0x2d) j++;
    const expStart = j;
    while (isDigit(text.charCodeAt(j))) j++;
    if (j === expStart) throw invalid;
  }
  return j;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

const PLAIN_INTEGER = /^-?[1-9][0-9]{0,20}$/;
/** Longest exponent (in digits, leading zeros aside) that is canonicalised exactly. */
const MAX_EXPONENT_DIGITS = 1_000;

/**
 * The ECMAScript Number::toString layout (ECMA-262, Number::toString, steps 5-12) applied to the
 * literal's exact decimal value: value = s * 10^(n-k) with s the k significant digits.
 */
export function canonicalNumber(lexeme: string): string {
  if (PLAIN_INTEGER.test(lexeme)) return lexeme; // k <= n <= 21: printed as written
  const negative = lexeme.charCodeAt(0) === 0x2d;
  const body = negative ? lexeme.slice(1) : lexeme;
  const eAt = body.search(/[eE]/);
  const mantissa = eAt === -1 ? body : body.slice(0, eAt);
  const expText = eAt === -1 ? '0' : body.slice(eAt + 1);
  const dot = mantissa.indexOf('.');
  const intDigits = dot === -1 ? mantissa : mantissa.slice(0, dot);
  const fracDigits = dot === -1 ? '' : mantissa.slice(dot + 1);
  const digits = (intDigits + fracDigits).replace(/^0+/, '');
  if (digits === '') return '0';
  const trimmed = digits.replace(/0+$/, '');
  const k = trimmed.length;
  // value = trimmed * 10^(exp + shift): shift is small (bounded by the lexeme's length).
  const shift = digits.length - k - fracDigits.length;
  const expSign = expText.charCodeAt(0) === 0x2d ? -1 : 1;
  const expDigits = expText.replace(/^[+-]?0*/, '');
  if (expDigits.length > 15) {
    // Far beyond any layout but the exponential one (n is outside -6..21 by 10^15 or more): the
    // exponent is added exactly as a BigInt, capped in length, since a BigInt of millions of digits
    // would cost seconds of CPU. Longer exponents are not canonicalised (the body is hashed as bytes).
    if (expDigits.length > MAX_EXPONENT_DIGITS) throw invalid;
    const e = BigInt(expSign) * BigInt(expDigits) + BigInt(shift + k - 1);
    const mant = k === 1 ? trimmed : `${trimmed[0]}.${trimmed.slice(1)}`;
    const out = `${mant}e${e < 0n ? '-' : '+'}${e < 0n ? -e : e}`;
    return negative ? `-${out}` : out;
  }
  const n = k + expSign * Number(expDigits === '' ? '0' : expDigits) + shift;
  let out: string;
  if (k <= n && n <= 21) out = trimmed + '0'.repeat(n - k);
  else if (0 < n && n <= 21) out = `${trimmed.slice(0, n)}.${trimmed.slice(n)}`;
  else if (-6 < n && n <= 0) out = `0.${'0'.repeat(-n)}${trimmed}`;
  else {
    const e = n - 1;
    const mant = k === 1 ? trimmed : `${trimmed[0]}.${trimmed.slice(1)}`;
    out = `${mant}e${e < 0 ? '-' : '+'}${Math.abs(e)}`;
  }
  return negative ? `-${out}` : out;
}
