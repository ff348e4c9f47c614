// The package as resolvers that read no "exports" see it: TypeScript's legacy moduleResolution "node" and
// Metro before React Native 0.79 look for a folder named after the subpath, with a package.json of its own.
import { existsSync, readFileSync } from 'node:fs'
import { join, normalize } from 'node:path'
import { describe, expect, it } from 'vitest'

const root = join(import.meta.dirname, '..')
const read = (path: string) => JSON.parse(readFileSync(join(root, path), 'utf8'))
const manifest = read('package.json') as {
  files: string[]
  exports: Record<string, string | { types?: string; default?: string }>
}
const subpaths = Object.keys(manifest.exports).filter((key) => key !== '.' && key !== './package.json')

describe('subpaths without "exports"', () => {
  it('every subpath the exports map has', () => {
    expect(subpaths.sort()).toEqual(['./axios', './fetch'])
  })

  it.each(subpaths)('%s has a stub folder that is published and points where "exports" does', (subpath) => {
    const folder = subpath.slice(2)
    const target = manifest.exports[subpath] as { types: string; default: string }
    expect(manifest.files).toContain(folder)
    expect(existsSync(join(root, folder, 'package.json'))).toBe(true)
    const stub = read(join(folder, 'package.json')) as { main: string; types: string; type: string }
    expect(normalize(join(folder, stub.main))).toBe(normalize(target.default))
    expect(normalize(join(folder, stub.types))).toBe(normalize(target.types))
    // dist holds ES modules: the stub must not make a legacy resolver read them as CommonJS
    expect(stub.type).toBe('module')
  })
})
