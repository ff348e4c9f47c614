/**
 * Whatever a client sends, the token routes answer with a 4xx and a JSON error, never a 5xx, and the server
 * goes on working (fast-check, through Fastify's inject: no sockets). Bodies are arbitrary JSON, JSON with the
 * right field names and values of any type, raw strings under any content type, and form bodies; headers
 * include arbitrary Authorization values.
 */
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AUDIENCE, ISSUER } from './helpers/http.js'

const RUNS = Math.max(300, Number(process.env.TOKENFLOW_PROPERTY_RUNS) / 5 || 0)

let store: TokenStore
let app: AuthServer

beforeAll(async () => {
  store = createSqliteStore({ filename: ':memory:' })
  app = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    clientId: 'web',
    store,
    rateLimit: false,
    pruneInterval: 0,
    // no Argon2 in a property run: any credential check is a lookup
    authenticate: async ({ username, password }) =>
      username === 'ada' && password === 'secret' ? { userId: 'ada' } : null,
    logger: false,
  })
  await app.ready()
})

afterAll(async () => {
  await app.close()
  await store.close()
})

const ROUTES = ['/auth/login', '/refresh/token', '/auth/logout', '/oauth/token', '/oauth/revoke'] as const

/** a value of any JSON type, with the odd long string */
const anyValue = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.string({ maxLength: 2_000 }),
  fc.constantFrom('', ' ', '\u0000', 'null', '__proto__', 'A'.repeat(5_000)),
)

const body = fc.oneof(
  // the right field names with values of any type
  fc
    .record(
      {
        username: anyValue,
        password: anyValue,
        refreshToken: anyValue,
        grant_type: anyValue,
        refresh_token: anyValue,
        token: anyValue,
        client_id: anyValue,
      },
      { requiredKeys: [] },
    )
    .map((value) => ({ payload: JSON.stringify(value), type: 'application/json' })),
  // any JSON at all
  fc.jsonValue().map((value) => ({ payload: JSON.stringify(value) ?? 'null', type: 'application/json' })),
  // a form body of arbitrary pairs
  fc
    .array(fc.tuple(fc.string({ maxLength: 30 }), fc.string({ maxLength: 300 })), { maxLength: 8 })
    .map((pairs) => ({
      payload: new URLSearchParams(pairs).toString(),
      type: 'application/x-www-form-urlencoded',
    })),
  // anything under any content type
  fc.record({
    payload: fc.string({ maxLength: 3_000 }),
    type: fc.constantFrom(
      'application/json',
      'application/x-www-form-urlencoded',
      'text/plain',
      'application/json; charset=utf-16',
      'multipart/form-data; boundary=x',
      '',
    ),
  }),
)

describe('the token routes under arbitrary input (fast-check)', () => {
  it(`${RUNS} requests with arbitrary bodies and headers: a 4xx with a JSON error, never a 5xx`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ROUTES),
        body,
        fc.option(fc.string({ maxLength: 200 }), { nil: undefined }),
        async (url, { payload, type }, authorization) => {
          const headers: Record<string, string> = {}
          if (type) headers['content-type'] = type
          if (authorization !== undefined) headers.authorization = authorization
          const response = await app.inject({ method: 'POST', url, payload, headers })
          expect(response.statusCode, `${url} ${type} ${payload.slice(0, 200)}`).toBeLessThan(500)
          if (response.statusCode >= 400) {
            const parsed = response.json() as { error?: unknown }
            expect(typeof parsed.error).toBe('string')
            // the token routes never let a cache keep an answer, errors included
            if (url !== '/auth/logout') expect(response.headers['cache-control']).toBe('no-store')
          }
        },
      ),
      { numRuns: RUNS },
    )
    // and it still works
    const login = await app.inject({
      method: 'POST',
      url: '/auth/login',
      payload: { username: 'ada', password: 'secret' },
    })
    expect(login.statusCode).toBe(200)
    const refreshed = await app.inject({
      method: 'POST',
      url: '/refresh/token',
      payload: { refreshToken: login.json().refreshToken },
    })
    expect(refreshed.statusCode).toBe(200)
  }, 120_000)

  it(`${RUNS} arbitrary Authorization headers on the Bearer routes: 401 with WWW-Authenticate, never a 5xx`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.string({ maxLength: 300 }),
          fc.string({ maxLength: 300 }).map((value) => `Bearer ${value}`),
          fc
            .tuple(fc.base64String({ maxLength: 200 }), fc.base64String({ maxLength: 200 }))
            .map(([a, b]) => `Bearer eyJhbGciOiJFUzI1NiJ9.${a}.${b}`),
        ),
        fc.constantFrom(
          { method: 'GET' as const, url: '/auth/sessions' },
          { method: 'POST' as const, url: '/auth/logout-all' },
        ),
        async (authorization, route) => {
          const response = await app.inject({ ...route, headers: { authorization } })
          expect(response.statusCode, authorization.slice(0, 200)).toBe(401)
          expect(response.headers['www-authenticate']).toMatch(/^Bearer /)
          expect(typeof (response.json() as { code?: unknown }).code).toBe('string')
        },
      ),
      { numRuns: RUNS },
    )
  }, 120_000)
})
