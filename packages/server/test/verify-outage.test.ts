/**
 * Stale-if-error (RFC 5861 section 4): a JWKS outage longer than `cacheMaxAge` must not take the API
 * down. A real `node:http` JWKS server on 127.0.0.1 can be switched between serving a key set (which
 * the tests change), answering 500, answering HTML, and hanging. The JWKS cache and cooldown run on
 * `Date.now`, which the tests move with fake `Date` only (timers stay real, so jose's fetch timeout is
 * real); the fetches are counted on the server.
 */
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createVerifier, type Verifier, type VerifierOptions } from '@tokenflow/server/verify'
import Fastify, { type FastifyInstance } from 'fastify'
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { rejection } from './helpers/verify.js'

const ISSUER = 'https://auth.example.test'
const AUDIENCE = 'https://api.example.test'
const START = 1_800_000_000_000
const CACHE_MAX_AGE = 600_000
const COOLDOWN = 30_000

type Mode = 'up' | 'error' | 'garbage' | 'hang'

interface TestKey {
  kid: string
  privateKey: CryptoKey
  jwk: JWK
}

async function makeKey(kid: string): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } }
}

/** a token valid for the whole test (two days), signed by `key`, with `sub` naming the key */
function sign(key: TestKey): Promise<string> {
  return new SignJWT({ client_id: 'web', jti: `jti-${key.kid}`, sub: `user-of-${key.kid}` })
    .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: 'at+jwt' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt(START / 1000 - 10)
    .setExpirationTime(START / 1000 + 2 * 86_400)
    .sign(key.privateKey)
}

let a: TestKey
let b: TestKey
let c: TestKey
let tokenA: string
let tokenB: string
let tokenC: string

let server: Server
let url: string
let mode: Mode = 'up'
let keys: JWK[] = []
let hits = 0
/** responses of the hanging mode still held open (the verifier's fetch has not given up on them) */
const hanging = new Set<ServerResponse>()

beforeAll(async () => {
  ;[a, b, c] = await Promise.all([makeKey('key-a'), makeKey('key-b'), makeKey('key-c')])
  ;[tokenA, tokenB, tokenC] = await Promise.all([sign(a), sign(b), sign(c)])
  server = createServer((_req, res) => {
    hits++
    if (mode === 'hang') {
      // answers nothing; the fetch's timeout (or afterEach) closes the connection
      hanging.add(res)
      res.on('close', () => hanging.delete(res))
      return
    }
    // no keep-alive: a socket closed by one test must not be reused by the next one's fetch
    if (mode === 'error') return void res.writeHead(500, { connection: 'close' }).end()
    if (mode === 'garbage')
      return void res.writeHead(200, { 'content-type': 'text/html', connection: 'close' }).end('<html>')
    res
      .writeHead(200, { 'content-type': 'application/json', connection: 'close' })
      .end(JSON.stringify({ keys }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`
})
afterAll(async () => {
  server.closeAllConnections()
  await new Promise((resolve) => server.close(resolve))
})
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'] })
  vi.setSystemTime(START)
  mode = 'up'
  keys = [a.jwk, b.jwk]
  hits = 0
})
afterEach(() => {
  for (const res of hanging) res.destroy()
  vi.useRealTimers()
})

/** a verifier of the test JWKS server, on the fake clock */
function remoteVerifier(options: Partial<VerifierOptions> = {}): Verifier {
  return createVerifier({
    jwks: url,
    issuer: ISSUER,
    audience: AUDIENCE,
    now: () => Date.now(),
    cacheMaxAge: CACHE_MAX_AGE,
    cooldownDuration: COOLDOWN,
    ...options,
  })
}

/** moves the fake clock to START + `ms` */
const at = (ms: number) => vi.setSystemTime(START + ms)

/** a Fastify API protected by `verifier`, answering with the verified `sub` */
async function api(verifier: Verifier): Promise<FastifyInstance> {
  const app = Fastify()
  app.get('/me', { preHandler: verifier.fastify }, async (request) => ({ sub: request.auth?.sub }))
  await app.ready()
  return app
}

const me = (app: FastifyInstance, token: string) =>
  app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })

describe('stale-if-error: a known kid keeps passing while the JWKS endpoint is down', () => {
  it.each<[Mode, Partial<VerifierOptions>]>([
    ['error', {}],
    ['garbage', {}],
    ['hang', { timeoutDuration: 200 }],
  ])(
    'verifies a known kid with the last good key set when the refetch past cacheMaxAge fails (%s)',
    async (broken, options) => {
      const verifier = remoteVerifier(options)
      await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
      expect(hits).toBe(1)
      mode = broken
      at(CACHE_MAX_AGE)
      await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
      await expect(verifier.verify(tokenB)).resolves.toMatchObject({ sub: 'user-of-key-b' })
      // the refetch failed once; the next attempt waits for the cooldown
      expect(hits).toBe(2)
    },
  )

  it('keeps a known kid passing through a 30-minute outage with at most one JWKS fetch per cooldown', async () => {
    const verifier = remoteVerifier()
    const app = await api(verifier)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    expect(hits).toBe(1)

    mode = 'error'
    // 30 minutes of outage, starting when the cache expires, with a burst of requests every 10 s
    for (let elapsed = 0; elapsed <= 1_800_000; elapsed += 10_000) {
      at(CACHE_MAX_AGE + elapsed)
      const replies = await Promise.all([me(app, tokenA), me(app, tokenB), me(app, tokenA)])
      expect(replies.map((reply) => reply.statusCode)).toEqual([200, 200, 200])
      expect(replies.map((reply) => reply.json().sub)).toEqual([
        'user-of-key-a',
        'user-of-key-b',
        'user-of-key-a',
      ])
      // the fetch of the expired cache, then one more each time the cooldown of the last one ends
      const expected = 2 + Math.floor(elapsed / COOLDOWN)
      await vi.waitFor(() => expect(hits).toBe(expected))
    }
    expect(hits).toBe(2 + 60)
    await app.close()
  })

  it('an unknown kid during the outage still gets 503 with the Retry-After of the cooldown', async () => {
    const verifier = remoteVerifier()
    const app = await api(verifier)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    mode = 'error'
    at(CACHE_MAX_AGE)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    expect(hits).toBe(2)

    // key-c is not in the last good set: it may be a new key, so the token cannot be judged
    at(CACHE_MAX_AGE + 12_300)
    const unknown = await me(app, tokenC)
    expect(unknown.statusCode).toBe(503)
    expect(unknown.json().code).toBe('ERR_JWKS_UNAVAILABLE')
    expect(unknown.headers['retry-after']).toBe('18')
    expect(hits).toBe(2)
    // known kids pass meanwhile, with no Retry-After
    const known = await me(app, tokenB)
    expect(known.statusCode).toBe(200)
    expect(known.headers['retry-after']).toBeUndefined()

    // once the cooldown is over the unknown kid makes the next attempt, which fails: a new cooldown
    at(CACHE_MAX_AGE + COOLDOWN)
    const again = await rejection(verifier.verify(tokenC))
    expect(again).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE', status: 503, retryAfter: 30 })
    expect(hits).toBe(3)
    await app.close()
  })

  it('shares one refetch among concurrent requests past cacheMaxAge, which all fall back to the last good set', async () => {
    const verifier = remoteVerifier({ timeoutDuration: 200 })
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    mode = 'hang'
    at(CACHE_MAX_AGE)
    const claims = await Promise.all(
      Array.from({ length: 10 }, (_, index) => verifier.verify(index % 2 === 0 ? tokenA : tokenB)),
    )
    expect(claims.map((claim) => claim.sub)).toEqual(
      Array.from({ length: 10 }, (_, index) => (index % 2 === 0 ? 'user-of-key-a' : 'user-of-key-b')),
    )
    expect(hits).toBe(2)
  })
})

describe('stale-if-error: a hanging JWKS endpoint', () => {
  it('delays only the first failed attempt: afterwards known kids verify at once, also while the next attempt hangs', async () => {
    // no clock in this test: a fetch that hangs for a minute would outlast the test's own timeout, so a
    // request that waited for it fails the test instead of passing slowly
    const verifier = remoteVerifier({ timeoutDuration: 60_000 })
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    // the first attempt past cacheMaxAge fails, and the request falls back to the last good set
    mode = 'error'
    at(CACHE_MAX_AGE)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    expect(hits).toBe(2)

    // during the cooldown: no fetch, even with the endpoint hanging now
    mode = 'hang'
    for (const offset of [1, 10_000, COOLDOWN - 1]) {
      at(CACHE_MAX_AGE + offset)
      await expect(verifier.verify(tokenB)).resolves.toMatchObject({ sub: 'user-of-key-b' })
    }
    expect(hits).toBe(2)

    // the cooldown is over: the next attempt starts and hangs, and the request does not wait for it
    at(CACHE_MAX_AGE + COOLDOWN)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    await vi.waitFor(() => expect(hits).toBe(3))
    // that attempt is still hanging, and the requests made meanwhile neither wait for it nor fetch again
    expect(hanging.size).toBe(1)
    const claims = await Promise.all([verifier.verify(tokenA), verifier.verify(tokenB)])
    expect(claims.map((claim) => claim.sub)).toEqual(['user-of-key-a', 'user-of-key-b'])
    expect(hanging.size).toBe(1)
    expect(hits).toBe(3)
  })
})

describe('stale-if-error: recovery', () => {
  it('picks up the rotated key set at the first attempt after the cooldown: a removed key stops verifying, a new one verifies', async () => {
    const verifier = remoteVerifier()
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    mode = 'error'
    at(CACHE_MAX_AGE)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    expect(hits).toBe(2)

    // the auth server comes back having rotated: key-a removed, key-c added
    mode = 'up'
    keys = [b.jwk, c.jwk]
    // until the cooldown of the failed attempt ends, the verifier does not know: key-a still passes
    at(CACHE_MAX_AGE + 10_000)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    expect(hits).toBe(2)

    // the cooldown is over: the new kid makes the next attempt and waits for it
    at(CACHE_MAX_AGE + COOLDOWN)
    await expect(verifier.verify(tokenC)).resolves.toMatchObject({ sub: 'user-of-key-c' })
    expect(hits).toBe(3)
    // the fetched set replaced the stale one: the removed key is refused, the kept one passes
    const removed = await rejection(verifier.verify(tokenA))
    expect(removed).toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY', status: 401 })
    await expect(verifier.verify(tokenB)).resolves.toMatchObject({ sub: 'user-of-key-b' })
    expect(hits).toBe(3)
  })

  it('bug: a failed fetch for an unknown kid while the set was fresh made the expiry refetch of a working JWKS run in the background, so a removed key still verified', async () => {
    const verifier = remoteVerifier()
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    // a blip while the set is fresh: an unknown kid meets a failing endpoint
    mode = 'error'
    at(100_000)
    expect(await rejection(verifier.verify(tokenC))).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE' })
    // the endpoint works again, and key-a has been removed
    mode = 'up'
    keys = [b.jwk]
    at(CACHE_MAX_AGE)
    expect(await rejection(verifier.verify(tokenA))).toMatchObject({
      code: 'ERR_JWKS_NO_MATCHING_KEY',
      status: 401,
    })
    await expect(verifier.verify(tokenB)).resolves.toMatchObject({ sub: 'user-of-key-b' })
    expect(hits).toBe(3)
  })

  it('picks up the rotated key set when a known kid makes the first attempt after the cooldown', async () => {
    const verifier = remoteVerifier()
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    mode = 'error'
    at(CACHE_MAX_AGE)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })

    mode = 'up'
    keys = [b.jwk, c.jwk]
    at(CACHE_MAX_AGE + COOLDOWN)
    // the known kid does not wait for the attempt it starts (the endpoint was failing)...
    await expect(verifier.verify(tokenB)).resolves.toMatchObject({ sub: 'user-of-key-b' })
    // ...which replaces the set as soon as it is done
    await vi.waitFor(async () => {
      expect(await rejection(verifier.verify(tokenA))).toMatchObject({ code: 'ERR_JWKS_NO_MATCHING_KEY' })
    })
    await expect(verifier.verify(tokenC)).resolves.toMatchObject({ sub: 'user-of-key-c' })
    expect(hits).toBe(3)
  })

  it('while the JWKS endpoint works, a request past cacheMaxAge waits for the refetch and a removed key stops verifying at once', async () => {
    const verifier = remoteVerifier()
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    keys = [b.jwk]
    at(CACHE_MAX_AGE - 1)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    expect(hits).toBe(1)
    at(CACHE_MAX_AGE)
    expect(await rejection(verifier.verify(tokenA))).toMatchObject({
      code: 'ERR_JWKS_NO_MATCHING_KEY',
      status: 401,
    })
    expect(hits).toBe(2)
    await expect(verifier.verify(tokenB)).resolves.toMatchObject({ sub: 'user-of-key-b' })
    expect(hits).toBe(2)
  })
})

describe('stale-if-error: the limit', () => {
  it('refuses a known kid with 503 and Retry-After once cacheMaxAge + staleIfError have passed since the last good fetch', async () => {
    const staleIfError = 60_000
    const verifier = remoteVerifier({ staleIfError })
    const app = await api(verifier)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    mode = 'error'
    at(CACHE_MAX_AGE)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    expect(hits).toBe(2)
    // a later attempt fails too, within the stale window
    at(CACHE_MAX_AGE + COOLDOWN)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    await vi.waitFor(() => expect(hits).toBe(3))
    // (an unknown kid waits for that attempt if it is still running; either way it is over after this)
    expect((await me(app, tokenC)).statusCode).toBe(503)
    at(CACHE_MAX_AGE + staleIfError - 1)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    expect(hits).toBe(3)

    // the stale set is too old now: the request fetches again, as before stale-if-error, and gets 503
    at(CACHE_MAX_AGE + staleIfError)
    const reply = await me(app, tokenA)
    expect(reply.statusCode).toBe(503)
    expect(reply.json()).toEqual({
      error: 'temporarily_unavailable',
      error_description: 'the signing keys are unavailable, try again later',
      code: 'ERR_JWKS_UNAVAILABLE',
    })
    // the failure holds off the next fetch for 1 s (the backoff), so retry in a second
    expect(reply.headers['retry-after']).toBe('1')
    expect(reply.headers['www-authenticate']).toBeUndefined()
    expect(hits).toBe(4)
    // a request within that second gets 503 at once, without a fetch
    expect(await rejection(verifier.verify(tokenB))).toMatchObject({
      code: 'ERR_JWKS_UNAVAILABLE',
      status: 503,
      retryAfter: 1,
    })
    expect(hits).toBe(4)

    // the endpoint is back: the first request after the backoff fetches and passes
    mode = 'up'
    at(CACHE_MAX_AGE + staleIfError + 1_000)
    expect((await me(app, tokenA)).statusCode).toBe(200)
    expect(hits).toBe(5)
    await app.close()
  })

  it('staleIfError: 0 keeps the strict behaviour: past cacheMaxAge a failed refetch answers 503, and the next one waits for the backoff', async () => {
    const verifier = remoteVerifier({ staleIfError: 0 })
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    mode = 'error'
    at(CACHE_MAX_AGE - 1)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    expect(hits).toBe(1)
    // a fetch after each backoff (1 s, then 2 s), none within one
    for (const [elapsed, fetches, retryAfter] of [
      [0, 2, 1],
      [999, 2, 1],
      [1_000, 3, 2],
      [3_000, 4, 4],
    ] as const) {
      at(CACHE_MAX_AGE + elapsed)
      expect(await rejection(verifier.verify(tokenA))).toMatchObject({
        code: 'ERR_JWKS_UNAVAILABLE',
        status: 503,
        retryAfter,
      })
      expect(hits).toBe(fetches)
    }
    mode = 'up'
    at(CACHE_MAX_AGE + 7_000)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    expect(hits).toBe(5)
  })

  it('the very first fetch failing still answers 503 with Retry-After 1, and the first request after that second fetches again', async () => {
    const verifier = remoteVerifier()
    mode = 'error'
    for (const [elapsed, fetches] of [
      [0, 1],
      [999, 1],
    ] as const) {
      at(elapsed)
      expect(await rejection(verifier.verify(tokenA))).toMatchObject({
        code: 'ERR_JWKS_UNAVAILABLE',
        status: 503,
        retryAfter: 1,
      })
      expect(hits).toBe(fetches)
    }
    mode = 'up'
    at(1_000)
    await expect(verifier.verify(tokenA)).resolves.toMatchObject({ sub: 'user-of-key-a' })
    expect(hits).toBe(2)
  })
})
