import Database from 'better-sqlite3'
import { AuthError } from '../errors.js'
import type { KeyRecord, SessionRecord, TokenStore, UserRecord } from './store.js'

/**
 * Options of `createSqliteStore`.
 * @example
 * const options: SqliteStoreOptions = { filename: '/var/lib/tokenflow/tokenflow.db', synchronous: 'FULL' }
 */
export interface SqliteStoreOptions {
  /**
   * Path of the database file, created when missing (its directory must exist); `':memory:'` for tests.
   * @default 'tokenflow.db'
   */
  filename?: string | undefined
  /**
   * `PRAGMA synchronous`. `'FULL'` fsyncs the WAL on every commit, so a rotation that resolved
   * survives a power cut; `'NORMAL'` is faster but may lose the last commits on power loss
   * (never on a process crash), which can hand a client a refresh token the database forgot.
   * @default 'FULL'
   */
  synchronous?: 'FULL' | 'NORMAL' | undefined
  /**
   * How long a write waits for another connection's lock before failing, in ms.
   * @default 5000
   */
  busyTimeout?: number | undefined
  /**
   * Group commit: the rotations that arrive in one event-loop turn are applied in one
   * `BEGIN IMMEDIATE … COMMIT` transaction, so they share one fsync, and each resolves only after
   * that transaction committed. Each rotation is still its own compare-and-swap, in arrival order.
   * `false` commits every rotation on its own.
   * @default true
   */
  groupCommit?: boolean | undefined
  /**
   * How many rows one statement of `deleteExpiredSessions` looks at. The prune walks the table in
   * rowid order, one span of this many rows per statement, and lets the event loop run between two
   * statements: better-sqlite3 is synchronous, and one `DELETE` over a million sessions blocked
   * every request for about 1.4 s (`tsx bench/run.ts prune`). Larger spans prune faster, in longer turns.
   * @default 1000
   */
  pruneBatchSize?: number | undefined
}

/**
 * The schema, one entry per version, applied in order and never edited once released:
 * a change is a new entry. Timestamps are INTEGER epoch ms; STRICT makes SQLite refuse a
 * value of the wrong type instead of storing it.
 */
const migrations: readonly string[] = [
  `CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    password_changed_at INTEGER NOT NULL
  ) STRICT;
  CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    key BLOB NOT NULL,
    counter INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    rotated_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoked_reason TEXT,
    user_agent TEXT
  ) STRICT;
  CREATE INDEX sessions_user_id ON sessions (user_id);
  CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    private_jwk TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
  ) STRICT;`,
  // 2: a retired key never signs again, so its private half is not kept (the public half stays in the JWKS)
  `UPDATE signing_keys SET private_jwk = '' WHERE retired_at IS NOT NULL;`,
]

/** A rotation waiting for its group commit. */
interface PendingRotation {
  id: string
  expectedCounter: number
  now: number
  resolve: (session: SessionRecord | null) => void
  reject: (error: unknown) => void
}

interface SessionRow {
  id: string
  user_id: string
  client_id: string
  key: Uint8Array
  counter: number
  created_at: number
  expires_at: number
  last_used_at: number
  rotated_at: number
  revoked_at: number | null
  revoked_reason: string | null
  user_agent: string | null
}

interface UserRow {
  id: string
  username: string
  password_hash: string
  created_at: number
  password_changed_at: number
}

interface KeyRow {
  kid: string
  alg: string
  private_jwk: string
  public_jwk: string
  created_at: number
  retired_at: number | null
}

/**
 * The embedded default store: one SQLite file in WAL mode, through better-sqlite3.
 * Call `migrate()` once before use. Several processes may open the same file.
 * @example
 * const store = createSqliteStore({ filename: './data/tokenflow.db' })
 * await store.migrate()
 */
export function createSqliteStore({
  filename = 'tokenflow.db',
  synchronous = 'FULL',
  busyTimeout = 5000,
  groupCommit = true,
  pruneBatchSize = 1000,
}: SqliteStoreOptions = {}): TokenStore {
  if (typeof filename !== 'string' || filename === '') {
    throw new AuthError('ERR_CONFIG', '"filename" must be a non-empty string')
  }
  if (synchronous !== 'FULL' && synchronous !== 'NORMAL') {
    throw new AuthError('ERR_CONFIG', '"synchronous" must be "FULL" or "NORMAL"')
  }
  if (!Number.isSafeInteger(busyTimeout) || busyTimeout < 0) {
    throw new AuthError('ERR_CONFIG', '"busyTimeout" must be a non-negative integer (ms)')
  }
  if (typeof groupCommit !== 'boolean') {
    throw new AuthError('ERR_CONFIG', '"groupCommit" must be a boolean')
  }
  if (!Number.isSafeInteger(pruneBatchSize) || pruneBatchSize < 1) {
    throw new AuthError('ERR_CONFIG', '"pruneBatchSize" must be a positive integer')
  }

  let db: Database.Database
  try {
    db = new Database(filename, { timeout: busyTimeout })
    // a file that exists but is not a database, or cannot be written, fails on the first pragma
    db.pragma('journal_mode = WAL')
    db.pragma(`synchronous = ${synchronous}`)
    db.pragma('foreign_keys = ON')
  } catch (error) {
    throw new AuthError('ERR_CONFIG', `cannot open sqlite database "${filename}": ${messageOf(error)}`, {
      cause: error,
    })
  }

  // prepared once, on first use: they cannot be prepared before `migrate()` made the tables
  let prepared: ReturnType<typeof prepare> | undefined
  const statements = () => {
    if (prepared) return prepared
    try {
      prepared = prepare(db)
    } catch (error) {
      if (/^no such table/.test(messageOf(error))) {
        throw new AuthError('ERR_CONFIG', 'the database has no tokenflow tables: call "migrate()" first', {
          cause: error,
        })
      }
      throw error
    }
    return prepared
  }

  // the rotation compare-and-swap
  const rotate = (id: string, expectedCounter: number, now: number): SessionRecord | null => {
    const row = statements().rotate.get(now, now, id, expectedCounter, now) as SessionRow | undefined
    return row ? toSession(row) : null
  }

  // Group commit. With synchronous=FULL every commit waits for an fsync, which costs more than the
  // rest of a refresh put together (issue 6: about 385 refreshes/s with one commit each, against
  // 5,400/s without a database); rotations queued in one event-loop turn share one transaction and
  // so one fsync. A caller's promise settles only after COMMIT returned, so every rotation that
  // was answered is durable, exactly as with one commit per rotation.
  let queue: PendingRotation[] = []
  const flush = () => {
    const batch = queue
    queue = []
    if (batch.length === 0) return
    const results: (SessionRecord | null)[] = []
    try {
      // IMMEDIATE takes the write lock first: a BEGIN DEFERRED that later needs it could fail with
      // SQLITE_BUSY halfway through the batch instead of waiting on busy_timeout
      db.exec('BEGIN IMMEDIATE')
      // one compare-and-swap per rotation, in arrival order: a second rotation of the same session
      // sees the first one's counter and loses, as it would have if they had been serial
      for (const { id, expectedCounter, now } of batch) results.push(rotate(id, expectedCounter, now))
      db.exec('COMMIT')
    } catch (error) {
      // nothing of the batch was committed, so no caller may be told its rotation happened
      if (db.open && db.inTransaction) {
        try {
          db.exec('ROLLBACK')
        } catch {
          // the connection already rolled back (SQLite does after some I/O errors)
        }
      }
      for (const pending of batch) pending.reject(error)
      return
    }
    for (const [i, pending] of batch.entries()) pending.resolve(results[i]!)
  }

  const applyMigrations = db.transaction(() => {
    db.exec(
      'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL) STRICT',
    )
    const current = db
      .prepare('SELECT coalesce(max(version), 0) FROM schema_migrations')
      .pluck()
      .get() as number
    if (current > migrations.length) {
      throw new AuthError(
        'ERR_CONFIG',
        `database schema version ${current} is newer than this @tokenflow/server supports (${migrations.length})`,
      )
    }
    const record = db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)')
    for (let version = current + 1; version <= migrations.length; version++) {
      db.exec(migrations[version - 1]!)
      record.run(version, Date.now())
    }
  })

  return {
    async migrate() {
      // IMMEDIATE takes the write lock up front, so two processes migrating at once queue on busy_timeout
      applyMigrations.immediate()
    },
    async close() {
      // rotations already queued are committed and answered, not dropped
      flush()
      if (db.open) db.close()
    },

    async createSession(session) {
      try {
        statements().insertSession.run(
          session.id,
          session.userId,
          session.clientId,
          toBuffer(session.key),
          session.counter,
          session.createdAt,
          session.expiresAt,
          session.lastUsedAt,
          session.rotatedAt,
          session.revokedAt,
          session.revokedReason,
          session.userAgent,
        )
      } catch (error) {
        if ((error as { code?: unknown }).code === 'SQLITE_CONSTRAINT_FOREIGNKEY') {
          throw new AuthError('ERR_NOT_FOUND', `user "${session.userId}" does not exist`, { cause: error })
        }
        throw error
      }
    },
    async getSession(id) {
      const row = statements().getSession.get(id) as SessionRow | undefined
      return row ? toSession(row) : null
    },
    async rotateSession(id, expectedCounter, now) {
      if (!groupCommit) return rotate(id, expectedCounter, now)
      // a store used before migrate() fails here, for this caller alone
      statements()
      return new Promise((resolve, reject) => {
        // the first rotation of a turn schedules the commit: setImmediate runs after the I/O
        // callbacks of this turn, so every request that arrived with it is in the batch
        if (queue.push({ id, expectedCounter, now, resolve, reject }) === 1) setImmediate(flush)
      })
    },
    async revokeSession(id, now, reason) {
      return statements().revokeSession.run(now, reason, id).changes === 1
    },
    async revokeUserSessions(userId, now, reason, exceptId) {
      return statements().revokeUserSessions.run(now, reason, userId, now, exceptId ?? null).changes
    },
    async listSessions(userId, now) {
      return (statements().listSessions.all(userId, now) as SessionRow[]).map(toSession)
    },
    async deleteExpiredSessions(before, idleBefore = Number.MIN_SAFE_INTEGER) {
      const { pruneSpanEnd, pruneSpan } = statements()
      // lets the event loop run; false when the store was closed meanwhile (the server shutting
      // down): the rest waits for the next prune
      const yieldTurn = async () => {
        await new Promise(setImmediate)
        return db.open
      }
      let deleted = 0
      // One statement per span of `pruneBatchSize` rows, in rowid order, and the event loop runs in
      // between: the work of one turn stays bounded however large the table and however few of its
      // rows are dead, and each row is looked at once. Every span is its own transaction, so a
      // rotation (or its group commit) lands between two of them, never inside one; a session it
      // rotates is live again and stays.
      for (let after = Number.MIN_SAFE_INTEGER; ; ) {
        const end = pruneSpanEnd.get(after, pruneBatchSize - 1) as number | undefined
        // the last span runs to the end of the table
        const { changes } = pruneSpan.run(after, end ?? Number.MAX_SAFE_INTEGER, before, before, idleBefore)
        deleted += changes
        if (end === undefined) return deleted
        after = end
        if (!(await yieldTurn())) return deleted
        if (changes > 0) {
          // SQLite checkpoints the WAL in the commit that takes it past 1000 pages. The deletes of a
          // span dirty pages all over the indexes, so every few spans one of them also copied ~4 MB
          // into the database file and fsynced it: 25-35 ms turns at a million sessions. This span's
          // pages alone, in a turn of their own, take a few ms. PASSIVE never waits for other
          // connections (a busy checkpoint lock only shows in the result row, it does not throw)
          db.pragma('wal_checkpoint(PASSIVE)')
          if (!(await yieldTurn())) return deleted
        }
      }
    },

    async createUser(user) {
      const { changes } = statements().insertUser.run(
        user.id,
        user.username,
        user.passwordHash,
        user.createdAt,
        user.passwordChangedAt,
      )
      if (changes === 0) throw new AuthError('ERR_USER_EXISTS', `user "${user.username}" already exists`)
    },
    async getUserByName(username) {
      const row = statements().getUserByName.get(username) as UserRow | undefined
      return row ? toUser(row) : null
    },
    async getUser(id) {
      const row = statements().getUser.get(id) as UserRow | undefined
      return row ? toUser(row) : null
    },
    async listUsers() {
      return (statements().listUsers.all() as UserRow[]).map(toUser)
    },
    async setPasswordHash(userId, passwordHash, changedAt, expectedHash) {
      if (expectedHash !== undefined) {
        statements().setPasswordHashIf.run(passwordHash, changedAt, userId, expectedHash)
        return
      }
      if (statements().setPasswordHash.run(passwordHash, changedAt, userId).changes === 0) {
        throw new AuthError('ERR_NOT_FOUND', `user "${userId}" does not exist`)
      }
    },
    async deleteUser(username) {
      return statements().deleteUser.run(username).changes === 1
    },

    async listKeys() {
      return (statements().listKeys.all() as KeyRow[]).map(toKey)
    },
    async insertKey(key) {
      const { changes } = statements().insertKey.run(
        key.kid,
        key.alg,
        key.privateJwk,
        key.publicJwk,
        key.createdAt,
        key.retiredAt,
      )
      if (changes === 0) throw new AuthError('ERR_CONFIG', `signing key "${key.kid}" already exists`)
    },
    async retireKey(kid, retiredAt) {
      if (statements().retireKey.run(retiredAt, kid).changes === 0) {
        throw new AuthError('ERR_NOT_FOUND', `signing key "${kid}" does not exist`)
      }
    },
  }
}

function prepare(db: Database.Database) {
  return {
    insertSession: db.prepare(
      `INSERT INTO sessions (id, user_id, client_id, key, counter, created_at, expires_at, last_used_at,
        rotated_at, revoked_at, revoked_reason, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    getSession: db.prepare('SELECT * FROM sessions WHERE id = ?'),
    rotate: db.prepare(
      `UPDATE sessions SET counter = counter + 1, rotated_at = ?, last_used_at = ?
       WHERE id = ? AND counter = ? AND revoked_at IS NULL AND expires_at > ? RETURNING *`,
    ),
    // `revoked_at IS NULL` keeps the first revocation's time and reason
    revokeSession: db.prepare(
      'UPDATE sessions SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL',
    ),
    revokeUserSessions: db.prepare(
      `UPDATE sessions SET revoked_at = ?, revoked_reason = ?
       WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? AND id IS NOT ?`,
    ),
    listSessions: db.prepare(
      `SELECT * FROM sessions WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?
       ORDER BY created_at DESC, id DESC`,
    ),
    // the rowid that ends the prune's next span: the (OFFSET + 1)th row after `rowid > ?`
    pruneSpanEnd: db
      .prepare('SELECT rowid FROM sessions WHERE rowid > ? ORDER BY rowid LIMIT 1 OFFSET ?')
      .pluck(),
    pruneSpan: db.prepare(
      `DELETE FROM sessions WHERE rowid > ? AND rowid <= ?
       AND (expires_at < ? OR revoked_at < ? OR last_used_at < ?)`,
    ),
    insertUser: db.prepare(
      `INSERT INTO users (id, username, password_hash, created_at, password_changed_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (username) DO NOTHING`,
    ),
    getUserByName: db.prepare('SELECT * FROM users WHERE username = ?'),
    getUser: db.prepare('SELECT * FROM users WHERE id = ?'),
    listUsers: db.prepare('SELECT * FROM users ORDER BY created_at, username'),
    setPasswordHash: db.prepare('UPDATE users SET password_hash = ?, password_changed_at = ? WHERE id = ?'),
    setPasswordHashIf: db.prepare(
      'UPDATE users SET password_hash = ?, password_changed_at = ? WHERE id = ? AND password_hash = ?',
    ),
    deleteUser: db.prepare('DELETE FROM users WHERE username = ?'),
    listKeys: db.prepare('SELECT * FROM signing_keys ORDER BY created_at DESC, kid DESC'),
    insertKey: db.prepare(
      `INSERT INTO signing_keys (kid, alg, private_jwk, public_jwk, created_at, retired_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (kid) DO NOTHING`,
    ),
    // a key retired twice keeps its first retirement time; its private half is dropped: it never signs again
    retireKey: db.prepare(
      "UPDATE signing_keys SET retired_at = coalesce(retired_at, ?), private_jwk = '' WHERE kid = ?",
    ),
  }
}

function toSession(row: SessionRow): SessionRecord {
  return {
    id: row.id,
    userId: row.user_id,
    clientId: row.client_id,
    key: new Uint8Array(row.key),
    counter: row.counter,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    lastUsedAt: row.last_used_at,
    rotatedAt: row.rotated_at,
    revokedAt: row.revoked_at,
    revokedReason: row.revoked_reason,
    userAgent: row.user_agent,
  }
}

function toUser(row: UserRow): UserRecord {
  return {
    id: row.id,
    username: row.username,
    passwordHash: row.password_hash,
    createdAt: row.created_at,
    passwordChangedAt: row.password_changed_at,
  }
}

function toKey(row: KeyRow): KeyRecord {
  return {
    kid: row.kid,
    alg: row.alg,
    privateJwk: row.private_jwk,
    publicJwk: row.public_jwk,
    createdAt: row.created_at,
    retiredAt: row.retired_at,
  }
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}
