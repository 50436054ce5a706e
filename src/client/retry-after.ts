/**
 * Parses a `Retry-After` field value (RFC 9110 section 10.2.3) into a delay in milliseconds.
 *
 * The field is either `delay-seconds` (`1*DIGIT`, a non-negative integer number of seconds) or an
 * `HTTP-date` (section 5.6.7; IMF-fixdate, with the obsolete RFC 850 and asctime forms that
 * recipients must accept, which `Date.parse` reads). A date in the past means "now" (0). Anything
 * else, including a negative or fractional number, is invalid and gives `undefined`, so the caller
 * falls back to its own backoff.
 *
 * @param value the field value, or null when absent.
 * @param nowMs the current time in epoch ms, for the HTTP-date form.
 */
export function parseRetryAfter(value: string | null | undefined, nowMs: number): number | undefined {
  if (value === null || value === undefined) return undefined;
  const trimmed = value.trim();
  if (trimmed === '') return undefined;
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  // An HTTP-date always names a weekday first; this keeps Date.parse away from bare numbers like "-1".
  if (!/^[A-Za-z]{3}/.test(trimmed)) return undefined;
  // asctime-date carries no zone but means GMT (section 5.6.7); Date.parse would read it as local time.
  const at = Date.parse(ASCTIME.test(trimmed) ? `${trimmed} GMT` : trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - nowMs);
}

const ASCTIME = /^[A-Za-z]{3} [A-Za-z]{3} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/;
