/**
 * Calls in flight by identity, so that a double submit (a second identical call while the first is
 * still running) shares the first's request instead of racing it to a 409 in use. The entry leaves
 * the map before its promise settles, so no one joins a settled call; every joiner gets a clone of
 * the response, made before any caller's code can read the body.
 */
export function createInFlight(): {
  share(identity: string, signal: AbortSignal | undefined, start: () => Promise<Response>): Promise<Response>;
} {
  const calls = new Map<string, Promise<Response>>();
  return {
    share(identity, signal, start) {
      const existing = calls.get(identity);
      if (existing !== undefined) return raceAbort(existing.then(cloneOf), signal);
      const settled = start().then(
        (response) => {
          calls.delete(identity);
          return response;
        },
        (error: unknown) => {
          calls.delete(identity);
          throw error;
        },
      );
      calls.set(identity, settled);
      return settled;
    },
  };
}

const cloneOf = (response: Response) => response.clone();

/** Settles like `promise`, or rejects with the signal's reason as soon as it aborts. */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
