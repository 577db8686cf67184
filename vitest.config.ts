import { defineConfig } from 'vitest/config';

// Two projects: fast pure unit tests beside their code, and the e2e suite that drives a real Envoy
// (and, where needed, real Docker + gVisor). E2E files run one at a time: they bind ports, start
// Envoy processes and create network namespaces.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['{common,cli,xds-server,sds-minter,policy,sandbox,envoy,audit,mcp,operator}/**/*.test.ts'],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 180_000,
          hookTimeout: 180_000,
          fileParallelism: false,
          pool: 'forks',
        },
      },
    ],
  },
});
