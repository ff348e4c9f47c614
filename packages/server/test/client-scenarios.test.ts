/**
 * The axios scenarios of the client issue, repeated against the REAL @tokenflow/server: a
 * `createAuthServer` on 127.0.0.1 issues and rotates the tokens, and a second Fastify app is the
 * protected API, guarded by `createVerifier({ jwks: <the server's JWKS URL> }).fastify`. Each
 * scenario runs with `jsonRefresh` (POST /refresh/token) and with `oauthRefresh` (POST /oauth/token).
 *
 * Time: the auth server and the API share one test clock, so a token expires on the server by moving
 * that clock alone (the client still trusts the token, as with a skewed clock), and the proactive
 * scenarios hand the same clock to the manager. Nothing waits for real seconds to pass.
 */
import {
  createTokenManager,
  jsonRefresh,
  memoryStorage,
  oauthRefresh,
  RefreshError,
  type RefreshErrorKind,
  type RefreshFunction,
  type TokenEvent,
  type TokenManager,
  type TokenManagerOptions,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import { createVerifier } from '@tokenflow/server/verify'
import axios, { type AxiosRequestConfig } from 'axios'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createTestLock } from '../../client/test/helpers/tokens.js'
import { AUDIENCE, ISSUER, PASSWORD, postJson, type TokenPair } from './helpers/http.js'

/** Access-token lifetime: the server's default would do, a minute keeps the numbers readable. */
const TTL = 60_000

/** How the auth server's refresh routes behave (the rest of the server is untouched). */
type RefreshMode =
  /** normal */
  | 'ok'
  /** held once its body is read, until `releaseRefreshes(mode)`, then handled as `mode` says */
  | 'hold'
  /** the connection is closed before the server looks at the request: nothing rotates */
  | 'drop'
  /** the next refresh is processed (it rotates), but its answer never reaches the client */
  | 'lose-next-answer'

interface Clock {
  now(): number
  advance(ms: number): void
}

function createClock(start: number): Clock {
  let time = start
  return {
    now: () => time,
    advance(ms) {
      time += ms
    },
  }
}

/** An HTTP answer, whatever its status. */
interface Reply {
  status: number
  data: any
}

/** Sends one request; `id` goes in `x-req-id`, so the servers can count each request's tries. */
type Send = (
  path: string,
  options: { method?: string; body?: unknown; signal?: AbortSignal; id: string },
) => Promise<Reply>

/** axios + attachTokenRefresh. An HTTP error status becomes a reply; anything else rejects as axios rejected. */
function connect(manager: TokenManager, baseURL: string): Send {
  const api = axios.create({ baseURL })
  attachTokenRefresh(api, manager)
  return async (url, { method = 'GET', body, signal, id }) => {
    const config: AxiosRequestConfig = { url, method, headers: { 'x-req-id': id } }
    if (body !== undefined) config.data = body
    if (signal) config.signal = signal
    try {
      const response = await api.request(config)
      return { status: response.status, data: response.data }
    } catch (error) {
      if (axios.isAxiosError(error) && error.response)
        return { status: error.response.status, data: error.response.data }
      throw error
    }
  }
}

interface Environment {
  /** the clock of the auth server and of the API */
  clock: Clock
  readonly authOrigin: string
  readonly auth: AuthServer
  apiOrigin: string
  refreshMode: RefreshMode
  /** refresh requests that reached the auth server, whatever happened to them */
  refreshAttempts: number
  /** every request with an `x-req-id` answered (by the API or the auth server), in order: its id, status and the `jti` of the token it carried */
  requests: Array<{ id: string; status: number; jti: string | undefined }>
  hits(id: string): number
  /** API requests (`?hold=<tag>`, first try only) waiting for `release(tag)` */
  held(tag: string): number
  release(tag: string): void
  heldRefreshes(): number
  releaseRefreshes(mode?: RefreshMode): void
  /** the issuer counters of the current auth server, since the test started */
  stats(): { refreshes: number; graceReplays: number; reuseDetected: number; invalidGrants: number }
  expireOnServer(): void
  login(): Promise<TokenPair>
  /** closes the auth server: its port refuses connections */
  stopAuth(): Promise<void>
  /** a new auth server on the same port and database, as after a restart */
  startAuth(): Promise<void>
  close(): Promise<void>
}

/**
 * Closes a Fastify app and every connection at once: a connection whose request the client aborted
 * (the timeout and drop scenarios) can otherwise keep close() waiting for seconds.
 */
async function closeNow(app: FastifyInstance): Promise<void> {
  const closing = app.close()
  app.server.closeAllConnections()
  await closing
}

const jtiOf = (authorization: unknown): string | undefined => {
  const token = typeof authorization === 'string' ? authorization.replace(/^Bearer /, '') : ''
  try {
    return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString()).jti
  } catch {
    return undefined
  }
}

async function startEnvironment(): Promise<Environment> {
  // whole seconds: `exp` has 1 s resolution, so the proactive scenario's numbers come out exact
  const clock = createClock(Math.floor(Date.now() / 1000) * 1000)
  const store: TokenStore = createSqliteStore({ filename: ':memory:' })
  const hitCounts = new Map<string, number>()
  const gates = new Map<string, Array<() => void>>()
  const refreshGate: Array<() => void> = []
  let auth: AuthServer
  let authOrigin = ''
  let authPort = 0
  let baseline = { refreshes: 0, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 }
  const totals = { refreshes: 0, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 }

  const countHit = (request: FastifyRequest) => {
    const id = request.headers['x-req-id']
    if (typeof id !== 'string') return 0
    const count = (hitCounts.get(id) ?? 0) + 1
    hitCounts.set(id, count)
    return count
  }

  const record = (request: FastifyRequest, reply: FastifyReply) => {
    env.requests.push({
      id: String(request.headers['x-req-id']),
      status: reply.statusCode,
      jti: jtiOf(request.headers.authorization),
    })
  }

  const env: Environment = {
    clock,
    get authOrigin() {
      return authOrigin
    },
    get auth() {
      return auth
    },
    apiOrigin: '',
    refreshMode: 'ok',
    refreshAttempts: 0,
    requests: [],
    hits: (id) => hitCounts.get(id) ?? 0,
    held: (tag) => gates.get(tag)?.length ?? 0,
    release(tag) {
      for (const open of gates.get(tag) ?? []) open()
      gates.delete(tag)
    },
    heldRefreshes: () => refreshGate.length,
    releaseRefreshes(mode = 'ok') {
      env.refreshMode = mode
      for (const open of refreshGate.splice(0)) open()
    },
    stats() {
      const now = auth.tokenflow.issuer.stats
      return {
        refreshes: totals.refreshes + now.refreshes - baseline.refreshes,
        graceReplays: totals.graceReplays + now.graceReplays - baseline.graceReplays,
        reuseDetected: totals.reuseDetected + now.reuseDetected - baseline.reuseDetected,
        invalidGrants: totals.invalidGrants + now.invalidGrants - baseline.invalidGrants,
      }
    },
    expireOnServer: () => clock.advance(TTL + 1_000),
    async login() {
      const reply = await postJson(authOrigin, '/auth/login', { username: 'alice', password: PASSWORD })
      expect(reply.status).toBe(200)
      return reply.json() as TokenPair
    },
    async stopAuth() {
      Object.assign(totals, env.stats())
      await closeNow(auth)
    },
    async startAuth() {
      auth = createAuthServer({
        issuer: ISSUER,
        audience: AUDIENCE,
        clientId: 'web',
        store,
        accessTokenTtl: TTL,
        rateLimit: false,
        pruneInterval: 0,
        // the scenarios are about refreshing: a plain credential check keeps Argon2 out of every login
        authenticate: async ({ username, password }) => (password === PASSWORD ? { userId: username } : null),
        now: clock.now,
      })
      baseline = { ...auth.tokenflow.issuer.stats }
      // switchable failures of the refresh routes, and hit counts for the server's own protected routes
      const isRefresh = (request: FastifyRequest) => ['/refresh/token', '/oauth/token'].includes(request.url)
      const drop = (request: FastifyRequest, reply: FastifyReply) => {
        reply.hijack()
        request.raw.socket.destroy()
      }
      auth.addHook('onRequest', async (request, reply) => {
        countHit(request)
        if (!isRefresh(request)) return
        env.refreshAttempts++
        if (env.refreshMode === 'drop') drop(request, reply)
      })
      auth.addHook('preHandler', async (request, reply) => {
        if (!isRefresh(request)) return
        // held after the body was read: once released, it is processed even if the client gave up
        if (env.refreshMode === 'hold') await new Promise<void>((open) => refreshGate.push(open))
        if (env.refreshMode === 'drop') return drop(request, reply)
        if (env.refreshMode === 'lose-next-answer') {
          env.refreshMode = 'ok'
          ;(request as FastifyRequest & { loseAnswer?: boolean }).loseAnswer = true
        }
      })
      auth.addHook('onResponse', async (request, reply) => {
        if (request.headers['x-req-id']) record(request, reply)
      })
      auth.addHook('onSend', async (request, _reply, payload) => {
        // the rotation committed before the answer was serialised: only the answer is lost
        if ((request as FastifyRequest & { loseAnswer?: boolean }).loseAnswer) request.raw.socket.destroy()
        return payload
      })
      authOrigin = await auth.listen({ port: authPort, host: '127.0.0.1' })
      authPort = Number(new URL(authOrigin).port)
    },
    async close() {
      env.release('slow')
      env.releaseRefreshes()
      await closeNow(api)
      await closeNow(auth)
      await store.close()
    },
  }

  await env.startAuth()

  const api: FastifyInstance = Fastify()
  // the raw body is echoed, so a test sees exactly what the retry carried
  api.removeAllContentTypeParsers()
  api.addContentTypeParser('*', { parseAs: 'string' }, (_request, body, done) => done(null, body))
  api.addHook('onRequest', async (request) => {
    const count = countHit(request)
    const hold = (request.query as { hold?: string }).hold
    // only the first try is held: its 401 then arrives after the refresh it would have triggered
    if (hold && count === 1)
      await new Promise<void>((open) => gates.set(hold, [...(gates.get(hold) ?? []), open]))
  })
  api.addHook('onResponse', async (request, reply) => record(request, reply))
  const verifierOptions = {
    jwks: `${authOrigin}/.well-known/jwks.json`,
    issuer: ISSUER,
    // no tolerance: a token is refused from the second it expires on the server's clock
    clockTolerance: 0,
    now: clock.now,
  }
  const verifier = createVerifier({ ...verifierOptions, audience: AUDIENCE })
  // an API configured for another audience: it refuses every token this server issues
  const otherApi = createVerifier({ ...verifierOptions, audience: 'https://other-api.tokenflow.test' })
  const echo = (request: FastifyRequest) => ({
    sub: request.auth?.sub,
    jti: request.auth?.jti,
    body: request.body ?? '',
    contentType: request.headers['content-type'],
  })
  api.get('/api/data', { preHandler: verifier.fastify }, async (request) => echo(request))
  api.post('/api/items', { preHandler: verifier.fastify }, async (request) => echo(request))
  api.get('/api/other', { preHandler: otherApi.fastify }, async (request) => echo(request))
  env.apiOrigin = await api.listen({ port: 0, host: '127.0.0.1' })
  return env
}

const ids = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}${i}`)
const statuses = (results: PromiseSettledResult<Reply>[]) =>
  results.map((result) => (result.status === 'fulfilled' ? result.value.status : 'rejected'))
const loggedOutEvents = (events: TokenEvent[]) => events.filter((event) => event.type === 'loggedOut')

const refreshers: Array<{ name: string; make: (origin: string) => RefreshFunction }> = [
  { name: 'jsonRefresh', make: (origin) => jsonRefresh(`${origin}/refresh/token`) },
  { name: 'oauthRefresh', make: (origin) => oauthRefresh(`${origin}/oauth/token`, { clientId: 'web' }) },
]

describe.each(refreshers)('axios + $name against the real server', ({ make }) => {
  let t: Environment
  beforeEach(async () => {
    t = await startEnvironment()
  })
  afterEach(() => t.close())

  const makeManager = (options: Partial<TokenManagerOptions> = {}) =>
    createTokenManager({ refresh: make(t.authOrigin), lock: false, channel: false, ...options })

  /** a manager logged in over HTTP, its events, and axios through attachTokenRefresh */
  async function client(options: Partial<TokenManagerOptions> = {}, baseUrl = t.apiOrigin) {
    const manager = makeManager(options)
    const tokens = await t.login()
    await manager.setTokens({ accessToken: tokens.accessToken, refreshToken: tokens.refreshToken })
    const events: TokenEvent[] = []
    manager.subscribe((event) => events.push(event))
    return { manager, tokens, events, send: connect(manager, baseUrl) }
  }
  const get = (send: Send, id: string, path = '/api/data') => send(path, { id })

  it('100 concurrent requests on an expired token: 1 refresh, 100 ok', async () => {
    const { send } = await client()
    t.expireOnServer()
    const replies = await Promise.all(ids('r', 100).map((id) => get(send, id)))
    expect(replies.map(({ status }) => status)).toEqual(Array(100).fill(200))
    expect(t.stats()).toEqual({ refreshes: 1, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 })
    expect(t.refreshAttempts).toBe(1)
    expect(t.requests.filter(({ status }) => status === 401)).toHaveLength(100)
    expect(ids('r', 100).map((id) => t.hits(id))).toEqual(Array(100).fill(2))
    // every retry carried the one new token
    expect(new Set(replies.map(({ data }) => data.jti)).size).toBe(1)
  })

  it('two expiries in a row: 2 refreshes, and no request reaches the API more than twice', async () => {
    const { send } = await client()
    t.expireOnServer()
    const first = await Promise.allSettled(ids('a', 30).map((id) => get(send, id)))
    t.expireOnServer()
    const second = await Promise.allSettled(ids('b', 30).map((id) => get(send, id)))
    expect(statuses([...first, ...second])).toEqual(Array(60).fill(200))
    expect(t.stats()).toEqual({ refreshes: 2, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 })
    expect(t.refreshAttempts).toBe(2)
    const hits = [...ids('a', 30), ...ids('b', 30)].map((id) => t.hits(id))
    expect(hits).toEqual(Array(60).fill(2))
    expect(t.requests).toHaveLength(120)
  })

  it('50 requests spread across an expiry: 1 refresh, 0 401s (proactive, leeway 20 s)', async () => {
    // one clock for the client and the server; the token lives 60 s and is refreshed 20 s before it expires
    const { send } = await client({ now: t.clock.now, leeway: 20_000 })
    const replies: Reply[] = []
    for (const id of ids('s', 50)) {
      replies.push(await get(send, id))
      t.clock.advance(1_000)
    }
    expect(replies.map(({ status }) => status)).toEqual(Array(50).fill(200))
    expect(t.requests.filter(({ status }) => status === 401)).toEqual([])
    expect(t.stats().refreshes).toBe(1)
    // the login was at a whole second, so exp is exactly 60 s later: the request made at 40 s is the
    // first one the manager refreshes for, and the first one sent with the new token
    const [firstJti, secondJti] = [replies[0]!.data.jti, replies[40]!.data.jti]
    expect(firstJti).not.toBe(secondJti)
    expect(replies.map(({ data }) => data.jti)).toEqual([
      ...Array(40).fill(firstJti),
      ...Array(10).fill(secondJti),
    ])
  })

  it('slow requests whose 401 arrives after the refresh finished: 0 extra refreshes', async () => {
    const { send, events } = await client()
    t.expireOnServer()
    const slow = ids('slow', 20).map((id) => get(send, id, '/api/data?hold=slow'))
    await vi.waitFor(() => expect(t.held('slow')).toBe(20))
    // a fast request with the same old token gets its 401 first and refreshes
    expect((await get(send, 'fast')).status).toBe(200)
    expect(t.stats().refreshes).toBe(1)
    t.release('slow')
    const replies = await Promise.all(slow)
    expect(replies.map(({ status }) => status)).toEqual(Array(20).fill(200))
    expect(ids('slow', 20).map((id) => t.hits(id))).toEqual(Array(20).fill(2))
    expect(t.refreshAttempts).toBe(1)
    expect(t.stats()).toEqual({ refreshes: 1, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 })
    expect(loggedOutEvents(events)).toEqual([])
  })

  /**
   * A refresh that fails: how, and what every waiting request must see. The refresh is held on the
   * server until all ten 401s have reached the client, then made to fail: every request then waits
   * on that one refresh. (A 401 arriving after a rejected refresh ended the session is passed on as it
   * is, and one arriving after a transient failure starts a new refresh: both are covered by the
   * client's own tests.)
   */
  const failures: Array<{
    name: string
    kind: RefreshErrorKind
    status?: number
    /** refresh requests that reach the server, with retry { attempts: 1 } */
    attempts: number
    logout: boolean
    /** runs while the first refresh is held; resolves to how the held refresh is then handled */
    fail(t: Environment, tokens: TokenPair): Promise<RefreshMode>
    restore(t: Environment): Promise<void>
  }> = [
    {
      name: 'the session was revoked (a logout on another device): 400 invalid_grant',
      kind: 'rejected',
      status: 400,
      attempts: 1,
      logout: true,
      async fail(t, tokens) {
        const out = await postJson(t.authOrigin, '/auth/logout', { refreshToken: tokens.refreshToken })
        expect(out.status).toBe(200)
        return 'ok'
      },
      async restore() {},
    },
    {
      name: 'the server drops the connection',
      kind: 'network',
      attempts: 2,
      logout: false,
      fail: async () => 'drop',
      async restore(t) {
        t.refreshMode = 'ok'
      },
    },
    {
      name: 'the server goes down (the retry is refused), then restarts on the same database',
      kind: 'network',
      attempts: 1,
      logout: false,
      async fail(t) {
        await t.stopAuth()
        return 'drop'
      },
      async restore(t) {
        t.refreshMode = 'ok'
        await t.startAuth()
      },
    },
  ]

  for (const failure of failures) {
    it(`a refresh failing because ${failure.name}: every request gets the same RefreshError (kind "${failure.kind}")`, async () => {
      const { send, manager, events, tokens } = await client({
        refreshTimeout: 2_000,
        retry: { attempts: 1, baseDelay: 10 },
      })
      // the API fetches the JWKS on its first request: it must have it before the auth server goes away
      expect((await get(send, 'warm')).status).toBe(200)
      t.expireOnServer()
      t.refreshMode = 'hold'
      const settled = Promise.allSettled(ids('f', 10).map((id) => get(send, id)))
      await vi.waitFor(() => {
        expect(t.requests.filter(({ id, status }) => id.startsWith('f') && status === 401)).toHaveLength(10)
        expect(t.heldRefreshes()).toBe(1)
      })
      t.releaseRefreshes(await failure.fail(t, tokens))
      const results = await settled
      const reasons = results.map((result) => (result.status === 'rejected' ? result.reason : result.value))
      const error = reasons[0] as RefreshError
      expect(error).toBeInstanceOf(RefreshError)
      expect(error).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: failure.kind })
      if (failure.status !== undefined) expect(error.status).toBe(failure.status)
      for (const reason of reasons) expect(reason).toBe(error)
      expect(t.refreshAttempts).toBe(failure.attempts)
      // each request was sent once: its 401 started the refresh, and the refresh's failure ended it
      expect(ids('f', 10).map((id) => t.hits(id))).toEqual(Array(10).fill(1))
      expect(t.stats()).toMatchObject({ refreshes: 0, reuseDetected: 0 })

      await failure.restore(t)
      if (failure.logout) {
        expect(loggedOutEvents(events)).toEqual([{ type: 'loggedOut', reason: 'refreshRejected', error }])
        expect(manager.status).toBe('unauthenticated')
        // a new login brings everything back
        const again = await t.login()
        await manager.setTokens({ accessToken: again.accessToken, refreshToken: again.refreshToken })
      } else {
        // a transient failure keeps the session: its refresh token was never spent, and now works
        expect(loggedOutEvents(events)).toEqual([])
        expect(manager.status).toBe('authenticated')
      }
      const after = await Promise.allSettled(ids('g', 10).map((id) => get(send, id)))
      expect(statuses(after)).toEqual(Array(10).fill(200))
      expect(t.stats()).toMatchObject({ refreshes: failure.logout ? 0 : 1, reuseDetected: 0 })
      expect(loggedOutEvents(events)).toHaveLength(failure.logout ? 1 : 0)
    })
  }

  it('a refresh whose answer is lost after the server rotated: the retry gets the same successor (grace), 0 reuse', async () => {
    const { send, events } = await client({ retry: { attempts: 1, baseDelay: 10 } })
    t.expireOnServer()
    t.refreshMode = 'lose-next-answer'
    const replies = await Promise.all(ids('l', 10).map((id) => get(send, id)))
    expect(replies.map(({ status }) => status)).toEqual(Array(10).fill(200))
    // the first try rotated; the retry presented the same (now previous) token inside the grace window
    expect(t.refreshAttempts).toBe(2)
    expect(t.stats()).toEqual({ refreshes: 1, graceReplays: 1, reuseDetected: 0, invalidGrants: 0 })
    expect(loggedOutEvents(events)).toEqual([])
    // the successor the client holds is the current one: the next expiry rotates normally
    t.expireOnServer()
    expect((await get(send, 'next')).status).toBe(200)
    expect(t.stats()).toMatchObject({ refreshes: 2, reuseDetected: 0 })
  })

  it('a refresh that times out but completes on the server later: the next refresh gets the same successor, 0 reuse', async () => {
    const { send, manager, events } = await client({
      refreshTimeout: 200,
      retry: { attempts: 1, baseDelay: 10 },
    })
    t.expireOnServer()
    t.refreshMode = 'hold'
    const results = await Promise.allSettled(ids('h', 5).map((id) => get(send, id)))
    const error = (results[0] as PromiseRejectedResult).reason
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ kind: 'timeout' })
    for (const result of results) expect(result).toEqual({ status: 'rejected', reason: error })
    expect(manager.status).toBe('authenticated')
    // the server finally processes both tries: one rotation, one grace replay, answers nobody reads
    await vi.waitFor(() => expect(t.heldRefreshes()).toBe(2))
    t.releaseRefreshes()
    await vi.waitFor(() => expect(t.stats()).toMatchObject({ refreshes: 1, graceReplays: 1 }))
    // the client still holds the token that rotated away: inside the grace window it gets the successor
    expect((await get(send, 'after')).status).toBe(200)
    expect(t.stats()).toEqual({ refreshes: 1, graceReplays: 2, reuseDetected: 0, invalidGrants: 0 })
    expect(loggedOutEvents(events)).toEqual([])
  })

  it('an API that refuses every token (another audience): each request reaches it at most twice', async () => {
    const { send } = await client()
    const replies = await Promise.all(ids('x', 20).map((id) => get(send, id, '/api/other')))
    // the retry's own 401 reaches the app
    for (const reply of replies) {
      expect(reply).toEqual({
        status: 401,
        data: {
          error: 'invalid_token',
          error_description: 'the access token aud claim is invalid',
          code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
        },
      })
    }
    expect(ids('x', 20).map((id) => t.hits(id))).toEqual(Array(20).fill(2))
    expect(t.stats()).toEqual({ refreshes: 1, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 })
  })

  it("a revoked session's access token on the server's own routes: each request sent once, 1 refresh try, loggedOut once", async () => {
    const { send, manager, events, tokens } = await client({}, '')
    const sessions = (id: string) => send(`${t.authOrigin}/auth/sessions`, { id })
    expect((await sessions('before')).status).toBe(200)
    // the user ends every session from another device: the server refuses the access token at once
    const out = await fetch(`${t.authOrigin}/auth/logout-all`, {
      method: 'POST',
      headers: { authorization: `Bearer ${tokens.accessToken}` },
    })
    expect(out.status).toBe(200)
    // the refresh is held until every 401 has arrived, so all ten wait on the one refresh
    t.refreshMode = 'hold'
    const settled = Promise.allSettled(ids('v', 10).map((id) => sessions(id)))
    await vi.waitFor(() => {
      expect(t.requests.filter(({ id, status }) => id.startsWith('v') && status === 401)).toHaveLength(10)
      expect(t.heldRefreshes()).toBe(1)
    })
    t.releaseRefreshes()
    const results = await settled
    for (const { status } of t.requests.filter(({ id }) => id.startsWith('v'))) expect(status).toBe(401)
    const error = (results[0] as PromiseRejectedResult).reason
    expect(error).toMatchObject({ name: 'RefreshError', kind: 'rejected', status: 400 })
    for (const result of results) expect(result).toEqual({ status: 'rejected', reason: error })
    expect(ids('v', 10).map((id) => t.hits(id))).toEqual(Array(10).fill(1))
    expect(t.refreshAttempts).toBe(1)
    expect(t.stats()).toEqual({ refreshes: 0, graceReplays: 0, reuseDetected: 0, invalidGrants: 1 })
    expect(loggedOutEvents(events)).toEqual([{ type: 'loggedOut', reason: 'refreshRejected', error }])
    expect(manager.status).toBe('unauthenticated')
  })

  it('20 concurrent POSTs on an expired token: every body arrives intact (JSON, URLSearchParams, FormData)', async () => {
    const { send } = await client()
    t.expireOnServer()
    const posts = Array.from({ length: 20 }, (_, i) => {
      const id = `p${i}`
      const value = `value ${i}: ünïcode & = + "quotes"`
      const post = (body: unknown) => send('/api/items', { method: 'POST', body, id })
      if (i % 3 === 0) {
        const json = { i, value, list: [i, { nested: true }] }
        return { id, sent: post(json), check: (data: any) => expect(JSON.parse(data.body)).toEqual(json) }
      }
      if (i % 3 === 1) {
        return {
          id,
          sent: post(new URLSearchParams({ i: String(i), value })),
          check: (data: any) => {
            expect(data.contentType).toMatch(/^application\/x-www-form-urlencoded/)
            expect(Object.fromEntries(new URLSearchParams(data.body))).toEqual({ i: String(i), value })
          },
        }
      }
      const form = new FormData()
      form.append('i', String(i))
      form.append('value', value)
      return {
        id,
        sent: post(form),
        check: async (data: any) => {
          expect(data.contentType).toMatch(/^multipart\/form-data; boundary=/)
          const parsed = await new Response(data.body, {
            headers: { 'content-type': data.contentType },
          }).formData()
          expect(Object.fromEntries(parsed)).toEqual({ i: String(i), value })
        },
      }
    })
    const replies = await Promise.all(posts.map(({ sent }) => sent))
    for (const [i, { id, check }] of posts.entries()) {
      expect(replies[i]!.status).toBe(200)
      expect(t.hits(id)).toBe(2) // the first try got 401; the body checked is the retry's
      await check(replies[i]!.data)
    }
    expect(t.stats().refreshes).toBe(1)
  })

  it('requests aborted while they wait for a refresh: each rejects as canceled and is never sent', async () => {
    // proactive: the client's clock says the token expired, so requests wait for the refresh before going out
    const clientClock = createClock(t.clock.now())
    const { send } = await client({ now: clientClock.now })
    clientClock.advance(TTL)
    t.refreshMode = 'hold'
    const queued = ids('q', 10).map((id) => {
      const controller = new AbortController()
      return {
        controller,
        settled: send('/api/data', { id, signal: controller.signal }).then(
          () => undefined,
          (error: unknown) => error,
        ),
      }
    })
    const kept = ids('k', 5).map((id) => get(send, id))
    await vi.waitFor(() => expect(t.heldRefreshes()).toBe(1))
    for (const { controller, settled } of queued) {
      controller.abort(new Error('the user left'))
      const error = await settled
      expect(axios.isCancel(error), String(error)).toBe(true)
    }
    t.releaseRefreshes()
    const replies = await Promise.all(kept)
    expect(replies.map(({ status }) => status)).toEqual(Array(5).fill(200))
    expect(ids('q', 10).map((id) => t.hits(id))).toEqual(Array(10).fill(0))
    expect(t.stats()).toEqual({ refreshes: 1, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 })
  })

  it('two managers sharing one storage and one lock: 1 refresh, 40 ok, 0 reuse detections', async () => {
    const storage = memoryStorage()
    const lock = createTestLock()
    const managers = [makeManager({ storage, lock }), makeManager({ storage, lock })]
    const tokens = await t.login()
    await managers[0]!.setTokens({ accessToken: tokens.accessToken, refreshToken: tokens.refreshToken })
    const events: TokenEvent[] = []
    for (const manager of managers) manager.subscribe((event) => events.push(event))
    const clients = managers.map((manager) => connect(manager, t.apiOrigin))
    // both start out with the same token: the second reads it from the shared storage
    await Promise.all(clients.map((send, i) => get(send, `warm${i}`)))
    t.expireOnServer()
    const results = await Promise.allSettled(
      clients.flatMap((send, i) => ids(`m${i}-`, 20).map((id) => get(send, id))),
    )
    expect(statuses(results)).toEqual(Array(40).fill(200))
    expect(t.refreshAttempts).toBe(1)
    expect(t.stats()).toEqual({ refreshes: 1, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 })
    expect(loggedOutEvents(events)).toEqual([])
    expect(
      events
        .filter((event) => event.type === 'refreshed')
        .map((event) => (event as { source: string }).source)
        .sort(),
    ).toEqual(['local', 'otherTab'])
    expect(lock.held()).toBe(false)
  })
})
