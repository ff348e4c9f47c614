// Type-checks every ```ts block of README.md: each becomes a module in examples/readme/.generated/,
// compiled with examples/readme/tsconfig.json (prelude.d.ts declares the few free names they use).
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(root, 'examples/readme/.generated')
const readme = readFileSync(join(root, 'README.md'), 'utf8')
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((match) => match[1])
rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })
blocks.forEach((code, index) => {
  const line = readme.slice(0, readme.indexOf(code)).split('\n').length
  // `export {}` makes every block a module, so top-level await and local names work as in an app
  writeFileSync(
    join(out, `block-${String(index + 1).padStart(2, '0')}-line-${line}.ts`),
    `${code}\nexport {}\n`,
  )
})
try {
  execFileSync(
    process.execPath,
    [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'examples/readme')],
    {
      stdio: 'inherit',
    },
  )
} catch {
  console.error(`README examples: type errors (see examples/readme/.generated)`)
  process.exit(1)
}
console.log(`README examples: ${blocks.length} ts blocks type-check`)
