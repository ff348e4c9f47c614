import { sign as cryptoSign, generateKeyPairSync } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import {
  type AccessTokenClaims,
  createVerifier,
  isVerifyError,
  type VerifierOptions,
  VerifyError,
  verifyErrorResponse,
} from '@tokenflow/server/verify'
import Fastify from 'fastify'
import {
  base64url,
  type CryptoKey,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
  type JWTPayload,
  SignJWT,
} from 'jose'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { AuthError, isAuthError } from '../src/errors.js'
import { rejection } from './helpers/verify.js'

const ISSUER = 'https://auth.example.test'
const AUDIENCE = 'https://api.example.test'
/** the verifier's fixed clock, epoch ms */
const NOW = 1_750_000_000_000
const NOW_S = NOW / 1000

interface TestKey {
  alg: string
  kid: string
  privateKey: CryptoKey
  jwk: JWK
}

async function makeKey(
  alg: 'ES256' | 'RS256',
  kid: string,
  jwk: Partial<JWK> = { alg, use: 'sig' },
): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true })
  return { alg, kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, ...jwk } }
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

function sign(
  key: TestKey,
  payload: JWTPayload = claims(),
  header: Record<string, unknown> = {},
  alg = key.alg,
): Promise<string> {
  return new SignJWT(payload)
    .setProtectedHeader({ alg, kid: key.kid, typ: 'at+jwt', ...header })
    .sign(key.privateKey)
}

const encodeJson = (value: unknown) => base64url.encode(JSON.stringify(value))

function listen(server: Server): Promise<string> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`))
  })
}

function close(server: Server): Promise<void> {
  server.closeAllConnections()
  return new Promise((resolve) => server.close(() => resolve()))
}

/** the ERR_CONFIG message `create` throws with */
function configError(create: () => unknown): string {
  try {
    create()
  } catch (error) {
    if (isAuthError(error) && error.code === 'ERR_CONFIG') return error.message
    throw error
  }
  throw new Error('expected an ERR_CONFIG AuthError, nothing was thrown')
}

let es256: TestKey
let rs256: TestKey
let base: VerifierOptions

beforeAll(async () => {
  ;[es256, rs256] = await Promise.all([makeKey('ES256', 'es256-key'), makeKey('RS256', 'rs256-key')])
  base = { jwks: { keys: [es256.jwk, rs256.jwk] }, issuer: ISSUER, audience: AUDIENCE, now: () => NOW }
})

describe('createVerifier options', () => {
  it.each<[string, Partial<VerifierOptions> | (() => Partial<VerifierOptions>), string]>([
    ['an empty issuer', { issuer: '' }, '"issuer" must be a non-empty string'],
    [
      'an empty audience list',
      { audience: [] },
      '"audience" must be a non-empty string or a non-empty array of them',
    ],
    [
      'an empty audience',
      { audience: [''] },
      '"audience" must be a non-empty string or a non-empty array of them',
    ],
    [
      'clockTolerance 60_001',
      { clockTolerance: 60_001 },
      '"clockTolerance" must be an integer from 0 to 60000 (ms)',
    ],
    [
      'a negative clockTolerance',
      { clockTolerance: -1 },
      '"clockTolerance" must be an integer from 0 to 60000 (ms)',
    ],
    [
      'clockTolerance in seconds',
      { clockTolerance: 0.5 },
      '"clockTolerance" must be an integer from 0 to 60000 (ms)',
    ],
    ['an empty typ', { typ: '' }, '"typ" must be a non-empty string'],
    [
      'an empty allow-list',
      { algorithms: [] },
      '"algorithms" must be a non-empty array of ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA, Ed25519',
    ],
    [
      '"none" in the allow-list',
      { algorithms: ['none' as never] },
      '"algorithms" must be a non-empty array of ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA, Ed25519',
    ],
    [
      'HS256 in the allow-list',
      { algorithms: ['ES256', 'HS256' as never] },
      '"algorithms" must be a non-empty array of ES256, ES384, ES512, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA, Ed25519',
    ],
    [
      'a number as jwks',
      { jwks: 42 as never },
      '"jwks" must be a URL or a JSON Web Key Set ({ keys: [...] })',
    ],
    [
      'a jwks that is no URL',
      { jwks: 'not a url' },
      '"jwks" must be a URL or a JSON Web Key Set ({ keys: [...] })',
    ],
    [
      'a plain-http jwks URL off localhost',
      { jwks: 'http://auth.example.test/jwks.json' },
      '"jwks" URL must use https (http only on localhost)',
    ],
    [
      'a file: jwks URL',
      { jwks: new URL('file:///etc/jwks.json') },
      '"jwks" URL must use https (http only on localhost)',
    ],
    [
      'a JWKS with a private key',
      () => ({ jwks: { keys: [{ ...es256.jwk, d: 'AAAA' }] } }),
      '"jwks" must hold public keys only',
    ],
    [
      'a JWKS with an HS256 secret',
      { jwks: { keys: [{ kty: 'oct', k: 'AAAA', alg: 'HS256' }] } },
      '"jwks" must hold public keys only',
    ],
    [
      'a JWKS with no key for the allow-list',
      () => ({ jwks: { keys: [es256.jwk] }, algorithms: ['RS256'] }),
      '"jwks" has no key for any of "algorithms"',
    ],
    [
      'a JWKS of encryption keys',
      () => ({ jwks: { keys: [{ ...es256.jwk, use: 'enc' }] } }),
      '"jwks" has no key for any of "algorithms"',
    ],
    [
      'a 1024-bit RSA key',
      () => ({ jwks: { keys: [{ ...rs256.jwk, n: base64url.encode(new Uint8Array(128).fill(0xc1)) }] } }),
      '"jwks" holds an RSA key shorter than 2048 bits',
    ],
    [
      'an RSA public exponent of 1',
      () => ({ jwks: { keys: [{ ...rs256.jwk, e: 'AQ' }] } }),
      '"jwks" holds an RSA key whose public exponent is even or below 3',
    ],
    [
      'a negative timeoutDuration',
      { timeoutDuration: -1 },
      '"timeoutDuration" must be an integer from 1 to 2147483647 (ms)',
    ],
    // every fetch would be aborted at once, and every token answered 503 for good
    [
      'a timeoutDuration of 0',
      { timeoutDuration: 0 },
      '"timeoutDuration" must be an integer from 1 to 2147483647 (ms)',
    ],
    // a timer that long fires at once: the same
    [
      'a timeoutDuration past 2^31 - 1 ms',
      { timeoutDuration: 2 ** 31 },
      '"timeoutDuration" must be an integer from 1 to 2147483647 (ms)',
    ],
    [
      'a fractional cooldownDuration',
      { cooldownDuration: 1.5 },
      '"cooldownDuration" must be a non-negative integer (ms)',
    ],
    ['a negative staleIfError', { staleIfError: -1 }, '"staleIfError" must be a non-negative integer (ms)'],
    ['staleIfError in seconds', { staleIfError: 0.5 }, '"staleIfError" must be a non-negative integer (ms)'],
    [
      'an infinite staleIfError',
      { staleIfError: Number.POSITIVE_INFINITY },
      '"staleIfError" must be a non-negative integer (ms)',
    ],
    [
      'staleIfError as a string',
      { staleIfError: '1h' as never },
      '"staleIfError" must be a non-negative integer (ms)',
    ],
    ['a fetch that is no function', { fetch: 'fetch' as never }, '"fetch" must be a function'],
    [
      'a realm with a double quote',
      { realm: 'api", error="none' },
      '"realm" must be a string of printable ASCII without double quotes or backslashes',
    ],
  ])('refuses %s with ERR_CONFIG when the verifier is created', (_name, options, message) => {
    const overrides = typeof options === 'function' ? options() : options
    expect(configError(() => createVerifier({ ...base, ...overrides }))).toBe(message)
  })

  it('accepts http on localhost and https, without fetching anything yet', () => {
    let fetched = 0
    const fetch = async () => {
      fetched++
      return new Response('{}')
    }
    for (const jwks of [
      'http://localhost:1/jwks.json',
      'http://127.0.0.1:1/jwks.json',
      'https://auth.example.test/jwks',
    ]) {
      expect(createVerifier({ ...base, jwks, fetch }).verify).toBeTypeOf('function')
    }
    expect(fetched).toBe(0)
  })

  it('accepts staleIfError 0 (strict) and a staleIfError of a day', () => {
    for (const staleIfError of [0, 86_400_000]) {
      expect(
        createVerifier({ ...base, jwks: 'https://auth.example.test/jwks', staleIfError }).verify,
      ).toBeTypeOf('function')
    }
  })
})

describe('verify', () => {
  it('resolves with the claims of a valid token', async () => {
    const verifier = createVerifier(base)
    await expect(verifier.verify(await sign(es256))).resolves.toEqual(claims())
    await expect(verifier.verify(await sign(rs256))).resolves.toEqual(claims())
  })

  it.each(['at+jwt', 'application/at+jwt', 'AT+JWT'])('accepts typ %j (RFC 9068 section 4)', async (typ) => {
    await expect(createVerifier(base).verify(await sign(es256, claims(), { typ }))).resolves.toMatchObject({
      sub: 'user-1',
    })
  })

  it.each([
    ['JWT', 'JWT'],
    ['missing', undefined],
    ['a refresh token type', 'rt+jwt'],
  ])('refuses typ %s, naming typ as the failed check', async (_name, typ) => {
    const error = await rejection(createVerifier(base).verify(await sign(es256, claims(), { typ })))
    expect(error).toMatchObject({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'typ', status: 401 })
  })

  it('accepts any audience of the list, and a token aud array that holds one of them', async () => {
    const verifier = createVerifier({ ...base, audience: ['https://other.example.test', AUDIENCE] })
    await expect(verifier.verify(await sign(es256))).resolves.toMatchObject({ aud: AUDIENCE })
    const token = await sign(es256, claims({ aud: ['https://third.example.test', AUDIENCE] }))
    await expect(createVerifier(base).verify(token)).resolves.toMatchObject({ sub: 'user-1' })
  })

  describe('clock tolerance, given in ms and applied in seconds', () => {
    it.each([
      { tolerance: 30_000, exp: NOW_S - 29, accepted: true },
      { tolerance: 30_000, exp: NOW_S - 30, accepted: false },
      { tolerance: 5_000, exp: NOW_S - 4, accepted: true },
      // 5_000 read as seconds would accept this one
      { tolerance: 5_000, exp: NOW_S - 5, accepted: false },
      { tolerance: 0, exp: NOW_S + 1, accepted: true },
      { tolerance: 0, exp: NOW_S, accepted: false },
    ])(
      'exp now$exp with clockTolerance $tolerance: accepted $accepted',
      async ({ tolerance, exp, accepted }) => {
        const result = createVerifier({ ...base, clockTolerance: tolerance }).verify(
          await sign(es256, claims({ iat: NOW_S - 100, exp })),
        )
        if (accepted) await expect(result).resolves.toMatchObject({ exp })
        else expect(await rejection(result)).toMatchObject({ code: 'ERR_JWT_EXPIRED', claim: 'exp' })
      },
    )

    it.each([
      { claim: 'iat', offset: 30, accepted: true },
      { claim: 'iat', offset: 31, accepted: false },
      { claim: 'nbf', offset: 30, accepted: true },
      { claim: 'nbf', offset: 31, accepted: false },
    ])(
      '$claim now+$offset s with the default 30 s: accepted $accepted',
      async ({ claim, offset, accepted }) => {
        const result = createVerifier(base).verify(await sign(es256, claims({ [claim]: NOW_S + offset })))
        if (accepted) await expect(result).resolves.toMatchObject({ sub: 'user-1' })
        else expect(await rejection(result)).toMatchObject({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim })
      },
    )

    it('reads the injected clock on every call', async () => {
      let now = NOW
      const verifier = createVerifier({ ...base, clockTolerance: 0, now: () => now })
      const token = await sign(es256, claims({ exp: NOW_S + 60 }))
      await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
      now += 60_000
      expect(await rejection(verifier.verify(token))).toMatchObject({ code: 'ERR_JWT_EXPIRED' })
    })
  })

  it.each([
    ['sub is not a string', { sub: 42 }, 'sub'],
    ['sub is empty', { sub: '' }, 'sub'],
    ['jti is missing', { jti: undefined }, 'jti'],
    ['iat is missing', { iat: undefined }, 'iat'],
    ['iat is not a number', { iat: '1750000000' }, 'iat'],
    ['exp is missing', { exp: undefined }, 'exp'],
    ['exp is not a number', { exp: 'later' }, 'exp'],
    ['client_id is not a string', { client_id: ['web'] }, 'client_id'],
    ['sid is not a string', { sid: 7 }, 'sid'],
  ])('refuses a token where %s', async (_name, overrides, claim) => {
    const error = await rejection(createVerifier(base).verify(await sign(es256, claims(overrides))))
    expect(error).toMatchObject({ code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim })
  })

  it('uses a key only with its own alg: PS256 signed by the RS256 key is refused even when PS256 is allowed', async () => {
    // the same RSA private key, imported for RSA-PSS
    const pss = {
      ...rs256,
      privateKey: (await importJWK(await exportJWK(rs256.privateKey), 'PS256')) as CryptoKey,
    }
    const token = await sign(pss, claims(), {}, 'PS256')
    // a JWKS object narrows the allow-list to the algorithms its keys declare: PS256 is out
    const local = createVerifier({ ...base, algorithms: ['RS256', 'PS256'] })
    expect(await rejection(local.verify(token))).toMatchObject({ code: 'ERR_JOSE_ALG_NOT_ALLOWED' })
    // a remote JWKS is not known in advance: jose's key selection finds no key whose alg is PS256
    const fetch = async () => new Response(JSON.stringify({ keys: [rs256.jwk] }))
    const remote = createVerifier({
      ...base,
      jwks: 'https://auth.example.test/jwks',
      fetch,
      algorithms: ['RS256', 'PS256'],
    })
    expect(await rejection(remote.verify(token))).toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' })
    await expect(remote.verify(await sign(rs256))).resolves.toMatchObject({ sub: 'user-1' })
  })

  it('uses a key without alg for what its curve fits, and never for HS256', async () => {
    const bare = await makeKey('ES256', 'bare-key', {})
    const verifier = createVerifier({ ...base, jwks: { keys: [bare.jwk] } })
    await expect(verifier.verify(await sign(bare))).resolves.toMatchObject({ sub: 'user-1' })
    const hs = await new SignJWT(claims())
      .setProtectedHeader({ alg: 'HS256', kid: bare.kid, typ: 'at+jwt' })
      .sign(new TextEncoder().encode(JSON.stringify(bare.jwk)))
    expect(await rejection(verifier.verify(hs))).toMatchObject({ code: 'ERR_JOSE_ALG_NOT_ALLOWED' })
  })

  it('refuses a kid of 257 characters before any key lookup, and takes one of 256', async () => {
    const longKid = await makeKey('ES256', 'k'.repeat(256))
    const verifier = createVerifier({ ...base, jwks: { keys: [longKid.jwk] } })
    await expect(verifier.verify(await sign(longKid))).resolves.toMatchObject({ sub: 'user-1' })
    const error = await rejection(verifier.verify(await sign(longKid, claims(), { kid: 'k'.repeat(257) })))
    expect(error).toMatchObject({
      code: 'ERR_JWS_INVALID',
      message: '"kid" must be a string of at most 256 characters',
    })
  })

  it('refuses a token of 16 KiB + 1 before parsing it, and parses one of 16 KiB', async () => {
    const verifier = createVerifier(base)
    const exact = 'a'.repeat(16 * 1024)
    expect(await rejection(verifier.verify(exact))).toMatchObject({ code: 'ERR_JWS_INVALID' })
    expect(await rejection(verifier.verify(`${exact}a`))).toMatchObject({ code: 'ERR_TOKEN_TOO_LARGE' })
  })

  it('refuses a payload segment spelled with its unused bits set (same bytes, other spelling)', async () => {
    // a jti length whose payload segment ends in a partial group, so its last character has unused bits
    let jti = 'j'
    while (encodeJson(claims({ jti })).length % 4 === 0) jti += 'j'
    const [header, payload, signature] = (await sign(es256, claims({ jti }))).split('.') as [
      string,
      string,
      string,
    ]
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    const respelled = payload.slice(0, -1) + alphabet[alphabet.indexOf(payload.at(-1)!) | 1]
    // a lenient decoder reads the same claims from both spellings
    expect(Buffer.from(respelled, 'base64url')).toEqual(Buffer.from(payload, 'base64url'))
    const verifier = createVerifier(base)
    await expect(verifier.verify(`${header}.${payload}.${signature}`)).resolves.toMatchObject({ jti })
    expect(await rejection(verifier.verify(`${header}.${respelled}.${signature}`))).toMatchObject({
      code: 'ERR_JWS_INVALID',
      message: 'a jws segment is not canonical unpadded base64url',
    })
  })

  it('never puts the token in an error message', async () => {
    const verifier = createVerifier(base)
    const tokens = [
      await sign(es256, claims({ exp: NOW_S - 100, iat: NOW_S - 200 })),
      await sign(es256, claims({ aud: 'https://other.example.test' })),
      `${await sign(es256)}x`,
      'opaque-refresh-token-value-0123456789',
    ]
    for (const token of tokens) {
      const error = await rejection(verifier.verify(token))
      expect(error.message).not.toContain(token)
      expect(error.message).not.toContain(token.split('.')[1] ?? token)
    }
  })

  it('isVerifyError recognises a VerifyError from another copy of the package', () => {
    const foreign = Object.assign(new Error('expired'), { name: 'VerifyError', code: 'ERR_JWT_EXPIRED' })
    expect(isVerifyError(foreign)).toBe(true)
    expect(isVerifyError(new VerifyError('ERR_JWT_EXPIRED', 'expired'))).toBe(true)
    expect(isVerifyError(new AuthError('ERR_INVALID_TOKEN', 'invalid'))).toBe(false)
    expect(isVerifyError({ name: 'VerifyError', code: 'ERR_JWT_EXPIRED' })).toBe(false)
  })

  it('gives status 401 for token errors and 503 for ERR_JWKS_UNAVAILABLE', () => {
    expect(new VerifyError('ERR_JWS_INVALID', 'x').status).toBe(401)
    expect(new VerifyError('ERR_JWKS_UNAVAILABLE', 'x').status).toBe(503)
  })

  it.each([
    [undefined, 1],
    [0, 1],
    [-5, 1],
    [Number.NaN, 1],
    [0.001, 1],
    [2.2, 3],
    [30, 30],
  ])(
    'an ERR_JWKS_UNAVAILABLE VerifyError given retryAfter %s says retry in %s whole seconds',
    (given, seconds) => {
      const options = given === undefined ? {} : { retryAfter: given }
      expect(new VerifyError('ERR_JWKS_UNAVAILABLE', 'x', options).retryAfter).toBe(seconds)
    },
  )

  it('only an ERR_JWKS_UNAVAILABLE VerifyError has a retryAfter', () => {
    expect(new VerifyError('ERR_JWT_EXPIRED', 'x', { retryAfter: 5 }).retryAfter).toBeUndefined()
    expect(
      verifyErrorResponse(new VerifyError('ERR_JWT_EXPIRED', 'x', { retryAfter: 5 })).headers,
    ).not.toHaveProperty('retry-after')
  })

  it('verifyErrorResponse builds the answer the middlewares send, never from the message', () => {
    const message = 'a message that must not reach the client: "eyJhbGciOi..."'
    expect(verifyErrorResponse(new VerifyError('ERR_JWT_EXPIRED', message), { realm: 'api' })).toEqual({
      status: 401,
      headers: {
        'cache-control': 'no-store',
        'www-authenticate':
          'Bearer realm="api", error="invalid_token", error_description="the access token expired"',
      },
      body: {
        error: 'invalid_token',
        error_description: 'the access token expired',
        code: 'ERR_JWT_EXPIRED',
      },
    })
    expect(verifyErrorResponse(new VerifyError('ERR_JWKS_UNAVAILABLE', message))).toEqual({
      status: 503,
      headers: { 'cache-control': 'no-store', 'retry-after': '1' },
      body: {
        error: 'temporarily_unavailable',
        error_description: 'the signing keys are unavailable, try again later',
        code: 'ERR_JWKS_UNAVAILABLE',
      },
    })
  })

  it('verifyErrorResponse refuses a realm that createVerifier refuses: a quote or a line break would break the challenge', () => {
    const error = new VerifyError('ERR_JWT_EXPIRED', 'x')
    for (const realm of ['a"b', 'api\r\nSet-Cookie: x=1', 'back\\slash']) {
      // was: `Bearer realm="a"b", …`, or a header value with CR/LF that Node refuses to set
      expect(() => verifyErrorResponse(error, { realm })).toThrow(
        expect.objectContaining({
          name: 'AuthError',
          code: 'ERR_CONFIG',
          message: '"realm" must be a string of printable ASCII without double quotes or backslashes',
        }),
      )
    }
    expect(verifyErrorResponse(error, { realm: undefined }).headers['www-authenticate']).toMatch(
      /^Bearer error=/,
    )
  })

  it('verifyErrorResponse gives a 503 the Retry-After of the error, also for a VerifyError of another copy', () => {
    const error = new VerifyError('ERR_JWKS_UNAVAILABLE', 'x', { retryAfter: 17 })
    expect(verifyErrorResponse(error).headers).toEqual({ 'cache-control': 'no-store', 'retry-after': '17' })
    // an older copy of the package has no retryAfter: the answer still says when to retry
    const foreign = Object.assign(new Error('x'), {
      name: 'VerifyError',
      code: 'ERR_JWKS_UNAVAILABLE',
      status: 503,
      claim: undefined,
    }) as unknown as VerifyError
    expect(verifyErrorResponse(foreign).headers).toEqual({ 'cache-control': 'no-store', 'retry-after': '1' })
  })
})

describe('remote JWKS', () => {
  let server: Server
  let url: string
  let hits = 0
  /** what the JWKS endpoint answers next */
  let answer: (res: ServerResponse) => void

  beforeAll(async () => {
    server = createServer((_req, res) => {
      hits++
      answer(res)
    })
    url = `${await listen(server)}/.well-known/jwks.json`
  })
  afterAll(() => close(server))
  afterEach(() => {
    hits = 0
  })

  const serve = (keys: JWK[]) => (res: ServerResponse) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }))
  }

  it('fetches once and reuses the keys', async () => {
    answer = serve([es256.jwk])
    const verifier = createVerifier({ ...base, jwks: url })
    for (let index = 0; index < 3; index++) {
      await expect(verifier.verify(await sign(es256))).resolves.toMatchObject({ sub: 'user-1' })
    }
    expect(hits).toBe(1)
  })

  it('picks up a rotated key: an unknown kid refetches once the cooldown is over', async () => {
    answer = serve([es256.jwk])
    const verifier = createVerifier({ ...base, jwks: url, cooldownDuration: 0 })
    await expect(verifier.verify(await sign(es256))).resolves.toMatchObject({ sub: 'user-1' })
    const next = await makeKey('ES256', 'es256-next')
    answer = serve([es256.jwk, next.jwk])
    await expect(verifier.verify(await sign(next))).resolves.toMatchObject({ sub: 'user-1' })
    expect(hits).toBe(2)
  })

  it('does not refetch for an unknown kid during the cooldown', async () => {
    answer = serve([es256.jwk])
    const verifier = createVerifier({ ...base, jwks: url })
    await expect(verifier.verify(await sign(es256))).resolves.toMatchObject({ sub: 'user-1' })
    const error = await rejection(verifier.verify(await sign(es256, claims(), { kid: 'unknown' })))
    expect(error.code).toBe('ERR_JWKS_NO_MATCHING_KEY')
    expect(hits).toBe(1)
  })

  it.each([
    ['a 500', (res: ServerResponse) => res.writeHead(500).end()],
    ['a body that is not JSON', (res: ServerResponse) => res.writeHead(200).end('<html>')],
    ['JSON that is not a JWKS', (res: ServerResponse) => res.writeHead(200).end('{"keys":"none"}')],
    [
      'a redirect',
      (res: ServerResponse) => res.writeHead(302, { location: 'https://evil.example.test/' }).end(),
    ],
  ])(
    'reports %s as ERR_JWKS_UNAVAILABLE, and accepts the token once the JWKS is back',
    async (_name, broken) => {
      answer = broken
      const verifier = createVerifier({ ...base, jwks: url })
      const token = await sign(es256)
      const error = await rejection(verifier.verify(token))
      expect(error).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE', status: 503 })
      answer = serve([es256.jwk])
      // the failure holds off the next fetch for 1 s (the backoff runs on Date.now)
      vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + 1_000 })
      try {
        await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
      } finally {
        vi.useRealTimers()
      }
    },
  )

  describe('retryAfter for a caller of verify()', () => {
    afterEach(() => {
      vi.useRealTimers()
    })

    /** a JWKS fetch that serves es256 while `state.up` and answers 500 otherwise */
    function switchable() {
      const state = { up: true, fetches: 0 }
      const fetch = async () => {
        state.fetches++
        return state.up
          ? new Response(JSON.stringify({ keys: [es256.jwk] }), {
              headers: { 'content-type': 'application/json' },
            })
          : new Response('', { status: 500 })
      }
      return { state, fetch }
    }

    it('a failed fetch for an unknown kid tells the caller of verify() when the cooldown lets it fetch again', async () => {
      // the JWKS cache and cooldown run on Date.now
      vi.useFakeTimers({ toFake: ['Date'] })
      vi.setSystemTime(NOW)
      const { state, fetch } = switchable()
      const verifier = createVerifier({ ...base, jwks: 'https://auth.example.test/jwks.json', fetch })
      await expect(verifier.verify(await sign(es256))).resolves.toMatchObject({ sub: 'user-1' })
      state.up = false
      vi.setSystemTime(NOW + 31_000)
      const unknown = await sign(es256, claims(), { kid: 'unknown' })
      const first = await rejection(verifier.verify(unknown))
      expect(first).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE', status: 503, retryAfter: 30 })
      // jose's error for the 500 is kept as the cause
      expect((first.cause as { code?: unknown }).code).toBe('ERR_JOSE_GENERIC')
      vi.setSystemTime(NOW + 31_000 + 12_300)
      expect(await rejection(verifier.verify(unknown))).toMatchObject({
        code: 'ERR_JWKS_UNAVAILABLE',
        retryAfter: 18,
      })
      vi.setSystemTime(NOW + 31_000 + 29_999)
      expect(await rejection(verifier.verify(unknown))).toMatchObject({
        code: 'ERR_JWKS_UNAVAILABLE',
        retryAfter: 1,
      })
      expect(state.fetches).toBe(2)
    })

    it('a JWKS never fetched gives retryAfter 1, and the first verify() after that second fetches again', async () => {
      vi.useFakeTimers({ toFake: ['Date'] })
      vi.setSystemTime(NOW)
      const { state, fetch } = switchable()
      state.up = false
      const verifier = createVerifier({ ...base, jwks: 'https://auth.example.test/jwks.json', fetch })
      const token = await sign(es256)
      // within the backoff after a failure no fetch; after it one, whose failure doubles the backoff
      for (const [at, fetches, retryAfter] of [
        [0, 1, 1],
        [999, 1, 1],
        [1_000, 2, 2],
      ] as const) {
        vi.setSystemTime(NOW + at)
        expect(await rejection(verifier.verify(token))).toMatchObject({
          code: 'ERR_JWKS_UNAVAILABLE',
          status: 503,
          retryAfter,
        })
        expect(state.fetches).toBe(fetches)
      }
    })
  })

  it('reports a fetch that outlasts timeoutDuration as ERR_JWKS_UNAVAILABLE', async () => {
    answer = () => {
      // never answers; close() in afterAll ends the connection
    }
    const verifier = createVerifier({ ...base, jwks: url, timeoutDuration: 50 })
    const error = await rejection(verifier.verify(await sign(es256)))
    expect(error).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE', status: 503 })
    expect((error.cause as { code?: unknown }).code).toBe('ERR_JWKS_TIMEOUT')
  })

  it('reports a served RSA key under 2048 bits as ERR_JWKS_UNAVAILABLE, not as a bad token', async () => {
    // jose refuses to make or sign with such a key, so node:crypto signs RS256 by hand
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 1024 })
    const jwk = { ...(publicKey.export({ format: 'jwk' }) as JWK), kid: 'weak', alg: 'RS256' }
    const signingInput = `${encodeJson({ alg: 'RS256', kid: 'weak', typ: 'at+jwt' })}.${encodeJson(claims())}`
    const token = `${signingInput}.${base64url.encode(cryptoSign('sha256', Buffer.from(signingInput), privateKey))}`
    answer = serve([jwk])
    const error = await rejection(createVerifier({ ...base, jwks: url }).verify(token))
    expect(error).toMatchObject({
      code: 'ERR_JWKS_UNAVAILABLE',
      message: 'the json web key set holds an RSA key shorter than 2048 bits',
    })
  })

  it('fetches through the injected fetch', async () => {
    const requested: string[] = []
    const fetch = async (input: string | URL | Request) => {
      requested.push(String(input))
      return new Response(JSON.stringify({ keys: [es256.jwk] }), {
        headers: { 'content-type': 'application/json' },
      })
    }
    const verifier = createVerifier({ ...base, jwks: 'https://auth.example.test/jwks.json', fetch })
    await expect(verifier.verify(await sign(es256))).resolves.toMatchObject({ sub: 'user-1' })
    expect(requested).toEqual(['https://auth.example.test/jwks.json'])
  })
})

describe('fastify preHandler', () => {
  async function app(options: Partial<VerifierOptions> = {}) {
    const verifier = createVerifier({ ...base, ...options })
    const fastify = Fastify()
    let handled = 0
    fastify.get('/me', { preHandler: verifier.fastify }, async (request) => {
      handled++
      // request.auth is typed by the module augmentation in verify.ts
      const auth: AccessTokenClaims | undefined = request.auth
      return { sub: auth?.sub, sid: auth?.sid }
    })
    await fastify.ready()
    return { fastify, handled: () => handled }
  }

  it('attaches the claims and runs the handler', async () => {
    const { fastify, handled } = await app()
    const response = await fastify.inject({
      url: '/me',
      headers: { authorization: `Bearer ${await sign(es256)}` },
    })
    expect(response.statusCode).toBe(200)
    expect(response.json()).toEqual({ sub: 'user-1', sid: 'session-1' })
    expect(handled()).toBe(1)
  })

  it('works as an app-wide hook', async () => {
    const verifier = createVerifier(base)
    const fastify = Fastify()
    fastify.addHook('preHandler', verifier.fastify)
    fastify.get('/sessions', async (request) => ({ sid: request.auth?.sid }))
    const allowed = await fastify.inject({
      url: '/sessions',
      headers: { authorization: `Bearer ${await sign(rs256)}` },
    })
    expect(allowed.json()).toEqual({ sid: 'session-1' })
    const refused = await fastify.inject({ url: '/sessions', headers: { authorization: 'Bearer not.a.jwt' } })
    expect(refused.statusCode).toBe(401)
    expect(refused.json()).toMatchObject({ code: 'ERR_JWS_INVALID' })
  })

  it('takes the scheme in any case', async () => {
    const { fastify } = await app()
    const response = await fastify.inject({
      url: '/me',
      headers: { authorization: `bEaReR ${await sign(es256)}` },
    })
    expect(response.statusCode).toBe(200)
  })

  it('answers 401 without running the handler, with the realm when one is set', async () => {
    const { fastify, handled } = await app({ realm: 'api' })
    const response = await fastify.inject({ url: '/me' })
    expect(response.statusCode).toBe(401)
    expect(response.headers['www-authenticate']).toBe(
      'Bearer realm="api", error="invalid_token", error_description="the access token is missing"',
    )
    expect(response.headers['cache-control']).toBe('no-store')
    expect(response.headers['content-type']).toMatch(/^application\/json/)
    expect(response.json()).toEqual({
      error: 'invalid_token',
      error_description: 'the access token is missing',
      code: 'ERR_TOKEN_MISSING',
    })
    expect(handled()).toBe(0)
  })

  it.each([
    [{ aud: 'https://other.example.test' }, {}, 'the access token aud claim is invalid'],
    [{ iss: 'https://evil.example.test' }, {}, 'the access token iss claim is invalid'],
    [{}, { typ: 'JWT' }, 'the access token typ header is invalid'],
    [{ exp: NOW_S - 100, iat: NOW_S - 200 }, {}, 'the access token expired'],
  ])('describes the failed check: %j %j', async (overrides, header, description) => {
    const { fastify } = await app()
    const token = await sign(es256, claims(overrides), header)
    const response = await fastify.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
    expect(response.statusCode).toBe(401)
    expect(response.json().error_description).toBe(description)
    expect(response.headers['www-authenticate']).toBe(
      `Bearer error="invalid_token", error_description="${description}"`,
    )
  })

  it('lets an error that is not about the token surface as a 500', async () => {
    const { fastify, handled } = await app({
      now: () => {
        throw new Error('the clock broke')
      },
    })
    const response = await fastify.inject({
      url: '/me',
      headers: { authorization: `Bearer ${await sign(es256)}` },
    })
    expect(response.statusCode).toBe(500)
    expect(handled()).toBe(0)
  })
})

describe('express middleware', () => {
  /** calls the middleware with a recording response; resolves once it answered or called next */
  function run(middleware: ReturnType<typeof createVerifier>['express'], authorization?: string) {
    const req = { headers: authorization === undefined ? {} : { authorization } } as IncomingMessage & {
      auth?: AccessTokenClaims
    }
    return new Promise<{
      next?: unknown[]
      status?: number
      headers?: Record<string, string>
      body?: unknown
    }>((resolve) => {
      const res = {
        writeHead(status: number, headers: Record<string, string>) {
          this.status = status
          this.headers = headers
          return this
        },
        end(body: string) {
          resolve({ status: this.status, headers: this.headers, body: JSON.parse(body) })
        },
        status: 0,
        headers: {} as Record<string, string>,
      }
      middleware(req, res as unknown as ServerResponse, (...args: unknown[]) =>
        resolve({ next: args, body: req.auth }),
      )
    })
  }

  it('answers 401 for a missing header instead of throwing synchronously', async () => {
    const { express } = createVerifier(base)
    let outcome: ReturnType<typeof run> | undefined
    expect(() => {
      outcome = run(express)
    }).not.toThrow()
    await expect(outcome).resolves.toEqual({
      status: 401,
      headers: {
        'cache-control': 'no-store',
        'www-authenticate': 'Bearer error="invalid_token", error_description="the access token is missing"',
        'content-type': 'application/json; charset=utf-8',
      },
      body: {
        error: 'invalid_token',
        error_description: 'the access token is missing',
        code: 'ERR_TOKEN_MISSING',
      },
    })
  })

  it('sets req.auth and calls next() with no argument', async () => {
    const { express } = createVerifier(base)
    await expect(run(express, `Bearer ${await sign(es256)}`)).resolves.toEqual({ next: [], body: claims() })
  })

  it('passes an error that is not about the token to next(error)', async () => {
    const broken = new Error('the clock broke')
    const { express } = createVerifier({
      ...base,
      now: () => {
        throw broken
      },
    })
    await expect(run(express, `Bearer ${await sign(es256)}`)).resolves.toEqual({
      next: [broken],
      body: undefined,
    })
  })
})
