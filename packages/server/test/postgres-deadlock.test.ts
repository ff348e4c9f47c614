/**
 * The prune deletes in physical order (ctid); ending a user's sessions (logout-all, a password change, a
 * removed user's cascade) locks them in the order of the user_id index. After a rotation (a HOT update moves
 * the row's live version) the two orders of one user's rows can be opposite, and the two statements then
 * deadlock: PostgreSQL aborts one with 40P01. Each is a single statement that changed nothing when aborted,
 * so the store runs it again. Real PostgreSQL only (DATABASE_URL; .ci/run sets it): PGlite has one connection.
 */
import { randomBytes } from 'node:crypto'
import { createPostgresStore } from '@tokenflow/server/postgres'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { newSessionId, newSessionKey } from '../src/refresh-token.js'
import type { SessionRecord } from '../src/stores/store.js'

const databaseUrl = process.env.DATABASE_URL
const FAR = 9_000_000_000_000

const session = (userId: string): SessionRecord => ({
  id: newSessionId(),
  userId,
  clientId: 'web',
  key: newSessionKey(),
  counter: 0,
  createdAt: 1_000,
  expiresAt: FAR,
  lastUsedAt: 1_000,
  rotatedAt: 1_000,
  revokedAt: null,
  revokedReason: null,
  userAgent: null,
})

const outcome = (promise: Promise<unknown>) =>
  promise.then(
    () => 'ok',
    (error: { code?: string }) => error.code ?? 'failed',
  )

describe.skipIf(!databaseUrl)('PostgreSQL: the prune against ending all of a user’s sessions', () => {
  const admin = new pg.Pool({ connectionString: databaseUrl, max: 1 })
  const schemas: string[] = []
  const pools: pg.Pool[] = []
  beforeAll(async () => {
    await admin.query('SELECT 1')
  })
  afterAll(async () => {
    for (const pool of pools) await pool.end()
    for (const schema of schemas) await admin.query(`DROP SCHEMA ${schema} CASCADE`)
    await admin.end()
  })

  it.each([
    ['logout-all (revokeUserSessions)', 'revoke'],
    ['a removed user (deleteUser, whose cascade deletes the sessions)', 'delete'],
  ] as const)(
    'bug: %s deadlocked with the prune and failed with 40P01',
    async (_name, other) => {
      const schema = `tf_deadlock_${randomBytes(6).toString('hex')}`
      schemas.push(schema)
      await admin.query(`CREATE SCHEMA ${schema}`)
      const pool = new pg.Pool({ connectionString: databaseUrl, max: 4 })
      pools.push(pool)
      const store = createPostgresStore({ client: pool, schema })
      await store.migrate()
      for (const id of ['u', 'v', 'w'])
        await store.createUser({ id, username: id, passwordHash: 'x', createdAt: 1, passwordChangedAt: 1 })
      // A and B of user u, then D of user v; A's rotation moves its live version behind D (a HOT update).
      // Physical order: B, D, A. The user_id index finds u's rows as A, B
      const [a, b, d] = [session('u'), session('u'), session('v')]
      for (const row of [a, b, d]) await store.createSession(row)
      expect(await store.rotateSession(a.id, 0, 2_000)).not.toBeNull()
      // live sessions of another user, so that the planner reads u's rows through the index
      await pool.query(
        `INSERT INTO ${schema}.sessions (id, user_id, client_id, key, counter, created_at, expires_at,
         last_used_at, rotated_at)
       SELECT md5(g::text), 'w', 'web', '\\x00', 0, 1, ${FAR}, ${FAR}, 1 FROM generate_series(1, 20000) g`,
      )
      await pool.query(`ANALYZE ${schema}.sessions`)
      const { rows } = await pool.query(
        `SELECT id FROM ${schema}.sessions WHERE id = ANY($1) ORDER BY ctid`,
        [[a.id, b.id, d.id]],
      )
      expect(rows.map((row) => row.id)).toEqual([b.id, d.id, a.id])
      // another request (a rotation) holds D for a moment: the prune, idle-deleting A, B and D, takes B and
      // waits for D; then the other statement takes A and waits for B; D is let go, the prune reaches A
      const holder = await pool.connect()
      try {
        await holder.query('BEGIN')
        await holder.query(`SELECT 1 FROM ${schema}.sessions WHERE id = $1 FOR UPDATE`, [d.id])
        const prune = outcome(store.deleteExpiredSessions(10_000, 5_000))
        await new Promise((resolve) => setTimeout(resolve, 300))
        const ending = outcome(
          other === 'delete' ? store.deleteUser('u') : store.revokeUserSessions('u', 10_000, 'logout-all'),
        )
        await new Promise((resolve) => setTimeout(resolve, 300))
        await holder.query('COMMIT')
        expect(await Promise.all([prune, ending])).toEqual(['ok', 'ok'])
      } finally {
        holder.release()
      }
      // whichever ran first, u's sessions are gone or revoked, and so is none of w's
      const left = await pool.query(
        `SELECT count(*)::int AS n FROM ${schema}.sessions WHERE user_id = 'u' AND revoked_at IS NULL`,
      )
      expect(left.rows[0].n).toBe(0)
      const others = await pool.query(`SELECT count(*)::int AS n FROM ${schema}.sessions WHERE user_id = 'w'`)
      expect(others.rows[0].n).toBe(20_000)
    },
    30_000,
  )
})
