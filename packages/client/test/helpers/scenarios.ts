import {
  createTokenManager,
  jsonRefresh,
  memoryStorage,
  RefreshError,
  type RefreshErrorKind,
  type TokenEvent,
  type TokenManager,
  type TokenManagerOptions,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import { createAuthFetch } from '@tokenflow/client/fetch'
import axios, { type AxiosRequestConfig } from 'axios'
import { expect, vi } from 'vitest'
import { createTestClock, type RefreshMode, startTestAuthServer, type TestAuthServer } from './auth-server.js'
import { createTestLock } from './tokens.js'

/**
 * The scenario suite, written once against a small adapter-neutral client and run against every adapter
 * (axios + `attachTokenRefresh`, and `createAuthFetch`) over real HTTP to the local test auth server.
 * Tokens expire by moving the server's clock alone (the client still trusts them, as with a skewed clock
 * or a server-side expiry), except in the proactive scenarios, where the client has a clock of its own.
 */

/** What a scenario may ask of a request; `body` other than a string, URLSearchParams or FormData is sent as JSON. */
export interface SendOptions {
  method?: string
  body?: unknown
  signal?: AbortSignal
  headers?: Record<string, string>
}

/** An HTTP answer, whatever its status: adapters differ on whether a 4xx rejects, the scenarios do not care. */
export interface Reply {
  status: number
  data: unknown
}

export type Send = (path: string, options?: SendOptions) => Promise<Reply>

/** One adapter, seen through the scenarios' eyes. */
export interface AdapterUnderTest {
  name: string
  /** a client of `baseUrl` whose requests go through `manager` */
  connect(manager: TokenManager, baseUrl: string): Send
  /** asserts what a request rejects with when `signal` aborted (with `reason`) while it waited for a refresh */
  expectAbortRejection(error: unknown, reason: unknown): void
  /** the content type a FormData body is sent with, first try and retry alike @default /^multipart\/form-data; boundary=/ */
  formContentType?: RegExp
}

/**
 * axios + `attachTokenRefresh`, for one copy of axios. An HTTP error status becomes a reply; anything else
 * rejects as axios rejected.
 */
export function axiosAdapterFor(
  name: string,
  axiosModule: typeof axios,
  defaults: AxiosRequestConfig = {},
  formContentType?: RegExp,
): AdapterUnderTest {
  return {
    name,
    ...(formContentType ? { formContentType } : {}),
    connect(manager, baseURL) {
      const api = axiosModule.create({ ...defaults, baseURL })
      attachTokenRefresh(api, manager)
      return async (url, { method = 'GET', body, signal, headers = {} } = {}) => {
        const config: AxiosRequestConfig = {
          url,
          method,
          headers,
          ...(body === undefined ? {} : { data: body }),
        }
        if (signal) config.signal = signal
        try {
          const response = await api.request(config)
          return { status: response.status, data: response.data }
        } catch (error) {
          if (axiosModule.isAxiosError(error) && error.response)
            return { status: error.response.status, data: error.response.data }
          throw error
        }
      }
    },
    // axios checks the signal before it sends and rejects with its own CanceledError, whatever the reason
    expectAbortRejection(error) {
      expect(axiosModule.isCancel(error), String(error)).toBe(true)
    },
  }
}

/** The axios the workspace develops against. */
export const axiosAdapter = axiosAdapterFor('axios', axios)

/** `createAuthFetch` over the real global fetch. A 4xx resolves, as fetch does. */
export const fetchAdapter: AdapterUnderTest = {
  name: 'fetch',
  connect(manager, baseUrl) {
    const authFetch = createAuthFetch(manager)
    return async (path, { method = 'GET', body, signal, headers = {} } = {}) => {
      const init: RequestInit = { method, headers: { ...headers } }
      if (typeof body === 'string' || body instanceof URLSearchParams || body instanceof FormData)
        init.body = body
      else if (body !== undefined) {
        init.body = JSON.stringify(body)
        init.headers = { 'content-type': 'application/json', ...headers }
      }
      if (signal) init.signal = signal
      const response = await authFetch(`${baseUrl}${path}`, init)
      const text = await response.text()
      const json = response.headers.get('content-type')?.startsWith('application/json')
      return { status: response.status, data: json ? JSON.parse(text) : text }
    }
  },
  // the fetch contract: the promise rejects with the signal's own reason
  expectAbortRejection(error, reason) {
    expect(error).toBe(reason)
  },
}

/** What `/api/*` echoes back for an accepted request. */
export interface Echo {
  sub: string
  tokenNumber: number
  body: string
  contentType: string
}

const TTL = 60_000

/** One test server (restartable), and helpers that build managers and clients against it. */
export interface ScenarioContext {
  readonly adapter: AdapterUnderTest
  readonly server: TestAuthServer
  readonly serverClock: ReturnType<typeof createTestClock>
  /** restart the server on `now`, e.g. a clock shared with the client */
  restartServer(now: () => number): Promise<void>
  makeManager(options?: Partial<TokenManagerOptions>): TokenManager
  /** a manager logged in as alice, its events, and a client through the adapter */
  client(options?: Partial<TokenManagerOptions>): Promise<{
    manager: TokenManager
    send: Send
    events: TokenEvent[]
  }>
  close(): Promise<void>
}

export async function startScenarioContext(adapter: AdapterUnderTest): Promise<ScenarioContext> {
  const serverClock = createTestClock()
  let server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
  const context: ScenarioContext = {
    adapter,
    get server() {
      return server
    },
    serverClock,
    async restartServer(now) {
      await server.close()
      server = await startTestAuthServer({ accessTtl: TTL, now })
    },
    makeManager: (options = {}) =>
      createTokenManager({
        refresh: jsonRefresh(`${server.url}/refresh/token`),
        lock: false,
        channel: false,
        ...options,
      }),
    async client(options = {}) {
      const manager = context.makeManager(options)
      await manager.setTokens(server.login('alice'))
      const events: TokenEvent[] = []
      manager.subscribe((event) => events.push(event))
      return { manager, send: adapter.connect(manager, server.url), events }
    },
    close: () => server.close(),
  }
  return context
}

export interface Scenario {
  name: string
  run(t: ScenarioContext): Promise<void>
}

const expireOnServer = (t: ScenarioContext) => t.serverClock.advance(TTL + 1_000)
const ids = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}${i}`)
const get = (send: Send, id: string, path = '/api/data') => send(path, { headers: { 'x-req-id': id } })
const statuses = (results: PromiseSettledResult<Reply>[]) =>
  results.map((result) => (result.status === 'fulfilled' ? result.value.status : 'rejected'))
const loggedOutEvents = (events: TokenEvent[]) => events.filter((event) => event.type === 'loggedOut')
const echo = (reply: Reply) => reply.data as Echo

/** A refresh that fails: how the server fails it, and what every waiting request must see. */
const failures: Array<{ mode: RefreshMode; kind: RefreshErrorKind; attempts: number; logout: boolean }> = [
  { mode: 500, kind: 'server', attempts: 2, logout: false },
  { mode: 401, kind: 'rejected', attempts: 1, logout: true },
  { mode: 'hang', kind: 'timeout', attempts: 2, logout: false },
  { mode: 'drop', kind: 'network', attempts: 2, logout: false },
]

/** Every scenario, in the order the README lists them. */
export const scenarios: Scenario[] = [
  {
    name: '100 concurrent requests on an expired token: 1 refresh, 100 ok',
    async run(t) {
      const { send } = await t.client()
      expireOnServer(t)
      const results = await Promise.allSettled(ids('r', 100).map((id) => get(send, id)))
      expect(statuses(results)).toEqual(Array(100).fill(200))
      expect(t.server.counters.refreshes).toBe(1)
      expect(t.server.counters.refreshAttempts).toBe(1)
      expect(t.server.counters.unauthorized).toBe(100)
      expect(ids('r', 100).map((id) => t.server.hits(id))).toEqual(Array(100).fill(2))
    },
  },
  {
    name: 'two expiries in a row: 2 refreshes, and no request reaches the server more than twice',
    async run(t) {
      const { send } = await t.client()
      expireOnServer(t)
      const first = await Promise.allSettled(ids('a', 30).map((id) => get(send, id)))
      expireOnServer(t)
      const second = await Promise.allSettled(ids('b', 30).map((id) => get(send, id)))
      expect(statuses([...first, ...second])).toEqual(Array(60).fill(200))
      expect(t.server.counters.refreshes).toBe(2)
      const hits = [...ids('a', 30), ...ids('b', 30)].map((id) => t.server.hits(id))
      expect(Math.max(...hits)).toBe(2)
      expect(t.server.requests).toHaveLength(120)
    },
  },
  {
    name: '50 requests spread across an expiry: 1 refresh, 0 401s (proactive)',
    async run(t) {
      // one clock for both sides; the token lives 60 s and is refreshed 20 s before it expires
      const clock = createTestClock(t.serverClock.now())
      await t.restartServer(clock.now)
      const { send } = await t.client({ now: clock.now, leeway: 20_000 })
      const pending: Array<Promise<Reply>> = []
      for (const [i, id] of ids('s', 50).entries()) {
        pending.push(get(send, id))
        // the server judges a token when the request arrives: move time on only once it has arrived
        await vi.waitFor(() => expect(t.server.requests).toHaveLength(i + 1), { interval: 1 })
        clock.advance(1_000)
      }
      const replies = await Promise.all(pending)
      expect(replies.map(({ status }) => status)).toEqual(Array(50).fill(200))
      expect(t.server.counters.unauthorized).toBe(0)
      expect(t.server.counters.refreshes).toBe(1)
      // refreshed 20 s before exp, which is 60 s after the login rounded down to whole seconds:
      // the request made at t = 40 s is the first one sent with the new token
      expect(replies.map((reply) => echo(reply).tokenNumber)).toEqual([
        ...Array(40).fill(1),
        ...Array(10).fill(2),
      ])
    },
  },
  {
    name: 'slow requests whose 401 arrives after the refresh finished: 0 extra refreshes',
    async run(t) {
      const { send, events } = await t.client()
      expireOnServer(t)
      const slow = ids('slow', 20).map((id) => get(send, id, '/api/data?hold=slow'))
      await vi.waitFor(() => expect(t.server.held('slow')).toBe(20))
      // a fast request with the same old token gets its 401 first and refreshes
      expect((await get(send, 'fast')).status).toBe(200)
      expect(t.server.counters.refreshes).toBe(1)
      t.server.release('slow')
      const replies = await Promise.all(slow)
      expect(replies.map(({ status }) => status)).toEqual(Array(20).fill(200))
      expect(t.server.counters.refreshAttempts).toBe(1)
      expect(t.server.counters.reuseDetections).toBe(0)
      expect(loggedOutEvents(events)).toEqual([])
    },
  },
  ...failures.map(
    ({ mode, kind, attempts, logout }): Scenario => ({
      name: `a refresh answering ${mode}: every request settles in time with the same RefreshError (kind "${kind}")`,
      async run(t) {
        const refreshTimeout = 300
        const retry = { attempts: 1, baseDelay: 10 }
        // two tries of at most refreshTimeout each, one backoff of at most baseDelay, and room for a busy machine
        const bound = (retry.attempts + 1) * refreshTimeout + retry.baseDelay + 500
        const { send, manager, events } = await t.client({ refreshTimeout, retry })
        expireOnServer(t)
        t.server.refreshMode = mode
        const started = performance.now()
        const results = await Promise.allSettled(ids('f', 10).map((id) => get(send, id)))
        const elapsed = performance.now() - started
        expect(elapsed).toBeLessThan(bound)

        const reasons = results.map((result) => (result.status === 'rejected' ? result.reason : result.value))
        const error = reasons[0] as RefreshError
        expect(error).toBeInstanceOf(RefreshError)
        expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind })
        for (const reason of reasons) expect(reason).toBe(error)
        expect(t.server.counters.refreshAttempts).toBe(attempts)
        expect(ids('f', 10).map((id) => t.server.hits(id))).toEqual(Array(10).fill(1))

        if (logout) {
          expect(loggedOutEvents(events)).toEqual([{ type: 'loggedOut', reason: 'refreshRejected', error }])
          expect(manager.status).toBe('unauthenticated')
        } else {
          expect(loggedOutEvents(events)).toEqual([])
          expect(manager.status).toBe('authenticated')
        }

        // a new login brings everything back
        t.server.refreshMode = 'ok'
        await manager.setTokens(t.server.login('alice'))
        const after = await Promise.allSettled(ids('g', 10).map((id) => get(send, id)))
        expect(statuses(after)).toEqual(Array(10).fill(200))
        expect(loggedOutEvents(events)).toHaveLength(logout ? 1 : 0)
      },
    }),
  ),
  {
    name: 'a server that rejects every token: each request reaches it at most twice',
    async run(t) {
      const { send } = await t.client()
      t.server.alwaysUnauthorized = true
      const results = await Promise.allSettled(ids('x', 20).map((id) => get(send, id)))
      // the retry's own 401 reaches the app (axios: as an AxiosError with the response; fetch: as the Response)
      for (const result of results)
        expect(result).toMatchObject({
          status: 'fulfilled',
          value: { status: 401, data: { code: 'ERR_TOKEN_REJECTED' } },
        })
      expect(ids('x', 20).map((id) => t.server.hits(id))).toEqual(Array(20).fill(2))
      expect(t.server.counters.refreshes).toBe(1)
    },
  },
  {
    name: '20 concurrent POSTs on an expired token: every body arrives intact (JSON, URLSearchParams, FormData)',
    async run(t) {
      const { send } = await t.client()
      expireOnServer(t)
      const sends = Array.from({ length: 20 }, (_, i) => {
        const id = `p${i}`
        const post = (body: unknown) =>
          send('/api/items', { method: 'POST', body, headers: { 'x-req-id': id } })
        const value = `value ${i}: ünïcode & = + "quotes"`
        if (i % 3 === 0) {
          const json = { i, value, list: [i, { nested: true }] }
          return {
            id,
            check: (body: Echo) => expect(JSON.parse(body.body)).toEqual(json),
            sent: post(json),
          }
        }
        if (i % 3 === 1) {
          return {
            id,
            check: (body: Echo) => {
              expect(body.contentType).toMatch(/^application\/x-www-form-urlencoded/)
              expect(Object.fromEntries(new URLSearchParams(body.body))).toEqual({ i: String(i), value })
            },
            sent: post(new URLSearchParams({ i: String(i), value })),
          }
        }
        const form = new FormData()
        form.append('i', String(i))
        form.append('value', value)
        return {
          id,
          check: async (body: Echo) => {
            const contentType = t.adapter.formContentType ?? /^multipart\/form-data; boundary=/
            const tries = t.server.requests.filter((request) => request.id === id)
            expect(tries.map((request) => request.contentType)).toEqual([
              expect.stringMatching(contentType),
              expect.stringMatching(contentType),
            ])
            // parsed as its content type says (a stale boundary would fail here), unless the adapter labels it
            // otherwise: then with the boundary the body starts with ("--" and the boundary, on its first line)
            const parsed = await new Response(body.body, {
              headers: {
                'content-type': t.adapter.formContentType
                  ? `multipart/form-data; boundary=${body.body.slice(2, body.body.indexOf('\r\n'))}`
                  : body.contentType,
              },
            }).formData()
            expect(Object.fromEntries(parsed)).toEqual({ i: String(i), value })
          },
          sent: post(form),
        }
      })
      const replies = await Promise.all(sends.map(({ sent }) => sent))
      for (const [i, { id, check }] of sends.entries()) {
        expect(replies[i]!.status).toBe(200)
        expect(t.server.hits(id)).toBe(2) // the first try got 401; the body checked is the retry's
        await check(echo(replies[i]!))
      }
      expect(t.server.counters.refreshes).toBe(1)
    },
  },
  {
    name: 'requests aborted while queued: each rejects within 50 ms and is never sent',
    async run(t) {
      // proactive: the requests wait for the refresh before they are sent
      const clock = createTestClock(t.serverClock.now())
      const { send } = await t.client({ now: clock.now })
      clock.advance(TTL)
      const release = t.server.holdRefreshes()
      const queued = ids('q', 10).map((id) => {
        const controller = new AbortController()
        const reason = new Error(`user left ${id}`)
        const settled = send('/api/data', { headers: { 'x-req-id': id }, signal: controller.signal }).then(
          () => undefined,
          (error: unknown) => ({ error, at: performance.now() }),
        )
        return { controller, reason, settled }
      })
      const kept = ids('k', 5).map((id) => get(send, id))
      await vi.waitFor(() => expect(t.server.counters.refreshAttempts).toBe(1))

      for (const { controller, reason, settled } of queued) {
        const abortedAt = performance.now()
        controller.abort(reason)
        const outcome = await settled
        expect(outcome).toBeDefined()
        t.adapter.expectAbortRejection(outcome!.error, reason)
        expect(outcome!.at - abortedAt).toBeLessThan(50)
      }
      release()
      const replies = await Promise.all(kept)
      expect(replies.map(({ status }) => status)).toEqual(Array(5).fill(200))
      expect(ids('q', 10).map((id) => t.server.hits(id))).toEqual(Array(10).fill(0))
      expect(t.server.counters.refreshes).toBe(1)
    },
  },
  {
    name: 'two managers sharing one storage and one lock: 1 refresh, 40 ok, 0 reuse detections',
    async run(t) {
      const storage = memoryStorage()
      const lock = createTestLock()
      const managers = [t.makeManager({ storage, lock }), t.makeManager({ storage, lock })]
      await managers[0]!.setTokens(t.server.login('alice'))
      const events: TokenEvent[] = []
      for (const manager of managers) manager.subscribe((event) => events.push(event))
      const clients = managers.map((manager) => t.adapter.connect(manager, t.server.url))
      // both start out with the same token: the second reads it from the shared storage
      await Promise.all(clients.map((send, i) => get(send, `warm${i}`)))
      expireOnServer(t)
      const results = await Promise.allSettled(
        clients.flatMap((send, i) => ids(`m${i}-`, 20).map((id) => get(send, id))),
      )
      expect(statuses(results)).toEqual(Array(40).fill(200))
      expect(t.server.counters.refreshes).toBe(1)
      expect(t.server.counters.refreshAttempts).toBe(1)
      expect(t.server.counters.reuseDetections).toBe(0)
      expect(loggedOutEvents(events)).toEqual([])
      expect(
        events
          .filter((event) => event.type === 'refreshed')
          .map((event) => (event as { source: string }).source)
          .sort(),
      ).toEqual(['local', 'otherTab'])
      expect(lock.held()).toBe(false)
    },
  },
]
