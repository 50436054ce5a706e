/** A guarded route: a method and a path pattern (`/charges`, `/charges/:id`, `/api/*`). */
export interface GatewayRoute {
  method: string;
  path: string;
}

/** Which requests the gateway guards; all others are proxied untouched. */
export interface RouteTable {
  /** The methods of every route, for the engine's `methods`. */
  readonly methods: string[];
  matches(method: string, path: string): boolean;
}

const METHOD = /^[A-Z][A-Z0-9-]*$/;

/**
 * Parses `'POST /charges/:id'`. Returns an error message for anything else: a `:name` segment
 * matches one segment, a last segment `*` matches one or more, everything else matches itself.
 */
export function parseRoute(text: string): GatewayRoute | string {
  const parts = text.trim().split(/\s+/);
  if (parts.length !== 2) return `must be 'METHOD /path', e.g. 'POST /charges'; got '${text}'`;
  const [method, path] = parts as [string, string];
  if (!METHOD.test(method)) return `'${method}' is not an upper-case HTTP method name`;
  if (!path.startsWith('/')) return `the path must start with "/"; got '${path}'`;
  if (path.includes('?')) return `the path must not carry a query; got '${path}'`;
  const stars = path.split('/').filter((s) => s.includes('*'));
  if (stars.length > 1 || (stars.length === 1 && !path.endsWith('/*'))) {
    return `'*' may only be the whole last segment; got '${path}'`;
  }
  return { method, path };
}

/** The default: POST and PATCH on every path. */
export const DEFAULT_ROUTES: GatewayRoute[] = [
  { method: 'POST', path: '/*' },
  { method: 'PATCH', path: '/*' },
];

/** Compiles routes for matching request paths as they arrive (not decoded). */
export function createRouteTable(routes: GatewayRoute[]): RouteTable {
  const byMethod = new Map<string, RegExp[]>();
  for (const route of routes) {
    const list = byMethod.get(route.method) ?? [];
    list.push(compile(route.path));
    byMethod.set(route.method, list);
  }
  return {
    methods: [...byMethod.keys()],
    matches(method, path) {
      return byMethod.get(method)?.some((p) => p.test(path)) ?? false;
    },
  };
}

function compile(path: string): RegExp {
  if (path === '/*') return /^\//;
  const source = path
    .split('/')
    .map((segment) => {
      if (segment === '*') return '[^/].*';
      if (segment.startsWith(':') && segment.length > 1) return '[^/]+';
      return segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('/');
  // Case-insensitive: many frameworks route `/Charges` as `/charges`, and a route the gateway missed
  // would go unguarded. Matching more is the safe side.
  return new RegExp(`^${source}/?$`, 'i');
}
