import { createHmac } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  encodeRefreshToken,
  MAX_REFRESH_TOKEN_COUNTER,
  newSessionId,
  newSessionKey,
  parseRefreshToken,
  REFRESH_TOKEN_LENGTH,
  verifyRefreshTokenMac,
} from '../src/refresh-token.js'

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex')
const sessionIdArb = fc.uint8Array({ minLength: 16, maxLength: 16 }).map(hex)
const keyArb = fc.uint8Array({ minLength: 32, maxLength: 32 })
const counterArb = fc.integer({ min: 0, max: MAX_REFRESH_TOKEN_COUNTER })
const tokenInputArb = fc.record({ sessionId: sessionIdArb, counter: counterArb, key: keyArb })

/** true when a server would turn the token away: unparseable, or its MAC does not verify under `key` */
function rejected(token: string, key: Uint8Array): boolean {
  const parsed = parseRefreshToken(token)
  return parsed === null || !verifyRefreshTokenMac(parsed, key)
}

describe('encodeRefreshToken / parseRefreshToken', () => {
  it('round-trips session id and counter, and the MAC verifies with the session key', () => {
    const key = newSessionKey()
    const sessionId = newSessionId()
    for (const counter of [0, 1, 2 ** 32, MAX_REFRESH_TOKEN_COUNTER]) {
      const token = encodeRefreshToken({ sessionId, counter, key })
      expect(token).toMatch(/^[A-Za-z0-9_-]{52}$/)
      expect(token).toHaveLength(REFRESH_TOKEN_LENGTH)
      const parsed = parseRefreshToken(token)
      expect(parsed).toMatchObject({ version: 1, sessionId, counter })
      expect(verifyRefreshTokenMac(parsed!, key)).toBe(true)
      expect(verifyRefreshTokenMac(parsed!, newSessionKey())).toBe(false)
    }
  })

  it('lays out version | session id | 48-bit counter | HMAC-SHA256[:16] in 39 bytes', () => {
    const key = new Uint8Array(32).fill(7)
    const sessionId = '00112233445566778899aabbccddeeff'
    const token = encodeRefreshToken({ sessionId, counter: 0x0102_0304_0506, key })
    const bytes = Buffer.from(token, 'base64url')
    expect(bytes).toHaveLength(39)
    expect(bytes[0]).toBe(1)
    expect(bytes.subarray(1, 17).toString('hex')).toBe(sessionId)
    expect(bytes.subarray(17, 23).toString('hex')).toBe('010203040506')
    const mac = createHmac('sha256', key).update(bytes.subarray(0, 23)).digest().subarray(0, 16)
    expect(bytes.subarray(23).equals(mac)).toBe(true)
    expect(parseRefreshToken(token)).toEqual({
      version: 1,
      sessionId,
      counter: 0x0102_0304_0506,
      mac: new Uint8Array(mac),
      signed: new Uint8Array(bytes.subarray(0, 23)),
    })
  })

  it('is deterministic: the same inputs give the byte-identical token', () => {
    fc.assert(
      fc.property(tokenInputArb, (input) => {
        const first = encodeRefreshToken(input)
        const again = encodeRefreshToken({ ...input, key: new Uint8Array(input.key) })
        expect(again).toBe(first)
        expect(
          encodeRefreshToken({ ...input, counter: (input.counter + 1) % (MAX_REFRESH_TOKEN_COUNTER + 1) }),
        ).not.toBe(first)
      }),
    )
  })

  it('round-trips any session id, counter and key', () => {
    fc.assert(
      fc.property(tokenInputArb, ({ sessionId, counter, key }) => {
        const parsed = parseRefreshToken(encodeRefreshToken({ sessionId, counter, key }))
        expect(parsed).toMatchObject({ version: 1, sessionId, counter })
        expect(verifyRefreshTokenMac(parsed!, key)).toBe(true)
      }),
    )
  })

  it('refuses to encode a malformed session id, counter or key', () => {
    const sessionId = newSessionId()
    const key = newSessionKey()
    const bad = [
      { sessionId: sessionId.toUpperCase(), counter: 0, key },
      { sessionId: sessionId.slice(1), counter: 0, key },
      { sessionId: `${sessionId.slice(1)}g`, counter: 0, key },
      { sessionId, counter: -1, key },
      { sessionId, counter: 1.5, key },
      { sessionId, counter: MAX_REFRESH_TOKEN_COUNTER + 1, key },
      { sessionId, counter: Number.NaN, key },
      { sessionId, counter: 0, key: new Uint8Array(0) },
      { sessionId, counter: 0, key: new Uint8Array(16) },
    ]
    for (const input of bad) expect(() => encodeRefreshToken(input)).toThrow(TypeError)
  })
})

describe('parseRefreshToken rejects without a database lookup', () => {
  const token = encodeRefreshToken({ sessionId: newSessionId(), counter: 42, key: newSessionKey() })

  it('returns null for anything that is not a string', () => {
    for (const value of [
      undefined,
      null,
      42,
      42n,
      true,
      {},
      [],
      [token],
      { token },
      Buffer.from(token),
      () => token,
    ]) {
      expect(parseRefreshToken(value)).toBeNull()
    }
  })

  it('returns null for a wrong length, including huge input', () => {
    expect(parseRefreshToken('')).toBeNull()
    expect(parseRefreshToken(token.slice(0, -1))).toBeNull()
    expect(parseRefreshToken(`${token}A`)).toBeNull()
    expect(parseRefreshToken(`${token}=`)).toBeNull()
    expect(parseRefreshToken(token.repeat(20_000))).toBeNull()
  })

  it('returns null for characters outside base64url', () => {
    for (const char of ['+', '/', '=', ' ', '.', '\n', 'é', '\0']) {
      expect(parseRefreshToken(char + token.slice(1))).toBeNull()
      expect(parseRefreshToken(token.slice(0, -1) + char)).toBeNull()
    }
  })

  it('returns null for another version', () => {
    const bytes = Buffer.from(token, 'base64url')
    for (const version of [0, 2, 255]) {
      bytes[0] = version
      expect(parseRefreshToken(bytes.toString('base64url'))).toBeNull()
    }
  })

  it('never throws, whatever it is given', () => {
    fc.assert(
      fc.property(fc.anything(), (value) => {
        expect(() => parseRefreshToken(value)).not.toThrow()
      }),
    )
    fc.assert(
      fc.property(fc.string({ minLength: 52, maxLength: 52 }), (value) => {
        expect(() => parseRefreshToken(value)).not.toThrow()
      }),
    )
  })
})

describe('a tampered token is refused', () => {
  it('flipping any single bit of the token bytes breaks the parse or the MAC', () => {
    fc.assert(
      fc.property(
        tokenInputArb,
        fc.integer({ min: 0, max: 38 }),
        fc.integer({ min: 0, max: 7 }),
        ({ sessionId, counter, key }, index, bit) => {
          const bytes = Buffer.from(encodeRefreshToken({ sessionId, counter, key }), 'base64url')
          bytes[index]! ^= 1 << bit
          expect(rejected(bytes.toString('base64url'), key)).toBe(true)
        },
      ),
    )
  })

  it('flipping any single bit of any character breaks the parse or the MAC', () => {
    fc.assert(
      fc.property(
        tokenInputArb,
        fc.integer({ min: 0, max: REFRESH_TOKEN_LENGTH - 1 }),
        fc.integer({ min: 0, max: 15 }),
        ({ sessionId, counter, key }, index, bit) => {
          const token = encodeRefreshToken({ sessionId, counter, key })
          const flipped = String.fromCharCode(token.charCodeAt(index) ^ (1 << bit))
          expect(rejected(token.slice(0, index) + flipped + token.slice(index + 1), key)).toBe(true)
        },
      ),
    )
  })

  it('a truncated or extended token does not parse', () => {
    fc.assert(
      fc.property(
        tokenInputArb,
        fc.integer({ min: 0, max: REFRESH_TOKEN_LENGTH - 1 }),
        fc.string({ minLength: 1 }),
        ({ sessionId, counter, key }, length, suffix) => {
          const token = encodeRefreshToken({ sessionId, counter, key })
          expect(parseRefreshToken(token.slice(0, length))).toBeNull()
          expect(parseRefreshToken(token + suffix)).toBeNull()
          expect(parseRefreshToken(suffix + token)).toBeNull()
        },
      ),
    )
  })

  it('a random well-formed token does not verify under a session key', () => {
    const base64url = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.split('')
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom(...base64url), { minLength: 50, maxLength: 50 }),
        keyArb,
        (rest, key) => {
          // 'AQ' decodes to a first byte of 1, the version; the rest is random
          const token = `AQ${rest.join('')}`
          const parsed = parseRefreshToken(token)
          expect(parsed).not.toBeNull()
          expect(verifyRefreshTokenMac(parsed!, key)).toBe(false)
        },
      ),
    )
  })
})

describe('verifyRefreshTokenMac', () => {
  it('refuses a parsed token whose MAC or signed part has the wrong length', () => {
    const key = newSessionKey()
    const parsed = parseRefreshToken(encodeRefreshToken({ sessionId: newSessionId(), counter: 1, key }))!
    expect(verifyRefreshTokenMac({ ...parsed, mac: parsed.mac.subarray(0, 8) }, key)).toBe(false)
    expect(verifyRefreshTokenMac({ ...parsed, signed: parsed.signed.subarray(1) }, key)).toBe(false)
  })

  it('throws TypeError for a key that is not 32 bytes', () => {
    const parsed = parseRefreshToken(
      encodeRefreshToken({ sessionId: newSessionId(), counter: 1, key: newSessionKey() }),
    )!
    expect(() => verifyRefreshTokenMac(parsed, new Uint8Array(0))).toThrow(TypeError)
    expect(() => verifyRefreshTokenMac(parsed, 'key' as never)).toThrow(TypeError)
  })
})

describe('newSessionId / newSessionKey', () => {
  it('makes 16 random bytes as lower-case hex, and 32-byte keys', () => {
    const ids = new Set(Array.from({ length: 100 }, newSessionId))
    expect(ids.size).toBe(100)
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/)
    const key = newSessionKey()
    expect(key).toBeInstanceOf(Uint8Array)
    expect(key).toHaveLength(32)
    expect(hex(key)).not.toBe(hex(newSessionKey()))
  })
})
