import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { decodeJwtClaims } from '../src/jwt.js'

const header = 'eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9' // {"alg":"ES256","typ":"at+jwt"}
const signature = 'c2lnbmF0dXJl'

/** Encodes with Node's own base64url, independent of the decoder under test. */
function tokenWith(payload: unknown): string {
  return `${header}.${Buffer.from(JSON.stringify(payload), 'utf8').toString('base64url')}.${signature}`
}

function tokenWithBytes(bytes: number[]): string {
  return `${header}.${Buffer.from(bytes).toString('base64url')}.${signature}`
}

describe('decodeJwtClaims', () => {
  it('reads iat from the jwt.io example token', () => {
    const token =
      'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c'
    expect(decodeJwtClaims(token)).toEqual({ iat: 1516239022 })
  })

  it('reads exp, iat and nbf and nothing else', () => {
    const token = tokenWith({
      sub: 'user-1',
      exp: 1_700_000_900,
      iat: 1_700_000_000,
      nbf: 1_699_999_990,
      jti: 'x',
    })
    expect(decodeJwtClaims(token)).toStrictEqual({
      exp: 1_700_000_900,
      iat: 1_700_000_000,
      nbf: 1_699_999_990,
    })
  })

  it('decodes unicode claims from padding-less base64url that uses "-" and "_"', () => {
    // {"sub":"user-1","name":"Zoë Ålander 日本語 🎉","exp":1700000000,"iat":1699999100}
    const payload =
      'eyJzdWIiOiJ1c2VyLTEiLCJuYW1lIjoiWm_DqyDDhWxhbmRlciDml6XmnKzoqp4g8J-OiSIsImV4cCI6MTcwMDAwMDAwMCwiaWF0IjoxNjk5OTk5MTAwfQ'
    // the fixture exercises what it claims to
    expect(payload).toMatch(/-/)
    expect(payload).toMatch(/_/)
    expect(payload.length % 4).not.toBe(0)
    expect(decodeJwtClaims(`${header}.${payload}.${signature}`)).toEqual({
      exp: 1_700_000_000,
      iat: 1_699_999_100,
    })
  })

  it('decodes every padding-less length: 4n, 4n + 2 and 4n + 3 characters', () => {
    for (const filler of ['', 'a', 'ab', 'abc']) {
      const token = tokenWith({ f: filler, exp: 1 })
      expect(decodeJwtClaims(token)).toEqual({ exp: 1 })
    }
  })

  it('accepts an unsecured token with an empty signature segment', () => {
    expect(decodeJwtClaims(`${tokenWith({ exp: 5 }).split('.').slice(0, 2).join('.')}.`)).toEqual({ exp: 5 })
  })

  it('returns an empty object for a JSON object payload without time claims', () => {
    expect(decodeJwtClaims(tokenWith({ sub: 'user-1' }))).toStrictEqual({})
  })

  it.each([
    ['a string', { exp: '1700000000' }],
    ['null', { exp: null }],
    ['a boolean', { iat: true }],
    ['an object', { nbf: { value: 1 } }],
    ['an array', { exp: [1] }],
  ])('leaves out a time claim that is %s', (_, payload) => {
    expect(decodeJwtClaims(tokenWith(payload))).toStrictEqual({})
  })

  it('leaves out a time claim that JSON.parse reads as Infinity (1e999)', () => {
    const payload = Buffer.from('{"exp":1e999,"iat":-1e999,"nbf":7}').toString('base64url')
    expect(decodeJwtClaims(`${header}.${payload}.${signature}`)).toStrictEqual({ nbf: 7 })
  })

  it.each([
    ['an empty string', ''],
    ['one segment', 'abc'],
    ['two segments', `${header}.${tokenWith({ exp: 1 }).split('.')[1]}`],
    ['four segments', `${tokenWith({ exp: 1 })}.extra`],
    ['five segments (a JWE)', `${tokenWith({ exp: 1 })}.iv.tag`],
    ['an empty payload', `${header}..${signature}`],
    ['a payload with characters outside base64url', `${header}.eyJleHAiOjF9!.${signature}`],
    [
      'a payload in standard base64 (+ and /)',
      `${header}.${Buffer.from('{"exp":1,"x":"??>>"}').toString('base64')}.sig`,
    ],
    ['a payload with "=" padding', `${header}.eyJleHAiOjEyfQ==.${signature}`],
    ['a payload of 4n + 1 characters', `${header}.eyJleHAiOjF9a.${signature}`],
    ['a payload that is a JSON array', tokenWith([1, 2])],
    ['a payload that is a JSON string', tokenWith('exp')],
    ['a payload that is a JSON number', tokenWith(1_700_000_000)],
    ['a payload that is JSON null', tokenWith(null)],
    ['a payload that is not JSON', tokenWithBytes([...Buffer.from('exp=1')])],
    [
      'a payload that is invalid UTF-8',
      tokenWithBytes([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]),
    ],
    ['a payload with a space inside', `${header}.eyJle HAiOjF9.${signature}`],
    ['an opaque refresh token', 'AQAAAAAAAAABAAAAAAAAAAKx9lTBFx2h3Hf8sDkKX5yv'],
    ['a huge garbage string', '%'.repeat(1_000_000)],
    ['a huge string of dots', '.'.repeat(1_000_000)],
    ['a huge 3-segment string of base64url characters', `a.${'A'.repeat(999_999)}.b`],
  ])('returns null for %s', (_, token) => {
    expect(decodeJwtClaims(token)).toBeNull()
  })

  it.each([
    ['undefined', undefined],
    ['null', null],
    ['a number', 42],
    ['an object', { exp: 1 }],
  ])('returns null instead of throwing for %s passed by untyped code', (_, token) => {
    expect(decodeJwtClaims(token as unknown as string)).toBeNull()
  })

  it('round trips any JSON object with a numeric exp (property)', () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.string({ unit: 'binary' }), fc.jsonValue({ stringUnit: 'binary' })),
        fc.double({ noNaN: true, noDefaultInfinity: true }),
        (claims, exp) => {
          const json = JSON.stringify({ ...claims, exp })
          // the expected claims follow JSON's own reading (-0 is written as 0)
          const parsed = JSON.parse(json) as Record<string, unknown>
          const expected: Record<string, number> = {}
          for (const name of ['exp', 'iat', 'nbf']) {
            const value = parsed[name]
            if (typeof value === 'number' && Number.isFinite(value)) expected[name] = value
          }
          const token = `${header}.${Buffer.from(json, 'utf8').toString('base64url')}.${signature}`
          expect(decodeJwtClaims(token)).toStrictEqual(expected)
          expect(decodeJwtClaims(token)?.exp).toBe(parsed.exp)
        },
      ),
    )
  })

  it('never throws, and returns null or only finite time claims, for any string (property)', () => {
    const base64url = fc.string({
      unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'),
    })
    const anyString = fc.string({ unit: 'binary' })
    fc.assert(
      fc.property(
        fc.oneof(
          anyString,
          fc.tuple(anyString, anyString, anyString).map((parts) => parts.join('.')),
          fc.tuple(base64url, base64url, base64url).map((parts) => parts.join('.')),
        ),
        (token) => {
          const claims = decodeJwtClaims(token)
          if (claims === null) return
          for (const [name, value] of Object.entries(claims)) {
            expect(['exp', 'iat', 'nbf']).toContain(name)
            expect(Number.isFinite(value)).toBe(true)
          }
        },
      ),
    )
  })
})
