/**
 * The storage contract every server store implements (SQLite, PostgreSQL).
 * All times are epoch milliseconds. Both stores run the same contract suite,
 * `describeTokenStore(make)` in `test/helpers/describe-token-store.ts`.
 */

/** One login session: the refresh-token family. Only the per-session key and the counter are stored, never a token. */
export interface SessionRecord {
  /** 16 random bytes, hex (32 chars) */
  id: string
  userId: string
  clientId: string
  /** per-session HMAC key, 32 random bytes */
  key: Uint8Array
  /** the counter of the one current refresh token */
  counter: number
  createdAt: number
  /** absolute expiry: `createdAt + refreshTokenTtl` */
  expiresAt: number
  /** last successful refresh (or the login); idle expiry is `lastUsedAt + refreshIdleTimeout` */
  lastUsedAt: number
  /** when `counter` last moved; the previous token is honoured within `reuseGrace` of this */
  rotatedAt: number
  revokedAt: number | null
  /** why it was revoked: 'logout' | 'reuse' | 'logout-all' | 'password-change' | 'admin' | … */
  revokedReason: string | null
  userAgent: string | null
}

/** A user of the built-in users table, as stored. */
export interface UserRecord {
  id: string
  username: string
  /** PHC string (Argon2id) */
  passwordHash: string
  createdAt: number
  passwordChangedAt: number
}

/** A signing key, as JWKs (JSON strings). Private keys never leave the store except to the issuer. */
export interface KeyRecord {
  kid: string
  alg: string
  /** '' once the key is retired: `retireKey` drops the private half, which never signs again */
  privateJwk: string
  publicJwk: string
  /**
   * when it starts signing: a rotation stores its key `activationDelay` ahead, so that the JWKS publishes
   * it before any token carries its `kid`
   */
  createdAt: number
  /** when it stopped signing; it stays in JWKS until `retiredAt + accessTokenTtl + skew` */
  retiredAt: number | null
}

/**
 * Where users, sessions and signing keys live: `createSqliteStore()`, `createPostgresStore()`, or your own.
 * All times are epoch ms. Call `migrate()` before anything else.
 */
export interface TokenStore {
  /** apply versioned migrations; idempotent, safe to call from several instances at once */
  migrate(): Promise<void>
  /** release what the store opened (a PostgreSQL client you passed in stays open) */
  close(): Promise<void>

  createSession(session: SessionRecord): Promise<void>
  getSession(id: string): Promise<SessionRecord | null>
  /**
   * The rotation compare-and-swap:
   * `UPDATE sessions SET counter = counter + 1, rotated_at = now, last_used_at = now
   *  WHERE id = ? AND counter = ? AND revoked_at IS NULL AND expires_at > now RETURNING *`.
   * Resolves to the updated row, or null when another rotation or a revocation won.
   * It resolves only once the change is durable.
   */
  rotateSession(id: string, expectedCounter: number, now: number): Promise<SessionRecord | null>
  /**
   * revoke one session (no-op when already revoked); resolves true when this call revoked it. With
   * `expectedLastUsedAt` (the session cap), only while the session was last used then: one used since the
   * caller looked at it stays
   */
  revokeSession(id: string, now: number, reason: string, expectedLastUsedAt?: number): Promise<boolean>
  /** revoke every live session of a user, except `exceptId`; resolves to how many */
  revokeUserSessions(userId: string, now: number, reason: string, exceptId?: string): Promise<number>
  /** live sessions of a user (not revoked, not expired at `now`), newest first */
  listSessions(userId: string, now: number): Promise<SessionRecord[]>
  /**
   * delete sessions that expired or were revoked before `before`, and those last used before `idleBefore`
   * (dead by the idle timeout); resolves to how many. It runs while the server serves: both stores
   * delete in bounded batches, each its own short transaction, so a big table never holds up
   * rotations (or, in SQLite, the event loop) for long, and a session rotated meanwhile stays
   */
  deleteExpiredSessions(before: number, idleBefore?: number): Promise<number>

  createUser(user: UserRecord): Promise<void>
  getUserByName(username: string): Promise<UserRecord | null>
  getUser(id: string): Promise<UserRecord | null>
  listUsers(): Promise<UserRecord[]>
  /**
   * replace a user's hash (ERR_NOT_FOUND for an unknown user). With `expectedHash` (a rehash on login), only
   * while the stored hash is still that one: a password change made meanwhile wins, and nothing happens
   */
  setPasswordHash(
    userId: string,
    passwordHash: string,
    changedAt: number,
    expectedHash?: string,
  ): Promise<void>
  /** resolves true when a user was deleted; deleting a user deletes its sessions */
  deleteUser(username: string): Promise<boolean>

  listKeys(): Promise<KeyRecord[]>
  insertKey(key: KeyRecord): Promise<void>
  /**
   * stores `key` only while the store holds no live key (`retiredAt: null`), checked and written as one step
   * that excludes the same call from another instance: of instances starting together over an empty
   * database, one key wins and the others read it. Resolves false, storing nothing, when a live key was there
   */
  insertFirstKey(key: KeyRecord): Promise<boolean>
  retireKey(kid: string, retiredAt: number): Promise<void>
}
