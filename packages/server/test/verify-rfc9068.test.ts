/**
 * The claims RFC 9068 section 2.2 makes REQUIRED in a JWT access token: `iss`, `exp`, `aud`, `sub`,
 * `client_id`, `iat` and `jti`. A token without one of them, or with one that is not what the RFC
 * asks, is refused by `verify()` and by both middlewares in the same way: 401,
 * `ERR_JWT_CLAIM_VALIDATION_FAILED` naming the claim. Our own server's tokens carry all of them.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type AuthServer, createAuthServer, createSqliteStore } from '@tokenflow/server'
import {
  type AccessTokenClaims,
  createVerifier,
  type Verifier,
  type VerifierOptions,
} from '@tokenflow/server/verify'
import Fastify from 'fastify'
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PASSWORD } from './helpers/http.js'
import { rejection } from './helpers/verify.js'

const ISSUER = 'https://auth.example.test'
const AUDIENCE = 'https://api.example.test'
/** the verifier's fixed clock, epoch ms */
const NOW = 1_750_000_000_000
const NOW_S = NOW / 1000

let privateKey: CryptoKey
let jwk: JWK
let base: VerifierOptions

beforeAll(async () => {
  const pair = await generateKeyPair('ES256', { extractable: true })
  privateKey = pair.privateKey
  jwk = { ...(await exportJWK(pair.publicKey)), kid: 'es256-key', alg: 'ES256', use: 'sig' }
  base = { jwks: { keys: [jwk] }, issuer: ISSUER, audience: AUDIENCE, now: () => NOW }
})

/** every claim RFC 9068 section 2.2 requires, and `sid`; a claim set to undefined is left out */
function claims(overrides: Record<string, unknown> = {}): JWTPayload {
  const all: Record<string, unknown> = {
    iss: ISSUER,
    sub: 'user-1',
    aud: AUDIENCE,
    iat: NOW_S - 10,
    exp: NOW_S + 900,
    jti: 'jti-1',
    client_id: 'web',
    sid: 'session-1',
    ...overrides,
  }
  return Object.fromEntries(Object.entries(all).filter(([, value]) => value !== undefined))
}

function sign(payload: JWTPayload): Promise<string> {
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'ES256', kid: 'es256-key', typ: 'at+jwt' })
    .sign(privateKey)
}

interface Answer {
  status: number
  wwwAuthenticate: unknown
  body: unknown
}

/** what `verifier.fastify` answers for `token` on a route it guards */
async function viaFastify(verifier: Verifier, token: string): Promise<Answer> {
  const app = Fastify()
  app.get('/me', { preHandler: verifier.fastify }, async (request) => ({ auth: request.auth }))
  try {
    const response = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
    return {
      status: response.statusCode,
      wwwAuthenticate: response.headers['www-authenticate'],
      body: response.json(),
    }
  } finally {
    await app.close()
  }
}

/** what `verifier.express` answers for `token` on a bare `node:http` server */
async function viaExpress(verifier: Verifier, token: string): Promise<Answer> {
  const server = createServer((req: IncomingMessage & { auth?: AccessTokenClaims }, res: ServerResponse) => {
    verifier.express(req, res, (error) => {
      if (error !== undefined) return void res.writeHead(500).end('next(error)')
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ auth: req.auth }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  try {
    const { port } = server.address() as AddressInfo
    const response = await fetch(`http://127.0.0.1:${port}/me`, {
      headers: { authorization: `Bearer ${token}` },
    })
    return {
      status: response.status,
      wwwAuthenticate: response.headers.get('www-authenticate') ?? undefined,
      body: await response.json(),
    }
  } finally {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
}

/** the 401 both middlewares give for a missing or invalid required claim */
function refusedFor(claim: string): Answer {
  const description = `the access token ${claim} claim is invalid`
  return {
    status: 401,
    wwwAuthenticate: `Bearer error="invalid_token", error_description="${description}"`,
    body: { error: 'invalid_token', error_description: description, code: 'ERR_JWT_CLAIM_VALIDATION_FAILED' },
  }
}

describe('client_id, required by RFC 9068 section 2.2', () => {
  it('a token without client_id is refused like one without jti or sub, by verify() and both middlewares', async () => {
    const verifier = createVerifier(base)
    for (const claim of ['jti', 'sub', 'client_id']) {
      const token = await sign(claims({ [claim]: undefined }))
      expect(await rejection(verifier.verify(token))).toMatchObject({
        code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
        claim,
        status: 401,
      })
      expect(await viaFastify(verifier, token)).toEqual(refusedFor(claim))
      expect(await viaExpress(verifier, token)).toEqual(refusedFor(claim))
    }
  })

  it.each<[string, unknown]>([
    ['empty', ''],
    ['null', null],
    ['a number', 42],
    ['a boolean', true],
    ['an array', ['web']],
    ['an object', { id: 'web' }],
  ])('a token whose client_id is %s is refused, naming client_id', async (_name, clientId) => {
    const verifier = createVerifier(base)
    const token = await sign(claims({ client_id: clientId }))
    expect(await rejection(verifier.verify(token))).toMatchObject({
      code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
      claim: 'client_id',
      status: 401,
    })
    expect(await viaFastify(verifier, token)).toEqual(refusedFor('client_id'))
    expect(await viaExpress(verifier, token)).toEqual(refusedFor('client_id'))
  })

  it('an empty sub or jti is refused the same way as an empty client_id', async () => {
    const verifier = createVerifier(base)
    for (const claim of ['sub', 'jti', 'client_id']) {
      expect(await rejection(verifier.verify(await sign(claims({ [claim]: '' }))))).toMatchObject({
        code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
        claim,
        status: 401,
      })
    }
  })

  it('a token with every required claim passes, with client_id in the claims', async () => {
    const verifier = createVerifier(base)
    const token = await sign(claims())
    await expect(verifier.verify(token)).resolves.toEqual(claims())
    expect(await viaExpress(verifier, token)).toEqual({
      status: 200,
      wwwAuthenticate: undefined,
      body: { auth: claims() },
    })
  })
})

describe('the other claims RFC 9068 section 2.2 requires', () => {
  it.each(['iss', 'aud', 'exp', 'iat'])('a token without %s is refused, naming it', async (claim) => {
    const verifier = createVerifier(base)
    const token = await sign(claims({ [claim]: undefined }))
    expect(await rejection(verifier.verify(token))).toMatchObject({
      code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
      claim,
      status: 401,
    })
    expect(await viaFastify(verifier, token)).toEqual(refusedFor(claim))
  })
})

describe("our own server's access tokens", () => {
  let auth: AuthServer
  let cookieAuth: AuthServer
  let verifier: Verifier

  beforeAll(async () => {
    const common = {
      issuer: ISSUER,
      audience: AUDIENCE,
      rateLimit: false,
      pruneInterval: 0,
      authenticate: async ({ username, password }: { username: string; password: string }) =>
        username === 'ada' && password === PASSWORD ? { userId: 'ada' } : null,
    } as const
    // no clientId: the default one goes into client_id as well
    auth = createAuthServer({ ...common, store: createSqliteStore({ filename: ':memory:' }) })
    cookieAuth = createAuthServer({
      ...common,
      clientId: 'web',
      cookie: true,
      store: createSqliteStore({ filename: ':memory:' }),
    })
    await Promise.all([auth.ready(), cookieAuth.ready()])
    const jwks = (await auth.inject({ url: '/.well-known/jwks.json' })).json()
    verifier = createVerifier({ jwks, issuer: ISSUER, audience: AUDIENCE })
  })
  afterAll(async () => {
    await Promise.all([auth.close(), cookieAuth.close()])
  })

  const login = (target: AuthServer) =>
    target.inject({ method: 'POST', url: '/auth/login', payload: { username: 'ada', password: PASSWORD } })

  it('carry client_id from login, /refresh/token and /oauth/token, and pass the verifier', async () => {
    const first = (await login(auth)).json() as { accessToken: string; refreshToken: string }
    const refreshed = (
      await auth.inject({
        method: 'POST',
        url: '/refresh/token',
        payload: { refreshToken: first.refreshToken },
      })
    ).json() as { accessToken: string; refreshToken: string }
    const oauth = (
      await auth.inject({
        method: 'POST',
        url: '/oauth/token',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        payload: new URLSearchParams({
          grant_type: 'refresh_token',
          refresh_token: refreshed.refreshToken,
          client_id: 'tokenflow',
        }).toString(),
      })
    ).json() as { access_token: string }
    for (const token of [first.accessToken, refreshed.accessToken, oauth.access_token]) {
      await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'ada', client_id: 'tokenflow' })
    }
  })

  it('carry client_id from a cookie-mode login and refresh', async () => {
    const cookieJwks = (await cookieAuth.inject({ url: '/.well-known/jwks.json' })).json()
    const cookieVerifier = createVerifier({ jwks: cookieJwks, issuer: ISSUER, audience: AUDIENCE })
    const first = await login(cookieAuth)
    const refreshToken = first.cookies.find((cookie) => cookie.name === '__Secure-tokenflow_rt')?.value ?? ''
    const refreshed = await cookieAuth.inject({
      method: 'POST',
      url: '/refresh/token',
      cookies: { '__Secure-tokenflow_rt': refreshToken },
      headers: { 'x-tokenflow-refresh': '1' },
    })
    expect(refreshed.statusCode).toBe(200)
    for (const token of [first.json().accessToken as string, refreshed.json().accessToken as string]) {
      await expect(cookieVerifier.verify(token)).resolves.toMatchObject({ sub: 'ada', client_id: 'web' })
    }
  })
})
