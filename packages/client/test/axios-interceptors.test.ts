/**
 * attachTokenRefresh beside the app's own request interceptors, found by a review: the retry's interceptors see
 * the body they saw on the first try, a 401 for a token another interceptor put in place of the manager's is
 * the app's, and a stream-body request aborted while it waits rejects as canceled. Real axios (current, its
 * fetch adapter, and 1.6.0) against the test auth server on 127.0.0.1.
 */
import { Readable } from 'node:stream'
import { createTokenManager, jsonRefresh } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios from 'axios'
import axios16 from 'axios-1.6'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createTestClock, startTestAuthServer, type TestAuthServer } from './helpers/auth-server.js'

const TTL = 60_000
let server: TestAuthServer
let serverClock: ReturnType<typeof createTestClock>
beforeEach(async () => {
  serverClock = createTestClock()
  server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
})
afterEach(() => server.close())
/** the access token expires on the server: the first try gets 401 */
const expireOnServer = () => serverClock.advance(TTL + 1_000)

async function attached(lib: typeof axios = axios, extra: object = {}) {
  const manager = createTokenManager({
    refresh: jsonRefresh(`${server.url}/refresh/token`),
    lock: false,
    channel: false,
  })
  await manager.setTokens(server.login())
  const api = lib.create({ baseURL: server.url, ...extra })
  attachTokenRefresh(api as never, manager)
  return { api, manager }
}

async function rejection(
  promise: Promise<unknown>,
): Promise<{ code?: string; response?: { status: number } }> {
  try {
    await promise
  } catch (error) {
    return error as never
  }
  throw new Error('expected the request to fail')
}

const variants = [
  ['axios', axios, {}],
  ['axios, fetch adapter', axios, { adapter: 'fetch' }],
  ['axios 1.6', axios16 as unknown as typeof axios, {}],
] as const

for (const [name, lib, extra] of variants) {
  describe(`the retry runs the app's request interceptors on the body they saw the first time (${name})`, () => {
    it('bug: an interceptor that spreads a field into every body sent the retry corrupted (a spread of its JSON string)', async () => {
      const { api } = await attached(lib, extra)
      // idempotent on the object it is given: applying it twice gives the same body
      api.interceptors.request.use((config) => {
        if (config.data !== undefined) config.data = { ...config.data, client: 'web' }
        return config
      })
      expireOnServer()
      const response = await api.post('/api/items', { a: 1 }, { headers: { 'x-req-id': 'spread' } })
      expect(response.status).toBe(200)
      const [first, retry] = server.requests
      expect([first?.status, retry?.status]).toEqual([401, 200])
      expect(first?.body).toBe('{"a":1,"client":"web"}')
      expect(retry?.body).toBe(first?.body)
    })

    it('bug: an interceptor that sets a field on the body made the retry reject with a TypeError', async () => {
      const { api } = await attached(lib, extra)
      api.interceptors.request.use((config) => {
        if (config.data) config.data.client = 'web'
        return config
      })
      expireOnServer()
      const response = await api.post('/api/items', { a: 1 }, { headers: { 'x-req-id': 'set' } })
      expect(response.status).toBe(200)
      const [first, retry] = server.requests
      expect([first?.status, retry?.status]).toEqual([401, 200])
      expect(retry?.body).toBe('{"a":1,"client":"web"}')
    })

    it('bug: an interceptor that reads the body (to sign it) saw an object first and a string on the retry', async () => {
      const { api } = await attached(lib, extra)
      const seen: unknown[] = []
      api.interceptors.request.use((config) => {
        seen.push(config.data)
        return config
      })
      expireOnServer()
      await api.post('/api/items', { a: 1, list: [1, { b: 2 }] }, { headers: { 'x-req-id': 'sig' } })
      expect(server.hits('sig')).toBe(2)
      expect(seen).toEqual([
        { a: 1, list: [1, { b: 2 }] },
        { a: 1, list: [1, { b: 2 }] },
      ])
    })
  })
}

describe('a 401 for a Bearer token that is not the manager’s', () => {
  it('bug: it rejected with ERR_SESSION_CLEARED while the session was fine; now the app gets its 401, with no refresh', async () => {
    const manager = createTokenManager({
      refresh: jsonRefresh(`${server.url}/refresh/token`),
      lock: false,
      channel: false,
    })
    await manager.setTokens(server.login())
    const api = axios.create({ baseURL: server.url })
    // registered before attachTokenRefresh: with axios's default ordering it runs after the adapter's, and puts
    // another API's key in place of the manager's token for some URLs
    api.interceptors.request.use((config) => {
      if (config.url?.startsWith('/api/partner')) config.headers.Authorization = 'Bearer partner-api-key'
      return config
    })
    attachTokenRefresh(api, manager)
    const error = await rejection(api.get('/api/partner/x', { headers: { 'x-req-id': 'p' } }))
    expect(error.code).toBe('ERR_BAD_REQUEST')
    expect(error.response?.status).toBe(401)
    expect(manager.status).toBe('authenticated')
    expect(server.counters.refreshAttempts).toBe(0)
    expect(server.hits('p')).toBe(1)
    // the manager's own token still refreshes and retries on its 401
    expireOnServer()
    expect((await api.get('/api/items/1', { headers: { 'x-req-id': 'own' } })).status).toBe(200)
    expect(server.hits('own')).toBe(2)
  })
})

describe('a stream-body request aborted while it waits for the refresh after its 401', () => {
  it('bug: it rejected with the first try’s 401; now as canceled, as every other aborted request does', async () => {
    const { api } = await attached()
    expireOnServer()
    const release = server.holdRefreshes()
    const controller = new AbortController()
    const pending = rejection(
      api.post('/api/x', Readable.from(['chunk']), {
        headers: { 'x-req-id': 'stream', 'content-type': 'text/plain' },
        signal: controller.signal,
      }),
    )
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    controller.abort()
    const early = await Promise.race([
      pending.then(() => true),
      new Promise((resolve) => setTimeout(() => resolve(false), 200)),
    ])
    release()
    expect(early).toBe(true)
    expect(axios.isCancel(await pending)).toBe(true)
    expect(server.hits('stream')).toBe(1)
  })
})

describe('a second review of the retry body fix', () => {
  it('bug: the retry of a Buffer body enumerated its bytes to compare it (seconds at 16 MB, a RangeError past 128 MiB); it is compared as the same object', async () => {
    const { api } = await attached()
    const upload = Buffer.alloc(1024 * 1024, 0x61)
    const keys = vi.spyOn(Object, 'keys')
    try {
      expireOnServer()
      const response = await api.put('/api/upload', upload, {
        headers: { 'x-req-id': 'buffer', 'content-type': 'application/octet-stream' },
      })
      expect(response.status).toBe(200)
      expect(server.hits('buffer')).toBe(2)
      expect(keys.mock.calls.filter(([value]) => value === upload)).toEqual([])
    } finally {
      keys.mockRestore()
    }
    const [first, retry] = server.requests
    expect(retry?.body.length).toBe(1024 * 1024)
    expect(retry?.body).toBe(first?.body)
  })

  for (const [name, lib, extra] of variants)
    it(`bug: a body replaced on the retry by another of its kind with other content (a fresh nonce) went out as the first try's bytes (${name})`, async () => {
      const { api } = await attached(lib, extra)
      let n = 0
      let kind = 'search'
      // added after attachTokenRefresh, so it runs before the adapter's interceptor: a nonce in every body
      api.interceptors.request.use((config) => {
        n++
        if (kind === 'search') config.data = new URLSearchParams({ nonce: String(n) })
        else if (kind === 'bytes') config.data = new TextEncoder().encode(`nonce=${n}`).buffer
        else config.data = { ...config.data, at: new Date(n * 1000) }
        return config
      })
      const bodies = (id: string) =>
        server.requests.filter((request) => request.id === id).map(({ body }) => body)
      expireOnServer()
      await api.post('/api/x', null, { headers: { 'x-req-id': 'search' } })
      expect(bodies('search')).toEqual(['nonce=1', 'nonce=2'])
      kind = 'bytes'
      expireOnServer()
      await api.post('/api/x', null, { headers: { 'x-req-id': 'bytes', 'content-type': 'text/plain' } })
      expect(bodies('bytes')).toEqual(['nonce=3', 'nonce=4'])
      kind = 'date'
      expireOnServer()
      await api.post('/api/x', { a: 1 }, { headers: { 'x-req-id': 'date' } })
      expect(bodies('date')).toEqual([
        '{"a":1,"at":"1970-01-01T00:00:05.000Z"}',
        '{"a":1,"at":"1970-01-01T00:00:06.000Z"}',
      ])
    })

  it('bug: a cyclic body (sent with a cycle-safe transformRequest) copied by an interceptor made the retry overflow the stack', async () => {
    const serialize = (data: unknown) => {
      if (typeof data !== 'object' || data === null) return data
      const seen = new Map<object, number>()
      return JSON.stringify(data, (_key, value: unknown) => {
        if (typeof value !== 'object' || value === null) return value
        if (seen.has(value)) return { $ref: seen.get(value) }
        seen.set(value, seen.size)
        return value
      })
    }
    const { api } = await attached(axios, {
      transformRequest: [serialize],
      headers: { 'content-type': 'application/json' },
    })
    api.interceptors.request.use((config) => {
      if (config.data !== undefined) config.data = structuredClone(config.data)
      return config
    })
    expireOnServer()
    const cyclic: { a: number; list: unknown[] } = { a: 1, list: [] }
    cyclic.list.push(cyclic)
    const response = await api.post('/api/x', cyclic, { headers: { 'x-req-id': 'cyclic' } })
    expect(response.status).toBe(200)
    const [first, retry] = server.requests
    expect([first?.status, retry?.status]).toEqual([401, 200])
    expect(retry?.body).toBe(first?.body)
  })

  for (const body of ['stream', 'object'] as const)
    it(`bug: a ${body}-body request aborted while it waited was sent again when an interceptor gave it a signal of its own (${body === 'stream' ? 'with an empty body, resolving 200' : 'against "is never sent"'})`, async () => {
      const { api } = await attached()
      // added after attachTokenRefresh: each request gets its own controller, and the app aborts by key
      const controllers = new Map<string, AbortController>()
      api.interceptors.request.use((config) => {
        const key = String(config.headers['x-req-id'])
        const controller = new AbortController()
        controllers.set(key, controller)
        config.signal = controller.signal
        return config
      })
      expireOnServer()
      const release = server.holdRefreshes()
      const pending = rejection(
        api.post('/api/upload', body === 'stream' ? Readable.from(['file contents']) : { a: 1 }, {
          headers: {
            'x-req-id': body,
            'content-type': body === 'stream' ? 'text/plain' : 'application/json',
          },
        }),
      )
      await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
      controllers.get(body)!.abort()
      release()
      const error = await pending
      expect(axios.isCancel(error)).toBe(true)
      expect(axios.isAxiosError(error)).toBe(true)
      expect(error.code).toBe('ERR_CANCELED')
      expect(server.hits(body)).toBe(1)
    })
})

describe('a third review of the retry', () => {
  for (const [name, lib, extra] of variants)
    it(`bug: the cancel error of a request aborted after its 401 had no toJSON() (axios's logging recipe threw) (${name})`, async () => {
      const { api } = await attached(lib, extra)
      expireOnServer()
      const release = server.holdRefreshes()
      const controller = new AbortController()
      const pending = rejection(
        api.get('/api/a', { headers: { 'x-req-id': 'a' }, signal: controller.signal }),
      )
      await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
      controller.abort()
      const error = (await pending) as unknown as InstanceType<typeof axios.AxiosError>
      release()
      expect(lib.isCancel(error)).toBe(true)
      expect(lib.isAxiosError(error)).toBe(true)
      expect(error).toBeInstanceOf(lib.AxiosError)
      expect(error.toJSON()).toMatchObject({
        message: 'canceled',
        name: 'CanceledError',
        code: 'ERR_CANCELED',
      })
      expect(server.hits('a')).toBe(1)
    })

  for (const [name, lib, extra] of variants)
    it(`bug: a 401 for Basic credentials from config.auth refreshed and retried with the fetch adapter (${name})`, async () => {
      const { api } = await attached(lib, extra)
      const error = await rejection(
        api.get('/api/basic', { headers: { 'x-req-id': 'basic' }, auth: { username: 'u', password: 'p' } }),
      )
      expect(error.response?.status).toBe(401)
      expect(server.counters.refreshAttempts).toBe(0)
      expect(server.hits('basic')).toBe(1)
    })

  it('bug: an array body grown by holes, or an object in an array changed in place, went out as the first try’s bytes; the retry is transformed as a first try', async () => {
    const { api } = await attached()
    let n = 0
    api.interceptors.request.use((config) => {
      n++
      if (config.data?.slots) config.data = { slots: new Array(n) }
      if (config.data?.items) for (const item of config.data.items) item.seq = n
      return config
    })
    const bodies = (id: string) =>
      server.requests.filter((request) => request.id === id).map(({ body }) => body)
    expireOnServer()
    await api.post('/api/x', { slots: [] }, { headers: { 'x-req-id': 'holes' } })
    expect(bodies('holes')).toEqual(['{"slots":[null]}', '{"slots":[null,null]}'])
    expireOnServer()
    await api.post('/api/x', { items: [{ id: 1 }] }, { headers: { 'x-req-id': 'items' } })
    expect(bodies('items')).toEqual(['{"items":[{"id":1,"seq":3}]}', '{"items":[{"id":1,"seq":4}]}'])
  })
})
