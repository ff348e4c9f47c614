import { availableParallelism } from 'node:os'
import { type Algorithm, hash, parseOptions, verify } from '@node-rs/argon2'
import { AuthError } from './errors.js'

/**
 * Options of `createPasswordHasher`. The defaults are OWASP's Argon2id minimum.
 * @example
 * const options: PasswordHasherOptions = { maxConcurrency: 2 }
 */
export interface PasswordHasherOptions {
  /**
   * Argon2 memory cost in KiB.
   * @default 19456
   */
  memoryCost?: number | undefined
  /**
   * Argon2 passes.
   * @default 2
   */
  timeCost?: number | undefined
  /**
   * Argon2 lanes.
   * @default 1
   */
  parallelism?: number | undefined
  /**
   * At most this many hashes or verifications run at once; the rest wait in line, so a login
   * burst cannot take every core and all the memory (each hash holds `memoryCost` KiB).
   * @default os.availableParallelism() - 1, at least 1: one core stays free for the event loop, so refreshes
   *   keep their latency while logins saturate the hashers
   */
  maxConcurrency?: number | undefined
  /**
   * At most this many wait in line; one more fails at once with `ERR_UNAVAILABLE` (HTTP 503, `Retry-After: 1`)
   * instead of waiting behind a flood of logins (about 10 ms of one core each) for seconds.
   * `Infinity` for no bound, `0` for no line at all.
   * @default 100
   */
  maxQueue?: number | undefined
}

/**
 * Hashes and verifies passwords with Argon2id (PHC strings).
 * @example
 * if (await passwords.verify(user.passwordHash, password) && passwords.needsRehash(user.passwordHash)) {
 *   await store.setPasswordHash(user.id, await passwords.hash(password), user.passwordChangedAt)
 * }
 */
export interface PasswordHasher {
  /** a PHC string for `password` with the current parameters */
  hash(password: string): Promise<string>
  /** true when `password` matches `phc`; false for a wrong password or a malformed hash */
  verify(phc: string, password: string): Promise<boolean>
  /**
   * Spends the time of one verification against a dummy hash and resolves false, so an unknown
   * user costs what a wrong password costs.
   */
  verifyDummy(password: string): Promise<false>
  /** true when `phc` was made with other parameters (or another algorithm) than the current ones */
  needsRehash(phc: string): boolean
  /**
   * true while a new check would be refused at once (`ERR_UNAVAILABLE`: the line is full). A login asks
   * first, so that a refused one spends no rate-limit budget. Optional for a hasher of your own.
   */
  busy?(): boolean
}

const ARGON2ID = 2 as Algorithm

/**
 * Creates the Argon2id password hasher (m=19456 KiB, t=2, p=1 by default) with a concurrency cap.
 * @example
 * const passwords = createPasswordHasher()
 * const phc = await passwords.hash('correct horse battery staple')
 * await passwords.verify(phc, 'correct horse battery staple') // true
 */
export function createPasswordHasher({
  memoryCost = 19456,
  timeCost = 2,
  parallelism = 1,
  maxConcurrency = Math.max(1, availableParallelism() - 1),
  maxQueue = 100,
}: PasswordHasherOptions = {}): PasswordHasher {
  for (const [name, value] of Object.entries({ memoryCost, timeCost, parallelism, maxConcurrency })) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new AuthError('ERR_CONFIG', `"${name}" must be a positive integer`)
    }
  }
  if (maxQueue !== 1 / 0 && !(Number.isSafeInteger(maxQueue) && maxQueue >= 0)) {
    throw new AuthError('ERR_CONFIG', '"maxQueue" must be a non-negative integer or Infinity (no bound)')
  }
  const options = { memoryCost, timeCost, parallelism, algorithm: ARGON2ID }
  const limit = createSemaphore(maxConcurrency, maxQueue)
  let dummy: Promise<string> | undefined
  const verifyDummyHash = async (password: string): Promise<false> => {
    // computed once, lazily: hashing at import or creation time would slow every start
    // a failed hash (memory pressure) is not kept: the next unknown user tries again instead of a 500 forever
    dummy ??= limit(() => hash('tokenflow-dummy-password', options)).catch((error: unknown) => {
      dummy = undefined
      throw error
    })
    const phc = await dummy
    await limit(() => verify(phc, password).catch(() => false))
    return false
  }

  const verifyPhc = async (phc: string, password: string): Promise<boolean> => {
    // A stored hash that is not Argon2 (an imported one, the unusable one of a row made for a user of a
    // custom `authenticate`) must not let anyone in, nor crash the login, nor answer faster than a real check:
    // that would tell such a row exists. It gets the dummy check, in one turn of the line as a real one
    let parsed = true
    try {
      parseOptions(phc)
    } catch {
      parsed = false
    }
    if (!parsed) return verifyDummyHash(password)
    return limit(async () => {
      try {
        return await verify(phc, password)
      } catch {
        return false
      }
    })
  }

  return {
    hash(password) {
      return limit(() => hash(password, options))
    },
    verify: verifyPhc,
    verifyDummy: verifyDummyHash,
    busy: limit.full,
    needsRehash(phc) {
      try {
        const current = parseOptions(phc)
        return (
          current.algorithm !== ARGON2ID ||
          current.memoryCost !== memoryCost ||
          current.timeCost !== timeCost ||
          current.parallelism !== parallelism
        )
      } catch {
        return true
      }
    },
  }
}

/**
 * A counting semaphore: runs at most `max` tasks at once, first come first served; with more than
 * `maxQueue` waiting, a new task fails at once with ERR_UNAVAILABLE.
 * @example
 * const limit = createSemaphore(2)
 * const results = await Promise.all(passwords.map((password) => limit(() => hash(password))))
 */
export function createSemaphore(
  max: number,
  maxQueue = 1 / 0,
): (<T>(task: () => Promise<T>) => Promise<T>) & { full(): boolean } {
  let running = 0
  const waiting: Array<() => void> = []
  /** a new task would be refused now */
  const full = () => running >= max && waiting.length >= maxQueue
  const run = async <T>(task: () => Promise<T>): Promise<T> => {
    if (full()) {
      throw new AuthError('ERR_UNAVAILABLE', 'too many password checks at once', { retryAfter: 1 })
    }
    if (running >= max) await new Promise<void>((resolve) => waiting.push(resolve))
    else running++
    try {
      return await task()
    } finally {
      // hand the slot straight to the next waiter, so `running` never dips and a newcomer cannot jump the line
      const next = waiting.shift()
      if (next) next()
      else running--
    }
  }
  return Object.assign(run, { full })
}
