/**
 * `npm run bench`: runs every benchmark part, writes `bench/results/<part>.json` and prints each part's table.
 * `tsx bench/run.ts client` runs only the parts named.
 *
 * Benchmarks are not tests: a part reports its budgets as PASS or FAIL, and only a part that
 * could not run at all makes the exit code non-zero.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

/** What a part hands back: the JSON to write and the Markdown table to print. */
export interface BenchPartResult<T = unknown> {
  result: T
  table: string
}

interface BenchPart {
  run(): Promise<BenchPartResult>
}

/** Every part, in the order they run. Imported lazily, so a part loads its peers only when it runs. */
const parts: Record<string, () => Promise<BenchPart>> = {
  client: () => import('./client.js'),
  server: () => import('./server.js'),
  prune: () => import('./prune.js'),
  limiter: () => import('./limiter.js'),
  peers: () => import('./peers.js'),
}

const here = dirname(fileURLToPath(import.meta.url))
const resultsDir = join(here, 'results')

const wanted = process.argv.slice(2)
const unknown = wanted.filter((name) => !(name in parts))
if (unknown.length > 0) {
  console.error(
    `unknown bench part ${unknown.map((n) => `"${n}"`).join(', ')}; known: ${Object.keys(parts).join(', ')}`,
  )
  process.exit(1)
}

await mkdir(resultsDir, { recursive: true })
for (const [name, load] of Object.entries(parts)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue
  console.log(`\n## ${name}\n`)
  try {
    const { result, table } = await (await load()).run()
    const file = join(resultsDir, `${name}.json`)
    await writeFile(file, `${JSON.stringify(result, null, 2)}\n`)
    console.log(table)
    console.log(`\nwritten to ${relative(process.cwd(), file)}`)
  } catch (error) {
    console.error(`bench part "${name}" failed:`, error)
    process.exitCode = 1
  }
}
