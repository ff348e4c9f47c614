/**
 * What every route shares: RFC 6749 section 5.2 error bodies, the no-store headers of token
 * responses, and the Bearer check of the protected routes.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { authorizationOf } from '../authorization.js'
import { AuthError, isAuthError, isStoreUnavailable } from '../errors.js'
import type { AccessTokenClaims, Issuer } from '../issuer.js'
import { isVerifyError, verifyErrorResponse } from '../verify.js'

/**
 * Makes every route of `scope` read no body: whatever comes, of any type (an empty one sent as JSON
 * included), is ignored, within the body limit. For routes whose input is a header or a cookie, so no
 * parser answers 400 or 415 before the route has checked what it needs.
 * @example
 * app.register(async (scope) => { ignoreBodies(scope); scope.post('/auth/logout-all', handler) })
 */
export function ignoreBodies(scope: FastifyInstance): void {
  scope.removeAllContentTypeParsers()
  scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, _body, done) => done(null, undefined))
}

/** Longest string field accepted in a body; tokens and passwords are far shorter. */
export const MAX_FIELD_LENGTH = 1024

/** The JSON body of every error answer. `code` is stable; `error` is the RFC 6749 spelling. */
export interface ErrorBody {
  error: string
  error_description: string
  code: string
}

/** HTTP status and RFC 6749 `error` for each `AuthError` code. */
const AUTH_ERRORS: Record<AuthError['code'], { status: number; error: string }> = {
  ERR_INVALID_GRANT: { status: 400, error: 'invalid_grant' },
  // RFC 6749 section 5.2 answers wrong resource-owner credentials with invalid_grant (400), which
  // also keeps a client's 401 interceptor from trying to refresh after a failed login
  ERR_INVALID_CREDENTIALS: { status: 400, error: 'invalid_grant' },
  ERR_INVALID_REQUEST: { status: 400, error: 'invalid_request' },
  ERR_RATE_LIMITED: { status: 429, error: 'too_many_requests' },
  ERR_INVALID_TOKEN: { status: 401, error: 'invalid_token' },
  ERR_NOT_FOUND: { status: 404, error: 'not_found' },
  ERR_USER_EXISTS: { status: 409, error: 'user_exists' },
  ERR_CONFIG: { status: 500, error: 'server_error' },
  // 400, not 401: a 401 would need a challenge header for a client that sent no credentials (RFC 6749 section 5.2)
  ERR_INVALID_CLIENT: { status: 400, error: 'invalid_client' },
  ERR_INTERNAL: { status: 500, error: 'server_error' },
  ERR_UNAVAILABLE: { status: 503, error: 'temporarily_unavailable' },
}

/** `Retry-After` (seconds) of an answer the database could not give: a lock, a pool or a restart is short */
const STORE_RETRY_AFTER = 1

/**
 * Sends an error body with the headers its status needs.
 * @example
 * return sendError(reply, 400, { error: 'invalid_request', error_description: 'missing "token"', code: 'ERR_INVALID_REQUEST' })
 */
export function sendError(
  reply: FastifyReply,
  status: number,
  body: ErrorBody,
  { retryAfter }: { retryAfter?: number | undefined } = {},
): FastifyReply {
  // error answers of token endpoints must not be cached either (RFC 6749 section 5.2)
  noStore(reply)
  // a 401 that already carries its scheme's challenge (Basic client authentication) keeps it
  if ((status === 401 || body.error === 'invalid_token') && !reply.hasHeader('www-authenticate')) {
    reply.header(
      'www-authenticate',
      `Bearer error="invalid_token", error_description="${quote(body.error_description)}"`,
    )
  }
  if (retryAfter !== undefined) reply.header('retry-after', String(retryAfter))
  return reply.code(status).send(body)
}

/**
 * Answers an `AuthError` with its status and body; a database that cannot serve now (locked, full,
 * unreachable) is a 503 `ERR_UNAVAILABLE` with `Retry-After`; anything else is a 500 without details.
 * @example
 * try { return await issuer.refresh(token) } catch (error) { return sendAuthError(request, reply, error) }
 */
export function sendAuthError(request: FastifyRequest, reply: FastifyReply, error: unknown): FastifyReply {
  if (isAuthError(error) && error.code !== 'ERR_CONFIG') {
    const { status, error: name } = AUTH_ERRORS[error.code]
    request.log.info({ code: error.code }, 'request rejected')
    return sendError(
      reply,
      status,
      { error: name, error_description: error.message, code: error.code },
      { retryAfter: error.retryAfter },
    )
  }
  if (isVerifyError(error)) {
    // the codes of "@tokenflow/server/verify" (ERR_JWT_EXPIRED, …), so every tokenflow API answers alike
    request.log.info({ code: error.code }, 'access token rejected')
    const { status, headers, body } = verifyErrorResponse(error)
    return reply
      .code(status)
      .headers({ ...headers, pragma: 'no-cache' })
      .send(body)
  }
  if (isStoreUnavailable(error)) {
    // the database is locked, full, read-only or unreachable: nothing was changed, and the same request
    // works once it recovers. A client retries a 503 and keeps its session; a 400 would log it out
    request.log.warn({ err: error }, 'database unavailable')
    const unavailable = new AuthError('ERR_UNAVAILABLE', 'the database is unavailable, try again later', {
      cause: error,
      retryAfter: STORE_RETRY_AFTER,
    })
    return sendAuthError(request, reply, unavailable)
  }
  request.log.error({ err: error }, 'request failed')
  return sendError(reply, 500, {
    error: 'server_error',
    error_description: 'internal server error',
    code: 'ERR_INTERNAL',
  })
}

/**
 * Marks a response as never cacheable (RFC 6749 section 5.1).
 * @example
 * return noStore(reply).send(tokens)
 */
export function noStore(reply: FastifyReply): FastifyReply {
  return reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
}

/**
 * The Bearer token of a request, or undefined (RFC 6750 section 2.1).
 * @example
 * const token = bearerToken(request)
 */
export function bearerToken(request: FastifyRequest): string | undefined {
  return tokenOf(authorizationOf(request.headers.authorization, request.raw))
}

/** The b64token of an `Authorization` value of the Bearer scheme, or undefined. */
function tokenOf(header: string | undefined): string | undefined {
  return header === undefined ? undefined : /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header)?.[1]
}

/**
 * Verifies the request's Bearer access token, or answers 401 with `WWW-Authenticate` and resolves undefined.
 * @example
 * const claims = await authenticateRequest(issuer, request, reply)
 * if (!claims) return reply
 */
export async function authenticateRequest(
  issuer: Issuer,
  request: FastifyRequest,
  reply: FastifyReply,
): Promise<AccessTokenClaims | undefined> {
  const header = authorizationOf(request.headers.authorization, request.raw)
  const token = tokenOf(header)
  if (token === undefined) {
    // the codes "@tokenflow/server/verify" gives: no Bearer token, or one that is not a b64token (a space, a
    // second part, a character outside RFC 6750 section 2.1)
    const malformed = /^bearer +\S/i.test(header ?? '')
    sendError(
      reply,
      401,
      malformed
        ? {
            error: 'invalid_token',
            error_description: 'the access token is malformed',
            code: 'ERR_JWS_INVALID',
          }
        : {
            error: 'invalid_token',
            error_description: 'the access token is missing',
            code: 'ERR_TOKEN_MISSING',
          },
    )
    return undefined
  }
  try {
    return await issuer.verifyAccessToken(token)
  } catch (error) {
    sendAuthError(request, reply, error)
    return undefined
  }
}

// a quoted-string in WWW-Authenticate (RFC 9110 section 5.6.4) cannot hold a bare `"` or `\`
function quote(text: string): string {
  return text.replace(/["\\]/g, '')
}
