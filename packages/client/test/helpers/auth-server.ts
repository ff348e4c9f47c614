import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

/**
 * A small auth server for the client's scenario tests: NOT @tokenflow/server. It speaks the recipe's
 * protocol (`POST /auth/login`, `POST /refresh/token` with `{ refreshToken }`), issues JWT-shaped access
 * tokens (HS256 over `header.payload`, `exp`/`iat` in seconds) and rotating refresh tokens with reuse
 * detection, and guards `GET/POST /api/*`. Everything it does is counted, and its failures are switchable.
 */

/** How `POST /refresh/token` answers: normally, 500, 401, never (until `close()`), or by dropping the connection. */
export type RefreshMode = 'ok' | 500 | 401 | 'hang' | 'drop'

export interface AuthServerOptions {
  /** ms an access token lives; `exp` is rounded down to whole seconds (RFC 7519) @default 60_000 */
  accessTtl?: number
  /** ms during which the refresh token just rotated away still gets the current one back @default 0 */
  reuseGrace?: number
  /** the server's clock in epoch ms; share it with the manager, or move it alone to expire tokens server-side @default Date.now */
  now?: () => number
  /** the password `POST /auth/login` accepts for any user name @default 'password' */
  password?: string
}

/** What `/auth/login` and `/refresh/token` answer. */
export interface TokenResponse {
  accessToken: string
  refreshToken: string
  tokenType: 'Bearer'
  expiresIn: number
}

/** One request that reached `/api/*`, as the server saw it. */
export interface ReceivedRequest {
  /** the `x-req-id` header */
  id: string | undefined
  method: string
  path: string
  status: number
  /** the counter `n` of the access token it carried, when the token was genuine */
  tokenNumber: number | undefined
  body: string
  contentType: string | undefined
  /** the Authorization header as it arrived, if any */
  authorization: string | undefined
}

export interface AuthServerCounters {
  /** refreshes answered with new tokens */
  refreshes: number
  /** every `POST /refresh/token` received, whatever the answer */
  refreshAttempts: number
  /** 401s sent by `/api/*` */
  unauthorized: number
  /** old refresh tokens presented again: each one revoked its family */
  reuseDetections: number
  logins: number
}

export interface TestAuthServer {
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly counters: AuthServerCounters
  /** every request that reached `/api/*`, in arrival order */
  readonly requests: readonly ReceivedRequest[]
  /** how `POST /refresh/token` answers from now on */
  refreshMode: RefreshMode
  /** when true, `/api/*` answers 401 to every token */
  alwaysUnauthorized: boolean
  /** ms an access token issued from now on lives */
  accessTtl: number
  /** ms during which the refresh token just rotated away still gets the current one back */
  reuseGrace: number
  /** how many requests with this `x-req-id` reached `/api/*` */
  hits(id: string): number
  /** a session for `username`, issued in-process (no HTTP round trip) */
  login(username?: string): TokenResponse
  /** hold every refresh until the returned function is called; the held ones are then answered per `refreshMode` */
  holdRefreshes(): () => void
  /** answer the `/api/*` requests sent with `?hold=<tag>` (only the first try of an `x-req-id` is held); each was judged when it arrived */
  release(tag: string): void
  /** how many `?hold=<tag>` requests are waiting */
  held(tag: string): number
  /** the access token's claims, when the server issued it and its signature holds (ignores expiry) */
  claims(accessToken: string): AccessClaims | undefined
  /** stops listening and destroys every open socket, so hanging requests cannot keep the test runner alive */
  close(): Promise<void>
}

export interface AccessClaims {
  sub: string
  /** the refresh-token family (session) */
  sid: string
  /** a counter over every access token this server issued */
  n: number
  iat: number
  exp: number
}

interface Family {
  sub: string
  current: string
  previous: string | undefined
  rotatedAt: number
  revoked: boolean
}

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', reject)
  })
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.destroyed) return
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  })
  res.end(text)
}

/**
 * Starts the test auth server on 127.0.0.1 and a random port.
 * @example
 * const server = await startTestAuthServer({ accessTtl: 60_000 })
 * const manager = createTokenManager({ refresh: jsonRefresh(`${server.url}/refresh/token`) })
 * await manager.setTokens(server.login('alice'))
 * afterAll(() => server.close())
 */
export async function startTestAuthServer({
  accessTtl = 60_000,
  reuseGrace = 0,
  now = Date.now,
  password = 'password',
}: AuthServerOptions = {}): Promise<TestAuthServer> {
  const secret = randomBytes(32)
  const families = new Map<string, Family>()
  /** refresh token -> its family id */
  const refreshTokens = new Map<string, string>()
  const hits = new Map<string, number>()
  const requests: ReceivedRequest[] = []
  const holds = new Map<string, Array<() => void>>()
  const sockets = new Set<Socket>()
  const timers = new Set<NodeJS.Timeout>()
  const counters: AuthServerCounters = {
    refreshes: 0,
    refreshAttempts: 0,
    unauthorized: 0,
    reuseDetections: 0,
    logins: 0,
  }
  let issued = 0
  let refreshGate: Promise<void> | undefined

  const sign = (input: string) => createHmac('sha256', secret).update(input).digest('base64url')

  function accessToken(sub: string, sid: string): string {
    const issuedAt = now()
    const claims: AccessClaims = {
      sub,
      sid,
      n: ++issued,
      iat: Math.floor(issuedAt / 1000),
      exp: Math.floor((issuedAt + state.accessTtl) / 1000),
    }
    const input = `${b64url({ alg: 'HS256', typ: 'at+jwt' })}.${b64url(claims)}`
    return `${input}.${sign(input)}`
  }

  function claims(token: string): AccessClaims | undefined {
    const parts = token.split('.')
    if (parts.length !== 3) return undefined
    const expected = Buffer.from(sign(`${parts[0]}.${parts[1]}`))
    const actual = Buffer.from(parts[2]!)
    if (expected.length !== actual.length || !timingSafeEqual(expected, actual)) return undefined
    try {
      return JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as AccessClaims
    } catch {
      return undefined
    }
  }

  function newRefreshToken(sid: string): string {
    const token = `rt_${randomBytes(18).toString('base64url')}`
    refreshTokens.set(token, sid)
    return token
  }

  function tokenResponse(sub: string, sid: string, refreshToken: string): TokenResponse {
    return {
      accessToken: accessToken(sub, sid),
      refreshToken,
      tokenType: 'Bearer',
      expiresIn: Math.floor(state.accessTtl / 1000),
    }
  }

  function login(username = 'alice'): TokenResponse {
    counters.logins++
    const sid = randomBytes(8).toString('hex')
    const current = newRefreshToken(sid)
    families.set(sid, { sub: username, current, previous: undefined, rotatedAt: now(), revoked: false })
    return tokenResponse(username, sid, current)
  }

  const invalidGrant = (res: ServerResponse, description: string) =>
    sendJson(
      res,
      400,
      { error: 'invalid_grant', error_description: description },
      { 'cache-control': 'no-store' },
    )

  async function handleRefresh(req: IncomingMessage, res: ServerResponse): Promise<void> {
    counters.refreshAttempts++
    const text = await readBody(req)
    if (refreshGate) await refreshGate
    const mode = state.refreshMode
    if (mode === 'hang') return // answered never; close() destroys the socket
    if (mode === 'drop') {
      req.socket.destroy()
      return
    }
    if (mode === 500) return sendJson(res, 500, { error: 'server_error' })
    if (mode === 401) return sendJson(res, 401, { error: 'invalid_client' })

    let presented: unknown
    try {
      presented = (JSON.parse(text) as { refreshToken?: unknown }).refreshToken
    } catch {
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'body must be JSON' })
    }
    const sid = typeof presented === 'string' ? refreshTokens.get(presented) : undefined
    const family = sid === undefined ? undefined : families.get(sid)
    if (!family || sid === undefined || typeof presented !== 'string')
      return invalidGrant(res, 'unknown refresh token')
    if (family.revoked) return invalidGrant(res, 'refresh token revoked')
    if (presented === family.current) {
      // rotation: the presented token is spent, a new one takes its place
      family.previous = family.current
      family.current = newRefreshToken(sid)
      family.rotatedAt = now()
      counters.refreshes++
      return sendJson(res, 200, tokenResponse(family.sub, sid, family.current), {
        'cache-control': 'no-store',
      })
    }
    if (presented === family.previous && now() - family.rotatedAt < state.reuseGrace) {
      counters.refreshes++
      return sendJson(res, 200, tokenResponse(family.sub, sid, family.current), {
        'cache-control': 'no-store',
      })
    }
    // a spent token came back: someone holds a copy, so the whole family goes (RFC 9700 section 4.14.2)
    family.revoked = true
    counters.reuseDetections++
    return invalidGrant(res, 'refresh token reused')
  }

  async function handleLogin(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let body: { username?: unknown; password?: unknown } = {}
    try {
      body = JSON.parse(await readBody(req)) as typeof body
    } catch {
      // answered below as bad credentials
    }
    if (typeof body.username !== 'string' || body.password !== password) {
      return sendJson(res, 401, { error: 'invalid_credentials' })
    }
    return sendJson(res, 200, login(body.username), { 'cache-control': 'no-store' })
  }

  async function handleApi(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const id = req.headers['x-req-id'] as string | undefined
    if (id !== undefined) hits.set(id, (hits.get(id) ?? 0) + 1)
    const body = await readBody(req)
    if (url.searchParams.has('drop')) {
      req.socket.destroy()
      return
    }
    // judged on arrival: a delayed or held answer tells about the token the request came with
    const authorization = req.headers.authorization
    const token = authorization?.startsWith('Bearer ') ? authorization.slice(7) : undefined
    const verified = token === undefined ? undefined : claims(token)
    const expired = verified !== undefined && verified.exp * 1000 <= now()
    const ok = verified !== undefined && !expired && !state.alwaysUnauthorized
    const forced = Number(url.searchParams.get('status') ?? 200)
    const status = ok ? forced : 401
    const record: ReceivedRequest = {
      id,
      method: req.method ?? 'GET',
      path: url.pathname,
      status,
      tokenNumber: verified?.n,
      body,
      contentType: req.headers['content-type'],
      authorization,
    }
    requests.push(record)

    const delay = Number(url.searchParams.get('delay') ?? 0)
    // only a request's first try is held: its retry carries the same query and should go through
    const tag = id !== undefined && hits.get(id)! > 1 ? null : url.searchParams.get('hold')
    if (delay > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          timers.delete(timer)
          resolve()
        }, delay)
        timers.add(timer)
      })
    }
    if (tag) {
      await new Promise<void>((resolve) => {
        const waiting = holds.get(tag) ?? []
        waiting.push(resolve)
        holds.set(tag, waiting)
      })
    }

    if (status === 401) {
      counters.unauthorized++
      return sendJson(
        res,
        401,
        {
          code:
            verified === undefined
              ? 'ERR_TOKEN_INVALID'
              : expired
                ? 'ERR_TOKEN_EXPIRED'
                : 'ERR_TOKEN_REJECTED',
        },
        { 'www-authenticate': 'Bearer error="invalid_token"' },
      )
    }
    return sendJson(res, status, {
      ok: status < 400,
      sub: verified?.sub,
      tokenNumber: verified?.n,
      method: record.method,
      path: record.path,
      contentType: record.contentType,
      body,
      headers: req.headers,
    })
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1')
    let handled: Promise<void>
    if (req.method === 'POST' && url.pathname === '/refresh/token') handled = handleRefresh(req, res)
    else if (req.method === 'POST' && url.pathname === '/auth/login') handled = handleLogin(req, res)
    else if (url.pathname.startsWith('/api/')) handled = handleApi(req, res, url)
    else handled = Promise.resolve(sendJson(res, 404, { error: 'not_found' }))
    handled.catch((error: unknown) => sendJson(res, 500, { error: 'server_error', detail: String(error) }))
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as AddressInfo

  const state: TestAuthServer = {
    url: `http://127.0.0.1:${port}`,
    counters,
    requests,
    refreshMode: 'ok',
    alwaysUnauthorized: false,
    accessTtl,
    reuseGrace,
    hits: (id) => hits.get(id) ?? 0,
    login,
    holdRefreshes() {
      let open!: () => void
      const gate = new Promise<void>((resolve) => {
        open = resolve
      })
      refreshGate = gate
      return () => {
        if (refreshGate === gate) refreshGate = undefined
        open()
      }
    },
    release(tag) {
      const waiting = holds.get(tag) ?? []
      holds.delete(tag)
      for (const resolve of waiting) resolve()
    },
    held: (tag) => holds.get(tag)?.length ?? 0,
    claims,
    close() {
      for (const timer of timers) clearTimeout(timer)
      for (const socket of sockets) socket.destroy()
      return new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
  return state
}

/**
 * A clock the test moves by hand, to share between the server and a manager (or give to only one of them).
 * @example
 * const clock = createTestClock()
 * clock.advance(61_000) // every access token issued before is now expired
 */
export function createTestClock(start = Date.now()): { now: () => number; advance(ms: number): void } {
  let current = start
  return {
    now: () => current,
    advance(ms) {
      current += ms
    },
  }
}
