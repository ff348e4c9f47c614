/**
 * `cookie` 2, which @fastify/cookie and light-my-request depend on, ships only as an ES module, and Node 20
 * can `require()` one only from 20.19 on. `--no-experimental-require-module` gives Node 20.20 the older
 * releases' behaviour, so this file shows what the README's FAQ says about them: the server runs, cookie
 * mode included (@fastify/cookie loads `cookie` with `import()`), and only Fastify's `inject()` fails.
 * The server is bundled with esbuild (dependencies external, as installed) and run by plain node: a loader
 * such as tsx would load ES modules through `require()` itself and hide the difference.
 */
import { execFile } from 'node:child_process'
import { resolve } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bundle, ROOT } from './helpers/bundle.js'

const run = promisify(execFile)
let SCRIPT = ''
let removeBundle = () => {}

beforeAll(async () => {
  const bundled = await bundle(
    resolve(import.meta.dirname, 'fixtures/older-node/cookie-mode.ts'),
    'tokenflow-older-node',
  )
  SCRIPT = bundled.path
  removeBundle = bundled.remove
})

afterAll(() => removeBundle())

/** Runs plain node without require() of ES modules, in the repository root so packages resolve. */
async function oldNode(args: string[]) {
  try {
    const options = { cwd: ROOT, timeout: 30_000 }
    const { stdout, stderr } = await run(
      process.execPath,
      ['--no-experimental-require-module', ...args],
      options,
    )
    return { code: 0, stdout, stderr }
  } catch (error) {
    const { code, stdout, stderr } = error as { code: number; stdout: string; stderr: string }
    return { code, stdout, stderr }
  }
}

describe('on a Node 20 that cannot require() an ES module', () => {
  it('is such a Node: require() of cookie 2 fails with ERR_REQUIRE_ESM', async () => {
    const { code, stderr } = await oldNode(['-e', "require('cookie')"])
    expect(code).toBe(1)
    expect(stderr).toContain('ERR_REQUIRE_ESM')
  })

  it('runs a cookie-mode server that logs in and refreshes', async () => {
    const { code, stdout, stderr } = await oldNode([SCRIPT])
    expect(stderr).toBe('')
    expect(code).toBe(0)
    expect(JSON.parse(stdout.trim())).toEqual({
      login: 200,
      refresh: 200,
      cookieName: '__Secure-tokenflow_rt',
      rotated: true,
      accessToken: true,
    })
  })

  it("only Fastify's inject() fails there (README FAQ)", async () => {
    // inject() loads light-my-request on its first call, and throws there
    const script =
      "try { require('fastify')().inject('/') ; console.log('ok') } catch (e) { console.log(e.code) }"
    const { stdout } = await oldNode(['-e', script])
    expect(stdout.trim()).toBe('ERR_REQUIRE_ESM')
  })
})
