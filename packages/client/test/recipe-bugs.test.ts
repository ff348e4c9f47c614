import {
  createTokenManager,
  jsonRefresh,
  RefreshError,
  type RefreshFunction,
  type TokenEvent,
  type TokenManager,
  type TokenManagerOptions,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosError, type AxiosInstance } from 'axios'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import {
  createTestClock,
  startTestAuthServer,
  type TestAuthServer,
  type TokenResponse,
} from './helpers/auth-server.js'

/**
 * One test per bug of the well-known axios-interceptor recipe (`isTokenRefreshing` + `refreshSubscribers`),
 * as the README lists them ("Coming from the interceptor recipe"), against real axios and a real server with rotating refresh tokens and
 * reuse detection (no reuse grace).
 */

const TTL = 60_000

let server: TestAuthServer
let serverClock: ReturnType<typeof createTestClock>

beforeEach(async () => {
  serverClock = createTestClock()
  server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now, reuseGrace: 0 })
})
afterEach(() => server.close())

interface Echo {
  sub: string
  tokenNumber: number
}

function makeManager(options: Partial<TokenManagerOptions> = {}): TokenManager {
  return createTokenManager({
    refresh: jsonRefresh(`${server.url}/refresh/token`),
    lock: false,
    channel: false,
    ...options,
  })
}

async function client(options: Partial<TokenManagerOptions> = {}, username = 'alice') {
  const manager = makeManager(options)
  const tokens = server.login(username)
  await manager.setTokens(tokens)
  const events: TokenEvent[] = []
  manager.subscribe((event) => events.push(event))
  const api = axios.create({ baseURL: server.url })
  attachTokenRefresh(api, manager)
  return { manager, api, events, tokens }
}

const expireOnServer = () => serverClock.advance(TTL + 1_000)
const ids = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}${i}`)
const get = (api: AxiosInstance, id: string, path = '/api/data') =>
  api.get<Echo>(path, { headers: { 'x-req-id': id } })
const tokenNumber = (tokens: TokenResponse) => server.claims(tokens.accessToken)!.n

describe('bugs of the interceptor recipe that tokenflow does not have', () => {
  it('retries the request that started the refresh', async () => {
    const { api, tokens } = await client()
    expireOnServer()
    const { status, data } = await get(api, 'first')
    expect(status).toBe(200)
    expect(data.tokenNumber).toBeGreaterThan(tokenNumber(tokens))
    expect(server.requests.map(({ id, status }) => [id, status])).toEqual([
      ['first', 401],
      ['first', 200],
    ])
    expect(server.counters.refreshes).toBe(1)
  })

  it('clears waiters after a refresh, so old requests are not sent again', async () => {
    const { api } = await client()
    expireOnServer()
    await Promise.all(ids('old', 10).map((id) => get(api, id)))
    expireOnServer()
    await Promise.all(ids('new', 10).map((id) => get(api, id)))
    expect(server.counters.refreshes).toBe(2)
    // the recipe's second refresh would replay every request of the first batch: here each came twice, no more
    expect(ids('old', 10).map((id) => server.hits(id))).toEqual(Array(10).fill(2))
    expect(ids('new', 10).map((id) => server.hits(id))).toEqual(Array(10).fill(2))
    expect(server.requests).toHaveLength(40)
  })

  it('does not hang later requests after a failed refresh', async () => {
    const { api, manager } = await client({ retry: false })
    expireOnServer()
    server.refreshMode = 500
    const failed = await Promise.allSettled(ids('a', 5).map((id) => get(api, id)))
    for (const result of failed) {
      expect(result).toMatchObject({
        status: 'rejected',
        reason: { code: 'ERR_REFRESH_FAILED', kind: 'server' },
      })
    }
    expect(manager.status).toBe('authenticated') // a transient failure keeps the session, and clears the flag

    server.refreshMode = 'ok'
    const { status } = await get(api, 'later')
    expect(status).toBe(200)
    expect(server.counters.refreshAttempts).toBe(2)
    expect(server.counters.refreshes).toBe(1)
  })

  it('rejects waiters when the refresh fails', async () => {
    const { api, events } = await client()
    expireOnServer()
    server.refreshMode = 401
    const release = server.holdRefreshes()
    const waiting = ids('w', 10).map((id) =>
      get(api, id).then(
        () => undefined,
        (error: unknown) => error,
      ),
    )
    await vi.waitFor(() => expect(server.counters.unauthorized).toBe(10))
    release()
    const errors = await Promise.all(waiting)
    const error = errors[0] as RefreshError
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected', status: 401 })
    for (const other of errors) expect(other).toBe(error)
    expect(events.filter((event) => event.type === 'loggedOut')).toEqual([
      { type: 'loggedOut', reason: 'refreshRejected', error },
    ])
    expect(server.counters.refreshAttempts).toBe(1)
  })

  it('rejects a waiter at once when its signal aborts, and the refresh goes on for the others', async () => {
    const { api } = await client()
    expireOnServer()
    const release = server.holdRefreshes()
    const controller = new AbortController()
    const aborted = api
      .get('/api/data', { headers: { 'x-req-id': 'aborted' }, signal: controller.signal })
      .then(
        () => 'resolved',
        (error: unknown) => error,
      )
    const others = ids('o', 5).map((id) => get(api, id))
    // all six got their 401 and wait for the held refresh
    await vi.waitFor(() => expect(server.counters.unauthorized).toBe(6))
    controller.abort()
    const error = await aborted
    expect(axios.isCancel(error)).toBe(true)
    expect(server.counters.refreshes).toBe(0) // it rejected while the refresh was still held
    release()
    expect((await Promise.all(others)).map((response) => response.status)).toEqual([200, 200, 200, 200, 200])
    // sent once (its 401), never retried
    expect(server.hits('aborted')).toBe(1)
    expect(server.counters.refreshes).toBe(1)
  })

  it('does not loop when the retried request gets 401 again', async () => {
    const { api } = await client()
    server.alwaysUnauthorized = true
    const error = (await get(api, 'loop').catch((reason: unknown) => reason)) as AxiosError<{ code: string }>
    expect(axios.isAxiosError(error)).toBe(true)
    expect(error.response?.status).toBe(401)
    expect(error.response?.data.code).toBe('ERR_TOKEN_REJECTED')
    expect(server.hits('loop')).toBe(2)
    expect(server.counters.refreshAttempts).toBe(1)
  })

  it('does not deadlock when the refresh goes through the intercepted instance', async () => {
    const api = axios.create({ baseURL: server.url })
    // the recipe's refresh call, on the very instance it intercepts, opted out of the adapter
    const refresh: RefreshFunction = async ({ refreshToken, signal }) => {
      const { data } = await api.post<TokenResponse>(
        '/refresh/token',
        { refreshToken },
        { signal, tokenflow: { skip: true } },
      )
      return data
    }
    // a deadlock would end as a 'timeout' RefreshError after refreshTimeout instead of a 200
    const manager = makeManager({ refresh, refreshTimeout: 2_000 })
    await manager.setTokens(server.login())
    attachTokenRefresh(api, manager)
    expireOnServer()
    const results = await Promise.all(ids('d', 5).map((id) => get(api, id)))
    expect(results.map(({ status }) => status)).toEqual(Array(5).fill(200))
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.refreshes).toBe(1)
  })

  it('does not start a second refresh for a late 401 with the old token', async () => {
    const { api, events, tokens } = await client()
    expireOnServer()
    const late = get(api, 'late', '/api/data?hold=late')
    await vi.waitFor(() => expect(server.held('late')).toBe(1)) // it left with the old token
    const fast = await get(api, 'fast')
    expect(server.counters.refreshes).toBe(1)

    server.release('late') // its 401 arrives now, after the refresh finished
    const { status, data } = await late
    expect(status).toBe(200)
    expect(data.tokenNumber).toBe(fast.data.tokenNumber)
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.reuseDetections).toBe(0)
    expect(events.filter((event) => event.type === 'loggedOut')).toEqual([])

    // what a second refresh would have done: the old refresh token is spent, and reusing it ends the session
    const reuse = await fetch(`${server.url}/refresh/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ refreshToken: tokens.refreshToken }),
    })
    expect(reuse.status).toBe(400)
    expect(await reuse.json()).toMatchObject({ error: 'invalid_grant' })
    expect(server.counters.reuseDetections).toBe(1)
  })

  it('keeps two managers apart (no module state)', async () => {
    const alice = await client({}, 'alice')
    const bob = await client({}, 'bob')
    expireOnServer()
    const [aliceResponses, bobResponses] = await Promise.all(
      [alice, bob].map(({ api }, i) => Promise.all(ids(`u${i}-`, 10).map((id) => get(api, id)))),
    )
    expect(new Set(aliceResponses!.map(({ data }) => data.sub))).toEqual(new Set(['alice']))
    expect(new Set(bobResponses!.map(({ data }) => data.sub))).toEqual(new Set(['bob']))
    expect(server.counters.refreshes).toBe(2) // one per user
    expect(aliceResponses![0]!.data.tokenNumber).not.toBe(bobResponses![0]!.data.tokenNumber)

    // one user logging out leaves the other signed in
    await alice.manager.clear()
    expect(alice.manager.status).toBe('unauthenticated')
    expect(bob.manager.status).toBe('authenticated')
    expect((await get(bob.api, 'bob-after')).data.sub).toBe('bob')
    const aliceAfter = (await get(alice.api, 'alice-after').catch((error: unknown) => error)) as AxiosError
    expect(aliceAfter.response?.status).toBe(401)
    expect(server.requests.at(-1)).toMatchObject({ id: 'alice-after', tokenNumber: undefined })
  })

  it('passes a network error without a response through untouched', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login())
    const closed = await startTestAuthServer()
    await closed.close()
    // even a shouldRefresh that says yes to everything is not asked about an error without a response
    const shouldRefresh = vi.fn(() => true)
    const cases = [
      { name: 'dropped connection', baseURL: server.url, path: '/api/data?drop=1', options: {} },
      { name: 'connection refused', baseURL: closed.url, path: '/api/data', options: {} },
      {
        name: 'dropped, with shouldRefresh',
        baseURL: server.url,
        path: '/api/data?drop=1',
        options: { shouldRefresh },
      },
    ]
    for (const { name, baseURL, path, options } of cases) {
      const api = axios.create({ baseURL })
      // registered before the adapter: on the response side it runs first and sees axios's own error
      const raw: unknown[] = []
      api.interceptors.response.use(undefined, (error: unknown) => {
        raw.push(error)
        throw error
      })
      attachTokenRefresh(api, manager, options)
      const error = (await get(api, name, path).catch((reason: unknown) => reason)) as AxiosError
      expect(error, name).toBe(raw[0])
      expect(axios.isAxiosError(error), name).toBe(true)
      expect(error.response, name).toBeUndefined()
      expect(['ECONNRESET', 'ECONNREFUSED', 'ERR_NETWORK'], name).toContain(error.code)
    }
    expect(shouldRefresh).not.toHaveBeenCalled()
    expect(server.counters.refreshAttempts).toBe(0)
    expect(manager.status).toBe('authenticated')
  })
})
