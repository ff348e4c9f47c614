/**
 * The OAuth 2.0 routes, in RFC spelling: `POST /oauth/token` (refresh_token grant, RFC 6749
 * section 6) and `POST /oauth/revoke` (RFC 7009). Bodies are form-encoded, as the RFCs require.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { authorizationOf } from '../authorization.js'
import { AuthError } from '../errors.js'
import type { Issuer } from '../issuer.js'
import { MAX_FIELD_LENGTH, noStore, sendAuthError, sendError } from './http.js'

/** Options of the `oauthRoutes` plugin. */
export interface OAuthRoutesOptions {
  issuer: Issuer
  clientId: string
  /** body limit of the form parser, in bytes */
  bodyLimit: number
}

const param = { type: 'string', maxLength: MAX_FIELD_LENGTH } as const

// unknown parameters are ignored, as RFC 6749 section 3.2 requires; known ones are bounded
const tokenSchema = {
  body: {
    type: 'object',
    properties: {
      grant_type: param,
      refresh_token: param,
      client_id: param,
      client_secret: param,
      scope: param,
    },
  },
}

// RFC 7009 section 2.2: an invalid token, however long (the body limit bounds it), is answered 200
const revokeSchema = {
  body: {
    type: 'object',
    properties: { token: { type: 'string' }, token_type_hint: param, client_id: param, client_secret: param },
  },
}

/** The form parameters each route reads; any other one is ignored, repeated or not. */
const USED: Record<string, ReadonlySet<string>> = {
  '/oauth/token': new Set(['grant_type', 'refresh_token', 'client_id', 'client_secret', 'scope']),
  '/oauth/revoke': new Set(['token', 'token_type_hint', 'client_id', 'client_secret']),
}

/**
 * Registers `/oauth/token` and `/oauth/revoke` with their own form-encoded body parser.
 * @example
 * app.register(oauthRoutes, { issuer, clientId: 'web', bodyLimit: 4096 })
 */
export async function oauthRoutes(app: FastifyInstance, { issuer, clientId, bodyLimit }: OAuthRoutesOptions) {
  // only form bodies here (RFC 6749 section 3.2): a JSON body is a 415, not a guess
  app.removeAllContentTypeParsers()
  app.addContentTypeParser(
    'application/x-www-form-urlencoded',
    { parseAs: 'string', bodyLimit },
    (request, body, done) => {
      const used = USED[request.routeOptions.url ?? ''] ?? new Set()
      const params: Record<string, string> = Object.create(null)
      for (const [name, value] of new URLSearchParams(body as string)) {
        // RFC 6749 section 3.2: "Request and response parameters MUST NOT be included more than once", and the
        // server "MUST ignore unrecognized request parameters": one it does not use may repeat (RFC 8707 sends
        // `resource` once per resource)
        if (!used.has(name)) continue
        if (name in params) {
          done(
            new AuthError('ERR_INVALID_REQUEST', `parameter "${name.slice(0, 64)}" is repeated`),
            undefined,
          )
          return
        }
        params[name] = value
      }
      done(null, params)
    },
  )

  const checkClient = (
    request: FastifyRequest,
    reply: FastifyReply,
    { client_id: fromBody, client_secret: secret }: Record<string, string | undefined>,
  ) => {
    const authorization = authorizationOf(request.headers.authorization, request.raw)
    // sent twice: which credential counts would depend on who reads it (Node keeps the first line, a proxy
    // may read the last). RFC 6749 section 3.2 refuses a repeated parameter the same way
    if (authorization !== request.headers.authorization) {
      sendError(reply, 400, {
        error: 'invalid_request',
        error_description: 'the "authorization" header is repeated',
        code: 'ERR_INVALID_REQUEST',
      })
      return false
    }
    const basic = basicClientId(authorization)
    // RFC 6749 section 2.3.1: a client may name itself in HTTP Basic instead of the body. This public client has
    // no secret, so only an empty one fits; any other Basic credentials, or a body naming another client, is a
    // failed client authentication, which section 5.2 requires to answer 401 with the scheme's challenge
    if (
      basic !== undefined &&
      (basic !== clientId || (fromBody !== undefined && fromBody !== '' && fromBody !== basic))
    ) {
      reply.header('www-authenticate', 'Basic realm="tokenflow", charset="UTF-8"')
      sendError(reply, 401, {
        error: 'invalid_client',
        error_description: 'client authentication failed',
        code: 'ERR_INVALID_CLIENT',
      })
      return false
    }
    const presented = basic ?? fromBody
    if (presented === undefined || presented === '') {
      sendError(reply, 400, {
        error: 'invalid_request',
        error_description: 'missing "client_id"',
        code: 'ERR_INVALID_REQUEST',
      })
      return false
    }
    // a secret in the body (section 2.3.1) fails as one in Basic does: this public client has none
    if (presented !== clientId || (secret !== undefined && secret !== '')) {
      // 400 rather than 401: a 401 must carry a challenge, and this public client sent no credentials
      sendError(reply, 400, {
        error: 'invalid_client',
        error_description: presented === clientId ? 'this client has no secret' : 'unknown client',
        code: 'ERR_INVALID_CLIENT',
      })
      return false
    }
    return true
  }

  app.post('/oauth/token', { schema: tokenSchema }, async (request, reply) => {
    const body = request.body as Record<string, string | undefined>
    if (!checkClient(request, reply, body)) return reply
    if (body.grant_type === undefined || body.grant_type === '') {
      return sendError(reply, 400, {
        error: 'invalid_request',
        error_description: 'missing "grant_type"',
        code: 'ERR_INVALID_REQUEST',
      })
    }
    if (body.grant_type !== 'refresh_token') {
      return sendError(reply, 400, {
        error: 'unsupported_grant_type',
        error_description: 'only the "refresh_token" grant is supported',
        code: 'ERR_INVALID_REQUEST',
      })
    }
    if (body.refresh_token === undefined || body.refresh_token === '') {
      return sendError(reply, 400, {
        error: 'invalid_request',
        error_description: 'missing "refresh_token"',
        code: 'ERR_INVALID_REQUEST',
      })
    }
    // RFC 6749 section 6: a refresh may ask for no scope beyond the one first granted, and this server grants
    // none. Refused before the token is used, so the client keeps it
    if (body.scope !== undefined && body.scope !== '') {
      return sendError(reply, 400, {
        error: 'invalid_scope',
        error_description: 'this server grants no scope',
        code: 'ERR_INVALID_REQUEST',
      })
    }
    try {
      const tokens = await issuer.refresh(body.refresh_token, { clientId })
      // RFC 6749 section 5.1, with expires_in in seconds
      return noStore(reply).send({
        access_token: tokens.accessToken,
        token_type: tokens.tokenType,
        expires_in: tokens.expiresIn,
        refresh_token: tokens.refreshToken,
      })
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })

  app.post('/oauth/revoke', { schema: revokeSchema }, async (request, reply) => {
    const body = request.body as Record<string, string | undefined>
    if (!checkClient(request, reply, body)) return reply
    if (body.token === undefined || body.token === '') {
      return sendError(reply, 400, {
        error: 'invalid_request',
        error_description: 'missing "token"',
        code: 'ERR_INVALID_REQUEST',
      })
    }
    try {
      // RFC 7009 section 2.2: 200 whether or not the token was valid; an access token (JWT) cannot be
      // recalled and simply expires, so any hint is accepted and anything but our refresh tokens is a no-op
      await issuer.logout(body.token)
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
    return noStore(reply).code(200).send()
  })
}

/**
 * The client id of an HTTP Basic `Authorization` header (RFC 6749 section 2.3.1: form-urlencoded id and secret),
 * `undefined` without one, and `null` when it is malformed or carries a secret: this public client has none.
 */
function basicClientId(authorization: string | undefined): string | null | undefined {
  const match = /^Basic +([A-Za-z0-9+/]+=*) *$/i.exec(authorization ?? '')
  if (!match) return /^Basic(?: |$)/i.test(authorization ?? '') ? null : undefined
  const credentials = Buffer.from(match[1]!, 'base64').toString('utf8')
  const colon = credentials.indexOf(':')
  if (colon === -1 || colon !== credentials.length - 1) return null
  try {
    return decodeURIComponent(credentials.slice(0, colon).replace(/\+/g, ' '))
  } catch {
    return null
  }
}
