import { IdempotencyConfigError } from '../core/errors.js';
import type {
  AcquireInput,
  AcquireResult,
  CompletedRecord,
  IdempotencyRecord,
  IdempotencyStore,
  InProgressRecord,
  StoredResponse,
} from '../core/store.js';

/** Options of `createMemoryStore`. */
export interface MemoryStoreOptions {
  /** Most records held; past it the least recently used completed record is evicted. @default 10_000 */
  maxEntries?: number;
  /** How often expired records are swept; 0 turns the sweep off (expiry is still checked on access). @default 60_000 */
  sweepIntervalMs?: number;
  /** Time source of the sweep; give it the engine's clock in tests. @default Date.now */
  now?: () => number;
}

/** The memory store's own extras, for tests and metrics. */
export interface MemoryStore extends IdempotencyStore {
  /** Records held now, in progress and completed, expired ones not yet swept included. */
  readonly size: number;
  /** Removes expired records now. */
  sweep(): void;
}

/**
 * Records in a Map in this process: for tests and single-process apps. Every operation runs to
 * completion without yielding, which is what makes `acquire` atomic here. Bounded: at `maxEntries`
 * the least recently used *completed* record is evicted; in-progress records are never evicted
 * (that would let a duplicate run), so a store full of them refuses new keys with an error the engine
 * turns into 503.
 */
export function createMemoryStore(options: MemoryStoreOptions = {}): MemoryStore {
  const maxEntries = options.maxEntries ?? 10_000;
  const sweepIntervalMs = options.sweepIntervalMs ?? 60_000;
  if (!Number.isSafeInteger(maxEntries) || maxEntries < 1) {
    throw new IdempotencyConfigError(`maxEntries must be a positive integer, not ${String(maxEntries)}`);
  }
  if (!Number.isSafeInteger(sweepIntervalMs) || sweepIntervalMs < 0) {
    throw new IdempotencyConfigError(
      `sweepIntervalMs must be an integer >= 0, not ${String(sweepIntervalMs)}`,
    );
  }
  const now = options.now ?? Date.now;
  const inProgress = new Map<string, InProgressRecord>();
  // Completed records in a Map for lookup and a linked list for recency (head = least recently used).
  // Not the Map's own insertion order: re-inserting a key on every hit makes V8 walk a growing chain
  // of deleted copies of that key, measured at 100 µs per hit with 100k entries.
  const completed = new Map<string, LruNode>();
  const lru = createLruList();
  const waiters = new Map<string, Set<() => void>>();
  let closed = false;

  const notify = (scopeKey: string) => {
    const set = waiters.get(scopeKey);
    if (set === undefined) return;
    waiters.delete(scopeKey);
    for (const wake of set) wake();
  };

  const dropCompleted = (node: LruNode) => {
    completed.delete(node.key);
    lru.unlink(node);
  };

  const sweep = (at = now()) => {
    for (const node of completed.values()) if (node.record.expiresAt <= at) dropCompleted(node);
    for (const [k, record] of inProgress) {
      if (record.expiresAt <= at) {
        inProgress.delete(k);
        notify(k);
      }
    }
  };

  const makeRoom = (at: number) => {
    if (inProgress.size + completed.size < maxEntries) return;
    if (lru.head !== undefined) {
      dropCompleted(lru.head);
      return;
    }
    sweep(at);
    if (inProgress.size + completed.size < maxEntries) return;
    // Full of requests in progress: drop one whose lease lapsed (a crashed or abandoned claim,
    // which any retry could take over anyway), so that clients cannot fill the store by leaving.
    for (const [k, record] of inProgress) {
      if (record.leaseExpiresAt <= at) {
        inProgress.delete(k);
        notify(k);
        return;
      }
    }
    throw new Error(
      `memory store is full: ${inProgress.size} requests in progress (maxEntries ${maxEntries})`,
    );
  };

  const timer = sweepIntervalMs > 0 ? setInterval(() => sweep(), sweepIntervalMs) : undefined;
  timer?.unref();

  const assertOpen = () => {
    if (closed) throw new Error('memory store is closed');
  };

  return {
    get size() {
      return inProgress.size + completed.size;
    },
    sweep: () => sweep(),

    async acquire(scopeKey: string, input: AcquireInput): Promise<AcquireResult> {
      assertOpen();
      const at = input.now;
      const running = inProgress.get(scopeKey);
      let takenOver = false;
      if (running !== undefined) {
        if (running.expiresAt > at) {
          if (running.leaseExpiresAt > at || running.fingerprint !== input.fingerprint) {
            return { kind: 'in-progress', record: running };
          }
          takenOver = true;
        }
        inProgress.delete(scopeKey);
      } else {
        const done = completed.get(scopeKey);
        if (done !== undefined) {
          if (done.record.expiresAt > at) {
            lru.touch(done);
            return { kind: 'completed', record: done.record };
          }
          dropCompleted(done);
        }
        makeRoom(at);
      }
      inProgress.set(scopeKey, {
        state: 'in-progress',
        token: input.token,
        fingerprint: input.fingerprint,
        request: input.request,
        createdAt: at,
        leaseExpiresAt: at + input.leaseMs,
        expiresAt: at + Math.max(input.ttlMs, input.leaseMs),
      });
      return takenOver ? TAKEN_OVER : ACQUIRED;
    },

    async renew(scopeKey, token, { leaseMs, now: at }) {
      assertOpen();
      const record = inProgress.get(scopeKey);
      if (record === undefined || record.token !== token) return false;
      record.leaseExpiresAt = at + leaseMs;
      if (record.expiresAt < record.leaseExpiresAt) record.expiresAt = record.leaseExpiresAt;
      return true;
    },

    async complete(scopeKey, token, response: StoredResponse, { ttlMs, now: at }) {
      assertOpen();
      const record = inProgress.get(scopeKey);
      if (record === undefined || record.token !== token) return false;
      inProgress.delete(scopeKey);
      const node: LruNode = {
        key: scopeKey,
        record: {
          state: 'completed',
          fingerprint: record.fingerprint,
          request: record.request,
          createdAt: record.createdAt,
          completedAt: at,
          expiresAt: at + ttlMs,
          response,
        },
        prev: undefined,
        next: undefined,
      };
      completed.set(scopeKey, node);
      lru.append(node);
      notify(scopeKey);
      return true;
    },

    async release(scopeKey, token) {
      assertOpen();
      const record = inProgress.get(scopeKey);
      if (record === undefined || record.token !== token) return false;
      inProgress.delete(scopeKey);
      notify(scopeKey);
      return true;
    },

    async get(scopeKey, { now: at }): Promise<IdempotencyRecord | undefined> {
      assertOpen();
      const record: IdempotencyRecord | undefined =
        inProgress.get(scopeKey) ?? completed.get(scopeKey)?.record;
      return record !== undefined && record.expiresAt > at ? record : undefined;
    },

    async delete(scopeKey, { now: at }) {
      assertOpen();
      const node = completed.get(scopeKey);
      if (node === undefined) return false;
      dropCompleted(node);
      return node.record.expiresAt > at;
    },

    waitForCompletion(scopeKey, { signal }) {
      return new Promise<void>((resolve) => {
        if (closed || signal.aborted || !inProgress.has(scopeKey)) return resolve();
        let set = waiters.get(scopeKey);
        if (set === undefined) {
          set = new Set();
          waiters.set(scopeKey, set);
        }
        const wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          set.delete(wake);
          resolve();
        };
        set.add(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    },

    async close() {
      closed = true;
      if (timer !== undefined) clearInterval(timer);
      for (const k of [...waiters.keys()]) notify(k);
      inProgress.clear();
      completed.clear();
      lru.head = undefined;
      lru.tail = undefined;
    },
  };
}

const ACQUIRED: AcquireResult = { kind: 'acquired', takenOver: false };
const TAKEN_OVER: AcquireResult = { kind: 'acquired', takenOver: true };

interface LruNode {
  key: string;
  record: CompletedRecord;
  prev: LruNode | undefined;
  next: LruNode | undefined;
}

/** A doubly linked recency list: `touch` moves a node to the tail in O(1), `head` is evicted first. */
function createLruList() {
  const list = {
    head: undefined as LruNode | undefined,
    tail: undefined as LruNode | undefined,
    append(node: LruNode) {
      node.prev = list.tail;
      node.next = undefined;
      if (list.tail === undefined) list.head = node;
      else list.tail.next = node;
      list.tail = node;
    },
    unlink(node: LruNode) {
      if (node.prev === undefined) list.head = node.next;
      else node.prev.next = node.next;
      if (node.next === undefined) list.tail = node.prev;
      else node.next.prev = node.prev;
      node.prev = undefined;
      node.next = undefined;
    },
    touch(node: LruNode) {
      if (list.tail === node) return;
      list.unlink(node);
      list.append(node);
    },
  };
  return list;
}
