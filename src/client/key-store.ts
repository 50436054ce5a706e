/** An operation sent but not yet answered for good: what a restarted process needs to resume it. */
export interface PendingOperation {
  /** The Idempotency-Key every attempt carried. */
  key: string;
  /** The request method. */
  method: string;
  /** The absolute request URL. */
  url: string;
  /** Hex SHA-256 of the body bytes (of nothing when bodiless), to refuse another body under the same name. */
  bodyHash: string;
  /** When the operation was first started, epoch ms. */
  createdAt: number;
}

/** A value, or a promise of one: stores may be synchronous (localStorage) or not (a file). */
export type MaybePromise<T> = T | Promise<T>;

/** Persists pending operations by the name the caller gives (`{ operation: 'checkout-42' }`). */
export interface KeyStore {
  /** The pending operation of that name, if any. */
  get(operation: string): MaybePromise<PendingOperation | undefined>;
  /** Records (or replaces) a pending operation. */
  set(operation: string, pending: PendingOperation): MaybePromise<void>;
  /** Forgets an operation once it has its final answer. */
  delete(operation: string): MaybePromise<void>;
}

/** A key store in a Map: survives retries and client instances, not a restart. */
export function createMemoryKeyStore(): KeyStore {
  const pending = new Map<string, PendingOperation>();
  return {
    get: (operation) => pending.get(operation),
    set(operation, value) {
      pending.set(operation, value);
    },
    delete(operation) {
      pending.delete(operation);
    },
  };
}

/** The part of the Web Storage API (`localStorage`, `sessionStorage`) a key store uses. */
export interface WebStorageLike {
  getItem(name: string): string | null;
  setItem(name: string, value: string): void;
  removeItem(name: string): void;
}

/**
 * A key store in Web Storage, one item per operation under `prefix`, so a reloaded page resumes a
 * checkout with the same key.
 *
 * @param storage where items live. @default globalThis.localStorage
 * @param prefix prepended to each operation name. @default 'idemkit:'
 */
export function createLocalStorageKeyStore(
  storage: WebStorageLike = (globalThis as { localStorage?: WebStorageLike }).localStorage as WebStorageLike,
  prefix = 'idemkit:',
): KeyStore {
  if (storage === undefined)
    throw new TypeError('createLocalStorageKeyStore: no storage (no localStorage here)');
  return {
    get(operation) {
      const text = storage.getItem(prefix + operation);
      if (text === null) return undefined;
      try {
        return parsePending(JSON.parse(text));
      } catch {
        return undefined; // a corrupt item is treated as absent rather than blocking the operation
      }
    },
    set(operation, pending) {
      storage.setItem(prefix + operation, JSON.stringify(pending));
    },
    delete(operation) {
      storage.removeItem(prefix + operation);
    },
  };
}

/** Checks a stored value's shape; returns undefined when it is not a pending operation. */
export function parsePending(value: unknown): PendingOperation | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  const strings = ['key', 'method', 'url', 'bodyHash'].every((name) => typeof v[name] === 'string');
  if (!strings || typeof v.createdAt !== 'number') return undefined;
  return {
    key: v.key as string,
    method: v.method as string,
    url: v.url as string,
    bodyHash: v.bodyHash as string,
    createdAt: v.createdAt,
  };
}
