/** A method as the hooks see it. */
export type Method = (...args: unknown[]) => unknown;

const hooks = new WeakMap<object, Map<string, { table: WeakMap<object, Method>; next: () => Method }>>();

/**
 * Puts `wrapper` in front of `target[name]` for this one object; returns the method it wraps and
 * a function that takes it away. Usually the wrapper is an own property. A framework that swaps
 * its request and response prototypes per request (Express) leaves objects on which V8 makes every
 * added property cost microseconds (a new map copied each time): there the wrapper goes, once, on
 * the framework's base prototype (the one right above Node's: shared by all its apps, so it stays
 * when Express swaps prototypes entering and leaving a mounted app), and runs only for the objects
 * hooked, passing every other one straight on. An own method (another layer's wrapper) is wrapped
 * as an own property, so that ours stays in front of it.
 */
export function hook(target: object, name: string, wrapper: Method): { original: Method; unhook(): void } {
  const base = frameworkPrototype(target);
  const record = target as Record<string, unknown>;
  if (base === undefined || Object.hasOwn(target, name)) {
    const original = record[name] as Method;
    record[name] = wrapper;
    const unhook = () => {
      record[name] = original;
    };
    return { original, unhook };
  }
  let byName = hooks.get(base);
  if (byName === undefined) {
    byName = new Map();
    hooks.set(base, byName);
  }
  let hooked = byName.get(name);
  if (hooked === undefined) {
    const table = new WeakMap<object, Method>();
    // The method the hook passes on to: the framework's own, or else the one above it, looked up
    // at each call, so that a later patch of Node's prototype (an APM agent's) still runs.
    const own = Object.hasOwn(base, name) ? (Reflect.get(base, name) as Method) : undefined;
    const above = Object.getPrototypeOf(base) as Record<string, Method>;
    const next = own === undefined ? () => above[name]! : () => own;
    hooked = { table, next };
    byName.set(name, hooked);
    Object.defineProperty(base, name, {
      configurable: true,
      writable: true,
      value: function hookedMethod(this: object, ...args: unknown[]) {
        return (table.get(this) ?? next()).apply(this, args);
      },
    });
  }
  const { table, next } = hooked;
  table.set(target, wrapper);
  const unhook = () => {
    table.delete(target);
  };
  return { original: next(), unhook };
}

/** The prototype right above Node's own on `target`'s chain, when a framework put one there. */
function frameworkPrototype(target: object): object | undefined {
  const native = (target as { constructor?: { prototype?: unknown } }).constructor?.prototype;
  let proto = Object.getPrototypeOf(target) as object | null;
  if (typeof native !== 'object' || native === null || proto === native) return undefined;
  while (proto !== null && Object.getPrototypeOf(proto) !== native) proto = Object.getPrototypeOf(proto);
  return proto ?? undefined;
}

/**
 * Per-object state kept beside a request or response. On Node's own objects it is a property under
 * a symbol: a WeakMap entry per request makes every young-generation GC walk the map's ephemerons
 * (measured on the node:http face, memory store, first requests: scavenges 280-380 ms per 20,000
 * requests with a WeakMap, about 100 ms with a property). On the objects of a framework that swaps
 * prototypes (Express), where each added property costs microseconds, it stays in a WeakMap.
 */
export function sideTable<V extends object>(
  description: string,
): {
  get(target: object): V | undefined;
  set(target: object, value: V): void;
} {
  const key = Symbol(description);
  const map = new WeakMap<object, V>();
  return {
    get: (target) => (target as Record<symbol, V | undefined>)[key] ?? map.get(target),
    set(target, value) {
      // Not enumerable: a spread or Object.assign copy of the object does not carry it along.
      if (frameworkPrototype(target) !== undefined) map.set(target, value);
      else Object.defineProperty(target, key, { value, writable: true, configurable: true });
    },
  };
}
