/**
 * Real servers for the store suites. A suite whose server cannot be reached is skipped with a printed
 * reason on a laptop; with `CI` set the probe throws instead, so CI can never pass by skipping.
 */

export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** True when `probe` succeeds; false (with a printed reason) when it fails outside CI; throws in CI. */
export async function serviceAvailable(name: string, probe: () => Promise<unknown>): Promise<boolean> {
  try {
    await probe();
    return true;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    if (process.env.CI) {
      throw new Error(`${name} is unreachable and CI is set, so its suite may not be skipped: ${reason}`);
    }
    console.warn(`[idemkit tests] skipping the ${name} suites: ${reason}`);
    return false;
  }
}

/** Whether Redis answers at REDIS_URL (see `serviceAvailable`). */
export async function redisAvailable(): Promise<boolean> {
  const { Redis } = await import('ioredis');
  return serviceAvailable(`Redis at ${REDIS_URL}`, async () => {
    const probe = new Redis(REDIS_URL, {
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    try {
      await probe.connect();
      await probe.ping();
    } finally {
      probe.disconnect();
    }
  });
}

/** Whether PostgreSQL answers at DATABASE_URL (see `serviceAvailable`). */
export async function postgresAvailable(): Promise<boolean> {
  const { default: pg } = await import('pg');
  return serviceAvailable(`PostgreSQL at ${DATABASE_URL}`, async () => {
    const probe = new pg.Client({ connectionString: DATABASE_URL, connectionTimeoutMillis: 2_000 });
    try {
      await probe.connect();
      await probe.query('SELECT 1');
    } finally {
      await probe.end().catch(() => {});
    }
  });
}
