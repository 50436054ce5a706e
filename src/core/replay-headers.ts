/**
 * Response headers never stored or replayed by default: per-message or per-connection values
 * (RFC 9110 section 7.6.1 hop-by-hop fields, framing, `date`, `age`), values that would lie on a
 * replay (`server-timing`, rate-limit state) and `set-cookie`, which must never reach another
 * response (a session cookie replayed is a session handed out twice).
 */
export const DEFAULT_DENIED_HEADERS: readonly string[] = [
  'set-cookie',
  'date',
  'age',
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'content-length',
  'server-timing',
  'ratelimit',
  'ratelimit-policy',
  'ratelimit-limit',
  'ratelimit-remaining',
  'ratelimit-reset',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'idempotent-replayed',
];

/** Decides which response headers are stored for replay. */
export type HeaderFilter = (name: string) => boolean;

/**
 * Builds the filter: an allow-list when one is given (only those names, still never `set-cookie`
 * unless listed), else the default deny-list plus the user's additions.
 */
export function createHeaderFilter(options: {
  deny?: readonly string[];
  allow?: readonly string[];
}): HeaderFilter {
  if (options.allow !== undefined) {
    const allowed = new Set(options.allow.map((h) => h.toLowerCase()));
    return (name) => allowed.has(name);
  }
  const denied = new Set([...DEFAULT_DENIED_HEADERS, ...(options.deny ?? []).map((h) => h.toLowerCase())]);
  return (name) => !denied.has(name);
}

/** Applies the filter to name/value pairs, lower-casing names. */
export function filterHeaders(
  pairs: Iterable<readonly [string, string]>,
  keep: HeaderFilter,
): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const [name, value] of pairs) {
    const lower = name.toLowerCase();
    if (keep(lower)) out.push([lower, value]);
  }
  return out;
}
