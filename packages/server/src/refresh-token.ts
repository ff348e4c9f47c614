/**
 * The opaque refresh-token format. A token is 39 bytes, base64url without padding (52 characters):
 *
 * | offset | bytes | field                                                        |
 * | ------ | ----- | ------------------------------------------------------------ |
 * | 0      | 1     | version, always 1                                            |
 * | 1      | 16    | session id (the raw bytes of the 32-hex-char id)             |
 * | 17     | 6     | counter, unsigned 48-bit big-endian                          |
 * | 23     | 16    | HMAC-SHA256(sessionKey, bytes 0..22), first 16 bytes          |
 *
 * The counter takes 6 bytes, not 4, so that the token is a multiple of 3 bytes: then every
 * 52-character base64url string decodes to exactly one byte string and back, and no two token
 * strings carry the same bytes (with 37 bytes the last character would have unused bits that
 * decoders ignore). 48 bits also never wrap, and stay below `Number.MAX_SAFE_INTEGER`.
 * Only the per-session key and the counter are stored; the token itself never is.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'

/**
 * The version byte of tokens made by this module.
 * @example
 * parseRefreshToken(token)?.version === REFRESH_TOKEN_VERSION
 */
export const REFRESH_TOKEN_VERSION = 1

/**
 * The length in characters of every refresh token (39 bytes in base64url).
 * @example
 * if (token.length !== REFRESH_TOKEN_LENGTH) return invalidGrant()
 */
export const REFRESH_TOKEN_LENGTH = 52

/**
 * The length in bytes of a session key made by `newSessionKey()`.
 * @example
 * newSessionKey().length === SESSION_KEY_BYTES // 32
 */
export const SESSION_KEY_BYTES = 32

/**
 * The largest counter a token can carry (2^48 - 1).
 * @example
 * if (session.counter >= MAX_REFRESH_TOKEN_COUNTER) await store.revokeSession(session.id, now, 'exhausted')
 */
export const MAX_REFRESH_TOKEN_COUNTER = 2 ** 48 - 1

const SESSION_ID_BYTES = 16
const COUNTER_BYTES = 6
const MAC_BYTES = 16
const SIGNED_BYTES = 1 + SESSION_ID_BYTES + COUNTER_BYTES
const TOKEN_BYTES = SIGNED_BYTES + MAC_BYTES
const TOKEN_PATTERN = /^[A-Za-z0-9_-]+$/
const SESSION_ID_PATTERN = /^[0-9a-f]{32}$/

/**
 * A refresh token taken apart by `parseRefreshToken`; its MAC is not verified yet.
 * @example
 * const parsed = parseRefreshToken(token) // ParsedRefreshToken | null
 */
export interface ParsedRefreshToken {
  version: number
  /** 32 lower-case hex characters */
  sessionId: string
  counter: number
  /** the 16 MAC bytes carried by the token */
  mac: Uint8Array
  /** the bytes the MAC covers: version, session id and counter */
  signed: Uint8Array
}

/**
 * Makes the refresh token for a session and counter. The same inputs always give the same token,
 * which is what lets a retry within `reuseGrace` get the byte-identical current token back.
 * @example
 * const refreshToken = encodeRefreshToken({ sessionId: session.id, counter: session.counter, key: session.key })
 */
export function encodeRefreshToken({
  sessionId,
  counter,
  key,
}: {
  sessionId: string
  counter: number
  key: Uint8Array
}): string {
  if (typeof sessionId !== 'string' || !SESSION_ID_PATTERN.test(sessionId)) {
    throw new TypeError('"sessionId" must be 32 lower-case hex characters')
  }
  if (!Number.isSafeInteger(counter) || counter < 0 || counter > MAX_REFRESH_TOKEN_COUNTER) {
    throw new TypeError('"counter" must be an integer from 0 to 2^48 - 1')
  }
  assertKey(key)
  const bytes = Buffer.alloc(TOKEN_BYTES)
  bytes[0] = REFRESH_TOKEN_VERSION
  bytes.write(sessionId, 1, SESSION_ID_BYTES, 'hex')
  bytes.writeUIntBE(counter, 1 + SESSION_ID_BYTES, COUNTER_BYTES)
  mac(key, bytes.subarray(0, SIGNED_BYTES)).copy(bytes, SIGNED_BYTES)
  return bytes.toString('base64url')
}

/**
 * Takes a refresh token apart without touching the database, or returns null when it cannot be
 * one of ours: not a string, not 52 characters, not base64url, or another version. Never throws.
 * The MAC still has to be checked with `verifyRefreshTokenMac` and the session's key.
 * @example
 * const parsed = parseRefreshToken(body.refreshToken)
 * if (!parsed) throw new AuthError('ERR_INVALID_GRANT', 'invalid refresh token')
 */
export function parseRefreshToken(token: unknown): ParsedRefreshToken | null {
  // length first: tokens are fixed-size, so oversized input is never decoded or scanned
  if (typeof token !== 'string' || token.length !== REFRESH_TOKEN_LENGTH || !TOKEN_PATTERN.test(token)) {
    return null
  }
  const bytes = Buffer.from(token, 'base64url')
  if (bytes.length !== TOKEN_BYTES || bytes[0] !== REFRESH_TOKEN_VERSION) return null
  return {
    version: REFRESH_TOKEN_VERSION,
    sessionId: bytes.toString('hex', 1, 1 + SESSION_ID_BYTES),
    counter: bytes.readUIntBE(1 + SESSION_ID_BYTES, COUNTER_BYTES),
    mac: new Uint8Array(bytes.subarray(SIGNED_BYTES)),
    signed: new Uint8Array(bytes.subarray(0, SIGNED_BYTES)),
  }
}

/**
 * Checks the MAC of a parsed token against the session's key, in constant time.
 * @example
 * const session = await store.getSession(parsed.sessionId)
 * if (!session || !verifyRefreshTokenMac(parsed, session.key)) throw new AuthError('ERR_INVALID_GRANT', 'invalid refresh token')
 */
export function verifyRefreshTokenMac(parsed: ParsedRefreshToken, key: Uint8Array): boolean {
  assertKey(key)
  if (parsed.mac.length !== MAC_BYTES || parsed.signed.length !== SIGNED_BYTES) return false
  return timingSafeEqual(mac(key, parsed.signed), parsed.mac)
}

/**
 * A new random session id: 16 bytes as 32 lower-case hex characters.
 * @example
 * const id = newSessionId() // '9f86d081884c7d659a2feaa0c55ad015'
 */
export function newSessionId(): string {
  return randomBytes(SESSION_ID_BYTES).toString('hex')
}

/**
 * A new random per-session HMAC key of 32 bytes.
 * @example
 * const refreshToken = encodeRefreshToken({ sessionId: newSessionId(), counter: 0, key: newSessionKey() })
 */
export function newSessionKey(): Uint8Array {
  return new Uint8Array(randomBytes(SESSION_KEY_BYTES))
}

function mac(key: Uint8Array, signed: Uint8Array): Buffer {
  return createHmac('sha256', key).update(signed).digest().subarray(0, MAC_BYTES)
}

function assertKey(key: Uint8Array): void {
  // an empty or short key would make every token of the session forgeable
  if (!(key instanceof Uint8Array) || key.length !== SESSION_KEY_BYTES) {
    throw new TypeError(`"key" must be a Uint8Array of ${SESSION_KEY_BYTES} bytes`)
  }
}
