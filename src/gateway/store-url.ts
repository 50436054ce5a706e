/** A `--store` value, parsed. */
export type StoreSpec =
  | { kind: 'memory' }
  | { kind: 'sqlite'; path: string }
  | { kind: 'redis'; url: string }
  | {
      kind: 'redis-cluster';
      nodes: Array<{ host: string; port: number }>;
      tls: boolean;
      username?: string;
      password?: string;
    }
  | { kind: 'postgres'; url: string };

const FORMS =
  'must be sqlite:PATH, memory:, redis://HOST:PORT, rediss://…, redis+cluster://HOST:PORT[,HOST:PORT…] (or a comma-separated list of redis:// nodes) or postgres://…';

/**
 * Parses a `--store` URL. A Redis Cluster is named by the `redis+cluster:` (or `rediss+cluster:`)
 * scheme, or by a comma-separated list of nodes. Returns an error message for anything else; the
 * message never repeats a password.
 */
export function parseStoreUrl(text: string): StoreSpec | string {
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
      if (url.username !== '') username = decodeURIComponent(url.username);
      if (url.password !== '') password = decodeURIComponent(url.password);
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
