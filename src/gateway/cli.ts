import { Command, CommanderError } from 'commander';
import { pino } from 'pino';
import { GatewayConfigError, type RawSettings, resolveConfig } from './config.js';
import { createGateway } from './gateway.js';
import { openStore } from './open-store.js';
import { describeStore, redact } from './store-url.js';

/** Where the CLI writes; injectable for tests. */
export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const processIo: CliIo = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/**
 * `idemkit <command>`. Resolves with the exit status: 0 after a clean shutdown, 2 for invalid
 * settings (with a message that names the flag), 1 when the store or the port cannot be had.
 */
export async function main(argv: string[], env: NodeJS.ProcessEnv, io: CliIo = processIo): Promise<number> {
  let settings: { flags: RawSettings; configFile: string | undefined } | undefined;
  const program = new Command('idemkit')
    .description('Make HTTP APIs safe to retry: Idempotency-Key handling for any upstream API.')
    .exitOverride()
    .configureOutput({
      writeOut: io.stdout,
      writeErr: io.stderr,
      outputError: (text, write) => write(`idemkit: ${text.replace(/^error: /, '')}`),
    });
  const serve = program
    .command('serve')
    .description('Run a reverse proxy that applies Idempotency-Key handling to an upstream API.')
    .option('--upstream <url>', 'the API to protect, e.g. http://127.0.0.1:3000 [IDEMKIT_UPSTREAM]')
    .option('--port <n>', 'port to listen on (default 8080) [IDEMKIT_PORT]')
    .option('--host <h>', 'address to listen on (default 127.0.0.1) [IDEMKIT_HOST]')
    .option(
      '--store <url>',
      'sqlite:PATH (default sqlite:./idemkit.db), memory:, redis://…, rediss://…, redis+cluster://h:p,h:p, postgres://… [IDEMKIT_STORE]',
    )
    .option('--ttl <duration>', 'how long a completed key is remembered (default 24h) [IDEMKIT_TTL]')
    .option(
      '--lease <duration>',
      'lease of a claim, renewed while the upstream works (default 10s) [IDEMKIT_LEASE]',
    )
    .option(
      '--route <route>',
      "a guarded route, 'METHOD /path' (:param, trailing *); repeatable (default: POST and PATCH on every path) [IDEMKIT_ROUTE, comma-separated]",
      (value: string, previous: string[] | undefined) => [...(previous ?? []), value],
    )
    .option(
      '--no-require-key',
      'let guarded requests without a key through unguarded [IDEMKIT_REQUIRE_KEY=false]',
    )
    .option(
      '--trust-proxy',
      'keep the X-Forwarded-Proto and -Host a client sends; only behind a proxy that sets them [IDEMKIT_TRUST_PROXY]',
    )
    .option(
      '--conflict-status <status>',
      'status of a reused-key answer: 409 (default), 422 or 400 [IDEMKIT_CONFLICT_STATUS]',
    )
    .option('--max-body <size>', 'largest request body, e.g. 512kb or 10mb (default 10mb) [IDEMKIT_MAX_BODY]')
    .option(
      '--admin-token <token>',
      'turns on the admin lookup API under /_idemkit/keys/ [IDEMKIT_ADMIN_TOKEN]',
    )
    .option(
      '--upstream-timeout <duration>',
      'time for the upstream to answer (default 30s), then 504 [IDEMKIT_UPSTREAM_TIMEOUT]',
    )
    .option(
      '--request-timeout <duration>',
      'time for a client to send its whole request, head and body (default 30s), then 408 [IDEMKIT_REQUEST_TIMEOUT]',
    )
    .option(
      '--shutdown-timeout <duration>',
      'how long SIGTERM waits for requests in flight (default 30s) [IDEMKIT_SHUTDOWN_TIMEOUT]',
    )
    .option(
      '--log-level <level>',
      'fatal, error, warn, info (default), debug, trace or silent [IDEMKIT_LOG_LEVEL]',
    )
    .option(
      '--config <file>',
      'a JSON file of settings; flags win over IDEMKIT_* variables, which win over the file [IDEMKIT_CONFIG]',
    )
    .action((_options, command: Command) => {
      const flags: Record<string, unknown> = {};
      for (const [name, value] of Object.entries(command.opts())) {
        if (command.getOptionValueSource(name) === 'cli' && name !== 'config') flags[name] = value;
      }
      settings = { flags, configFile: (command.opts().config as string | undefined) ?? env.IDEMKIT_CONFIG };
    });
  serve.exitOverride();
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
    throw error;
  }
  if (settings === undefined) {
    io.stderr(program.helpInformation());
    return 2;
  }
  return run(settings, env, io);
}

/**
 * Passes on a store client's connection error once per 10 s for the same message: a client that
 * reconnects every 200 ms while its server is down would otherwise fill the log.
 */
function quiet(log: (error: unknown, message: string) => void): (error: unknown, message: string) => void {
  const last = new Map<string, number>();
  return (error, message) => {
    const text = `${message}: ${(error as Error | undefined)?.message}`;
    const now = Date.now();
    if (now - (last.get(text) ?? 0) < 10_000) return;
    last.set(text, now);
    log(error, message);
  };
}

async function run(
  settings: { flags: RawSettings; configFile: string | undefined },
  env: NodeJS.ProcessEnv,
  io: CliIo,
): Promise<number> {
  const fail = (message: string, status: number) => {
    io.stderr(
      `idemkit serve: ${message}\n${status === 2 ? "Run 'idemkit serve --help' for the settings.\n" : ''}`,
    );
    return status;
  };
  let config: ReturnType<typeof resolveConfig>;
  try {
    config = resolveConfig({ flags: settings.flags, env, configFile: settings.configFile });
  } catch (error) {
    if (error instanceof GatewayConfigError) return fail(error.message, 2);
    throw error;
  }
  const destination = pino.destination({ dest: 1, sync: false });
  const log = pino({ level: config.logLevel }, destination);
  let opened: Awaited<ReturnType<typeof openStore>>;
  try {
    opened = await openStore(
      config.store,
      quiet((error, message) => log.warn({ err: error }, message)),
    );
  } catch (error) {
    destination.flushSync();
    if (error instanceof GatewayConfigError) return fail(error.message, 2);
    return fail(`--store ${describeStore(config.store)}: ${(error as Error).message}`, 1);
  }
  const gateway = createGateway({
    upstream: config.upstream,
    store: opened.store,
    routes: config.routes,
    ttlMs: config.ttlMs,
    leaseMs: config.leaseMs,
    requireKey: config.requireKey,
    conflictStatus: config.conflictStatus,
    trustProxy: config.trustProxy,
    maxBodyBytes: config.maxBodyBytes,
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    requestTimeoutMs: config.requestTimeoutMs,
    logger: log,
    ...(config.adminToken === undefined ? {} : { adminToken: config.adminToken }),
  });
  let address: Awaited<ReturnType<typeof gateway.listen>>;
  try {
    address = await gateway.listen(config.port, config.host);
  } catch (error) {
    await opened.close().catch(() => {});
    destination.flushSync();
    const code = (error as NodeJS.ErrnoException).code;
    return fail(
      `--port ${config.port} on --host ${config.host} cannot be used (${code ?? (error as Error).message})`,
      1,
    );
  }
  log.info(
    {
      event: 'listening',
      url: `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`,
      port: address.port,
      upstream: redact(config.upstream.href),
      store: describeStore(config.store),
      routes: config.routes.map((r) => `${r.method} ${r.path}`),
    },
    'listening',
  );
  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      log.info({ event: 'shutdown', signal }, 'shutting down: finishing requests in flight');
      gateway
        .close(config.shutdownTimeoutMs)
        .then(() => opened.close())
        .then(
          () => 0,
          (error: unknown) => {
            log.error({ err: error }, 'shutdown failed');
            return 1;
          },
        )
        .then((status) => {
          log.info({ event: 'stopped' }, 'stopped');
          destination.flushSync();
          resolve(status);
        });
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}
