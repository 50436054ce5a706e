/** Time as the engine sees it; injected so that tests drive leases and expiry without sleeping. */
export interface Clock {
  /** Epoch milliseconds. */
  now(): number;
  /** Schedules `fn`; the timer must not keep the process alive. */
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The real clock: `Date.now` and unref'd timers. */
export const systemClock: Clock = {
  now: Date.now,
  setTimeout(fn, ms) {
    const timer = setTimeout(fn, ms);
    timer.unref();
    return timer;
  },
  clearTimeout(handle) {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
  },
};
