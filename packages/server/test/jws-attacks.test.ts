/**
 * Attacks on access-token verification, sent over HTTP to a Fastify app (preHandler) and to a bare
 * `node:http` server (the Express-style middleware), with the JWKS given as an object and fetched
 * from a 127.0.0.1 server. Every refusal is checked for its status, body, code and challenge.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { type AccessTokenClaims, createVerifier, type Verifier } from '@tokenflow/server/verify'
import Fastify from 'fastify'
import {
  base64url,
  type CryptoKey,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  type JWK,
  type JWTHeaderParameters,
  type JWTPayload,
  SignJWT,
} from 'jose'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { isAuthError } from '../src/errors.js'

const ISSUER = 'https://auth.example.test'
const AUDIENCE = 'https://api.example.test'
/** the verifiers' fixed clock, epoch ms; tokens are dated around it */
const NOW = 1_750_000_000_000
const NOW_S = NOW / 1000

interface TestKey {
  alg: string
  kid: string
  privateKey: CryptoKey
  publicKey: CryptoKey
  jwk: JWK
}

async function makeKey(alg: 'ES256' | 'ES512' | 'RS256', kid: string): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true })
  return { alg, kid, publicKey, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } }
}

function claims(overrides: Record<string, unknown> = {}): JWTPayload {
  return {
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
}

/** Signs `payload` with `key`; header members set to undefined are left out. */
function sign(
  key: TestKey,
  payload: JWTPayload = claims(),
  header: Record<string, unknown> = {},
): Promise<string> {
  return new SignJWT(payload)
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'at+jwt', ...header } as JWTHeaderParameters)
    .sign(key.privateKey)
}

const encodeJson = (value: unknown) => base64url.encode(JSON.stringify(value))

/** A compact JWS built by hand, for what no honest library would sign. */
function handmade(header: Record<string, unknown>, payload: JWTPayload, signature: string): string {
  return `${encodeJson(header)}.${encodeJson(payload)}.${signature}`
}

function hs256(header: Record<string, unknown>, payload: JWTPayload, secret: Uint8Array): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg: 'HS256', ...header }).sign(secret)
}

function listen(server: Server): Promise<string> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`))
  })
}

function close(server: Server): Promise<void> {
  server.closeAllConnections()
  return new Promise((resolve) => server.close(() => resolve()))
}

interface Answer {
  status: number
  headers: Record<string, unknown>
  body: Record<string, unknown>
}

interface Target {
  request(authorization?: string): Promise<Answer>
  close(): Promise<void>
}

async function fastifyTarget(verifier: Verifier): Promise<Target> {
  const app = Fastify()
  app.get('/me', { preHandler: verifier.fastify }, async (request) => ({ auth: request.auth }))
  await app.ready()
  return {
    async request(authorization) {
      const response = await app.inject({
        method: 'GET',
        url: '/me',
        headers: authorization === undefined ? {} : { authorization },
      })
      return { status: response.statusCode, headers: response.headers, body: response.json() }
    },
    close: () => app.close(),
  }
}

async function expressTarget(verifier: Verifier): Promise<Target> {
  // the default 16 KiB header limit would answer 431 before the verifier sees an oversized token
  const server = createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
    verifier.express(req, res, (error) => {
      if (error) {
        res.writeHead(500).end()
        return
      }
      const { auth } = req as IncomingMessage & { auth?: AccessTokenClaims }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ auth }))
    })
  })
  const url = await listen(server)
  return {
    async request(authorization) {
      const response = await fetch(`${url}/me`, {
        headers: authorization === undefined ? {} : { authorization },
      })
      const headers: Record<string, string> = {}
      response.headers.forEach((value, name) => {
        headers[name] = value
      })
      return { status: response.status, headers, body: (await response.json()) as Record<string, unknown> }
    },
    close: () => close(server),
  }
}

let es256: TestKey
let rs256: TestKey
let es512: TestKey
/** a key of the attacker's, never in the trusted JWKS */
let attacker: TestKey
let jwksServer: Server
let jwksUrl: string
/** serves the attacker's JWKS and counts every request: a verifier that follows jku/x5u would show up here */
let attackerServer: Server
let attackerUrl: string
let attackerHits = 0

beforeAll(async () => {
  ;[es256, rs256, es512, attacker] = await Promise.all([
    makeKey('ES256', 'es256-key'),
    makeKey('RS256', 'rs256-key'),
    makeKey('ES512', 'es512-key'),
    makeKey('ES256', 'attacker-key'),
  ])
  const jwks = { keys: [es256.jwk, rs256.jwk, es512.jwk] }
  jwksServer = createServer((req, res) => {
    if (req.url !== '/.well-known/jwks.json') return res.writeHead(404).end()
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks))
  })
  jwksUrl = `${await listen(jwksServer)}/.well-known/jwks.json`
  attackerServer = createServer((_req, res) => {
    attackerHits++
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [attacker.jwk] }))
  })
  attackerUrl = await listen(attackerServer)
})

afterAll(async () => {
  await Promise.all([close(jwksServer), close(attackerServer)])
})

interface AttackCase {
  name: string
  /** the Authorization header, or undefined for none */
  authorization: () => Promise<string | undefined>
  code: string
}

const bearer = (token: () => Promise<string> | string) => async () => `Bearer ${await token()}`

// JSON.stringify leaves out undefined members, so `{ iss: undefined }` signs a token without iss
const CASES: AttackCase[] = [
  ...['none', 'None', 'NONE', 'nOnE'].flatMap((alg) => [
    {
      name: `alg "${alg}" with an empty signature`,
      authorization: bearer(() => handmade({ alg, kid: 'es256-key', typ: 'at+jwt' }, claims(), '')),
      code: 'ERR_JOSE_ALG_NOT_ALLOWED',
    },
    {
      name: `alg "${alg}" with a junk signature`,
      authorization: bearer(() => handmade({ alg, kid: 'es256-key', typ: 'at+jwt' }, claims(), 'AAAA')),
      code: 'ERR_JOSE_ALG_NOT_ALLOWED',
    },
  ]),
  {
    name: 'HS256 with the public key as the HMAC secret, PEM (SPKI)',
    authorization: bearer(async () =>
      hs256(
        { kid: es256.kid, typ: 'at+jwt' },
        claims(),
        new TextEncoder().encode(await exportSPKI(es256.publicKey)),
      ),
    ),
    code: 'ERR_JOSE_ALG_NOT_ALLOWED',
  },
  {
    name: 'HS256 with the public key as the HMAC secret, JWK JSON string',
    authorization: bearer(async () =>
      hs256({ kid: es256.kid, typ: 'at+jwt' }, claims(), new TextEncoder().encode(JSON.stringify(es256.jwk))),
    ),
    code: 'ERR_JOSE_ALG_NOT_ALLOWED',
  },
  {
    name: 'HS256 with the public key as the HMAC secret, DER (SPKI)',
    authorization: bearer(async () => {
      const pem = await exportSPKI(es256.publicKey)
      const der = Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ''), 'base64')
      return hs256({ kid: es256.kid, typ: 'at+jwt' }, claims(), der)
    }),
    code: 'ERR_JOSE_ALG_NOT_ALLOWED',
  },
  {
    name: 'HS256 with the RSA public key as the HMAC secret, PEM (SPKI)',
    authorization: bearer(async () =>
      hs256(
        { kid: rs256.kid, typ: 'at+jwt' },
        claims(),
        new TextEncoder().encode(await exportSPKI(rs256.publicKey)),
      ),
    ),
    code: 'ERR_JOSE_ALG_NOT_ALLOWED',
  },
  {
    name: 'ES512, signed by an ES512 key of the JWKS, outside the (default) allow-list',
    authorization: bearer(async () => sign(es512)),
    code: 'ERR_JOSE_ALG_NOT_ALLOWED',
  },
  {
    name: 'kid path traversal "../../etc/passwd"',
    authorization: bearer(async () => sign(es256, claims(), { kid: '../../etc/passwd' })),
    code: 'ERR_JWKS_NO_MATCHING_KEY',
  },
  {
    name: `kid SQL injection "' OR 1=1 --"`,
    authorization: bearer(async () => sign(es256, claims(), { kid: "' OR 1=1 --" })),
    code: 'ERR_JWKS_NO_MATCHING_KEY',
  },
  {
    name: 'a 10 KB kid',
    authorization: bearer(async () => sign(es256, claims(), { kid: 'k'.repeat(10_000) })),
    code: 'ERR_JWS_INVALID',
  },
  {
    name: 'an unknown kid',
    authorization: bearer(async () => sign(es256, claims(), { kid: 'not-in-the-jwks' })),
    code: 'ERR_JWKS_NO_MATCHING_KEY',
  },
  {
    name: 'a kid that is not a string',
    authorization: bearer(async () => sign(es256, claims(), { kid: 42 })),
    code: 'ERR_JWS_INVALID',
  },
  {
    name: 'jku pointing at the attacker JWKS, signed by the attacker key',
    authorization: bearer(async () => sign(attacker, claims(), { jku: `${attackerUrl}/jwks.json` })),
    code: 'ERR_JWT_UNTRUSTED_HEADER',
  },
  {
    name: 'jku pointing at the attacker JWKS, signed by the attacker key under our kid',
    authorization: bearer(async () =>
      sign(attacker, claims(), { jku: `${attackerUrl}/jwks.json`, kid: es256.kid }),
    ),
    code: 'ERR_JWT_UNTRUSTED_HEADER',
  },
  {
    name: 'x5u pointing at the attacker, signed by the attacker key',
    authorization: bearer(async () => sign(attacker, claims(), { x5u: `${attackerUrl}/cert.pem` })),
    code: 'ERR_JWT_UNTRUSTED_HEADER',
  },
  {
    name: 'the attacker public key embedded as jwk, signed by the attacker key',
    authorization: bearer(async () => sign(attacker, claims(), { jwk: attacker.jwk, kid: es256.kid })),
    code: 'ERR_JWT_UNTRUSTED_HEADER',
  },
  {
    name: 'an embedded x5c chain, signed by the attacker key',
    authorization: bearer(async () => sign(attacker, claims(), { x5c: ['MIIBattackerCertificate'] })),
    code: 'ERR_JWT_UNTRUSTED_HEADER',
  },
  {
    name: 'exp in the past, beyond the 30 s tolerance',
    authorization: bearer(async () => sign(es256, claims({ iat: NOW_S - 1000, exp: NOW_S - 31 }))),
    code: 'ERR_JWT_EXPIRED',
  },
  {
    name: 'nbf in the future, beyond the tolerance',
    authorization: bearer(async () => sign(es256, claims({ nbf: NOW_S + 31 }))),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'iat in the future, beyond the tolerance',
    authorization: bearer(async () => sign(es256, claims({ iat: NOW_S + 31 }))),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'wrong iss',
    authorization: bearer(async () => sign(es256, claims({ iss: 'https://evil.example.test' }))),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'missing iss',
    authorization: bearer(async () => sign(es256, claims({ iss: undefined }))),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'wrong aud',
    authorization: bearer(async () => sign(es256, claims({ aud: 'https://other-api.example.test' }))),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'missing aud',
    authorization: bearer(async () => sign(es256, claims({ aud: undefined }))),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'typ "JWT" (an ID token or any other JWT)',
    authorization: bearer(async () => sign(es256, claims(), { typ: 'JWT' })),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'missing typ',
    authorization: bearer(async () => sign(es256, claims(), { typ: undefined })),
    code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
  },
  {
    name: 'a refresh-token-looking opaque string (58 chars of base64url)',
    authorization: bearer(() => base64url.encode(new Uint8Array(43).map((_, index) => index * 7))),
    code: 'ERR_JWS_INVALID',
  },
  {
    name: 'a tampered payload',
    authorization: bearer(async () => {
      const [header, , signature] = (await sign(es256)).split('.')
      return `${header}.${encodeJson(claims({ sub: 'admin' }))}.${signature}`
    }),
    code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
  },
  {
    name: 'a tampered signature',
    authorization: bearer(async () => {
      const [header, payload, signature] = (await sign(es256)).split('.') as [string, string, string]
      // change a character in the middle: the last one also carries padding bits
      const flipped = signature[10] === 'A' ? 'B' : 'A'
      return `${header}.${payload}.${signature.slice(0, 10)}${flipped}${signature.slice(11)}`
    }),
    code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
  },
  {
    name: 'a signature from another key under our kid',
    authorization: bearer(async () => sign(attacker, claims(), { kid: es256.kid })),
    code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
  },
  {
    name: 'missing segments (2 parts)',
    authorization: bearer(async () => (await sign(es256)).split('.').slice(0, 2).join('.')),
    code: 'ERR_JWS_INVALID',
  },
  {
    name: 'extra segments (4 parts)',
    authorization: bearer(async () => `${await sign(es256)}.AAAA`),
    code: 'ERR_JWS_INVALID',
  },
  {
    name: 'base64 padding on the signature',
    authorization: bearer(async () => `${await sign(es256)}==`),
    code: 'ERR_JWS_INVALID',
  },
  {
    name: 'a space inside the token',
    authorization: bearer(async () => (await sign(es256)).replace('.', ' .')),
    code: 'ERR_JWS_INVALID',
  },
  { name: 'no Authorization header', authorization: async () => undefined, code: 'ERR_TOKEN_MISSING' },
  { name: 'an empty token ("Bearer ")', authorization: async () => 'Bearer ', code: 'ERR_TOKEN_MISSING' },
  { name: '"Bearer" with no token', authorization: async () => 'Bearer', code: 'ERR_TOKEN_MISSING' },
  {
    name: 'the Basic scheme',
    authorization: async () => 'Basic dXNlcjpwYXNzd29yZA==',
    code: 'ERR_TOKEN_MISSING',
  },
  {
    name: 'the token glued to the scheme ("Bearer<token>")',
    authorization: async () => `Bearer${await sign(es256)}`,
    code: 'ERR_TOKEN_MISSING',
  },
  {
    name: 'a token over 16 KiB',
    authorization: bearer(async () => sign(es256, claims({ padding: 'p'.repeat(13_000) }))),
    code: 'ERR_TOKEN_TOO_LARGE',
  },
]

const JWKS_MODES = [
  { mode: 'object', jwks: () => ({ keys: [es256.jwk, rs256.jwk, es512.jwk] }) },
  { mode: 'remote', jwks: () => jwksUrl },
] as const

const TARGETS = [
  { framework: 'fastify preHandler', make: fastifyTarget },
  { framework: 'express middleware on node:http', make: expressTarget },
] as const

/** the challenge characters RFC 6750 section 3 allows in error_description */
const SAFE_DESCRIPTION = /^[\x20\x21\x23-\x5b\x5d-\x7e]+$/

describe.each(TARGETS.flatMap((target) => JWKS_MODES.map((jwksMode) => ({ ...target, ...jwksMode }))))(
  '$framework, JWKS $mode',
  ({ make, jwks }) => {
    let target: Target

    beforeAll(async () => {
      target = await make(
        createVerifier({ jwks: jwks(), issuer: ISSUER, audience: AUDIENCE, now: () => NOW }),
      )
    })
    afterAll(() => target.close())

    it.each([
      { name: 'ES256', key: () => es256, header: {} },
      { name: 'RS256', key: () => rs256, header: {} },
      {
        name: 'ES256 with typ "application/at+jwt" (RFC 9068 section 4)',
        key: () => es256,
        header: { typ: 'application/at+jwt' },
      },
    ])('accepts a valid $name token and attaches its claims', async ({ key, header }) => {
      const answer = await target.request(`Bearer ${await sign(key(), claims(), header)}`)
      expect(answer.status).toBe(200)
      expect(answer.body).toEqual({ auth: claims() })
    })

    it.each(CASES)('refuses $name with 401 $code', async ({ authorization, code }) => {
      const header = await authorization()
      const answer = await target.request(header)
      expect(answer.status).toBe(401)
      expect(answer.body).toEqual({ error: 'invalid_token', error_description: expect.any(String), code })
      const description = answer.body.error_description as string
      expect(description).toMatch(SAFE_DESCRIPTION)
      expect(answer.headers['www-authenticate']).toBe(
        `Bearer error="invalid_token", error_description="${description}"`,
      )
      expect(answer.headers['cache-control']).toBe('no-store')
      // nothing of the token comes back: not in the body, not in the challenge
      const token = header?.replace(/^\S+ ?/, '') ?? ''
      if (token.length > 0) {
        expect(JSON.stringify(answer.body)).not.toContain(token)
        expect(String(answer.headers['www-authenticate'])).not.toContain(token)
      }
    })

    it('never fetched anything from jku or x5u', () => {
      expect(attackerHits).toBe(0)
    })
  },
)

describe('the remote JWKS is unreachable', () => {
  let deadUrl: string

  beforeAll(async () => {
    // a port that was just listening and is now closed: the connection is refused
    const server = createServer()
    deadUrl = `${await listen(server)}/.well-known/jwks.json`
    await close(server)
  })

  it.each(TARGETS)('$framework answers 503 ERR_JWKS_UNAVAILABLE, not 401', async ({ make }) => {
    const target = await make(
      createVerifier({ jwks: deadUrl, issuer: ISSUER, audience: AUDIENCE, now: () => NOW }),
    )
    try {
      const answer = await target.request(`Bearer ${await sign(es256)}`)
      expect(answer.status).toBe(503)
      expect(answer.body).toEqual({
        error: 'temporarily_unavailable',
        error_description: 'the signing keys are unavailable, try again later',
        code: 'ERR_JWKS_UNAVAILABLE',
      })
      expect(answer.headers['cache-control']).toBe('no-store')
      // a 401 would make clients refresh and retry with a token that was never judged
      expect(answer.headers['www-authenticate']).toBeUndefined()
    } finally {
      await target.close()
    }
  })
})

describe('configuration attacks', () => {
  it('refuses a clockTolerance above 60 s when the verifier is created', () => {
    const create = () =>
      createVerifier({
        jwks: { keys: [es256.jwk] },
        issuer: ISSUER,
        audience: AUDIENCE,
        clockTolerance: 60_001,
      })
    expect(create).toThrow('"clockTolerance" must be an integer from 0 to 60000 (ms)')
    try {
      create()
    } catch (error) {
      expect(isAuthError(error) && error.code).toBe('ERR_CONFIG')
    }
  })

  it.each([['none'], ['HS256'], ['ES256', 'HS256']])('refuses the allow-list %j', (...algorithms) => {
    expect(() =>
      createVerifier({
        jwks: { keys: [es256.jwk] },
        issuer: ISSUER,
        audience: AUDIENCE,
        algorithms: algorithms as never,
      }),
    ).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG', message: expect.stringContaining('"algorithms"') }),
    )
  })

  it('refuses a JWKS holding a secret (oct) key, which HS256 would use', () => {
    const oct = { kty: 'oct', k: base64url.encode(new Uint8Array(32)), alg: 'HS256', kid: 'oct' }
    expect(() =>
      createVerifier({ jwks: { keys: [es256.jwk, oct] }, issuer: ISSUER, audience: AUDIENCE }),
    ).toThrow(expect.objectContaining({ code: 'ERR_CONFIG', message: '"jwks" must hold public keys only' }))
  })
})
