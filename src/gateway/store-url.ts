/** A `--store` value, parsed. */
export type StoreSpec =
  | { kind: 'memory' }
  | { kind: 'sqlite'; path: string }
  | { kind: 'redis'; url: string; prefix?: string }
  | {
      kind: 'redis-cluster';
      nodes: Array<{ host: string; port: number }>;
      tls: boolean;
      username?: string;
      password?: string;
      prefix?: string;
    }
  | { kind: 'postgres'; url: string; table?: string };

const FORMS =
  'must be sqlite:PATH, memory:, redis://HOST:PORT, rediss://…, redis+cluster://HOST:PORT[,HOST:PORT…] (or a comma-separated list of redis:// nodes) or postgres://…';

/**
 * Parses a `--store` URL. A Redis Cluster is named by the `redis+cluster:` (or `rediss+cluster:`)
 * scheme, or by a comma-separated list of nodes. Redis URLs may end in `?prefix=…` (the store's key
 * prefix), PostgreSQL URLs in `?table=…`; that parameter is taken out before the driver sees the URL.
 * Returns an error message for anything else; the message never repeats a password.
 */
export function parseStoreUrl(input: string): StoreSpec | string {
  const { text, param } = takeParam(input, /^postgres(ql)?:/.test(input) ? 'table' : 'prefix');
  if (param === null) return `${FORMS}; ?prefix= or ?table= holds a broken %-escape`;
  if (param !== undefined && param === '') return `${FORMS}; an empty ?prefix= or ?table= is not allowed`;
  if (param !== undefined && /^postgres(ql)?:/.test(input) && !/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(param)) {
    return `${FORMS}; ?table= must be a plain SQL identifier; got '${param}'`;
  }
  const spec = parse(text);
  if (typeof spec === 'string' || param === undefined) return spec;
  if (spec.kind === 'postgres') return { ...spec, table: param };
  if (spec.kind === 'redis' || spec.kind === 'redis-cluster') return { ...spec, prefix: param };
  return spec;
}

/** Removes one `name=value` query parameter (the last thing in the URL) and returns it. */
function takeParam(input: string, name: string): { text: string; param: string | undefined | null } {
  const match = new RegExp(`([?&])${name}=([^&#]*)`).exec(input);
  if (match === null) return { text: input, param: undefined };
  const before = input.slice(0, match.index);
  const after = input.slice(match.index + match[0].length);
  const rest = match[1] === '?' && after.startsWith('&') ? `?${after.slice(1)}` : after;
  return { text: before + rest, param: decoded(match[2] as string) ?? null };
}

function parse(text: string): StoreSpec | string {
  if (text === 'memory:') return { kind: 'memory' };
  if (text.startsWith('sqlite:')) {
    const path = text.slice('sqlite:'.length);
    return path === ''
      ? `${FORMS}; sqlite: needs a file path, e.g. sqlite:./idemkit.db`
      : { kind: 'sqlite', path };
  }
  if (/^postgres(ql)?:\/\//.test(text)) {
    try {
      new URL(text);
    } catch {
      return `${FORMS}; got an unparsable postgres URL`;
    }
    return { kind: 'postgres', url: text };
  }
  const cluster = /^(rediss?)\+cluster:\/\//.exec(text);
  if (cluster !== null || (/^rediss?:\/\//.test(text) && text.includes(','))) {
    const scheme = cluster?.[1] ?? (text.startsWith('rediss:') ? 'rediss' : 'redis');
    const rest = cluster === null ? text : text.slice(cluster[0].length);
    const nodes: Array<{ host: string; port: number }> = [];
    let username: string | undefined;
    let password: string | undefined;
    for (const part of rest.split(',')) {
      const withScheme = /^rediss?:\/\//.test(part) ? part : `${scheme}://${part}`;
      let url: URL;
      try {
        url = new URL(withScheme);
      } catch {
        return `${FORMS}; a cluster node '${redact(part)}' is not HOST:PORT`;
      }
      if (url.hostname === '' || (url.pathname !== '' && url.pathname !== '/')) {
        return `${FORMS}; a cluster node '${redact(part)}' is not HOST:PORT`;
      }
      if (url.username !== '') username = decoded(url.username);
      if (url.password !== '') password = decoded(url.password);
      if (username === undefined && url.username !== '')
        return `${FORMS}; a user name holds a broken %-escape`;
      if (password === undefined && url.password !== '')
        return `${FORMS}; a password holds a broken %-escape`;
      nodes.push({
        host: url.hostname.replace(/^\[|\]$/g, ''),
        port: url.port === '' ? 6379 : Number(url.port),
      });
    }
    return {
      kind: 'redis-cluster',
      nodes,
      tls: scheme === 'rediss',
      ...(username === undefined ? {} : { username }),
      ...(password === undefined ? {} : { password }),
    };
  }
  if (/^rediss?:\/\//.test(text)) {
    try {
      new URL(text);
    } catch {
      return `${FORMS}; got an unparsable redis URL`;
    }
    return { kind: 'redis', url: text };
  }
  return `${FORMS}; got '${redact(text)}'`;
}

/** Percent-decoded; `undefined` when an escape is broken (`%` alone). */
function decoded(text: string): string | undefined {
  try {
    return decodeURIComponent(text);
  } catch {
    return undefined;
  }
}

/** The URL with any password replaced by `***`, for messages and logs. */
export function redact(text: string): string {
  return text.replace(/(\/\/[^:/@]*:)[^@/]*@/g, '$1***@');
}

/** A store spec as it may be shown in a log line. */
export function describeStore(spec: StoreSpec): string {
  switch (spec.kind) {
    case 'memory':
      return 'memory:';
    case 'sqlite':
      return `sqlite:${spec.path}`;
    case 'redis-cluster':
      return `redis cluster ${spec.nodes.map((n) => `${n.host}:${n.port}`).join(',')}`;
    default:
      return redact(spec.url);
  }
}
