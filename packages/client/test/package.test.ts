// Both packages as resolvers that read no "exports" see them: TypeScript's legacy moduleResolution "node",
// and Metro before React Native 0.79, look for a folder named after the subpath, with a package.json of its own.
import { existsSync, readFileSync } from 'node:fs'
import { join, normalize } from 'node:path'
import { describe, expect, it } from 'vitest'

const packages = join(import.meta.dirname, '..', '..')
const read = (path: string) => JSON.parse(readFileSync(join(packages, path), 'utf8'))

describe.each([
  ['client', ['./axios', './fetch']],
  ['server', ['./postgres', './verify']],
])('@tokenflow/%s subpaths without "exports"', (name, expected) => {
  const manifest = read(join(name, 'package.json')) as {
    files: string[]
    exports: Record<string, string | { types?: string; default?: string }>
  }
  const subpaths = Object.keys(manifest.exports).filter((key) => key !== '.' && key !== './package.json')

  it('every subpath the exports map has', () => {
    expect(subpaths.sort()).toEqual(expected)
  })

  it.each(subpaths)('%s has a stub folder that is published and points where "exports" does', (subpath) => {
    const folder = subpath.slice(2)
    const target = manifest.exports[subpath] as { types: string; default: string }
    expect(manifest.files).toContain(folder)
    expect(existsSync(join(packages, name, folder, 'package.json'))).toBe(true)
    const stub = read(join(name, folder, 'package.json')) as { main: string; types: string; type: string }
    expect(normalize(join(folder, stub.main))).toBe(normalize(target.default))
    expect(normalize(join(folder, stub.types))).toBe(normalize(target.types))
    // dist holds ES modules: the stub must not make a legacy resolver read them as CommonJS
    expect(stub.type).toBe('module')
  })
})
