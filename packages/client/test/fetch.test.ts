import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  createTokenManager,
  jsonRefresh,
  RefreshError,
  type TokenEvent,
  TokenflowError,
  type TokenManager,
  type TokenManagerOptions,
} from '@tokenflow/client'
import { createAuthFetch } from '@tokenflow/client/fetch'
// node-fetch, as ofetch uses it on Node: its Response bodies are Node streams
import { fetch as nodeFetch } from 'node-fetch-native/node'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import * as whatwg from 'whatwg-fetch'
import {
  createTestClock,
  type ReceivedRequest,
  startTestAuthServer,
  type TestAuthServer,
} from './helpers/auth-server.js'

/**
 * createAuthFetch over the real global fetch (undici in Node) against the local test auth server on 127.0.0.1.
 * What every adapter shares (bursts, failing refreshes, POST bodies, aborts) runs in scenarios.test.ts;
 * this file holds what is particular to fetch: its inputs, headers, body kinds, Responses and errors.
 */

const TTL = 60_000

let server: TestAuthServer
/** the server's clock: moving it alone expires tokens on the server while the client still trusts them */
let serverClock: ReturnType<typeof createTestClock>

beforeEach(async () => {
  serverClock = createTestClock()
  server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
})
afterEach(async () => {
  vi.unstubAllGlobals()
  await server.close()
})

interface Echo {
  sub: string
  tokenNumber: number
  body: string
  contentType: string | undefined
  headers: Record<string, string | undefined>
}

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
  return { manager, tokens, authFetch: createAuthFetch(manager) }
}

const expireOnServer = () => serverClock.advance(TTL + 1_000)
const url = (path = '/api/data') => `${server.url}${path}`
const tokenNumber = (token: string) => server.claims(token)!.n
/** what the server received for `id`, try by try */
const received = (id: string): ReceivedRequest[] => server.requests.filter((request) => request.id === id)
const tries = (id: string) => received(id).map(({ status, tokenNumber }) => ({ status, tokenNumber }))

/** Node's fetch needs `duplex: 'half'` for a streamed request body; the DOM typings do not know it yet. */
type StreamingInit = RequestInit & { duplex: 'half' }

/** Text with multi-byte characters: the server decodes bodies as UTF-8, so equal text means equal bytes. */
const TEXT = 'ünïcode ✓ body & = + "quotes" 🔑 end'
const BYTES = new TextEncoder().encode(TEXT)

/** A stream of BYTES in three chunks, cut inside multi-byte characters. */
function byteStream(): ReadableStream<Uint8Array> {
  const cuts = [0, 2, 17, BYTES.length]
  let next = 0
  return new ReadableStream({
    pull(controller) {
      if (next === cuts.length - 1) return controller.close()
      controller.enqueue(BYTES.slice(cuts[next], cuts[next + 1]))
      next++
    },
  })
}

describe('createAuthFetch: requests and headers', () => {
  it('accepts what fetch accepts (a string, a URL, a Request) and answers with the Response', async () => {
    const { authFetch, tokens } = await loggedIn()
    for (const input of [url(), new URL(url()), new Request(url())]) {
      const response = await authFetch(input)
      expect(response).toBeInstanceOf(Response)
      expect(response.status).toBe(200)
      const echo = (await response.json()) as Echo
      expect(echo.headers.authorization).toBe(`Bearer ${tokens.accessToken}`)
    }
    expect(server.counters.refreshAttempts).toBe(0)
  })

  const headerForms: Array<[string, () => { input: string | Request; init?: RequestInit }]> = [
    [
      'a Headers object',
      () => ({
        input: url(),
        init: { headers: new Headers({ 'x-app': 'one', accept: 'application/json' }) },
      }),
    ],
    [
      'a plain object',
      () => ({ input: url(), init: { headers: { 'x-app': 'one', accept: 'application/json' } } }),
    ],
    [
      'array pairs',
      () => ({
        input: url(),
        init: {
          headers: [
            ['x-app', 'one'],
            ['accept', 'application/json'],
          ],
        },
      }),
    ],
    [
      "a Request's headers",
      () => ({ input: new Request(url(), { headers: { 'x-app': 'one', accept: 'application/json' } }) }),
    ],
  ]
  for (const [form, make] of headerForms) {
    for (const expired of [false, true]) {
      it(`adds Authorization and keeps the app's headers given as ${form} (${expired ? 'on the retry after a 401' : 'first try'})`, async () => {
        const { authFetch, tokens } = await loggedIn()
        if (expired) expireOnServer()
        const { input, init } = make()
        const callerHeaders = init?.headers ?? (input as Request).headers
        const response = await authFetch(input, init)
        expect(response.status).toBe(200)
        const echo = (await response.json()) as Echo
        expect(echo.headers).toMatchObject({ 'x-app': 'one', accept: 'application/json' })
        expect(echo.headers.authorization).toMatch(/^Bearer /)
        expect(tokenNumber(echo.headers.authorization!.slice(7))).toBe(
          tokenNumber(tokens.accessToken) + (expired ? 1 : 0),
        )
        expect(server.requests.map(({ status }) => status)).toEqual(expired ? [401, 200] : [200])
        // the token goes into a copy: the caller's own headers never carry it
        expect(new Headers(callerHeaders).has('authorization')).toBe(false)
      })
    }
  }

  it('sends no Authorization header when logged out, and returns the 401 as it came, without a refresh', async () => {
    const manager = makeManager()
    const authFetch = createAuthFetch(manager)
    const response = await authFetch(url(), { headers: { 'x-req-id': 'anon' } })
    expect(response.status).toBe(401)
    expect(await response.json()).toEqual({ code: 'ERR_TOKEN_INVALID' })
    expect(tries('anon')).toEqual([{ status: 401, tokenNumber: undefined }])
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('returns the 401 as it came when the session has no refresh token, and sends the token it has', async () => {
    const manager = makeManager()
    await manager.setTokens({ accessToken: server.login().accessToken, refreshToken: null })
    serverClock.advance(TTL + 1_000)
    const authFetch = createAuthFetch(manager)
    const response = await authFetch(url(), { headers: { 'x-req-id': 'no-refresh-token' } })
    expect(response.status).toBe(401)
    expect(await response.json()).toMatchObject({ code: 'ERR_TOKEN_EXPIRED' })
    expect(tries('no-refresh-token')).toHaveLength(1)
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('hands back the 401 of a request sent without a token, even when a session started meanwhile', async () => {
    // a front-end review: such a request was retried as the next login, which may be another user's
    const manager = makeManager()
    const authFetch = createAuthFetch(manager)
    const sent = authFetch(url('/api/data?hold=login'), { headers: { 'x-req-id': 'early' } })
    await vi.waitFor(() => expect(server.held('login')).toBe(1))
    await manager.setTokens(server.login('alice'))
    server.release('login')
    expect((await sent).status).toBe(401)
    expect(tries('early')).toEqual([{ status: 401, tokenNumber: undefined }])
    expect(server.counters.refreshAttempts).toBe(0)
  })
})

describe('createAuthFetch: bodies survive the retry', () => {
  type Case = {
    name: string
    send(authFetch: typeof fetch, id: string): Promise<Response>
    /** checks one try's body as the server received it */
    check(request: ReceivedRequest): void | Promise<void>
  }
  const post = (body: BodyInit, headers: Record<string, string> = {}) => ({ method: 'POST', body, headers })
  const sameBytes = (contentType?: RegExp) => (request: ReceivedRequest) => {
    expect(request.body).toBe(TEXT)
    if (contentType) expect(request.contentType).toMatch(contentType)
  }
  const cases: Case[] = [
    {
      name: 'a string',
      send: (authFetch, id) => authFetch(url(), post(TEXT, { 'x-req-id': id })),
      check: sameBytes(/^text\/plain;charset=utf-8$/i),
    },
    {
      name: 'URLSearchParams',
      send: (authFetch, id) =>
        authFetch(url(), post(new URLSearchParams({ text: TEXT, n: '1' }), { 'x-req-id': id })),
      check: (request) => {
        expect(request.contentType).toMatch(/^application\/x-www-form-urlencoded/)
        expect(Object.fromEntries(new URLSearchParams(request.body))).toEqual({ text: TEXT, n: '1' })
      },
    },
    {
      name: 'FormData (a field and a file)',
      send: (authFetch, id) => {
        const form = new FormData()
        form.append('text', TEXT)
        form.append('file', new Blob([BYTES], { type: 'text/plain' }), 'key.txt')
        return authFetch(url(), post(form, { 'x-req-id': id }))
      },
      // each send draws a new multipart boundary, so the bytes differ by it: the parts must not
      check: async (request) => {
        expect(request.contentType).toMatch(/^multipart\/form-data; boundary=/)
        const parsed = await new Response(request.body, {
          headers: { 'content-type': request.contentType! },
        }).formData()
        expect(parsed.get('text')).toBe(TEXT)
        const file = parsed.get('file') as File
        expect(file.name).toBe('key.txt')
        expect(await file.text()).toBe(TEXT)
      },
    },
    {
      name: 'a Blob',
      send: (authFetch, id) =>
        authFetch(url(), post(new Blob([BYTES], { type: 'application/x-key' }), { 'x-req-id': id })),
      check: sameBytes(/^application\/x-key$/),
    },
    {
      name: 'an ArrayBuffer',
      send: (authFetch, id) => authFetch(url(), post(BYTES.slice().buffer, { 'x-req-id': id })),
      check: sameBytes(),
    },
    {
      name: 'a Uint8Array view into a larger buffer',
      send: (authFetch, id) => {
        // only the view's bytes may go out, not the whole buffer around it
        const buffer = new Uint8Array(BYTES.length + 8).fill(0x2a)
        buffer.set(BYTES, 4)
        return authFetch(url(), post(buffer.subarray(4, 4 + BYTES.length), { 'x-req-id': id }))
      },
      check: sameBytes(),
    },
    {
      name: 'a Request with a body (cloned before the first send)',
      send: (authFetch, id) =>
        authFetch(new Request(url(), post(TEXT, { 'x-req-id': id, 'content-type': 'text/x-key' }))),
      check: sameBytes(/^text\/x-key$/),
    },
    {
      name: 'a Request with a ReadableStream body',
      send: (authFetch, id) => {
        const init: StreamingInit = { ...post(byteStream(), { 'x-req-id': id }), duplex: 'half' }
        return authFetch(new Request(url(), init))
      },
      check: sameBytes(),
    },
    {
      name: "a ReadableStream (tee'd)",
      send: (authFetch, id) => {
        const init: StreamingInit = { ...post(byteStream(), { 'x-req-id': id }), duplex: 'half' }
        return authFetch(url(), init)
      },
      check: sameBytes(),
    },
  ]
  for (const { name, send, check } of cases) {
    it(`re-sends ${name} byte for byte after a 401`, async () => {
      const { authFetch } = await loggedIn()
      expireOnServer()
      const response = await send(authFetch, 'body')
      expect(response.status).toBe(200)
      const attempts = received('body')
      expect(attempts.map(({ status, method }) => [method, status])).toEqual([
        ['POST', 401],
        ['POST', 200],
      ])
      for (const attempt of attempts) await check(attempt)
      expect(server.counters.refreshes).toBe(1)
    })
  }

  it('does not retry a body that cannot be replayed (an async iterable): the 401 comes back as it came', async () => {
    // Node's fetch takes an async iterable of bytes (with duplex: 'half'); it can be read only once
    const { authFetch } = await loggedIn()
    expireOnServer()
    async function* chunks() {
      yield BYTES.slice(0, 5)
      yield BYTES.slice(5)
    }
    const init = { ...post(chunks() as unknown as BodyInit, { 'x-req-id': 'once' }), duplex: 'half' }
    const response = await authFetch(url(), init as StreamingInit)
    expect(response.status).toBe(401)
    expect(response.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"')
    expect(response.bodyUsed).toBe(false)
    expect(await response.json()).toEqual({ code: 'ERR_TOKEN_EXPIRED' })
    expect(received('once').map(({ status, body }) => [status, body])).toEqual([[401, TEXT]])
  })

  it("refreshes on a 401 for a body that cannot be replayed, so the caller's own retry goes with the new token", async () => {
    // otherwise an app whose uploads are all streams (Node's fs streams are async iterables) gets a 401 for
    // every one of them for as long as the server refuses the token and the client does not know it expired
    const { authFetch, tokens } = await loggedIn()
    expireOnServer()
    async function* chunks() {
      yield BYTES
    }
    const upload = (id: string) =>
      authFetch(url(), {
        ...post(chunks() as unknown as BodyInit, { 'x-req-id': id }),
        duplex: 'half',
      } as StreamingInit)
    expect((await upload('first')).status).toBe(401)
    const again = await upload('again')
    expect(again.status).toBe(200)
    expect(tries('again')).toEqual([{ status: 200, tokenNumber: tokenNumber(tokens.accessToken) + 1 }])
    expect(server.counters.refreshes).toBe(1)
  })
})

describe('createAuthFetch: aborts', () => {
  /** a manager whose token the client itself sees as expired, so every request waits for the (held) refresh */
  async function queuedBehindRefresh() {
    const clock = createTestClock(serverClock.now())
    const { manager, authFetch } = await loggedIn({ now: clock.now })
    clock.advance(TTL)
    const release = server.holdRefreshes()
    const kept = authFetch(url(), { headers: { 'x-req-id': 'kept' } })
    // awaited by the test; handled here too, so a failed assertion before that does not add an unhandled rejection
    kept.catch(() => {})
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    return { manager, authFetch, release, kept }
  }

  it('rejects with the reason of a signal aborted before the call, and sends nothing', async () => {
    const { authFetch } = await loggedIn()
    const controller = new AbortController()
    const reason = new Error('gone before it started')
    controller.abort(reason)
    await expect(
      authFetch(url(), { signal: controller.signal, headers: { 'x-req-id': 'pre' } }),
    ).rejects.toBe(reason)
    expect(server.hits('pre')).toBe(0)
  })

  it("rejects at once with the signal's reason while queued behind a refresh, and is never sent", async () => {
    const { authFetch, release, kept } = await queuedBehindRefresh()
    const controller = new AbortController()
    const viaRequest = new AbortController()
    const settled = [
      authFetch(url(), { signal: controller.signal, headers: { 'x-req-id': 'init-signal' } }),
      authFetch(new Request(url(), { signal: viaRequest.signal, headers: { 'x-req-id': 'request-signal' } })),
    ].map((promise) =>
      promise.then(
        () => 'resolved',
        (error: unknown) => error,
      ),
    )
    const reasons = [new Error('init signal'), new DOMException('request signal', 'AbortError')]
    controller.abort(reasons[0])
    viaRequest.abort(reasons[1])
    // the refresh is still held: nothing but the abort can have settled them
    expect(await Promise.all(settled)).toEqual(reasons)
    for (const [i, reason] of reasons.entries()) expect(await settled[i]).toBe(reason)
    release()
    expect((await kept).status).toBe(200)
    expect(server.hits('init-signal') + server.hits('request-signal')).toBe(0)
    expect(server.counters.refreshes).toBe(1)
  })

  it("rejects at once with the signal's reason while it waits for the refresh after its 401, and is not retried", async () => {
    const { authFetch } = await loggedIn()
    expireOnServer()
    const release = server.holdRefreshes()
    const controller = new AbortController()
    const reason = new Error('user left')
    const settled = authFetch(url(), { signal: controller.signal, headers: { 'x-req-id': 'waiting' } }).then(
      () => 'resolved',
      (error: unknown) => error,
    )
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(1))
    controller.abort(reason)
    expect(await settled).toBe(reason)
    release()
    await vi.waitFor(() => expect(server.counters.refreshes).toBe(1))
    expect(tries('waiting').map(({ status }) => status)).toEqual([401])
  })

  it('leaves the ReadableStream body of a request aborted while queued unlocked for the caller', async () => {
    const { authFetch, release, kept } = await queuedBehindRefresh()
    const controller = new AbortController()
    const body = byteStream()
    const reason = new Error('upload cancelled')
    const init: StreamingInit = { method: 'POST', body, duplex: 'half', signal: controller.signal }
    const settled = authFetch(url(), init).then(
      () => 'resolved',
      (error: unknown) => error,
    )
    controller.abort(reason)
    expect(await settled).toBe(reason)
    const { locked } = body
    release()
    expect((await kept).status).toBe(200)
    // a stream tee'd and then dropped stays locked and its source is never read nor cancelled: a file or
    // socket behind it would stay open. Never sent, it must still belong to the caller.
    expect(locked).toBe(false)
    expect(await new Response(body).text()).toBe(TEXT)
  })
})

describe('createAuthFetch: a server that answers before it reads the upload', () => {
  // A 413, or an auth check that refuses before the body: undici then leaves the sent copy of a streamed
  // body unread, and the spare copy kept for the retry must not wait for it
  let early: Server
  let status: number
  beforeEach(async () => {
    status = 413
    early = createServer((_request, response) => response.writeHead(status).end('early')).listen(
      0,
      '127.0.0.1',
    )
    await once(early, 'listening')
  })
  afterEach(() => new Promise<void>((resolve) => early.close(() => resolve())))
  const earlyUrl = () => `http://127.0.0.1:${(early.address() as AddressInfo).port}/upload`
  /** a long upload: 200 chunks, 5 ms apart */
  const slowStream = () => {
    let chunks = 0
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        await new Promise((resolve) => setTimeout(resolve, 5))
        if (++chunks > 200) controller.close()
        else controller.enqueue(new Uint8Array(1024))
      },
    })
  }
  const upload = (body: ReadableStream<Uint8Array>): StreamingInit => ({
    method: 'POST',
    body,
    duplex: 'half',
  })

  it("returns the early 413 for a tee'd ReadableStream body instead of hanging", async () => {
    const { authFetch } = await loggedIn()
    const response = await authFetch(earlyUrl(), upload(slowStream()))
    expect(response.status).toBe(413)
    expect(await response.text()).toBe('early')
  })

  it('returns the early 413 for a Request with a ReadableStream body instead of hanging', async () => {
    const { authFetch } = await loggedIn()
    const response = await authFetch(new Request(earlyUrl(), upload(slowStream())))
    expect(response.status).toBe(413)
  })

  it('returns the early 401 of a session without a refresh token instead of hanging', async () => {
    status = 401
    const manager = makeManager()
    await manager.setTokens({ ...server.login('alice'), refreshToken: null })
    const response = await createAuthFetch(manager)(earlyUrl(), upload(slowStream()))
    expect(response.status).toBe(401)
  })
})

describe('createAuthFetch: refresh and retry', () => {
  it('retries a stale 401 (sent with the old token after another request refreshed) with the current token, without a refresh', async () => {
    const { authFetch, tokens } = await loggedIn()
    expireOnServer()
    const stale = authFetch(url('/api/data?hold=stale'), { headers: { 'x-req-id': 'stale' } })
    await vi.waitFor(() => expect(server.held('stale')).toBe(1))
    const fresh = await authFetch(url(), { headers: { 'x-req-id': 'fresh' } })
    expect(fresh.status).toBe(200)
    expect(server.counters.refreshAttempts).toBe(1)
    server.release('stale')
    const response = await stale
    expect(response.status).toBe(200)
    const first = tokenNumber(tokens.accessToken)
    const current = ((await fresh.json()) as Echo).tokenNumber
    expect(current).toBeGreaterThan(first)
    expect(tries('stale')).toEqual([
      { status: 401, tokenNumber: first },
      { status: 200, tokenNumber: current },
    ])
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.reuseDetections).toBe(0)
  })

  it('retries at most once: against a server that refuses every token, 2 hits and the second 401 is returned', async () => {
    const { authFetch, tokens } = await loggedIn()
    expireOnServer()
    server.alwaysUnauthorized = true
    const response = await authFetch(url(), { headers: { 'x-req-id': 'loop' } })
    expect(response.status).toBe(401)
    // the first try was refused as expired, the retry (with a fresh token) as rejected: this is the retry's
    expect(await response.json()).toEqual({ code: 'ERR_TOKEN_REJECTED' })
    expect(tries('loop')).toEqual([
      { status: 401, tokenNumber: tokenNumber(tokens.accessToken) },
      { status: 401, tokenNumber: tokenNumber(tokens.accessToken) + 1 },
    ])
    expect(server.counters.refreshes).toBe(1)
  })

  it('lets shouldRefresh decide which responses refresh (419 here), instead of the status 401', async () => {
    const manager = makeManager()
    const tokens = server.login('alice')
    await manager.setTokens(tokens)
    const seen: number[] = []
    const authFetch = createAuthFetch(manager, {
      shouldRefresh: (response) => {
        seen.push(response.status)
        return response.status === 419
      },
    })
    // ?status=419 answers 419 to any valid token: the retry gets it again and it is returned
    const response = await authFetch(url('/api/data?status=419'), { headers: { 'x-req-id': 'custom' } })
    expect(response.status).toBe(419)
    expect(((await response.json()) as Echo).tokenNumber).toBe(tokenNumber(tokens.accessToken) + 1)
    expect(tries('custom').map(({ status }) => status)).toEqual([419, 419])
    expect(server.counters.refreshes).toBe(1)

    // and a 401 is now an answer like any other
    expireOnServer()
    const refused = await authFetch(url(), { headers: { 'x-req-id': 'plain-401' } })
    expect(refused.status).toBe(401)
    expect(tries('plain-401').map(({ status }) => status)).toEqual([401])
    expect(server.counters.refreshAttempts).toBe(1)
    expect(seen).toEqual([419, 401])
  })

  it('rejects with the RefreshError of a failed refresh, the same instance for every waiter', async () => {
    const { authFetch, manager } = await loggedIn({ retry: false })
    expireOnServer()
    server.refreshMode = 401
    const results = await Promise.allSettled(
      ['e0', 'e1', 'e2'].map((id) => authFetch(url(), { headers: { 'x-req-id': id } })),
    )
    const error = (results[0] as PromiseRejectedResult).reason as RefreshError
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected' })
    for (const result of results) expect(result).toEqual({ status: 'rejected', reason: error })
    expect(manager.status).toBe('unauthenticated')
  })

  it('rejects a 401 that comes back after the refused refresh logged out with the same RefreshError, not the 401', async () => {
    const { authFetch, manager } = await loggedIn({ retry: false })
    const events: TokenEvent[] = []
    manager.subscribe((event) => events.push(event))
    expireOnServer()
    server.refreshMode = 401
    // sent with the same token, refused on arrival, answered only after the logout
    const late = ['l0', 'l1'].map((id) =>
      authFetch(url('/api/data?hold=late'), { headers: { 'x-req-id': id } }).catch((error: unknown) => error),
    )
    const stale = authFetch(url('/api/data?hold=stale'), { headers: { 'x-req-id': 'stale' } })
    await vi.waitFor(() => expect([server.held('late'), server.held('stale')]).toEqual([2, 1]))
    const error = await authFetch(url(), { headers: { 'x-req-id': 'first' } }).catch(
      (error: unknown) => error,
    )
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected' })
    server.release('late')
    // was: each got the server's 401 Response, so the app saw two kinds of failure for one logout
    for (const result of await Promise.all(late)) expect(result).toBe(error)
    expect(events.filter((event) => event.type === 'loggedOut')).toHaveLength(1)
    expect(server.counters.refreshAttempts).toBe(1)

    // once a new session started, a 401 for the old session's token is not sent again as the new one (that
    // may be another user): it rejects with ERR_SESSION_CLEARED (was: retried as the new session)
    await manager.setTokens(server.login('alice'))
    server.release('stale')
    await expect(stale).rejects.toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    expect(tries('stale').map(({ status }) => status)).toEqual([401])
    expect(server.counters.refreshAttempts).toBe(1)
  })

  it('rejects with the RefreshError of a failed proactive refresh, and sends nothing', async () => {
    const clock = createTestClock(serverClock.now())
    const { authFetch } = await loggedIn({ now: clock.now, retry: false })
    clock.advance(TTL)
    server.refreshMode = 500
    const failed = await authFetch(url(), { headers: { 'x-req-id': 'never' } }).catch(
      (error: unknown) => error,
    )
    expect(failed).toBeInstanceOf(RefreshError)
    expect(failed).toMatchObject({ kind: 'server', status: 500 })
    expect(server.hits('never')).toBe(0)
  })

  it('cancels the body of the 401 before it sends the retry, so its connection is released', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login('alice'))
    const responses: Response[] = []
    const usedBeforeRetry: boolean[] = []
    const authFetch = createAuthFetch(manager, {
      fetch: async (input, init) => {
        if (responses.length === 1) usedBeforeRetry.push(responses[0]!.bodyUsed)
        const response = await globalThis.fetch(input, init)
        responses.push(response)
        return response
      },
    })
    expireOnServer()
    const response = await authFetch(url())
    expect(response.status).toBe(200)
    expect(responses.map(({ status }) => status)).toEqual([401, 200])
    expect(usedBeforeRetry).toEqual([true])
    // the Response returned is the retry's, untouched
    expect(response).toBe(responses[1])
    expect(response.bodyUsed).toBe(false)
  })

  it('bug: a 401 whose Response the wrapped fetch had cloned (a logger, a cache) was never retried, and the call never settled', async () => {
    const manager = makeManager()
    await manager.setTokens(server.login('alice'))
    // a copy kept unread, and one dropped: the cancel of either Response's body (a tee) waits for its copy
    for (const keep of [true, false]) {
      const copies: Response[] = []
      const authFetch = createAuthFetch(manager, {
        fetch: async (input, init) => {
          const response = await globalThis.fetch(input, init)
          const copy = response.clone()
          if (keep) copies.push(copy)
          return response
        },
      })
      expireOnServer()
      const id = `cloned-${keep}`
      const settled = await Promise.race([
        authFetch(url(), { headers: { 'x-req-id': id } }),
        new Promise<'never settled'>((resolve) => setTimeout(() => resolve('never settled'), 3_000)),
      ])
      expect(settled).toBeInstanceOf(Response)
      expect((settled as Response).status).toBe(200)
      expect(tries(id).map(({ status }) => status)).toEqual([401, 200])
    }
  })

  it('a fetch option of node-fetch (bodies are Node streams): a 401 is released and retried, and a throwing shouldRefresh rejects with its own error (a review of the fix: "cancel is not a function")', async () => {
    const { manager } = await loggedIn()
    const authFetch = createAuthFetch(manager, { fetch: nodeFetch as unknown as typeof fetch })
    expireOnServer()
    const response = await authFetch(url(), { headers: { 'x-req-id': 'node-fetch' } })
    expect(response.status).toBe(200)
    expect(tries('node-fetch').map(({ status }) => status)).toEqual([401, 200])
    const bad = new Error('bad predicate')
    const throwing = createAuthFetch(manager, {
      fetch: nodeFetch as unknown as typeof fetch,
      shouldRefresh: () => {
        throw bad
      },
    })
    expect(await throwing(url()).catch((error: unknown) => error)).toBe(bad)
  })

  it('bug: the 401 was left unreleased when shouldRefresh threw: the caller gets the error, and its connection is released', async () => {
    const { manager } = await loggedIn()
    const responses: Response[] = []
    const bad = new Error('bad predicate')
    const authFetch = createAuthFetch(manager, {
      fetch: async (input, init) => {
        const response = await globalThis.fetch(input, init)
        responses.push(response)
        return response
      },
      shouldRefresh: () => {
        throw bad
      },
    })
    expect(await authFetch(url()).catch((error: unknown) => error)).toBe(bad)
    expect(responses).toHaveLength(1)
    expect(responses[0]!.bodyUsed).toBe(true)
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it('cancels the body of the 401 when the refresh fails or the caller aborts, so its connection is released', async () => {
    const manager = makeManager({ retry: false })
    await manager.setTokens(server.login('alice'))
    const responses: Response[] = []
    const authFetch = createAuthFetch(manager, {
      fetch: async (input, init) => {
        const response = await globalThis.fetch(input, init)
        responses.push(response)
        return response
      },
    })
    // the refresh fails: the caller gets the RefreshError, and nobody ever reads the 401
    expireOnServer()
    server.refreshMode = 500
    const failed = await authFetch(url(), { headers: { 'x-req-id': 'failed' } }).catch(
      (error: unknown) => error,
    )
    expect(failed).toBeInstanceOf(RefreshError)
    expect(failed).toMatchObject({ kind: 'server', status: 500 })
    // the caller gives up while the refresh after its 401 runs: it gets its signal's reason
    server.refreshMode = 'ok'
    const release = server.holdRefreshes()
    const controller = new AbortController()
    const reason = new Error('user left')
    const aborted = authFetch(url(), { signal: controller.signal, headers: { 'x-req-id': 'aborted' } }).catch(
      (error: unknown) => error,
    )
    await vi.waitFor(() => expect(server.counters.refreshAttempts).toBe(2))
    controller.abort(reason)
    expect(await aborted).toBe(reason)
    release()
    expect(responses.map(({ status }) => status)).toEqual([401, 401])
    // cancelled: an unread body holds its connection (and what it buffered) until garbage collection
    expect(responses.map(({ bodyUsed }) => bodyUsed)).toEqual([true, true])
  })

  it('goes through 200 sequential 401 → refresh → retry cycles', async () => {
    const { authFetch } = await loggedIn()
    const statuses: number[] = []
    for (let i = 0; i < 200; i++) {
      expireOnServer()
      const response = await authFetch(url(), { headers: { 'x-req-id': `cycle${i}` } })
      statuses.push(response.status)
      await response.arrayBuffer()
    }
    expect(statuses).toEqual(Array(200).fill(200))
    expect(server.counters.refreshes).toBe(200)
    expect(server.counters.unauthorized).toBe(200)
  })
})

describe('createAuthFetch: the fetch underneath', () => {
  it("passes a network error (server down) through as fetch's own TypeError, untouched", async () => {
    const { manager } = await loggedIn()
    const down = await startTestAuthServer()
    const deadUrl = `${down.url}/api/data`
    await down.close()
    let thrown: unknown
    const authFetch = createAuthFetch(manager, {
      fetch: (input, init) =>
        globalThis.fetch(input, init).catch((error: unknown) => {
          thrown = error
          throw error
        }),
    })
    const error = await authFetch(deadUrl).catch((reason: unknown) => reason)
    expect(error).toBeInstanceOf(TypeError)
    expect(error).toBe(thrown)
    expect((error as TypeError).cause).toMatchObject({ code: 'ECONNREFUSED' })
    expect(manager.status).toBe('authenticated')
    expect(server.counters.refreshAttempts).toBe(0)
  })

  it("passes a network error of the retry through as fetch's own TypeError", async () => {
    const manager = makeManager()
    await manager.setTokens(server.login('alice'))
    const down = await startTestAuthServer()
    const deadUrl = `${down.url}/api/data`
    await down.close()
    let thrown: unknown
    let calls = 0
    const authFetch = createAuthFetch(manager, {
      // the first try reaches the server and gets its 401; the retry finds nobody listening
      fetch: (input, init) =>
        globalThis.fetch(calls++ === 0 ? input : deadUrl, init).catch((error: unknown) => {
          thrown = error
          throw error
        }),
    })
    expireOnServer()
    const error = await authFetch(url()).catch((reason: unknown) => reason)
    expect(error).toBeInstanceOf(TypeError)
    expect(error).toBe(thrown)
    expect(calls).toBe(2)
    expect(server.counters.refreshes).toBe(1)
  })

  it('looks globalThis.fetch up at call time: a fetch installed after createAuthFetch is used', async () => {
    const { authFetch, tokens } = await loggedIn()
    const original = globalThis.fetch
    const calls: string[] = []
    vi.stubGlobal('fetch', (input: RequestInfo | URL, init?: RequestInit) => {
      calls.push(new Headers(init?.headers).get('authorization') ?? 'none')
      return original(input, init)
    })
    const response = await authFetch(url())
    expect(response.status).toBe(200)
    expect(calls).toEqual([`Bearer ${tokens.accessToken}`])
  })

  it("bug: a Request of another fetch implementation (a ponyfill's, not the global class) lost its headers and body", async () => {
    const { manager, tokens } = await loggedIn()
    // a ponyfill's fetch (cross-fetch, whatwg-fetch imported as a module next to the global one): it reads its
    // own Request, then sends through the real one. Its Headers read any iterable, as node-fetch's (cross-fetch's)
    // do: whatwg-fetch's own copy only the own properties of a plain object
    const ponyfillFetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
      const request = new whatwg.Request(
        input,
        init?.headers ? { ...init, headers: Object.fromEntries(new Headers(init.headers)) } : init,
      )
      const headers: Record<string, string> = {}
      request.headers.forEach((value, name) => {
        headers[name] = value
      })
      const sent: RequestInit = { method: request.method, headers }
      if (request.method !== 'GET') sent.body = await request.text()
      return globalThis.fetch(request.url, sent)
    }) as typeof fetch
    const authFetch = createAuthFetch(manager, { fetch: ponyfillFetch })
    const make = () =>
      new whatwg.Request(url(), {
        method: 'POST',
        headers: { 'x-app': 'one', 'content-type': 'text/plain' },
        body: TEXT,
      })
    expect(make()).not.toBeInstanceOf(Request)
    for (const expired of [false, true]) {
      if (expired) expireOnServer()
      const response = await authFetch(make())
      expect(response.status).toBe(200)
      const echo = (await response.json()) as Echo
      expect(echo.headers['x-app']).toBe('one')
      expect(echo.body).toBe(TEXT)
      expect(tokenNumber(echo.headers.authorization!.slice(7))).toBe(
        tokenNumber(tokens.accessToken) + (expired ? 1 : 0),
      )
    }
    expect(server.requests.map(({ status }) => status)).toEqual([200, 401, 200])
  })

  it('uses the fetch option instead of the global one', async () => {
    const { manager, tokens } = await loggedIn()
    const real = globalThis.fetch
    const global = vi.fn(real)
    vi.stubGlobal('fetch', global)
    const own = vi.fn(real)
    const authFetch = createAuthFetch(manager, { fetch: own })
    expect((await authFetch(url())).status).toBe(200)
    expect(own).toHaveBeenCalledTimes(1)
    expect(new Headers(own.mock.calls[0]![1]?.headers).get('authorization')).toBe(
      `Bearer ${tokens.accessToken}`,
    )
    expect(global).not.toHaveBeenCalled()
  })

  it('rejects invalid arguments with ERR_INVALID_OPTION when it is created, not on first use', () => {
    const manager = makeManager()
    const invalid = [
      () => createAuthFetch(undefined as unknown as TokenManager),
      () => createAuthFetch({} as TokenManager),
      () => createAuthFetch(manager, { fetch: 'fetch' as unknown as typeof fetch }),
      () => createAuthFetch(manager, { shouldRefresh: true as unknown as () => boolean }),
    ]
    for (const create of invalid) {
      expect(create).toThrow(TokenflowError)
      expect(create).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }))
    }
  })
})
