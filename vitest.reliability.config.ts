import { defineConfig } from 'vitest/config';

// The fault, chaos and bad-input suite (`npm run test:reliability`, part of `npm test`). Its files
// start server processes and kill them, so they run one at a time, after the rest of the suite.
export default defineConfig({
  test: {
    include: ['test/reliability/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
