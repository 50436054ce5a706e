import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { type KeyStore, type PendingOperation, parsePending } from './key-store.js';

/**
 * A key store in one JSON file (Node only), so a restarted process resumes pending operations with
 * their keys. Writes go to a temporary file renamed over the old one, so a crash mid-write leaves
 * the previous content; writes from one process are serialised. Not for several processes at once.
 *
 * @param path the file; created with its directory on the first write.
 */
export function createFileKeyStore(path: string): KeyStore {
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(task: () => Promise<T>): Promise<T> => {
    const run = queue.then(task, task);
    queue = run.catch(() => undefined);
    return run;
  };

  const load = async (): Promise<Record<string, PendingOperation>> => {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if ((error as { code?: string }).code === 'ENOENT') return {};
      throw error;
    }
    const parsed: unknown = JSON.parse(text);
    const all: Record<string, PendingOperation> = {};
    if (typeof parsed === 'object' && parsed !== null)
      for (const [name, value] of Object.entries(parsed)) {
        const pending = parsePending(value);
        if (pending !== undefined) all[name] = pending;
      }
    return all;
  };

  const save = async (all: Record<string, PendingOperation>): Promise<void> => {
    await mkdir(dirname(path), { recursive: true });
    const temporary = `${path}.${Date.now()}.${Math.random().toString(36).slice(2)}.tmp`;
    await writeFile(temporary, JSON.stringify(all, null, 2));
    await rename(temporary, path);
  };

  return {
    get: (operation) => serial(async () => (await load())[operation]),
    set: (operation, pending) =>
      serial(async () => {
        const all = await load();
        all[operation] = pending;
        await save(all);
      }),
    delete: (operation) =>
      serial(async () => {
        const all = await load();
        if (!(operation in all)) return;
        delete all[operation];
        await save(all);
      }),
  };
}
