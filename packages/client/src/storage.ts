import { invalidOption, TokenflowError } from './errors.js'
import { STORAGE_KEY, type TokenSet, type TokenStorage } from './types.js'

/**
 * What `webStorage` needs: `localStorage`, `sessionStorage` or anything with the same three methods.
 * @example
 * const backend: StorageLike = sessionStorage
 */
export interface StorageLike {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem(key: string): void
}

/**
 * What `asyncStorage` needs: React Native's AsyncStorage or anything with the same promise-based methods.
 * The batch methods are used when present, so that the token pair is written in one call: `getMany`,
 * `setMany` and `removeMany` of AsyncStorage 3, or `multiGet`, `multiSet` and `multiRemove` of 1 and 2.
 * @example
 * const backend: AsyncStorageLike = AsyncStorage // from '@react-native-async-storage/async-storage'
 */
export interface AsyncStorageLike {
  getItem(key: string): Promise<string | null>
  setItem(key: string, value: string): Promise<void>
  removeItem(key: string): Promise<void>
  getMany?(keys: string[]): Promise<Record<string, string | null>>
  setMany?(entries: Record<string, string>): Promise<void>
  removeMany?(keys: string[]): Promise<void>
  multiGet?(keys: readonly string[]): Promise<readonly (readonly [string, string | null])[]>
  multiSet?(pairs: readonly (readonly [string, string])[]): Promise<void>
  multiRemove?(keys: readonly string[]): Promise<void>
}

/**
 * Options of `webStorage`.
 * @example
 * const storage = webStorage(localStorage, { key: 'my-app-tokens' })
 */
export interface WebStorageOptions {
  /**
   * The one key the token set is stored under, as JSON.
   * @default 'tokenflow'
   */
  key?: string | undefined
}

/**
 * Options of `asyncStorage`: one key per value, as plain strings.
 * @example
 * const storage = asyncStorage(AsyncStorage, { accessTokenKey: '@app/access', refreshTokenKey: '@app/refresh' })
 */
export interface AsyncStorageOptions {
  /**
   * Key of the access token.
   * @default 'accessToken'
   */
  accessTokenKey?: string | undefined
  /**
   * Key of the refresh token.
   * @default 'refreshToken'
   */
  refreshTokenKey?: string | undefined
  /**
   * Key of `expiresAt` (epoch ms, as a decimal string).
   * @default 'accessTokenExpiresAt'
   */
  expiresAtKey?: string | undefined
}

/**
 * True when `value` can be stored and handed to the manager as a token set.
 * @example
 * const tokens = isTokenSet(parsed) ? parsed : null
 */
export function isTokenSet(value: unknown): value is TokenSet {
  const { accessToken, refreshToken, expiresAt } = (value ?? {}) as TokenSet
  return (
    typeof accessToken === 'string' &&
    // it goes in an Authorization header: visible ASCII, no spaces or line breaks (RFC 6750's b64token fits)
    /^[!-~]+$/.test(accessToken) &&
    (refreshToken == null || typeof refreshToken === 'string') &&
    (expiresAt === undefined || Number.isFinite(expiresAt))
  )
}

/**
 * Applies `next` over `previous` into a fresh object: a `refreshToken` of `undefined` keeps the previous one,
 * and what is read back always has `refreshToken` as a string or `null`.
 */
function merge(
  previous: TokenSet | null,
  { accessToken, refreshToken = previous?.refreshToken, expiresAt }: TokenSet,
): TokenSet {
  const tokens: TokenSet = { accessToken, refreshToken: refreshToken || null }
  if (expiresAt !== undefined) tokens.expiresAt = expiresAt
  return tokens
}

/** A token set as the manager keeps it (`refreshToken` a string or null), or null for anything else. */
export function toTokenSet(value: unknown): TokenSet | null {
  return isTokenSet(value) ? merge(value, value) : null
}

/** What a storage failure surfaces as: ERR_STORAGE, with the backend's error as the cause (wrapped once). */
export function storageError(cause: unknown): TokenflowError {
  return (cause as TokenflowError)?.code === 'ERR_STORAGE' && cause instanceof TokenflowError
    ? cause
    : new TokenflowError('ERR_STORAGE', 'token storage failed', { cause })
}

/** Runs a backend call; whatever it throws (quota, SecurityError) surfaces as ERR_STORAGE. */
function attempt<T>(run: () => T): T {
  try {
    return run()
  } catch (cause) {
    throw storageError(cause)
  }
}

function checkStorage(storage: unknown, keys: Record<string, unknown>): void {
  for (const method of ['getItem', 'setItem', 'removeItem'])
    if (typeof (storage as Record<string, unknown> | undefined)?.[method] !== 'function')
      invalidOption('storage', 'a Storage: getItem, setItem and removeItem')
  for (const [name, key] of Object.entries(keys))
    if (typeof key !== 'string' || !key) invalidOption(name, 'a non-empty string')
}

/**
 * Keeps the tokens in this instance's memory only: the default, and the one to use on a server. It says
 * `shared: false`: give each manager its own.
 * @example
 * const manager = createTokenManager({ refresh: jsonRefresh('/refresh/token'), storage: memoryStorage() })
 */
export function memoryStorage(initial: TokenSet | null = null): TokenStorage {
  let current = initial && merge(null, initial)
  return {
    shared: false,
    get: () => current && merge(current, current),
    set(tokens) {
      current = merge(current, tokens)
    },
    clear() {
      current = null
    },
  }
}

/**
 * Keeps the token set as JSON under one key of `localStorage` (the default) or `sessionStorage`.
 * @param storage where to keep it; `undefined` means `globalThis.localStorage`, read when this is called
 * @default globalThis.localStorage
 * @example
 * const storage = webStorage(sessionStorage, { key: 'my-app-tokens' })
 */
export function webStorage(
  storage?: StorageLike,
  { key = 'tokenflow' }: WebStorageOptions = {},
): TokenStorage {
  let cause: unknown
  try {
    // read when called, not at import, so the module loads under SSR; the getter throws in sandboxed iframes
    storage ??= globalThis.localStorage
  } catch (error) {
    cause = error
  }
  if (!storage)
    throw new TokenflowError(
      'ERR_INVALID_OPTION',
      '"storage" is required: localStorage is not available; pass memoryStorage() on the server',
      { cause },
    )
  checkStorage(storage, { key })
  const backend = storage
  let shared = true
  try {
    // sessionStorage is per tab: tabs that talked to each other would mix their sessions
    shared = storage !== globalThis.sessionStorage
  } catch {}
  const read = (): TokenSet | null => {
    const raw = attempt(() => backend.getItem(key))
    try {
      // corrupt or foreign data reads as logged out rather than crashing the app
      return toTokenSet(raw && JSON.parse(raw))
    } catch {
      return null
    }
  }
  const kept: TokenStorage & { [STORAGE_KEY]: string } = {
    shared,
    [STORAGE_KEY]: key,
    get: read,
    set(tokens) {
      const value = JSON.stringify(merge(tokens.refreshToken === undefined ? read() : null, tokens))
      attempt(() => backend.setItem(key, value))
    },
    clear: () => attempt(() => backend.removeItem(key)),
  }
  return kept
}

/**
 * Keeps the tokens in React Native's AsyncStorage, one plain string per key, under the keys the
 * well-known axios recipe uses, so an app that migrates to tokenflow keeps its users logged in.
 * @example
 * import AsyncStorage from '@react-native-async-storage/async-storage'
 * const storage = asyncStorage(AsyncStorage)
 */
export function asyncStorage(
  storage: AsyncStorageLike,
  {
    accessTokenKey = 'accessToken',
    refreshTokenKey = 'refreshToken',
    expiresAtKey = 'accessTokenExpiresAt',
  }: AsyncStorageOptions = {},
): TokenStorage {
  checkStorage(storage, { accessTokenKey, refreshTokenKey, expiresAtKey })
  const keys = [accessTokenKey, refreshTokenKey, expiresAtKey]
  // every backend failure, thrown or rejected, surfaces as ERR_STORAGE
  const guard = <T>(run: () => Promise<T>): Promise<T> =>
    run().catch((cause: unknown) => {
      throw storageError(cause)
    })
  const remove = (names: string[]) =>
    storage.removeMany
      ? storage.removeMany(names)
      : storage.multiRemove
        ? storage.multiRemove(names)
        : Promise.all(names.map((name) => storage.removeItem(name)))
  return {
    get: () =>
      guard(async () => {
        const values = new Map(
          storage.getMany
            ? Object.entries(await storage.getMany(keys))
            : storage.multiGet
              ? await storage.multiGet(keys)
              : await Promise.all(keys.map(async (name) => [name, await storage.getItem(name)] as const)),
        )
        const accessToken = values.get(accessTokenKey)
        if (!accessToken) return null
        const tokens: TokenSet = { accessToken, refreshToken: values.get(refreshTokenKey) || null }
        const expiresAt = Number(values.get(expiresAtKey) || Number.NaN)
        if (Number.isFinite(expiresAt)) tokens.expiresAt = expiresAt
        return tokens
      }),
    set: (tokens) =>
      guard(async () => {
        const pairs: [string, string][] = [[accessTokenKey, tokens.accessToken]]
        const { refreshToken } = tokens
        if (refreshToken) pairs.push([refreshTokenKey, refreshToken])
        if (tokens.expiresAt !== undefined) pairs.push([expiresAtKey, String(tokens.expiresAt)])
        await (storage.setMany
          ? storage.setMany(Object.fromEntries(pairs))
          : storage.multiSet
            ? storage.multiSet(pairs)
            : Promise.all(pairs.map(([name, value]) => storage.setItem(name, value))))
        // written after the new values, so a failure in between never leaves an access token without its refresh token
        const stale = keys.filter(
          (name) =>
            // `undefined` keeps the stored refresh token (servers that do not rotate); `null` or '' removes it
            (name === refreshTokenKey && refreshToken !== undefined && !refreshToken) ||
            (name === expiresAtKey && tokens.expiresAt === undefined),
        )
        if (stale.length) await remove(stale)
      }),
    clear: () =>
      guard(async () => {
        await remove(keys)
      }),
  }
}
