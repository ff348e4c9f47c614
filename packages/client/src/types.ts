/** The tokens a login or a refresh hands over. */
export interface TokenSet {
  accessToken: string
  /** `undefined` keeps the current refresh token (servers that do not rotate); `null` means there is none */
  refreshToken?: string | null | undefined
  /** epoch ms at which the access token expires; with a JWT `exp` too, the earlier one counts */
  expiresAt?: number | undefined
}

/** What a `RefreshFunction` receives. */
export interface RefreshContext {
  refreshToken: string
  /** aborts when `refreshTimeout` passes, or when a login or logout replaces the session */
  signal: AbortSignal
  /** the manager's clock (epoch ms), for turning `expires_in` into `expiresAt` */
  now: () => number
}

/**
 * Exchanges a refresh token for new tokens. Throw a `RefreshError` to say how it failed. An HTTP client's
 * error for an answer of status 400 or more (axios, ky, ofetch: `status` or `response.status`) is classified
 * by that status as `jsonRefresh` does: 400, 401, 403 or `invalid_grant` in the body means 'rejected' (the
 * session ends), any other status 'server'. Anything else thrown is classified as a network error.
 */
export type RefreshFunction = (context: RefreshContext) => Promise<TokenSet>

/**
 * Where tokens are kept. Structural, and each method may be sync or async,
 * so `localStorage`-style and AsyncStorage-style backends both fit.
 */
export interface TokenStorage {
  /** the stored token set, or null when there is none */
  get(): TokenSet | null | Promise<TokenSet | null>
  /** stores the token set, in place of the one stored before */
  set(tokens: TokenSet): void | Promise<void>
  /** forgets the token set */
  clear(): void | Promise<void>
  /**
   * `true`: other tabs see the same storage (localStorage, a cookie, IndexedDB); the manager then talks to them
   * by default. `false`: only this manager uses it (memoryStorage, sessionStorage); beside tokens another tab's
   * broadcast brought, it then holds only what this tab wrote before (its logout, an earlier login), and the
   * broadcast's tokens are refreshed. Unset: not known; an empty storage is taken as a logout elsewhere, as
   * with `true`.
   */
  shared?: boolean | undefined
}

/**
 * Where `webStorage` notes the key it keeps the tokens under, for the manager's default channel and lock
 * names: a symbol, so that no member of a storage of your own (a `key` of its own) is taken for it
 * @internal
 */
export const STORAGE_KEY: unique symbol = Symbol.for('tokenflow.storageKey')

/** The subset of `navigator.locks` (Web Locks API) the manager needs. */
export interface LockManagerLike {
  request<T>(
    name: string,
    options: { mode?: 'exclusive' | 'shared'; signal?: AbortSignal; ifAvailable?: boolean },
    callback: (lock: unknown) => Promise<T> | T,
  ): Promise<T>
  query?(): Promise<{ held?: Array<{ name?: string }>; pending?: Array<{ name?: string }> }>
}
