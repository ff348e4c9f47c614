import { type IncomingMessage, STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import fastifyCookie from '@fastify/cookie'
import Fastify, {
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify'
import { AuthError, isAuthError } from './errors.js'
import { type AuthenticateFunction, createIssuer, type Issuer, type IssuerEvent } from './issuer.js'
import { createKeyring, type Keyring, type SigningAlgorithm } from './keys.js'
import { isLoopbackHost } from './loopback.js'
import { connectRedis, createRateLimiter, type RateLimiter, type RedisLike } from './rate-limit.js'
import { authRoutes, type RefreshCookie } from './routes/auth.js'
import { authenticateRequest, sendAuthError, sendError } from './routes/http.js'
import { oauthRoutes } from './routes/oauth.js'
import { sessionRoutes } from './routes/sessions.js'
import { wellKnownRoutes } from './routes/well-known.js'
import { createSqliteStore } from './stores/sqlite.js'
import type { TokenStore } from './stores/store.js'

/**
 * Cookie mode: the refresh token lives in an HttpOnly, Secure, SameSite=Strict cookie.
 * @example
 * createAuthServer({ issuer, audience, cookie: { csrfHeader: 'x-requested-with' } })
 */
export interface CookieOptions {
  /**
   * Cookie name. The `__Secure-` prefix makes browsers refuse it without `Secure`; `__Host-` would
   * also demand `Path=/`, which would send the token with every request.
   * @default '__Secure-tokenflow_rt'
   */
  name?: string | undefined
  /**
   * Cookie path: the browser sends the cookie only to the refresh route.
   * @default '/refresh/token'
   */
  path?: string | undefined
  /** cookie domain; leave unset to bind the cookie to the exact host */
  domain?: string | undefined
  /**
   * A header a cookie-mode refresh must carry (any non-empty value), against CSRF.
   * @default 'x-tokenflow-refresh'
   */
  csrfHeader?: string | undefined
}

/**
 * Login rate limits. Each window counts attempts, successful or not.
 * @example
 * createAuthServer({ issuer, audience, rateLimit: { perAccount: 5, perIp: 100 } })
 */
export interface LoginRateLimitOptions {
  /**
   * A Redis client you already have (ioredis, or anything `RedisLike`) to count in, instead of opening
   * one from `redisUrl`. You own it: the server does not close it.
   */
  redis?: RedisLike | undefined
  /**
   * Login attempts per account (case-folded username) per window.
   * @default 10
   */
  perAccount?: number | undefined
  /**
   * Login attempts per client IP per window (see `trustProxy` behind a proxy).
   * @default 50
   */
  perIp?: number | undefined
  /**
   * Window length in ms.
   * @default 60_000
   */
  window?: number | undefined
}

/**
 * Fastify's pino logger options (`level`, `stream`, `redact`, …).
 * @example
 * createAuthServer({ issuer, audience, logger: { level: 'warn' } })
 */
export type LoggerOptions = Exclude<FastifyServerOptions['logger'], boolean | undefined>

/**
 * Options of `createAuthServer`. Durations are in ms.
 * @example
 * const options: AuthServerOptions = { issuer: 'https://auth.example.com', audience: 'https://api.example.com', reuseGrace: 5_000 }
 */
export interface AuthServerOptions {
  /** `iss` of the access tokens, and the base URL of the endpoints in the RFC 8414 metadata */
  issuer: string
  /** `aud` of the access tokens: the API(s) that accept them */
  audience: string | string[]
  /**
   * `client_id` of the access tokens, and the one client `/oauth/token` serves.
   * @default 'tokenflow'
   */
  clientId?: string | undefined
  /**
   * Access-token lifetime.
   * @default 900_000 (15 min)
   */
  accessTokenTtl?: number | undefined
  /**
   * Absolute session lifetime: rotation does not extend it.
   * @default 2_592_000_000 (30 days)
   */
  refreshTokenTtl?: number | undefined
  /**
   * A session unused this long is dead.
   * @default 604_800_000 (7 days)
   */
  refreshIdleTimeout?: number | undefined
  /**
   * How long the previous refresh token still gets the byte-identical current one back (a request that
   * raced the rotation and lost gets it back however long the rotation took). `0` turns the grace off.
   * @default 10_000
   */
  reuseGrace?: number | undefined
  /**
   * The most live sessions one user may hold: a login beyond it revokes the user's least recently used
   * sessions, at most 16 per login (a user far over the cap comes down over several logins). `Infinity`
   * turns the cap off.
   * @default 100
   */
  maxSessionsPerUser?: number | undefined
  /**
   * Where users, sessions and signing keys live. It is migrated on start; a store you pass is
   * not closed with the server.
   * @default createSqliteStore() (./tokenflow.db)
   */
  store?: TokenStore | undefined
  /**
   * Signing keys: the algorithm of generated keys and how long a rotated-in key is published before it
   * signs (see `KeyringOptions`), or your own `Keyring`.
   * @default { alg: 'ES256', activationDelay: 120_000 }
   */
  keys?: { alg?: SigningAlgorithm | undefined; activationDelay?: number | undefined } | Keyring | undefined
  /** replaces the built-in users table (Argon2id) with your own credential check */
  authenticate?: AuthenticateFunction | undefined
  /**
   * Cookie mode for browsers: `true` for the defaults. The refresh token is then never in the body of
   * `/auth/login` or `/refresh/token` (`/oauth/token`, for OAuth clients, keeps it in its body).
   * @default false
   */
  cookie?: boolean | CookieOptions | undefined
  /**
   * Login rate limits, or `false` to turn them off.
   * @default { perAccount: 10, perIp: 50, window: 60_000 }
   */
  rateLimit?: LoginRateLimitOptions | false | undefined
  /** keep rate-limit counters in Redis, shared by every instance (needs the optional peer `ioredis`) */
  redisUrl?: string | undefined
  /**
   * Logging through Fastify's pino. Tokens, passwords, cookies and `Authorization` are always redacted.
   * @default false
   */
  logger?: boolean | LoggerOptions | undefined
  /**
   * Fastify's `trustProxy`: behind a reverse proxy, set it so rate limits see the client's IP. Name the
   * proxy's addresses (`'10.0.0.0/8'`, `['127.0.0.1', '::1']`) or pass a function; a hop count (a number,
   * or a string of digits) is refused with `ERR_CONFIG`: Fastify 5 trusts no hop for it, so every client would
   * share the proxy's per-IP login budget. `true` is refused too: a client writes the first X-Forwarded-For
   * entry, and would choose its own budget. An address or range that is not one is refused with `ERR_CONFIG`.
   * @default false
   */
  trustProxy?: FastifyServerOptions['trustProxy'] | undefined
  /**
   * Delete expired, revoked and idle sessions this often; 0 turns it off.
   * @default 3_600_000 (1 hour)
   */
  pruneInterval?: number | undefined
  /** called for each issuer event (login, refresh, reuse detected, …) */
  onEvent?: ((event: IssuerEvent) => void) | undefined
  /** clock, epoch ms */
  now?: (() => number) | undefined
}

/**
 * What `createAuthServer` adds to the Fastify instance, at `app.tokenflow`. Its methods need the store
 * migrated: call them after `await app.ready()` (or `listen()`).
 * @example
 * await app.ready()
 * await app.tokenflow.rotateKeys()
 */
export interface TokenflowHandle {
  /** the server's issuer: users, logins, sessions (see `Issuer`) */
  issuer: Issuer
  /** the server's signing keys */
  keyring: Keyring
  /** the server's store: the one passed as `store`, or the default SQLite one */
  store: TokenStore
  /**
   * Publishes a new signing key at once; it signs from `activatesAt` (`keys.activationDelay`, 2 min, later),
   * and the old one then stays in the JWKS for `accessTokenTtl` + 60 s.
   */
  rotateKeys(): Promise<{ kid: string; activatesAt: number }>
}

/**
 * The Fastify instance `createAuthServer` returns.
 * @example
 * const app: AuthServer = createAuthServer({ issuer, audience })
 */
export type AuthServer = FastifyInstance & { tokenflow: TokenflowHandle }

/** Largest request body, in bytes: every body here is a few short strings. */
const BODY_LIMIT = 4096

const SECRET_FIELDS = [
  'password',
  'oldPassword',
  'newPassword',
  'refreshToken',
  'refresh_token',
  'accessToken',
  'access_token',
  'token',
]

/** Log paths that can never be written, whatever an app logs next to the request. */
const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers.cookie',
  ...SECRET_FIELDS.flatMap((field) => [field, `*.${field}`, `*.*.${field}`]),
]

/** ms in which a whole request (headers and body) must arrive; a slower one is answered 408 */
const REQUEST_TIMEOUT = 10_000

/**
 * Creates the token server: a Fastify 5 instance with the tokenflow routes. Start it with
 * `listen()`; the store is migrated and the signing key loaded while it gets ready, so call the
 * issuer's methods after `await app.ready()` (or `listen()`).
 * @example
 * const app = createAuthServer({ issuer: 'https://auth.example.com', audience: 'https://api.example.com' })
 * await app.ready()
 * await app.tokenflow.issuer.addUser('ada', 'correct horse battery staple')
 * await app.listen({ port: 3000 })
 */
export function createAuthServer(options: AuthServerOptions): AuthServer {
  if (options === null || typeof options !== 'object') {
    throw new AuthError('ERR_CONFIG', 'createAuthServer needs an options object')
  }
  const {
    issuer: issuerUrl,
    audience,
    clientId = 'tokenflow',
    accessTokenTtl = 15 * 60_000,
    refreshTokenTtl,
    refreshIdleTimeout,
    reuseGrace,
    maxSessionsPerUser,
    keys = {},
    authenticate,
    cookie = false,
    rateLimit = {},
    redisUrl,
    logger = false,
    trustProxy = false,
    pruneInterval = 3_600_000,
    onEvent,
    now = Date.now,
  } = options
  // every check without side effects first: a bad option must not leave a database file or a socket open
  checkIssuerUrl(issuerUrl)
  // setInterval fires every millisecond past 2^31 - 1 ms
  if (!Number.isSafeInteger(pruneInterval) || pruneInterval < 0 || pruneInterval >= 2 ** 31) {
    throw new AuthError('ERR_CONFIG', '"pruneInterval" must be a non-negative integer (ms), below 2^31')
  }
  const refreshCookie = resolveCookie(cookie)
  // a string of digits ('1', from an env variable) is a hop count too: proxy-addr reads it as the address 0.0.0.1
  const hops = ([trustProxy] as unknown[])
    .flat()
    .flatMap((entry) => (typeof entry === 'string' ? entry.split(',') : [entry]))
    .find((entry) => typeof entry === 'number' || /^\s*\d+\s*$/.test(`${entry}`))
  if (hops !== undefined) {
    throw new AuthError(
      'ERR_CONFIG',
      `"trustProxy" cannot be a hop count (got ${JSON.stringify(hops)}): Fastify 5 trusts no hop for it, so every client would share the proxy's per-IP login limit; name the proxy's addresses instead (e.g. '10.0.0.0/8')`,
    )
  }
  if (trustProxy === true) {
    throw new AuthError(
      'ERR_CONFIG',
      "\"trustProxy\" cannot be true: it trusts every X-Forwarded-For entry, and a client writes the first one, so it would choose its own per-IP login limit; name the proxy's addresses instead (e.g. '10.0.0.0/8'), or pass a function",
    )
  }
  if (redisUrl !== undefined && (typeof redisUrl !== 'string' || !/^rediss?:\/\//.test(redisUrl))) {
    throw new AuthError('ERR_CONFIG', '"redisUrl" must be a redis:// or rediss:// URL')
  }
  // one Redis connection for both limiters, opened while the server gets ready
  let redis: Promise<RedisLike> | undefined
  const openRedis = () => {
    redis ??= connectRedis(redisUrl!)
    return redis
  }
  const loginLimits: { perIp?: RateLimiter; perAccount?: RateLimiter } = {}
  if (rateLimit !== false) {
    const { perAccount = 10, perIp = 50, window = 60_000 } = rateLimit
    const limiter = (limit: number, prefix: string) =>
      createRateLimiter({
        limit,
        window,
        now,
        prefix,
        ...(rateLimit.redis !== undefined
          ? { redis: rateLimit.redis }
          : redisUrl === undefined
            ? {}
            : { redis: openRedis }),
      })
    loginLimits.perAccount = limiter(perAccount, 'tokenflow:rl:account:')
    loginLimits.perIp = limiter(perIp, 'tokenflow:rl:ip:')
  }

  const ownsStore = options.store === undefined
  const store = options.store ?? lazySqliteStore()
  let keyring: Keyring
  let issuer: Issuer
  let app: FastifyInstance
  try {
    keyring = isKeyring(keys)
      ? keys
      : createKeyring({
          store,
          accessTokenTtl,
          now,
          ...(keys.alg === undefined ? {} : { alg: keys.alg }),
          ...(keys.activationDelay === undefined ? {} : { activationDelay: keys.activationDelay }),
        })
    app = Fastify({
      bodyLimit: BODY_LIMIT,
      // the whole request (at most 4 KiB of body) within 10 s: a client that stalls cannot hold a socket,
      // nor a graceful stop, forever
      requestTimeout: REQUEST_TIMEOUT,
      // Node checks the timeouts every 30 s by default, and the headers alone against its own 60 s: a stalled
      // body then held its socket (and app.close()) for a minute or more. Checked every second, both 10 s
      http: { headersTimeout: REQUEST_TIMEOUT, connectionsCheckingInterval: 1_000 },
      trustProxy,
      logger: loggerOptions(logger),
      // reject what the schemas do not allow instead of silently dropping or coercing it
      ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
      // a body with "__proto__" or "constructor.prototype" is refused outright
      onProtoPoisoning: 'error',
      onConstructorPoisoning: 'error',
      // a request that arrives on a kept-alive connection while the server stops gets the 503 of the hook
      // below, in the shape of every other error, instead of Fastify's own body
      return503OnClosing: false,
      // a path that is not a valid URL component (`%ff`) or a parameter longer than the router takes (100
      // characters): the shape of every other error, instead of Fastify's own body (which echoes the path)
      frameworkErrors: (_error, request, reply) => void malformedUrl(request, reply),
      clientErrorHandler: answerClientError,
    })

    issuer = createIssuer({
      store,
      keyring,
      issuer: issuerUrl,
      audience,
      clientId,
      accessTokenTtl,
      ...(refreshTokenTtl === undefined ? {} : { refreshTokenTtl }),
      ...(refreshIdleTimeout === undefined ? {} : { refreshIdleTimeout }),
      ...(reuseGrace === undefined ? {} : { reuseGrace }),
      ...(maxSessionsPerUser === undefined ? {} : { maxSessionsPerUser }),
      ...(authenticate === undefined ? {} : { authenticate }),
      loginLimits,
      onEvent(event) {
        if (event.type === 'reuseDetected') {
          app.log.warn(
            { sessionId: event.sessionId, userId: event.userId },
            'refresh token reuse: session revoked',
          )
        }
        onEvent?.(event)
      },
      now,
    })
  } catch (error) {
    if (ownsStore) void store.close()
    // Fastify (proxy-addr) refuses a bad address with a bare TypeError ("invalid IP address: x"): name the option
    if (
      trustProxy !== false &&
      error instanceof TypeError &&
      /^invalid (IP address|range)/.test(error.message)
    ) {
      throw new AuthError('ERR_CONFIG', `"trustProxy": ${error.message}`, { cause: error })
    }
    throw error
  }

  const handle: TokenflowHandle = { issuer, keyring, store, rotateKeys: () => keyring.rotateKeys() }
  app.decorate('tokenflow', handle)

  // only JSON by default (the OAuth routes swap in a form parser); text/plain would reach the schemas as a string
  app.removeContentTypeParser('text/plain')

  app.setErrorHandler((error, request, reply) => {
    // only for a request whose body was still arriving: another one on that socket (pipelined before the bad
    // request the parser answered) failed on its own, and is logged and answered as any other
    const answered = request.raw.complete ? undefined : parserAnswers.get(request.raw.socket)
    if (answered !== undefined) {
      // the body did not arrive in time: Node's parser answered 408 and closed the socket, and Fastify sees
      // the body fail (ECONNRESET). Log what the client got, not a 400 that was never sent.
      reply.log.info({ res: { statusCode: answered }, responseTime: reply.elapsedTime }, 'request completed')
      return reply.code(answered).send() // to a closed socket: nothing more is written
    }
    if (isAuthError(error)) return sendAuthError(request, reply, error)
    const status = (error as { statusCode?: unknown }).statusCode
    if (typeof status === 'number' && status >= 400 && status < 500) {
      // never echo a parser's message: JSON.parse quotes the body, which may hold a password
      const { code, validation } = error as { code?: string; validation?: unknown }
      request.log.info({ code, status }, 'bad request')
      return sendError(reply, status, {
        error: 'invalid_request',
        error_description: validation ? (error as Error).message : describeStatus(status),
        code: 'ERR_INVALID_REQUEST',
      })
    }
    return sendAuthError(request, reply, error)
  })

  // the methods of tokenflow's own routes (collected where they are registered, below), so that one of their
  // paths asked with another method gets 405 and Allow (RFC 9110 section 15.5.6), not 404: a GET to the token
  // endpoint is a client's mistake to name, not a missing route. Only these: an embedding app's routes may
  // be wildcards, regex parameters, constrained or call callNotFound(), which only Fastify's router can tell
  // apart, so their paths keep Fastify's 404
  const routes: Array<{ path: RegExp; methods: string[] }> = []
  const collect = ({ url, method }: { url: string; method: string | string[] }) => {
    const pattern = url
      .split('/')
      .map((segment) => (segment.startsWith(':') ? '[^/]+' : segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    routes.push({ path: new RegExp(`^${pattern.join('/')}$`), methods: [method].flat() })
  }
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? ''
    const allowed = [
      ...new Set(routes.filter((route) => route.path.test(path)).flatMap((route) => route.methods)),
    ].sort()
    // a method the path takes is never answered 405 (a route of it sent the request here)
    if (allowed.length > 0 && !allowed.includes(request.method)) {
      return sendError(reply.header('allow', allowed.join(', ')), 405, {
        error: 'invalid_request',
        error_description: `${request.method} is not allowed here: ${allowed.join(', ')}`,
        code: 'ERR_INVALID_REQUEST',
      })
    }
    return sendError(reply, 404, {
      error: 'not_found',
      error_description: `no route ${request.method} ${path.slice(0, 128)}`,
      code: 'ERR_NOT_FOUND',
    })
  })

  async function malformedUrl(request: FastifyRequest, reply: FastifyReply) {
    // Fastify runs no hooks for this answer: the stop's own are repeated here, or a connection answered during a
    // stop would be kept alive and hold `close()` until the keep-alive timeout; and so is the completion log
    // line, without which the log shows this request arriving and never answered
    reply.raw.once('finish', () => {
      reply.log.info({ res: reply, responseTime: reply.elapsedTime }, 'request completed')
      if (closing) setImmediate(() => app.server.closeIdleConnections())
    })
    if (closing) return shuttingDown(reply.header('connection', 'close'))
    // DELETE /auth/sessions/:id checks its token before anything else in the request, a malformed id included
    if (request.method === 'DELETE' && request.url.startsWith('/auth/sessions/')) {
      if (!(await authenticateRequest(issuer, request, reply))) return
    }
    sendError(reply, 400, {
      error: 'invalid_request',
      error_description: 'malformed request URL',
      code: 'ERR_INVALID_REQUEST',
    })
  }

  // a stop lets the requests in flight finish; one that comes meanwhile (on a kept-alive connection) is told
  // to try again, at another instance or in a moment
  let closing = false
  // Node checks the request timeout only while the server listens: a request whose body stalled when a stop
  // began would hold its socket, and close(), forever. During a stop the same bound is kept here, from the
  // requests still arriving when it began
  const arriving = new Map<IncomingMessage, number>()
  let arrivalCheck: NodeJS.Timeout | undefined
  app.addHook('preClose', (done) => {
    closing = true
    arrivalCheck = setInterval(() => {
      for (const [raw, start] of arriving) {
        if (raw.complete || raw.socket.destroyed) arriving.delete(raw)
        else if (Date.now() - start >= REQUEST_TIMEOUT) {
          arriving.delete(raw)
          answerClientError(
            Object.assign(new Error('request timeout'), { code: 'ERR_HTTP_REQUEST_TIMEOUT' }),
            raw.socket,
          )
        }
      }
      if (arriving.size === 0) clearInterval(arrivalCheck)
    }, 1_000)
    arrivalCheck.unref()
    done()
  })
  // A connection busy when the stop begins goes idle once answered, and the keep-alive timeout (72 s) would
  // keep it, and so `close()`, open. During a stop every answer says `Connection: close`, and a connection
  // whose answer was already on its way is closed as soon as it has been sent.
  app.addHook('onSend', async (_request, reply, payload) => {
    if (closing) reply.header('connection', 'close')
    return payload
  })
  app.addHook('onResponse', async () => {
    if (closing) setImmediate(() => app.server.closeIdleConnections())
  })
  const shuttingDown = (reply: FastifyReply) =>
    sendError(
      reply,
      503,
      {
        error: 'temporarily_unavailable',
        error_description: 'the server is shutting down, try again',
        code: 'ERR_UNAVAILABLE',
      },
      { retryAfter: 1 },
    )
  app.addHook('onRequest', (request, reply, done) => {
    if (closing) return shuttingDown(reply)
    const { raw } = request
    if (!raw.complete) {
      arriving.set(raw, Date.now())
      // 'close' comes once the answer is sent or the connection is gone. A client that hangs up after sending
      // its whole request, before the answer, gets neither onResponse nor onRequestAbort: the entry (and
      // with it the request and its socket) stayed for the life of the server
      reply.raw.once('close', () => arriving.delete(raw))
    }
    done()
  })

  if (refreshCookie) app.register(fastifyCookie)

  // migrate and load the signing key before the first request, so a bad database fails `listen()`
  app.register(async () => {
    if (redisUrl !== undefined && rateLimit !== false && rateLimit.redis === undefined) await openRedis()
    await store.migrate()
    await keyring.activeKey()
  })

  // in a scope of their own, whose onRoute hook sees only them (see `routes`)
  app.register(async (own) => {
    own.addHook('onRoute', collect)
    own.register(authRoutes, { issuer, cookie: refreshCookie, now })
    own.register(oauthRoutes, { issuer, clientId, bodyLimit: BODY_LIMIT })
    own.register(sessionRoutes, { issuer })
    own.register(wellKnownRoutes, { keyring, issuer: issuerUrl })
  })

  let pruneTimer: NodeJS.Timeout | undefined
  // the prune in progress: on a big table it takes several event-loop turns (seconds, in batches),
  // and an interval that fires meanwhile starts no second one beside it
  let pruning: Promise<unknown> | undefined
  app.addHook('onReady', async () => {
    if (pruneInterval > 0) {
      pruneTimer = setInterval(() => {
        pruning ??= issuer
          .pruneSessions()
          .catch((error: unknown) => app.log.error({ err: error }, 'pruning sessions failed'))
          .finally(() => {
            pruning = undefined
          })
      }, pruneInterval)
      pruneTimer.unref()
    }
  })
  app.addHook('onClose', async () => {
    clearInterval(pruneTimer)
    clearInterval(arrivalCheck)
    await Promise.all([loginLimits.perAccount?.close(), loginLimits.perIp?.close()])
    if (redis) await (await redis.catch(() => undefined))?.quit().catch(() => undefined)
    // closing the store stops a prune in progress at its next batch; a store the app passed in is
    // closed by the app once close() resolved, so its prune finishes first
    if (ownsStore) await store.close()
    await pruning
  })

  return app as unknown as AuthServer
}

function checkIssuerUrl(issuer: unknown): asserts issuer is string {
  let url: URL | undefined
  try {
    url = typeof issuer === 'string' ? new URL(issuer) : undefined
  } catch {
    url = undefined
  }
  // RFC 8414 section 2: an https URL without query or fragment. Plain http only on loopback, for local
  // development, as the verifiers accept it: its JWKS could be swapped by anyone on the path
  const loopback = isLoopbackHost(url?.hostname ?? '')
  if (
    !url ||
    (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) ||
    url.search !== '' ||
    url.hash !== '' ||
    // a user name or password would be published in the metadata and in every token's "iss"
    url.username !== '' ||
    url.password !== ''
  ) {
    throw new AuthError(
      'ERR_CONFIG',
      '"issuer" must be an https URL (http only on localhost) without query, fragment or user info',
    )
  }
}

function resolveCookie(cookie: boolean | CookieOptions): RefreshCookie | undefined {
  if (cookie === false) return undefined
  if (cookie !== true && (cookie === null || typeof cookie !== 'object')) {
    throw new AuthError('ERR_CONFIG', '"cookie" must be a boolean or an object')
  }
  const {
    name = '__Secure-tokenflow_rt',
    path = '/refresh/token',
    domain,
    csrfHeader = 'x-tokenflow-refresh',
  } = cookie === true ? {} : cookie
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name)) {
    throw new AuthError('ERR_CONFIG', '"cookie.name" must be a cookie token')
  }
  // the browser must send the cookie to the refresh route: its path has to cover "/refresh/token"
  if (!['/', '/refresh', '/refresh/', '/refresh/token'].includes(path)) {
    throw new AuthError('ERR_CONFIG', '"cookie.path" must be "/refresh/token" or one of its parents')
  }
  if (name.startsWith('__Host-') && (path !== '/' || domain !== undefined)) {
    throw new AuthError('ERR_CONFIG', 'a "__Host-" cookie needs "path" "/" and no "domain"')
  }
  if (!/^[a-z0-9-]+$/i.test(csrfHeader)) {
    throw new AuthError('ERR_CONFIG', '"cookie.csrfHeader" must be a header name')
  }
  return { name, path, domain, csrfHeader: csrfHeader.toLowerCase() }
}

/**
 * The default store, `createSqliteStore()`, opened on first use (migrate, when the server gets ready): an
 * option refused while the server is created then leaves no database file behind.
 */
function lazySqliteStore(): TokenStore {
  let store: TokenStore | undefined
  const methods: Array<keyof TokenStore> = [
    'migrate',
    'createSession',
    'getSession',
    'rotateSession',
    'revokeSession',
    'revokeUserSessions',
    'listSessions',
    'deleteExpiredSessions',
    'createUser',
    'getUserByName',
    'getUser',
    'listUsers',
    'setPasswordHash',
    'deleteUser',
    'listKeys',
    'insertKey',
    'insertFirstKey',
    'retireKey',
  ]
  const lazy = Object.fromEntries(
    methods.map((name) => [
      name,
      (...args: unknown[]) => {
        store ??= createSqliteStore()
        return (store[name] as (...params: unknown[]) => unknown).apply(store, args)
      },
    ]),
  ) as unknown as TokenStore
  lazy.close = async () => {
    await store?.close()
  }
  return lazy
}

function isKeyring(keys: NonNullable<AuthServerOptions['keys']>): keys is Keyring {
  return typeof (keys as Keyring).sign === 'function'
}

function loggerOptions(logger: boolean | LoggerOptions): boolean | LoggerOptions {
  if (logger === false) return false
  const base = logger === true ? {} : logger
  const theirs = Array.isArray(base.redact) ? base.redact : (base.redact?.paths ?? [])
  return {
    level: 'info',
    ...base,
    redact: { paths: [...REDACT_PATHS, ...theirs], censor: '[redacted]' },
    serializers: {
      // the query string is dropped: a client may put a token there, and it would be logged. So may a client
      // that builds a wrong path, or puts a token where a route takes a parameter: a segment as long as a
      // token (a session id is 32 characters) is redacted, unless it is hex (a UUID, a digest: an id of an
      // app's own route), which neither kind of token is. A request target in absolute form
      // (`GET http://user:password@host/…`) loses its credentials first, whatever they hold
      req: (request) => ({
        method: request.method,
        url: request.url
          .replace(/^([a-z][a-z\d+.-]*:\/\/)[^/]*@/i, '$1[redacted]@')
          .replace(/\?.*$/s, '')
          .replace(/[^/]{33,}/g, (segment) => (/^[\da-f-]+$/i.test(segment) ? segment : '[redacted]')),
        remoteAddress: request.ip,
      }),
      ...base.serializers,
    },
  }
}

function describeStatus(status: number): string {
  switch (status) {
    case 413:
      return `request body is larger than ${BODY_LIMIT} bytes`
    case 415:
      return 'unsupported content type'
    default:
      return 'malformed request'
  }
}

export type { AuthErrorCode } from './errors.js'
export { AuthError, isAuthError } from './errors.js'
export type {
  AccessTokenClaims,
  AuthenticateFunction,
  IssuedTokens,
  Issuer,
  IssuerEvent,
  IssuerOptions,
  IssuerStats,
  LoginMeta,
  SessionInfo,
  UserInfo,
} from './issuer.js'
export { createIssuer } from './issuer.js'
export type { JsonWebKeySet, Keyring, KeyringOptions, PublicJwk, SigningAlgorithm } from './keys.js'
export { createKeyring } from './keys.js'
export type { PasswordHasher, PasswordHasherOptions } from './passwords.js'
export { createPasswordHasher } from './passwords.js'
export type { RateLimiter, RateLimiterOptions, RateLimitResult, RedisLike } from './rate-limit.js'
export { createRateLimiter } from './rate-limit.js'
export {
  encodeRefreshToken,
  newSessionId,
  newSessionKey,
  parseRefreshToken,
  verifyRefreshTokenMac,
} from './refresh-token.js'
export type { SqliteStoreOptions } from './stores/sqlite.js'
export { createSqliteStore } from './stores/sqlite.js'
export type { KeyRecord, SessionRecord, TokenStore, UserRecord } from './stores/store.js'

/** The status {@link answerClientError} sent on a socket: a request Fastify was reading when it was sent is logged with it. */
const parserAnswers = new WeakMap<Duplex, number>()

/**
 * Node's HTTP parser refused the request before Fastify saw it: malformed HTTP, headers over the limit
 * (431), or a request that did not arrive within `requestTimeout` (408). The answer has the shape of every
 * other error instead of Fastify's own, and the connection ends. Nothing of the request is logged: its raw
 * bytes may hold an Authorization header.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  // a reset connection has no one to answer
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  const [status, description] =
    error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'the request did not arrive in time']
      : error.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'the request headers are too large']
        : [400, 'malformed HTTP request']
  parserAnswers.set(socket, status)
  const body = JSON.stringify({
    error: 'invalid_request',
    error_description: description,
    code: 'ERR_INVALID_REQUEST',
  })
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json; charset=utf-8\r\n` +
        `content-length: ${Buffer.byteLength(body)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${body}`,
    )
  }
  socket.destroy()
}
