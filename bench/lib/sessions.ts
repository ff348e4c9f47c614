/**
 * Sessions for the refresh benchmarks, and the chains of refresh tokens the load walks: every
 * request presents the current token of its session and the answer's token replaces it.
 */

import {
  createSqliteStore,
  encodeRefreshToken,
  newSessionId,
  newSessionKey,
  type SessionRecord,
  type TokenStore,
} from '@tokenflow/server'
import Database from 'better-sqlite3'

/** The user every bench session belongs to. */
export const BENCH_USER_ID = 'bench-user'

const DAY = 86_400_000

/** One session as the load sees it: the token to present next. */
export interface Chain {
  id: string
  key: Uint8Array
  counter: number
  token: string
  /** refused once (`invalid_grant` or another error): never sent again */
  dead: boolean
}

/** A session in a form that survives JSON (IPC to a server process). */
export type SerializedSession = Omit<SessionRecord, 'key'> & { key: string }

/**
 * Makes `count` fresh sessions of `BENCH_USER_ID`, valid for 30 days.
 * @example
 * const sessions = createSessions(20_000)
 */
export function createSessions(count: number, now = Date.now()): SessionRecord[] {
  return Array.from({ length: count }, () => ({
    id: newSessionId(),
    userId: BENCH_USER_ID,
    clientId: 'tokenflow',
    key: newSessionKey(),
    counter: 0,
    createdAt: now,
    expiresAt: now + 30 * DAY,
    lastUsedAt: now,
    rotatedAt: now,
    revokedAt: null,
    revokedReason: null,
    userAgent: 'autocannon',
  }))
}

/**
 * The token chains of `sessions`, each at its session's current counter; every target gets its own copy.
 * @example
 * const chains = createChains(sessions)
 */
export function createChains(sessions: readonly SessionRecord[]): Chain[] {
  return sessions.map(({ id, key, counter }) => ({
    id,
    key,
    counter,
    token: encodeRefreshToken({ sessionId: id, counter, key }),
    dead: false,
  }))
}

/**
 * Writes the bench user and `sessions` into a migrated store, `concurrency` at a time.
 * @example
 * await seedStore(store, sessions, { concurrency: 16 })
 */
export async function seedStore(
  store: TokenStore,
  sessions: readonly SessionRecord[],
  { concurrency = 1 }: { concurrency?: number } = {},
): Promise<void> {
  const now = Date.now()
  await store.createUser({
    id: BENCH_USER_ID,
    username: 'bench',
    // never used to log in: the login bench adds its own user with a real hash
    passwordHash: '$argon2id$v=19$m=19456,t=2,p=1$bm9uZQ$bm9uZQ',
    createdAt: now,
    passwordChangedAt: now,
  })
  let next = 0
  const worker = async () => {
    while (next < sessions.length) await store.createSession(sessions[next++]!)
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
}

/**
 * Creates a migrated SQLite file holding the bench user and `sessions`. The rows go in through one
 * transaction of a second connection: one insert per commit would take seconds for 20k sessions.
 * @example
 * await seedSqliteFile('/tmp/bench/seed.db', sessions)
 */
export async function seedSqliteFile(filename: string, sessions: readonly SessionRecord[]): Promise<void> {
  const store = createSqliteStore({ filename, synchronous: 'NORMAL' })
  await store.migrate()
  await seedStore(store, [])
  await store.close()
  const db = new Database(filename)
  try {
    // the columns of migration 1 in packages/server/src/stores/sqlite.ts, which is never edited
    const insert = db.prepare(
      `INSERT INTO sessions (id, user_id, client_id, key, counter, created_at, expires_at, last_used_at,
        rotated_at, revoked_at, revoked_reason, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    )
    db.transaction(() => {
      for (const session of sessions) {
        insert.run(
          session.id,
          session.userId,
          session.clientId,
          Buffer.from(session.key),
          session.counter,
          session.createdAt,
          session.expiresAt,
          session.lastUsedAt,
          session.rotatedAt,
          session.revokedAt,
          session.revokedReason,
          session.userAgent,
        )
      }
    })()
  } finally {
    db.close()
  }
}

/**
 * Turns a session into JSON-safe form.
 * @example
 * child.send({ sessions: sessions.map(serializeSession) })
 */
export function serializeSession(session: SessionRecord): SerializedSession {
  return { ...session, key: Buffer.from(session.key).toString('base64url') }
}

/**
 * The inverse of `serializeSession`.
 * @example
 * const store = createNoopStore(message.sessions.map(deserializeSession))
 */
export function deserializeSession(session: SerializedSession): SessionRecord {
  return { ...session, key: new Uint8Array(Buffer.from(session.key, 'base64url')) }
}
