/**
 * Parses a `Retry-After` field value (RFC 9110 section 10.2.3) into a delay in milliseconds.
 *
 * The field is either `delay-seconds` (`1*DIGIT`, a non-negative integer number of seconds) or an
 * `HTTP-date` (section 5.6.7; IMF-fixdate, with the obsolete RFC 850 and asctime forms that
 * recipients must accept, each matched exactly). A date in the past means "now" (0). Anything
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
  const at = parseHttpDate(trimmed, nowMs);
  return at === undefined ? undefined : Math.max(0, at - nowMs);
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const MONTH = MONTHS.join('|');
const TIME = '(\\d{2}):(\\d{2}):(\\d{2})';
// The three forms of section 5.6.7, exactly; Date.parse would also take "Soon 5" or "Tue 2030".
const IMF_FIXDATE = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\\d{2}) (${MONTH}) (\\d{4}) ${TIME} GMT$`);
const RFC850 = new RegExp(
  `^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\\d{2})-(${MONTH})-(\\d{2}) ${TIME} GMT$`,
);
// asctime carries no zone and means GMT.
const ASCTIME = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (${MONTH}) ( \\d|\\d{2}) ${TIME} (\\d{4})$`);

interface DateParts {
  day: string;
  month: string;
  year: number;
  clock: string[];
}

/** The parts of each form; RFC 850's two-digit year more than 50 years ahead is in the past century. */
function partsOf(text: string, nowMs: number): DateParts | undefined {
  const imf = IMF_FIXDATE.exec(text);
  if (imf !== null)
    return { day: imf[1] as string, month: imf[2] as string, year: Number(imf[3]), clock: imf.slice(4) };
  const rfc850 = RFC850.exec(text);
  if (rfc850 !== null) {
    let year = 2000 + Number(rfc850[3]);
    while (year > new Date(nowMs).getUTCFullYear() + 50) year -= 100;
    return { day: rfc850[1] as string, month: rfc850[2] as string, year, clock: rfc850.slice(4) };
  }
  const asctime = ASCTIME.exec(text);
  if (asctime !== null) {
    const day = (asctime[2] as string).trim();
    return { day, month: asctime[1] as string, year: Number(asctime[6]), clock: asctime.slice(3, 6) };
  }
  return undefined;
}

/** An HTTP-date in epoch ms, or undefined when `text` is none of the three forms or no real date. */
function parseHttpDate(text: string, nowMs: number): number | undefined {
  const parts = partsOf(text, nowMs);
  if (parts === undefined) return undefined;
  const [h, m, sec] = parts.clock.map(Number) as [number, number, number];
  if (h > 23 || m > 59 || sec > 60) return undefined;
  const day = Number(parts.day);
  const at = Date.UTC(parts.year, MONTHS.indexOf(parts.month), day, h, m, Math.min(sec, 59));
  // Date.UTC rolls 31 Feb over into March; a date that does not exist is no date.
  return new Date(at).getUTCDate() === day ? at : undefined;
}
