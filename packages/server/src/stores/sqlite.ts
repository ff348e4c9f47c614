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
   * How long an operation waits for another connection's lock before failing with SQLITE_BUSY, in ms,
   * counted from its own start. The wait does not block the event loop: the writes waiting for the
   * lock are tried again in the order they were asked for (rotations under group commit in a queue of
   * their own), the first one after short pauses (5-10 ms, doubling up to 50-100 ms) and the rest as soon
   * as it ran, and other requests are served meanwhile. `0` fails at once. It also bounds the wait at
   * open for another process writing the file (that wait blocks, as it runs in the constructor).
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
   * every request for about 1.7 s (`tsx bench/run.ts prune`, bench/results/prune.json). Larger spans prune faster, in longer turns.
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

/** An operation waiting out another connection's lock. */
interface Waiter {
  operation: () => unknown
  /** `performance.now()` when it was asked for: its `busyTimeout` runs from here */
  started: number
  resolve: (value: unknown) => void
  reject: (error: unknown) => void
}

/** A rotation waiting for its group commit. */
interface PendingRotation {
  id: string
  expectedCounter: number
  now: number
  /** `performance.now()` when it was asked for: its `busyTimeout` runs from here */
  started: number
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
  // the driver refuses more (a timer's limit, 2^31 - 1 ms), with a message about an option it names "timeout"
  if (!Number.isSafeInteger(busyTimeout) || busyTimeout < 0 || busyTimeout > 2_147_483_647) {
    throw new AuthError('ERR_CONFIG', '"busyTimeout" must be an integer from 0 to 2147483647 (ms)')
  }
  if (typeof groupCommit !== 'boolean') {
    throw new AuthError('ERR_CONFIG', '"groupCommit" must be a boolean')
  }
  if (!Number.isSafeInteger(pruneBatchSize) || pruneBatchSize < 1) {
    throw new AuthError('ERR_CONFIG', '"pruneBatchSize" must be a positive integer')
  }

  let db: Database.Database | undefined
  try {
    // The pragmas wait up to busyTimeout for a lock inside the driver, blocking: this runs once, at
    // startup, in a constructor that cannot wait asynchronously (turning on WAL needs a lock another
    // process may hold)
    db = new Database(filename, { timeout: busyTimeout })
    // a file that exists but is not a database, or cannot be written, fails on the first pragma
    const mode = switchToWal(db, busyTimeout)
    // the store relies on WAL: readers that never wait for writers, and commits that fail only on I/O
    // errors. A file system without the shared memory WAL needs keeps the old journal, and says so here
    if (mode !== 'wal' && mode !== 'memory') throw new Error(`journal_mode is "${mode}", not "wal"`)
    db.pragma(`synchronous = ${synchronous}`)
    db.pragma('foreign_keys = ON')
    // Every other statement fails at once with SQLITE_BUSY when another connection holds the lock it
    // needs, and `retryOnBusy` waits with timers instead. The driver's busy handler sleeps inside the
    // synchronous call: a write waited up to busyTimeout with the event loop blocked, so every other
    // request (even the JWKS) waited behind it, and 8 writes behind a lock answered at 5, 10 … 40 s.
    // 0 rather than a few ms: each attempt would block that long, and a lock waited out blocked the loop
    // for all that time. It costs
    // nothing elsewhere: the checkpoints SQLite runs itself (after a commit, at close) and the prune's
    // are PASSIVE, which never call the busy handler, and readers in WAL mode do not wait for writers;
    // the rare SQLITE_BUSY a reader does see (another connection recovering the WAL after a crash) is
    // retried the same way. Between server instances on one file, a write that meets another's commit
    // now waits 5-10 ms for it rather than ~1 ms: the price of not blocking.
    db.pragma('busy_timeout = 0')
  } catch (error) {
    // opened, then refused (not a database, locked): its file descriptor is not kept
    db?.close()
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

  // Operations waiting out another connection's lock (their promises), and the retry of a group-commit
  // batch: close() lets them finish first
  const waiting = new Set<Promise<unknown>>()
  const track = (promise: Promise<unknown>) => {
    waiting.add(promise)
    const done = () => waiting.delete(promise)
    promise.then(done, done)
  }

  // Whether an operation that failed with `error` may simply run again. Only when the failure is
  // SQLITE_BUSY (another connection holds a lock, waiting may help; SQLITE_LOCKED is a conflict
  // inside this connection, which waiting does not end) and nothing of it is left: a single statement
  // outside a transaction is atomic, and a transaction is rolled back whole (better-sqlite3 does it
  // for db.transaction(); a BEGIN that failed opened none). Every transaction of this store opens and
  // ends within one synchronous call, so one still open here is the failed operation's own.
  const mayRetry = (error: unknown): boolean => {
    if (!isBusy(error) || !db.open) return false
    if (db.inTransaction) {
      try {
        db.exec('ROLLBACK')
      } catch {
        // still open: not retried
      }
    }
    return !db.inTransaction
  }

  // Operations waiting out another connection's lock, in the order they were asked for. One timer tries
  // the first of them; once it runs, the next ones run in the same turn, until the queue is empty or the
  // lock is taken again. Each waiting operation used to retry on its own timer: 3,000 writes behind a 1 s
  // lock made 3,000 tries every 50-100 ms and kept the event loop 99% busy (p99 delay 173 ms). All have
  // the same busyTimeout and join in order, so their deadlines are in queue order too.
  const waiters: Waiter[] = []
  let waitersTimer: NodeJS.Timeout | undefined
  // how many times in a row the first waiter found the lock taken, for the pause before its next try
  let waitersMisses = 0
  // how long one turn may run waiting operations before it lets the event loop run (ms): with
  // synchronous=FULL each write is an fsync, and a long queue run at once would block the loop
  const WAITERS_TURN = 10

  const scheduleWaiters = (delay: number) => {
    if (waitersTimer) clearTimeout(waitersTimer)
    waitersTimer = setTimeout(runWaiters, Math.max(0, delay))
  }
  const runWaiters = () => {
    waitersTimer = undefined
    const turnEnd = performance.now() + WAITERS_TURN
    while (waiters.length > 0) {
      const first = waiters[0]!
      try {
        const value = first.operation()
        waiters.shift()
        waitersMisses = 0
        first.resolve(value)
      } catch (error) {
        if (!mayRetry(error)) {
          waiters.shift()
          first.reject(error)
          continue
        }
        // still locked: those whose busyTimeout is over give up (the first one had its last try at its
        // deadline), the rest wait on
        const now = performance.now()
        while (waiters.length > 0 && now - waiters[0]!.started >= busyTimeout) waiters.shift()!.reject(error)
        if (waiters.length > 0) {
          // the pause ends by the first one's deadline, for its last try there
          scheduleWaiters(Math.min(backoff(waitersMisses++), waiters[0]!.started + busyTimeout - now))
        } else {
          waitersMisses = 0
        }
        return
      }
      if (waiters.length > 0 && performance.now() >= turnEnd) {
        scheduleWaiters(0)
        return
      }
    }
  }

  /**
   * Runs `operation` (one statement, or one transaction rolled back whole when it throws). While it
   * fails with SQLITE_BUSY, it waits in the queue of operations waiting out the lock, with the event loop
   * running, until it runs or `busyTimeout` ms have passed since it was asked for, and then throws the
   * last SQLITE_BUSY. Without a lock held elsewhere this is the synchronous call it always was. A write
   * asked for while others wait goes behind them, so these writes apply in the order they were asked for
   * (rotations under group commit wait in their own queue, in order among themselves); a read
   * (`read: true`) is tried at once all the same, and again on its own, as in WAL mode readers do not wait
   * for writers.
   */
  const retryOnBusy = <T>(operation: () => T, { read = false } = {}): T | Promise<T> => {
    const started = performance.now()
    if (read || waiters.length === 0) {
      try {
        return operation()
      } catch (error) {
        if (!mayRetry(error) || busyTimeout === 0) throw error
        // a read that meets a lock (another connection recovering the WAL) tries again on its own: it
        // must not wait behind the writes queued for the write lock, which readers do not need
        if (read) {
          const retry = readAgain(operation, started, error)
          track(retry)
          return retry
        }
      }
    }
    const waited = new Promise<T>((resolve, reject) => {
      waiters.push({ operation, started, resolve: resolve as (value: unknown) => void, reject })
    })
    track(waited)
    if (waiters.length === 1) scheduleWaiters(Math.min(backoff(waitersMisses++), busyTimeout))
    return waited
  }

  /** Runs a read again after pauses, until it runs or `busyTimeout` has passed since `started`. */
  const readAgain = async <T>(operation: () => T, started: number, error: unknown): Promise<T> => {
    let last = error
    for (let attempt = 0; ; attempt++) {
      const left = started + busyTimeout - performance.now()
      if (left <= 0) throw last
      // the last pause ends at the deadline, for one more attempt there
      await sleep(Math.min(backoff(attempt), left))
      try {
        return operation()
      } catch (error) {
        if (!mayRetry(error)) throw error
        last = error
      }
    }
  }

  // the rotation compare-and-swap
  const rotate = (id: string, expectedCounter: number, now: number): SessionRecord | null => {
    // all(), not get(): outside a transaction (groupCommit false) the statement commits when it is reset,
    // and better-sqlite3's get() does not report a failure there; the row would say the rotation happened
    const [row] = statements().rotate.all(now, now, id, expectedCounter, now) as SessionRow[]
    return row ? toSession(row) : null
  }

  // Group commit. With synchronous=FULL every commit waits for an fsync, which costs more than the
  // rest of a refresh put together (issue 6: about 385 refreshes/s with one commit each, against
  // 5,400/s without a database); rotations queued in one event-loop turn share one transaction and
  // so one fsync. A caller's promise settles only after COMMIT returned, so every rotation that
  // was answered is durable, exactly as with one commit per rotation.
  let queue: PendingRotation[] = []
  // the timer of a batch waiting out another connection's write lock, and the promise close() waits on
  let batchRetry: { timer: NodeJS.Timeout; done: () => void } | undefined
  // how many times in a row a batch found the write lock taken, for the pause before the next try
  let batchWaits = 0
  const flush = () => {
    if (batchRetry) {
      clearTimeout(batchRetry.timer)
      batchRetry.done()
      batchRetry = undefined
    }
    const batch = queue
    queue = []
    if (batch.length === 0) return
    const results: (SessionRecord | null)[] = []
    try {
      // IMMEDIATE takes the write lock first: a BEGIN DEFERRED that later needs it could fail with
      // SQLITE_BUSY halfway through the batch, after some of its rotations ran
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
      // Another connection holds the write lock (in practice BEGIN IMMEDIATE found it taken) and the
      // batch was rolled back whole, so none of it happened: it is tried again later, every
      // rotation in its own busyTimeout. Never before COMMIT returned is a caller answered, and a
      // rotation runs again only after a rollback, so none is applied twice.
      if (isBusy(error) && db.open && !db.inTransaction) {
        requeue(batch, error)
        return
      }
      batchWaits = 0
      for (const pending of batch) pending.reject(error)
      return
    }
    batchWaits = 0
    for (const [i, pending] of batch.entries()) pending.resolve(results[i]!)
  }
  const requeue = (batch: PendingRotation[], error: unknown) => {
    const now = performance.now()
    const retried: PendingRotation[] = []
    for (const pending of batch) {
      if (now - pending.started >= busyTimeout) pending.reject(error)
      else retried.push(pending)
    }
    if (retried.length === 0) {
      batchWaits = 0
      return
    }
    // The queue is empty here (flush took it): rotations that arrive during the pause go behind these, and
    // join the next try, so arrival order is kept and a second rotation of a session still sees the first
    // one's counter. The oldest rotation is first: the pause ends by its deadline, for its last try there
    queue = retried
    const delay = Math.min(backoff(batchWaits++), retried[0]!.started + busyTimeout - now)
    let done!: () => void
    track(new Promise<void>((resolve) => (done = resolve)))
    batchRetry = { timer: setTimeout(flush, delay), done }
  }

  // one transaction: a failed attempt is rolled back whole, and retryOnBusy may run it again
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
      // IMMEDIATE takes the write lock up front, so of two processes migrating at once one waits (in
      // retryOnBusy) and then finds the schema migrated
      await retryOnBusy(() => applyMigrations.immediate())
    },
    async close() {
      for (;;) {
        // rotations already queued are committed and answered, not dropped; a batch waiting out a
        // lock keeps its timer
        if (!batchRetry) flush()
        if (waiting.size === 0) break
        // operations waiting out another connection's lock end first, each within its busyTimeout
        await Promise.allSettled(waiting)
      }
      if (db.open) db.close()
    },

    async createSession(session) {
      try {
        await retryOnBusy(() =>
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
          ),
        )
      } catch (error) {
        if ((error as { code?: unknown }).code === 'SQLITE_CONSTRAINT_FOREIGNKEY') {
          throw new AuthError('ERR_NOT_FOUND', `user "${session.userId}" does not exist`, { cause: error })
        }
        throw error
      }
    },
    async getSession(id) {
      const row = (await retryOnBusy(() => statements().getSession.get(id), { read: true })) as
        | SessionRow
        | undefined
      return row ? toSession(row) : null
    },
    async rotateSession(id, expectedCounter, now) {
      if (!groupCommit) return retryOnBusy(() => rotate(id, expectedCounter, now))
      const started = performance.now()
      // a store used before migrate() fails here, for this caller alone
      if (!prepared) await retryOnBusy(statements, { read: true })
      return new Promise((resolve, reject) => {
        // the first rotation of a turn schedules the commit: setImmediate runs after the I/O
        // callbacks of this turn, so every request that arrived with it is in the batch (while a
        // batch waits out a lock, the rotations that arrive join its next try)
        if (queue.push({ id, expectedCounter, now, started, resolve, reject }) === 1) setImmediate(flush)
      })
    },
    async revokeSession(id, now, reason, expectedLastUsedAt) {
      return (
        (
          await retryOnBusy(() =>
            statements().revokeSession.run(
              now,
              reason,
              id,
              expectedLastUsedAt ?? null,
              expectedLastUsedAt ?? null,
            ),
          )
        ).changes === 1
      )
    },
    async revokeUserSessions(userId, now, reason, exceptId) {
      const { changes } = await retryOnBusy(() =>
        statements().revokeUserSessions.run(now, reason, userId, now, exceptId ?? null),
      )
      return changes
    },
    async listSessions(userId, now) {
      const rows = await retryOnBusy(() => statements().listSessions.all(userId, now) as SessionRow[], {
        read: true,
      })
      return rows.map(toSession)
    },
    async deleteExpiredSessions(before, idleBefore = Number.MIN_SAFE_INTEGER) {
      const { pruneSpanEnd, pruneSpan } = await retryOnBusy(statements, { read: true })
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
      // rotates is live again and stays. A span that finds the write lock taken waits it out in
      // retryOnBusy, with the event loop running, up to busyTimeout; then the prune fails with SQLITE_BUSY.
      for (let after = Number.MIN_SAFE_INTEGER; ; ) {
        const end = (await retryOnBusy(() => pruneSpanEnd.get(after, pruneBatchSize - 1), { read: true })) as
          | number
          | undefined
        // the last span runs to the end of the table
        const { changes } = await retryOnBusy(() =>
          pruneSpan.run(after, end ?? Number.MAX_SAFE_INTEGER, before, before, idleBefore),
        )
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
      const { changes } = await retryOnBusy(() =>
        statements().insertUser.run(
          user.id,
          user.username,
          user.passwordHash,
          user.createdAt,
          user.passwordChangedAt,
        ),
      )
      if (changes === 0) throw new AuthError('ERR_USER_EXISTS', `user "${user.username}" already exists`)
    },
    async getUserByName(username) {
      const row = (await retryOnBusy(() => statements().getUserByName.get(username), { read: true })) as
        | UserRow
        | undefined
      return row ? toUser(row) : null
    },
    async getUser(id) {
      const row = (await retryOnBusy(() => statements().getUser.get(id), { read: true })) as
        | UserRow
        | undefined
      return row ? toUser(row) : null
    },
    async listUsers() {
      return (await retryOnBusy(() => statements().listUsers.all() as UserRow[], { read: true })).map(toUser)
    },
    async setPasswordHash(userId, passwordHash, changedAt, expectedHash) {
      if (expectedHash !== undefined) {
        await retryOnBusy(() =>
          statements().setPasswordHashIf.run(passwordHash, changedAt, userId, expectedHash),
        )
        return
      }
      const { changes } = await retryOnBusy(() =>
        statements().setPasswordHash.run(passwordHash, changedAt, userId),
      )
      if (changes === 0) throw new AuthError('ERR_NOT_FOUND', `user "${userId}" does not exist`)
    },
    async deleteUser(username) {
      return (await retryOnBusy(() => statements().deleteUser.run(username))).changes === 1
    },

    async listKeys() {
      return (await retryOnBusy(() => statements().listKeys.all() as KeyRow[], { read: true })).map(toKey)
    },
    async insertKey(key) {
      const { changes } = await retryOnBusy(() => statements().insertKey.run(...keyColumns(key)))
      if (changes === 0) throw new AuthError('ERR_CONFIG', `signing key "${key.kid}" already exists`)
    },
    async insertFirstKey(key) {
      // one statement, so one write transaction: SQLite lets one connection write at a time, and the
      // check runs inside it
      const { changes } = await retryOnBusy(() => statements().insertFirstKey.run(...keyColumns(key)))
      return changes === 1
    },
    async retireKey(kid, retiredAt) {
      if ((await retryOnBusy(() => statements().retireKey.run(retiredAt, kid))).changes === 0) {
        throw new AuthError('ERR_NOT_FOUND', `signing key "${kid}" does not exist`)
      }
    },
  }
}

/** A key's values in the order of the signing_keys columns (kid, alg, private_jwk, public_jwk, created_at, retired_at). */
const keyColumns = (key: KeyRecord) =>
  [key.kid, key.alg, key.privateJwk, key.publicJwk, key.createdAt, key.retiredAt] as const

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
      `UPDATE sessions SET revoked_at = ?, revoked_reason = ?
       WHERE id = ? AND revoked_at IS NULL AND (? IS NULL OR last_used_at = ?)`,
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
    insertFirstKey: db.prepare(
      `INSERT INTO signing_keys (kid, alg, private_jwk, public_jwk, created_at, retired_at)
       SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)
       ON CONFLICT (kid) DO NOTHING`,
    ),
    // a key retired twice keeps its first retirement time; its private half is dropped: it never signs again
    retireKey: db.prepare(
      "UPDATE signing_keys SET retired_at = coalesce(retired_at, ?), private_jwk = '' WHERE kid = ?",
    ),
  }
}

/** SQLITE_BUSY and its extended codes (BUSY_SNAPSHOT, BUSY_RECOVERY, …): another connection has a lock this one needs. */
function isBusy(error: unknown): boolean {
  return error instanceof Database.SqliteError && /^SQLITE_BUSY(?:_|$)/.test(error.code)
}

/**
 * The pause before the next try of an operation that found a lock taken, ms: 5-10, then doubling up to
 * 50-100. Short first, as another connection's commit holds the lock for about one fsync; random
 * within its range, so that the operations waiting out one lock do not all try again at once.
 */
function backoff(attempt: number): number {
  const ceiling = Math.min(100, 10 * 2 ** attempt)
  return ceiling / 2 + (Math.random() * ceiling) / 2
}

/**
 * `PRAGMA journal_mode = WAL`, tried again while another connection holds the lock it needs, until
 * `busyTimeout` ms have passed. SQLite does not always call the busy handler here: a connection that
 * finds another one writing a file still in rollback mode gets SQLITE_BUSY at once (it would deadlock
 * otherwise). Two processes opening one new file at the same moment met it about once in 900 opens.
 * The pauses block, as the driver's busy handler does: this runs once, in a synchronous constructor.
 */
function switchToWal(db: Database.Database, busyTimeout: number): unknown {
  const deadline = performance.now() + busyTimeout
  const pause = new Int32Array(new SharedArrayBuffer(4))
  for (let attempt = 0; ; attempt++) {
    try {
      // the driver's busy handler, which SQLite calls when it does wait, gets only what is left
      db.pragma(`busy_timeout = ${Math.max(0, Math.ceil(deadline - performance.now()))}`)
      return db.pragma('journal_mode = WAL', { simple: true })
    } catch (error) {
      const left = deadline - performance.now()
      if (!isBusy(error) || left <= 0) throw error
      Atomics.wait(pause, 0, 0, Math.min(backoff(attempt), left))
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
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
