/**
 * The demo user's password, kept in demo-user.json beside the database: two `npm start`s on one new data
 * directory at the same moment agree on it (one printed a password the other had replaced), and a
 * database or a file left from another start is made to agree with the other.
 */
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type AuthServer, createAuthServer, createSqliteStore } from '@tokenflow/server'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { DEMO_USERNAME, demoUser } from '../start-demo.js'

describe('the demo user', () => {
  let dataDir: string
  const servers: AuthServer[] = []
  /** an auth server on the data directory's database, as each start opens it */
  const open = async () => {
    const server = createAuthServer({
      issuer: 'http://127.0.0.1',
      audience: 'http://127.0.0.1/api',
      store: createSqliteStore({ filename: join(dataDir, 'demo.db') }),
      rateLimit: false,
      pruneInterval: 0,
    })
    servers.push(server)
    await server.ready()
    return server
  }
  const logsIn = async (server: AuthServer, password: string) =>
    (
      await server.inject({
        method: 'POST',
        url: '/auth/login',
        payload: { username: DEMO_USERNAME, password },
      })
    ).statusCode === 200

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'tokenflow-demo-user-'))
  })
  afterEach(async () => {
    for (const server of servers.splice(0)) await server.close()
    await rm(dataDir, { recursive: true, force: true })
  })

  it('two starts at the same moment on a new directory agree on one password, which logs in', async () => {
    for (let round = 0; round < 5; round++) {
      await rm(dataDir, { recursive: true, force: true })
      dataDir = await mkdtemp(join(tmpdir(), 'tokenflow-demo-user-'))
      const [a, b] = await Promise.all([open(), open()])
      const [first, second] = await Promise.all([demoUser(a, dataDir), demoUser(b, dataDir)])
      expect(second.password).toBe(first.password)
      const saved = JSON.parse(await readFile(join(dataDir, 'demo-user.json'), 'utf8'))
      expect(saved).toEqual({ username: DEMO_USERNAME, password: first.password })
      expect(await logsIn(a, first.password)).toBe(true)
      for (const server of servers.splice(0)) await server.close()
    }
  })

  it('a later start reuses the password; a removed file or a broken one gets a new password, which logs in', async () => {
    const created = await demoUser(await open(), dataDir)
    expect(created.createdUser).toBe(true)
    // a file readable by others is made the owner's alone again
    await chmod(join(dataDir, 'demo-user.json'), 0o644)
    const again = await demoUser(await open(), dataDir)
    expect(again).toEqual({ username: DEMO_USERNAME, password: created.password, createdUser: false })
    expect((await stat(join(dataDir, 'demo-user.json'))).mode & 0o777).toBe(0o600)

    await writeFile(join(dataDir, 'demo-user.json'), '{ broken')
    const server = await open()
    const renewed = await demoUser(server, dataDir)
    expect(renewed.createdUser).toBe(true)
    expect(renewed.password).not.toBe(created.password)
    expect(await logsIn(server, renewed.password)).toBe(true)
    expect(await logsIn(server, created.password)).toBe(false)

    await rm(join(dataDir, 'demo-user.json'))
    const fresh = await demoUser(server, dataDir)
    expect(fresh.password).not.toBe(renewed.password)
    expect(await logsIn(server, fresh.password)).toBe(true)
  })
})
