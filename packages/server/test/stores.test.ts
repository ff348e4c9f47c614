import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import Database from 'better-sqlite3'
import type { Client } from 'pg'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { AuthError } from '../src/errors.js'
import { newSessionId, newSessionKey } from '../src/refresh-token.js'
import { createPostgresStore } from '../src/stores/postgres.js'
import { createSqliteStore } from '../src/stores/sqlite.js'
import { describeTokenStore } from './helpers/describe-token-store.js'
import { sessionRecord } from './helpers/records.js'
import { thrown } from './helpers/thrown.js'

const databaseUrl = process.env.DATABASE_URL
const NOW = 1_700_000_000_000
/** small, so that the prune tests of the contract suite span several batches */
const pruneBatchSize = 4

function tempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tokenflow-store-'))
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) }
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected a rejection')
}

/* ---------------------------------------------------------------- SQLite */

describeTokenStore('sqlite (:memory:)', async () => ({
  store: createSqliteStore({ filename: ':memory:', pruneBatchSize }),
  cleanup: async () => {},
  pruneBatchSize,
}))

describeTokenStore('sqlite (file, two connections)', async () => {
  const { dir, remove } = tempDir()
  const filename = join(dir, 'tokenflow.db')
  return {
    store: createSqliteStore({ filename, pruneBatchSize }),
    makeSecond: async () => createSqliteStore({ filename, pruneBatchSize }),
    cleanup: async () => remove(),
    pruneBatchSize,
  }
})

describe('createSqliteStore', () => {
  const dirs: (() => void)[] = []
  const dir = () => {
    const temp = tempDir()
    dirs.push(temp.remove)
    return temp.dir
  }
  afterEach(() => {
    for (const remove of dirs.splice(0)) remove()
  })

  it('fails with ERR_CONFIG naming the file when its directory does not exist', () => {
    const filename = join(dir(), 'missing', 'tokenflow.db')
    const error = thrown(() => createSqliteStore({ filename }))
    expect(error).toBeInstanceOf(AuthError)
    expect(error).toMatchObject({ code: 'ERR_CONFIG' })
    expect((error as Error).message).toMatch(new RegExp(`^cannot open sqlite database "${filename}": .+`))
  })

  it('fails with ERR_CONFIG for a file that is not a database, and leaves the file alone', () => {
    const filename = join(dir(), 'notes.txt')
    const content = 'these are my notes, not a database\n'.repeat(200)
    writeFileSync(filename, content)
    const error = thrown(() => createSqliteStore({ filename }))
    expect(error).toMatchObject({ name: 'AuthError', code: 'ERR_CONFIG' })
    expect((error as Error).message).toContain(`cannot open sqlite database "${filename}": `)
    expect(new Database(filename, { readonly: true, fileMustExist: true }).name).toBe(filename)
  })

  it.runIf(existsSync('/proc/self/fd'))('keeps no file descriptor of a file it refused', () => {
    const filename = join(dir(), 'notes.txt')
    writeFileSync(filename, 'not a database\n'.repeat(200))
    const open = () => readdirSync('/proc/self/fd').length
    const before = open()
    for (let i = 0; i < 20; i++)
      expect(thrown(() => createSqliteStore({ filename }))).toMatchObject({ code: 'ERR_CONFIG' })
    expect(open() - before).toBeLessThan(5)
  })

  it('validates its options when created', () => {
    for (const options of [
      { synchronous: 'OFF' },
      { synchronous: 'FULL; DROP TABLE users' },
      { busyTimeout: -1 },
      { busyTimeout: 1.5 },
      { filename: '' },
      { pruneBatchSize: 0 },
      { pruneBatchSize: 2.5 },
      { pruneBatchSize: '1000' },
    ]) {
      const error = thrown(() => createSqliteStore(options as never))
      expect(error).toBeInstanceOf(AuthError)
      expect(error).toMatchObject({ code: 'ERR_CONFIG' })
    }
  })

  it('refuses a busyTimeout past 2^31 - 1 ms itself, naming its own option', async () => {
    expect(thrown(() => createSqliteStore({ filename: ':memory:', busyTimeout: 2 ** 31 }))).toMatchObject({
      code: 'ERR_CONFIG',
      message: '"busyTimeout" must be an integer from 0 to 2147483647 (ms)',
    })
    await createSqliteStore({ filename: ':memory:', busyTimeout: 2 ** 31 - 1 }).close()
  })

  it('puts the file in WAL mode and keeps the data across a reopen', async () => {
    const filename = join(dir(), 'tokenflow.db')
    const store = createSqliteStore({ filename, synchronous: 'NORMAL', busyTimeout: 100 })
    await store.migrate()
    const user = { id: 'u1', username: 'alice', passwordHash: 'hash', createdAt: NOW, passwordChangedAt: NOW }
    const session = sessionRecord({ expiresAt: NOW + 1000 })
    await store.createUser(user)
    await store.createSession(session)
    await store.rotateSession(session.id, 0, NOW + 1)
    await store.close()

    const raw = new Database(filename)
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal')
    expect(raw.prepare('SELECT version FROM schema_migrations').pluck().all()).toEqual([1, 2])
    raw.close()

    const reopened = createSqliteStore({ filename })
    await reopened.migrate()
    expect(await reopened.getUser('u1')).toEqual(user)
    expect(await reopened.getSession(session.id)).toEqual({
      ...session,
      counter: 1,
      rotatedAt: NOW + 1,
      lastUsedAt: NOW + 1,
    })
    await reopened.close()
  })

  it('refuses a database migrated by a newer version', async () => {
    const filename = join(dir(), 'tokenflow.db')
    const store = createSqliteStore({ filename })
    await store.migrate()
    const raw = new Database(filename)
    raw.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)').run()
    raw.close()

    const error = await rejection(store.migrate())
    expect(error).toMatchObject({ name: 'AuthError', code: 'ERR_CONFIG' })
    expect((error as Error).message).toBe(
      'database schema version 99 is newer than this @tokenflow/server supports (2)',
    )
    await store.close()
  })
})

describe('createSqliteStore migration 2', () => {
  it('drops the private keys that a version-1 database kept for retired signing keys', async (context) => {
    const { dir, remove } = tempDir()
    context.onTestFinished(remove)
    const filename = join(dir, 'tokenflow.db')
    const store = createSqliteStore({ filename })
    await store.migrate()
    await store.close()
    // what a version-1 database holds: a retired key with its private half, and the active key
    const raw = new Database(filename)
    raw.prepare('DELETE FROM schema_migrations WHERE version = 2').run()
    const insert = raw.prepare(
      'INSERT INTO signing_keys (kid, alg, private_jwk, public_jwk, created_at, retired_at) VALUES (?, ?, ?, ?, ?, ?)',
    )
    insert.run('old', 'ES256', '{"d":"private-old"}', '{"x":"old"}', NOW, NOW + 1)
    insert.run('new', 'ES256', '{"d":"private-new"}', '{"x":"new"}', NOW + 1, null)
    raw.close()

    const reopened = createSqliteStore({ filename })
    await reopened.migrate()
    expect(await reopened.listKeys()).toEqual([
      {
        kid: 'new',
        alg: 'ES256',
        privateJwk: '{"d":"private-new"}',
        publicJwk: '{"x":"new"}',
        createdAt: NOW + 1,
        retiredAt: null,
      },
      {
        kid: 'old',
        alg: 'ES256',
        privateJwk: '',
        publicJwk: '{"x":"old"}',
        createdAt: NOW,
        retiredAt: NOW + 1,
      },
    ])
    await reopened.close()
  })
})

/* ---------------------------------------------------------------- PGlite */

// one PGlite for the file (it takes seconds to start); each test gets its own schema in it
let pglite: PGlite | undefined
let schemaCount = 0
const sharedPglite = () => {
  pglite ??= new PGlite()
  return pglite
}
beforeAll(async () => {
  await sharedPglite().waitReady
})
afterAll(async () => {
  await pglite?.close()
})

describeTokenStore('postgres (PGlite)', async () => {
  const db = sharedPglite()
  const schema = `tf_pglite_${++schemaCount}`
  await db.query(`CREATE SCHEMA ${schema}`)
  return {
    store: createPostgresStore({ client: db, schema, pruneBatchSize }),
    // PGlite is one connection: the second store shares it, which still runs the race through two stores
    makeSecond: async () => createPostgresStore({ client: db, schema, pruneBatchSize }),
    cleanup: async () => {
      await db.query(`DROP SCHEMA ${schema} CASCADE`)
    },
    pruneBatchSize,
  }
})

describe('createPostgresStore on PGlite', () => {
  it('uses the search_path (public) without a schema, and close() leaves the client open', async () => {
    const db = sharedPglite()
    const store = createPostgresStore({ client: db })
    await store.migrate()
    expect((await db.query('SELECT to_regclass($1) AS name', ['public.sessions'])).rows).toEqual([
      { name: 'sessions' },
    ])
    await store.close()
    expect(db.closed).toBe(false)
    expect((await db.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }])
    await db.exec('DROP TABLE sessions, users, signing_keys, schema_migrations')
  })

  it('validates its options when created', () => {
    const db = sharedPglite()
    for (const options of [
      { client: db, schema: 'tf"; DROP TABLE users; --' },
      { client: db, schema: '' },
      { client: db, schema: 'x'.repeat(64) },
      { client: db, pruneBatchSize: 0 },
      { client: db, pruneBatchSize: 2.5 },
      { client: {} },
      { client: undefined },
    ]) {
      const error = thrown(() => createPostgresStore(options as never))
      expect(error).toBeInstanceOf(AuthError)
      expect(error).toMatchObject({ code: 'ERR_CONFIG' })
    }
  })

  it('fails with ERR_CONFIG when the schema does not exist', async () => {
    const store = createPostgresStore({ client: sharedPglite(), schema: 'tf_missing_schema' })
    const error = await rejection(store.migrate())
    expect(error).toMatchObject({ name: 'AuthError', code: 'ERR_CONFIG' })
    expect((error as Error).message).toBe('schema "tf_missing_schema" does not exist: create it first')
  })

  it('bug: without a schema option, a search_path that names no schema was reported as schema "undefined"', async () => {
    const db = new PGlite()
    try {
      await db.query('SET search_path TO tf_nowhere')
      const error = await rejection(createPostgresStore({ client: db }).migrate())
      expect(error).toMatchObject({ name: 'AuthError', code: 'ERR_CONFIG' })
      expect((error as Error).message).toBe(
        'the connection\'s search_path names no schema that exists: create one, or pass "schema"',
      )
    } finally {
      await db.close()
    }
  })

  it('refuses a database migrated by a newer version', async () => {
    const db = sharedPglite()
    await db.query('CREATE SCHEMA tf_newer')
    const store = createPostgresStore({ client: db, schema: 'tf_newer' })
    await store.migrate()
    await db.query('INSERT INTO tf_newer.schema_migrations (version, applied_at) VALUES (99, 0)')
    const error = await rejection(store.migrate())
    expect(error).toMatchObject({ name: 'AuthError', code: 'ERR_CONFIG' })
    expect((error as Error).message).toBe(
      'database schema version 99 is newer than this @tokenflow/server supports (2)',
    )
    await db.query('DROP SCHEMA tf_newer CASCADE')
  })

  it('migration 2 drops the private keys that a version-1 schema kept for retired signing keys', async () => {
    const db = sharedPglite()
    await db.query('CREATE SCHEMA tf_v1')
    const store = createPostgresStore({ client: db, schema: 'tf_v1' })
    await store.migrate()
    await db.query('DELETE FROM tf_v1.schema_migrations WHERE version = 2')
    await db.query(
      `INSERT INTO tf_v1.signing_keys (kid, alg, private_jwk, public_jwk, created_at, retired_at)
       VALUES ('old', 'ES256', '{"d":"private-old"}', '{"x":"old"}', $1, $2), ('new', 'ES256', '{"d":"private-new"}', '{"x":"new"}', $2, NULL)`,
      [NOW, NOW + 1],
    )
    await store.migrate()
    expect(await store.listKeys()).toEqual([
      {
        kid: 'new',
        alg: 'ES256',
        privateJwk: '{"d":"private-new"}',
        publicJwk: '{"x":"new"}',
        createdAt: NOW + 1,
        retiredAt: null,
      },
      {
        kid: 'old',
        alg: 'ES256',
        privateJwk: '',
        publicJwk: '{"x":"old"}',
        createdAt: NOW,
        retiredAt: NOW + 1,
      },
    ])
    await db.query('DROP SCHEMA tf_v1 CASCADE')
  })

  it('does not keep the bound values (session keys) on a driver error', async () => {
    const db = sharedPglite()
    await db.query('CREATE SCHEMA tf_redact')
    const store = createPostgresStore({ client: db, schema: 'tf_redact' })
    await store.migrate()
    const key = newSessionKey()
    const error = await rejection(
      store.createSession({
        id: newSessionId(),
        userId: 'nobody',
        clientId: 'web',
        key,
        counter: 0,
        createdAt: NOW,
        expiresAt: NOW + 1000,
        lastUsedAt: NOW,
        rotatedAt: NOW,
        revokedAt: null,
        revokedReason: null,
        userAgent: null,
      }),
    )
    expect(error).toMatchObject({ code: 'ERR_NOT_FOUND' })
    const cause = (error as Error).cause as Record<string, unknown>
    expect(cause).toMatchObject({ code: '23503' })
    expect(cause.params).toBeUndefined()
    await db.query('DROP SCHEMA tf_redact CASCADE')
  })
})

/* ---------------------------------------------------------------- PostgreSQL */

describe('PostgreSQL in CI', () => {
  it.runIf(process.env.CI === 'true')('has DATABASE_URL set', () => {
    expect(
      databaseUrl,
      'DATABASE_URL is required in CI: the PostgreSQL store must run against a real server',
    ).toBeTruthy()
  })
})

describe.skipIf(!databaseUrl)('PostgreSQL (DATABASE_URL)', () => {
  // loaded only here: pg is an optional peer dependency of the package
  const loadPg = async () => (await import('pg')).default
  // a schema per test, so parallel runs against one database never see each other's rows
  const freshSchema = async (admin: { query(text: string): Promise<unknown> }) => {
    const schema = `tf_test_${randomBytes(6).toString('hex')}`
    await admin.query(`CREATE SCHEMA ${schema}`)
    return schema
  }

  describeTokenStore('postgres (pg.Pool)', async () => {
    const pg = await loadPg()
    const pool = new pg.Pool({ connectionString: databaseUrl, max: 5 })
    const pools = [pool]
    const schema = await freshSchema(pool)
    return {
      store: createPostgresStore({ client: pool, schema, pruneBatchSize }),
      makeSecond: async () => {
        const other = new pg.Pool({ connectionString: databaseUrl, max: 5 })
        pools.push(other)
        return createPostgresStore({ client: other, schema, pruneBatchSize })
      },
      cleanup: async () => {
        await pool.query(`DROP SCHEMA ${schema} CASCADE`)
        for (const p of pools) await p.end()
      },
      pruneBatchSize,
    }
  })

  describeTokenStore('postgres (pg.Client)', async () => {
    const pg = await loadPg()
    const clients: Client[] = []
    const connect = async () => {
      const client = new pg.Client({ connectionString: databaseUrl })
      await client.connect()
      clients.push(client)
      return client
    }
    const client = await connect()
    const schema = await freshSchema(client)
    return {
      store: createPostgresStore({ client, schema, pruneBatchSize }),
      makeSecond: async () => createPostgresStore({ client: await connect(), schema, pruneBatchSize }),
      cleanup: async () => {
        await client.query(`DROP SCHEMA ${schema} CASCADE`)
        for (const c of clients) await c.end()
      },
      pruneBatchSize,
    }
  })

  it('on one pg.Client, a call made during migrate() waits for it instead of running inside it', async () => {
    const pg = await loadPg()
    const client = new pg.Client({ connectionString: databaseUrl })
    await client.connect()
    const schema = await freshSchema(client)
    try {
      const store = createPostgresStore({ client, schema })
      const [, found] = await Promise.all([store.migrate(), store.getUser('nobody')])
      expect(found).toBeNull()
      expect(
        (await client.query(`SELECT version FROM ${schema}.schema_migrations ORDER BY version`)).rows,
      ).toEqual([{ version: 1 }, { version: 2 }])
    } finally {
      await client.query(`DROP SCHEMA ${schema} CASCADE`)
      await client.end()
    }
  })

  it('close() leaves the caller’s pool open', async () => {
    const pg = await loadPg()
    const pool = new pg.Pool({ connectionString: databaseUrl, max: 2 })
    const schema = await freshSchema(pool)
    try {
      const store = createPostgresStore({ client: pool, schema })
      await store.migrate()
      await store.close()
      expect((await pool.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }])
      expect(
        (await pool.query(`SELECT version FROM ${schema}.schema_migrations ORDER BY version`)).rows,
      ).toEqual([{ version: 1 }, { version: 2 }])
    } finally {
      await pool.query(`DROP SCHEMA ${schema} CASCADE`)
      await pool.end()
    }
  })
})
