/**
 * The session routes, behind a Bearer access token: `GET /auth/sessions`,
 * `DELETE /auth/sessions/:id` and `POST /auth/logout-all`.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { AccessTokenClaims, Issuer } from '../issuer.js'
import { authenticateRequest, ignoreBodies, noStore, sendAuthError, sendError } from './http.js'

/** Options of the `sessionRoutes` plugin. */
export interface SessionRoutesOptions {
  issuer: Issuer
}

/**
 * Registers the routes that let a user see and end their sessions.
 * @example
 * app.register(sessionRoutes, { issuer })
 */
export async function sessionRoutes(app: FastifyInstance, { issuer }: SessionRoutesOptions) {
  // the token is checked first: without a valid one every request gets the same 401 with its challenge,
  // whatever else is wrong with it. So no body limit (413), content type (415), schema or parser refuses a
  // request before that: these routes take no body, and a body that comes anyway is ignored. The check runs
  // before the body is parsed (preParsing), after every onRequest hook, so that the app's own (CORS, logging)
  // still see each request
  ignoreBodies(app)
  const callers = new WeakMap<FastifyRequest, AccessTokenClaims>()
  app.addHook('preParsing', async (request, reply, payload) => {
    const claims = await authenticateRequest(issuer, request, reply)
    if (!claims) return reply
    callers.set(request, claims)
    return payload
  })
  // set by the hook above. A request whose 401 is on its way can still reach a handler: when the client left
  // before that answer was written (an app's slow onSend), Fastify takes the closed stream for a finished
  // reply and goes on with the request. Such a handler has no caller and does nothing

  app.get('/auth/sessions', async (request, reply) => {
    const claims = callers.get(request)
    if (!claims) return reply
    try {
      const sessions = await issuer.listSessions(claims.sub)
      return noStore(reply).send({
        sessions: sessions.map((session) => ({ ...session, current: session.id === claims.sid })),
      })
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })

  app.delete('/auth/sessions/:id', async (request, reply) => {
    const claims = callers.get(request)
    if (!claims) return reply
    const { id } = request.params as { id: string }
    if (id.length > 64) {
      return sendError(reply, 400, {
        error: 'invalid_request',
        error_description: 'a session id has at most 64 characters',
        code: 'ERR_INVALID_REQUEST',
      })
    }
    try {
      await issuer.revokeSession(claims.sub, id)
      return noStore(reply).code(204).send()
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })

  app.post('/auth/logout-all', async (request, reply) => {
    const claims = callers.get(request)
    if (!claims) return reply
    try {
      const revoked = await issuer.logoutAll(claims.sub)
      return noStore(reply).send({ revoked })
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })
}
