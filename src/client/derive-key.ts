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

/**
 * A new random key, a UUIDv4: `crypto.randomUUID` where the browser offers it (secure contexts
 * only), else the same RFC 9562 layout from `crypto.getRandomValues`, which every context has.
 */
export function newKey(): string {
  if (typeof globalThis.crypto?.randomUUID === 'function') return globalThis.crypto.randomUUID();
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = ((bytes[6] as number) & 0x0f) | 0x40; // version 4
  bytes[8] = ((bytes[8] as number) & 0x3f) | 0x80; // variant 10
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Hex SHA-256 of bytes through Web Crypto, so it runs in browsers as in Node. Browsers offer
 * `crypto.subtle` only in secure contexts (HTTPS, localhost): elsewhere this says so.
 */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  if (globalThis.crypto?.subtle === undefined) {
    throw new KeyDerivationError(
      'idemkit/client needs Web Crypto (crypto.subtle), which browsers offer only on HTTPS or localhost',
    );
  }
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
  // A Map, Set, Error or class instance (after its toJSON, if any) writes as {} or loses its state:
  // two different values would share a key.
  if (type === 'object' && value !== null && !Array.isArray(value)) {
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      throw new TypeError(
        `a ${proto?.constructor?.name ?? 'non-plain'} object at "${name}" (only plain objects and arrays)`,
      );
    }
  }
  return value;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
