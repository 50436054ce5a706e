import { defineConfig } from 'tsup';

// One entry per public subpath; keep in sync with package.json "exports" (checked in test/package-exports.test.ts).
export default defineConfig({
  entry: {
    index: 'src/index.ts',
    'adapters/node': 'src/adapters/node.ts',
    'adapters/express': 'src/adapters/express.ts',
    'adapters/fastify': 'src/adapters/fastify.ts',
    'adapters/hono': 'src/adapters/hono.ts',
    'adapters/nestjs': 'src/adapters/nestjs.ts',
    'stores/memory': 'src/stores/memory.ts',
    'stores/sqlite': 'src/stores/sqlite.ts',
    'stores/redis': 'src/stores/redis.ts',
    'stores/postgres': 'src/stores/postgres.ts',
    'client/index': 'src/client/index.ts',
    'client/file-key-store': 'src/client/file-key-store.ts',
    'gateway/index': 'src/gateway/index.ts',
    'gateway/bin': 'src/gateway/bin.ts',
  },
  format: ['esm'],
  target: 'node20',
  dts: true,
  sourcemap: true,
  clean: true,
  splitting: true,
  treeshake: true,
});
