import { defineConfig } from 'vitest/config'

// Tests run on the TypeScript sources: every package exports them under this condition.
const conditions = ['@tokenflow/source', 'module', 'node', 'import', 'default']

export default defineConfig({
  resolve: { conditions },
  // no 'import' for Node-side resolution: pg (CommonJS) would then load pg-pool's ESM build and crash
  ssr: { resolve: { conditions: ['@tokenflow/source', 'node'], externalConditions: ['@tokenflow/source'] } },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'examples/*/test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    pool: 'forks',
  },
})
