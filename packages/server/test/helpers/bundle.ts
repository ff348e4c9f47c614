/**
 * Bundles a source file of the server for a child process, as the published package would run it: esbuild,
 * dependencies external, written under node_modules so they resolve as installed. Loading the sources
 * through tsx instead costs over a second per spawn.
 */
import { mkdirSync, rmSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'
import { build } from 'esbuild'

/** The repository's root, where a child process resolves the packages from. */
export const ROOT = resolve(import.meta.dirname, '../../../..')

/**
 * Bundles `entry` (a path) into `node_modules/.cache/<name>/<pid>/`, and answers the bundle's path and a
 * function that removes it.
 * @example
 * const cli = await bundle(resolve(import.meta.dirname, '../src/cli.ts'), 'tokenflow-cli-test')
 * afterAll(cli.remove)
 */
export async function bundle(entry: string, name: string): Promise<{ path: string; remove: () => void }> {
  const out = join(ROOT, 'node_modules/.cache', name, `${process.pid}`)
  mkdirSync(out, { recursive: true })
  const path = join(out, `${basename(entry).replace(/\.ts$/, '')}.mjs`)
  await build({
    entryPoints: [entry],
    outfile: path,
    bundle: true,
    platform: 'node',
    format: 'esm',
    packages: 'external',
    logLevel: 'warning',
  })
  return { path, remove: () => rmSync(out, { recursive: true, force: true }) }
}
