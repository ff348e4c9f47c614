/**
 * A client we did not write, oauth4webapi, against a real listening server on 127.0.0.1:
 * RFC 8414 discovery, the refresh_token grant, RFC 6749 section 5.2 errors and RFC 7009 revocation.
 */
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import * as oauth from 'oauth4webapi'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

// an https issuer, as RFC 8414 wants; every request to it is sent to the local server instead
const ISSUER = 'https://auth.tokenflow.test'
const PASSWORD = 'correct horse battery staple'

let store: TokenStore
let app: AuthServer
let origin: string
const client: oauth.Client = { client_id: 'web' }
let as: oauth.AuthorizationServer

const toLocal = (url: string, options: oauth.CustomFetchOptions<string, unknown>) => {
  const { pathname, search } = new URL(url)
  return fetch(`${origin}${pathname}${search}`, options as RequestInit)
}

beforeAll(async () => {
  store = createSqliteStore({ filename: ':memory:' })
  app = createAuthServer({ issuer: ISSUER, audience: 'https://api.tokenflow.test', clientId: 'web', store })
  origin = await app.listen({ port: 0, host: '127.0.0.1' })
  await app.tokenflow.issuer.addUser('ada', PASSWORD)
  const issuer = new URL(ISSUER)
  as = await oauth.processDiscoveryResponse(
    issuer,
    await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', [oauth.customFetch]: toLocal }),
  )
})

afterAll(async () => {
  await app.close()
  await store.close()
})

async function login(): Promise<string> {
  const response = await fetch(`${origin}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'ada', password: PASSWORD }),
  })
  expect(response.status).toBe(200)
  return ((await response.json()) as { refreshToken: string }).refreshToken
}

describe('oauth4webapi against /oauth/token', () => {
  it('discovers the server through RFC 8414 metadata', () => {
    expect(as).toMatchObject({
      issuer: ISSUER,
      token_endpoint: `${ISSUER}/oauth/token`,
      revocation_endpoint: `${ISSUER}/oauth/revoke`,
      token_endpoint_auth_methods_supported: ['none'],
    })
  })

  it('refreshes with refreshTokenGrantRequest + processRefreshTokenResponse', async () => {
    const refreshToken = await login()
    const response = await oauth.refreshTokenGrantRequest(as, client, oauth.None(), refreshToken, {
      [oauth.customFetch]: toLocal,
    })
    expect(response.headers.get('cache-control')).toBe('no-store')
    const result = await oauth.processRefreshTokenResponse(as, client, response)
    expect(result.token_type).toBe('bearer')
    expect(result.expires_in).toBe(900)
    expect(result.access_token.split('.')).toHaveLength(3)
    expect(result.refresh_token).toMatch(/^[A-Za-z0-9_-]{52}$/)
    expect(result.refresh_token).not.toBe(refreshToken)

    // and the rotated token refreshes again
    const again = await oauth.processRefreshTokenResponse(
      as,
      client,
      await oauth.refreshTokenGrantRequest(as, client, oauth.None(), result.refresh_token!, {
        [oauth.customFetch]: toLocal,
      }),
    )
    expect(again.refresh_token).not.toBe(result.refresh_token)
  })

  it('surfaces an invalid refresh token as a ResponseBodyError with error "invalid_grant"', async () => {
    const response = await oauth.refreshTokenGrantRequest(as, client, oauth.None(), 'not-a-refresh-token', {
      [oauth.customFetch]: toLocal,
    })
    const error = await oauth
      .processRefreshTokenResponse(as, client, response)
      .catch((error: unknown) => error)
    expect(error).toBeInstanceOf(oauth.ResponseBodyError)
    const bodyError = error as oauth.ResponseBodyError
    expect(bodyError.error).toBe('invalid_grant')
    expect(bodyError.status).toBe(400)
    expect(bodyError.error_description).toBe('the refresh token is invalid, expired or revoked')
    expect(bodyError.cause).toMatchObject({ code: 'ERR_INVALID_GRANT' })
  })

  it('revokes with revocationRequest, after which the grant is invalid_grant', async () => {
    const refreshToken = await login()
    const revoked = await oauth.revocationRequest(as, client, oauth.None(), refreshToken, {
      [oauth.customFetch]: toLocal,
    })
    await expect(oauth.processRevocationResponse(revoked)).resolves.toBeUndefined()
    const response = await oauth.refreshTokenGrantRequest(as, client, oauth.None(), refreshToken, {
      [oauth.customFetch]: toLocal,
    })
    await expect(oauth.processRefreshTokenResponse(as, client, response)).rejects.toMatchObject({
      name: 'ResponseBodyError',
      error: 'invalid_grant',
    })
  })

  it('reports another client as ResponseBodyError "invalid_client"', async () => {
    const refreshToken = await login()
    const stranger: oauth.Client = { client_id: 'stranger' }
    const response = await oauth.refreshTokenGrantRequest(as, stranger, oauth.None(), refreshToken, {
      [oauth.customFetch]: toLocal,
    })
    await expect(oauth.processRefreshTokenResponse(as, stranger, response)).rejects.toMatchObject({
      name: 'ResponseBodyError',
      error: 'invalid_client',
      status: 400,
    })
  })
})
