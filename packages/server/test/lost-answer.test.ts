/**
 * A refresh whose answer is lost without the connection closing (a proxy or a mobile network that drops
 * it): the server rotated, the client times out after `refreshTimeout` and retries with the same refresh
 * token. That retry is a reuse unless it falls within the server's `reuseGrace`. Both sides run their real
 * code: `@tokenflow/client`'s manager and `jsonRefresh`, and `createAuthServer` through `inject()`, on one
 * fake clock. With both defaults (10 s each) the retry comes just past the grace and the session is
 * revoked on every device; the README says so and names the setting that avoids it.
 */
import { createTokenManager, jsonRefresh, type TokenEvent } from '@tokenflow/client'
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { AUDIENCE, ISSUER, PASSWORD } from './helpers/http.js'

let store: TokenStore
const servers: AuthServer[] = []

beforeAll(() => {
  store = createSqliteStore({ filename: ':memory:' })
  return async () => {
    for (const app of servers) await app.close()
    await store.close()
  }
})

afterEach(() => {
  vi.useRealTimers()
})

async function scenario(reuseGrace: number | undefined) {
  const app = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    store,
    rateLimit: false,
    pruneInterval: 0,
    // read at each call: the fake clock below once it is on
    now: () => Date.now(),
    ...(reuseGrace === undefined ? {} : { reuseGrace }),
  })
  servers.push(app)
  await app.ready()
  const username = `u${servers.length}`
  await app.tokenflow.issuer.addUser(username, PASSWORD)
  const login = (
    await app.inject({ method: 'POST', url: '/auth/login', payload: { username, password: PASSWORD } })
  ).json()

  let tries = 0
  // the client's fetch, answered by the server in process; the first refresh's answer never arrives
  const fetch = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
    tries++
    const reply = await app.inject({
      method: 'POST',
      url: new URL(String(url)).pathname,
      headers: { 'content-type': 'application/json' },
      payload: String(init?.body),
    })
    if (tries === 1) {
      // rotated on the server; the answer is lost and the connection stays open until the client gives up
      return new Promise<never>((_resolve, reject) => {
        const signal = init?.signal
        signal?.addEventListener('abort', () => reject(signal.reason), { once: true })
      })
    }
    return new Response(reply.body, {
      status: reply.statusCode,
      headers: { 'content-type': 'application/json' },
    })
  }

  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'], now: Date.now() })
  // the client's defaults: refreshTimeout 10 s, retry { attempts: 2, baseDelay: 300 }
  const manager = createTokenManager({
    refresh: jsonRefresh('https://auth.tokenflow.test/refresh/token', { fetch }),
  })
  const events: TokenEvent['type'][] = []
  manager.subscribe((event) => events.push(event.type))
  await manager.setTokens({ accessToken: login.accessToken, refreshToken: login.refreshToken })
  // the access token (15 min) has expired: the next request refreshes first
  vi.setSystemTime(Date.now() + 16 * 60_000)
  const outcome = manager.getAccessToken().then(
    (token) => ({ token }),
    (error: unknown) => ({ error }),
  )
  // in steps, with a turn of the event loop after each: the server's I/O and signing run on real turns
  for (let elapsed = 0; elapsed < 15_000; elapsed += 10) {
    await vi.advanceTimersByTimeAsync(10)
    await new Promise((resolve) => setImmediate(resolve))
  }
  return { outcome: await outcome, tries, events, stats: app.tokenflow.issuer.stats }
}

describe('a refresh answer lost without a reset, at the client defaults', () => {
  it("with the server's default reuseGrace (10 s) the client's retry, at 10 s plus the backoff, is a reuse: the session is revoked", async () => {
    const { outcome, tries, events, stats } = await scenario(undefined)
    expect(tries).toBe(2)
    expect(outcome).toMatchObject({ error: { name: 'RefreshError', kind: 'rejected', status: 400 } })
    expect(events).toEqual(['refreshStarted', 'refreshFailed', 'loggedOut'])
    expect(stats).toMatchObject({ refreshes: 1, graceReplays: 0, reuseDetected: 1 })
  })

  it('with reuseGrace 30 s (what the README advises for these client defaults) the retry gets the same successor', async () => {
    const { outcome, tries, events, stats } = await scenario(30_000)
    expect(tries).toBe(2)
    expect(outcome).toEqual({ token: expect.stringMatching(/^ey/) })
    expect(events).toEqual(['refreshStarted', 'refreshed'])
    expect(stats).toMatchObject({ refreshes: 1, graceReplays: 1, reuseDetected: 0 })
  })
})
