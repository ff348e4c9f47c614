import { VerifyError } from '@tokenflow/server/verify'

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
