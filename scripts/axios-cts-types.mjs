/**
 * Writes `packages/client/dist/axios.d.cts`, a copy of `axios.d.ts` that TypeScript reads as CommonJS.
 *
 * axios ships two declaration files, `index.d.ts` for `import` and `index.d.cts` for `require`, and
 * TypeScript (`moduleResolution: node16`/`nodenext`) treats their `AxiosInstance` types as unrelated. A
 * CommonJS app's axios instance comes from `index.d.cts`; `attachTokenRefresh` typed against
 * `index.d.ts` refused it (TS2345), and the `tokenflow` request option augmented the other file. The
 * package's `require` condition points at this copy, whose `import type … from 'axios'` resolves to
 * `index.d.cts`. The JavaScript is the same ES module for both (Node 20.19+ can `require()` it).
 */
import { copyFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const dist = fileURLToPath(new URL('../packages/client/dist/', import.meta.url))
copyFileSync(`${dist}axios.d.ts`, `${dist}axios.d.cts`)
