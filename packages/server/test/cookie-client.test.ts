/**
 * @tokenflow/client on @tokenflow/server's cookie mode, end to end over real HTTP on 127.0.0.1: the README's
 * cookie recipe, checked against a real `createAuthServer({ cookie: true })`.
 *
 * In cookie mode the refresh token lives in an HttpOnly cookie scoped to /refresh/token, and the JSON answers
 * carry only `{ accessToken, tokenType, expiresIn }`. The manager refreshes only when it holds a refresh
 * token, so the recipe gives it a placeholder, `'cookie'`: the server ignores the body of a cookie-mode
 * refresh, jsonRefresh keeps the current refresh token when an answer has none, and a refresh token equal to
 * the previous one is not a rotation (nothing is marked spent). A page load starts from an expired
 * placeholder access token (`expiresAt: 0`), so the first read refreshes once from the cookie; a missing or
 * dead cookie ends in one `loggedOut`.
 *
 * Time: the server and the manager share one test clock; nothing waits for real seconds to pass.
 */
import {
  createTokenManager,
  isRefreshError,
  jsonRefresh,
  memoryStorage,
  type RefreshError,
  type TokenEvent,
  type TokenManager,
  type TokenManagerOptions,
  type TokenSet,
} from '@tokenflow/client'
import { createAuthFetch } from '@tokenflow/client/fetch'
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { AUDIENCE, ISSUER, PASSWORD } from './helpers/http.js'

/** Access-token lifetime. */
const TTL = 60_000
/** Concurrent requests in a burst. */
const N = 10
/** The server's default cookie name and CSRF header. */
const COOKIE = '__Secure-tokenflow_rt'
const CSRF = { 'x-tokenflow-refresh': '1' }

// the recipe's placeholders: the page never sees the refresh token, and the access token is lost with a reload
const PLACEHOLDER = 'cookie'
const RESTORE: TokenSet = { accessToken: 'reload', refreshToken: PLACEHOLDER, expiresAt: 0 }

/** One cookie as the jar keeps it. */
interface JarCookie {
  value: string
  path: string
  /** epoch ms on the test clock; Infinity for a session cookie */
  expiresAt: number
}

/** What the jar saw go out and come back. */
interface Exchange {
  path: string
  /** the Cookie header it sent */
  cookie: string | undefined
  /** the request body, when it was a string */
  body: string | undefined
  status: number
  setCookie: string[]
}

interface CookieJar {
  /** fetch with the jar: sends the cookies whose path covers the URL, stores what Set-Cookie says */
  fetch: typeof fetch
  get(name: string): JarCookie | undefined
  /** every value a cookie ever had in this jar */
  readonly seen: Set<string>
  readonly log: Exchange[]
  /** told of each exchange once its answer arrived */
  onExchange: ((exchange: Exchange) => void) | undefined
}

/**
 * A browser's cookie jar, only as big as these tests need (Node's fetch keeps no cookies). It honours a
 * Set-Cookie's name and value, `Path` (default: the request path's directory), `Max-Age` (which wins) and
 * `Expires`; an expiry in the past deletes the cookie. A cookie goes only to paths its path covers (RFC 6265
 * section 5.1.4). One host, so `Domain` is ignored and cookies are keyed by name. `Secure` is ignored too:
 * the server's Secure cookie is stored and sent over http://127.0.0.1, where a browser may refuse it. That
 * is fine in a test: TLS would add nothing to what is tested, which is what the client does with the cookie.
 */
function createCookieJar(now: () => number): CookieJar {
  const cookies = new Map<string, JarCookie>()
  const seen = new Set<string>()
  const log: Exchange[] = []
  const covers = (cookiePath: string, path: string) =>
    path === cookiePath ||
    (path.startsWith(cookiePath) && (cookiePath.endsWith('/') || path[cookiePath.length] === '/'))

  const store = (line: string, url: URL) => {
    const [pair = '', ...attributes] = line.split(';')
    const eq = pair.indexOf('=')
    if (eq < 1) return
    const name = pair.slice(0, eq).trim()
    const value = pair.slice(eq + 1).trim()
    let path = url.pathname.slice(0, Math.max(1, url.pathname.lastIndexOf('/')))
    let maxAge: number | undefined
    let expires: number | undefined
    for (const attribute of attributes) {
      const at = attribute.indexOf('=')
      const key = (at < 0 ? attribute : attribute.slice(0, at)).trim().toLowerCase()
      const text = at < 0 ? '' : attribute.slice(at + 1).trim()
      if (key === 'path' && text.startsWith('/')) path = text
      else if (key === 'max-age' && /^-?\d+$/.test(text)) maxAge = Number(text)
      else if (key === 'expires' && !Number.isNaN(Date.parse(text))) expires = Date.parse(text)
    }
    const expiresAt = maxAge === undefined ? (expires ?? Infinity) : now() + maxAge * 1000
    if (expiresAt <= now()) cookies.delete(name)
    else {
      cookies.set(name, { value, path, expiresAt })
      seen.add(value)
    }
  }

  const get = (name: string) => {
    const cookie = cookies.get(name)
    if (cookie && cookie.expiresAt <= now()) cookies.delete(name)
    return cookies.get(name)
  }

  const jarFetch: typeof fetch = async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : input)
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined))
    const cookie =
      [...cookies.keys()]
        .map((name) => [name, get(name)] as const)
        .filter(([, value]) => value && covers(value.path, url.pathname))
        .map(([name, value]) => `${name}=${value!.value}`)
        .join('; ') || undefined
    if (cookie) headers.set('cookie', cookie)
    const response = await fetch(input, { ...init, headers })
    const setCookie = response.headers.getSetCookie()
    for (const line of setCookie) store(line, url)
    const body = typeof init?.body === 'string' ? init.body : undefined
    const exchange = { path: url.pathname, cookie, body, status: response.status, setCookie }
    log.push(exchange)
    jar.onExchange?.(exchange)
    return response
  }

  const jar: CookieJar = { fetch: jarFetch, get, seen, log, onExchange: undefined }
  return jar
}

/** A request as the server saw it. */
interface Hit {
  method: string
  path: string
  cookie: string | undefined
  csrf: string | undefined
  authorization: string | undefined
  status: number
  /** the answer's body */
  body: string
}

let time = 0
const clock = () => time
let store: TokenStore
let app: AuthServer
let origin = ''
let hits: Hit[] = []
/** how many of the next refreshes fail with a real 500 (the store's session lookup throws) */
let failRefreshes = 0
let storeDown = false
/** while set, refreshes wait for it once their request arrived */
let holdRefresh: Promise<void> | undefined

beforeEach(async () => {
  // whole seconds: `iat` and `exp` have 1 s resolution
  time = Math.floor(Date.now() / 1000) * 1000
  hits = []
  failRefreshes = 0
  storeDown = false
  holdRefresh = undefined
  store = createSqliteStore({ filename: ':memory:' })
  // the server's own error path: the session lookup of a refresh throws, the route answers 500
  const flaky = new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver)
      if (property === 'getSession' && storeDown)
        return async () => Promise.reject(new Error('database is down'))
      return typeof value === 'function' ? value.bind(target) : value
    },
  })
  app = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    clientId: 'web',
    store: flaky,
    cookie: true,
    accessTokenTtl: TTL,
    rateLimit: false,
    pruneInterval: 0,
    // a plain credential check keeps Argon2 out of every login
    authenticate: async ({ username, password }) => (password === PASSWORD ? { userId: username } : null),
    now: clock,
  })
  app.addHook('onRequest', async (request) => {
    // only refreshes meet the broken store, and no other request runs while a refresh does
    if (request.url === '/refresh/token' && failRefreshes > 0) {
      failRefreshes--
      storeDown = true
    }
  })
  app.addHook('preHandler', async (request) => {
    if (request.url === '/refresh/token' && holdRefresh) await holdRefresh
  })
  app.addHook('onSend', async (request, reply, payload) => {
    const header = (name: string) => {
      const value = request.headers[name]
      return typeof value === 'string' ? value : undefined
    }
    hits.push({
      method: request.method,
      path: request.url,
      cookie: header('cookie'),
      csrf: header('x-tokenflow-refresh'),
      authorization: header('authorization'),
      status: reply.statusCode,
      body: typeof payload === 'string' ? payload : '',
    })
    storeDown = false
    return payload
  })
  origin = await app.listen({ port: 0, host: '127.0.0.1' })
})

afterEach(async () => {
  await app.close()
  await store.close()
})

const hitsTo = (path: string) => hits.filter((hit) => hit.path === path)
const refreshHits = () => hitsTo('/refresh/token')
const types = (events: TokenEvent[]) => events.map((event) => event.type)
const times = <T>(count: number, make: () => T) => Array.from({ length: count }, make)

/** A page with the README recipe: its manager, an auth fetch on it, and what the manager told. */
interface Page {
  manager: TokenManager
  authFetch: typeof fetch
  events: TokenEvent[]
  /** GET /auth/sessions, a route behind the Bearer token */
  api(): Promise<Response>
}

/**
 * Opens a page with the README's cookie recipe. The only differences: absolute URLs, the jar's fetch (a
 * browser's own fetch keeps the cookies) and the test clock.
 */
function openPage(jar: CookieJar, options: Partial<TokenManagerOptions> = {}): Page {
  const manager = createTokenManager({
    refresh: jsonRefresh(`${origin}/refresh/token`, { headers: CSRF, fetch: jar.fetch }),
    storage: memoryStorage(RESTORE),
    now: clock,
    ...options,
  })
  const events: TokenEvent[] = []
  manager.subscribe((event) => events.push(event))
  const authFetch = createAuthFetch(manager, { fetch: jar.fetch })
  return { manager, authFetch, events, api: () => authFetch(`${origin}/auth/sessions`) }
}

/** POST /auth/login through the jar: the cookie is set, the body has the access token only. */
async function login(jar: CookieJar): Promise<string> {
  const response = await jar.fetch(`${origin}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'ada', password: PASSWORD }),
  })
  expect(response.status).toBe(200)
  const body = (await response.json()) as { accessToken: string }
  expect(Object.keys(body)).toEqual(['accessToken', 'tokenType', 'expiresIn'])
  expect(jar.get(COOKIE)).toMatchObject({
    value: expect.stringMatching(/^[A-Za-z0-9_-]{52}$/),
    path: '/refresh/token',
  })
  return body.accessToken
}

/** The recipe's logout: end the cookie's session (the cookie is cleared), then the page's. */
async function logout(page: Page, jar: CookieJar): Promise<void> {
  const response = await jar.fetch(`${origin}/refresh/token/logout`, { method: 'POST', headers: CSRF })
  expect(response.status).toBe(200)
  await page.manager.clear()
}

/** The settled burst: every response, or the one error they all rejected with. */
async function settle(promises: Array<Promise<unknown>>) {
  const results = await Promise.allSettled(promises)
  return {
    values: results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : [])),
    errors: results.flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : [])),
  }
}

/** The one RefreshError every request of a burst rejected with (the same instance, not a copy each). */
function oneRefreshError(
  { values, errors }: Awaited<ReturnType<typeof settle>>,
  count: number,
  expected: { kind: RefreshError['kind']; status: number },
): RefreshError {
  expect(values).toEqual([])
  expect(errors).toHaveLength(count)
  const error = errors[0] as RefreshError
  expect(isRefreshError(error)).toBe(true)
  expect(error).toMatchObject({ name: 'RefreshError', code: 'ERR_REFRESH_FAILED', ...expected })
  expect(errors.every((each) => each === error)).toBe(true)
  return error
}

const jwt = /^ey[\w-]+\.[\w-]+\.[\w-]+$/

/** No refresh token ever travels in a body, either way: the only one sent is the placeholder. */
function expectNoRefreshTokenInBodies(jar: CookieJar) {
  expect(jar.seen.size).toBeGreaterThan(0)
  for (const value of jar.seen) {
    for (const hit of hits) expect(hit.body).not.toContain(value)
    for (const exchange of jar.log) expect(exchange.body ?? '').not.toContain(value)
  }
  for (const hit of hits) expect(hit.body).not.toMatch(/refresh_?token/i)
  for (const exchange of jar.log.filter((sent) => sent.path === '/refresh/token'))
    expect(exchange.body).toBe(JSON.stringify({ refreshToken: PLACEHOLDER }))
}

/** The placeholder access token never reaches the server as a Bearer token. */
function expectPlaceholderNeverSent() {
  for (const hit of hits) expect(hit.authorization).not.toBe(`Bearer ${RESTORE.accessToken}`)
}

describe('the cookie recipe: login, requests, expiry', () => {
  it('refreshes once from the cookie, with the CSRF header, for N concurrent requests after the expiry', async () => {
    const jar = createCookieJar(clock)
    const page = openPage(jar)
    const accessToken = await login(jar)
    const loginCookie = jar.get(COOKIE)!.value
    await page.manager.setTokens({ accessToken, refreshToken: PLACEHOLDER })

    const before = await Promise.all(times(3, page.api))
    expect(before.map((response) => response.status)).toEqual([200, 200, 200])
    expect(refreshHits()).toHaveLength(0)

    time += TTL + 1_000
    const burst = await Promise.all(times(N, page.api))
    expect(burst.map((response) => response.status)).toEqual(times(N, () => 200))
    expect(app.tokenflow.issuer.stats.refreshes).toBe(1)
    expect(refreshHits()).toEqual([
      expect.objectContaining({ method: 'POST', cookie: `${COOKIE}=${loginCookie}`, csrf: '1', status: 200 }),
    ])
    expect(Object.keys(JSON.parse(refreshHits()[0]!.body))).toEqual(['accessToken', 'tokenType', 'expiresIn'])
    expect(types(page.events)).toEqual(['refreshStarted', 'refreshed'])
    const refreshed = page.events[1] as Extract<TokenEvent, { type: 'refreshed' }>
    expect(refreshed).toMatchObject({ source: 'local', tokens: { refreshToken: PLACEHOLDER } })
    expect(refreshed.tokens.accessToken).toMatch(jwt)
    expect(refreshed.tokens.accessToken).not.toBe(accessToken)

    // the burst went out with the new token only; the cookie never left its path
    const api = hitsTo('/auth/sessions')
    expect(api.slice(0, 3).map((hit) => hit.authorization)).toEqual(times(3, () => `Bearer ${accessToken}`))
    expect(api.slice(3).map((hit) => hit.authorization)).toEqual(
      times(N, () => `Bearer ${refreshed.tokens.accessToken}`),
    )
    expect(api.every((hit) => hit.cookie === undefined)).toBe(true)
    expect(hitsTo('/auth/login')[0]!.cookie).toBeUndefined()

    // the server rotated the cookie; the placeholder stayed, and the rotated cookie refreshes next time
    const rotated = jar.get(COOKIE)!.value
    expect(rotated).not.toBe(loginCookie)
    time += TTL + 1_000
    expect((await page.api()).status).toBe(200)
    expect(refreshHits()).toHaveLength(2)
    expect(refreshHits()[1]).toMatchObject({ cookie: `${COOKIE}=${rotated}`, csrf: '1', status: 200 })
    expect(app.tokenflow.issuer.stats).toMatchObject({ refreshes: 2, reuseDetected: 0, invalidGrants: 0 })
    expect(types(page.events)).toEqual(['refreshStarted', 'refreshed', 'refreshStarted', 'refreshed'])
    expect(page.manager.status).toBe('authenticated')
    expectNoRefreshTokenInBodies(jar)
  })
})

describe('the cookie recipe: a reload restores the session from the cookie', () => {
  const restores: Array<[string, (jar: CookieJar) => Promise<Page>]> = [
    // the recipe: every page load starts from the expired placeholder
    ['memoryStorage(RESTORE)', async (jar) => openPage(jar)],
    // the same, handed over after the manager was made
    [
      'setTokens(RESTORE)',
      async (jar) => {
        const page = openPage(jar, { storage: memoryStorage() })
        await page.manager.setTokens(RESTORE)
        return page
      },
    ],
  ]

  it.each(restores)('%s: one refresh for the restore and N requests at once', async (_name, reload) => {
    const jar = createCookieJar(clock)
    const first = openPage(jar)
    await first.manager.setTokens({ accessToken: await login(jar), refreshToken: PLACEHOLDER })
    expect((await first.api()).status).toBe(200)
    const loginCookie = jar.get(COOKIE)!.value

    // a reload: the page's memory is gone, the browser's cookie is not (the old access token is still valid)
    const page = await reload(jar)
    const { values, errors } = await settle([page.manager.getAccessToken(), ...times(N, page.api)])
    expect(errors).toEqual([])
    const [restored, ...responses] = values as [string, ...Response[]]
    expect(restored).toMatch(jwt)
    expect(responses.map((response) => response.status)).toEqual(times(N, () => 200))
    expect(refreshHits()).toEqual([
      expect.objectContaining({ cookie: `${COOKIE}=${loginCookie}`, csrf: '1', status: 200 }),
    ])
    expect(
      hitsTo('/auth/sessions')
        .slice(1)
        .map((hit) => hit.authorization),
    ).toEqual(times(N, () => `Bearer ${restored}`))
    expect(types(page.events)).toEqual(['refreshStarted', 'refreshed'])
    expect(page.manager.status).toBe('authenticated')
    expectPlaceholderNeverSent()
    expectNoRefreshTokenInBodies(jar)

    // and the restored session goes on refreshing with the rotated cookie
    time += TTL + 1_000
    expect((await page.api()).status).toBe(200)
    expect(refreshHits()).toHaveLength(2)
    expect(app.tokenflow.issuer.stats).toMatchObject({ refreshes: 2, reuseDetected: 0 })
  })
})

describe('the cookie recipe: a reload after the session ended', () => {
  const endings: Array<[string, (jar: CookieJar) => Promise<{ cookieSent: boolean }>]> = [
    [
      'logged out at POST /refresh/token/logout',
      async (jar) => {
        const page = openPage(jar)
        const accessToken = await login(jar)
        await page.manager.setTokens({ accessToken, refreshToken: PLACEHOLDER })
        await logout(page, jar)
        expect(types(page.events)).toEqual(['loggedOut'])
        expect(page.events[0]).toEqual({ type: 'loggedOut', reason: 'cleared' })
        // the server ended the session: its access token is refused too
        const old = await fetch(`${origin}/auth/sessions`, {
          headers: { authorization: `Bearer ${accessToken}` },
        })
        expect(old.status).toBe(401)
        // and the cookie is gone from the browser
        expect(jar.get(COOKIE)).toBeUndefined()
        return { cookieSent: false }
      },
    ],
    [
      'revoked elsewhere (logout-all), the cookie still in the browser',
      async (jar) => {
        await login(jar)
        await app.tokenflow.issuer.logoutAll('ada')
        expect(jar.get(COOKIE)).toBeDefined()
        return { cookieSent: true }
      },
    ],
    ['never logged in', async () => ({ cookieSent: false })],
  ]

  it.each(endings)(
    '%s: the restore rejects once (kind rejected), loggedOut once, requests reject with it',
    async (_name, end) => {
      const jar = createCookieJar(clock)
      const { cookieSent } = await end(jar)
      const before = hits.length

      const page = openPage(jar)
      const settled = await settle([page.manager.getAccessToken(), ...times(N, page.api)])
      const error = oneRefreshError(settled, N + 1, { kind: 'rejected', status: 400 })
      expect(page.events).toEqual([
        { type: 'refreshStarted' },
        { type: 'refreshFailed', error, willLogout: true },
        { type: 'loggedOut', reason: 'refreshRejected', error },
      ])

      // one refresh reached the server, and no request at all: they waited for it and rejected with it
      const after = hits.slice(before)
      expect(after).toHaveLength(1)
      expect(after[0]).toMatchObject({ path: '/refresh/token', csrf: '1', status: 400 })
      expect(JSON.parse(after[0]!.body)).toMatchObject({ error: 'invalid_grant', code: 'ERR_INVALID_GRANT' })
      expect(after[0]!.cookie === undefined).toBe(!cookieSent)
      // the server cleared a dead cookie; the browser holds none now
      expect(jar.get(COOKIE)).toBeUndefined()
      expect(page.manager.status).toBe('unauthenticated')

      // afterwards: nobody is logged in; a request goes out without a token and its 401 is passed through
      await expect(page.manager.getAccessToken()).resolves.toBeNull()
      const later = await page.api()
      expect(later.status).toBe(401)
      expect(later.headers.get('www-authenticate')).toMatch(/^Bearer/)
      expect(hits.slice(before + 1)).toEqual([
        expect.objectContaining({ path: '/auth/sessions', authorization: undefined, status: 401 }),
      ])
      expect(page.events).toHaveLength(3)
      expectPlaceholderNeverSent()

      // the login page then starts a new session on the same manager
      await page.manager.setTokens({ accessToken: await login(jar), refreshToken: PLACEHOLDER })
      expect((await page.api()).status).toBe(200)
      time += TTL + 1_000
      expect((await page.api()).status).toBe(200)
      expect(app.tokenflow.issuer.stats.reuseDetected).toBe(0)
      expectNoRefreshTokenInBodies(jar)
    },
  )

  it('a live page whose session was revoked: the 401s share one refresh, which rejects them all and logs out once', async () => {
    const jar = createCookieJar(clock)
    const page = openPage(jar)
    await page.manager.setTokens({ accessToken: await login(jar), refreshToken: PLACEHOLDER })
    expect((await page.api()).status).toBe(200)
    await app.tokenflow.issuer.logoutAll('ada')

    // the refresh answers once every request's 401 has reached the page: each of them is then waiting for it.
    // (A 401 that arrives after the refresh failed finds nobody logged in, and is passed through as it is)
    let release = () => {}
    holdRefresh = new Promise((resolve) => {
      release = resolve
    })
    let refused = 0
    jar.onExchange = (exchange) => {
      if (exchange.path === '/auth/sessions' && exchange.status === 401 && ++refused === N) release()
    }
    const error = oneRefreshError(await settle(times(N, page.api)), N, { kind: 'rejected', status: 400 })
    expect(refreshHits()).toHaveLength(1)
    expect(
      hitsTo('/auth/sessions')
        .slice(1)
        .map((hit) => hit.status),
    ).toEqual(times(N, () => 401))
    expect(page.events.filter((event) => event.type === 'loggedOut')).toEqual([
      { type: 'loggedOut', reason: 'refreshRejected', error },
    ])
    expect(jar.get(COOKIE)).toBeUndefined()
  })
})

describe('the cookie recipe: a 5xx from the refresh', () => {
  it('keeps the session and the cookie; the next refresh works with the same cookie', async () => {
    const jar = createCookieJar(clock)
    const page = openPage(jar, { retry: false })
    await page.manager.setTokens({ accessToken: await login(jar), refreshToken: PLACEHOLDER })
    const cookie = jar.get(COOKIE)!.value
    time += TTL + 1_000

    failRefreshes = 1
    const error = oneRefreshError(await settle(times(N, page.api)), N, { kind: 'server', status: 500 })
    expect(page.events).toEqual([
      { type: 'refreshStarted' },
      { type: 'refreshFailed', error, willLogout: false },
    ])
    expect(page.manager.status).toBe('authenticated')
    expect(refreshHits()).toEqual([expect.objectContaining({ cookie: `${COOKIE}=${cookie}`, status: 500 })])
    expect(JSON.parse(refreshHits()[0]!.body)).toMatchObject({ error: 'server_error' })
    // no Set-Cookie came back: the browser keeps the cookie as it was
    expect(jar.log.filter((sent) => sent.path === '/refresh/token').map((sent) => sent.setCookie)).toEqual([
      [],
    ])
    expect(jar.get(COOKIE)?.value).toBe(cookie)
    expect(hitsTo('/auth/sessions')).toEqual([])

    const next = await page.api()
    expect(next.status).toBe(200)
    expect(refreshHits()).toHaveLength(2)
    expect(refreshHits()[1]).toMatchObject({ cookie: `${COOKIE}=${cookie}`, csrf: '1', status: 200 })
    expect(jar.get(COOKIE)?.value).not.toBe(cookie)
    expect(types(page.events)).toEqual(['refreshStarted', 'refreshFailed', 'refreshStarted', 'refreshed'])
    expect(app.tokenflow.issuer.stats).toMatchObject({ refreshes: 1, reuseDetected: 0, invalidGrants: 0 })
    expectNoRefreshTokenInBodies(jar)
  })

  it("fails a reload's restore with kind 'server' and keeps the placeholder session: the next read restores it", async () => {
    const jar = createCookieJar(clock)
    await login(jar)
    const page = openPage(jar, { retry: false })
    failRefreshes = 1
    const failed = await page.manager.getAccessToken().catch((error: unknown) => error)
    expect(failed).toMatchObject({ name: 'RefreshError', kind: 'server', status: 500 })
    expect(types(page.events)).toEqual(['refreshStarted', 'refreshFailed'])
    expect(page.manager.status).toBe('authenticated')
    await expect(page.manager.getAccessToken()).resolves.toMatch(jwt)
    expect(refreshHits().map((hit) => hit.status)).toEqual([500, 200])
    expect(types(page.events)).toEqual(['refreshStarted', 'refreshFailed', 'refreshStarted', 'refreshed'])
    expectPlaceholderNeverSent()
  })

  it("is retried by the manager's own retry, with the same cookie, and no request sees it", async () => {
    const jar = createCookieJar(clock)
    // no backoff wait: the retry follows at once
    const page = openPage(jar, { retry: { attempts: 1, baseDelay: 0 } })
    await page.manager.setTokens({ accessToken: await login(jar), refreshToken: PLACEHOLDER })
    const cookie = jar.get(COOKIE)!.value
    time += TTL + 1_000
    failRefreshes = 1
    const responses = await Promise.all(times(N, page.api))
    expect(responses.map((response) => response.status)).toEqual(times(N, () => 200))
    expect(refreshHits()).toEqual([
      expect.objectContaining({ cookie: `${COOKIE}=${cookie}`, status: 500 }),
      expect.objectContaining({ cookie: `${COOKIE}=${cookie}`, status: 200 }),
    ])
    expect(types(page.events)).toEqual(['refreshStarted', 'refreshed'])
  })
})

describe('without the recipe (the gap it closes)', () => {
  it('a session without a refresh token stops at the first expiry with no refresh and no loggedOut; a reload has nothing', async () => {
    const jar = createCookieJar(clock)
    const page = openPage(jar, { storage: memoryStorage() })
    await page.manager.setTokens({ accessToken: await login(jar) })
    expect((await page.api()).status).toBe(200)

    time += TTL + 1_000
    // the expired token is not sent; the request goes out without one and its 401 is passed through
    const response = await page.api()
    expect(response.status).toBe(401)
    expect(hitsTo('/auth/sessions').at(-1)!.authorization).toBeUndefined()
    expect(refreshHits()).toEqual([])
    // the app is not told: the session just stops
    expect(page.events).toEqual([])
    expect(page.manager.status).toBe('unauthenticated')
    await expect(page.manager.getAccessToken()).resolves.toBeNull()
    await expect(page.manager.refresh()).rejects.toMatchObject({
      name: 'TokenflowError',
      code: 'ERR_NO_REFRESH_TOKEN',
    })

    // a reload: nothing to start from, no refresh either
    const reloaded = openPage(jar, { storage: memoryStorage() })
    await expect(reloaded.manager.getAccessToken()).resolves.toBeNull()
    expect(refreshHits()).toEqual([])

    // yet the cookie's session was alive all along: the recipe's placeholder picks it up
    const restored = openPage(jar)
    await expect(restored.manager.getAccessToken()).resolves.toMatch(jwt)
    expect(refreshHits()).toEqual([expect.objectContaining({ csrf: '1', status: 200 })])
  })
})

describe('the cookie recipe in several tabs', () => {
  it('with a channel, one refresh serves both tabs and a logout in one ends the other', async () => {
    const jar = createCookieJar(clock)
    // memoryStorage is each tab's own, so the channel is off unless named
    const channel = `tokenflow-cookie-${process.pid}-${time}`
    const a = openPage(jar, { channel })
    const b = openPage(jar, { channel })
    const next = (page: Page, type: TokenEvent['type']) =>
      new Promise<TokenEvent>((resolve) => {
        const stop = page.manager.subscribe((event) => {
          if (event.type !== type) return
          stop()
          resolve(event)
        })
      })

    const loggedIn = next(b, 'refreshed')
    await a.manager.setTokens({ accessToken: await login(jar), refreshToken: PLACEHOLDER })
    await loggedIn
    time += TTL + 1_000
    const adopted = next(b, 'refreshed')
    expect((await a.api()).status).toBe(200)
    expect(await adopted).toMatchObject({ source: 'otherTab', tokens: { refreshToken: PLACEHOLDER } })
    expect((await b.api()).status).toBe(200)
    expect(refreshHits()).toHaveLength(1)

    const ended = next(b, 'loggedOut')
    await logout(a, jar)
    expect(await ended).toEqual({ type: 'loggedOut', reason: 'otherTab' })
    await expect(b.manager.getAccessToken()).resolves.toBeNull()
    expect(refreshHits()).toHaveLength(1)
  })
})
