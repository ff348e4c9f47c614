/**
 * Backoff of JWKS fetches while the verifier has nothing usable (no set fetched yet, or the last good
 * one older than `cacheMaxAge + staleIfError`): after a failed fetch the next one waits 1 s, then 2 s,
 * 4 s, ... up to `cooldownDuration`, and the tokens met meanwhile get 503 at once instead of each
 * fetching (or waiting for a hanging endpoint). The JWKS endpoint is an injected `fetch` that counts
 * its calls; "refused" goes to a closed port on 127.0.0.1 (a real ECONNREFUSED). The cache, cooldown
 * and backoff run on `Date.now`, which the tests move with fake `Date` only: no assertion depends on
 * how long anything takes.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createVerifier, type Verifier, type VerifierOptions } from '@tokenflow/server/verify'
import Fastify from 'fastify'
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose'
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { rejection } from './helpers/verify.js'

const ISSUER = 'https://auth.example.test'
const AUDIENCE = 'https://api.example.test'
const START = 1_800_000_000_000
const CACHE_MAX_AGE = 600_000
const COOLDOWN = 30_000

type Mode = 'up' | 'refused' | 'error' | 'hang'

let mode: Mode = 'up'
let fetches = 0
let deadUrl: string
/** fetches of the hanging mode still open: calling one makes it fail as a dropped connection would */
const hanging = new Set<() => void>()

const jwksFetch: typeof globalThis.fetch = async (_input, init) => {
  fetches++
  if (mode === 'refused') return globalThis.fetch(deadUrl, init)
  if (mode === 'error') return new Response('', { status: 500 })
  if (mode === 'hang') {
    return new Promise<Response>((_resolve, reject) => {
      const drop = () => {
        hanging.delete(drop)
        reject(new TypeError('fetch failed'))
      }
      hanging.add(drop)
      init?.signal?.addEventListener('abort', drop)
    })
  }
  return Response.json({ keys: [signer.jwk] })
}

let signer: { privateKey: CryptoKey; jwk: JWK }
let token: string
/** signed by the same key, but with a kid the JWKS does not hold */
let unknownKid: string

const sign = (kid: string) =>
  new SignJWT({ client_id: 'web', jti: 'jti-1', sub: 'user-1' })
    .setProtectedHeader({ alg: 'ES256', kid, typ: 'at+jwt' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt(START / 1000 - 10)
    .setExpirationTime(START / 1000 + 2 * 86_400)
    .sign(signer.privateKey)

beforeAll(async () => {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
  signer = { privateKey, jwk: { ...(await exportJWK(publicKey)), kid: 'key-a', alg: 'ES256', use: 'sig' } }
  ;[token, unknownKid] = await Promise.all([sign('key-a'), sign('key-z')])
  // a port that was just listening and is now closed: the connection is refused
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  deadUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`
  await new Promise((resolve) => server.close(resolve))
})
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'] })
  vi.setSystemTime(START)
  mode = 'up'
  fetches = 0
})
afterEach(() => {
  for (const drop of hanging) drop()
  vi.useRealTimers()
})

function remoteVerifier(options: Partial<VerifierOptions> = {}): Verifier {
  return createVerifier({
    jwks: 'https://auth.example.test/.well-known/jwks.json',
    issuer: ISSUER,
    audience: AUDIENCE,
    now: () => Date.now(),
    cacheMaxAge: CACHE_MAX_AGE,
    cooldownDuration: COOLDOWN,
    fetch: jwksFetch,
    ...options,
  })
}

/** moves the fake clock to START + `ms` */
const at = (ms: number) => vi.setSystemTime(START + ms)

/** expects `verify` to reject with 503 ERR_JWKS_UNAVAILABLE and `retryAfter` */
async function expectUnavailable(verify: Promise<unknown>, retryAfter: number) {
  expect(await rejection(verify)).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE', status: 503, retryAfter })
}

describe('backoff while no JWKS is usable', () => {
  it('a refusing endpoint with no keys yet: 20 sequential verifications make 1 fetch and all get 503 with retryAfter 1', async () => {
    mode = 'refused'
    const verifier = remoteVerifier()
    for (let index = 0; index < 20; index++) await expectUnavailable(verifier.verify(token), 1)
    expect(fetches).toBe(1)
    // the cause of the failure stays attached for logs
    const error = await rejection(verifier.verify(token))
    expect(error.cause).toBeInstanceOf(Error)
    expect(fetches).toBe(1)
  })

  it('concurrent verifications share the failing fetch, and the middleware sends the backoff as Retry-After', async () => {
    mode = 'error'
    const verifier = remoteVerifier()
    const errors = await Promise.all(Array.from({ length: 10 }, () => rejection(verifier.verify(token))))
    expect(errors.map((error) => [error.code, error.retryAfter])).toEqual(
      Array.from({ length: 10 }, () => ['ERR_JWKS_UNAVAILABLE', 1]),
    )
    expect(fetches).toBe(1)

    at(1_000)
    await expectUnavailable(verifier.verify(token), 2)
    expect(fetches).toBe(2)
    const app = Fastify()
    app.get('/me', { preHandler: verifier.fastify }, async (request) => ({ sub: request.auth?.sub }))
    at(1_500)
    const reply = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
    expect(reply.statusCode).toBe(503)
    expect(reply.json().code).toBe('ERR_JWKS_UNAVAILABLE')
    expect(reply.headers['retry-after']).toBe('2')
    expect(fetches).toBe(2)
    await app.close()
  })

  it('the first request after the backoff fetches again; consecutive failures double it, up to cooldownDuration', async () => {
    mode = 'error'
    const verifier = remoteVerifier()
    let time = 0
    let expected = 0
    for (const seconds of [1, 2, 4, 8, 16, 30, 30]) {
      at(time)
      await expectUnavailable(verifier.verify(token), seconds)
      expect(fetches).toBe(++expected)
      // during the backoff: answered at once, counting down, no fetch
      at(time + 1)
      await expectUnavailable(verifier.verify(token), seconds)
      at(time + seconds * 1000 - 1)
      await expectUnavailable(verifier.verify(token), 1)
      expect(fetches).toBe(expected)
      time += seconds * 1000
    }
  })

  it('caps the backoff at a short cooldownDuration, and cooldownDuration 0 fetches for every request as before', async () => {
    mode = 'error'
    const capped = remoteVerifier({ cooldownDuration: 2_500 })
    let time = 0
    // Retry-After is in whole seconds, rounded up: 2.5 s says 3
    for (const [fetched, backoff, seconds] of [
      [1, 1_000, 1],
      [2, 2_000, 2],
      [3, 2_500, 3],
      [4, 2_500, 3],
    ] as const) {
      at(time)
      await expectUnavailable(capped.verify(token), seconds)
      at(time + backoff - 1)
      await expectUnavailable(capped.verify(token), 1)
      expect(fetches).toBe(fetched)
      time += backoff
    }

    fetches = 0
    const uncapped = remoteVerifier({ cooldownDuration: 0 })
    for (const fetched of [1, 2, 3]) {
      await expectUnavailable(uncapped.verify(token), 1)
      expect(fetches).toBe(fetched)
    }
  })

  it('the endpoint recovers: the first request after the backoff passes, and the failure count starts again', async () => {
    mode = 'error'
    const verifier = remoteVerifier({ staleIfError: 60_000 })
    await expectUnavailable(verifier.verify(token), 1)
    at(1_000)
    await expectUnavailable(verifier.verify(token), 2)
    expect(fetches).toBe(2)

    // the endpoint is back, but the verifier does not look before the backoff is over
    mode = 'up'
    at(2_999)
    await expectUnavailable(verifier.verify(token), 1)
    expect(fetches).toBe(2)
    at(3_000)
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    expect(fetches).toBe(3)

    // a later outage: the stale set serves while it may (its failed refetch does not count)...
    mode = 'error'
    at(3_000 + CACHE_MAX_AGE)
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    expect(fetches).toBe(4)
    // ...and once it is too old, the first failure backs off 1 s again, not 4 s
    at(3_000 + CACHE_MAX_AGE + 60_000)
    await expectUnavailable(verifier.verify(token), 1)
    expect(fetches).toBe(5)
    at(3_000 + CACHE_MAX_AGE + 61_000)
    await expectUnavailable(verifier.verify(token), 2)
    expect(fetches).toBe(6)
  })

  it('a hanging endpoint (timeoutDuration 60 s): requests during the backoff settle at once, without the hanging fetch', async () => {
    // a request that waited for a fetch hanging a minute would outlast the test's own timeout
    mode = 'error'
    const verifier = remoteVerifier({ timeoutDuration: 60_000 })
    await expectUnavailable(verifier.verify(token), 1)
    expect(fetches).toBe(1)

    mode = 'hang'
    at(500)
    for (let index = 0; index < 20; index++) await expectUnavailable(verifier.verify(token), 1)
    expect(fetches).toBe(1)
    expect(hanging.size).toBe(0)

    // the backoff is over: one request starts the next fetch, which hangs, and a concurrent one shares it
    at(1_000)
    let settled = 0
    const waiting = [verifier.verify(token), verifier.verify(token)].map((promise) =>
      rejection(promise).finally(() => settled++),
    )
    await vi.waitFor(() => expect(hanging.size).toBe(1))
    expect(fetches).toBe(2)
    expect(settled).toBe(0)
    // the connection drops: both get the doubled backoff
    for (const drop of hanging) drop()
    const errors = await Promise.all(waiting)
    expect(errors.map((error) => [error.code, error.status, error.retryAfter])).toEqual([
      ['ERR_JWKS_UNAVAILABLE', 503, 2],
      ['ERR_JWKS_UNAVAILABLE', 503, 2],
    ])
    at(2_500)
    await expectUnavailable(verifier.verify(token), 1)
    expect(fetches).toBe(2)
  })
})

describe('what the backoff leaves as it was', () => {
  it('a stale but usable set serves its kids at once through an outage; an unknown kid gets the cooldown', async () => {
    const verifier = remoteVerifier()
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    mode = 'refused'
    at(CACHE_MAX_AGE)
    for (let index = 0; index < 5; index++) {
      await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    }
    expect(fetches).toBe(2)
    at(CACHE_MAX_AGE + 12_300)
    await expectUnavailable(verifier.verify(unknownKid), 18)
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    expect(fetches).toBe(2)
  })

  it('staleIfError: 0 never uses a set past cacheMaxAge: its failed refetch answers 503, then backs off', async () => {
    const verifier = remoteVerifier({ staleIfError: 0 })
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    mode = 'error'
    at(CACHE_MAX_AGE - 1)
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    expect(fetches).toBe(1)
    at(CACHE_MAX_AGE)
    await expectUnavailable(verifier.verify(token), 1)
    await expectUnavailable(verifier.verify(token), 1)
    expect(fetches).toBe(2)
    at(CACHE_MAX_AGE + 1_000)
    await expectUnavailable(verifier.verify(token), 2)
    expect(fetches).toBe(3)
    mode = 'up'
    at(CACHE_MAX_AGE + 3_000)
    await expect(verifier.verify(token)).resolves.toMatchObject({ sub: 'user-1' })
    expect(fetches).toBe(4)
  })
})
