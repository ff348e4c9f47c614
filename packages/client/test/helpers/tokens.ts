import {
  createTokenManager,
  type LockManagerLike,
  memoryStorage,
  type RefreshContext,
  type TokenEvent,
  type TokenManagerOptions,
  type TokenSet,
  type TokenStorage,
} from '@tokenflow/client'

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')

/** Cookie mode as the README sets it up: each page load starts from an expired placeholder, per tab. */
export const placeholderStorage = () =>
  memoryStorage({ accessToken: 'reload', refreshToken: 'cookie', expiresAt: 0 })

/**
 * Storage whose reads answer only when the test calls `finishRead()` (the latest read), as AsyncStorage can
 * at app start. Like AsyncStorage's queue, a read answers what was stored when it was asked, whatever a later
 * write does. `shared` is the same data read at once (another tab's view of it); `stored()` is what it holds.
 */
export function slowReadStorage(initial: TokenSet | null = null) {
  let saved = initial
  let answer = () => {}
  const slow: TokenStorage = {
    get: () => {
      const value = saved
      return new Promise((resolve) => {
        answer = () => resolve(value)
      })
    },
    set(tokens) {
      saved = tokens
    },
    clear() {
      saved = null
    },
  }
  const shared: TokenStorage = { ...slow, get: () => saved }
  return { slow, shared, finishRead: () => answer(), stored: () => saved }
}

/** A JWT-shaped token (unsigned: the client never verifies). `exp`/`iat` are in seconds. */
export function makeJwt(claims: { exp?: number; iat?: number; [claim: string]: unknown }): string {
  return `${b64url({ alg: 'ES256', typ: 'at+jwt' })}.${b64url(claims)}.c2ln`
}

/** A token set whose access token expires `ttl` ms after `issuedAt` (epoch ms). */
export function tokenSet(issuedAt: number, ttl: number, n: number | string = 0): TokenSet {
  return {
    accessToken: makeJwt({ iat: Math.floor(issuedAt / 1000), exp: Math.floor((issuedAt + ttl) / 1000), n }),
    refreshToken: `rt-${n}`,
  }
}

export interface Deferred<T> {
  promise: Promise<T>
  resolve(value: T): void
  reject(error: unknown): void
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void
  let reject!: (error: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

/** A refresh function whose answers the test controls, one deferred per call. */
export function controlledRefresh() {
  const calls: Array<{ context: RefreshContext } & Deferred<TokenSet>> = []
  const refresh = (context: RefreshContext) => {
    const call = { context, ...deferred<TokenSet>() }
    calls.push(call)
    return call.promise
  }
  return { refresh, calls }
}

/**
 * An in-process Web Locks stand-in: one FIFO exclusive lock per name, honouring `signal`.
 * With `query`, it also answers `query()` with the names held, as navigator.locks does (and `onQuery` sees them).
 */
export function createTestLock({
  query = false,
  onQuery,
  onGiveUp,
}: {
  query?: boolean
  onQuery?: (held: string[]) => void
  /** a waiter's signal aborted before it got the lock (its `lockTimeout`) */
  onGiveUp?: (name: string) => void
} = {}): LockManagerLike & { held: () => boolean } {
  const queues = new Map<string, Array<() => void>>()
  const busy = new Set<string>()
  const release = (name: string) => {
    const next = queues.get(name)?.shift()
    if (next) next()
    else busy.delete(name)
  }
  const lock: LockManagerLike & { held: () => boolean } = {
    /** whether the refresh lock is held (the rotation signal locks do not count) */
    held: () => [...busy].some((name) => !name.includes(':rotated:')),
    request(name, options, callback) {
      return new Promise((resolve, reject) => {
        const grant = () => {
          Promise.resolve()
            .then(() => callback({ name }))
            .then(resolve, reject)
            .finally(() => release(name))
        }
        if (options.signal?.aborted) return reject(options.signal.reason)
        if (options.ifAvailable && busy.has(name)) {
          Promise.resolve()
            .then(() => callback(null))
            .then(resolve, reject)
          return
        }
        if (!busy.has(name)) {
          busy.add(name)
          return grant()
        }
        const queue = queues.get(name) ?? []
        queues.set(name, queue)
        const entry = () => {
          options.signal?.removeEventListener('abort', onAbort)
          grant()
        }
        const onAbort = () => {
          onGiveUp?.(name)
          queue.splice(queue.indexOf(entry), 1)
          reject(options.signal!.reason)
        }
        options.signal?.addEventListener('abort', onAbort, { once: true })
        queue.push(entry)
      })
    },
  }
  if (query)
    lock.query = async () => {
      const held = [...busy]
      onQuery?.(held)
      return { held: held.map((name) => ({ name })) }
    }
  return lock
}

export const flush = () => new Promise((resolve) => setImmediate(resolve))

/**
 * A manager on a clock the test moves (starting at `t0`), with a refresh the test answers (`calls`), no lock
 * unless `options` gives one, and every event recorded.
 */
export function setupManager(options: Partial<TokenManagerOptions> = {}, t0 = 1_700_000_000_000) {
  let time = t0
  const clock = { now: () => time, advance: (ms: number) => (time += ms) }
  const control = controlledRefresh()
  const events: TokenEvent[] = []
  const manager = createTokenManager({ refresh: control.refresh, now: clock.now, lock: false, ...options })
  manager.subscribe((event) => events.push(event))
  return { manager, clock, ...control, events, types: () => events.map((e) => e.type) }
}
