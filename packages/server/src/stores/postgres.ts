import { AuthError } from '../errors.js'
import type { KeyRecord, SessionRecord, TokenStore, UserRecord } from './store.js'

/**
 * What the store needs from a database client: a `pg` Pool, Client or PoolClient, or a PGlite
 * instance. It is typed by shape so that neither `pg` nor PGlite is loaded by this module.
 * @example
 * const client: PostgresClient = new PGlite()
 */
export interface PostgresClient {
  query(text: string, params?: unknown[]): Promise<{ rows: any[] }>
}

/**
 * Options of `createPostgresStore`.
 * @example
 * const options: PostgresStoreOptions = { client: pool, schema: 'auth' }
 */
export interface PostgresStoreOptions {
  /**
   * A `pg` Pool (best: migrations get their own connection) or Client, or a PGlite instance.
   * The caller owns it: the store's `close()` leaves it open, end it yourself.
   */
  client: PostgresClient
  /**
   * The schema that holds tokenflow's tables, by its exact (case-sensitive) name. It must exist.
   * Without it, table names are unqualified and follow the connection's `search_path`.
   */
  schema?: string | undefined
  /**
   * How many sessions one statement of `deleteExpiredSessions` looks at. The prune walks the
   * table in physical order, one span of this many rows per statement, each statement its own
   * short transaction, instead of one `DELETE` that holds its row locks until the whole table was
   * scanned.
   * @default 5000
   */
  pruneBatchSize?: number | undefined
}

/** Taken for the length of the migration transaction, so instances starting together migrate one at a time. */
const MIGRATION_LOCK = '8390042714202598511' // "tokenflo" in ASCII, as a bigint
/** Taken by `insertFirstKey`, so instances starting together over an empty database store one key. */
const FIRST_KEY_LOCK = '8390042714202924409' // "tokenkey" in ASCII, as a bigint

/**
 * The schema, one entry per version, each a list of single statements (PGlite's `query` runs one
 * statement at a time). Released entries are never edited: a change is a new entry. Timestamps are
 * BIGINT epoch ms.
 */
function migrations(table: (name: string) => string): readonly (readonly string[])[] {
  return [
    [
      `CREATE TABLE ${table('users')} (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        password_changed_at BIGINT NOT NULL
      )`,
      `CREATE TABLE ${table('sessions')} (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES ${table('users')} (id) ON DELETE CASCADE,
        client_id TEXT NOT NULL,
        key BYTEA NOT NULL,
        counter BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        last_used_at BIGINT NOT NULL,
        rotated_at BIGINT NOT NULL,
        revoked_at BIGINT,
        revoked_reason TEXT,
        user_agent TEXT
      )`,
      `CREATE INDEX sessions_user_id ON ${table('sessions')} (user_id)`,
      `CREATE TABLE ${table('signing_keys')} (
        kid TEXT PRIMARY KEY,
        alg TEXT NOT NULL,
        private_jwk TEXT NOT NULL,
        public_jwk TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        retired_at BIGINT
      )`,
    ],
    // 2: a retired key never signs again, so its private half is not kept (the public half stays in the JWKS)
    [`UPDATE ${table('signing_keys')} SET private_jwk = '' WHERE retired_at IS NOT NULL`],
  ]
}

/**
 * The store for several server instances sharing one PostgreSQL database (or PGlite in tests).
 * Call `migrate()` once before use; instances that start together may all call it.
 * The store's `close()` leaves `client` open: the caller owns it and ends it.
 * @example
 * import pg from 'pg'
 * const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL })
 * // a PostgreSQL restart kills idle connections; without a listener, pg's 'error' event ends the process
 * pool.on('error', (error) => console.warn('postgres connection lost:', error.message))
 * const store = createPostgresStore({ client: pool })
 * await store.migrate()
 */
export function createPostgresStore({
  client,
  schema,
  pruneBatchSize = 5000,
}: PostgresStoreOptions): TokenStore {
  if (typeof client?.query !== 'function') {
    throw new AuthError('ERR_CONFIG', '"client" must be a pg Pool or Client, or a PGlite instance')
  }
  if (
    schema !== undefined &&
    (typeof schema !== 'string' || !/^[A-Za-z_][A-Za-z0-9_$]{0,62}$/.test(schema))
  ) {
    throw new AuthError('ERR_CONFIG', '"schema" must be a plain identifier (letters, digits, "_", "$")')
  }
  if (!Number.isSafeInteger(pruneBatchSize) || pruneBatchSize < 1) {
    throw new AuthError('ERR_CONFIG', '"pruneBatchSize" must be a positive integer')
  }
  const table = (name: string) => (schema === undefined ? name : `"${schema}".${name}`)
  const sessions = table('sessions')
  const users = table('users')
  const keys = table('signing_keys')
  const versions = table('schema_migrations')
  const connection = connectionFor(client)
  // set by close(): a prune in progress stops at its next batch, before the caller ends the client
  let closed = false

  const exec = async (on: PostgresClient, text: string, params?: unknown[]) => {
    try {
      return (await on.query(text, params)).rows
    } catch (error) {
      throw translate(error, schema)
    }
  }
  const query = async (text: string, params?: unknown[]) => {
    // Under a REPEATABLE READ or SERIALIZABLE default, a statement that meets a concurrent update fails with
    // 40001 instead of re-checking the row as READ COMMITTED does. A deadlock (40P01) aborts one of two
    // statements that lock the same rows in opposite orders: the prune walks the table in physical order,
    // ending a user's sessions walks the user_id index, and a rotation can make the two orders differ.
    // Either way the statement changed nothing: run it again (a lost compare-and-swap then finds no row, as
    // it would have at once)
    for (let attempt = 1; ; attempt++) {
      try {
        return await connection.single((on) => exec(on, text, params))
      } catch (error) {
        const code = (error as { code?: unknown })?.code
        if (attempt >= 5 || (code !== '40001' && code !== '40P01')) throw error
      }
    }
  }

  // the rotation compare-and-swap, kept in one function so it can be swapped for a group commit
  const rotate = async (id: string, expectedCounter: number, now: number) => {
    const [row] = await query(
      `UPDATE ${sessions} SET counter = counter + 1, rotated_at = $1, last_used_at = $1
       WHERE id = $2 AND counter = $3 AND revoked_at IS NULL AND expires_at > $1 RETURNING *`,
      [now, id, expectedCounter],
    )
    return row ? toSession(row) : null
  }

  return {
    async migrate() {
      const steps = migrations(table)
      await connection.transaction(async (tx) => {
        const run = (text: string, params?: unknown[]) => exec(tx, text, params)
        // the pool's statement_timeout (5 s in the README's pool and the CLI's) bounds requests, not this: an
        // instance that starts while another migrates waits for it, and a migration of a large table may run
        // longer. For this transaction only
        await run('SET LOCAL statement_timeout = 0')
        await run(`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`)
        await run(
          `CREATE TABLE IF NOT EXISTS ${versions} (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`,
        )
        const [{ current }] = (await run(
          `SELECT coalesce(max(version), 0)::int AS current FROM ${versions}`,
        )) as [{ current: number }]
        if (current > steps.length) {
          throw new AuthError(
            'ERR_CONFIG',
            `database schema version ${current} is newer than this @tokenflow/server supports (${steps.length})`,
          )
        }
        for (let version = current + 1; version <= steps.length; version++) {
          for (const statement of steps[version - 1]!) await run(statement)
          await run(`INSERT INTO ${versions} (version, applied_at) VALUES ($1, $2)`, [version, Date.now()])
        }
      })
    },
    async close() {
      // the caller passed the client in and owns it (it may serve other code): never end it here
      closed = true
    },

    async createSession(session) {
      try {
        await query(
          `INSERT INTO ${sessions} (id, user_id, client_id, key, counter, created_at, expires_at, last_used_at,
            rotated_at, revoked_at, revoked_reason, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
          [
            session.id,
            session.userId,
            session.clientId,
            session.key,
            session.counter,
            session.createdAt,
            session.expiresAt,
            session.lastUsedAt,
            session.rotatedAt,
            session.revokedAt,
            session.revokedReason,
            session.userAgent,
          ],
        )
      } catch (error) {
        if ((error as { code?: unknown }).code === '23503') {
          throw new AuthError('ERR_NOT_FOUND', `user "${session.userId}" does not exist`, { cause: error })
        }
        throw error
      }
    },
    async getSession(id) {
      const [row] = await query(`SELECT * FROM ${sessions} WHERE id = $1`, [id])
      return row ? toSession(row) : null
    },
    rotateSession: rotate,
    async revokeSession(id, now, reason, expectedLastUsedAt) {
      // `revoked_at IS NULL` keeps the first revocation's time and reason
      const rows = await query(
        `UPDATE ${sessions} SET revoked_at = $1, revoked_reason = $2
         WHERE id = $3 AND revoked_at IS NULL AND ($4::bigint IS NULL OR last_used_at = $4) RETURNING id`,
        [now, reason, id, expectedLastUsedAt ?? null],
      )
      return rows.length === 1
    },
    async revokeUserSessions(userId, now, reason, exceptId) {
      const [{ count }] = (await query(
        `WITH revoked AS (
           UPDATE ${sessions} SET revoked_at = $1, revoked_reason = $2
           WHERE user_id = $3 AND revoked_at IS NULL AND expires_at > $1 AND id IS DISTINCT FROM $4 RETURNING 1
         ) SELECT count(*)::int AS count FROM revoked`,
        [now, reason, userId, exceptId ?? null],
      )) as [{ count: number }]
      return count
    },
    async listSessions(userId, now) {
      const rows = await query(
        `SELECT * FROM ${sessions} WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
         ORDER BY created_at DESC, id DESC`,
        [userId, now],
      )
      return rows.map(toSession)
    },
    async deleteExpiredSessions(before, idleBefore = Number.MIN_SAFE_INTEGER) {
      let deleted = 0
      // One statement, and so one short transaction, per span of `pruneBatchSize` rows in physical
      // order (ctid, a TID range scan): each page is read once and in order, as by the one DELETE
      // this replaces, and the row locks of a span are held for that span only, so rotations and
      // other instances' prunes go on meanwhile. (Walking the primary key instead reads the table in
      // random order: 7-10 times slower at a million sessions.) A row updated while its span runs is
      // re-checked against the whole condition (READ COMMITTED), so a session rotated back to life
      // stays; a dead one that an update moved behind the walk is left for the next prune.
      // '(0,0)' comes before every row: tuple offsets start at 1.
      for (let after = '(0,0)'; ; ) {
        const [{ last, count }] = (await query(
          `WITH span AS (SELECT max(ctid) AS last FROM (SELECT ctid FROM ${sessions} WHERE ctid > $1::tid LIMIT $4) rows),
           deleted AS (
             DELETE FROM ${sessions} WHERE ctid > $1::tid AND ctid <= (SELECT last FROM span)
             AND (expires_at < $2 OR revoked_at < $2 OR last_used_at < $3) RETURNING 1
           )
           SELECT (SELECT last FROM span)::text AS last, (SELECT count(*)::int FROM deleted) AS count`,
          [after, before, idleBefore, pruneBatchSize],
        )) as [{ last: string | null; count: number }]
        deleted += count
        // closed meanwhile: the rest waits for the next prune
        if (last === null || closed) return deleted
        after = last
      }
    },

    async createUser(user) {
      const rows = await query(
        `INSERT INTO ${users} (id, username, password_hash, created_at, password_changed_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO NOTHING RETURNING id`,
        [user.id, user.username, user.passwordHash, user.createdAt, user.passwordChangedAt],
      )
      if (rows.length === 0) throw new AuthError('ERR_USER_EXISTS', `user "${user.username}" already exists`)
    },
    async getUserByName(username) {
      const [row] = await query(`SELECT * FROM ${users} WHERE username = $1`, [username])
      return row ? toUser(row) : null
    },
    async getUser(id) {
      const [row] = await query(`SELECT * FROM ${users} WHERE id = $1`, [id])
      return row ? toUser(row) : null
    },
    async listUsers() {
      return (await query(`SELECT * FROM ${users} ORDER BY created_at, username`)).map(toUser)
    },
    async setPasswordHash(userId, passwordHash, changedAt, expectedHash) {
      const rows = await query(
        `UPDATE ${users} SET password_hash = $1, password_changed_at = $2
         WHERE id = $3 AND ($4::text IS NULL OR password_hash = $4) RETURNING id`,
        [passwordHash, changedAt, userId, expectedHash ?? null],
      )
      if (rows.length === 0 && expectedHash === undefined) {
        throw new AuthError('ERR_NOT_FOUND', `user "${userId}" does not exist`)
      }
    },
    async deleteUser(username) {
      const rows = await query(`DELETE FROM ${users} WHERE username = $1 RETURNING id`, [username])
      return rows.length === 1
    },

    async listKeys() {
      return (await query(`SELECT * FROM ${keys} ORDER BY created_at DESC, kid DESC`)).map(toKey)
    },
    async insertKey(key) {
      const rows = await query(
        `INSERT INTO ${keys} (kid, alg, private_jwk, public_jwk, created_at, retired_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kid) DO NOTHING RETURNING kid`,
        keyColumns(key),
      )
      if (rows.length === 0) throw new AuthError('ERR_CONFIG', `signing key "${key.kid}" already exists`)
    },
    async insertFirstKey(key) {
      let inserted = false
      // READ COMMITTED (inTransaction) takes the check's snapshot after the lock is granted, so an instance
      // that waited sees the key the one before it stored
      await connection.transaction(async (tx) => {
        await exec(tx, `SELECT pg_advisory_xact_lock(${FIRST_KEY_LOCK})`)
        const rows = await exec(
          tx,
          `INSERT INTO ${keys} (kid, alg, private_jwk, public_jwk, created_at, retired_at)
           SELECT $1, $2, $3, $4, $5::bigint, $6::bigint
           WHERE NOT EXISTS (SELECT 1 FROM ${keys} WHERE retired_at IS NULL)
           ON CONFLICT (kid) DO NOTHING RETURNING kid`,
          keyColumns(key),
        )
        inserted = rows.length === 1
      })
      return inserted
    },
    async retireKey(kid, retiredAt) {
      // a key retired twice keeps its first retirement time; its private half is dropped: it never signs again
      const rows = await query(
        `UPDATE ${keys} SET retired_at = coalesce(retired_at, $1), private_jwk = '' WHERE kid = $2 RETURNING kid`,
        [retiredAt, kid],
      )
      if (rows.length === 0) throw new AuthError('ERR_NOT_FOUND', `signing key "${kid}" does not exist`)
    },
  }
}

/** A key's values in the order of the signing_keys columns (kid, alg, private_jwk, public_jwk, created_at, retired_at). */
const keyColumns = (key: KeyRecord) => [
  key.kid,
  key.alg,
  key.privateJwk,
  key.publicJwk,
  key.createdAt,
  key.retiredAt,
]

type PooledConnection = PostgresClient & { release(error?: Error | boolean): void }

interface Connection {
  /** runs one statement outside any transaction */
  single<T>(fn: (on: PostgresClient) => Promise<T>): Promise<T>
  /** runs `fn` in BEGIN … COMMIT, rolled back when it throws */
  transaction(fn: (tx: PostgresClient) => Promise<void>): Promise<void>
}

/** How to run statements and transactions on this kind of client, without importing `pg` or PGlite. */
function connectionFor(client: PostgresClient): Connection {
  const candidate = client as {
    transaction?: (fn: (tx: PostgresClient) => Promise<void>) => Promise<void>
    connect?: () => Promise<PooledConnection>
    totalCount?: unknown
  }
  // PGlite: its transaction() holds a lock that queries from outside wait for
  if (typeof candidate.transaction === 'function') {
    const transaction = candidate.transaction.bind(client)
    return { single: (fn) => fn(client), transaction: (fn) => transaction(fn) }
  }
  // pg.Pool: statements go to any connection; a transaction checks one out for itself
  if (typeof candidate.connect === 'function' && 'totalCount' in candidate) {
    const connect = candidate.connect.bind(client)
    return {
      single: (fn) => fn(client),
      async transaction(fn) {
        const connection = await connect()
        let failed = false
        try {
          await inTransaction(connection, fn)
        } catch (error) {
          failed = true
          throw error
        } finally {
          // after a failure the connection may still be inside the transaction: destroy it, never pool it
          connection.release(failed)
        }
      },
    }
  }
  // one connection (pg.Client): everything runs one at a time, so that no statement lands inside
  // the migration's transaction, and pg never queues queries itself (deprecated in pg 8, gone in 9)
  let tail: Promise<unknown> = Promise.resolve()
  const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn)
    tail = run.catch(() => {})
    return run
  }
  return {
    single: (fn) => exclusive(() => fn(client)),
    transaction: (fn) => exclusive(() => inTransaction(client, fn)),
  }
}

async function inTransaction(on: PostgresClient, fn: (tx: PostgresClient) => Promise<void>): Promise<void> {
  // whatever the server's default: under REPEATABLE READ the snapshot would be taken before the advisory
  // lock is granted, and a migration that waited would not see the one it waited for
  await on.query('BEGIN ISOLATION LEVEL READ COMMITTED')
  try {
    await fn(on)
    await on.query('COMMIT')
  } catch (error) {
    // the first error is the one to report; a ROLLBACK that fails too means the connection is gone
    await on.query('ROLLBACK').catch(() => {})
    throw error
  }
}

/** Turns driver errors into typed ones, and drops the bound values PGlite attaches (keys, hashes). */
function translate(error: unknown, schema: string | undefined): unknown {
  if (typeof error !== 'object' || error === null) return error
  if ('params' in error) delete (error as { params?: unknown }).params
  const code = (error as { code?: unknown }).code
  if (code === '42P01') {
    return new AuthError('ERR_CONFIG', 'the database has no tokenflow tables: call "migrate()" first', {
      cause: error,
    })
  }
  if (code === '3F000') {
    // without a schema option the tables go where the connection's search_path says, which names none that exists
    const message =
      schema === undefined
        ? 'the connection\'s search_path names no schema that exists: create one, or pass "schema"'
        : `schema "${schema}" does not exist: create it first`
    return new AuthError('ERR_CONFIG', message, { cause: error })
  }
  return error
}

function toSession(row: Record<string, unknown>): SessionRecord {
  return {
    id: row.id as string,
    userId: row.user_id as string,
    clientId: row.client_id as string,
    key: new Uint8Array(row.key as Uint8Array),
    counter: Number(row.counter),
    createdAt: Number(row.created_at),
    expiresAt: Number(row.expires_at),
    lastUsedAt: Number(row.last_used_at),
    rotatedAt: Number(row.rotated_at),
    revokedAt: row.revoked_at == null ? null : Number(row.revoked_at),
    revokedReason: (row.revoked_reason as string | null) ?? null,
    userAgent: (row.user_agent as string | null) ?? null,
  }
}

function toUser(row: Record<string, unknown>): UserRecord {
  return {
    id: row.id as string,
    username: row.username as string,
    passwordHash: row.password_hash as string,
    createdAt: Number(row.created_at),
    passwordChangedAt: Number(row.password_changed_at),
  }
}

function toKey(row: Record<string, unknown>): KeyRecord {
  return {
    kid: row.kid as string,
    alg: row.alg as string,
    privateJwk: row.private_jwk as string,
    publicJwk: row.public_jwk as string,
    createdAt: Number(row.created_at),
    retiredAt: row.retired_at == null ? null : Number(row.retired_at),
  }
}
