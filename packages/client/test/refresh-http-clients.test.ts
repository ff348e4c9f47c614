// A refresh function written with the app's own HTTP client (the recipe's axios, ky, ofetch) throws that
// client's error for a 4xx or 5xx answer: the manager classifies it by its status, as jsonRefresh does.
import { createTokenManager, RefreshError, type RefreshFunction, type TokenEvent } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosInstance } from 'axios'
import ky from 'ky'
import { ofetch } from 'ofetch'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createTestClock, startTestAuthServer, type TestAuthServer } from './helpers/auth-server.js'

const TTL = 60_000

let server: TestAuthServer
let serverClock: ReturnType<typeof createTestClock>

beforeEach(async () => {
  serverClock = createTestClock()
  server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
})
afterEach(() => server.close())

type Answer = { accessToken: string; refreshToken: string; expiresIn: number }

/** A refresh function per client, each the way its docs show a JSON POST. */
const clients: Array<[string, (url: string, api: AxiosInstance) => RefreshFunction]> = [
  [
    'axios (through the intercepted instance, skipped as the axios adapter documents)',
    (url, api) =>
      async ({ refreshToken, signal }) =>
        (await api.post<Answer>(url, { refreshToken }, { signal, tokenflow: { skip: true } })).data,
  ],
  [
    'ky',
    (url) =>
      async ({ refreshToken, signal }) =>
        ky.post(url, { json: { refreshToken }, signal, retry: 0 }).json<Answer>(),
  ],
  [
    'ofetch',
    (url) =>
      async ({ refreshToken, signal }) =>
        ofetch<Answer>(url, { method: 'POST', body: { refreshToken }, signal, retry: 0 }),
  ],
]

describe.each(clients)('a refresh function written with %s', (_, make) => {
  function setup(refreshToken: string) {
    const api = axios.create({ baseURL: server.url })
    const manager = createTokenManager({
      refresh: make(`${server.url}/refresh/token`, api),
      retry: { attempts: 2, baseDelay: 1, maxDelay: 1 },
      lock: false,
      channel: false,
    })
    const events: TokenEvent[] = []
    manager.subscribe((event) => events.push(event))
    attachTokenRefresh(api, manager)
    return { manager, events, api, tokens: { ...server.login('alice'), refreshToken } }
  }

  it('a refused refresh token (400 invalid_grant) is kind rejected: one call, loggedOut once, every request fails with it', async () => {
    const { manager, events, api, tokens } = setup('a-refresh-token-the-server-never-issued')
    // expired on the client: every request waits for the one refresh before it is sent
    await manager.setTokens({ ...tokens, expiresAt: Date.now() - 1 })
    const results = await Promise.all(
      Array.from({ length: 5 }, () => api.get('/api/me').catch((error: unknown) => error)),
    )
    expect(results[0]).toBeInstanceOf(RefreshError)
    expect(results[0]).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected', status: 400 })
    expect(results.every((result) => result === results[0])).toBe(true)
    // not retried as if it were transient
    expect(server.counters.refreshAttempts).toBe(1)
    expect(events.filter((event) => event.type === 'loggedOut')).toEqual([
      { type: 'loggedOut', reason: 'refreshRejected', error: results[0] },
    ])
    expect(manager.status).toBe('unauthenticated')
  })

  it('a 500 is kind server: retried, then every request fails with it and the session is kept', async () => {
    const { manager, events, api, tokens } = setup(server.login('alice').refreshToken)
    await manager.setTokens(tokens)
    server.refreshMode = 500
    serverClock.advance(TTL + 1_000)
    const error = await api.get('/api/me').catch((reason: unknown) => reason)
    expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'server', status: 500 })
    expect(server.counters.refreshAttempts).toBe(3)
    expect(events.some((event) => event.type === 'loggedOut')).toBe(false)
    expect(manager.status).toBe('authenticated')
    // the server is back: the next request refreshes and goes through
    server.refreshMode = 'ok'
    expect((await api.get('/api/me')).status).toBe(200)
  })

  it('no answer at all (a refused connection) is still kind network', async () => {
    const manager = createTokenManager({
      refresh: make('http://127.0.0.1:9/refresh/token', axios.create()),
      retry: false,
      lock: false,
      channel: false,
    })
    await manager.setTokens(server.login('alice'))
    await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'network' })
  })
})
