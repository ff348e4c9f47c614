import { randomUUID } from 'node:crypto'
import { decodeJwt } from 'jose'
import { AuthError, isAuthError } from './errors.js'
import type { Keyring } from './keys.js'
import { createPasswordHasher, type PasswordHasher } from './passwords.js'
import { ipLimitKey, type RateLimiter } from './rate-limit.js'
import {
  encodeRefreshToken,
  newSessionId,
  newSessionKey,
  parseRefreshToken,
  verifyRefreshTokenMac,
} from './refresh-token.js'
import type { SessionRecord, TokenStore, UserRecord } from './stores/store.js'
import {
  createVerifier,
  isVerifyError,
  type AccessTokenClaims as VerifiedClaims,
  type Verifier,
  type VerifyAlgorithm,
} from './verify.js'

/**
 * What `login` and `refresh` hand back. `expiresIn` is in seconds, as on the wire.
 * @example
 * const { accessToken, refreshToken, expiresIn }: IssuedTokens = await issuer.refresh(token)
 */
export interface IssuedTokens {
  accessToken: string
  refreshToken: string
  tokenType: 'Bearer'
  /** access-token lifetime in seconds */
  expiresIn: number
  userId: string
  /** the session: the family of refresh tokens this one belongs to */
  sessionId: string
  /** absolute expiry of the refresh token, epoch ms */
  refreshExpiresAt: number
  /**
   * when the refresh token stops working unless it is used before (`refreshIdleTimeout` after the session's
   * last use), epoch ms; never after `refreshExpiresAt`. Cookie mode's Max-Age ends there
   */
  refreshIdleExpiresAt: number
}

/**
 * Who is logging in, for rate limits and the session list.
 * @example
 * await issuer.login(username, password, { ip: request.ip, userAgent: request.headers['user-agent'] })
 */
export interface LoginMeta {
  ip?: string | undefined
  userAgent?: string | undefined
}

/**
 * A custom credential check: resolve the user's id, or null for wrong credentials.
 * @example
 * const authenticate: AuthenticateFunction = async ({ username, password }) =>
 *   (await ldap.check(username, password)) ? { userId: username } : null
 */
export type AuthenticateFunction = (
  credentials: { username: string; password: string } & LoginMeta,
) => Promise<{ userId: string } | null>

/**
 * One live session, as shown to its user (never the key or a token).
 * @example
 * const sessions: SessionInfo[] = await issuer.listSessions(userId)
 */
export interface SessionInfo {
  id: string
  clientId: string
  createdAt: number
  lastUsedAt: number
  expiresAt: number
  userAgent: string | null
}

/**
 * A user of the built-in users table (never the password hash).
 * @example
 * const { id }: UserInfo = await issuer.addUser('ada', password)
 */
export interface UserInfo {
  id: string
  username: string
  createdAt: number
}

/**
 * The claims of a verified access token of a live session.
 * @example
 * const { sub, sid }: AccessTokenClaims = await issuer.verifyAccessToken(token)
 */
export interface AccessTokenClaims extends VerifiedClaims {
  sid: string
  client_id: string
}

/**
 * Something the issuer did that an app may want to log or count. Never carries a token or password.
 * @example
 * const onEvent = (event: IssuerEvent) => {
 *   if (event.type === 'reuseDetected') console.warn(`session ${event.sessionId} was revoked`)
 * }
 */
export type IssuerEvent =
  | { type: 'login'; userId: string; sessionId: string }
  | { type: 'loginFailed'; reason: 'credentials' | 'rateLimited' }
  | { type: 'refreshed'; userId: string; sessionId: string; grace: boolean }
  | { type: 'reuseDetected'; userId: string; sessionId: string }
  | { type: 'sessionsRevoked'; userId: string; reason: string; count: number }
  | { type: 'rehashFailed'; userId: string; error: unknown }

/**
 * Counters since the issuer was created.
 * @example
 * const { reuseDetected }: IssuerStats = issuer.stats
 */
export interface IssuerStats {
  logins: number
  loginFailures: number
  refreshes: number
  /** retries within `reuseGrace` that got the current token back */
  graceReplays: number
  /** refresh-token reuse outside the grace window; each revoked a session */
  reuseDetected: number
  /** refreshes answered with `invalid_grant` */
  invalidGrants: number
}

/**
 * Options of `createIssuer`. Durations are in ms.
 * @example
 * const options: IssuerOptions = { store, keyring, issuer: 'https://auth.example.com', audience: 'api', clientId: 'web', reuseGrace: 10_000 }
 */
export interface IssuerOptions {
  store: TokenStore
  keyring: Keyring
  /** `iss` of access tokens */
  issuer: string
  /** `aud` of access tokens: the API(s) that accept them */
  audience: string | string[]
  /** `client_id` of access tokens and the only client `/oauth/token` serves */
  clientId: string
  /**
   * Access-token lifetime in ms.
   * @default 900_000 (15 min)
   */
  accessTokenTtl?: number | undefined
  /**
   * Absolute refresh-token (session) lifetime in ms; rotation does not extend it.
   * @default 2_592_000_000 (30 days)
   */
  refreshTokenTtl?: number | undefined
  /**
   * A session unused for this long (ms) is dead.
   * @default 604_800_000 (7 days)
   */
  refreshIdleTimeout?: number | undefined
  /**
   * A retry with the previous refresh token within this many ms of the rotation gets the current
   * one back instead of counting as reuse.
   * @default 10_000
   */
  reuseGrace?: number | undefined
  /**
   * The most live sessions one user may hold. A login beyond it revokes the user's least recently used
   * sessions (reason `'session-limit'`), so that no one can grow a user's session list without bound.
   * `Infinity` turns the cap off.
   * @default 100
   */
  maxSessionsPerUser?: number | undefined
  /** replaces the built-in users table and its Argon2id check */
  authenticate?: AuthenticateFunction | undefined
  /**
   * The Argon2id hasher of the built-in users table.
   * @default createPasswordHasher()
   */
  passwords?: PasswordHasher | undefined
  /** login limits, checked before any password is hashed */
  loginLimits?: { perIp?: RateLimiter | undefined; perAccount?: RateLimiter | undefined } | undefined
  /** called for each `IssuerEvent`; a throwing listener is ignored */
  onEvent?: ((event: IssuerEvent) => void) | undefined
  /** clock, epoch ms */
  now?: (() => number) | undefined
}

/**
 * The HTTP-free core of the token server.
 * @example
 * const tokens = await issuer.login('ada', password)
 * await issuer.logout(tokens.refreshToken)
 */
export interface Issuer {
  /**
   * checks the credentials (the built-in users table, or `authenticate`) within the login rate limits and
   * starts a session; rejects with `ERR_INVALID_CREDENTIALS`, `ERR_RATE_LIMITED` or `ERR_INVALID_REQUEST`,
   * with `ERR_UNAVAILABLE` (and `retryAfter`) while the password hasher's line is full or the Redis of the
   * rate limits is down, and with `ERR_CONFIG` when `authenticate` answers something that is not a user
   */
  login(username: unknown, password: unknown, meta?: LoginMeta): Promise<IssuedTokens>
  /** rotates the refresh token; pass `clientId` to require the session to belong to that client */
  refresh(refreshToken: unknown, options?: { clientId?: string }): Promise<IssuedTokens>
  /** revokes the token's session; resolves the same way whether or not the token was valid */
  logout(refreshToken: unknown): Promise<void>
  /** revokes every session of the user; resolves to how many */
  logoutAll(userId: string): Promise<number>
  /** the user's live sessions, newest first */
  listSessions(userId: string): Promise<SessionInfo[]>
  /** revokes one of the user's sessions; `ERR_NOT_FOUND` for an unknown or someone else's session */
  revokeSession(userId: string, sessionId: string): Promise<void>
  /**
   * checks `oldPassword`, stores the new hash and revokes the user's other sessions (before and after the
   * hash is stored: a change that failed midway can be made again with the old password, and no session of
   * the old password outlives it)
   */
  changePassword(
    userId: string,
    oldPassword: string,
    newPassword: string,
    options?: { keepSessionId?: string },
  ): Promise<void>
  /**
   * Verifies an access token of this issuer whose session is still live. Rejects with the
   * `VerifyError` of "@tokenflow/server/verify" for a bad token, or `ERR_INVALID_TOKEN` when its
   * session has ended. With `{ expired: true }` (a logout), a token past its `exp` is taken too, checked
   * as at the time it was issued: it still names its session, and a logout with the token an app has left
   * must end it rather than answer 200 and leave it live.
   */
  verifyAccessToken(token: unknown, options?: { expired?: boolean }): Promise<AccessTokenClaims>
  /** adds a user to the built-in users table (Argon2id hash); `ERR_USER_EXISTS` when the name is taken */
  addUser(username: string, password: string): Promise<UserInfo>
  /** resolves false when there was no such user */
  removeUser(username: string): Promise<boolean>
  /** the users of the built-in users table */
  listUsers(): Promise<UserInfo[]>
  /**
   * deletes sessions that expired or were revoked before now, or were left unused for `refreshIdleTimeout`;
   * resolves to how many
   */
  pruneSessions(): Promise<number>
  /** a copy of the counters (see `IssuerStats`) */
  readonly stats: Readonly<IssuerStats>
}

const MAX_INPUT_LENGTH = 1024
const MAX_USERNAME_LENGTH = 256
const MAX_USER_AGENT_LENGTH = 512
const SESSION_ID_PATTERN = /^[0-9a-f]{32}$/
/** the most sessions one login revokes for `maxSessionsPerUser` */
const SESSION_CAP_BATCH = 16
// rows made for users of a custom `authenticate`: the store ties sessions to a users row. The prefix
// holds a control character, which `addUser` refuses, so it never collides with a real username.
const EXTERNAL_USER_PREFIX = '\u0001external:'
const UNUSABLE_HASH = '!'

/** The one answer for every refresh-token failure, so none of them tells an attacker anything. */
function invalidGrant(): AuthError {
  return new AuthError('ERR_INVALID_GRANT', 'the refresh token is invalid, expired or revoked')
}

function invalidCredentials(): AuthError {
  return new AuthError('ERR_INVALID_CREDENTIALS', 'invalid username or password')
}

/** The `iat` of a JWT, read without verifying it (a logout's token is verified as at that time), or undefined. */
function issuedAtOf(token: string): number | undefined {
  try {
    const { iat } = decodeJwt(token)
    return typeof iat === 'number' && Number.isFinite(iat) ? iat : undefined
  } catch {
    return undefined
  }
}

/**
 * Creates the issuer: login, refresh-token rotation with reuse detection, logout and sessions.
 * The store must be migrated first (`await store.migrate()`).
 * @example
 * const store = createSqliteStore()
 * await store.migrate()
 * const keyring = createKeyring({ store })
 * const issuer = createIssuer({ store, keyring, issuer: 'https://auth.example.com', audience: 'https://api.example.com', clientId: 'web' })
 * await issuer.addUser('ada', 'correct horse battery staple')
 * const { accessToken, refreshToken } = await issuer.login('ada', 'correct horse battery staple')
 * const next = await issuer.refresh(refreshToken)
 */
export function createIssuer({
  store,
  keyring,
  issuer,
  audience,
  clientId,
  accessTokenTtl = 15 * 60_000,
  refreshTokenTtl = 30 * 86_400_000,
  refreshIdleTimeout = 7 * 86_400_000,
  reuseGrace = 10_000,
  maxSessionsPerUser = 100,
  authenticate,
  passwords = createPasswordHasher(),
  loginLimits = {},
  onEvent,
  now = Date.now,
}: IssuerOptions): Issuer {
  if (!store || typeof store.rotateSession !== 'function') {
    throw new AuthError('ERR_CONFIG', '"store" must be a TokenStore')
  }
  if (!keyring || typeof keyring.sign !== 'function') {
    throw new AuthError('ERR_CONFIG', '"keyring" must be a Keyring')
  }
  if (typeof issuer !== 'string' || issuer === '') {
    throw new AuthError('ERR_CONFIG', '"issuer" must be a non-empty string')
  }
  const audiences = Array.isArray(audience) ? audience : [audience]
  if (audiences.length === 0 || audiences.some((value) => typeof value !== 'string' || value === '')) {
    throw new AuthError('ERR_CONFIG', '"audience" must be a non-empty string or array of strings')
  }
  if (typeof clientId !== 'string' || clientId === '') {
    throw new AuthError('ERR_CONFIG', '"clientId" must be a non-empty string')
  }
  for (const [name, value, min] of [
    ['accessTokenTtl', accessTokenTtl, 1000],
    ['refreshTokenTtl', refreshTokenTtl, 1000],
    ['refreshIdleTimeout', refreshIdleTimeout, 1000],
    ['reuseGrace', reuseGrace, 0],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < min) {
      throw new AuthError('ERR_CONFIG', `"${name}" must be an integer of at least ${min} (ms)`)
    }
  }
  if (
    maxSessionsPerUser !== Number.POSITIVE_INFINITY &&
    (!Number.isSafeInteger(maxSessionsPerUser) || maxSessionsPerUser < 1)
  ) {
    throw new AuthError('ERR_CONFIG', '"maxSessionsPerUser" must be an integer of at least 1, or Infinity')
  }
  if (authenticate !== undefined && typeof authenticate !== 'function') {
    throw new AuthError('ERR_CONFIG', '"authenticate" must be a function')
  }

  const stats: IssuerStats = {
    logins: 0,
    loginFailures: 0,
    refreshes: 0,
    graceReplays: 0,
    reuseDetected: 0,
    invalidGrants: 0,
  }
  const emit = (event: IssuerEvent) => {
    try {
      onEvent?.(event)
    } catch {
      // a listener's bug must not turn a successful rotation into a failed one
    }
  }

  const issue = async (session: SessionRecord, time: number): Promise<IssuedTokens> => {
    const iat = Math.floor(time / 1000)
    // an access token never outlives its session's absolute expiry
    const exp = Math.min(iat + Math.floor(accessTokenTtl / 1000), Math.floor(session.expiresAt / 1000))
    // RFC 9068: typ "at+jwt" and these claims; signed after the rotation committed, outside any transaction
    const accessToken = await keyring.sign(
      {
        iss: issuer,
        sub: session.userId,
        aud: audience,
        iat,
        exp,
        jti: randomUUID(),
        client_id: session.clientId,
        sid: session.id,
      },
      { typ: 'at+jwt' },
    )
    return {
      accessToken,
      // deterministic: the same session and counter always give the byte-identical token
      refreshToken: encodeRefreshToken({ sessionId: session.id, counter: session.counter, key: session.key }),
      tokenType: 'Bearer',
      expiresIn: exp - iat,
      userId: session.userId,
      sessionId: session.id,
      refreshExpiresAt: session.expiresAt,
      refreshIdleExpiresAt: Math.min(session.expiresAt, session.lastUsedAt + refreshIdleTimeout),
    }
  }

  const isLive = (session: SessionRecord, time: number) =>
    session.revokedAt === null && session.expiresAt > time && session.lastUsedAt + refreshIdleTimeout > time

  const checkLimits = async (username: string, ip: string | undefined) => {
    const results = []
    if (loginLimits.perIp && ip !== undefined) {
      const result = await loginLimits.perIp.consume(`ip:${ipLimitKey(ip)}`)
      results.push(result)
      // a blocked address does not also spend the account's budget
      if (!result.ok) return result
    }
    if (loginLimits.perAccount) {
      // case-folded, so "Ada" and "ada" share one budget whatever the store's collation; in NFKC, so the
      // spellings of one name ("é", "e\u0301", "é ", a fullwidth "ａda") share it too: a custom `authenticate`
      // may match names width-insensitively, and each variant must not bring a budget of its own
      results.push(
        // at most MAX_INPUT_LENGTH characters: NFKC expands some (U+FDFA to 18), and each key is kept
        await loginLimits.perAccount.consume(
          `user:${username.normalize('NFKC').trim().toLowerCase().slice(0, MAX_INPUT_LENGTH)}`,
        ),
      )
    }
    return results.find((result) => !result.ok)
  }

  /**
   * The user a typed name means: the exact spelling first, so every login that matched before still matches
   * the same row, then its canonical form and that form in NFD, so a name stored in one form is found from a
   * device that types the other, or whose keyboard appended a space (usernames are stored canonical since;
   * older rows may hold any form). A name with a NUL byte is no one's: `addUser` refuses control characters,
   * and PostgreSQL cannot even compare one (its text has no NUL: the query would fail, and the login answer 500).
   */
  const findUser = async (username: string): Promise<UserRecord | null> => {
    for (const name of nameForms(username)) {
      // (and any control character: such a row is no user's either, but one made for a custom
      // `authenticate`, whose name starts with one, and is not for logging in to)
      if (hasControlCharacter(name)) continue
      const user = await store.getUserByName(name)
      if (user) return user
    }
    return null
  }

  /** the spelling of `password` that matches `phc`, or undefined */
  const matchPassword = async (phc: string, password: string): Promise<string | undefined> => {
    for (const spelling of passwordSpellings(password)) {
      if (await passwords.verify(phc, spelling)) return spelling
    }
    return undefined
  }

  /** the hashes the stored one may be after a successful check: the one checked, and this login's rehash */
  const builtInAuthenticate = async (
    username: string,
    password: string,
  ): Promise<[UserRecord, string] | null> => {
    const user = await findUser(username)
    if (!user) {
      // the same Argon2 work as a real check, so the answer time does not reveal unknown users
      for (const spelling of passwordSpellings(password)) await passwords.verifyDummy(spelling)
      return null
    }
    const matched = await matchPassword(user.passwordHash, password)
    if (matched === undefined) return null
    const normalized = normalizePassword(password)
    let rehashed = user.passwordHash
    // a hash of the password as typed before passwords were normalized is upgraded like an old parameter
    // set: from then on, every spelling of the password matches it
    if (matched !== normalized || passwords.needsRehash(user.passwordHash)) {
      try {
        // the parameters changed since this hash was made: upgrade it while we know the password, unless a
        // password change landed meanwhile (the old password must not come back)
        rehashed = await passwords.hash(normalized)
        await store.setPasswordHash(user.id, rehashed, user.passwordChangedAt, user.passwordHash)
      } catch (error) {
        emit({ type: 'rehashFailed', userId: user.id, error })
      }
    }
    return [user, rehashed]
  }

  /** false when the password was changed since it was checked: the stored hash no longer takes it */
  const stillTakes = async ([user, rehashed]: [UserRecord, string], password: string) => {
    const current = (await store.getUser(user.id))?.passwordHash
    if (current === undefined) return false
    return (
      current === user.passwordHash ||
      current === rehashed ||
      (await matchPassword(current, password)) !== undefined
    )
  }

  const ensureUserRow = async (userId: string, time: number) => {
    if (await store.getUser(userId)) return
    try {
      await store.createUser({
        id: userId,
        username: EXTERNAL_USER_PREFIX + userId,
        passwordHash: UNUSABLE_HASH,
        createdAt: time,
        passwordChangedAt: time,
      })
    } catch (error) {
      // another login of the same user made the row first
      if (!(await store.getUser(userId))) throw error
    }
  }

  /**
   * Keeps the user at `maxSessionsPerUser` live sessions, the one just made included: the least recently
   * used are revoked. Every login ranks the sessions the same way (last used, then created, then id), and
   * revokes only what it sees `maxSessionsPerUser` sessions rank above, so logins racing each other never
   * leave fewer than the cap. The one just made is never revoked here, so logins in the same millisecond can
   * leave one more than the cap until the next login. The list read is bounded by the cap itself, plus what
   * logins add meanwhile. One login revokes at most `SESSION_CAP_BATCH`, the least recently used first: a
   * user far over the cap (sessions made before it, or a lowered cap) comes down over several logins, and no
   * login waits for thousands of writes.
   */
  const enforceSessionCap = async (created: SessionRecord, time: number) => {
    if (maxSessionsPerUser === Number.POSITIVE_INFINITY) return
    const ranked = (await store.listSessions(created.userId, time))
      .filter((session) => isLive(session, time))
      .sort((a, b) => b.lastUsedAt - a.lastUsedAt || b.createdAt - a.createdAt || b.id.localeCompare(a.id))
    const excess = ranked.slice(maxSessionsPerUser).filter((session) => session.id !== created.id)
    let count = 0
    for (const session of excess.slice(-SESSION_CAP_BATCH)) {
      // only as it was ranked: a session used since (a refresh) may rank above others now
      if (await store.revokeSession(session.id, time, 'session-limit', session.lastUsedAt)) count++
    }
    if (count > 0) emit({ type: 'sessionsRevoked', userId: created.userId, reason: 'session-limit', count })
  }

  let verification: { fingerprint: string; verifier: Verifier } | undefined

  return {
    async login(username, password, meta = {}) {
      if (!isInput(username) || !isInput(password)) {
        throw new AuthError('ERR_INVALID_REQUEST', '"username" and "password" must be non-empty strings')
      }
      // a check the hasher would refuse now (its line is full) is refused first, spending no budget: a user
      // who obeys its Retry-After must not be locked out by the flood that filled the line
      if (!authenticate && passwords.busy?.())
        throw new AuthError('ERR_UNAVAILABLE', 'too many password checks at once', { retryAfter: 1 })
      const limited = await checkLimits(username, meta.ip)
      if (limited) {
        stats.loginFailures++
        emit({ type: 'loginFailed', reason: 'rateLimited' })
        throw new AuthError('ERR_RATE_LIMITED', 'too many login attempts', { retryAfter: limited.retryAfter })
      }
      let userId: string | null
      let checked: [UserRecord, string] | null = null
      if (authenticate) {
        const result = await authenticate({ username, password, ip: meta.ip, userAgent: meta.userAgent })
        userId = result === null ? null : result.userId
        if (
          userId !== null &&
          (typeof userId !== 'string' || userId === '' || userId.length > MAX_USERNAME_LENGTH)
        ) {
          throw new AuthError('ERR_CONFIG', '"authenticate" must resolve { userId: string } or null')
        }
      } else {
        checked = await builtInAuthenticate(username, password)
        userId = checked?.[0].id ?? null
      }
      if (userId === null) {
        stats.loginFailures++
        emit({ type: 'loginFailed', reason: 'credentials' })
        throw invalidCredentials()
      }
      const time = now()
      if (authenticate) await ensureUserRow(userId, time)
      const session: SessionRecord = {
        id: newSessionId(),
        userId,
        clientId,
        key: newSessionKey(),
        counter: 0,
        createdAt: time,
        expiresAt: time + refreshTokenTtl,
        lastUsedAt: time,
        rotatedAt: time,
        revokedAt: null,
        revokedReason: null,
        userAgent: typeof meta.userAgent === 'string' ? meta.userAgent.slice(0, MAX_USER_AGENT_LENGTH) : null,
      }
      try {
        await store.createSession(session)
      } catch (error) {
        // the user was removed while this login checked the password: the same answer as an unknown user
        if (!isAuthError(error) || error.code !== 'ERR_NOT_FOUND') throw error
        stats.loginFailures++
        emit({ type: 'loginFailed', reason: 'credentials' })
        throw invalidCredentials()
      }
      // the password changed after it was checked (changePassword ended the sessions it found, not this one
      // yet to come): the old password gets no session
      // a failure of this check (the hasher's line is full) must not leave the new session behind either
      const holds = checked ? await stillTakes(checked, password).catch((error: unknown) => error) : true
      if (holds !== true) {
        await store.revokeSession(session.id, time, 'password-change')
        if (holds !== false) throw holds
        stats.loginFailures++
        emit({ type: 'loginFailed', reason: 'credentials' })
        throw invalidCredentials()
      }
      await enforceSessionCap(session, time)
      stats.logins++
      emit({ type: 'login', userId, sessionId: session.id })
      return issue(session, time)
    },

    async refresh(refreshToken, options = {}) {
      try {
        return await rotate(refreshToken, options.clientId)
      } catch (error) {
        if (error instanceof AuthError && error.code === 'ERR_INVALID_GRANT') stats.invalidGrants++
        throw error
      }
    },

    async logout(refreshToken) {
      const parsed = parseRefreshToken(refreshToken)
      if (!parsed) return
      const session = await store.getSession(parsed.sessionId)
      // a valid MAC proves the caller held a token of this family; an older one is enough to end it
      if (!session || !verifyRefreshTokenMac(parsed, session.key) || parsed.counter > session.counter) return
      if (await store.revokeSession(session.id, now(), 'logout')) {
        emit({ type: 'sessionsRevoked', userId: session.userId, reason: 'logout', count: 1 })
      }
    },

    async logoutAll(userId) {
      const count = await store.revokeUserSessions(userId, now(), 'logout-all')
      emit({ type: 'sessionsRevoked', userId, reason: 'logout-all', count })
      return count
    },

    async listSessions(userId) {
      const time = now()
      const sessions = await store.listSessions(userId, time)
      return sessions
        .filter((session) => isLive(session, time))
        .map((session) => ({
          id: session.id,
          clientId: session.clientId,
          createdAt: session.createdAt,
          lastUsedAt: session.lastUsedAt,
          expiresAt: session.expiresAt,
          userAgent: session.userAgent,
        }))
    },

    async revokeSession(userId, sessionId) {
      const session =
        typeof sessionId === 'string' && SESSION_ID_PATTERN.test(sessionId)
          ? await store.getSession(sessionId)
          : null
      // someone else's session gets the same answer as a missing one, so ids cannot be probed
      if (!session || session.userId !== userId || !isLive(session, now())) {
        throw new AuthError('ERR_NOT_FOUND', 'session not found')
      }
      await store.revokeSession(session.id, now(), 'user')
      emit({ type: 'sessionsRevoked', userId, reason: 'user', count: 1 })
    },

    async changePassword(userId, oldPassword, newPassword, { keepSessionId } = {}) {
      if (!isInput(oldPassword) || !isInput(newPassword)) {
        throw new AuthError(
          'ERR_INVALID_REQUEST',
          '"oldPassword" and "newPassword" must be non-empty strings',
        )
      }
      const user = await store.getUser(userId)
      if (!user || (await matchPassword(user.passwordHash, oldPassword)) === undefined)
        throw invalidCredentials()
      const hash = await passwords.hash(normalizePassword(newPassword))
      const time = now()
      // Whoever learned the old password may hold a session: end all but the one making the change. First,
      // so that a store failure before the new hash is stored leaves the old password, and the change can be
      // made again (the other order stored the new one, and a retry with the old password was refused while
      // those sessions lived on); and after it again, for a login that checked the old hash meanwhile
      let count = await store.revokeUserSessions(user.id, time, 'password-change', keepSessionId)
      const revoked = () =>
        emit({ type: 'sessionsRevoked', userId: user.id, reason: 'password-change', count })
      try {
        await store.setPasswordHash(user.id, hash, time)
        count += await store.revokeUserSessions(user.id, time, 'password-change', keepSessionId)
      } catch (error) {
        if (count > 0) revoked()
        throw error
      }
      revoked()
    },

    async verifyAccessToken(token, { expired = false } = {}) {
      const text = typeof token === 'string' ? token : ''
      const verify = async () => {
        const jwks = await keyring.jwks()
        const fingerprint = JSON.stringify(jwks)
        const algorithms = [...new Set(jwks.keys.map((key) => key.alg))] as VerifyAlgorithm[]
        // a logout: the token is verified as at its iat (its signature, issuer, audience and claims), so an
        // expired one names its session too; whether that session still lives is checked below, at now
        const issuedAt = expired ? issuedAtOf(text) : undefined
        if (issuedAt !== undefined && issuedAt * 1000 <= now())
          return createVerifier({ jwks, issuer, audience, algorithms, now: () => issuedAt * 1000 }).verify(
            text,
          )
        // one verifier per published key set: a rotation (here or on another instance) makes a new one
        if (verification?.fingerprint !== fingerprint) {
          verification = {
            fingerprint,
            verifier: createVerifier({ jwks, issuer, audience, algorithms, now }),
          }
        }
        return verification.verifier.verify(text)
      }
      // an unknown kid: the key set may come from a read that started before another instance stored the
      // key; a read started now is newer than the token
      const claims = await verify().catch((error: unknown) => {
        if (isVerifyError(error) && error.code === 'ERR_JWKS_NO_MATCHING_KEY') return verify()
        throw error
      })
      const { sub, sid } = claims
      // these routes manage sessions: an access token of a revoked session must not manage anything
      const session =
        typeof sid === 'string' && SESSION_ID_PATTERN.test(sid) ? await store.getSession(sid) : null
      if (!session || session.userId !== sub || !isLive(session, now())) {
        throw new AuthError('ERR_INVALID_TOKEN', 'the session of this access token has ended')
      }
      return { ...claims, sid: session.id, client_id: session.clientId }
    },

    async addUser(typedName, password) {
      // one name, one spelling: "é", "e\u0301" and "é " look the same and must not be two accounts
      const username = typeof typedName === 'string' ? canonicalName(typedName) : typedName
      if (!isInput(username) || username.length > MAX_USERNAME_LENGTH || hasControlCharacter(username)) {
        throw new AuthError(
          'ERR_INVALID_REQUEST',
          `"username" must be 1 to ${MAX_USERNAME_LENGTH} characters without control characters`,
        )
      }
      if (!isInput(password)) {
        throw new AuthError('ERR_INVALID_REQUEST', `"password" must be 1 to ${MAX_INPUT_LENGTH} characters`)
      }
      // an older row may hold the name in another form
      if (await findUser(username)) {
        throw new AuthError('ERR_USER_EXISTS', `user "${username}" already exists`)
      }
      const time = now()
      const user: UserRecord = {
        id: randomUUID(),
        username,
        passwordHash: await passwords.hash(normalizePassword(password)),
        createdAt: time,
        passwordChangedAt: time,
      }
      await store.createUser(user)
      return toUserInfo(user)
    },

    async removeUser(username) {
      // the store deletes the user's sessions with it, so every token of theirs dies now
      if (typeof username !== 'string' || username === '') return false
      const user = await findUser(username)
      return user !== null && store.deleteUser(user.username)
    },

    async listUsers() {
      const users = await store.listUsers()
      return users.filter((user) => !user.username.startsWith(EXTERNAL_USER_PREFIX)).map(toUserInfo)
    },

    pruneSessions() {
      const time = now()
      // a session unused for longer than the idle timeout is as dead as an expired one
      return store.deleteExpiredSessions(time, time - refreshIdleTimeout)
    },

    get stats() {
      return { ...stats }
    },
  }

  /** Rotation: one compare-and-swap of the counter, a grace for the previous token, reuse revokes the session; every failure is the same `invalidGrant()`. */
  async function rotate(refreshToken: unknown, expectedClientId: string | undefined): Promise<IssuedTokens> {
    // garbage never reaches the database
    const parsed = parseRefreshToken(refreshToken)
    if (!parsed) throw invalidGrant()
    let session = await store.getSession(parsed.sessionId)
    // set when this request found its token current and then lost the compare-and-swap to a rotation that
    // committed meanwhile: it is a duplicate of that rotation (a client's retry, a second tab), however long
    // the rotation waited in the database (a row lock, a full pool), so it gets the grace replay even when the
    // winner's `rotatedAt` (taken before it waited) is older than `reuseGrace`
    let raced = false
    for (let attempt = 0; attempt < 2; attempt++) {
      if (!session || !verifyRefreshTokenMac(parsed, session.key)) throw invalidGrant()
      const time = now()
      if (!isLive(session, time)) throw invalidGrant()
      // RFC 6749 section 6: the refresh token must have been issued to the client presenting it
      if (expectedClientId !== undefined && session.clientId !== expectedClientId) throw invalidGrant()
      // a counter from the future has a valid MAC only if the session key leaked: same answer
      if (parsed.counter > session.counter) throw invalidGrant()

      if (parsed.counter === session.counter) {
        const rotated = await store.rotateSession(session.id, parsed.counter, time)
        if (rotated) {
          stats.refreshes++
          emit({ type: 'refreshed', userId: rotated.userId, sessionId: rotated.id, grace: false })
          return issue(rotated, time)
        }
        // the compare-and-swap lost to a concurrent rotation or a revocation: judge the token
        // again against the row as it is now (the winner's successor is within the grace window)
        session = await store.getSession(parsed.sessionId)
        raced = true
        continue
      }

      // reuseGrace 0 turns the window off: even a replay in the millisecond of the rotation is reuse
      if (
        reuseGrace > 0 &&
        parsed.counter === session.counter - 1 &&
        (raced || time - session.rotatedAt <= reuseGrace)
      ) {
        // a retry (lost response, two tabs) within the grace window: the byte-identical current token
        stats.graceReplays++
        emit({ type: 'refreshed', userId: session.userId, sessionId: session.id, grace: true })
        return issue(session, time)
      }

      // any other older token is reuse: someone holds a copy, so the whole family dies
      // (RFC 9700 section 4.14.2). Revocation goes through the same row as rotation.
      await store.revokeSession(session.id, time, 'reuse')
      stats.reuseDetected++
      emit({ type: 'reuseDetected', userId: session.userId, sessionId: session.id })
      throw invalidGrant()
    }
    throw invalidGrant()
  }
}

// usernames are printed by the CLI and logged by apps: control characters have no place in them
function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code < 0x20 || code === 0x7f) return true
  }
  return false
}

/**
 * The one spelling a username is stored in: NFC, as PRECIS usernames (RFC 8265 section 3.3), without the
 * leading or trailing white space a phone keyboard's autocompletion adds.
 */
function canonicalName(username: string): string {
  return username.normalize('NFC').trim()
}

/** `username` as typed, then canonical, then canonical in NFD, without repeats (one form for "ada") */
function nameForms(username: string): string[] {
  const canonical = canonicalName(username)
  return [...new Set([username, canonical, canonical.normalize('NFD')])]
}

/**
 * NIST SP 800-63B section 5.1.1.2: a password is normalized (NFKC) before it is hashed, so it matches
 * whether the keyboard composed "ä" as one code point or as "a" plus a combining mark.
 */
function normalizePassword(password: string): string {
  return password.normalize('NFKC')
}

/** the spellings a stored hash may be of: the normalized one, then (hashes made before) the one typed */
function passwordSpellings(password: string): string[] {
  const normalized = normalizePassword(password)
  return normalized === password ? [normalized] : [normalized, password]
}

function isInput(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_INPUT_LENGTH
}

function toUserInfo(user: UserRecord): UserInfo {
  return { id: user.id, username: user.username, createdAt: user.createdAt }
}
