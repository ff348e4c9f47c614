/**
 * Discovery: `GET /.well-known/jwks.json` (the public signing keys) and
 * `GET /.well-known/oauth-authorization-server` (RFC 8414 metadata).
 */
import type { FastifyInstance } from 'fastify'
import type { Keyring } from '../keys.js'
import { sendAuthError } from './http.js'

/** Options of the `wellKnownRoutes` plugin. */
export interface WellKnownRoutesOptions {
  keyring: Keyring
  /** the `iss` of the tokens; endpoint URLs are built under it */
  issuer: string
}

/**
 * The RFC 8414 metadata of an issuer whose routes are served at its URL.
 * @example
 * authorizationServerMetadata('https://auth.example.com').token_endpoint // 'https://auth.example.com/oauth/token'
 */
export function authorizationServerMetadata(issuer: string) {
  const base = issuer.replace(/\/+$/, '')
  return {
    issuer,
    token_endpoint: `${base}/oauth/token`,
    revocation_endpoint: `${base}/oauth/revoke`,
    jwks_uri: `${base}/.well-known/jwks.json`,
    grant_types_supported: ['refresh_token'],
    // there is no authorization endpoint: tokens start at POST /auth/login
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['none'],
    revocation_endpoint_auth_methods_supported: ['none'],
  }
}

/**
 * Registers the JWKS and RFC 8414 metadata routes.
 * @example
 * app.register(wellKnownRoutes, { keyring, issuer: 'https://auth.example.com' })
 */
export async function wellKnownRoutes(app: FastifyInstance, { keyring, issuer }: WellKnownRoutesOptions) {
  const metadata = authorizationServerMetadata(issuer)

  app.get('/.well-known/jwks.json', async (request, reply) => {
    try {
      const jwks = await keyring.jwks()
      // short: a rotated-in key is published `activationDelay` (2 min) before it signs, which covers this
      // max-age plus a verifier's cooldown before it refetches for an unknown kid
      return reply.header('cache-control', 'public, max-age=60').send(jwks)
    } catch (error) {
      return sendAuthError(request, reply, error)
    }
  })

  // RFC 8414 section 3.1: an issuer with a path has its metadata under the well-known prefix plus that path
  const path = new URL(issuer).pathname.replace(/\/+$/, '')
  for (const url of new Set([
    '/.well-known/oauth-authorization-server',
    `/.well-known/oauth-authorization-server${path}`,
  ])) {
    app.get(url, async (_request, reply) =>
      reply.header('cache-control', 'public, max-age=3600').send(metadata),
    )
  }
}
