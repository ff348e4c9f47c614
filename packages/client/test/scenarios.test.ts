import {
  createTokenManager,
  jsonRefresh,
  type LockManagerLike,
  memoryStorage,
  RefreshError,
  type RefreshErrorKind,
  type TokenEvent,
  type TokenManager,
  type TokenManagerOptions,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosError, type AxiosInstance, type AxiosResponse } from 'axios'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import {
  createTestClock,
  type RefreshMode,
  startTestAuthServer,
  type TestAuthServer,
} from './helpers/auth-server.js'

/**
 * Real axios against a real HTTP server on 127.0.0.1: the numbers the README promises.
 * Tokens expire by moving the server's clock alone (the client still trusts them, as with a skewed clock
 * or a server-side expiry), except in the proactive scenario, where client and server share one clock.
 */

const TTL = 60_000

let server: TestAuthServer
let serverClock: ReturnType<typeof createTestClock>

beforeEach(async () => {
  serverClock = createTestClock()
  server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
})
afterEach(() => server.close())

interface Echo {
  sub: string
  tokenNumber: number
  body: string
  contentType: string
}

function makeManager(options: Partial<TokenManagerOptions> = {}): TokenManager {
  return createTokenManager({
    refresh: jsonRefresh(`${server.url}/refresh/token`),
    lock: false,
    channel: false,
    ...options,
  })
}

async function client(options: Partial<TokenManagerOptions> = {}) {
  const manager = makeManager(options)
  await manager.setTokens(server.login('alice'))
  const events: TokenEvent[] = []
  manager.subscribe((event) => events.push(event))
  const api = axios.create({ baseURL: server.url })
  attachTokenRefresh(api, manager)
  return { manager, api, events }
}

const expireOnServer = () => serverClock.advance(TTL + 1_000)
const ids = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}${i}`)
const get = (api: AxiosInstance, id: string, path = '/api/data') =>
  api.get<Echo>(path, { headers: { 'x-req-id': id } })
const statuses = (results: PromiseSettledResult<AxiosResponse>[]) =>
  results.map((result) => (result.status === 'fulfilled' ? result.value.status : 'rejected'))
const loggedOutEvents = (events: TokenEvent[]) => events.filter((event) => event.type === 'loggedOut')

/** A FIFO mutex in the shape of `navigator.locks`: one holder per name, waiters in order, `signal` honoured. */
function fifoLock(): LockManagerLike {
  const queues = new Map<string, Array<() => void>>()
  return {
    request(name, { signal }, callback) {
      return new Promise((resolve, reject) => {
        if (signal?.aborted) return reject(signal.reason)
        const queue = queues.get(name) ?? []
        queues.set(name, queue)
        const onAbort = () => {
          queue.splice(queue.indexOf(grant), 1)
          reject(signal!.reason)
        }
        const grant = () => {
          signal?.removeEventListener('abort', onAbort)
          Promise.resolve()
            .then(() => callback({ name }))
            .then(resolve, reject)
            .finally(() => {
              queue.shift()
              queue[0]?.()
            })
        }
        signal?.addEventListener('abort', onAbort, { once: true })
        queue.push(grant)
        if (queue.length === 1) grant()
      })
    },
  }
}

describe('scenarios with real axios and a real server', () => {
  it('100 concurrent requests on an expired token: 1 refresh, 100 ok', async () => {
    const { api } = await client()
    expireOnServer()
    const results = await Promise.allSettled(ids('r', 100).map((id) => get(api, id)))
    expect(statuses(results)).toEqual(Array(100).fill(200))
    expect(server.counters.refreshes).toBe(1)
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.unauthorized).toBe(100)
    expect(ids('r', 100).map((id) => server.hits(id))).toEqual(Array(100).fill(2))
  })

  it('two expiries in a row: 2 refreshes, and no request reaches the server more than twice', async () => {
    const { api } = await client()
    expireOnServer()
    const first = await Promise.allSettled(ids('a', 30).map((id) => get(api, id)))
    expireOnServer()
    const second = await Promise.allSettled(ids('b', 30).map((id) => get(api, id)))
    expect(statuses([...first, ...second])).toEqual(Array(60).fill(200))
    expect(server.counters.refreshes).toBe(2)
    const hits = [...ids('a', 30), ...ids('b', 30)].map((id) => server.hits(id))
    expect(Math.max(...hits)).toBe(2)
    expect(server.requests).toHaveLength(120)
  })

  it('50 requests spread across an expiry: 1 refresh, 0 401s (proactive)', async () => {
    // one clock for both sides; the token lives 60 s and is refreshed 20 s before it expires
    const clock = createTestClock(serverClock.now())
    await server.close()
    server = await startTestAuthServer({ accessTtl: TTL, now: clock.now })
    const { api } = await client({ now: clock.now, leeway: 20_000 })
    const pending: Array<Promise<AxiosResponse<Echo>>> = []
    for (const [i, id] of ids('s', 50).entries()) {
      pending.push(get(api, id))
      // the server judges a token when the request arrives: move time on only once it has arrived
      await vi.waitFor(() => expect(server.requests).toHaveLength(i + 1), { interval: 1 })
      clock.advance(1_000)
    }
    const responses = await Promise.all(pending)
    expect(responses.map(({ status }) => status)).toEqual(Array(50).fill(200))
    expect(server.counters.unauthorized).toBe(0)
    expect(server.counters.refreshes).toBe(1)
    // refreshed 20 s before exp, which is 60 s after the login rounded down to whole seconds:
    // the request made at t = 40 s is the first one sent with the new token
    expect(responses.map(({ data }) => data.tokenNumber)).toEqual([
      ...Array(40).fill(1),
      ...Array(10).fill(2),
    ])
  })

  it('slow requests whose 401 arrives after the refresh finished: 0 extra refreshes', async () => {
    const { api, events } = await client()
    expireOnServer()
    const slow = ids('slow', 20).map((id) => get(api, id, '/api/data?hold=slow'))
    await vi.waitFor(() => expect(server.held('slow')).toBe(20))
    // a fast request with the same old token gets its 401 first and refreshes
    expect((await get(api, 'fast')).status).toBe(200)
    expect(server.counters.refreshes).toBe(1)
    server.release('slow')
    const responses = await Promise.all(slow)
    expect(responses.map(({ status }) => status)).toEqual(Array(20).fill(200))
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.reuseDetections).toBe(0)
    expect(loggedOutEvents(events)).toEqual([])
  })

  describe('a refresh that fails', () => {
    const refreshTimeout = 300
    const retry = { attempts: 1, baseDelay: 10 }
    // two tries of at most refreshTimeout each, one backoff of at most baseDelay, and room for a busy machine
    const bound = (retry.attempts + 1) * refreshTimeout + retry.baseDelay + 500
    const cases: Array<{ mode: RefreshMode; kind: RefreshErrorKind; attempts: number; logout: boolean }> = [
      { mode: 500, kind: 'server', attempts: 2, logout: false },
      { mode: 401, kind: 'rejected', attempts: 1, logout: true },
      { mode: 'hang', kind: 'timeout', attempts: 2, logout: false },
      { mode: 'drop', kind: 'network', attempts: 2, logout: false },
    ]
    for (const { mode, kind, attempts, logout } of cases) {
      it(`answering ${mode}: every request settles in time with the same RefreshError (kind "${kind}")`, async () => {
        const { api, manager, events } = await client({ refreshTimeout, retry })
        expireOnServer()
        server.refreshMode = mode
        const started = performance.now()
        const results = await Promise.allSettled(ids('f', 10).map((id) => get(api, id)))
        const elapsed = performance.now() - started
        expect(elapsed).toBeLessThan(bound)

        const reasons = results.map((result) => (result.status === 'rejected' ? result.reason : result.value))
        const error = reasons[0] as RefreshError
        expect(error).toBeInstanceOf(RefreshError)
        expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind })
        for (const reason of reasons) expect(reason).toBe(error)
        expect(server.counters.refreshAttempts).toBe(attempts)
        expect(ids('f', 10).map((id) => server.hits(id))).toEqual(Array(10).fill(1))

        if (logout) {
          expect(loggedOutEvents(events)).toEqual([{ type: 'loggedOut', reason: 'refreshRejected', error }])
          expect(manager.status).toBe('unauthenticated')
        } else {
          expect(loggedOutEvents(events)).toEqual([])
          expect(manager.status).toBe('authenticated')
        }

        // a new login brings everything back
        server.refreshMode = 'ok'
        await manager.setTokens(server.login('alice'))
        const after = await Promise.allSettled(ids('g', 10).map((id) => get(api, id)))
        expect(statuses(after)).toEqual(Array(10).fill(200))
        expect(loggedOutEvents(events)).toHaveLength(logout ? 1 : 0)
      })
    }
  })

  it('a server that rejects every token: each request reaches it at most twice', async () => {
    const { api } = await client()
    server.alwaysUnauthorized = true
    const results = await Promise.allSettled(ids('x', 20).map((id) => get(api, id)))
    for (const result of results) {
      expect(result.status).toBe('rejected')
      const error = (result as PromiseRejectedResult).reason as AxiosError<{ code: string }>
      expect(error.response?.status).toBe(401)
    }
    expect(ids('x', 20).map((id) => server.hits(id))).toEqual(Array(20).fill(2))
    expect(server.counters.refreshes).toBe(1)
  })

  it('20 concurrent POSTs on an expired token: every body arrives intact (JSON, URLSearchParams, FormData)', async () => {
    const { api } = await client()
    expireOnServer()
    const sends = Array.from({ length: 20 }, (_, i) => {
      const id = `p${i}`
      const headers = { 'x-req-id': id }
      const value = `value ${i}: ünïcode & = + "quotes"`
      if (i % 3 === 0) {
        const json = { i, value, list: [i, { nested: true }] }
        return {
          id,
          check: (echo: Echo) => expect(JSON.parse(echo.body)).toEqual(json),
          send: api.post<Echo>('/api/items', json, { headers }),
        }
      }
      if (i % 3 === 1) {
        const params = new URLSearchParams({ i: String(i), value })
        return {
          id,
          check: (echo: Echo) => {
            expect(echo.contentType).toMatch(/^application\/x-www-form-urlencoded/)
            expect(Object.fromEntries(new URLSearchParams(echo.body))).toEqual({ i: String(i), value })
          },
          send: api.post<Echo>('/api/items', params, { headers }),
        }
      }
      const form = new FormData()
      form.append('i', String(i))
      form.append('value', value)
      return {
        id,
        check: async (echo: Echo) => {
          expect(echo.contentType).toMatch(/^multipart\/form-data; boundary=/)
          const parsed = await new Response(echo.body, {
            headers: { 'content-type': echo.contentType },
          }).formData()
          expect(Object.fromEntries(parsed)).toEqual({ i: String(i), value })
        },
        send: api.post<Echo>('/api/items', form, { headers }),
      }
    })
    const responses = await Promise.all(sends.map(({ send }) => send))
    for (const [i, { id, check }] of sends.entries()) {
      expect(server.hits(id)).toBe(2) // the first try got 401; the body checked is the retry's
      await check(responses[i]!.data)
    }
    expect(server.counters.refreshes).toBe(1)
  })

  it('requests aborted while queued: each rejects within 50 ms and is never sent', async () => {
    // proactive: the requests wait for the refresh before they are sent
    const clock = createTestClock(serverClock.now())
    const { api } = await client({ now: clock.now })
    clock.advance(TTL)
    const release = server.holdRefreshes()
    const queued = ids('q', 10).map((id) => {
      const controller = new AbortController()
      const settled = api.get('/api/data', { headers: { 'x-req-id': id }, signal: controller.signal }).then(
        () => undefined,
        (error: unknown) => ({ error, at: performance.now() }),
      )
      return { controller, settled }
    })
    const kept = ids('k', 5).map((id) => get(api, id))
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))

    for (const { controller, settled } of queued) {
      const abortedAt = performance.now()
      controller.abort()
      const outcome = await settled
      expect(outcome).toBeDefined()
      expect(axios.isCancel(outcome!.error)).toBe(true)
      expect(outcome!.at - abortedAt).toBeLessThan(50)
    }
    release()
    const responses = await Promise.all(kept)
    expect(responses.map(({ status }) => status)).toEqual(Array(5).fill(200))
    expect(ids('q', 10).map((id) => server.hits(id))).toEqual(Array(10).fill(0))
    expect(server.counters.refreshes).toBe(1)
  })

  it('two managers sharing one storage and one lock: 1 refresh, 40 ok, 0 reuse detections', async () => {
    const storage = memoryStorage()
    const lock = fifoLock()
    const managers = [makeManager({ storage, lock }), makeManager({ storage, lock })]
    await managers[0]!.setTokens(server.login('alice'))
    const events: TokenEvent[] = []
    for (const manager of managers) manager.subscribe((event) => events.push(event))
    const apis = managers.map((manager) => {
      const api = axios.create({ baseURL: server.url })
      attachTokenRefresh(api, manager)
      return api
    })
    // both start out with the same token: the second reads it from the shared storage
    await Promise.all(apis.map((api, i) => get(api, `warm${i}`)))
    expireOnServer()
    const results = await Promise.allSettled(
      apis.flatMap((api, i) => ids(`m${i}-`, 20).map((id) => get(api, id))),
    )
    expect(statuses(results)).toEqual(Array(40).fill(200))
    expect(server.counters.refreshes).toBe(1)
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.reuseDetections).toBe(0)
    expect(loggedOutEvents(events)).toEqual([])
    expect(
      events
        .filter((event) => event.type === 'refreshed')
        .map((event) => (event as { source: string }).source)
        .sort(),
    ).toEqual(['local', 'otherTab'])
  })
})
