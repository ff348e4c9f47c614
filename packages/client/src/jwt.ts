/**
 * The time claims of a JWT the client uses, in seconds since the epoch (RFC 7519 section 4.1).
 * @example
 * const claims: JwtClaims = { exp: 1_700_000_900, iat: 1_700_000_000 }
 */
export interface JwtClaims {
  exp?: number
  iat?: number
  nbf?: number
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/**
 * Reads `exp`, `iat` and `nbf` from a JWT payload WITHOUT verifying it; `null` for anything that is not one.
 * @example
 * const expiresAt = (decodeJwtClaims(accessToken)?.exp ?? Number.POSITIVE_INFINITY) * 1000
 */
export function decodeJwtClaims(token: string): JwtClaims | null {
  try {
    const segments = token.split('.')
    if (segments.length !== 3) return null
    // base64url by hand: Hermes and older React Native have no `atob`, and Buffer is Node-only
    let bits = 0
    let value = 0
    let escaped = ''
    for (const char of segments[1]!) {
      const index = ALPHABET.indexOf(char)
      if (index < 0) return null
      value = ((value << 6) | index) & 0xffff
      bits += 6
      if (bits >= 8) {
        bits -= 8
        escaped += `%${(256 + ((value >> bits) & 255)).toString(16).slice(1)}`
      }
    }
    // a length of 4n + 1 leaves 6 bits that cannot form a byte; decodeURIComponent throws on bad UTF-8
    if (bits > 4) return null
    const payload: unknown = JSON.parse(decodeURIComponent(escaped))
    if (typeof payload !== 'object' || !payload || Array.isArray(payload)) return null
    const claims: JwtClaims = {}
    for (const name of ['exp', 'iat', 'nbf'] as const) {
      const claim = (payload as JwtClaims)[name]
      // JSON.parse reads 1e999 as Infinity
      if (typeof claim === 'number' && Number.isFinite(claim)) claims[name] = claim
    }
    return claims
  } catch {
    return null
  }
}
