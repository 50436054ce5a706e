import { readFileSync } from 'node:fs';
import { DEFAULT_ROUTES, type GatewayRoute, parseRoute } from './routes.js';
import { parseStoreUrl, type StoreSpec } from './store-url.js';
import { parseDuration, parseSize } from './units.js';

/** Everything `idemkit serve` runs with, validated. */
export interface GatewayConfig {
  /** The upstream API's origin, optionally with a base path. */
  upstream: URL;
  /** @default 8080 */
  port: number;
  /** @default '127.0.0.1' */
  host: string;
  /** @default { kind: 'sqlite', path: './idemkit.db' } */
  store: StoreSpec;
  /** @default 86_400_000 (24 h) */
  ttlMs: number;
  /** @default 10_000 */
  leaseMs: number;
  /** @default POST and PATCH on every path */
  routes: GatewayRoute[];
  /** @default true */
  requireKey: boolean;
  /** @default 409 */
  conflictStatus: 409 | 422 | 400;
  /** Keep a front proxy's `X-Forwarded-Proto` and `-Host`. @default false */
  trustProxy: boolean;
  /** @default 10_485_760 (10 MiB) */
  maxBodyBytes: number;
  /** Without it the admin API is off. @default undefined */
  adminToken: string | undefined;
  /** Time allowed for the upstream's response head, then between body chunks. @default 30_000 */
  upstreamTimeoutMs: number;
  /** Time for a client to send its whole request, head and body; then 408. @default 30_000 */
  requestTimeoutMs: number;
  /** How long SIGTERM waits for requests in flight. @default 30_000 */
  shutdownTimeoutMs: number;
  /** pino level. @default 'info' */
  logLevel: string;
}

/** A setting as given on the command line, in the environment or in the config file. */
export type RawSettings = Partial<Record<SettingName, unknown>>;

/** Raised for invalid settings; the message names the flag and where its value came from. */
export class GatewayConfigError extends Error {
  override name = 'GatewayConfigError';
}

interface Setting {
  flag: string;
  env: string;
  /** How to read a string from the command line or the environment. */
  parse: (value: unknown, source: string) => unknown;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Every setting, by its config-file name; the flag and the variable are derived from it. */
export const SETTINGS = {
  upstream: setting('--upstream', (v, at) => {
    const text = str(v, at);
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new GatewayConfigError(`${at} must be an http:// or https:// URL; got '${text}'`);
    }
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.search !== '' || url.hash !== '') {
      throw new GatewayConfigError(`${at} must be an http:// or https:// URL without a query; got '${text}'`);
    }
    return url;
  }),
  port: setting('--port', (v, at) => integer(v, at, 0, 65_535)),
  host: setting('--host', (v, at) => nonEmpty(v, at)),
  store: setting('--store', (v, at) => {
    const spec = parseStoreUrl(str(v, at));
    if (typeof spec === 'string') throw new GatewayConfigError(`${at} ${spec}`);
    return spec;
  }),
  ttl: setting('--ttl', (v, at) => duration(v, at, 1_000)),
  lease: setting('--lease', (v, at) => duration(v, at, 100)),
  route: setting('--route', (v, at) => {
    const list = Array.isArray(v) ? v : typeof v === 'string' ? v.split(',') : undefined;
    if (list === undefined || list.length === 0) {
      throw new GatewayConfigError(`${at} must be one or more 'METHOD /path' routes`);
    }
    return list.map((item) => {
      const route = typeof item === 'string' ? parseRoute(item) : 'must be a string';
      if (typeof route === 'string') throw new GatewayConfigError(`${at}: ${route}`);
      return route;
    });
  }),
  requireKey: setting('--no-require-key', boolean),
  trustProxy: setting('--trust-proxy', boolean),
  conflictStatus: setting('--conflict-status', (v, at) => {
    const status = integer(v, at, 400, 422);
    if (status !== 409 && status !== 422 && status !== 400) {
      throw new GatewayConfigError(`${at} must be 409, 422 or 400; got ${status}`);
    }
    return status;
  }),
  maxBody: setting('--max-body', (v, at) => {
    const bytes = typeof v === 'number' ? v : parseSize(str(v, at));
    if (bytes === undefined || !Number.isSafeInteger(bytes) || bytes < 1) {
      throw new GatewayConfigError(`${at} must be a size like 1048576, 512kb or 10mb; got '${String(v)}'`);
    }
    return bytes;
  }),
  adminToken: setting('--admin-token', (v, at) => {
    const token = str(v, at);
    if (token.length < 16 || !/^[\x21-\x7e]+$/.test(token)) {
      throw new GatewayConfigError(`${at} must be at least 16 printable ASCII characters without spaces`);
    }
    return token;
  }),
  upstreamTimeout: setting('--upstream-timeout', (v, at) => duration(v, at, 1)),
  requestTimeout: setting('--request-timeout', (v, at) => duration(v, at, 1)),
  shutdownTimeout: setting('--shutdown-timeout', (v, at) => duration(v, at, 0)),
  logLevel: setting('--log-level', (v, at) => {
    const level = str(v, at);
    if (!LOG_LEVELS.includes(level)) {
      throw new GatewayConfigError(`${at} must be one of ${LOG_LEVELS.join(', ')}; got '${level}'`);
    }
    return level;
  }),
} satisfies Record<string, Setting>;

/** A setting's config-file name. */
export type SettingName = keyof typeof SETTINGS;

function setting<T>(
  flag: string,
  parse: (value: unknown, source: string) => T,
): Setting & { parse: typeof parse } {
  const name = flag
    .replace(/^--(no-)?/, '')
    .replace(/-/g, '_')
    .toUpperCase();
  return { flag, env: `IDEMKIT_${name}`, parse };
}

/** The environment variables `idemkit serve` reads, besides `IDEMKIT_CONFIG`. */
export const ENV_NAMES = new Set(Object.values(SETTINGS).map((s) => s.env));

/**
 * Merges the three sources (flags win over the environment, which wins over the file) and
 * validates each value once. Throws `GatewayConfigError` naming the flag and the source.
 */
export function resolveConfig(sources: {
  flags: RawSettings;
  env: NodeJS.ProcessEnv;
  configFile?: string | undefined;
}): GatewayConfig {
  const file = sources.configFile === undefined ? {} : readConfigFile(sources.configFile);
  for (const name of Object.keys(sources.env)) {
    if (name.startsWith('IDEMKIT_') && name !== 'IDEMKIT_CONFIG' && !ENV_NAMES.has(name)) {
      throw new GatewayConfigError(
        `${name} is not a setting of idemkit serve (known: ${[...ENV_NAMES].join(', ')})`,
      );
    }
  }
  const value = <N extends SettingName>(name: N): ReturnType<(typeof SETTINGS)[N]['parse']> | undefined => {
    const s: Setting = SETTINGS[name];
    let raw: unknown;
    let at: string;
    if (sources.flags[name] !== undefined) {
      raw = sources.flags[name];
      at = s.flag;
    } else if (sources.env[s.env] !== undefined) {
      raw = sources.env[s.env];
      at = `${s.env} (${s.flag})`;
    } else if (file[name] !== undefined) {
      raw = file[name];
      at = `"${name}" in ${sources.configFile} (${s.flag})`;
    } else return undefined;
    return s.parse(raw, at) as ReturnType<(typeof SETTINGS)[N]['parse']>;
  };
  const upstream = value('upstream');
  if (upstream === undefined) {
    throw new GatewayConfigError(
      '--upstream is required (or IDEMKIT_UPSTREAM, or "upstream" in the config file): the URL of the API to protect',
    );
  }
  const ttlMs = value('ttl') ?? 86_400_000;
  const leaseMs = value('lease') ?? 10_000;
  if (leaseMs > ttlMs)
    throw new GatewayConfigError(`--lease (${leaseMs} ms) must not exceed --ttl (${ttlMs} ms)`);
  return {
    upstream,
    port: value('port') ?? 8080,
    host: value('host') ?? '127.0.0.1',
    store: value('store') ?? { kind: 'sqlite', path: './idemkit.db' },
    ttlMs,
    leaseMs,
    routes: value('route') ?? DEFAULT_ROUTES,
    requireKey: value('requireKey') ?? true,
    conflictStatus: (value('conflictStatus') ?? 409) as 409 | 422 | 400,
    trustProxy: value('trustProxy') ?? false,
    maxBodyBytes: value('maxBody') ?? 10_485_760,
    adminToken: value('adminToken'),
    upstreamTimeoutMs: value('upstreamTimeout') ?? 30_000,
    requestTimeoutMs: value('requestTimeout') ?? 30_000,
    shutdownTimeoutMs: value('shutdownTimeout') ?? 30_000,
    logLevel: value('logLevel') ?? 'info',
  };
}

function readConfigFile(path: string): RawSettings {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new GatewayConfigError(`--config ${path} cannot be read (${code})`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new GatewayConfigError(`--config ${path} is not valid JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new GatewayConfigError(`--config ${path} must hold a JSON object of settings`);
  }
  for (const name of Object.keys(parsed)) {
    if (!Object.hasOwn(SETTINGS, name)) {
      throw new GatewayConfigError(
        `--config ${path}: "${name}" is not a setting (known: ${Object.keys(SETTINGS).join(', ')})`,
      );
    }
  }
  return parsed as RawSettings;
}

function boolean(v: unknown, at: string): boolean {
  if (typeof v === 'boolean') return v;
  if (v === 'true' || v === '1') return true;
  if (v === 'false' || v === '0') return false;
  throw new GatewayConfigError(`${at} must be true or false; got '${String(v)}'`);
}

function str(v: unknown, at: string): string {
  if (typeof v !== 'string') throw new GatewayConfigError(`${at} must be a string; got ${JSON.stringify(v)}`);
  return v;
}

function nonEmpty(v: unknown, at: string): string {
  const text = str(v, at);
  if (text.trim() === '') throw new GatewayConfigError(`${at} must not be empty`);
  return text;
}

function integer(v: unknown, at: string, min: number, max: number): number {
  const n = typeof v === 'number' ? v : /^\d+$/.test(String(v)) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new GatewayConfigError(`${at} must be an integer from ${min} to ${max}; got '${String(v)}'`);
  }
  return n;
}

function duration(v: unknown, at: string, minMs: number): number {
  const ms = parseDuration(str(v, at));
  if (ms === undefined) {
    throw new GatewayConfigError(
      `${at} must be a duration like 500ms, 10s, 5m, 24h or 7d; got '${String(v)}'`,
    );
  }
  if (ms < minMs || ms > 365 * 86_400_000) {
    throw new GatewayConfigError(`${at} must be from ${minMs} ms to 365d; got '${String(v)}'`);
  }
  return ms;
}
