/**
 * Client authentication on the OAuth routes as generic OAuth libraries send it: many default to HTTP
 * Basic (RFC 6749 section 2.3.1, id and secret form-urlencoded) rather than `client_id` in the body.
 * A failed Basic authentication must answer 401 with a Basic challenge (RFC 6749 section 5.2).
 */
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AUDIENCE, ISSUER, login, PASSWORD, send } from './helpers/http.js'

const CLIENT_ID = 'my app:web'

let store: TokenStore
let app: AuthServer
let origin: string

beforeAll(async () => {
  store = createSqliteStore({ filename: ':memory:' })
  app = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    clientId: CLIENT_ID,
    store,
    rateLimit: false,
    pruneInterval: 0,
  })
  origin = await app.listen({ port: 0, host: '127.0.0.1' })
  await app.tokenflow.issuer.addUser('ada', PASSWORD)
})

afterAll(async () => {
  await app.close()
  await store.close()
})

/** RFC 6749 section 2.3.1: each part form-urlencoded, then Basic */
const basic = (id: string, secret = '') =>
  `Basic ${Buffer.from(`${new URLSearchParams({ a: id }).toString().slice(2)}:${secret}`).toString('base64')}`

const post = (path: string, params: Record<string, string>, authorization?: string) =>
  send(`${origin}${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      ...(authorization === undefined ? {} : { authorization }),
    },
    body: new URLSearchParams(params).toString(),
  })

describe('HTTP Basic client authentication', () => {
  it('refreshes on /oauth/token for a client that names itself in HTTP Basic, form-urlencoded', async () => {
    const { refreshToken } = await login(origin)
    const reply = await post(
      '/oauth/token',
      { grant_type: 'refresh_token', refresh_token: refreshToken },
      basic(CLIENT_ID),
    )
    expect(reply.status).toBe(200)
    expect(reply.headers.get('cache-control')).toBe('no-store')
    expect(reply.json()).toMatchObject({ token_type: 'Bearer', refresh_token: expect.any(String) })
  })

  it('revokes on /oauth/revoke for a client that names itself in HTTP Basic', async () => {
    const { refreshToken } = await login(origin)
    const reply = await post('/oauth/revoke', { token: refreshToken }, basic(CLIENT_ID))
    expect(reply.status).toBe(200)
    const after = await post('/oauth/token', {
      grant_type: 'refresh_token',
      refresh_token: refreshToken,
      client_id: CLIENT_ID,
    })
    expect(after.json()).toMatchObject({ error: 'invalid_grant' })
  })

  it('answers failed Basic client authentication with 401 invalid_client and a Basic challenge', async () => {
    const { refreshToken } = await login(origin)
    const grant = { grant_type: 'refresh_token', refresh_token: refreshToken }
    const revoke = { token: refreshToken }
    for (const [authorization, extra] of [
      [basic('evil'), {}],
      [basic(CLIENT_ID, 's3cret'), {}],
      // the body names another client than the header
      [basic(CLIENT_ID), { client_id: 'evil' }],
      ['Basic !!!', {}],
    ] as const) {
      for (const [path, params] of [
        ['/oauth/token', grant],
        ['/oauth/revoke', revoke],
      ] as const) {
        const reply = await post(path, { ...params, ...extra }, authorization)
        expect(reply.status).toBe(401)
        expect(reply.headers.get('www-authenticate')).toMatch(/^Basic realm="/)
        expect(reply.headers.get('cache-control')).toBe('no-store')
        expect(reply.json()).toEqual({
          error: 'invalid_client',
          error_description: 'client authentication failed',
          code: 'ERR_INVALID_CLIENT',
        })
      }
    }
    // none of those spent or ended the session
    const reply = await post('/oauth/token', { ...grant, client_id: CLIENT_ID })
    expect(reply.status).toBe(200)
  })
})
