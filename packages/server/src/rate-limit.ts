import { isIPv6 } from 'node:net'
import { AuthError } from './errors.js'

/**
 * The answer of `RateLimiter.consume`.
 * @example
 * const { ok, retryAfter }: RateLimitResult = await limiter.consume(key)
 */
export interface RateLimitResult {
  /** false when the key is over its limit for the current window */
  ok: boolean
  /** whole seconds until the window resets (0 when `ok`); the `Retry-After` value */
  retryAfter: number
}

/**
 * Counts attempts per key in fixed windows.
 * @example
 * const limiter: RateLimiter = createRateLimiter({ limit: 10 })
 */
export interface RateLimiter {
  /** counts one attempt for `key` and says whether it is within the limit */
  consume(key: string): Promise<RateLimitResult>
  /** releases the Redis connection when this limiter opened it */
  close(): Promise<void>
}

/**
 * The part of an ioredis client a limiter uses; an `ioredis` `Redis` instance fits.
 * @example
 * import { Redis } from 'ioredis'
 * const redis: RedisLike = new Redis('redis://127.0.0.1:6379')
 */
export interface RedisLike {
  multi(): RedisMultiLike
  quit(): Promise<unknown>
}

/**
 * An ioredis `MULTI` pipeline, as far as a limiter uses it.
 * @example
 * await redis.multi().set(key, '0', 'PX', 60_000, 'NX').incr(key).pttl(key).exec()
 */
export interface RedisMultiLike {
  set(key: string, value: string, px: 'PX', milliseconds: number, nx: 'NX'): RedisMultiLike
  incr(key: string): RedisMultiLike
  pttl(key: string): RedisMultiLike
  exec(): Promise<Array<[Error | null, unknown]> | null>
}

/**
 * Options of `createRateLimiter`.
 * @example
 * const options: RateLimiterOptions = { limit: 10, window: 60_000, redisUrl: 'redis://127.0.0.1:6379' }
 */
export interface RateLimiterOptions {
  /** attempts allowed per key per window */
  limit: number
  /**
   * Window length in ms.
   * @default 60_000
   */
  window?: number | undefined
  /**
   * Keep counters in Redis (shared by every instance) instead of in memory. `ioredis` is an
   * optional peer dependency, imported only when this is set.
   */
  redisUrl?: string | undefined
  /**
   * An ioredis client to keep counters in, its promise, or a function that opens it on first use.
   * `close()` leaves it open: it belongs to the caller. A function is called again when its connection
   * failed, or has not opened 30 s after it was asked for; the limiter then uses the new one and never
   * closes the one it let go (close it yourself if it opens late).
   */
  redis?: RedisLike | Promise<RedisLike> | (() => Promise<RedisLike>) | undefined
  /**
   * Prefix of the Redis keys.
   * @default 'tokenflow:rl:'
   */
  prefix?: string | undefined
  /**
   * Most keys kept in memory; beyond it the oldest is dropped if it has expired, else the oldest in the lowest
   * band of attempts (1, 2 to 3, 4 to 7, ..., then a budget used up, then one refused): a lockout goes last.
   * @default 10_000
   */
  maxKeys?: number | undefined
  /** clock for the in-memory windows, epoch ms */
  now?: (() => number) | undefined
}

/**
 * Creates a fixed-window rate limiter, in memory or on Redis.
 * @example
 * const perIp = createRateLimiter({ limit: 50, window: 60_000 })
 * const { ok, retryAfter } = await perIp.consume(request.ip)
 * if (!ok) reply.header('retry-after', retryAfter).code(429)
 */
export function createRateLimiter({
  limit,
  window = 60_000,
  redisUrl,
  redis,
  prefix = 'tokenflow:rl:',
  maxKeys = 10_000,
  now = Date.now,
}: RateLimiterOptions): RateLimiter {
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new AuthError('ERR_CONFIG', '"limit" must be a positive integer')
  }
  if (!Number.isSafeInteger(window) || window < 1000) {
    throw new AuthError('ERR_CONFIG', '"window" must be an integer of at least 1000 (ms)')
  }
  if (!Number.isSafeInteger(maxKeys) || maxKeys < 1) {
    throw new AuthError('ERR_CONFIG', '"maxKeys" must be a positive integer')
  }
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) {
    throw new AuthError('ERR_CONFIG', '"redisUrl" must be a redis:// or rediss:// URL')
  }
  if (redis !== undefined || redisUrl !== undefined) {
    return redisLimiter({ limit, window, prefix, redis, redisUrl })
  }
  return memoryLimiter({ limit, window, maxKeys, now })
}

/** One key's fixed window in memory. */
interface Window {
  count: number
  resetAt: number
}

function memoryLimiter({
  limit,
  window,
  maxKeys,
  now,
}: {
  limit: number
  window: number
  maxKeys: number
  now: () => number
}): RateLimiter {
  // insertion order is reset order (every window has the same length), so the oldest entries come first
  const windows = new Map<string, Window>()
  // The same windows by band of attempts, each band in the order its windows entered it: band b holds those
  // tried 2^b to 2^(b+1) - 1 times, below the limit; band USED_UP those at their limit, band LOCKED those
  // refused at least once (a lockout). With a limit of 1, a name tried once is at its limit, and still goes
  // before an account that was refused (a second code review).
  // When full, the oldest window goes if it has expired (with a clock set back, an expired window behind a
  // live one waits for its band), else the first of the lowest band: a lockout last. Evicting the
  // window of an account under attack would hand its guesser a new budget: with eviction by age alone,
  // maxKeys logins at made-up names within a window did that (a back-end review). Now each of the other
  // names has to be tried about half as often as that account was, and an eviction costs O(bands), not a
  // pass over the map (a code review measured 40 times the old cost for that)
  const bands: Array<Set<string> | undefined> = []
  const USED_UP = 63
  const LOCKED = 64
  /** the band of a window tried `count` times (at least once) */
  const bandOf = (count: number) =>
    count > limit ? LOCKED : count === limit ? USED_UP : Math.floor(Math.log2(count))
  const drop = (key: string, entry: Window) => {
    windows.delete(key)
    bands[bandOf(entry.count)]?.delete(key)
  }
  const prune = (time: number) => {
    for (const [key, entry] of windows) {
      if (entry.resetAt > time || windows.size < maxKeys) break
      drop(key, entry)
    }
    if (windows.size < maxKeys) return
    for (const band of bands) {
      const [key] = band ?? []
      if (key !== undefined) return drop(key, windows.get(key)!)
    }
  }

  return {
    async consume(key) {
      const time = now()
      let entry = windows.get(key)
      if (!entry || entry.resetAt <= time) {
        if (entry) drop(key, entry)
        if (windows.size >= maxKeys) prune(time)
        entry = { count: 0, resetAt: time + window }
        windows.set(key, entry)
      }
      const from = entry.count > 0 ? bandOf(entry.count) : undefined
      const band = bandOf(++entry.count)
      if (band !== from) {
        if (from !== undefined) bands[from]?.delete(key)
        bands[band] = (bands[band] ?? new Set<string>()).add(key)
      }
      if (entry.count <= limit) return { ok: true, retryAfter: 0 }
      return { ok: false, retryAfter: Math.max(1, Math.ceil((entry.resetAt - time) / 1000)) }
    },
    async close() {
      windows.clear()
      bands.length = 0
    },
  }
}

function redisLimiter({
  limit,
  window,
  prefix,
  redis,
  redisUrl,
}: {
  limit: number
  window: number
  prefix: string
  redis: RedisLike | Promise<RedisLike> | (() => Promise<RedisLike>) | undefined
  redisUrl: string | undefined
}): RateLimiter {
  const owned = redis === undefined
  let client: Promise<RedisLike> | undefined
  /** when the connection in `client` was asked for */
  let askedAt = 0
  const connect = () => {
    if (client) return client
    // monotonic: a wall clock set back must not keep a hung connection for as long
    askedAt = performance.now()
    // a connection that failed to open is not kept: the next login tries again (not one this limiter let go
    // of meanwhile: that would drop the one that replaced it)
    const opening: Promise<RedisLike> = (
      redis === undefined
        ? connectRedis(redisUrl!)
        : typeof redis === 'function'
          ? // a factory that throws at once fails the login as one that rejects does (503)
            Promise.resolve().then(redis)
          : Promise.resolve(redis)
    ).catch((error: unknown) => {
      if (client === opening) client = undefined
      throw error
    })
    client = opening
    return opening
  }

  return {
    async consume(key) {
      const redisKey = prefix + key
      // SET NX PX starts a window only when none is running, INCR keeps its expiry: a fixed window,
      // atomic in one MULTI. (INCR + PEXPIRE would push the expiry on every attempt, so a user who
      // tries once a minute would never get out.)
      let replies: Array<[Error | null, unknown]> | null
      let timer: ReturnType<typeof setTimeout> | undefined
      const connecting = connect()
      let connected = false
      try {
        const transaction = connecting.then((client) => {
          connected = true
          return client.multi().set(redisKey, '0', 'PX', window, 'NX').incr(redisKey).pttl(redisKey).exec()
        })
        // a bound of its own, whoever made the client: one passed in may have no commandTimeout, and a
        // stalled Redis (or ioredis's offline queue, with its 20 reconnect tries) held each login without end;
        // so may a connection still opening (a factory of the app's that hangs)
        replies = await Promise.race([
          transaction,
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new Error('the rate limit store did not answer')),
              // past the commandTimeout of a client of ours, which then fails first
              REDIS_COMMAND_TIMEOUT + 500,
            )
          }),
        ])
      } catch (cause) {
        // a connection of the app's (its factory or promise) still opening long after it was asked for is
        // let go: the next login asks for a new one instead of waiting on this one for good. Not sooner: a
        // slow one (Redis loading after a restart) would be replaced, and left open, at every deadline
        if (!owned && !connected && client === connecting && performance.now() - askedAt > ABANDON_AFTER)
          client = undefined
        // fail closed: no login goes without its rate limit, and the caller hears it is temporary
        throw new AuthError('ERR_UNAVAILABLE', 'the login rate limit store is unavailable', {
          cause,
          retryAfter: 5,
        })
      } finally {
        clearTimeout(timer)
      }
      const failed = replies?.find(([error]) => error)
      if (!replies || failed) {
        throw new AuthError('ERR_CONFIG', 'rate limit: redis MULTI failed', { cause: failed?.[0] })
      }
      const count = Number(replies[1]?.[1])
      const ttl = Number(replies[2]?.[1])
      if (count <= limit) return { ok: true, retryAfter: 0 }
      return { ok: false, retryAfter: Math.max(1, Math.ceil((ttl > 0 ? ttl : window) / 1000)) }
    },
    async close() {
      if (owned && client) await (await client).quit()
    },
  }
}

/**
 * The key a client address is limited under: an IPv4 address as it is, an IPv6 address by its /64 (one
 * subscriber usually gets a whole /64, so counting single addresses would not limit anyone). A source port
 * is dropped (`203.0.113.7:51234`, `[2001:db8::1]:51234`): some proxies (Azure Application Gateway, App
 * Service) append it to X-Forwarded-For, and every new connection would otherwise get a budget of its own.
 * @example
 * ipLimitKey('2001:db8:1:2::abcd') // '2001:db8:1:2::/64'
 */
export function ipLimitKey(forwarded: string): string {
  const ip =
    /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(forwarded)?.[1] ??
    /^\[([^\]]+)\](?::\d{1,5})?$/.exec(forwarded)?.[1] ??
    forwarded
  if (!isIPv6(ip)) return ip
  const address = ip.replace(/%.*$/, '').toLowerCase()
  // an embedded IPv4 address at the end stands for the last two groups
  const groupsOf = (part: string) =>
    part === ''
      ? []
      : part.split(':').flatMap((group) => {
          if (!group.includes('.')) return [Number.parseInt(group, 16)]
          const [a = 0, b = 0, c = 0, d = 0] = group.split('.').map(Number)
          return [a * 256 + b, c * 256 + d]
        })
  const [head = '', tail] = address.split('::')
  const before = groupsOf(head)
  const after = tail === undefined ? [] : groupsOf(tail)
  const groups = [...before, ...Array(Math.max(0, 8 - before.length - after.length)).fill(0), ...after]
  // an IPv4-mapped address (::ffff:a.b.c.d, in either spelling) is that IPv4 client
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) {
    const [high = 0, low = 0] = groups.slice(6)
    return [high >> 8, high & 255, low >> 8, low & 255].join('.')
  }
  return `${groups
    .slice(0, 4)
    .map((group) => group.toString(16))
    .join(':')}::/64`
}

/** ms a Redis command may take before the login it serves fails closed (503) */
const REDIS_COMMAND_TIMEOUT = 2000
/** ms after which a connection of the app's that has not opened is given up for a new one */
const ABANDON_AFTER = 30_000

/**
 * Opens an ioredis connection (ioredis is imported only here, on demand).
 * @example
 * const redis = await connectRedis('redis://127.0.0.1:6379')
 * const limiter = createRateLimiter({ limit: 10, redis })
 */
export async function connectRedis(url: string): Promise<RedisLike> {
  let Redis: new (url: string, options: object) => RedisLike
  try {
    // a variable specifier keeps bundlers and TypeScript from requiring the optional peer
    const name = 'ioredis'
    const module = (await import(name)) as { default: typeof Redis }
    Redis = module.default
  } catch (error) {
    throw new AuthError('ERR_CONFIG', '"redisUrl" needs the optional peer dependency "ioredis"', {
      cause: error,
    })
  }
  // fail a command after one reconnect attempt instead of queueing logins forever while Redis is down, and
  // one that Redis does not answer in 2 s (a frozen server, a network that drops packets and keeps the
  // connection): without it each login waited as long as the stall lasted
  const client = new Redis(url, {
    maxRetriesPerRequest: 1,
    connectTimeout: 5000,
    commandTimeout: REDIS_COMMAND_TIMEOUT,
    enableAutoPipelining: true,
  })
  const events = client as unknown as {
    on(event: string, listener: (error?: Error) => void): void
    off(event: string, listener: (error?: Error) => void): void
    disconnect(): void
  }
  // a later outage reaches each login that needs Redis (503); without a listener ioredis would also print
  // every failed reconnect as an unhandled 'error' event
  events.on('error', () => {})
  // a Redis that cannot be reached at start is a bad configuration: the server does not start
  await new Promise<void>((resolve, reject) => {
    const ready = () => {
      events.off('error', failed)
      resolve()
    }
    const failed = (error?: Error) => {
      events.off('ready', ready)
      events.disconnect()
      reject(
        new AuthError('ERR_CONFIG', `cannot reach Redis: ${error?.message ?? 'no answer'}`, { cause: error }),
      )
    }
    events.on('ready', ready)
    events.on('error', failed)
  })
  return client
}
