/**
 * PostgreSQL servers whose default isolation is REPEATABLE READ (some managed databases set it): migrations
 * of instances starting together, and rotations racing on two pools, behave as under READ COMMITTED.
 * Real PostgreSQL only (DATABASE_URL; .ci/run sets it).
 */
import { randomBytes } from 'node:crypto'
import { createPostgresStore } from '@tokenflow/server/postgres'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const databaseUrl = process.env.DATABASE_URL
const DAY = 86_400_000

describe.skipIf(!databaseUrl)('PostgreSQL with default_transaction_isolation = repeatable read', () => {
  const schema = `tf_isolation_${randomBytes(6).toString('hex')}`
  const admin = new pg.Pool({ connectionString: databaseUrl, max: 1 })
  const pools: pg.Pool[] = []
  const repeatableRead = (max: number) => {
    const pool = new pg.Pool({
      connectionString: databaseUrl,
      max,
      options: '-c default_transaction_isolation=repeatable\\ read',
    })
    pools.push(pool)
    return pool
  }

  beforeAll(async () => {
    await admin.query(`CREATE SCHEMA ${schema}`)
  })
  afterAll(async () => {
    for (const pool of pools) await pool.end()
    await admin.query(`DROP SCHEMA ${schema} CASCADE`)
    await admin.end()
  })

  it('migrates once when four instances start together', async () => {
    const stores = Array.from({ length: 4 }, () => createPostgresStore({ client: repeatableRead(2), schema }))
    const results = await Promise.allSettled(stores.map((store) => store.migrate()))
    expect(results.filter((result) => result.status === 'rejected')).toEqual([])
    const { rows } = await admin.query(`SELECT version FROM ${schema}.schema_migrations ORDER BY version`)
    expect(rows.map((row) => row.version)).toEqual([1, 2])
  })

  it("bug: an instance that started while another migrated failed when the wait outlasted its pool's statement_timeout", async () => {
    // the README's pool and the CLI's set statement_timeout 5 s; here 300 ms, and another instance's
    // migration holds the migration lock for 1 s
    const bounded = new pg.Pool({ connectionString: databaseUrl, max: 2, statement_timeout: 300 })
    pools.push(bounded)
    const holder = await admin.connect()
    try {
      await holder.query('BEGIN')
      await holder.query('SELECT pg_advisory_xact_lock(8390042714202598511)')
      const migrating = createPostgresStore({ client: bounded, schema }).migrate()
      const outcome = migrating.then(
        () => 'migrated',
        (error: Error) => error.message,
      )
      await new Promise((resolve) => setTimeout(resolve, 1_000))
      await holder.query('COMMIT')
      expect(await outcome).toBe('migrated')
    } finally {
      await holder.query('ROLLBACK').catch(() => {})
      holder.release()
    }
    // the pool's own bound still holds for everything else
    await expect(bounded.query('SELECT pg_sleep(1)')).rejects.toThrow(/statement timeout/)
  })

  it('lets exactly one of eight rotations on two pools win; the others find no row instead of failing', async () => {
    const [a, b] = [repeatableRead(10), repeatableRead(10)].map((client) =>
      createPostgresStore({ client, schema }),
    )
    const t = Date.now()
    await a!.createUser({ id: 'u1', username: 'ada', passwordHash: 'x', createdAt: t, passwordChangedAt: t })
    for (let round = 0; round < 20; round++) {
      const id = randomBytes(16).toString('hex')
      await a!.createSession({
        id,
        userId: 'u1',
        clientId: 'web',
        key: new Uint8Array(32),
        counter: 0,
        createdAt: t,
        expiresAt: t + DAY,
        lastUsedAt: t,
        rotatedAt: t,
        revokedAt: null,
        revokedReason: null,
        userAgent: null,
      })
      const results = await Promise.allSettled(
        Array.from({ length: 8 }, (_, i) => (i % 2 ? a! : b!).rotateSession(id, 0, t + 1)),
      )
      expect(results.filter((result) => result.status === 'rejected')).toEqual([])
      const won = results.filter((result) => result.status === 'fulfilled' && result.value !== null)
      expect(won).toHaveLength(1)
      expect((await a!.getSession(id))?.counter).toBe(1)
    }
  })
})
