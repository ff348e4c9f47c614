import { type CrossTabMessage, createCrossTab } from './cross-tab.js'
import {
  invalidOption,
  isRefreshError,
  isTokenflowError,
  kindOfStatus,
  RefreshError,
  TokenflowError,
} from './errors.js'
import { decodeJwtClaims } from './jwt.js'
import { memoryStorage, storageError, toTokenSet } from './storage.js'
import {
  type LockManagerLike,
  type RefreshFunction,
  STORAGE_KEY,
  type TokenSet,
  type TokenStorage,
} from './types.js'

/** What a manager tells its subscribers. One union of `{ type }` objects. */
export type TokenEvent =
  | { type: 'refreshStarted' }
  | { type: 'refreshed'; tokens: TokenSet; source: 'local' | 'otherTab' }
  /** `willLogout`: the session ends next, unless a listener of this event starts another one (`setTokens`) */
  | { type: 'refreshFailed'; error: RefreshError; willLogout: boolean }
  | { type: 'loggedOut'; reason: 'refreshRejected' | 'cleared' | 'otherTab'; error?: RefreshError }
  /** the storage threw, or did not answer within `refreshTimeout`; the tokens are still held in memory, so no request is lost */
  | { type: 'storageError'; error: TokenflowError }

/**
 * `TokenManager.status`: `'refreshing'` while a refresh is under way; `'authenticated'` with tokens that can be
 * used or refreshed; `'unauthenticated'` without any, or with an expired access token and no refresh token.
 */
export type TokenStatus = 'unauthenticated' | 'authenticated' | 'refreshing'

/** Retries of transient refresh failures (network, timeout, any status but 400, 401 and 403: 5xx, 429, …). */
export interface RetryOptions {
  /** retries after the first try @default 2 */
  attempts?: number | undefined
  /** ms before the first retry; doubles each time @default 300 */
  baseDelay?: number | undefined
  /** ms, the most one wait may last (also caps `Retry-After`) @default 5_000 */
  maxDelay?: number | undefined
}

/**
 * Options of `createTokenManager`. Durations are in ms.
 * @example
 * createTokenManager({ refresh: jsonRefresh('/refresh/token'), storage: webStorage(), retry: { attempts: 3 } })
 */
export interface TokenManagerOptions {
  /** exchanges a refresh token for new tokens, e.g. `jsonRefresh('/refresh/token')` */
  refresh: RefreshFunction
  /** where tokens are kept @default memoryStorage() */
  storage?: TokenStorage | undefined
  /** ms before `exp` at which `getAccessToken()` refreshes first; capped at half the token's lifetime @default 30_000 */
  leeway?: number | undefined
  /** ms one refresh attempt, one storage write, or a refresh's read of storage may take before it fails (kind 'timeout', or ERR_STORAGE) @default 10_000 */
  refreshTimeout?: number | undefined
  /** retries of transient failures, or `false` for none @default { attempts: 2, baseDelay: 300, maxDelay: 5_000 } */
  retry?: RetryOptions | false | undefined
  /**
   * cross-tab lock (Web Locks shape), or `false`
   * @default globalThis.navigator?.locks in a page or a worker; `false` elsewhere (Node, SSR), where one
   *   process-wide lock would make every user's refresh wait for every other's
   */
  lock?: LockManagerLike | false | undefined
  /**
   * ms to wait for the lock; after it, wait as long again for a fallback lock that the tabs which gave up
   * take in turn, then refresh without a lock instead of hanging (at most 2 × lockTimeout before the first attempt,
   * and lockTimeout more before each retry) @default 10_000
   */
  lockTimeout?: number | undefined
  /**
   * BroadcastChannel name for cross-tab events, or `false`. Unless you set it, the manager talks to other
   * tabs only when its storage is shared (`webStorage()` over localStorage) in a page. A manager with a
   * channel listens to it for the life of the page: create one per page, not one per render. The lock is
   * named after it too. Two managers of one origin that hold different sessions need different names: the
   * default is named after `webStorage`'s `key` (`webStorage(localStorage, { key: 'api-b' })` talks on
   * `tokenflow:api-b`); give two managers of other storages, or of one key, two names of your own
   * @default 'tokenflow' (for the default key)
   */
  channel?: string | false | undefined
  /** clock in epoch ms @default Date.now */
  now?: (() => number) | undefined
}

/** Holds one user's tokens and refreshes them exactly once at a time. */
export interface TokenManager {
  /** a fresh access token (refreshing first when it is about to expire), or null when logged out */
  getAccessToken(options?: { signal?: AbortSignal | undefined }): Promise<string | null>
  /**
   * Refresh, or join the refresh that is running. With `rejectedToken` (the token a 401 came back for),
   * an earlier token of this session resolves with the current one and does not refresh. A 401 for the
   * token of a session that a refused refresh ended rejects with that refresh's `RefreshError`; one for the
   * token of a session that a login or a logout ended, once a new session started, with `ERR_SESSION_CLEARED`.
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
  /** where the session stands now; see `TokenStatus` */
  readonly status: TokenStatus
}

type LogoutReason = 'refreshRejected' | 'cleared' | 'otherTab'

/** Reject with the signal's reason as soon as it aborts; the promise itself goes on. */
function wait<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  return signal
    ? new Promise<T>((resolve, reject) => {
        // React Native's AbortSignal (the abort-controller polyfill) has no reason: an AbortError, as fetch has there
        const onAbort = () =>
          reject(signal.reason ?? Object.assign(new Error('Aborted'), { name: 'AbortError' }))
        if (signal.aborted) onAbort()
        // axios passes its GenericAbortSignal on as it is: there the listener methods are optional
        signal.addEventListener?.('abort', onAbort)
        // a refresh function written in plain JS may answer the tokens themselves, or a thenable
        Promise.resolve(promise)
          .then(resolve, reject)
          .finally(() => signal.removeEventListener?.('abort', onAbort))
      })
    : promise
}

/** The parts of an HTTP client's error (axios, ky, ofetch) that say how the server answered. */
interface HttpClientError {
  status?: unknown
  data?: { error?: unknown }
  response?: { status?: unknown; data?: { error?: unknown } }
}

/**
 * What a refresh failed with: a `RefreshError` as it is; an HTTP client's error for an answer of status 400 or
 * more (a refresh function written with axios, ky or ofetch) by that status, as `jsonRefresh` classifies it;
 * anything else as kind 'network'. Each keeps its cause.
 */
function toRefreshError(cause: unknown): RefreshError {
  if (isRefreshError(cause)) return cause
  const { response, status = response?.status, data = response?.data } = (cause ?? {}) as HttpClientError
  return typeof status === 'number' && status >= 400
    ? new RefreshError(kindOfStatus(status, data?.error), `refresh failed: answered ${status}`, {
        cause,
        status,
      })
    : new RefreshError('network', 'refresh failed', { cause })
}

const sessionCleared = () => new TokenflowError('ERR_SESSION_CLEARED', 'the session was cleared')

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
  const {
    refresh: refreshTokens,
    storage = memoryStorage(),
    leeway = 30_000,
    refreshTimeout = 10_000,
    retry = {},
    // only in a page or a worker: on a server (Node has navigator.locks since 24.5) one process-wide lock
    // would make every user's refresh wait for every other's (rule 8)
    lock = (('document' in globalThis || 'WorkerGlobalScope' in globalThis) &&
      (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator?.locks) ||
      false,
    lockTimeout = 10_000,
    channel,
    now = Date.now,
  } = options ?? invalidOption('options', 'an object')
  const { attempts = 2, baseDelay = 300, maxDelay = 5_000 } = retry || { attempts: 0 }
  const check = (ok: unknown, name: string, what: string) => ok || invalidOption(name, what)
  const isFunction = (value: unknown) => typeof value === 'function'
  check(isFunction(refreshTokens), 'refresh', 'a function')
  check(
    ['get', 'set', 'clear'].every((method) => isFunction((storage as never)?.[method])),
    'storage',
    'a TokenStorage',
  )
  check(!lock || isFunction(lock.request), 'lock', 'a LockManager or false')
  check(isFunction(now), 'now', 'a function')
  check(
    channel === undefined || channel === false || (typeof channel === 'string' && channel),
    'channel',
    'a name or false',
  )
  check(Number.isInteger(attempts) && attempts >= 0, 'retry.attempts', 'a whole number')
  check(typeof leeway === 'number' && leeway >= 0 && leeway < 1 / 0, 'leeway', 'milliseconds')
  const durations = {
    refreshTimeout,
    lockTimeout,
    'retry.baseDelay': baseDelay,
    'retry.maxDelay': maxDelay,
  }
  // setTimeout fires at once past 2^31 - 1 ms (24.8 days): a lock timeout there would end the cross-tab exclusion
  for (const [name, ms] of Object.entries(durations))
    check(typeof ms === 'number' && ms >= 0 && ms < 2 ** 31, name, 'milliseconds, below 2^31')

  const listeners = new Set<(event: TokenEvent) => void>()
  let tokens: TokenSet | null = null
  /** local-clock epoch ms at which the access token expires, and its lifetime in ms (caps the leeway) */
  let expiresAt: number | undefined
  let lifetime: number | undefined
  /** server clock minus local clock, corrected only when it is clearly off (iat has 1 s resolution) */
  let skew = 0
  /** bumps whenever the session changes (login, logout, clear): results of an older session are dropped */
  let session = 0
  let loaded: Promise<void> | undefined
  let pending: Promise<string> | undefined
  let settlePending: ((result: string | Error) => void) | undefined
  /** the run whose refresh is under way (`status` 'refreshing'): unset before it announces its outcome */
  let refreshing: object | undefined
  /** a refresh that a 401 for the current token joined: the token is refused, not merely about to expire */
  let refused: Promise<string> | undefined
  /**
   * The access token of the session a refused refresh ended, and that refresh's error: a 401 for that token
   * that comes back after the logout fails with the same error as the requests that waited.
   */
  let ended: { accessToken: string; error: RefreshError } | undefined
  /**
   * Tokens another tab sent, held in memory only: this tab never wrote them. With storage of each tab's own
   * (cookie mode) that storage may still hold this tab's logout, which then says nothing about them.
   */
  let adopted: TokenSet | undefined
  /** calls off the refresh attempt in flight, when its session is replaced */
  let abortAttempt: (() => void) | undefined
  /** storage writes run one after another, in call order */
  let writes: Promise<unknown> = Promise.resolve()
  /** false after a write failed: until one succeeds, storage is older than memory and is not trusted */
  let inSync = true
  /** the storage threw on the latest write: a call from this time on (epoch ms) writes it again; 0 for none */
  let rewriteAt = 0
  /**
   * Refresh tokens known to be rotated already, by this manager or by a tab that said so: tokens that carry
   * one are behind (a late broadcast, a lagging copy of storage) and are never taken or refreshed with.
   */
  const spent = new Map<string, string | undefined>()
  /** `next`: the access token the rotation gave, when this tab made it */
  const spend = (refreshToken: string | null | undefined, next?: string) => {
    if (!refreshToken) return
    spent.set(refreshToken, next)
    // bounded: a message or a storage copy more than 16 rotations behind is not expected (README, "Several tabs")
    if (spent.size > 16) spent.delete(spent.keys().next().value!)
  }
  const isSpent = (set: TokenSet | null | undefined) => !!set?.refreshToken && spent.has(set.refreshToken)
  /** the access tokens of this session so far: a 401 for any other one came from a session that has ended */
  let sent: string[] = []

  // by default only a page whose storage other tabs share talks to them: in Node (SSR) every BroadcastChannel
  // of a process hears every other, and managers of different users must never share tokens (rule 8)
  const talk = channel !== false && !!(channel || (storage.shared && 'document' in globalThis))
  // the channel's name, and the lock's: tokens kept under another webStorage key are another session
  const noted = (storage as { [STORAGE_KEY]?: unknown })[STORAGE_KEY]
  const storageKey = typeof noted === 'string' ? noted : undefined
  const name = channel || (storageKey && storageKey !== 'tokenflow' ? `tokenflow:${storageKey}` : 'tokenflow')
  // storage of this tab's own (sessionStorage, memory): a rotation signal that outlasts the wait for storage
  // to catch up means a copy of this session elsewhere (a duplicated tab) rotated the token
  const copied = storage.shared
    ? undefined
    : () => {
        throw new RefreshError('rejected', 'refresh failed: a copy of this session in another tab rotated it')
      }
  // the rotation signal (rule 7) comes with the lock, talking or not
  const crossTab =
    talk || lock
      ? createCrossTab(
          name,
          talk,
          lock,
          // a stale message comes from a session older than this tab's (two logins in two tabs at once must not
          // swap their sessions, a refused refresh of an old session must not end the login that replaced it)
          (message, stale, unknown) => adopt(message, true, stale, unknown),
          async () => {
            const stored = await read()
            if (stored !== undefined)
              adopt(stored ? { type: 'refreshed', tokens: stored } : { type: 'loggedOut' })
          },
          now,
          storageKey,
        )
      : undefined

  function emit(event: TokenEvent): void {
    for (const listener of [...listeners]) {
      // one removed by an earlier listener of this same event no longer hears it
      if (!listeners.has(listener)) continue
      try {
        listener(event)
      } catch (error) {
        // a throwing subscriber must not break the refresh or the other subscribers
        ;((globalThis as { reportError?: (e: unknown) => void }).reportError ?? console.error)(error)
      }
    }
  }

  /** The storage failed: tell the subscribers, and answer the error. */
  function failed(cause: unknown): TokenflowError {
    const error = storageError(cause)
    emit({ type: 'storageError', error })
    return error
  }

  /** the error of the latest storage call that did not answer in time (a storage's own error is never it) */
  let timedOut: Error | undefined
  /**
   * A storage call. One that has not answered within `refreshTimeout` fails as if the storage had thrown, so a
   * storage that hangs holds no refresh, login or logout for longer; `late` runs if it answers after that.
   */
  function bounded<T>(call: () => T | Promise<T>, late?: (ok: boolean) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let over = false
      const settle = (ok: boolean, value: unknown) => {
        if (over) return late?.(ok)
        over = true
        clearTimeout(timer)
        ok ? resolve(value as T) : reject(value)
      }
      const timer = setTimeout(() => {
        timedOut = new Error(`the storage did not answer within ${refreshTimeout} ms`)
        settle(false, timedOut)
      }, refreshTimeout)
      new Promise<T>((answer) => answer(call())).then(
        (value) => settle(true, value),
        (error) => settle(false, error),
      )
    })
  }

  /**
   * The stored tokens; `undefined` when storage could not be read or is not trusted (then nothing is assumed).
   * `refreshing`: a read a refresh makes (under the lock, and after a refusal), bounded as writes are. One that
   * has not answered in time fails the refresh (kind 'timeout', the session is kept): what other tabs did is not
   * known, and the tokens in memory may have been rotated there. Other reads wait: the first one at start (a
   * caller can pass a signal), the storage event's
   */
  async function read(refreshing?: boolean): Promise<TokenSet | null | undefined> {
    // our own writes land first, so what we read is never older than what we wrote
    await writes
    try {
      return inSync
        ? toTokenSet(await (refreshing ? bounded(() => storage.get()) : storage.get()))
        : undefined
    } catch (cause) {
      failed(cause)
      // bounded's own error; one the storage threw is read as "not known"
      if (cause === timedOut)
        throw new RefreshError('timeout', 'refresh failed: the storage did not answer in time')
    }
  }

  /** calls of write(), to tell whether a write that answered late was overtaken by a later one */
  let queued = 0
  /**
   * What storage should hold, as far as this tab knows: what it last gave write(), or, in shared storage, what
   * another tab wrote since (the logout, login or refresh it told of, which this tab followed)
   */
  let expected: TokenSet | null = null
  /** `expected` came from another tab since this tab's last write */
  let told = false
  const expectStored = (value: TokenSet | null) => {
    if (storage.shared !== false) {
      expected = value
      told = true
    }
  }
  /**
   * A write answered after its time was up. Storage now holds `value`, unless it failed; any other value than
   * the expected one is written again, and storage is not trusted until that write succeeds.
   */
  function landedLate(ok: boolean, mine: number, value: TokenSet | null): void {
    if (!ok) return
    if (expected?.accessToken === value?.accessToken) inSync ||= mine === queued
    else {
      inSync = false
      write(expected)
    }
  }
  /** Queues a write; it answers the storage's error when it failed (the tokens stay in memory either way). */
  function write(value: TokenSet | null): Promise<TokenflowError | undefined> {
    const mine = ++queued
    expected = value
    told = false
    const done = writes.then(async () => {
      try {
        await bounded(
          () => (value ? storage.set(value) : storage.clear()),
          (ok) => landedLate(ok, mine, value),
        )
        inSync = true
        rewriteAt = 0
      } catch (cause) {
        inSync = false
        // Not after a timeout: a storage that hangs would hold the reads queued behind each new try. Not in
        // storage other tabs write: outside the lock this tab's tokens may be older than theirs, or than their
        // logout. A second later: a storageError listener that makes a request would otherwise write, fail
        // and hear of it again without end
        rewriteAt = cause !== timedOut && (!crossTab || storage.shared === false) ? now() + 1000 : 0
        return failed(cause)
      }
    })
    writes = done
    return done
  }

  /**
   * When the access token expires on the local clock, and its lifetime (caps the leeway). Both the JWT's
   * `exp` (corrected by the clock skew) and the token set's `expiresAt` count: the earlier one wins.
   * `receivedAt`: when the tokens arrived, to measure the skew and the lifetime; `fresh`: straight from a
   * refresh, so their `iat` is now on the server's clock.
   */
  function expiryOf(
    set: TokenSet,
    receivedAt?: number,
    fresh?: boolean,
  ): [number | undefined, number | undefined] {
    const { exp, iat } = decodeJwtClaims(set.accessToken) ?? {}
    if (receivedAt !== undefined && iat !== undefined) {
      // measured when the answer arrived: a slow storage write after it must not look like clock skew.
      // Tokens handed to setTokens may be old, and an old token must not look valid for longer: there only an
      // iat in our future (a server clock ahead of ours) counts
      const estimate = iat * 1000 - receivedAt
      skew = estimate > 5_000 || (fresh && estimate < -5_000) ? estimate : 0
    } else if (fresh && exp !== undefined) {
      // Without iat, only a fresh token that arrives expired shows a clock far ahead (which would find every
      // new token expired, and refresh again at every read): measured against its expiresAt (expires_in, on
      // this clock). Any other gap between the two (an expires_in shorter or longer than the JWT's life) is
      // no skew. A skew kept from before is dropped when the two agree (the clock was corrected meanwhile);
      // not when the token merely looks short-lived under it: the clock may still be off by some of it, and
      // a token sent past its exp is worse than an early refresh
      const ms = exp * 1000
      const gap = set.expiresAt ? ms - set.expiresAt : 0
      if (ms <= receivedAt!) {
        // (not when the skew already known explains it: the token is not expired under that one)
        if (gap < -5_000 && ms - skew <= receivedAt!) skew = gap
      } else if (set.expiresAt && gap * gap <= 25e6) skew = 0
    }
    const fromJwt = exp === undefined ? undefined : exp * 1000 - skew
    const at = Math.min(fromJwt ?? 1 / 0, set.expiresAt ?? 1 / 0)
    if (at === 1 / 0) return [undefined, undefined]
    const from = iat === undefined ? receivedAt : iat * 1000 - skew
    return [at, from === undefined ? undefined : Math.max(0, at - from)]
  }

  /** `receivedAt`: when tokens arrived from a login or a refresh; `fresh`: from a refresh (measures clock skew) */
  function use(next: TokenSet | null, receivedAt?: number, fresh?: boolean): void {
    tokens = next
    if (next) {
      sent.push(next.accessToken)
      // bounded: a request in flight across more than 16 refreshes is not expected
      if (sent.length > 16) sent.shift()
    }
    ;[expiresAt, lifetime] = next ? expiryOf(next, receivedAt, fresh) : []
  }

  /** ends the wait for the stored tokens when a session starts first: it wins over what is stored */
  let loadDone: (() => void) | undefined
  /** the session number when the first read of storage began; unset when no read is under way */
  let readFrom: number | undefined
  /**
   * when a clear() that did not wait for that read was called, with no session started since: a session the
   * read brings was logged out then, and the other tabs hear of it dated so (a login after it is newer)
   */
  let clearedUnread: number | undefined
  const ready = () =>
    (loaded ??= new Promise<void>((resolve) => {
      loadDone = resolve
      readFrom = session
      read().then((stored) => {
        readFrom = undefined
        // a session started while we read wins over what was stored
        if (!session) {
          if (stored) use(stored)
          // the storage threw (this early, no write of ours can have failed): the next call reads again
          else if (stored === undefined) loaded = undefined
        } else if (stored && clearedUnread !== undefined) loggedOut('cleared', undefined, clearedUnread)
        resolve()
      })
    }))

  /** while a refused refresh tells its refreshFailed listeners: ends the refused session (if still current) */
  let refusing: (() => Promise<TokenflowError | undefined> | undefined) | undefined
  /** calls of clear(): one made while a request waited for the stored tokens ends that request's wait too */
  let clears = 0
  /** Waits for the stored tokens; rejects when clear() was called meanwhile (those tokens are being forgotten). */
  const loadedFor = async (signal: AbortSignal | undefined) => {
    const before = clears
    await wait(ready(), signal)
    if (clears !== before) throw sessionCleared()
    // a write the storage refused is made again at a later call, or a start after it would read what
    // storage held before: the previous user, a rotated refresh token (the server sees reuse)
    // a clock set back more than a second before the refusal must not put the next try off by as much
    if (rewriteAt && (now() >= rewriteAt || now() < rewriteAt - 2000)) {
      rewriteAt = 0
      write(expected)
    }
  }

  const isExpired = (at = expiresAt, margin = 0) => at !== undefined && at - margin <= now()
  // the leeway is capped at half the lifetime, or a short-lived token would always be "about to expire"
  const needsRefresh = () => isExpired(expiresAt, Math.min(leeway, (lifetime ?? 1 / 0) / 2))

  /** A new session (or none): the running refresh's waiters get ERR_SESSION_CLEARED; its result is dropped. */
  function switchSession(next: TokenSet | null, receivedAt?: number, settle = true): void {
    session++
    // what storage held before this session does not matter any more: no (further) read for it, and no
    // request waits for one still under way
    loaded ??= Promise.resolve()
    loadDone?.()
    abortAttempt?.()
    refreshing = undefined
    // a new session: the old error is let go
    if (next) ended = clearedUnread = undefined
    sent = []
    use(next, receivedAt)
    // the old session's requests are never sent with another session's token (another user's, maybe)
    if (settle) settlePending?.(sessionCleared())
  }

  /** `fromRefresh`: the failing refresh rejects its own waiters, with its own error. */
  function endSession(
    reason: LogoutReason,
    error?: RefreshError,
    fromRefresh?: boolean,
  ): Promise<TokenflowError | undefined> {
    const had = tokens
    // a clear() after the logout (no session left) keeps what the refused refresh ended
    if (had) ended = error && { accessToken: had.accessToken, error }
    switchSession(null, undefined, !fromRefresh)
    // another tab cleared shared storage already; storage of this tab's own still holds the session
    const elsewhere = reason === 'otherTab' && storage.shared !== false
    if (elsewhere) expectStored(null)
    const cleared = elsewhere ? writes.then(() => undefined) : write(null)
    // loggedOut fires once per session: the session is gone now, so a second call finds none
    if (had) loggedOut(reason, error)
    return cleared
  }

  function loggedOut(reason: LogoutReason, error?: RefreshError, at?: number): void {
    // only a logout the other tabs hear of orders their earlier messages before it; a refused refresh ended
    // an old session, and a login another tab sent meanwhile is newer
    if (reason !== 'otherTab') crossTab?.post({ type: 'loggedOut' }, reason === 'cleared', at)
    emit(error ? { type: 'loggedOut', reason, error } : { type: 'loggedOut', reason })
  }

  /**
   * A message from another tab (`broadcast`), or what it left in storage: take its tokens, or end the session with
   * it. `unknown`: its sender read its session from storage, and this tab knows where its own comes from
   */
  function adopt(message: CrossTabMessage, broadcast?: boolean, stale?: boolean, unknown?: boolean): void {
    if (message?.type === 'loggedOut') {
      if (!stale) void endSession('otherTab')
      return
    }
    const next = message?.type === 'refreshed' && toTokenSet(message.tokens)
    if (next && typeof message.spent === 'string') spend(message.spent)
    // a login this tab took from storage first (as a refresh, under the lock, and maybe refreshed since): from
    // its message on, a 401 for a token of the session before it is not retried as this one
    if (next && message.login && !stale) {
      const at = sent.indexOf(next.accessToken)
      // or the token this tab's refresh of that login gave ('' is no token)
      const from = at < 0 ? sent.indexOf(spent.get(next.refreshToken ?? '') ?? '') : at
      if (from >= 0) sent = sent.slice(from)
    }
    if (!next || next.accessToken === tokens?.accessToken) return
    // a rotation by a tab that read its session from storage is one of this tab's session, or of one that ended:
    // a logout here (or heard of here) crossed it, or a login here replaced it. It never starts one. (A refresh
    // that rotates nothing, cookie mode's, still brings a session: a page that restored one from the cookie)
    if (
      stale ||
      isSpent(next) ||
      (unknown &&
        !message.login &&
        typeof message.spent === 'string' &&
        message.spent !== tokens?.refreshToken)
    )
      return
    // a login in another tab starts a session here, and a refresh of the old one is called off (its result
    // must not come back over the login); a refresh there hands over its tokens
    expectStored(next)
    if (tokens && !message.login) use(next)
    else switchSession(next)
    // tokens from storage are in storage: only a broadcast's may be in this tab's memory alone
    adopted = broadcast ? next : undefined
    // listeners get copies: one that changes its event cannot change the manager's tokens
    emit({ type: 'refreshed', tokens: { ...next }, source: 'otherTab' })
  }

  /** Runs `fn` under the named lock; `fn` learns which lock it holds (none: no lock, or every one timed out). */
  async function withLock<T>(
    fn: (held: string | undefined) => Promise<T>,
    lockName = `${name}:refresh`,
    cancel?: AbortSignal,
  ): Promise<T> {
    if (!lock) return fn(undefined)
    if (cancel?.aborted) throw sessionCleared()
    let acquired = false
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(), lockTimeout)
    // the session this wait is for was replaced: stop waiting at once (the lock this tab holds goes free)
    cancel?.addEventListener('abort', () => controller.abort(), { once: true })
    try {
      return await lock.request(lockName, { signal: controller.signal }, () => {
        acquired = true
        clearTimeout(timer)
        return fn(lockName)
      })
    } catch (error) {
      if (acquired) throw error
      if (cancel?.aborted) throw sessionCleared()
      // the holder is stuck (a hung refresh, a frozen tab): the tabs that gave up take turns under a second
      // lock, or they would all refresh with the same token at once; after that one, go without a lock
      return lockName.endsWith(':fallback') ? fn(undefined) : withLock(fn, `${lockName}:fallback`, cancel)
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * One refresh call with its timeout, retried with backoff on transient failures. A retry waits for its
   * `turn` and then first asks `recheck` what other tabs did meanwhile: their newer tokens are taken as they
   * are (no call), or, when those expired too, refreshed instead of the token this refresh started from.
   * `base` reads and moves the tokens the refresh starts from. Answers the tokens, and whether they are new
   * from this call.
   */
  async function callRefresh(
    base: (next?: TokenSet) => TokenSet,
    started: number,
    turn: <T>(attempt: number, signal: AbortSignal, fn: () => Promise<T>) => Promise<T>,
    recheck: (current: TokenSet) => Promise<TokenSet | undefined>,
  ): Promise<[TokenSet, boolean]> {
    for (let attempt = 0; ; attempt++) {
      // a session replaced during the backoff gets no further attempt
      if (session !== started) throw sessionCleared()
      const controller = new AbortController()
      // ends the attempt, or its backoff: a cleared session keeps no timer (Node would wait it out to exit)
      let wake: (() => void) | undefined
      const abort = () => {
        controller.abort(sessionCleared())
        wake?.()
      }
      abortAttempt = abort
      let timer: ReturnType<typeof setTimeout> | undefined
      // kept here too: React Native's AbortController (the abort-controller polyfill) drops the abort reason
      let timedOut: RefreshError | undefined
      try {
        return await turn(attempt, controller.signal, async (): Promise<[TokenSet, boolean]> => {
          if (session !== started) throw sessionCleared()
          if (attempt) {
            const other = await recheck(base())
            if (other && !isExpired(expiryOf(other)[0])) return [other, false]
            if (other?.refreshToken) base(other)
            // the session may have been replaced while this looked
            if (session !== started) throw sessionCleared()
          }
          const refreshToken = base().refreshToken!
          timer = setTimeout(() => {
            timedOut = new RefreshError('timeout', 'refresh failed: timed out')
            controller.abort(timedOut)
          }, refreshTimeout)
          // the race makes the timeout hold even for a refresh function that ignores its signal
          const answer = await wait(
            refreshTokens({ refreshToken, signal: controller.signal, now }),
            controller.signal,
          )
          const next = toTokenSet(answer)
          if (!next)
            throw new RefreshError('invalid-response', 'refresh failed: answered without a valid token')
          // undefined means "keep the current one" (servers that do not rotate)
          if (answer.refreshToken === undefined) next.refreshToken = refreshToken
          return [next, true]
        })
      } catch (cause) {
        clearTimeout(timer)
        const error = toRefreshError(timedOut ?? cause)
        if (/rejected|invalid/.test(error.kind) || attempt >= attempts || session !== started) throw error
        const delay = Math.min(maxDelay, baseDelay * 2 ** attempt)
        // jitter spreads the retries of many clients that failed together; a Retry-After is waited in full
        await new Promise<void>((resolve) => {
          const backoff = setTimeout(
            resolve,
            error.retryAfter
              ? Math.min(maxDelay, error.retryAfter * 1000)
              : delay / 2 + (Math.random() * delay) / 2,
          )
          wake = () => {
            clearTimeout(backoff)
            resolve()
          }
        })
      } finally {
        clearTimeout(timer)
        // this runs after the backoff: by then a newer session's refresh may have its own attempt in flight
        if (abortAttempt === abort) abortAttempt = undefined
      }
    }
  }

  /** The body of the one refresh in flight. */
  async function run(start: TokenSet): Promise<string> {
    const started = session
    let base = start
    let endedElsewhere = false
    let receivedAt: number | undefined
    const me = {}
    // status is 'refreshing' from refreshStarted on, and no longer when the outcome is announced
    const done = () => {
      if (refreshing === me) refreshing = undefined
    }
    // a session replaced while this waits for the lock (a refreshStarted listener's clear() included) stops
    // the wait, and its timer, at once
    const waiting = new AbortController()
    abortAttempt = () => waiting.abort()
    refreshing = me
    emit({ type: 'refreshStarted' })
    let next: TokenSet
    try {
      next = await withLock(
        async (held) => {
          // rule 7: another tab may have refreshed while we waited for the lock; a broadcast may have
          // brought newer tokens than this tab's copy of storage shows yet
          const fresher = async () => {
            const stored = await read(true)
            // storage is the truth, unless it is known to be behind what a broadcast brought: it holds a spent
            // refresh token, or a broadcast brought a new access token while the refresh token, in storage and
            // in memory, is still the one this refresh started from (cookie mode: each tab's memory is its own
            // and a broadcast updates only memory; the placeholder never rotates, so taking the broadcast's
            // tokens can never send a spent refresh token); or it is this tab's own and the tokens came from a
            // broadcast: it holds only what this tab wrote before (its logout, its own earlier login), and a login
            // or a refresh in another tab reached this one in memory only (two frames of one tab that share
            // sessionStorage: the rotation signal makes one wait for the other's message). Storage that holds
            // nothing and is shared (localStorage), or may be (a storage that does not say), means another tab
            // logged out: the tokens in memory may have been rotated there since
            return tokens &&
              !isSpent(tokens) &&
              (isSpent(stored) ||
                (tokens === adopted && storage.shared === false) ||
                (tokens.refreshToken === start.refreshToken &&
                  stored?.refreshToken === start.refreshToken &&
                  tokens.accessToken !== start.accessToken))
              ? tokens
              : stored
          }
          // a tab that gave up waiting (behind an earlier holder) may be refreshing under the fallback lock right
          // now: let it finish first, so the check below sees its rotation instead of sending the same token
          const query = lock ? lock.query : undefined
          if (held && !held.endsWith(':fallback') && query) {
            const { held: locks = [] } = await query.call(lock).catch(() => ({ held: [] }))
            if (locks.some((other) => other.name === `${held}:fallback`))
              await withLock(async () => {}, `${held}:fallback`)
          }
          const stored = await (crossTab ? crossTab.settle(fresher, copied) : read(true))
          // a replaced session's result is dropped anyway: make no call for it
          if (session !== started) return start
          if (stored === null) {
            // our own clear() would have changed the session: someone else logged out
            endedElsewhere = true
            throw new RefreshError('rejected', 'refresh failed: the session ended in another tab')
          }
          if (stored && stored.accessToken !== start.accessToken) {
            if (!isExpired(expiryOf(stored)[0])) return stored
            if (!stored.refreshToken) {
              // another tab's login replaced this session, and it cannot be refreshed: take it, with no token to give
              adopt({ type: 'refreshed', tokens: stored })
              throw sessionCleared()
            }
            base = stored
          }
          // a tab that waited longer than lockTimeout refreshes under the fallback lock: a retry from here takes
          // that lock too, and first sees what such a tab did, so the two never send one refresh token at once.
          // (Not the first attempt: a holder that hangs must leave the fallback lock to the tabs that gave up)
          const turn = <T>(attempt: number, signal: AbortSignal, fn: () => Promise<T>) =>
            attempt && held && !held.endsWith(':fallback') ? withLock(fn, `${held}:fallback`, signal) : fn()
          const recheck = async (current: TokenSet) => {
            const latest = await (crossTab ? crossTab.settle(fresher, copied) : read(true))
            if (latest?.refreshToken && latest.refreshToken !== current.refreshToken && !isSpent(latest))
              return latest
          }
          const [refreshed, fresh] = await callRefresh(
            (moved) => {
              if (moved) base = moved
              return base
            },
            started,
            turn,
            recheck,
          )
          // another tab refreshed meanwhile: its tokens are taken below, nothing is written or announced
          if (!fresh) return refreshed
          // an answer that comes after other tabs rotated past it (this tab froze with its call out, and one that
          // gave up on the lock refreshed twice meanwhile): its refresh token is spent, and what this tab took
          // from them since is newer. Written or used, it would be sent again: reuse, which ends every tab's session
          if (isSpent(refreshed) && tokens && !isSpent(tokens)) return tokens
          receivedAt = now()
          if (refreshed.refreshToken !== base.refreshToken) spend(base.refreshToken, refreshed.accessToken)
          // saved under the lock, so the next tab to take it reads the rotated refresh token
          if (session === started) {
            await write(refreshed)
            // told under the lock too, so the message is on its way before the next tab can take the lock: a tab
            // whose storage is its own (cookie mode) learns of this refresh only from it. Not when a logout or a
            // login came while the write ran: the message would take the other tabs back to this session
            if (session === started)
              crossTab?.post(
                refreshed.refreshToken === base.refreshToken
                  ? { type: 'refreshed', tokens: refreshed }
                  : { type: 'refreshed', tokens: refreshed, spent: base.refreshToken! },
              )
            // a login or logout came while it wrote. One of this tab's is written after it anyway; another
            // tab's may have been written before it landed, so storage is given what it should hold again, under
            // the lock: the next tab to take it reads that
            else if (told) await write(expected)
          }
          if (refreshed.refreshToken !== base.refreshToken) crossTab?.rotated(base.refreshToken!, !!copied)
          else crossTab?.replaced(base.accessToken)
          return refreshed
        },
        undefined,
        waiting.signal,
      )
    } catch (cause) {
      // not a failed refresh (ERR_SESSION_CLEARED): nothing to report or recover
      if (isTokenflowError(cause) && !isRefreshError(cause)) throw cause
      let error = toRefreshError(cause)
      // a replaced session's refresh was called off: its waiters were settled already, nothing to report
      if (session !== started) throw error
      if (error.kind === 'rejected' && !endedElsewhere) {
        // a rotated token refused because another tab rotated it first is not a logout (rule 7). A read that
        // does not answer in time cannot tell: the refresh fails as a timeout, and the session is kept for the
        // next refresh to read again (a storage that threw reads as "not known": the refusal stands)
        let stored: TokenSet | null | undefined
        try {
          stored = await read(true)
        } catch {
          error = new RefreshError(
            'timeout',
            'refresh failed: refused, and the storage did not answer in time',
            { cause: error },
          )
        }
        if (
          stored?.refreshToken &&
          stored.refreshToken !== base.refreshToken &&
          !isSpent(stored) &&
          session === started
        ) {
          // what the other tab left may have expired meanwhile: refresh with its refresh token instead
          if (isExpired(expiryOf(stored)[0])) return run(stored)
          done()
          adopt({ type: 'refreshed', tokens: stored })
          return stored.accessToken
        }
      }
      // read again after the storage read: a rejection only ends the session it was made for
      const willLogout = error.kind === 'rejected' && session === started
      done()
      // the waiters get this error before the events: a clear() or a login that a listener makes then must not
      // end their wait with ERR_SESSION_CLEARED
      if (willLogout) settlePending?.(error)
      // ends the refused session, as long as it is the current one: a login that a refreshFailed listener
      // made has replaced it, and the refusal does not end that
      const refusal = () =>
        session === started
          ? endSession(endedElsewhere ? 'otherTab' : 'refreshRejected', error, true)
          : undefined
      // emit() never throws: a listener's error is reported, not thrown
      if (willLogout) refusing = refusal
      emit({ type: 'refreshFailed', error, willLogout })
      refusing = undefined
      if (willLogout) await refusal()
      throw error
    }
    // the waiters of a replaced session were settled when it was replaced
    if (session !== started) throw sessionCleared()
    done()
    if (receivedAt !== undefined) {
      use(next, receivedAt, true)
      emit({ type: 'refreshed', tokens: { ...next }, source: 'local' })
    } else adopt({ type: 'refreshed', tokens: next })
    return next.accessToken
  }

  function startRefresh(start: TokenSet): Promise<string> {
    const current: Promise<string> = new Promise<string>((resolve, reject) => {
      settlePending = (result) => (typeof result === 'string' ? resolve(result) : reject(result))
      run(start).then(resolve, reject)
    }).finally(() => {
      // still this refresh's: no other run started meanwhile, and any way it ended, it is no longer under way
      if (pending === current) pending = settlePending = refreshing = undefined
    })
    // waiters that aborted stopped listening; the shared promise must still never be an unhandled rejection
    current.catch(() => {})
    pending = current
    return current
  }

  return {
    async getAccessToken({ signal } = {}) {
      await loadedFor(signal)
      const current = tokens
      let flight = pending
      if (!flight) {
        if (!current || !needsRefresh()) return current?.accessToken ?? null
        // rule 3: refresh before use; without a refresh token an expired token is not sent
        if (!current.refreshToken) return isExpired() ? null : current.accessToken
        flight = startRefresh(current)
      }
      try {
        return await wait(flight, signal)
      } catch (error) {
        // a transient failure while the token is still valid, and no 401 refused it: every reader uses it,
        // the next read tries again
        if (
          current &&
          refused !== flight &&
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
      await loadedFor(signal)
      const current = tokens
      const stale = current && rejectedToken && rejectedToken !== current.accessToken
      // a 401 for a token of a session that has ended (a logout, a login since): not sent again as this one
      if (stale && !sent.includes(rejectedToken)) throw sessionCleared()
      if (!pending) {
        // rule 2: a 401 for a token that is no longer current is retried with the current one, unless
        // that one is about to expire too
        if (stale && (!needsRefresh() || (!current.refreshToken && !isExpired()))) return current.accessToken
        // a late 401 of the session a refused refresh ended: the error every other request of it got
        if (!current && rejectedToken && rejectedToken === ended?.accessToken) throw ended.error
        if (!current?.refreshToken) throw new TokenflowError('ERR_NO_REFRESH_TOKEN', 'no session to refresh')
        startRefresh(current)
      }
      if (rejectedToken && rejectedToken === current?.accessToken) refused = pending
      return wait(pending!, signal)
    },

    async setTokens(next) {
      const valid =
        toTokenSet(next) ||
        invalidOption(
          'tokens',
          'a TokenSet: accessToken a string of visible ASCII, refreshToken a string or null, expiresAt epoch ms',
        )
      switchSession(valid, now())
      crossTab?.post({ type: 'refreshed', tokens: valid, login: true }, true)
      await write(valid)
    },

    async clear() {
      // every clear(), the refusal's included: a call that waits for the stored tokens meanwhile is of the
      // session being ended, and must not go on with a login made after it (ERR_SESSION_CLEARED)
      clears++
      const calledAt = now()
      ready()
      // a first read that has not answered, with no session since it began (an AsyncStorage stuck at app
      // start), does not hold a logout: the session ends now, and one that read brings later has its loggedOut
      // then. After a session started, the read no longer matters and nothing waits for it. So the session
      // ends at the call: a login right after it (not awaited) comes after its loggedOut, not instead of it
      const unread = readFrom === session
      // the tokens are gone from memory either way; a storage that kept them would log the user in again
      // at the next start, so the caller hears of it. From a refreshFailed listener (willLogout) with the
      // refused session still current, the session ends as the refusal ends it, with its reason and error
      const done = refusing?.() || endSession('cleared')
      if (unread) clearedUnread = calledAt
      const error = await done
      if (error) throw error
    },

    subscribe(listener) {
      check(isFunction(listener), 'listener', 'a function')
      listeners.add(listener)
      return () => void listeners.delete(listener)
    },

    get status(): TokenStatus {
      // an expired token that cannot be refreshed is no session: getAccessToken() answers null for it
      return refreshing
        ? 'refreshing'
        : tokens && (tokens.refreshToken || !isExpired())
          ? 'authenticated'
          : 'unauthenticated'
    },
  }
}
