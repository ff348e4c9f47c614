/**
 * `npm start`'s flags and environment (examples/demo/main.ts, run as a process on the sources), and the data
 * directory it makes. Each refused value exits 1 before anything is built or listens.
 */
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { type Run, runProcess } from '../../../packages/server/test/helpers/process.js'
import { startDemo } from '../start-demo.js'

const MAIN = fileURLToPath(new URL('../main.ts', import.meta.url))
const { PORT: _port, ...baseEnv } = process.env

const start = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> =>
  runProcess(process.execPath, ['--conditions=@tokenflow/source', '--import', 'tsx', MAIN, ...args], {
    env: { ...baseEnv, ...env },
    timeout: 30_000,
  })

describe('npm start: flags', { timeout: 60_000 }, () => {
  it('bug: a bad $PORT was blamed on --port, which the user never typed', async () => {
    const [fromEnv, fromFlag, empty, hex] = await Promise.all([
      start([], { PORT: 'abc' }),
      start(['--port', 'abc']),
      // an empty flag is refused, not read as 0 (a free port)
      start(['--port', '']),
      start(['--port', '0x10']),
    ])
    expect(fromEnv.code).toBe(1)
    expect(fromEnv.stderr).toMatch(/^\$PORT must be a whole number from 0 to 65535$/m)
    for (const run of [fromFlag, empty, hex]) {
      expect(run.code).toBe(1)
      expect(run.stderr).toMatch(/^"--port" must be a whole number from 0 to 65535$/m)
    }
  })

  it('bug: the usage promised "from 2 s to 1 h" for --access-ttl, whose 1h it refuses; it says 2s to 3600s', async () => {
    const [help, hour] = await Promise.all([start(['--help']), start(['--access-ttl', '1h'])])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('from 2s to 3600s (default 10s)')
    expect(hour.code).toBe(1)
    expect(hour.stderr).toMatch(/^"--access-ttl" must be from 2s to 3600s/m)
  })
})

describe('the data directory', () => {
  let parent: string
  afterAll(async () => {
    await rm(parent, { recursive: true, force: true })
  })

  it("bug: it was made readable by every local user, with the database's signing keys and password hashes in it", async () => {
    parent = await mkdtemp(join(tmpdir(), 'tokenflow-demo-dir-'))
    const dataDir = join(parent, '.tokenflow')
    const demo = await startDemo({ dataDir, port: 0, page: false })
    try {
      expect((await stat(dataDir)).mode & 0o777).toBe(0o700)
    } finally {
      await demo.close()
    }
    // one an earlier start left readable by others is made the owner's alone again
    await chmod(dataDir, 0o755)
    const again = await startDemo({ dataDir, port: 0, page: false })
    try {
      expect((await stat(dataDir)).mode & 0o777).toBe(0o700)
    } finally {
      await again.close()
    }
  })
})
