/**
 * Errors of @tokenflow/server. Each has a stable `code`; HTTP answers carry it as `code`
 * next to the RFC 6749 section 5.2 `error`.
 */
export type AuthErrorCode =
  /** the refresh token is unknown, forged, expired, revoked or reused (always the same answer) */
  | 'ERR_INVALID_GRANT'
  /** username or password is wrong (the same answer for an unknown user) */
  | 'ERR_INVALID_CREDENTIALS'
  /** a request body or parameter is missing or malformed, or a tokenflow route does not take the method (405) */
  | 'ERR_INVALID_REQUEST'
  /** too many attempts; see `retryAfter` */
  | 'ERR_RATE_LIMITED'
  /**
   * the access token's session has ended (protected routes). A missing or bad access token is answered with
   * the codes of "@tokenflow/server/verify" (`VerifyErrorCode`: `ERR_TOKEN_MISSING`, `ERR_JWT_EXPIRED`, …)
   */
  | 'ERR_INVALID_TOKEN'
  /** a session id that does not exist or belongs to someone else, or a path no route takes */
  | 'ERR_NOT_FOUND'
  /** a username that is already taken */
  | 'ERR_USER_EXISTS'
  /** bad server configuration (options, database, keys) */
  | 'ERR_CONFIG'
  /** a `client_id` this server does not serve */
  | 'ERR_INVALID_CLIENT'
  /** an unexpected failure; details go to the log, never to the client */
  | 'ERR_INTERNAL'
  /**
   * a service the answer needs is down (the database, the Redis of the login rate limits) or too busy (the
   * password hasher's line); see `retryAfter`
   */
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

/** SQLite result codes (better-sqlite3's `code`, extended codes included) of a database that cannot serve now. */
const SQLITE_UNAVAILABLE =
  /^SQLITE_(?:BUSY|LOCKED|FULL|READONLY|IOERR|CANTOPEN|PROTOCOL|NOMEM|INTERRUPT)(?:_|$)/
/**
 * SQLSTATEs (pg, PGlite) of the same: connection exceptions (08), insufficient resources (53, a full disk
 * or too many connections), operator intervention (57: statement_timeout, a terminated backend, a server
 * shutting down), system errors (58), serialization failures and deadlocks that outlasted the store's
 * retries, lock_timeout, a read-only transaction (a failover to a standby), a database closed to new
 * connections (55000, `ALTER DATABASE … ALLOW_CONNECTIONS false` during maintenance), and a database that
 * is not there (3D000 invalid_catalog_name: renamed or dropped during maintenance, or not yet restored).
 */
const POSTGRES_UNAVAILABLE = /^(?:08|53|57|58)[0-9A-Z]{3}$|^(?:40001|40P01|55P03|55006|55000|25006|3D000)$/
/** The errors pg throws without a SQLSTATE when it has no usable connection (a full pool, a dead socket). */
const POSTGRES_CONNECTION =
  /^(?:Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Query read timeout)/
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
])

/**
 * True for a database error that says "not now" rather than "never": a lock held too long, a full or
 * read-only database, a lost or unavailable connection, a timeout. Such a request is answered 503 and may be
 * sent again as it is: a write it failed in was rolled back (a rotation that did commit before its
 * connection was lost is answered by the reuse-grace replay).
 */
export function isStoreUnavailable(error: unknown): boolean {
  if (!(error instanceof Error) || isAuthError(error)) return false
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string') {
    if (SQLITE_UNAVAILABLE.test(code) || NETWORK_CODES.has(code)) return true
    if (POSTGRES_UNAVAILABLE.test(code) && 'severity' in error) return true
  }
  return POSTGRES_CONNECTION.test(error.message)
}
