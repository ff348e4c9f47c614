/**
 * The session routes, behind a Bearer access token: `GET /auth/sessions`,
 * `DELETE /auth/sessions/:id` and `POST /auth/logout-all`.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { AccessTokenClaims, Issuer } from '../issuer.js'
import { authenticateRequest, noStore, sendAuthError } from './http.js'

/** Options of the `sessionRoutes` plugin. */
export interface SessionRoutesOptions {
  issuer: Issuer
}

const sessionParams = {
  params: {
    type: 'object',
    required: ['id'],
    properties: { id: { type: 'string', minLength: 1, maxLength: 64 } },
  },
}

/**
 * Registers the routes that let a user see and end their sessions.
 * @example
 * app.register(sessionRoutes, { issuer })
 */
export async function sessionRoutes(app: FastifyInstance, { issuer }: SessionRoutesOptions) {
  const authenticated = new WeakMap<FastifyRequest, AccessTokenClaims>()
  // the token is checked first, before the body is parsed or the params validated: without a valid one
  // every request gets the same 401 with its WWW-Authenticate challenge, whatever else is wrong with it
  app.addHook('onRequest', async (request, reply) => {
    const claims = await authenticateRequest(issuer, request, reply)
    if (!claims) return reply
    authenticated.set(request, claims)
  })
  const claimsOf = (request: FastifyRequest) => authenticated.get(request)!

  app.get('/auth/sessions', async (request, reply) => {
    const claims = claimsOf(request)
    try {
      const sessions = await issuer.listSessions(claims.sub)
      return noStore(reply).send({
        sessions: sessions.map((session) => ({ ...session, current: session.id === claims.sid })),
      })
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })

  app.delete('/auth/sessions/:id', { schema: sessionParams }, async (request, reply) => {
    const claims = claimsOf(request)
    try {
      await issuer.revokeSession(claims.sub, (request.params as { id: string }).id)
      return noStore(reply).code(204).send()
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })

  app.post('/auth/logout-all', async (request, reply) => {
    const claims = claimsOf(request)
    try {
      const revoked = await issuer.logoutAll(claims.sub)
      return noStore(reply).send({ revoked })
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })
}
