/**
 * authorizationOf(): the Authorization header as the client sent it. Node keeps the first of two field
 * lines; joined, they parse as no credential, so a request that sends two is refused as malformed.
 */
import Fastify from 'fastify'
import { describe, expect, it } from 'vitest'
import { authorizationOf } from '../src/authorization.js'
import { localVerifier } from './helpers/verify.js'

describe('authorizationOf', () => {
  it('answers the one line the client sent, or the lines joined with ", " when it sent several', () => {
    expect(authorizationOf('Bearer a', { rawHeaders: ['Host', 'x', 'Authorization', 'Bearer a'] })).toBe(
      'Bearer a',
    )
    expect(
      authorizationOf('Bearer a', { rawHeaders: ['authorization', 'Bearer a', 'AUTHORIZATION', 'Bearer b'] }),
    ).toBe('Bearer a, Bearer b')
    // an empty second line still makes two
    expect(
      authorizationOf('Bearer a', { rawHeaders: ['authorization', 'Bearer a', 'authorization', ''] }),
    ).toBe('Bearer a, ')
    // a header name that only starts like it is another header
    expect(
      authorizationOf('Bearer a', { rawHeaders: ['authorization', 'Bearer a', 'authorization-x', 'b'] }),
    ).toBe('Bearer a')
  })

  it('refuses two lines when the value is either of them (a hook that picked the last one)', () => {
    expect(
      authorizationOf('Bearer b', { rawHeaders: ['authorization', 'Bearer a', 'authorization', 'Bearer b'] }),
    ).toBe('Bearer a, Bearer b')
  })

  it('treats a header list Node cut short (2,000 raw entries) as if a second line had come after the cut', () => {
    const padding = Array.from({ length: 1_998 }, (_, i) => (i % 2 === 0 ? `x-${i}` : 'b'))
    expect(authorizationOf('Bearer a', { rawHeaders: ['authorization', 'Bearer a', ...padding] })).toBe(
      'Bearer a, ',
    )
    // one entry short of the cut: nothing was dropped
    expect(
      authorizationOf('Bearer a', { rawHeaders: ['authorization', 'Bearer a', ...padding.slice(2)] }),
    ).toBe('Bearer a')
  })

  it("takes the cut from the server's maxHeadersCount: lower, higher, or none (0)", () => {
    const lines = (count: number) => [
      'authorization',
      'Bearer a',
      ...Array.from({ length: 2 * (count - 1) }, (_, i) => (i % 2 ? 'b' : `x-${i}`)),
    ]
    const on = (maxHeadersCount: number | null, count: number) =>
      authorizationOf('Bearer a', { rawHeaders: lines(count), socket: { server: { maxHeadersCount } } })
    expect(on(100, 100)).toBe('Bearer a, ')
    expect(on(100, 99)).toBe('Bearer a')
    expect(on(null, 1_000)).toBe('Bearer a, ')
    expect(on(3_000, 1_500)).toBe('Bearer a')
    expect(on(0, 5_000)).toBe('Bearer a')
    // Node takes a negative one as no limit too
    expect(on(-1, 2)).toBe('Bearer a')
    // and reads it as Node does: a string keeps the default (1,000), a fraction is truncated
    expect(on('0' as never, 1_000)).toBe('Bearer a, ')
    expect(on(31.5, 31)).toBe('Bearer a, ')
    expect(on(31.5, 30)).toBe('Bearer a')
  })

  it('keeps a value a hook set (none of the lines the client sent), and one without raw lines', () => {
    expect(
      authorizationOf('Bearer set', {
        rawHeaders: ['authorization', 'Bearer a', 'authorization', 'Bearer b'],
      }),
    ).toBe('Bearer set')
    expect(authorizationOf('Bearer set', { rawHeaders: [] })).toBe('Bearer set')
    expect(authorizationOf('Bearer a', { rawHeaders: undefined })).toBe('Bearer a')
    expect(
      authorizationOf(undefined, { rawHeaders: ['authorization', 'Bearer a', 'authorization', 'Bearer b'] }),
    ).toBeUndefined()
  })
})

describe("the verifier's Fastify middleware", () => {
  it('takes the Authorization a hook set with the request.headers setter', async () => {
    const { verifier, sign } = await localVerifier()
    const token = await sign()
    const app = Fastify()
    // the access token from a cookie, as Fastify documents setting a header: the setter keeps it apart
    // from the raw request's headers
    app.addHook('onRequest', async (request) => {
      const cookie = /at=([^;]+)/.exec(request.headers.cookie ?? '')?.[1]
      if (cookie) request.headers = { ...request.headers, authorization: `Bearer ${cookie}` }
    })
    app.get('/me', { preHandler: verifier.fastify }, async (request) => ({ user: request.auth?.sub }))
    try {
      const fromCookie = await app.inject({ url: '/me', headers: { cookie: `at=${token}` } })
      expect(fromCookie.statusCode).toBe(200)
      expect(fromCookie.json()).toEqual({ user: 'user-1' })
      // the cookie's token replaces one the client sent, as the hook says
      const replaced = await app.inject({
        url: '/me',
        headers: { cookie: `at=${token}`, authorization: 'Bearer junk' },
      })
      expect(replaced.statusCode).toBe(200)
    } finally {
      await app.close()
    }
  })
})
