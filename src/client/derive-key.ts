import { canonicalizeJson } from '../core/canonical-json.js';
import { KeyDerivationError } from './errors.js';

const encoder = new TextEncoder();

/**
 * Derives an idempotency key from data: `prefix` + hex SHA-256 of the data's canonical JSON (RFC 8785
 * form), so the same data in any key order gives the same key. Refuses data JSON cannot represent.
 */
export async function deriveKey(prefix: string, data: unknown): Promise<string> {
  let text: string | undefined;
  try {
    text = JSON.stringify(data, refuseUnrepresentable);
  } catch (error) {
    throw new KeyDerivationError(`deriveKey: data cannot be written as JSON: ${describe(error)}`, {
      cause: error,
    });
  }
  const canonical = text === undefined ? undefined : canonicalizeJson(text);
  if (canonical === undefined) throw new KeyDerivationError('deriveKey: data cannot be written as JSON');
  return `${prefix}${await sha256Hex(encoder.encode(canonical))}`;
}

/** Hex SHA-256 of bytes through Web Crypto, so it runs in browsers as in Node. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  let hex = '';
  for (const byte of digest) hex += byte.toString(16).padStart(2, '0');
  return hex;
}

// JSON.stringify silently drops undefined, functions and symbols in objects and writes NaN as null;
// two different inputs would then share a key, so refuse them instead.
function refuseUnrepresentable(this: unknown, name: string, value: unknown): unknown {
  const type = typeof value;
  if (type === 'undefined' || type === 'function' || type === 'symbol')
    throw new TypeError(`${type} at "${name}"`);
  if (type === 'number' && !Number.isFinite(value)) throw new TypeError(`${String(value)} at "${name}"`);
  return value;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
