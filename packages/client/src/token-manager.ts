import { type CrossTabMessage, createCrossTab } from './cross-tab.js'
import { isRefreshError, isTokenflowError, RefreshError, TokenflowError } from './errors.js'
import { decodeJwtClaims } from './jwt.js'
import { memoryStorage } from './storage.js'
import type { LockManagerLike, RefreshFunction, TokenSet, TokenStorage } from './types.js'

/** What a manager tells its subscribers. One union of `{ type }` objects. */
export type TokenEvent =
  | { type: 'refreshStarted' }
  | { type: 'refreshed'; tokens: TokenSet; source: 'local' | 'otherTab' }
  | { type: 'refreshFailed'; error: RefreshError; willLogout: boolean }
  | { type: 'loggedOut'; reason: 'refreshRejected' | 'cleared' | 'otherTab'; error?: RefreshError }
  /** the storage threw; the tokens are still held in memory, so no request is lost */
  | { type: 'storageError'; error: TokenflowError }

export type TokenStatus = 'unauthenticated' | 'authenticated' | 'refreshing'

/** Retries of transient refresh failures (network, timeout, 5xx, 429). */
export interface RetryOptions {
  /** retries after the first try @default 2 */
  attempts?: number
  /** ms before the first retry; doubles each time @default 300 */
  baseDelay?: number
  /** ms, the most one wait may last (also caps `Retry-After`) @default 5_000 */
  maxDelay?: number
}

export interface TokenManagerOptions {
  /** exchanges a refresh token for new tokens, e.g. `jsonRefresh('/refresh/token')` */
  refresh: RefreshFunction
  /** where tokens are kept @default memoryStorage() */
  storage?: TokenStorage
  /** ms before `exp` at which `getAccessToken()` refreshes first; capped at half the token's lifetime @default 30_000 */
  leeway?: number
  /** ms one refresh attempt may take before it fails with kind 'timeout' @default 10_000 */
  refreshTimeout?: number
  /** retries of transient failures, or `false` for none @default { attempts: 2, baseDelay: 300, maxDelay: 5_000 } */
  retry?: RetryOptions | false
  /** cross-tab lock (Web Locks shape), or `false` @default globalThis.navigator?.locks */
  lock?: LockManagerLike | false
  /** ms to wait for the lock; after it, refresh without the lock instead of hanging @default 10_000 */
  lockTimeout?: number
  /** BroadcastChannel name for cross-tab events, or `false` @default 'tokenflow' */
  channel?: string | false
  /** clock in epoch ms @default Date.now */
  now?: () => number
}

/** Holds one user's tokens and refreshes them exactly once at a time. */
export interface TokenManager {
  /** a fresh access token (refreshing first when it is about to expire), or null when logged out */
  getAccessToken(options?: { signal?: AbortSignal | undefined }): Promise<string | null>
  /**
   * Refresh, or join the refresh that is running. With `rejectedToken` (the token a 401 came back for),
   * a token that is no longer current resolves with the current one and does not refresh.
   */
  refresh(options?: {
    rejectedToken?: string | null | undefined
    signal?: AbortSignal | undefined
  }): Promise<string>
  /** start a session, e.g. after login */
  setTokens(tokens: TokenSet): Promise<void>
  /** end the session locally: forget the tokens and emit `loggedOut` with reason 'cleared' */
  clear(): Promise<void>
  /** listen to events; returns the unsubscribe function */
  subscribe(listener: (event: TokenEvent) => void): () => void
  readonly status: TokenStatus
}

type Adopted = { tokens: TokenSet; source: 'local' | 'otherTab' }

const fail = (message: string): never => {
  throw new TokenflowError('ERR_INVALID_OPTION', message)
}
const duration = (value: unknown, name: string): number =>
  typeof value === 'number' && value >= 0 && Number.isFinite(value)
    ? value
    : fail(`"${name}" must be a non-negative number of milliseconds`)

/** A token set read from storage or handed in: anything else is treated as no session. */
function toTokenSet(value: unknown): TokenSet | null {
  if (typeof value !== 'object' || value === null) return null
  const { accessToken, refreshToken, expiresAt } = value as Record<string, unknown>
  if (typeof accessToken !== 'string' || accessToken === '') return null
  if (refreshToken != null && typeof refreshToken !== 'string') return null
  if (expiresAt != null && !Number.isFinite(expiresAt)) return null
  return {
    accessToken,
    refreshToken: (refreshToken as string | null | undefined) ?? null,
    ...(expiresAt == null ? {} : { expiresAt: expiresAt as number }),
  }
}

/** Reject with the signal's reason as soon as it aborts; the promise itself goes on. */
function wait<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/**
 * Creates a token manager: one refresh at a time, every waiter settles, `loggedOut` once.
 * @example
 * const manager = createTokenManager({
 *   refresh: jsonRefresh('https://api.example.com/refresh/token'),
 *   storage: webStorage(),
 * })
 * await manager.setTokens({ accessToken, refreshToken })
 */
export function createTokenManager(options: TokenManagerOptions): TokenManager {
  if (typeof options !== 'object' || options === null) fail('"options" must be an object')
  const {
    refresh: refreshTokens,
    storage = memoryStorage(),
    leeway = 30_000,
    refreshTimeout = 10_000,
    retry = {},
    lock = (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator?.locks ?? false,
    lockTimeout = 10_000,
    channel = 'tokenflow',
    now = Date.now,
  } = options
  if (typeof refreshTokens !== 'function') fail('"refresh" must be a function')
  if (
    typeof storage?.get !== 'function' ||
    typeof storage.set !== 'function' ||
    typeof storage.clear !== 'function'
  )
    fail('"storage" must have get, set and clear methods')
  if (lock !== false && typeof lock?.request !== 'function')
    fail('"lock" must have a request method, or be false')
  if (typeof now !== 'function') fail('"now" must be a function')
  if (channel !== false && (typeof channel !== 'string' || channel === ''))
    fail('"channel" must be a name or false')
  duration(leeway, 'leeway')
  duration(refreshTimeout, 'refreshTimeout')
  duration(lockTimeout, 'lockTimeout')
  const { attempts = 2, baseDelay = 300, maxDelay = 5_000 } = retry === false ? { attempts: 0 } : retry
  if (!Number.isInteger(attempts) || attempts < 0) fail('"retry.attempts" must be a non-negative integer')
  duration(baseDelay, 'retry.baseDelay')
  duration(maxDelay, 'retry.maxDelay')

  const lockName = `${channel || 'tokenflow'}:refresh`
  const listeners = new Set<(event: TokenEvent) => void>()

  let tokens: TokenSet | null = null
  /** local-clock epoch ms at which the access token expires, when known */
  let expiresAt: number | undefined
  /** the token's lifetime in ms, when known: caps the leeway */
  let lifetime: number | undefined
  /** server clock minus local clock, estimated from `iat` when they disagree by more than the JWT's 1 s resolution allows */
  let skew = 0
  /** bumps whenever the session changes (login, logout, clear): results of an older session are dropped */
  let session = 0
  let loaded: Promise<void> | undefined
  let pending: Promise<string> | undefined
  let settlePending: ((token: string | Error) => void) | undefined
  /** storage writes run one after another, in call order */
  let writes: Promise<void> = Promise.resolve()
  /** false after a write failed: until the next one succeeds, storage is older than memory and is not trusted */
  let inSync = true
  // by default only a page talks to other tabs: in Node (SSR) every BroadcastChannel of a process would hear
  // every other, and managers of different users must never share tokens (rule 8)
  const crossTab =
    channel !== false && (options.channel !== undefined || 'document' in globalThis)
      ? createCrossTab(channel, lock, {
          receive: (message) => adopt(message),
          changed: async () => {
            const stored = await read()
            if (stored === null) endSession('otherTab')
            else if (stored) adopt({ type: 'refreshed', tokens: stored })
          },
        })
      : undefined

  /** A message from another tab: take its tokens, or end the session with it. */
  function adopt(message: CrossTabMessage): void {
    if (message?.type === 'loggedOut') {
      endSession('otherTab')
      return
    }
    const next = message?.type === 'refreshed' ? toTokenSet(message.tokens) : null
    if (!next || next.accessToken === tokens?.accessToken) return
    // a login in another tab starts a session here too; a refresh there just hands over the tokens
    if (tokens) use(next, false)
    else switchSession(next, false)
    emit({ type: 'refreshed', tokens: next, source: 'otherTab' })
  }

  function emit(event: TokenEvent): void {
    for (const listener of [...listeners]) {
      try {
        listener(event)
      } catch (error) {
        // a throwing subscriber must not break the refresh or the other subscribers
        const report = (globalThis as { reportError?: (e: unknown) => void }).reportError
        if (report) report(error)
        else console.error(error)
      }
    }
  }

  function storageFailed(error: unknown, action: string): void {
    emit({
      type: 'storageError',
      error:
        isTokenflowError(error) && error.code === 'ERR_STORAGE'
          ? error
          : new TokenflowError('ERR_STORAGE', `token storage failed to ${action}`, { cause: error }),
    })
  }

  /** The stored tokens; `undefined` when the storage could not be read (then nothing is assumed). */
  async function read(): Promise<TokenSet | null | undefined> {
    // our own writes land first, so what we read is never older than what we wrote
    await writes
    try {
      return toTokenSet(await storage.get())
    } catch (error) {
      storageFailed(error, 'read')
      return undefined
    }
  }

  function write(action: 'set' | 'clear', value?: TokenSet): Promise<void> {
    writes = writes.then(async () => {
      try {
        await (action === 'set' ? storage.set(value!) : storage.clear())
        inSync = true
      } catch (error) {
        inSync = false
        storageFailed(error, action === 'set' ? 'save tokens' : 'clear tokens')
      }
    })
    return writes
  }

  function use(next: TokenSet | null, fresh: boolean): void {
    tokens = next
    expiresAt = lifetime = undefined
    if (!next) return
    const claims = decodeJwtClaims(next.accessToken)
    if (claims?.exp !== undefined) {
      if (fresh && claims.iat !== undefined) {
        const estimate = claims.iat * 1000 - now()
        // iat has 1 s resolution and arrives after network latency: only a clearly wrong clock is corrected
        skew = Math.abs(estimate) > 5_000 ? estimate : 0
      }
      expiresAt = claims.exp * 1000 - skew
      if (claims.iat !== undefined) lifetime = (claims.exp - claims.iat) * 1000
    } else if (next.expiresAt !== undefined) {
      expiresAt = next.expiresAt
      if (fresh) lifetime = next.expiresAt - now()
    }
  }

  function ready(): Promise<void> {
    loaded ??= (async () => {
      const started = session
      const stored = await read()
      // a setTokens() that ran while we read wins over what was stored
      if (session === started && stored) use(stored, false)
    })()
    return loaded
  }

  const needsRefresh = () =>
    expiresAt !== undefined &&
    expiresAt - Math.min(leeway, lifetime === undefined ? leeway : lifetime / 2) <= now()
  const isExpired = () => expiresAt !== undefined && expiresAt <= now()

  /** A new session (or none): settle the running refresh for its waiters and drop its result. */
  function switchSession(next: TokenSet | null, fresh: boolean, settle = true): void {
    session++
    // nothing stored can be newer than a session started or ended here
    loaded ??= Promise.resolve()
    use(next, fresh)
    if (settle)
      settlePending?.(
        next ? next.accessToken : new TokenflowError('ERR_SESSION_CLEARED', 'the session was cleared'),
      )
  }

  /** `fromRefresh`: the running refresh ends the session itself and rejects its waiters with its own error. */
  function endSession(
    reason: 'refreshRejected' | 'cleared' | 'otherTab',
    error?: RefreshError,
    fromRefresh = false,
  ): Promise<void> {
    const had = tokens !== null
    switchSession(null, false, !fromRefresh)
    const cleared = reason === 'otherTab' ? Promise.resolve() : write('clear')
    if (had) {
      // loggedOut fires once per session: the session is gone now, so a second call finds none
      if (reason !== 'otherTab') crossTab?.post({ type: 'loggedOut' })
      emit(error ? { type: 'loggedOut', reason, error } : { type: 'loggedOut', reason })
    }
    return cleared
  }

  async function withLock<T>(fn: () => Promise<T>): Promise<T> {
    if (!lock) return fn()
    let acquired = false
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(), lockTimeout)
    try {
      return await lock.request(lockName, { mode: 'exclusive', signal: controller.signal }, () => {
        acquired = true
        clearTimeout(timer)
        return fn()
      })
    } catch (error) {
      // the lock timed out (or the lock manager failed): refresh without it rather than hang
      if (!acquired) return fn()
      throw error
    } finally {
      clearTimeout(timer)
    }
  }

  function classify(error: unknown, signal: AbortSignal): RefreshError {
    if (isRefreshError(error)) return error
    if (signal.aborted) return signal.reason as RefreshError
    return new RefreshError('network', 'refresh failed: the refresh function threw', { cause: error })
  }

  /** One refresh call with its timeout, retried with backoff on transient failures. */
  async function callRefresh(refreshToken: string, started: number): Promise<TokenSet> {
    for (let attempt = 0; ; attempt++) {
      const controller = new AbortController()
      const timer = setTimeout(
        () => controller.abort(new RefreshError('timeout', `refresh timed out after ${refreshTimeout} ms`)),
        refreshTimeout,
      )
      try {
        // the race makes the timeout hold even for a refresh function that ignores its signal
        const answer = await wait(
          refreshTokens({ refreshToken, signal: controller.signal, now }),
          controller.signal,
        )
        const next = toTokenSet(answer)
        if (!next) throw new RefreshError('invalid-response', 'refresh failed: no access token in the answer')
        // undefined means "keep the current one" (servers that do not rotate)
        return {
          ...next,
          refreshToken: (answer as TokenSet).refreshToken === undefined ? refreshToken : next.refreshToken,
        }
      } catch (cause) {
        const error = classify(cause, controller.signal)
        const transient = error.kind !== 'rejected' && error.kind !== 'invalid-response'
        if (!transient || attempt >= attempts || session !== started) throw error
        const wanted = error.retryAfter !== undefined ? error.retryAfter * 1000 : baseDelay * 2 ** attempt
        const delay = Math.min(maxDelay, wanted)
        // jitter spreads the retries of many clients that failed together
        await new Promise((resolve) => setTimeout(resolve, delay / 2 + (Math.random() * delay) / 2))
      } finally {
        clearTimeout(timer)
      }
    }
  }

  /** The body of the one refresh in flight. */
  async function run(start: TokenSet): Promise<string> {
    const started = session
    let base = start
    let endedElsewhere = false
    emit({ type: 'refreshStarted' })
    let outcome: Adopted
    try {
      outcome = await withLock(async (): Promise<Adopted> => {
        // rule 7: another tab may have refreshed while we waited for the lock
        // a broadcast may have brought newer tokens than this tab's copy of storage shows yet
        const fresher = async () => (tokens && tokens.accessToken !== start.accessToken ? tokens : read())
        const stored = inSync
          ? await (crossTab ? crossTab.settle(start.refreshToken!, fresher) : read())
          : undefined
        if (session !== started) return { tokens: tokens ?? start, source: 'otherTab' }
        if (stored === null) {
          // our own clear() would have changed the session: someone else logged out
          endedElsewhere = true
          throw new RefreshError('rejected', 'refresh failed: the session ended in another tab')
        }
        if (stored && stored.accessToken !== start.accessToken) {
          if (!(stored.expiresAt !== undefined && stored.expiresAt <= now()) && !expiredJwt(stored))
            return { tokens: stored, source: 'otherTab' }
          base = stored
        }
        if (!base.refreshToken) throw new RefreshError('rejected', 'refresh failed: no refresh token')
        const next = await callRefresh(base.refreshToken, started)
        // saved under the lock, so the next tab to take it reads the rotated refresh token
        if (session === started) await write('set', next)
        if (next.refreshToken && next.refreshToken !== base.refreshToken) crossTab?.rotated(base.refreshToken)
        return { tokens: next, source: 'local' }
      })
    } catch (cause) {
      const error = isRefreshError(cause)
        ? cause
        : new RefreshError('network', 'refresh failed', { cause: cause as Error })
      if (session !== started) throw error
      if (error.kind === 'rejected' && !endedElsewhere) {
        // a rotated token refused because another tab rotated it first is not a logout (rule 7)
        const stored = inSync ? await read() : undefined
        if (stored?.refreshToken && stored.refreshToken !== base.refreshToken && session === started) {
          use(stored, false)
          emit({ type: 'refreshed', tokens: stored, source: 'otherTab' })
          return stored.accessToken
        }
      }
      const willLogout = error.kind === 'rejected' && session === started
      emit({ type: 'refreshFailed', error, willLogout })
      if (willLogout) await endSession(endedElsewhere ? 'otherTab' : 'refreshRejected', error, true)
      throw error
    }
    if (session !== started) {
      if (tokens) return tokens.accessToken
      throw new TokenflowError('ERR_SESSION_CLEARED', 'the session was cleared during the refresh')
    }
    use(outcome.tokens, outcome.source === 'local')
    if (outcome.source === 'local') crossTab?.post({ type: 'refreshed', tokens: outcome.tokens })
    emit({ type: 'refreshed', tokens: outcome.tokens, source: outcome.source })
    return outcome.tokens.accessToken
  }

  function expiredJwt(set: TokenSet): boolean {
    const exp = decodeJwtClaims(set.accessToken)?.exp
    return exp !== undefined && exp * 1000 - skew <= now()
  }

  function startRefresh(start: TokenSet): Promise<string> {
    const current = new Promise<string>((resolve, reject) => {
      settlePending = (value) => (typeof value === 'string' ? resolve(value) : reject(value))
      run(start).then(resolve, reject)
    }).finally(() => {
      if (pending === current) {
        pending = undefined
        settlePending = undefined
      }
    })
    // waiters that aborted stopped listening; the shared promise must still never be an unhandled rejection
    current.catch(() => {})
    pending = current
    return current
  }

  const manager: TokenManager = {
    async getAccessToken({ signal } = {}) {
      signal?.throwIfAborted()
      await wait(ready(), signal)
      if (pending) return wait(pending, signal)
      const current = tokens
      if (!current) return null
      if (!needsRefresh()) return current.accessToken
      // rule 3: refresh before use; without a refresh token an expired token is not sent
      if (!current.refreshToken) return isExpired() ? null : current.accessToken
      try {
        return await wait(startRefresh(current), signal)
      } catch (error) {
        // a transient failure while the token is still valid: use it, the next read tries again
        if (
          !signal?.aborted &&
          isRefreshError(error) &&
          error.kind !== 'rejected' &&
          tokens === current &&
          !isExpired()
        )
          return current.accessToken
        throw error
      }
    },

    async refresh({ rejectedToken, signal } = {}) {
      signal?.throwIfAborted()
      await wait(ready(), signal)
      if (!pending) {
        const current = tokens
        if (!current) throw new TokenflowError('ERR_NO_REFRESH_TOKEN', 'no session to refresh')
        // rule 2: a 401 for a token that is no longer current is retried with the current one
        if (rejectedToken && rejectedToken !== current.accessToken) return current.accessToken
        if (!current.refreshToken)
          throw new TokenflowError('ERR_NO_REFRESH_TOKEN', 'the session has no refresh token')
        startRefresh(current)
      }
      return wait(pending!, signal)
    },

    async setTokens(next) {
      const valid = toTokenSet(next)
      if (!valid) fail('"tokens.accessToken" must be a non-empty string')
      switchSession(valid, true)
      crossTab?.post({ type: 'refreshed', tokens: valid! })
      await write('set', valid!)
    },

    async clear() {
      await ready()
      await endSession('cleared')
    },

    subscribe(listener) {
      if (typeof listener !== 'function') fail('"listener" must be a function')
      listeners.add(listener)
      return () => {
        listeners.delete(listener)
      }
    },

    get status(): TokenStatus {
      return pending ? 'refreshing' : tokens ? 'authenticated' : 'unauthenticated'
    },
  }
  return manager
}
