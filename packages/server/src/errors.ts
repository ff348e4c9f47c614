/**
 * Errors of @tokenflow/server. Each has a stable `code`; HTTP answers carry it as `code`
 * next to the RFC 6749 section 5.2 `error`.
 */
export type AuthErrorCode =
  /** the refresh token is unknown, forged, expired, revoked or reused (always the same answer) */
  | 'ERR_INVALID_GRANT'
  /** username or password is wrong (the same answer for an unknown user) */
  | 'ERR_INVALID_CREDENTIALS'
  /** a request body or parameter is missing or malformed */
  | 'ERR_INVALID_REQUEST'
  /** too many attempts; see `retryAfter` */
  | 'ERR_RATE_LIMITED'
  /** the access token is missing or invalid (protected routes) */
  | 'ERR_INVALID_TOKEN'
  /** a session id that does not exist or belongs to someone else */
  | 'ERR_NOT_FOUND'
  /** a username that is already taken */
  | 'ERR_USER_EXISTS'
  /** bad server configuration (options, database, keys) */
  | 'ERR_CONFIG'
  /** a `client_id` this server does not serve */
  | 'ERR_INVALID_CLIENT'
  /** an unexpected failure; details go to the log, never to the client */
  | 'ERR_INTERNAL'
  /** a service the answer needs is down (the Redis of the login rate limits); see `retryAfter` */
  | 'ERR_UNAVAILABLE'

/** Base class of every error @tokenflow/server throws. */
export class AuthError extends Error {
  override name = 'AuthError'
  readonly code: AuthErrorCode
  /** seconds until a rate-limited caller (or any caller, when a service is down) may try again */
  readonly retryAfter: number | undefined

  constructor(code: AuthErrorCode, message: string, options?: { cause?: unknown; retryAfter?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.retryAfter = options?.retryAfter
  }
}

/** True for an `AuthError`, even from another copy of the package. */
export function isAuthError(error: unknown): error is AuthError {
  return (
    error instanceof AuthError ||
    (error instanceof Error &&
      error.name === 'AuthError' &&
      typeof (error as { code?: unknown }).code === 'string')
  )
}
