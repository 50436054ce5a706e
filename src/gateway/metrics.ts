import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';
import type { IdempotencyEvent } from '../core/events.js';
import type { IdempotencyStore } from '../core/store.js';
import type { UpstreamFailure } from './proxy.js';

/** The gateway's Prometheus metrics, on a registry of its own (never prom-client's global one). */
export interface GatewayMetrics {
  readonly registry: Registry;
  /** Counts a request the gateway did not guard. */
  passed(): void;
  /** Counts what an engine decision means for the request it was about. */
  record(event: IdempotencyEvent): void;
  upstreamFailure(kind: UpstreamFailure): void;
  /** The store with each operation's latency observed. */
  timed(store: IdempotencyStore): IdempotencyStore;
}

/** The request outcome each engine event stands for; other events are not a request's outcome. */
function outcomeOf(event: IdempotencyEvent): string | undefined {
  switch (event.type) {
    case 'completed':
      return 'executed';
    case 'replayed':
      return 'replayed';
    case 'released':
      return 'released';
    case 'conflict':
      return event.reason === 'reused' ? 'conflict_reused' : 'conflict_in_use';
    case 'rejected':
      return 'rejected';
    case 'store_error':
      return event.operation === 'acquire' ? 'store_unavailable' : undefined;
    default:
      return undefined;
  }
}

/** Creates the gateway's counters and histogram, with Node's process metrics, on a new registry. */
export function createGatewayMetrics(): GatewayMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const requests = new Counter({
    name: 'idemkit_requests_total',
    help: 'Requests by outcome: executed, replayed, conflict_reused, conflict_in_use, rejected, released, store_unavailable, passed (not guarded).',
    labelNames: ['outcome'],
    registers,
  });
  const replays = new Counter({
    name: 'idemkit_replays_total',
    help: 'Stored responses replayed.',
    registers,
  });
  const conflicts = new Counter({
    name: 'idemkit_conflicts_total',
    help: 'Conflict answers: reused (another request under the key) or in_use (still running).',
    labelNames: ['reason'],
    registers,
  });
  const takeovers = new Counter({
    name: 'idemkit_lease_takeovers_total',
    help: 'Keys claimed after the lease of a crashed or stuck claim lapsed.',
    registers,
  });
  const leaseLost = new Counter({
    name: 'idemkit_lease_lost_total',
    help: 'Completions, renewals or releases dropped because another instance had taken the key over.',
    labelNames: ['operation'],
    registers,
  });
  const storeErrors = new Counter({
    name: 'idemkit_store_errors_total',
    help: 'Failed store operations.',
    labelNames: ['operation'],
    registers,
  });
  const upstreamFailures = new Counter({
    name: 'idemkit_upstream_failures_total',
    help: 'Upstream calls that failed: refused, timeout or error.',
    labelNames: ['kind'],
    registers,
  });
  // Prometheus base units are seconds (https://prometheus.io/docs/practices/naming/#base-units).
  const storeLatency = new Histogram({
    name: 'idemkit_store_duration_seconds',
    help: 'Latency of store operations.',
    labelNames: ['operation'],
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers,
  });
  const passedChild = requests.labels('passed');
  return {
    registry,
    passed: () => passedChild.inc(),
    record(event) {
      const outcome = outcomeOf(event);
      if (outcome !== undefined) requests.labels(outcome).inc();
      if (event.type === 'replayed') replays.inc();
      else if (event.type === 'conflict') conflicts.labels(event.reason).inc();
      else if (event.type === 'claimed' && event.takenOver) takeovers.inc();
      else if (event.type === 'lease_taken_over') leaseLost.labels(event.operation).inc();
      else if (event.type === 'store_error') storeErrors.labels(event.operation).inc();
    },
    upstreamFailure: (kind) => upstreamFailures.labels(kind).inc(),
    timed(store) {
      // One bound child per operation: labelling on every call would hash the labels each time.
      const children = new Map(
        ['acquire', 'renew', 'complete', 'release', 'get', 'delete'].map((op) => [
          op,
          storeLatency.labels(op),
        ]),
      );
      const time = <T>(operation: string, run: () => Promise<T>): Promise<T> => {
        const child = children.get(operation) as ReturnType<typeof storeLatency.labels>;
        const started = performance.now();
        return run().finally(() => child.observe((performance.now() - started) / 1000));
      };
      const timedStore: IdempotencyStore = {
        acquire: (scopeKey, input) => time('acquire', () => store.acquire(scopeKey, input)),
        renew: (scopeKey, token, options) => time('renew', () => store.renew(scopeKey, token, options)),
        complete: (scopeKey, token, response, options) =>
          time('complete', () => store.complete(scopeKey, token, response, options)),
        release: (scopeKey, token) => time('release', () => store.release(scopeKey, token)),
        get: (scopeKey, options) => time('get', () => store.get(scopeKey, options)),
        delete: (scopeKey, options) => time('delete', () => store.delete(scopeKey, options)),
        close: () => store.close(),
      };
      if (store.waitForCompletion !== undefined) {
        const wait = store.waitForCompletion.bind(store);
        timedStore.waitForCompletion = (scopeKey, options) => wait(scopeKey, options);
      }
      return timedStore;
    },
  };
}
