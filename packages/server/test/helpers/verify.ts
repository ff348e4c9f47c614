import { createVerifier, VerifyError } from '@tokenflow/server/verify'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'

/**
 * The rejection of `promise`, which must be a `VerifyError` (a resolution or any other error fails the test).
 * @example
 * expect((await rejection(verifier.verify(token))).code).toBe('ERR_JWT_EXPIRED')
 */
export async function rejection(promise: Promise<unknown>): Promise<VerifyError> {
  const error = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  )
  if (!(error instanceof VerifyError)) throw new Error(`expected a VerifyError, got ${String(error)}`)
  return error
}

/**
 * A verifier over a local JWKS of one ES256 key, on a fixed clock, and `sign()` for tokens it accepts (subject
 * `user-1`; `exp` in seconds, 15 minutes ahead unless given).
 * @example
 * const { verifier, sign } = await localVerifier()
 * await verifier.verify(await sign())
 */
export async function localVerifier({
  issuer = 'https://auth.example.test',
  audience = 'https://api.example.test',
  now = 1_750_000_000_000,
} = {}) {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }
  const verifier = createVerifier({ jwks: { keys: [jwk] }, issuer, audience, now: () => now })
  const sign = (exp = now / 1000 + 900) =>
    new SignJWT({ client_id: 'web', sid: 's1' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'at+jwt' })
      .setIssuer(issuer)
      .setAudience(audience)
      .setSubject('user-1')
      .setJti('jti-1')
      .setIssuedAt(now / 1000 - 10)
      .setExpirationTime(exp)
      .sign(privateKey)
  return { verifier, sign, now }
}
