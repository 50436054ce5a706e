/** The longest key accepted, in characters (DESIGN.md; Stripe documents the same bound). */
export const MAX_KEY_LENGTH = 255;

/** Why a header value is not a usable key. */
export type KeyProblem = 'empty' | 'too_long' | 'not_printable' | 'list' | 'malformed';

export type ParsedKey = { ok: true; key: string } | { ok: false; problem: KeyProblem; detail: string };

const DQUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;

function isOws(code: number): boolean {
  return code === 0x20 || code === 0x09;
}

/**
 * Parses an `Idempotency-Key` header value.
 *
 * The IETF draft (draft-ietf-httpapi-idempotency-key-header, section 2.1) defines the value as an
 * RFC 8941 sf-string (`"abc"`); most APIs in the wild send a bare token (`abc`). Both spellings of
 * one key are the same key. Several header lines arrive joined with ", " (RFC 9110 section 5.3), so a
 * list shows up here as a comma after the first value.
 */
export function parseIdempotencyKey(raw: string): ParsedKey {
  let start = 0;
  let end = raw.length;
  while (start < end && isOws(raw.charCodeAt(start))) start++;
  while (end > start && isOws(raw.charCodeAt(end - 1))) end--;
  if (start === end) return fail('empty', 'The Idempotency-Key header is empty.');
  return raw.charCodeAt(start) === DQUOTE ? parseQuoted(raw, start, end) : parseBare(raw, start, end);
}

function parseBare(raw: string, start: number, end: number): ParsedKey {
  for (let i = start; i < end; i++) {
    const c = raw.charCodeAt(i);
    if (c === COMMA) return listProblem();
    if (isOws(c)) {
      if (raw.indexOf(',', i) !== -1) return listProblem();
      return fail(
        'malformed',
        'A bare Idempotency-Key may not contain spaces or tabs; quote it as "..." to keep them.',
      );
    }
    if (c < 0x21 || c > 0x7e) return fail('not_printable', notPrintableDetail(c));
    if (c === DQUOTE) return fail('malformed', 'A bare Idempotency-Key may not contain a double quote.');
  }
  return checkLength(raw.slice(start, end));
}

/** RFC 8941 section 4.2.5: printable ASCII, with `\"` and `\\` the only escapes. */
function parseQuoted(raw: string, start: number, end: number): ParsedKey {
  let key = '';
  let chunkStart = start + 1;
  for (let i = start + 1; i < end; i++) {
    const c = raw.charCodeAt(i);
    if (c === BACKSLASH) {
      const next = raw.charCodeAt(i + 1);
      if (i + 1 >= end || (next !== DQUOTE && next !== BACKSLASH)) {
        return fail(
          'malformed',
          'The quoted Idempotency-Key has an invalid escape (only \\" and \\\\ exist).',
        );
      }
      key += raw.slice(chunkStart, i);
      chunkStart = i + 1;
      i++;
    } else if (c === DQUOTE) {
      key += raw.slice(chunkStart, i);
      return afterQuoted(raw, i + 1, end, key);
    } else if (c < 0x20 || c > 0x7e) {
      return fail('not_printable', notPrintableDetail(c));
    }
  }
  return fail('malformed', 'The quoted Idempotency-Key has no closing double quote.');
}

function afterQuoted(raw: string, from: number, end: number, key: string): ParsedKey {
  for (let i = from; i < end; i++) {
    const c = raw.charCodeAt(i);
    if (c === COMMA) return listProblem();
    if (!isOws(c))
      return fail('malformed', 'The quoted Idempotency-Key has characters after its closing quote.');
  }
  if (key.length === 0) return fail('empty', 'The Idempotency-Key header is an empty string.');
  return checkLength(key);
}

function checkLength(key: string): ParsedKey {
  if (key.length > MAX_KEY_LENGTH) {
    return fail(
      'too_long',
      `The Idempotency-Key is ${key.length} characters long; at most ${MAX_KEY_LENGTH} are allowed.`,
    );
  }
  return { ok: true, key };
}

function listProblem(): ParsedKey {
  return fail('list', 'The request carries more than one Idempotency-Key value; send exactly one.');
}

function notPrintableDetail(code: number): string {
  const hex = code.toString(16).toUpperCase().padStart(4, '0');
  return `The Idempotency-Key contains the character U+${hex}; only printable ASCII is allowed.`;
}

function fail(problem: KeyProblem, detail: string): ParsedKey {
  return { ok: false, problem, detail };
}
