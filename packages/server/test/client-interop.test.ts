/**
 * @tokenflow/client's refresh functions end to end against a real listening server on 127.0.0.1:
 * jsonRefresh on POST /refresh/token and oauthRefresh on POST /oauth/token.
 */
import {
  createTokenManager,
  jsonRefresh,
  oauthRefresh,
  type RefreshFunction,
  type TokenEvent,
} from '@tokenflow/client'
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const PASSWORD = 'correct horse battery staple'

let store: TokenStore
let app: AuthServer
let origin: string

beforeAll(async () => {
  store = createSqliteStore({ filename: ':memory:' })
  app = createAuthServer({
    issuer: 'https://auth.tokenflow.test',
    audience: 'https://api.tokenflow.test',
    clientId: 'web',
    store,
  })
  origin = await app.listen({ port: 0, host: '127.0.0.1' })
  await app.tokenflow.issuer.addUser('ada', PASSWORD)
})

afterAll(async () => {
  await app.close()
  await store.close()
})

async function login() {
  const response = await fetch(`${origin}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'ada', password: PASSWORD }),
  })
  expect(response.status).toBe(200)
  return (await response.json()) as { accessToken: string; refreshToken: string }
}

const refreshers: Array<[string, () => RefreshFunction]> = [
  ['jsonRefresh', () => jsonRefresh(`${origin}/refresh/token`)],
  ['oauthRefresh', () => oauthRefresh(`${origin}/oauth/token`, { clientId: 'web' })],
]

describe.each(refreshers)('%s against the server', (_name, makeRefresh) => {
  it('refreshes once for a burst of callers and gets a rotated pair', async () => {
    const tokens = await login()
    const manager = createTokenManager({ refresh: makeRefresh(), lock: false, channel: false })
    await manager.setTokens(tokens)
    const before = app.tokenflow.issuer.stats.refreshes
    const results = await Promise.all(Array.from({ length: 10 }, () => manager.refresh()))
    expect(new Set(results).size).toBe(1)
    expect(results[0]).not.toBe(tokens.accessToken)
    expect(app.tokenflow.issuer.stats.refreshes - before).toBe(1)
    // the rotated refresh token works for the next refresh
    await expect(manager.refresh()).resolves.toMatch(/^ey/)
    expect(app.tokenflow.issuer.stats.reuseDetected).toBe(0)
  })

  it('turns invalid_grant into a rejected RefreshError and one loggedOut event', async () => {
    const tokens = await login()
    const manager = createTokenManager({ refresh: makeRefresh(), lock: false, channel: false })
    const events: TokenEvent[] = []
    manager.subscribe((event) => events.push(event))
    await app.tokenflow.issuer.logout(tokens.refreshToken)
    await manager.setTokens(tokens)
    await expect(manager.refresh()).rejects.toMatchObject({
      name: 'RefreshError',
      kind: 'rejected',
      status: 400,
    })
    expect(events.filter((event) => event.type === 'loggedOut')).toHaveLength(1)
    expect(await manager.getAccessToken()).toBeNull()
  })
})
