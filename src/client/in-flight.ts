/**
 * Calls in flight by identity, so that a double submit (a second identical call while the first is
 * still running) shares the first's request instead of racing it to a 409 in use. The entry leaves
 * the map before its promise settles, so no one joins a settled call; every joiner gets a clone of
 * the response, made before any caller's code can read the body.
 */
export function createInFlight(): {
  share(
    identity: string,
    signal: AbortSignal | undefined,
    start: (signal: AbortSignal) => Promise<Response>,
  ): Promise<Response>;
} {
  const calls = new Map<
    string,
    { promise: Promise<Response>; join(signal: AbortSignal | undefined): void }
  >();
  return {
    share(identity, signal, start) {
      // Aborted before it got here (while its body was hashed): it neither joins nor starts anything.
      if (signal?.aborted) return Promise.reject(signal.reason);
      const existing = calls.get(identity);
      if (existing !== undefined) {
        existing.join(signal);
        return raceAbort(existing.promise.then(cloneOf), signal);
      }
      // The shared request is aborted only once every caller has aborted: one caller giving up
      // must not fail the others. A caller without a signal never gives up.
      const controller = new AbortController();
      let abortable = 0;
      let keep = false;
      const join = (callerSignal: AbortSignal | undefined) => {
        if (callerSignal === undefined) {
          keep = true;
          return;
        }
        abortable += 1;
        const onAbort = () => {
          abortable -= 1;
          if (!keep && abortable === 0) controller.abort(callerSignal.reason);
        };
        if (callerSignal.aborted) onAbort();
        else callerSignal.addEventListener('abort', onAbort, { once: true });
      };
      join(signal);
      const promise = start(controller.signal).then(
        (response) => {
          calls.delete(identity);
          return response;
        },
        (error: unknown) => {
          calls.delete(identity);
          throw error;
        },
      );
      calls.set(identity, { promise, join });
      return raceAbort(promise, signal);
    },
  };
}

const cloneOf = (response: Response) => response.clone();

/** Settles like `promise`, or rejects with the signal's reason as soon as it aborts. */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  if (signal.aborted) {
    promise.catch(() => {}); // its outcome is no one's now; an unobserved rejection must not surface
    return Promise.reject(signal.reason);
  }
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
