import { once } from 'node:events'
import { Agent, createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import {
  createTokenManager,
  jsonRefresh,
  RefreshError,
  type TokenEvent,
  TokenflowError,
  type TokenManager,
  type TokenManagerOptions,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosError, type AxiosInstance, type AxiosStatic } from 'axios'
import axios16 from 'axios-1.6'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createTestClock, startTestAuthServer, type TestAuthServer } from './helpers/auth-server.js'

const TTL = 60_000

let server: TestAuthServer
/** the server's clock: moving it alone expires tokens on the server while the client still trusts them */
let serverClock: ReturnType<typeof createTestClock>

beforeEach(async () => {
  serverClock = createTestClock()
  server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
})
afterEach(() => server.close())

function makeManager(options: Partial<TokenManagerOptions> = {}): TokenManager {
  return createTokenManager({
    refresh: jsonRefresh(`${server.url}/refresh/token`),
    lock: false,
    channel: false,
    ...options,
  })
}

async function loggedIn(options: Partial<TokenManagerOptions> = {}) {
  const manager = makeManager(options)
  const tokens = server.login('alice')
  await manager.setTokens(tokens)
  const api = axios.create({ baseURL: server.url })
  const detach = attachTokenRefresh(api, manager)
  return { manager, tokens, api, detach }
}

interface Echo {
  sub: string
  tokenNumber: number
  body: string
  contentType: string | undefined
  headers: Record<string, string | undefined>
}

const expireOnServer = () => serverClock.advance(TTL + 1_000)
const withId = (id: string) => ({ headers: { 'x-req-id': id } })
const tokenNumber = (token: string) => server.claims(token)!.n

/** The rejection of `promise`; fails the test when it fulfils. */
async function rejection(promise: Promise<unknown>): Promise<AxiosError<{ code?: string }>> {
  try {
    await promise
  } catch (error) {
    return error as AxiosError<{ code?: string }>
  }
  throw new Error('expected the request to fail')
}

/** Registered before `attachTokenRefresh`, so on the response side it runs first and sees axios's own error object. */
function captureRawErrors(api: AxiosInstance): unknown[] {
  const seen: unknown[] = []
  api.interceptors.response.use(undefined, (error: unknown) => {
    seen.push(error)
    throw error
  })
  return seen
}

describe('attachTokenRefresh', () => {
  it('sends the current access token as a Bearer header', async () => {
    const { api, tokens } = await loggedIn()
    const { data } = await api.get<Echo>('/api/me', withId('a'))
    expect(data.headers.authorization).toBe(`Bearer ${tokens.accessToken}`)
    expect(data.sub).toBe('alice')
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('sends no Authorization header when logged out, and passes the 401 through unchanged', async () => {
    const api = axios.create({ baseURL: server.url })
    const raw = captureRawErrors(api)
    attachTokenRefresh(api, makeManager())

    const error = await rejection(api.get('/api/me', withId('a')))
    expect(raw).toHaveLength(1)
    expect(error).toBe(raw[0])
    expect(error.response?.status).toBe(401)
    expect(error.response?.data.code).toBe('ERR_TOKEN_INVALID')
    expect(server.requests).toMatchObject([{ id: 'a', status: 401, tokenNumber: undefined }])
    // no header at all, not "Bearer null"
    expect(server.requests[0]?.authorization).toBeUndefined()
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('passes the 401 through unchanged when there is no refresh token to use', async () => {
    const manager = makeManager()
    const api = axios.create({ baseURL: server.url })
    const raw = captureRawErrors(api)
    attachTokenRefresh(api, manager)

    // a session without a refresh token
    await manager.setTokens({ accessToken: server.login().accessToken, refreshToken: null })
    expireOnServer()
    const noRefreshToken = await rejection(api.get('/api/me', withId('a')))
    expect(noRefreshToken).toBe(raw[0])
    expect(noRefreshToken.response?.data.code).toBe('ERR_TOKEN_EXPIRED')

    // logged out while the request was on its way
    await manager.setTokens(server.login())
    expireOnServer()
    const pending = rejection(api.get('/api/me?hold=logout', withId('b')))
    await vi.waitFor(() => expect(server.held('logout')).toBe(1))
    await manager.clear()
    server.release('logout')
    const loggedOut = await pending
    expect(loggedOut).toBe(raw[1])
    expect(loggedOut.response?.status).toBe(401)

    expect([server.hits('a'), server.hits('b')]).toEqual([1, 1])
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('refreshes on a 401 and retries the request once with the new token', async () => {
    const { api, tokens } = await loggedIn()
    expireOnServer()
    const { data, status } = await api.get<Echo>('/api/me', withId('a'))
    expect(status).toBe(200)
    expect(data.tokenNumber).toBeGreaterThan(tokenNumber(tokens.accessToken))
    expect(server.requests.map(({ status, tokenNumber }) => [status, tokenNumber])).toEqual([
      [401, tokenNumber(tokens.accessToken)],
      [200, data.tokenNumber],
    ])
    expect(server.counters.refreshes).toBe(1)
  })

  it('leaves a request with tokenflow.skip alone: its own headers, and no refresh on 401', async () => {
    const { api } = await loggedIn()
    const raw = captureRawErrors(api) // registered after attach: sees what the adapter passed on
    const error = await rejection(
      api.get('/api/me', {
        headers: { 'x-req-id': 's', Authorization: 'Basic dXNlcjpwdw==' },
        tokenflow: { skip: true },
      }),
    )
    expect(error).toBe(raw[0])
    expect(error.response?.status).toBe(401)
    expect(server.requests).toMatchObject([{ id: 's', status: 401, tokenNumber: undefined }])
    expect(server.hits('s')).toBe(1)
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('passes errors other than 401 through untouched', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login())
    const api = axios.create({ baseURL: server.url })
    const raw = captureRawErrors(api)
    attachTokenRefresh(api, manager)
    for (const status of [403, 404, 500]) {
      const error = await rejection(api.get(`/api/x?status=${status}`, withId(`s${status}`)))
      expect(error).toBe(raw.at(-1))
      expect(error.response?.status).toBe(status)
      expect(server.hits(`s${status}`)).toBe(1)
    }
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('lets shouldRefresh decide which failures refresh, instead of the status 401', async () => {
    const manager = makeManager()
    const tokens = server.login()
    await manager.setTokens(tokens)
    const api = axios.create({ baseURL: server.url })
    const shouldRefresh = vi.fn((error: AxiosError) => error.response?.status === 403)
    attachTokenRefresh(api, manager, { shouldRefresh })

    // a 403 refreshes; the retry gets 403 again (the query asks for it) and is passed on, not retried again
    const forbidden = await rejection(api.get('/api/x?status=403', withId('f')))
    expect(forbidden.response?.status).toBe(403)
    expect(server.hits('f')).toBe(2)
    expect(server.counters.refreshes).toBe(1)

    // a 401 no longer does
    expireOnServer()
    const unauthorized = await rejection(api.get('/api/x', withId('u')))
    expect(unauthorized.response?.status).toBe(401)
    expect(server.hits('u')).toBe(1)
    expect(server.counters.refreshAttempts).toBe(1)
    expect(shouldRefresh).toHaveBeenCalledTimes(2) // once per first try: never for the retry's own error
  })

  it('hands back the 401 of a request sent without a token, even when a session started meanwhile', async () => {
    // a front-end review: sent without a token right after a clear(), it was retried as the next login, which
    // may be another user's (was: retried with the new session's token)
    const manager = makeManager()
    const api = axios.create({ baseURL: server.url })
    attachTokenRefresh(api, manager)
    const pending = rejection(api.get<Echo>('/api/me?hold=login', withId('a')))
    await vi.waitFor(() => expect(server.held('login')).toBe(1))
    await manager.setTokens(server.login())
    server.release('login')
    expect((await pending).response?.status).toBe(401)
    expect(server.hits('a')).toBe(1)
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('detach removes both interceptors', async () => {
    const { api, detach } = await loggedIn()
    detach()
    expireOnServer()
    const error = await rejection(api.get('/api/me', withId('a')))
    expect(error.response?.status).toBe(401)
    expect(server.requests).toMatchObject([{ id: 'a', tokenNumber: undefined }])
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('a request whose 401 started a refresh that outlives detach() is retried with the new token, not the refused one', async () => {
    const { api, detach, tokens } = await loggedIn()
    expireOnServer()
    const release = server.holdRefreshes()
    const pending = api.get<Echo>('/api/me', withId('a'))
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    detach()
    release()
    const { status, data } = await pending
    expect(status).toBe(200)
    // was: the retry no longer met the request interceptor and went out with the refused token again
    expect(server.requests.map(({ status, tokenNumber }) => [status, tokenNumber])).toEqual([
      [401, tokenNumber(tokens.accessToken)],
      [200, data.tokenNumber],
    ])
    expect(data.tokenNumber).toBeGreaterThan(tokenNumber(tokens.accessToken))
    expect(server.counters.refreshes).toBe(1)
  })

  it('lets several axios instances share one manager and one refresh', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login())
    const instances = [1, 2, 3].map(() => axios.create({ baseURL: server.url }))
    for (const api of instances) attachTokenRefresh(api, manager)
    expireOnServer()
    const responses = await Promise.all(
      instances.flatMap((api, i) =>
        Array.from({ length: 10 }, (_, j) => api.get<Echo>('/api/x', withId(`${i}-${j}`))),
      ),
    )
    expect(responses.map(({ status }) => status)).toEqual(Array(30).fill(200))
    expect(new Set(responses.map(({ data }) => data.tokenNumber)).size).toBe(1)
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.unauthorized).toBe(30)
  })

  it('keeps a JSON body and its Content-Type on the retry, without encoding it twice', async () => {
    const { api } = await loggedIn()
    expireOnServer()
    const object = { name: 'Zoë "quoted"', nested: { list: [1, 2, 3] }, empty: '' }
    const { data } = await api.post<Echo>('/api/items', object, withId('json'))
    expect(JSON.parse(data.body)).toEqual(object)
    expect(data.contentType).toBe('application/json')
    const [first, retry] = server.requests
    expect([first?.status, retry?.status]).toEqual([401, 200])
    expect(retry?.body).toBe(first?.body)

    // a body that is already a JSON string: axios sends it as is, and so does the retry
    expireOnServer()
    const text = '{"already":"serialised"}'
    const second = await api.post<Echo>('/api/items', text, {
      headers: { 'x-req-id': 'text', 'Content-Type': 'application/json' },
    })
    expect(second.data.body).toBe(text)
    expect(server.hits('text')).toBe(2)
  })

  it('rejects invalid arguments with ERR_INVALID_OPTION', () => {
    const manager = makeManager()
    const api = axios.create()
    const invalid = { code: 'ERR_INVALID_OPTION' }
    expect(() => attachTokenRefresh({} as AxiosInstance, manager)).toThrow(expect.objectContaining(invalid))
    expect(() => attachTokenRefresh(api, {} as TokenManager)).toThrow(expect.objectContaining(invalid))
    expect(() => attachTokenRefresh(api, manager, { shouldRefresh: 401 as never })).toThrow(TokenflowError)
    expect(api.interceptors.request.handlers?.filter(Boolean)).toHaveLength(0)
  })
})

describe('attachTokenRefresh: one manager per instance', () => {
  it("bug: a second manager attached to one instance (one per request on a server's shared instance) sent the first one's token for both", async () => {
    const { api } = await loggedIn()
    const bob = makeManager()
    await bob.setTokens(server.login('bob'))
    expect(() => attachTokenRefresh(api, bob)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_OPTION', message: expect.stringMatching(/^"instance"/) }),
    )
    // nothing of bob's was added: the instance still sends alice's token alone
    expect(api.interceptors.request.handlers?.filter(Boolean)).toHaveLength(1)
    const { data } = await api.get<Echo>('/api/items')
    expect(data.sub).toBe('alice')
  })

  it('counts the attachments of one manager: detaching one of two keeps the instance taken, and a detach counts once', async () => {
    const { api, manager: alice, detach } = await loggedIn()
    const second = attachTokenRefresh(api, alice)
    // one component of two that share the instance unmounts
    detach()
    detach()
    const bob = makeManager()
    await bob.setTokens(server.login('bob'))
    expect(() => attachTokenRefresh(api, bob)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_OPTION' }),
    )
    expect((await api.get<Echo>('/api/items')).data.sub).toBe('alice')
    second()
    attachTokenRefresh(api, bob)
    expect((await api.get<Echo>('/api/items')).data.sub).toBe('bob')
  })

  it("a second copy of the module (two bundles, two versions) sees the first one's attachment", async () => {
    // another module instance of the same file: what a second bundle, or a second installed version, is
    const specifier = '../src/axios.ts?copy=2'
    const copy = (await import(specifier)) as typeof import('@tokenflow/client/axios')
    expect(copy.attachTokenRefresh).not.toBe(attachTokenRefresh)
    const { api } = await loggedIn()
    const bob = makeManager()
    await bob.setTokens(server.login('bob'))
    expect(() => copy.attachTokenRefresh(api, bob)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_OPTION' }),
    )
    expect((await api.get<Echo>('/api/items')).data.sub).toBe('alice')
  })

  it('attaches to a frozen instance (the mark is kept beside it, not on it)', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login('alice'))
    const api = Object.freeze(axios.create({ baseURL: server.url }))
    const detach = attachTokenRefresh(api, manager)
    expect((await api.get<Echo>('/api/items')).data.sub).toBe('alice')
    detach()
    // nothing of the mark is on the instance: a copy of its properties carries no manager
    expect(Object.getOwnPropertySymbols(api)).toEqual([])
  })

  it('takes another manager once the first is detached, and the same manager twice (an effect run twice)', async () => {
    const { api, manager: alice, detach } = await loggedIn()
    const again = attachTokenRefresh(api, alice)
    again()
    detach()
    const bob = makeManager()
    await bob.setTokens(server.login('bob'))
    attachTokenRefresh(api, bob)
    const { data } = await api.get<Echo>('/api/items')
    expect(data.sub).toBe('bob')
    // each instance its own manager: no conflict
    const other = axios.create({ baseURL: server.url })
    attachTokenRefresh(other, alice)
    expect((await other.get<Echo>('/api/items')).data.sub).toBe('alice')
  })
})

describe('attachTokenRefresh with the app’s own interceptors', () => {
  /**
   * Request interceptors of every kind, registered before and after the adapter. With the default
   * (legacy) ordering axios runs request interceptors in reverse order of registration; the other
   * ordering runs them as registered. Both are covered.
   */
  for (const legacyInterceptorReqResOrdering of [true, false]) {
    it(`keeps the token and the app's headers (legacyInterceptorReqResOrdering: ${legacyInterceptorReqResOrdering})`, async () => {
      const manager = makeManager()
      const tokens = server.login()
      await manager.setTokens(tokens)
      const api = axios.create({ baseURL: server.url, transitional: { legacyInterceptorReqResOrdering } })
      // before the adapter: replaces config.headers with a plain object
      api.interceptors.request.use((config) => {
        config.headers = {
          ...config.headers,
          'X-Before': 'replaced-headers',
        } as unknown as typeof config.headers
        return config
      })
      // before the adapter, synchronous
      api.interceptors.request.use(
        (config) => {
          config.headers['X-Sync'] = 'sync'
          return config
        },
        null,
        { synchronous: true },
      )
      attachTokenRefresh(api, manager)
      // after the adapter: async, returns a new config object with new plain headers
      api.interceptors.request.use(async (config) => {
        await new Promise((resolve) => setTimeout(resolve, 1))
        return {
          ...config,
          headers: { ...config.headers, 'X-After': 'new-config' },
        } as unknown as typeof config
      })
      // after the adapter, synchronous
      api.interceptors.request.use((config) => config, null, { synchronous: true })

      const ok = await api.get<Echo>('/api/x', withId('valid'))
      expect(ok.data.headers).toMatchObject({
        authorization: `Bearer ${tokens.accessToken}`,
        'x-before': 'replaced-headers',
        'x-sync': 'sync',
        'x-after': 'new-config',
      })

      expireOnServer()
      const retried = await api.get<Echo>('/api/x', withId('expired'))
      expect(server.hits('expired')).toBe(2)
      expect(retried.data.tokenNumber).toBeGreaterThan(tokenNumber(tokens.accessToken))
      expect(retried.data.headers).toMatchObject({
        'x-before': 'replaced-headers',
        'x-sync': 'sync',
        'x-after': 'new-config',
      })
      expect(server.counters.refreshes).toBe(1)
    })
  }

  it('hands a retried response to the interceptors after it once: an unwrapping one unwraps once', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login())
    const api = axios.create({ baseURL: server.url })
    const before = captureRawErrors(api)
    attachTokenRefresh(api, manager)
    class AppError extends Error {
      constructor(readonly original: unknown) {
        super('app error')
      }
    }
    // the common app setup: unwrap the body, and turn failures into the app's own error
    api.interceptors.response.use(
      (response) => response.data,
      (error: unknown) => {
        throw new AppError(error)
      },
    )
    expireOnServer()
    const data = (await api.get('/api/x', withId('ok'))) as unknown as Echo
    expect(data.sub).toBe('alice')
    expect(server.hits('ok')).toBe(2)
    expect(before).toHaveLength(1) // the first try's 401, seen before the adapter

    server.alwaysUnauthorized = true
    const failure = await rejection(api.get('/api/x', withId('fails')))
    expect(failure).toBeInstanceOf(AppError)
    const original = (failure as unknown as AppError).original as AxiosError
    expect(axios.isAxiosError(original)).toBe(true)
    expect(original.response?.status).toBe(401)
    expect(original).toBe(before.at(-1)) // the retry's own 401, wrapped once
    expect(server.hits('fails')).toBe(2)
  })
})

// found in review: each of these failed on the first version of the adapter
describe.each([
  { name: `axios ${axios.VERSION}`, lib: axios },
  { name: `axios ${axios16.VERSION}`, lib: axios16 as unknown as AxiosStatic },
])('attachTokenRefresh, the retry on $name', ({ lib }) => {
  async function attached(config: Parameters<AxiosStatic['create']>[0] = {}) {
    const manager = makeManager()
    await manager.setTokens(server.login('alice'))
    const api = lib.create({ baseURL: server.url, ...config })
    attachTokenRefresh(api, manager)
    return api
  }

  it("runs the app's transformRequest once per try, on the body itself, never on what it made of it", async () => {
    const transformed: unknown[] = []
    const api = await attached({
      headers: { 'Content-Type': 'application/json' },
      transformRequest: [
        (data: unknown) => {
          transformed.push(data)
          return JSON.stringify(data)
        },
      ],
    })
    expireOnServer()
    const { data } = await api.post<Echo>('/api/items', { a: 1, text: 'Zoë' }, withId('transform'))
    const [first, retry] = server.requests
    expect([first?.status, retry?.status]).toEqual([401, 200])
    expect(retry?.body).toBe('{"a":1,"text":"Zoë"}')
    expect(first?.body).toBe(retry?.body)
    expect(JSON.parse(data.body)).toEqual({ a: 1, text: 'Zoë' })
    // the retry is a first try again: the object, not the JSON string the first try made of it
    expect(transformed).toEqual([
      { a: 1, text: 'Zoë' },
      { a: 1, text: 'Zoë' },
    ])
  })

  it('retries a plain object sent as multipart/form-data (postForm), which axios turns into a stream in Node', async () => {
    const api = await attached()
    expireOnServer()
    const { data, status } = await api.postForm<Echo>('/api/items', { name: 'Zoë', n: 1 }, withId('form'))
    expect(status).toBe(200)
    expect(data.tokenNumber).toBe(server.requests[0]!.tokenNumber! + 1)
    const tries = server.requests.map(({ status, body, contentType }) => ({ status, body, contentType }))
    expect(tries.map(({ status }) => status)).toEqual([401, 200])
    for (const { body, contentType } of tries) {
      // each try is a whole form, with the boundary its own Content-Type announces
      const boundary = /boundary=(\S+)/.exec(contentType ?? '')?.[1]
      expect(body).toContain(`--${boundary}--`)
      expect(body).toMatch(/name="name"\r\n\r\nZoë\r\n/)
      expect(body).toMatch(/name="n"\r\n\r\n1\r\n/)
    }
    expect(server.counters.refreshes).toBe(1)
  })

  it('never sends a used-up stream body again: the 401 refreshes, then reaches the app', async () => {
    const api = await attached()
    expireOnServer()
    const failure = await rejection(
      api.post('/api/items', Readable.from([Buffer.from('stream body')]), {
        headers: { 'x-req-id': 'stream', 'Content-Type': 'text/plain' },
      }),
    )
    expect(failure.response?.status).toBe(401)
    expect(server.requests.map((request) => [request.status, request.body])).toEqual([[401, 'stream body']])
    expect(server.counters.refreshes).toBe(1)
    // the app's own retry goes out with the new token, without another refresh
    const again = await api.post<Echo>('/api/items', Readable.from([Buffer.from('stream body')]), {
      headers: { 'x-req-id': 'stream-2', 'Content-Type': 'text/plain' },
    })
    expect(again.data.body).toBe('stream body')
    expect(server.counters.refreshAttempts).toBe(1)
  })

  it('refreshes a 401 that validateStatus lets through as a success, and retries it once', async () => {
    const api = await attached({ validateStatus: (status) => status < 500 })
    expireOnServer()
    const ok = await api.get<Echo>('/api/me', withId('accepted'))
    expect(ok.status).toBe(200)
    expect(ok.data.sub).toBe('alice')
    expect(server.hits('accepted')).toBe(2)
    expect(server.counters.refreshes).toBe(1)
    // a 401 that persists: one retry, then the 401 as the app asked for it, resolved
    server.alwaysUnauthorized = true
    const refused = await api.get('/api/me', withId('refused'))
    expect(refused.status).toBe(401)
    expect(server.hits('refused')).toBe(2)
    // other statuses the app accepts pass as they are
    server.alwaysUnauthorized = false
    expect((await api.get('/api/me?status=404', withId('missing'))).status).toBe(404)
    expect(server.hits('missing')).toBe(1)
  })

  it('asks shouldRefresh about an accepted redirect too (status 300 or more), not only about errors', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login('alice'))
    const api = lib.create({ baseURL: server.url, validateStatus: () => true, maxRedirects: 0 })
    attachTokenRefresh(api, manager, { shouldRefresh: (error) => error.response?.status === 302 })
    expect((await api.get('/api/me?status=302', withId('moved'))).status).toBe(302)
    expect(server.hits('moved')).toBe(2)
    expect(server.counters.refreshes).toBe(1)
  })

  it('keeps one retry when the app sends the config of a retried 401 again: no second refresh', async () => {
    const api = await attached()
    expireOnServer()
    server.alwaysUnauthorized = true
    const failure = await rejection(api.get('/api/me', withId('again')))
    expect(failure.response?.status).toBe(401)
    expect(server.counters.refreshAttempts).toBe(1)
    const resent = await rejection(api.request(failure.config!))
    expect(resent.response?.status).toBe(401)
    expect(server.hits('again')).toBe(3)
    expect(server.counters.refreshAttempts).toBe(1)
  })

  it('asks shouldRefresh about an accepted response too, with the response on an AxiosError-like object', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login('alice'))
    const api = lib.create({ baseURL: server.url, validateStatus: () => true })
    const asked: Array<[boolean, number | undefined, unknown]> = []
    attachTokenRefresh(api, manager, {
      shouldRefresh(error) {
        asked.push([error.isAxiosError, error.response?.status, error.config?.url])
        return error.response?.status === 419
      },
    })
    // a 2xx is never a refused token: shouldRefresh is not asked
    expect((await api.get('/api/me', withId('fine'))).status).toBe(200)
    expect(asked).toEqual([])
    // this route always answers 419: one refresh, one retry, and the retry's 419 is the answer
    expect((await api.get('/api/me?status=419', withId('custom'))).status).toBe(419)
    expect(asked).toEqual([[true, 419, '/api/me?status=419']])
    expect(server.hits('custom')).toBe(2)
    expect(server.counters.refreshes).toBe(1)
  })

  it('hands a retried outcome to the interceptors after it once: their side effects run once', async () => {
    const api = await attached()
    const seen: string[] = []
    api.interceptors.response.use(
      (response) => {
        seen.push(`ok ${response.status} ${response.config.headers['x-req-id']}`)
        return response
      },
      (error: AxiosError) => {
        seen.push(`error ${error.response?.status} ${error.config?.headers['x-req-id']}`)
        throw error
      },
    )
    expireOnServer()
    await api.get('/api/me', withId('ok'))
    expireOnServer()
    const failure = await rejection(api.get('/api/me?status=403', withId('forbidden')))
    expect(failure.response?.status).toBe(403)
    expect([server.hits('ok'), server.hits('forbidden')]).toEqual([2, 2])
    expect(seen).toEqual(['ok 200 ok', 'error 403 forbidden'])

    // the app (or axios-retry) sends a retried request's config again: it settles, with no second refresh
    const again = await rejection(api.request(failure.config!))
    expect(again.response?.status).toBe(403)
    expect(server.hits('forbidden')).toBe(3)
    expect(server.counters.refreshAttempts).toBe(2)

    // the app sends a retried request's config again with other data: that data is serialised as usual
    expireOnServer()
    const conflict = await rejection(api.post('/api/items?status=409', { v: 1 }, withId('conflict')))
    expect(conflict.response?.status).toBe(409)
    const resent = await api.request<Echo>({ ...conflict.config!, url: '/api/items', data: { v: 2 } })
    expect(resent.data.body).toBe('{"v":2}')
  })
})

describe('attachTokenRefresh and aborts', () => {
  it('rejects at once, as canceled, a request whose deprecated CancelToken fires while it waits for the refresh after its 401', async () => {
    const { api } = await loggedIn()
    expireOnServer()
    const release = server.holdRefreshes()
    const source = axios.CancelToken.source()
    const canceled = rejection(api.get('/api/x', { ...withId('token-canceled'), cancelToken: source.token }))
    const other = api.get<Echo>('/api/x', withId('other'))
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    source.cancel('user left the page')
    // settled while the refresh is still held
    const error = await canceled
    expect(axios.isCancel(error)).toBe(true)
    expect(error.message).toBe('user left the page')
    expect(server.counters.refreshes).toBe(0)
    release()
    expect((await other).status).toBe(200)
    expect(server.hits('token-canceled')).toBe(1) // its first try only: the retry was never sent
    expect(server.counters.refreshes).toBe(1)
  })

  it('rejects at once, as canceled, a request whose CancelToken fires while it waits for a proactive refresh, and never sends it', async () => {
    const clock = createTestClock(serverClock.now())
    const { api, manager } = await loggedIn({ now: clock.now })
    clock.advance(TTL)
    const release = server.holdRefreshes()
    // the first request starts the refresh in its request interceptor (the token is known to be expired)
    const first = api.get<Echo>('/api/x', withId('first'))
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    const source = axios.CancelToken.source()
    const canceled = rejection(api.get('/api/x', { ...withId('token-queued'), cancelToken: source.token }))
    source.cancel('gone')
    const error = await canceled
    expect(axios.isCancel(error)).toBe(true)
    expect(error.message).toBe('gone')
    release()
    expect((await first).status).toBe(200)
    expect(server.hits('token-queued')).toBe(0)
    expect(manager.status).toBe('authenticated')
  })

  it('a CancelToken shared by many requests is not left holding a listener per request', async () => {
    const { api } = await loggedIn()
    const source = axios.CancelToken.source()
    for (let i = 0; i < 5; i++) {
      expect((await api.get('/api/x', { cancelToken: source.token })).status).toBe(200)
    }
    // axios keeps its own listeners only while a request is in flight
    expect((source.token as unknown as { _listeners?: unknown[] })._listeners).toEqual([])
  })

  it.each([
    ['refused (401)', 401],
    ['unavailable (500)', 500],
  ] as const)(
    'a request canceled by its CancelToken while the refresh runs rejects as canceled when the refresh then fails: %s',
    async (_, mode) => {
      // a front-end review: it rejected with the RefreshError, so axios.isCancel(error) was false
      const { api } = await loggedIn({ retry: false })
      expireOnServer()
      const release = server.holdRefreshes()
      const source = axios.CancelToken.source()
      const canceled = rejection(
        api.get('/api/x', { ...withId('token-canceled'), cancelToken: source.token }),
      )
      const other = rejection(api.get('/api/x', withId('other')))
      await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
      source.cancel('user left the page')
      server.refreshMode = mode
      release()
      const error = await canceled
      expect(axios.isCancel(error)).toBe(true)
      expect(error.message).toBe('user left the page')
      // the request that was not canceled gets the refresh's error, as before
      expect(await other).toMatchObject({
        code: 'ERR_REFRESH_FAILED',
        kind: mode === 401 ? 'rejected' : 'server',
      })
      expect(server.hits('token-canceled')).toBe(1) // its first try only
    },
  )

  it('rejects at once, as canceled, a request whose signal aborts while it waits for the refresh after its 401', async () => {
    const { api } = await loggedIn()
    expireOnServer()
    const release = server.holdRefreshes()
    const controller = new AbortController()
    const aborted = api.get('/api/x', { ...withId('aborted'), signal: controller.signal })
    const other = api.get<Echo>('/api/x', withId('other'))
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    controller.abort()
    const error = await rejection(aborted)
    expect(axios.isCancel(error)).toBe(true)
    expect(error.code).toBe('ERR_CANCELED')
    release()
    expect((await other).status).toBe(200)
    expect(server.hits('aborted')).toBe(1) // its first try only: the retry was never sent
    expect(server.counters.refreshes).toBe(1)
  })

  it('rejects as canceled, without sending it, a request whose signal aborted before it was made', async () => {
    const { api } = await loggedIn()
    const error = await rejection(api.get('/api/x', { ...withId('a'), signal: AbortSignal.abort() }))
    expect(axios.isCancel(error)).toBe(true)
    expect(server.hits('a')).toBe(0)
  })
})

describe('attachTokenRefresh and the manager’s errors', () => {
  it('rejects with the RefreshError of a failed proactive refresh, and sends nothing', async () => {
    const clock = createTestClock(serverClock.now())
    const manager = makeManager({ now: clock.now })
    await manager.setTokens(server.login())
    const events: TokenEvent[] = []
    manager.subscribe((event) => events.push(event))
    const api = axios.create({ baseURL: server.url })
    attachTokenRefresh(api, manager)
    server.refreshMode = 401
    clock.advance(TTL)

    const error = await rejection(api.get('/api/x', withId('a')))
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected', status: 401 })
    expect(events).toContainEqual({ type: 'loggedOut', reason: 'refreshRejected', error })
    expect(server.hits('a')).toBe(0)
  })

  it('rejects a 401 that comes back after the refused refresh logged out with the same RefreshError, not the 401', async () => {
    const { api, manager } = await loggedIn()
    const events: TokenEvent[] = []
    manager.subscribe((event) => events.push(event))
    expireOnServer()
    server.refreshMode = 401
    // sent with the same token, refused on arrival, answered only after the logout
    const late = ['l0', 'l1'].map((id) => rejection(api.get('/api/x?hold=late', withId(id))))
    await vi.waitFor(() => expect(server.held('late')).toBe(2))
    const error = await rejection(api.get('/api/x', withId('first')))
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected', status: 401 })
    server.release('late')
    // was: each got axios's 401 error, so the app saw two kinds of failure for one logout
    for (const result of await Promise.all(late)) expect(result).toBe(error)
    expect(events.filter((event) => event.type === 'loggedOut')).toHaveLength(1)
    expect(server.counters.refreshAttempts).toBe(1)
  })

  it('rejects a waiting request with ERR_SESSION_CLEARED when the app logs out during the refresh', async () => {
    const { api, manager } = await loggedIn()
    expireOnServer()
    const release = server.holdRefreshes()
    const pending = rejection(api.get('/api/x', withId('a')))
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    await manager.clear()
    const error = await pending
    expect(error).toBeInstanceOf(TokenflowError)
    expect(error.code).toBe('ERR_SESSION_CLEARED')
    release()
    expect(server.hits('a')).toBe(1)
  })
})

describe('attachTokenRefresh and the connection of a refused answer', () => {
  // An API whose 401 carries a big body (an HTML error page, a debug dump): unread, it fills the socket's
  // buffers, so the server never finishes writing it and the connection is never free again
  let api401: Server
  let refused: string
  beforeEach(async () => {
    api401 = createServer((request, response) => {
      if (request.headers.authorization === `Bearer ${refused}`)
        response.writeHead(401, { 'content-type': 'text/html' }).end('x'.repeat(8 * 1024 * 1024))
      else response.writeHead(200, { 'content-type': 'text/plain' }).end('ok')
    }).listen(0, '127.0.0.1')
    await once(api401, 'listening')
  })
  afterEach(() => {
    api401.closeAllConnections()
    return new Promise<void>((resolve) => api401.close(() => resolve()))
  })

  /** one socket for the API: the usual pool limit of a server-side app, here at its smallest */
  async function oneSocket(options: Partial<TokenManagerOptions> = {}) {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    const manager = makeManager(options)
    const tokens = server.login('alice')
    refused = tokens.accessToken
    await manager.setTokens(tokens)
    const api = axios.create({
      baseURL: `http://127.0.0.1:${(api401.address() as AddressInfo).port}`,
      httpAgent: agent,
    })
    attachTokenRefresh(api, manager)
    return { api, agent }
  }
  const text = async (stream: Readable) => {
    let all = ''
    for await (const chunk of stream) all += chunk
    return all
  }

  it("releases the stream of a 401 it retries (responseType 'stream'), so the retry gets the socket", async () => {
    const { api, agent } = await oneSocket()
    try {
      const response = await api.get<Readable>('/api/x', { responseType: 'stream' })
      expect(response.status).toBe(200)
      expect(await text(response.data)).toBe('ok')
      expect(server.counters.refreshes).toBe(1)
    } finally {
      agent.destroy()
    }
  })

  it("releases the stream of a 401 whose refresh failed (responseType 'stream'), so the next request gets the socket", async () => {
    const { api, agent } = await oneSocket({ retry: false })
    server.refreshMode = 500
    try {
      const error = await rejection(api.get('/api/x', { responseType: 'stream' }))
      expect(error).toBeInstanceOf(RefreshError)
      expect(error).toMatchObject({ kind: 'server', status: 500 })
      server.refreshMode = 'ok'
      const next = await api.get<Readable>('/api/x', { responseType: 'stream' })
      expect(next.status).toBe(200)
      expect(await text(next.data)).toBe('ok')
      expect(server.counters.refreshes).toBe(1)
    } finally {
      agent.destroy()
    }
  })
})
