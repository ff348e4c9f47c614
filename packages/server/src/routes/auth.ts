/**
 * The recipe's JSON routes: `POST /auth/login`, `POST /refresh/token`, `POST /auth/logout`.
 * In cookie mode the refresh token travels only in an HttpOnly cookie, never in a body.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest, preValidationHookHandler } from 'fastify'
import { isAuthError } from '../errors.js'
import type { IssuedTokens, Issuer } from '../issuer.js'
import { isVerifyError } from '../verify.js'
import { bearerToken, ignoreBodies, MAX_FIELD_LENGTH, noStore, sendAuthError, sendError } from './http.js'

/** Cookie mode, resolved: every field set. */
export interface RefreshCookie {
  name: string
  path: string
  /** a request header a cookie-mode refresh must carry, against CSRF */
  csrfHeader: string
  domain: string | undefined
}

/** Options of the `authRoutes` plugin. */
export interface AuthRoutesOptions {
  issuer: Issuer
  cookie: RefreshCookie | undefined
  now: () => number
}

const field = { type: 'string', minLength: 1, maxLength: MAX_FIELD_LENGTH } as const

/** The address of a login whose connection has none (see the login route): its per-IP limit key. */
const UNKNOWN_ADDRESS = 'unknown'

const loginSchema = {
  body: {
    type: 'object',
    required: ['username', 'password'],
    additionalProperties: false,
    properties: { username: field, password: field },
  },
}

const refreshSchema = {
  body: {
    type: 'object',
    required: ['refreshToken'],
    additionalProperties: false,
    properties: { refreshToken: field },
  },
}

// logout answers 200 whatever the token: null (a TokenSet without one), '', unknown, spent or too long
const logoutSchema = {
  body: { type: 'object', properties: { refreshToken: { type: ['string', 'null'] } } },
}

/**
 * A token that is not good (a `VerifyError`, or an `AuthError` such as an ended session) is a logout with
 * nothing to end; any other failure (a database that is down) is thrown: a 200 would tell the user the session
 * ended while it lives on
 */
const ignoreRefusal = (error: unknown): undefined => {
  if ((isAuthError(error) && error.code !== 'ERR_UNAVAILABLE') || isVerifyError(error)) return undefined
  throw error
}

// a bodiless POST arrives as undefined (no Content-Type) or '' (see the JSON parser below); logout treats it as `{}`
const emptyBodyIsObject: preValidationHookHandler = (request, _reply, done) => {
  request.body ??= {}
  done()
}

/**
 * `text` without the spaces and tabs around it, nothing else, as the `cookie` parser trims names and values:
 * a name that String#trim() would strip of a no-break space is another cookie to the parser and the browser
 * (a planted '\u00a0__Host-…' must not count as the `__Host-` cookie). A loop, not /[ \t]+$/, which
 * backtracks from every position of a long run of spaces (16 KiB of them: 200 ms).
 */
function bare(text: string): string {
  let start = 0
  let end = text.length
  while (start < end && (text.charCodeAt(start) === 32 || text.charCodeAt(start) === 9)) start++
  while (end > start && (text.charCodeAt(end - 1) === 32 || text.charCodeAt(end - 1) === 9)) end--
  return text.slice(start, end)
}

/**
 * Registers the JSON login, refresh and logout routes.
 * @example
 * app.register(authRoutes, { issuer, cookie: undefined, now: Date.now })
 */
export async function authRoutes(
  app: FastifyInstance,
  { issuer, cookie, now }: AuthRoutesOptions,
): Promise<void> {
  // Every value of the refresh cookie in the request. Two when a page of a sibling subdomain set one of
  // the same name with a Domain attribute: the browser sends both, and the parser keeps the first, which
  // may be the planted one (another account's token, or garbage that logs the user out at every reload).
  // RFC 6265bis section 8.6; the `__Host-` prefix prevents it
  const cookieValues = (request: FastifyRequest, name: string): string[] => {
    const values: string[] = []
    for (const pair of (request.headers.cookie ?? '').split(';')) {
      const at = pair.indexOf('=')
      if (at > 0 && bare(pair.slice(0, at)) === name) values.push(bare(pair.slice(at + 1)))
    }
    return values
  }
  /** the refresh cookie's values to end at a logout: all of them when it came twice */
  const cookiesToEnd = (request: FastifyRequest, name: string): Array<string | undefined> => {
    const values = cookieValues(request, name)
    return values.length > 1 ? values : [request.cookies[name]]
  }

  const sendTokens = (reply: FastifyReply, tokens: IssuedTokens) => {
    noStore(reply)
    if (!cookie) {
      return reply.send({
        accessToken: tokens.accessToken,
        refreshToken: tokens.refreshToken,
        tokenType: tokens.tokenType,
        expiresIn: tokens.expiresIn,
      })
    }
    reply.setCookie(cookie.name, tokens.refreshToken, {
      httpOnly: true,
      secure: true,
      sameSite: 'strict',
      path: cookie.path,
      // a cookie the browser keeps past the session's idle timeout would only be refused
      maxAge: Math.max(0, Math.floor((tokens.refreshIdleExpiresAt - now()) / 1000)),
      ...(cookie.domain === undefined ? {} : { domain: cookie.domain }),
    })
    return reply.send({
      accessToken: tokens.accessToken,
      tokenType: tokens.tokenType,
      expiresIn: tokens.expiresIn,
    })
  }

  const clearCookie = (reply: FastifyReply) => {
    if (cookie) {
      reply.clearCookie(cookie.name, {
        httpOnly: true,
        secure: true,
        sameSite: 'strict',
        path: cookie.path,
        ...(cookie.domain === undefined ? {} : { domain: cookie.domain }),
      })
    }
  }

  app.post('/auth/login', { schema: loginSchema }, async (request, reply) => {
    const { username, password } = request.body as { username: string; password: string }
    try {
      const userAgent = request.headers['user-agent']
      // a client that resets its connection right after sending leaves a socket with no peer to name
      // (`request.ip` is undefined), and the issuer skips the per-IP limit without an address: such logins
      // share one budget, or one client could make the server hash passwords and spend accounts' budgets
      // without ever spending its own
      const ip = request.ip ?? UNKNOWN_ADDRESS
      return sendTokens(reply, await issuer.login(username, password, { ip, userAgent }))
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })

  if (cookie) {
    // the cookie routes read no body: whatever comes (an empty one sent as JSON included) is ignored
    app.register(async (scope) => cookieRoutes(scope, cookie))
  } else {
    app.post('/refresh/token', { schema: refreshSchema }, async (request, reply) => {
      const { refreshToken } = request.body as { refreshToken: string }
      try {
        return sendTokens(reply, await issuer.refresh(refreshToken))
      } catch (error) {
        return sendAuthError(request, reply, error)
      }
    })
  }

  async function cookieRoutes(scope: FastifyInstance, cookie: RefreshCookie) {
    ignoreBodies(scope)
    const csrfHeader = cookie.csrfHeader
    // a cross-site form or image cannot set a custom header, and no CORS preflight is ever granted
    const missingCsrfHeader = (request: FastifyRequest, reply: FastifyReply) => {
      const marker = request.headers[csrfHeader]
      if (typeof marker === 'string' && marker !== '') return false
      sendError(reply, 400, {
        error: 'invalid_request',
        error_description: `missing "${csrfHeader}" header`,
        code: 'ERR_INVALID_REQUEST',
      })
      return true
    }
    // the cookie reaches only its own path, never /auth/logout: a page whose access token expired, or was
    // lost with a reload, logs out here, and the session the cookie names ends
    // (its path is /refresh/token or a parent of it, so it covers /refresh/token/logout)
    scope.post('/refresh/token/logout', async (request, reply) => {
      if (missingCsrfHeader(request, reply)) return reply
      try {
        // sent twice, each one ends: the user asked to be logged out of whichever session this is
        for (const token of cookiesToEnd(request, cookie.name)) if (token) await issuer.logout(token)
      } catch (error) {
        return sendAuthError(request, reply, error)
      }
      clearCookie(reply)
      return noStore(reply).send({})
    })
    scope.post('/refresh/token', async (request, reply) => {
      if (missingCsrfHeader(request, reply)) return reply
      // which of two counts cannot be told: neither is refreshed, and neither cookie is cleared
      if (cookieValues(request, cookie.name).length > 1) {
        return sendError(reply, 400, {
          error: 'invalid_request',
          error_description: `the "${cookie.name}" cookie is sent more than once`,
          code: 'ERR_INVALID_REQUEST',
        })
      }
      try {
        return sendTokens(reply, await issuer.refresh(request.cookies[cookie.name]))
      } catch (error) {
        // only a dead grant loses the cookie: after a 5xx or a 429 the same token must refresh later (rule 5)
        if (isAuthError(error) && error.code === 'ERR_INVALID_GRANT') clearCookie(reply)
        return sendAuthError(request, reply, error)
      }
    })
  }

  // its own scope: an empty body sent with a JSON Content-Type (a client whose instance always sets it)
  // is a logout without a token, not a malformed request
  app.register(async (scope) => {
    const parseJson = scope.getDefaultJsonParser('error', 'error')
    scope.removeContentTypeParser('application/json')
    scope.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) =>
      body === '' ? done(null, undefined) : parseJson(request, body as string, done),
    )
    scope.post('/auth/logout', { schema: logoutSchema, preValidation: emptyBodyIsObject }, logout)
  })

  async function logout(request: FastifyRequest, reply: FastifyReply) {
    const { refreshToken } = request.body as { refreshToken?: string | null }
    // the cookie is scoped to the refresh path, so a browser's logout names its session by the
    // access token; both ways are tried and the answer is the same whatever happened.
    // A cookie path of "/" brings the cookie here too: it counts, and is cleared, only in a request that
    // a page of another origin cannot make without a CORS preflight (never granted), one carrying the CSRF
    // header or an Authorization header. A cookie alone could come from a sibling subdomain's form
    const ownPage =
      !!cookie && (!!request.headers[cookie.csrfHeader] || request.headers.authorization !== undefined)
    const candidates = [refreshToken, ...(ownPage ? cookiesToEnd(request, cookie.name) : [])]
    try {
      for (const token of candidates) if (token) await issuer.logout(token)
      const accessToken = bearerToken(request)
      if (accessToken !== undefined) {
        const claims = await issuer.verifyAccessToken(accessToken, { expired: true }).catch(ignoreRefusal)
        if (claims) await issuer.revokeSession(claims.sub, claims.sid).catch(ignoreRefusal)
      }
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
    if (ownPage) clearCookie(reply)
    return noStore(reply).send({})
  }
}
