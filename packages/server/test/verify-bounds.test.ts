/**
 * What bounds the verifier keeps whatever its surroundings do: a JWKS endpoint that sends too much or a fetch
 * that ignores its timeout, a wall clock set back, a static key that cannot be used, an Express response
 * answered by someone else first, and what a logged error shows. Each case was found by a review and failed
 * on the code before it.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { inspect } from 'node:util'
import { createVerifier, type VerifierOptions } from '@tokenflow/server/verify'
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose'
// node-fetch, as ofetch uses it on Node: its bodies are Node streams
import { fetch as nodeFetch } from 'node-fetch-native/node'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'

const ISSUER = 'https://auth.example.test'
const AUDIENCE = 'https://api.example.test'
const JWKS_URL = 'https://auth.example.test/.well-known/jwks.json'
const HOUR = 3_600_000

interface Signer {
  privateKey: CryptoKey
  jwk: JWK
}

async function signer(kid: string): Promise<Signer> {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
  return { privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } }
}

/** a valid access token of `key`, issued at `at` (epoch ms) */
const sign = (key: Signer, at = Date.now()) =>
  new SignJWT({ client_id: 'web', jti: 'jti-1', sub: 'user-1' })
    .setProtectedHeader({ alg: 'ES256', kid: key.jwk.kid!, typ: 'at+jwt' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt(Math.floor(at / 1000) - 5)
    .setExpirationTime(Math.floor(at / 1000) + 900)
    .sign(key.privateKey)

const verifier = (options: Partial<VerifierOptions>) =>
  createVerifier({ jwks: JWKS_URL, issuer: ISSUER, audience: AUDIENCE, ...options })

/** `code` of the error a verification rejects with, or 'ok' */
const outcome = (promise: Promise<unknown>) =>
  promise.then(
    () => 'ok',
    (error: { code?: string }) => error.code ?? String(error),
  )

/** the promise's outcome, or 'pending' if it has not settled within `ms` */
const within = (promise: Promise<string>, ms: number) =>
  Promise.race([promise, new Promise<string>((resolve) => setTimeout(() => resolve('pending'), ms))])

let a: Signer
let b: Signer
beforeAll(async () => {
  ;[a, b] = await Promise.all([signer('key-a'), signer('key-b')])
})
afterEach(() => {
  vi.useRealTimers()
})

describe('a remote JWKS endpoint that sends too much, or a fetch that ignores its timeout', () => {
  let server: Server
  let base: string
  const hanging: Socket[] = []
  beforeAll(async () => {
    server = createServer((request, response) => {
      const keys = JSON.stringify({ keys: [a.jwk] })
      // a key set padded past 1 MiB, with its length declared, or streamed without one
      const padded = `{"keys":[${JSON.stringify(a.jwk)}],"padding":"${'x'.repeat(1024 * 1024 + 1)}"}`
      if (request.url === '/hanging-body') {
        hanging.push(request.socket)
        response.writeHead(200, { 'content-type': 'application/json' })
        response.write('{"keys":[')
      } else if (request.url === '/declared')
        response.writeHead(200, { 'content-type': 'application/json' }).end(padded)
      else if (request.url === '/streamed') {
        response.writeHead(200, { 'content-type': 'application/json' })
        for (let i = 0; i < padded.length; i += 64 * 1024) response.write(padded.slice(i, i + 64 * 1024))
        response.end()
      } else response.writeHead(200, { 'content-type': 'application/json' }).end(keys)
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  afterAll(async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })

  it('bug: a JWKS response over 1 MiB was read whole and used; now the fetch fails (503), with or without a content-length', async () => {
    const token = await sign(a)
    for (const path of ['/declared', '/streamed']) {
      const error = await verifier({ jwks: `${base}${path}` })
        .verify(token)
        .catch((reason: unknown) => reason)
      expect(error).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE', status: 503 })
      expect(inspect(error)).toContain('larger than 1048576 bytes')
    }
    // the same key set without the padding is used
    expect(await outcome(verifier({ jwks: `${base}/small` }).verify(token))).toBe('ok')
  })

  it('a fetch option of node-fetch, whose bodies are Node streams, works, and its 1 MiB cap holds too (a review of the fix: every fetch failed)', async () => {
    const token = await sign(a)
    expect(
      await outcome(verifier({ jwks: `${base}/small`, fetch: nodeFetch as typeof fetch }).verify(token)),
    ).toBe('ok')
    const error = await verifier({ jwks: `${base}/streamed`, fetch: nodeFetch as typeof fetch })
      .verify(token)
      .catch((reason: unknown) => reason)
    expect(error).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE' })
    expect(inspect(error)).toContain('larger than 1048576 bytes')
  })

  it('counts a body of strings by its bytes: the cap holds for it too (a review of the fix: it read all 4 MiB)', async () => {
    let pulled = 0
    const strings = verifier({
      fetch: (async () =>
        new Response(
          new ReadableStream<string>({
            pull(controller) {
              if (pulled++ < 64) controller.enqueue('x'.repeat(64 * 1024))
              else controller.close()
            },
          }) as unknown as ReadableStream<Uint8Array>,
        )) as typeof fetch,
    })
    const error = await strings.verify(await sign(a)).catch((reason: unknown) => reason)
    expect(error).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE' })
    expect(inspect(error)).toContain('larger than 1048576 bytes')
    // 16 chunks of 64 KiB make 1 MiB; the next one is past it, and the rest are not read
    expect(pulled).toBeLessThanOrEqual(18)
  })

  it('at the timeout, a body that stopped arriving is cancelled and its connection closed, even for a fetch option that drops the signal (a review of the fix)', async () => {
    const stalls = verifier({
      jwks: `${base}/hanging-body`,
      timeoutDuration: 200,
      fetch: ((input: RequestInfo | URL, init?: RequestInit) =>
        globalThis.fetch(input, { headers: init?.headers ?? {} })) as typeof fetch,
    })
    expect(await outcome(stalls.verify(await sign(a)))).toBe('ERR_JWKS_UNAVAILABLE')
    expect(hanging).toHaveLength(1)
    await vi.waitFor(() => expect(hanging[0]!.destroyed).toBe(true), { timeout: 2_000 })
  })

  it('bug: timeoutDuration did not bound a fetch option that ignores its signal: verify() never settled, nor did any later one', async () => {
    let calls = 0
    const hangs = verifier({
      jwks: `${base}/small`,
      timeoutDuration: 100,
      cooldownDuration: 0,
      // a wrapper that adds a proxy and forgets to pass init.signal on
      fetch: (() => {
        calls++
        return new Promise<Response>(() => {})
      }) as typeof fetch,
    })
    const token = await sign(a)
    expect(await within(outcome(hangs.verify(token)), 2_000)).toBe('ERR_JWKS_UNAVAILABLE')
    // the next request fetches again (no backoff with cooldownDuration 0), and is bounded too
    expect(await within(outcome(hangs.verify(token)), 2_000)).toBe('ERR_JWKS_UNAVAILABLE')
    expect(calls).toBe(2)
  })
})

describe('a wall clock set back (NTP stepping a clock that ran ahead)', () => {
  const START = 1_800_000_000_000

  it('bug: a rotated-in kid was refused without a refetch for as long as the clock was set back', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(START)
    let served: JWK[] = [a.jwk]
    let fetches = 0
    const verify = verifier({
      fetch: async () => {
        fetches++
        return Response.json({ keys: served })
      },
    })
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    vi.setSystemTime(START - HOUR)
    // five minutes later (well past the 30 s cooldown) a rotation publishes key-b and its first token comes
    served = [a.jwk, b.jwk]
    vi.setSystemTime(START - HOUR + 5 * 60_000)
    expect(await outcome(verify.verify(await sign(b)))).toBe('ok')
    expect(fetches).toBe(2)
  })

  it('bug: a 1 s backoff after a failed first fetch lasted as long as the clock was set back (503s, Retry-After 3591)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(START)
    let up = false
    const verify = verifier({
      fetch: async () => (up ? Response.json({ keys: [a.jwk] }) : new Response('', { status: 500 })),
    })
    await expect(verify.verify(await sign(a))).rejects.toMatchObject({
      code: 'ERR_JWKS_UNAVAILABLE',
      retryAfter: 1,
    })
    vi.setSystemTime(START - HOUR)
    up = true
    vi.setSystemTime(START - HOUR + 10_000)
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
  })

  it('a set fetched before the clock was set back stays in use when the refetch the step forces fails, without a fetch per request (a review of the fix: every token got 503)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(START)
    let up = true
    let fetches = 0
    const verify = verifier({
      fetch: async () => {
        fetches++
        return up ? Response.json({ keys: [a.jwk] }) : new Response('', { status: 500 })
      },
    })
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    vi.setSystemTime(START - HOUR + 1_000)
    up = false
    for (let i = 0; i < 5; i++) expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    // one refetch for the step, then the outage's one per cooldown
    expect(fetches).toBe(2)
    vi.setSystemTime(START - HOUR + 10 * 60_000)
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    expect(fetches).toBe(3)
  })

  it('a set fetched before the clock was set back counts as expired: it is fetched again, not kept an hour longer', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(START)
    let fetches = 0
    const verify = verifier({
      fetch: async () => {
        fetches++
        return Response.json({ keys: [a.jwk] })
      },
    })
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    expect(fetches).toBe(1)
    vi.setSystemTime(START - HOUR)
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    expect(fetches).toBe(2)
    // and the new fetch is fresh again
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    expect(fetches).toBe(2)
  })
})

describe('a static key set with a key that cannot be imported', () => {
  it('bug: it was accepted, and every token got 503 "try again" for good; now createVerifier refuses it (ERR_CONFIG)', () => {
    const options = (y: string) => ({
      jwks: { keys: [{ ...a.jwk, y }] },
      issuer: ISSUER,
      audience: AUDIENCE,
    })
    // cut short in a paste, and one bit off (a point off the curve)
    const flipped = Buffer.from(a.jwk.y!, 'base64url')
    flipped[31]! ^= 1
    for (const y of [a.jwk.y!.slice(0, 20), flipped.toString('base64url')]) {
      expect(() => createVerifier(options(y))).toThrow(
        expect.objectContaining({
          code: 'ERR_CONFIG',
          message: '"jwks" holds a key "key-a" that cannot be imported',
        }),
      )
    }
    expect(() => createVerifier(options(a.jwk.y!))).not.toThrow()
  })

  it('a key whose key_ops allow more than "verify" is refused too: jose cannot import it (a review of the fix)', () => {
    const jwks = { keys: [{ ...a.jwk, key_ops: ['sign', 'verify'] }] }
    expect(() => createVerifier({ jwks, issuer: ISSUER, audience: AUDIENCE })).toThrow(
      expect.objectContaining({
        code: 'ERR_CONFIG',
        message: '"jwks" holds a key "key-a" that cannot be imported',
      }),
    )
  })

  it('a key no allowed algorithm would use is not imported, so it cannot stop the verifier', async () => {
    // an encryption key next to the signing key: the verifier never uses it
    const unused = { ...b.jwk, kid: 'enc-1', use: 'enc', y: b.jwk.y!.slice(0, 20) }
    const verify = createVerifier({ jwks: { keys: [a.jwk, unused] }, issuer: ISSUER, audience: AUDIENCE })
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
  })
})

describe('verifier.express when the response was answered meanwhile', () => {
  let server: Server | undefined
  afterAll(async () => {
    server?.closeAllConnections()
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()))
  })

  it('bug: its refusal wrote to a response a timeout middleware had answered: ERR_HTTP_HEADERS_SENT, an unhandled rejection (a crash on Node 20)', async () => {
    const verify = verifier({
      timeoutDuration: 300,
      // a JWKS endpoint that answers only its abort
      fetch: ((_input: unknown, init?: RequestInit) =>
        new Promise<Response>((_resolve, reject) =>
          init?.signal?.addEventListener('abort', () => reject(init.signal!.reason)),
        )) as typeof fetch,
    })
    const unhandled: unknown[] = []
    const previous = process.listeners('unhandledRejection')
    process.removeAllListeners('unhandledRejection')
    const collect = (reason: unknown) => unhandled.push(reason)
    process.on('unhandledRejection', collect)
    let refused!: () => void
    const refusal = new Promise<void>((resolve) => {
      refused = resolve
    })
    try {
      server = createServer((request, response) => {
        // a request-timeout middleware in front answers after 100 ms, before the verifier's 503 at 300 ms
        const timer = setTimeout(() => response.writeHead(503).end('timed out'), 100)
        const end = response.end.bind(response)
        verify.express(request, response, () => {
          clearTimeout(timer)
          end('ok')
        })
        // the verifier gives up on the JWKS at 300 ms; a tick later its refusal has been handled
        setTimeout(() => setImmediate(refused), 400)
      })
      await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve))
      const { port } = server.address() as AddressInfo
      const answer = await fetch(`http://127.0.0.1:${port}/`, {
        headers: { authorization: `Bearer ${await sign(a)}` },
      })
      expect(answer.status).toBe(503)
      expect(await answer.text()).toBe('timed out')
      await refusal
      await new Promise((resolve) => setTimeout(resolve, 50))
    } finally {
      process.off('unhandledRejection', collect)
      for (const listener of previous)
        process.on('unhandledRejection', listener as NodeJS.UnhandledRejectionListener)
    }
    expect(unhandled).toEqual([])
  })
})

describe('what a logged VerifyError shows', () => {
  it('bug: its cause (jose’s error) carried the whole claims set: inspect(error) showed the sub and sid of an expired token', async () => {
    const now = 1_750_000_000_000
    const verify = createVerifier({
      jwks: { keys: [a.jwk] },
      issuer: ISSUER,
      audience: AUDIENCE,
      now: () => now,
    })
    /** a token of alice@example.com's session, signed by key-a */
    const token = (audience: string, iat: number, exp: number) =>
      new SignJWT({ client_id: 'web', sid: '0123456789abcdef0123456789abcdef' })
        .setProtectedHeader({ alg: 'ES256', kid: 'key-a', typ: 'at+jwt' })
        .setIssuer(ISSUER)
        .setAudience(audience)
        .setSubject('alice@example.com')
        .setJti('jti-1')
        .setIssuedAt(iat)
        .setExpirationTime(exp)
        .sign(a.privateKey)
    const expired = await token(AUDIENCE, now / 1000 - 1000, now / 1000 - 100)
    const wrongAudience = await token('https://other.example.test', now / 1000 - 10, now / 1000 + 900)
    for (const refused of [expired, wrongAudience]) {
      const error = await verify.verify(refused).catch((reason: unknown) => reason)
      expect(error).toMatchObject({
        code: expect.stringMatching(/^ERR_JWT_(EXPIRED|CLAIM_VALIDATION_FAILED)$/),
      })
      const logged = inspect(error, { depth: 10 })
      expect(logged).not.toContain('alice@example.com')
      expect(logged).not.toContain('0123456789abcdef0123456789abcdef')
    }
  })
})

describe('a third review of the JWKS fetch bounds', () => {
  const START = 1_800_000_000_000

  it('bug: an answer that came after the timeout, from a fetch option that ignores its signal, was never cancelled (its connection stayed open)', async () => {
    let cancelled = false
    const late = verifier({
      timeoutDuration: 100,
      fetch: (() =>
        new Promise<Response>((resolve) =>
          setTimeout(
            () =>
              resolve(
                new Response(
                  new ReadableStream({
                    cancel: () => {
                      cancelled = true
                    },
                  }),
                ),
              ),
            200,
          ),
        )) as typeof fetch,
    })
    expect(await outcome(late.verify(await sign(a)))).toBe('ERR_JWKS_UNAVAILABLE')
    await vi.waitFor(() => expect(cancelled).toBe(true), { timeout: 1_000 })
  })

  it('bug: a body whose chunks are not bytes failed the fetch but was left open', async () => {
    let cancelled = false
    const odd = verifier({
      fetch: (async () =>
        new Response(
          new ReadableStream({
            // an ArrayBuffer, not bytes a stream of a body may hold
            pull: (controller) => controller.enqueue(new TextEncoder().encode('{"keys":[').buffer as never),
            cancel: () => {
              cancelled = true
            },
          }) as ReadableStream<Uint8Array>,
        )) as typeof fetch,
    })
    expect(await outcome(odd.verify(await sign(a)))).toBe('ERR_JWKS_UNAVAILABLE')
    await vi.waitFor(() => expect(cancelled).toBe(true), { timeout: 1_000 })
  })

  it('bug: with staleIfError 0 and the clock set back a day while the JWKS is down, the old set was trusted for the whole day', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(START)
    let up = true
    const token = await sign(a)
    const verify = verifier({
      staleIfError: 0,
      fetch: async () => (up ? Response.json({ keys: [a.jwk] }) : new Response('', { status: 500 })),
    })
    expect(await outcome(verify.verify(token))).toBe('ok')
    up = false
    const outcomes: string[] = []
    for (let hours = 0; hours < 24; hours++) {
      vi.setSystemTime(START - 24 * HOUR + hours * HOUR)
      outcomes.push(await outcome(verify.verify(token)))
    }
    expect(outcomes).toEqual(Array(24).fill('ERR_JWKS_UNAVAILABLE'))
    // the endpoint back: the new set is fetched and used
    up = true
    vi.setSystemTime(START - 24 * HOUR + 24 * HOUR + 60_000)
    expect(await outcome(verify.verify(token))).toBe('ok')
  })

  it('bug: a refetch for an unknown kid that failed after the clock was set back answered Retry-After for the whole step (3631 s)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    vi.setSystemTime(START)
    let fail: (() => void) | undefined
    let fetches = 0
    const verify = verifier({
      fetch: async () => {
        if (++fetches === 1) return Response.json({ keys: [a.jwk] })
        return new Promise<Response>((resolve) => {
          fail = () => resolve(new Response('', { status: 500 }))
        })
      },
    })
    expect(await outcome(verify.verify(await sign(a)))).toBe('ok')
    vi.setSystemTime(START + 60_000)
    const waiting = verify.verify(await sign(b)).catch((error: unknown) => error)
    await vi.waitFor(() => expect(fail).toBeDefined())
    vi.setSystemTime(START + 60_000 - HOUR)
    fail!()
    expect(await waiting).toMatchObject({ code: 'ERR_JWKS_UNAVAILABLE', retryAfter: 30 })
  })

  it.each([
    ['key_ops ["verify", "verify"]', { key_ops: ['verify', 'verify'] }],
    ['ext "true"', { ext: 'true' }],
  ])(
    'bug: a static key jose never selects (%s) passed createVerifier, and every token of it got 401',
    (_name, extra) => {
      expect(() =>
        createVerifier({
          jwks: { keys: [{ ...a.jwk, ...extra } as JWK] },
          issuer: ISSUER,
          audience: AUDIENCE,
        }),
      ).toThrow(
        expect.objectContaining({
          code: 'ERR_CONFIG',
          message: '"jwks" holds a key "key-a" that cannot be imported',
        }),
      )
    },
  )
})
