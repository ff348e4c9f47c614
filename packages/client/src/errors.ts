/**
 * Every error tokenflow throws is a `TokenflowError` with a stable `code`.
 * Match on `code` (or on `kind` for a `RefreshError`), never on the message.
 */
export type TokenflowErrorCode =
  /** an option passed to a factory, or an argument (`setTokens`, `subscribe`), is missing or of the wrong type */
  | 'ERR_INVALID_OPTION'
  /** the token refresh failed; see `RefreshError.kind` */
  | 'ERR_REFRESH_FAILED'
  /** a refresh was needed but there is no refresh token (nobody is logged in) */
  | 'ERR_NO_REFRESH_TOKEN'
  /**
   * the session the request belongs to ended (`clear()`, a logout in another tab, or a login) while it waited,
   * or before its 401 came back once a new session started: it is never sent, or sent again, as another session
   */
  | 'ERR_SESSION_CLEARED'
  /** the token storage threw, or did not answer a write or a refresh's read within `refreshTimeout` (a stored value that is not a token set reads as no session) */
  | 'ERR_STORAGE'

/** Why a refresh failed. `rejected` ends the session; the others are transient and keep it. */
export type RefreshErrorKind = 'rejected' | 'network' | 'timeout' | 'server' | 'invalid-response'

/**
 * Base class of every error tokenflow throws.
 * @example
 * if (isTokenflowError(error) && error.code === 'ERR_REFRESH_FAILED') showLogin()
 */
export class TokenflowError extends Error {
  override name: string = 'TokenflowError'
  readonly code: TokenflowErrorCode

  constructor(code: TokenflowErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
  }
}

/**
 * The one error every waiting request rejects with when a refresh fails.
 * `kind: 'rejected'` (400/401/403 or `invalid_grant`) means the session is over and `loggedOut` fired (unless a
 * `refreshFailed` listener started a new session);
 * any other kind is transient and the tokens are kept.
 * @example
 * catch (error) { if (error instanceof RefreshError && error.kind === 'rejected') navigate('/login') }
 */
export class RefreshError extends TokenflowError {
  override name = 'RefreshError' as const
  /** always 'ERR_REFRESH_FAILED': matching on it narrows an error to a `RefreshError` */
  declare readonly code: 'ERR_REFRESH_FAILED'
  readonly kind: RefreshErrorKind
  /** HTTP status of the refresh response, when there was one */
  readonly status: number | undefined
  /** seconds the server asked us to wait (`Retry-After`), when it did */
  readonly retryAfter: number | undefined

  constructor(
    kind: RefreshErrorKind,
    message: string,
    options?: { cause?: unknown; status?: number | undefined; retryAfter?: number | undefined },
  ) {
    super('ERR_REFRESH_FAILED', message, options)
    this.kind = kind
    this.status = options?.status
    this.retryAfter = options?.retryAfter
  }
}

/**
 * Any error tokenflow throws, typed so that `code === 'ERR_REFRESH_FAILED'` narrows it to a `RefreshError`.
 * @example
 * if (isTokenflowError(error) && error.code === 'ERR_REFRESH_FAILED') console.warn(error.kind)
 */
export type AnyTokenflowError =
  | RefreshError
  | (TokenflowError & { readonly code: Exclude<TokenflowErrorCode, 'ERR_REFRESH_FAILED'> })

/**
 * True for any error tokenflow threw, even from another copy of the package. Matching on `code` then
 * narrows: `'ERR_REFRESH_FAILED'` is a `RefreshError`, with its `kind`.
 * @example
 * if (isTokenflowError(error) && error.code === 'ERR_REFRESH_FAILED' && error.kind === 'rejected') showLogin()
 */
export function isTokenflowError(error: unknown): error is AnyTokenflowError {
  return (
    error instanceof TokenflowError ||
    (error instanceof Error &&
      /^(Tokenflow|Refresh)Error$/.test(error.name) &&
      typeof (error as { code?: unknown }).code === 'string')
  )
}

/** True for a `RefreshError`, even from another copy of the package. */
export function isRefreshError(error: unknown): error is RefreshError {
  return isTokenflowError(error) && error.name === 'RefreshError'
}

/**
 * The kind of a refresh answered with an HTTP error status: 400/401/403 or `invalid_grant` (RFC 6749
 * section 5.2: the refresh token is expired, revoked or already used) is 'rejected'; anything else is 'server'.
 */
export const kindOfStatus = (status: number, error?: unknown): RefreshErrorKind =>
  status === 400 || status === 401 || status === 403 || error === 'invalid_grant' ? 'rejected' : 'server'

/** Throws the error for a bad option or argument: `"name" must be what`. */
export function invalidOption(name: string, what: string): never {
  throw new TokenflowError('ERR_INVALID_OPTION', `"${name}" must be ${what}`)
}
