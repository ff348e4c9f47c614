/**
 * What the token routes answer while the database misbehaves, on real SQLite files and a real PostgreSQL
 * (DATABASE_URL): a lock held by another connection, a full or read-only database, an exhausted pool, a
 * statement timeout, a row lock, a connection killed mid-query, serialization failures that do not stop.
 * Every such failure must be a 503 `temporarily_unavailable` with `Retry-After`, which a client retries
 * and keeps its session through, never a 400 `invalid_grant` (a client logs out on it) nor a 500; no
 * rotation may be left half done; and after the database recovers, the same session goes on.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type AuthServer,
  type AuthServerOptions,
  createAuthServer,
  createSqliteStore,
  parseRefreshToken,
} from '@tokenflow/server'
import { createPostgresStore } from '@tokenflow/server/postgres'
import Database from 'better-sqlite3'
import pg from 'pg'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import { AUDIENCE, ISSUER, PASSWORD } from './helpers/http.js'

const databaseUrl = process.env.DATABASE_URL

/** every log line of every server of this file: none may hold a token, a password or a database password */
const logs: string[] = []
const apps: AuthServer[] = []

function server(options: Partial<AuthServerOptions> & Pick<AuthServerOptions, 'store'>): AuthServer {
  const app = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    rateLimit: false,
    pruneInterval: 0,
    logger: { level: 'info', stream: { write: (line: string) => void logs.push(line) } },
    ...options,
  })
  apps.push(app)
  return app
}

interface Answer {
  status: number
  headers: Record<string, string | string[] | number | undefined>
  body: any
  text: string
}

async function post(app: AuthServer, url: string, payload: object, headers: Record<string, string> = {}) {
  const response = await app.inject({ method: 'POST', url, payload, headers })
  return {
    status: response.statusCode,
    headers: response.headers,
    body: response.body === '' ? undefined : response.json(),
    text: response.body,
  } satisfies Answer
}

const loginAs = (app: AuthServer) => post(app, '/auth/login', { username: 'ada', password: PASSWORD })
const refresh = (app: AuthServer, refreshToken: string) => post(app, '/refresh/token', { refreshToken })

/** the answer a client retries, keeping its session */
function expectUnavailable(answer: Answer) {
  expect({ status: answer.status, body: answer.body }).toMatchObject({
    status: 503,
    body: { error: 'temporarily_unavailable', code: 'ERR_UNAVAILABLE' },
  })
  expect(answer.headers['retry-after']).toMatch(/^\d+$/)
  expect(answer.headers['cache-control']).toBe('no-store')
}

async function freshLogin(app: AuthServer): Promise<{ accessToken: string; refreshToken: string }> {
  const answer = await loginAs(app)
  expect(answer.status).toBe(200)
  return answer.body
}

const secrets = new Set<string>([PASSWORD])
function remember<T extends Answer>(answer: T): T {
  for (const key of ['accessToken', 'refreshToken']) {
    if (typeof answer.body?.[key] === 'string') secrets.add(answer.body[key])
  }
  return answer
}

afterAll(async () => {
  for (const app of apps) await app.close()
  const text = logs.join('')
  // the failures were logged, for the operator, with what went wrong
  expect(text).toContain('database unavailable')
  for (const secret of secrets) expect(text).not.toContain(secret)
})

/* ---------------------------------------------------------------- SQLite */

describe('SQLite', () => {
  let dir: string
  let filename: string
  let other: Database.Database
  let app: AuthServer
  /** the server's own connection, for the pragmas that make it fail (query_only, max_page_count) */
  let handle: Database.Database

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tokenflow-failures-'))
    filename = join(dir, 'tokenflow.db')
    const pragma = vi.spyOn(Database.prototype, 'pragma')
    const store = createSqliteStore({ filename, busyTimeout: 50 })
    handle = pragma.mock.contexts[0] as Database.Database
    pragma.mockRestore()
    app = server({ store })
    await app.ready()
    await app.tokenflow.issuer.addUser('ada', PASSWORD)
    other = new Database(filename, { timeout: 0 })
  })
  afterEach(() => {
    if (other.inTransaction) other.exec('ROLLBACK')
    handle.pragma('query_only = OFF')
    handle.pragma('max_page_count = 4294967294')
  })
  afterAll(async () => {
    other.close()
    await app.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('a refresh while another connection holds the write lock past busyTimeout answers 503, and the same token refreshes after', async () => {
    const tokens = remember((await freshLogin(app)) as any)
    other.exec('BEGIN IMMEDIATE')

    expectUnavailable(await refresh(app, tokens.refreshToken))

    other.exec('ROLLBACK')
    const after = remember(await refresh(app, tokens.refreshToken))
    expect(after.status).toBe(200)
    expect(remember(await refresh(app, after.body.refreshToken)).status).toBe(200)
  })

  it('a login while the database is locked answers 503, and logs in once it is free', async () => {
    other.exec('BEGIN IMMEDIATE')
    expectUnavailable(await loginAs(app))
    other.exec('ROLLBACK')
    remember((await freshLogin(app)) as any)
  })

  it('a logout by access token while the database is locked answers 503 instead of 200 with the session still live', async () => {
    const tokens = remember((await freshLogin(app)) as any)
    other.exec('BEGIN IMMEDIATE')

    expectUnavailable(await post(app, '/auth/logout', {}, { authorization: `Bearer ${tokens.accessToken}` }))

    other.exec('ROLLBACK')
    const logout = await post(app, '/auth/logout', {}, { authorization: `Bearer ${tokens.accessToken}` })
    expect(logout.status).toBe(200)
    // the logout really ended the session
    expect((await refresh(app, tokens.refreshToken)).body).toMatchObject({ error: 'invalid_grant' })
  })

  it('a logout by refresh token while the database is locked answers 503', async () => {
    const tokens = remember((await freshLogin(app)) as any)
    other.exec('BEGIN IMMEDIATE')
    expectUnavailable(await post(app, '/auth/logout', { refreshToken: tokens.refreshToken }))
    other.exec('ROLLBACK')
    expect((await post(app, '/auth/logout', { refreshToken: tokens.refreshToken })).status).toBe(200)
  })

  it('a read-only database (SQLITE_READONLY) answers 503 to refreshes and logins, and both work once writable', async () => {
    const tokens = remember((await freshLogin(app)) as any)
    handle.pragma('query_only = ON')

    expectUnavailable(await refresh(app, tokens.refreshToken))
    expectUnavailable(await loginAs(app))

    handle.pragma('query_only = OFF')
    expect(remember(await refresh(app, tokens.refreshToken)).status).toBe(200)
    remember((await freshLogin(app)) as any)
  })

  it('a full database (SQLITE_FULL) answers a login with 503, and logins work again once there is room', async () => {
    const tokens = remember((await freshLogin(app)) as any)
    const pages = handle.pragma('page_count', { simple: true }) as number
    handle.pragma(`max_page_count = ${pages}`)
    // fill the last pages: some login finds no room
    let answer: Answer | undefined
    for (let i = 0; i < 200; i++) {
      answer = remember(await loginAs(app))
      if (answer.status !== 200) break
    }
    expectUnavailable(answer!)
    // a rotation updates its row in place: it goes on
    expect(remember(await refresh(app, tokens.refreshToken)).status).toBe(200)

    handle.pragma('max_page_count = 4294967294')
    remember((await freshLogin(app)) as any)
  })
})

/* ---------------------------------------------------------------- PostgreSQL */

describe.skipIf(!databaseUrl)('PostgreSQL', () => {
  const schema = `tf_failures_${randomBytes(6).toString('hex')}`
  // trust auth ignores it, but it is in the connection string: it must never reach a log
  const dbPassword = `pw-${randomBytes(8).toString('hex')}`
  const url = new URL(databaseUrl ?? 'postgres://localhost/test')
  url.password = dbPassword
  const connectionString = url.toString()
  secrets.add(dbPassword)
  const admin = new pg.Pool({ connectionString: databaseUrl, max: 4 })
  const pools: pg.Pool[] = []
  let clock = Date.now()
  const now = () => clock

  const pool = (config: pg.PoolConfig = {}) => {
    const created = new pg.Pool({ connectionString, ...config })
    // as the README tells every app: a killed idle connection must not end the process
    created.on('error', () => {})
    pools.push(created)
    return created
  }
  const start = async (client: pg.Pool, options: Partial<AuthServerOptions> = {}) => {
    const app = server({ store: createPostgresStore({ client, schema }), now, ...options })
    await app.ready()
    return app
  }
  /** waits until `count` statements on this schema's sessions wait for a lock */
  const lockWaiters = async (count: number) => {
    for (;;) {
      const { rows } = await admin.query(
        `SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`,
        [`%"${schema}".sessions%`],
      )
      if (rows.length >= count) return rows.map((row) => row.pid as number)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
  /** holds a row lock on the session in another transaction, until the returned release() */
  const lockSession = async (sessionId: string) => {
    const locker = await admin.connect()
    await locker.query('BEGIN')
    await locker.query(`SELECT * FROM "${schema}".sessions WHERE id = $1 FOR UPDATE`, [sessionId])
    return async () => {
      await locker.query('ROLLBACK')
      locker.release()
    }
  }
  const sessionOf = (refreshToken: string) => parseRefreshToken(refreshToken)!.sessionId

  beforeAll(async () => {
    await admin.query(`CREATE SCHEMA ${schema}`)
    const app = await start(pool({ max: 2 }))
    await app.tokenflow.issuer.addUser('ada', PASSWORD)
  })
  afterAll(async () => {
    for (const app of apps) await app.close()
    for (const created of pools) await created.end()
    await admin.query(`DROP SCHEMA ${schema} CASCADE`)
    await admin.end()
  })

  it('an exhausted pool answers refreshes and logins with 503, and the same token refreshes once a connection is free', async () => {
    const client = pool({ max: 1, connectionTimeoutMillis: 100 })
    const app = await start(client)
    const tokens = remember((await freshLogin(app)) as any)
    const held = await client.connect()

    expectUnavailable(await refresh(app, tokens.refreshToken))
    expectUnavailable(await loginAs(app))

    held.release()
    expect(remember(await refresh(app, tokens.refreshToken)).status).toBe(200)
  })

  it('a refresh that hits statement_timeout behind a row lock answers 503 and commits nothing', async () => {
    const app = await start(pool({ max: 2, options: '-c statement_timeout=200' }))
    const tokens = remember((await freshLogin(app)) as any)
    const release = await lockSession(sessionOf(tokens.refreshToken))

    expectUnavailable(await refresh(app, tokens.refreshToken))

    await release()
    const after = remember(await refresh(app, tokens.refreshToken))
    expect(after.status).toBe(200)
    expect(remember(await refresh(app, after.body.refreshToken)).status).toBe(200)
  })

  it('a retry of a refresh that waited on a row lock past reuseGrace gets the same new token, not a reuse revocation', async () => {
    const app = await start(pool({ max: 4 }), { reuseGrace: 1000 })
    const tokens = remember((await freshLogin(app)) as any)
    const release = await lockSession(sessionOf(tokens.refreshToken))

    // the first refresh waits on the lock; its client gives up (a timeout) and retries, later than reuseGrace
    const first = refresh(app, tokens.refreshToken)
    await lockWaiters(1)
    clock += 5000
    const retry = refresh(app, tokens.refreshToken)
    await lockWaiters(2)
    await release()

    const [lost, answered] = [remember(await first), remember(await retry)]
    expect(lost.status).toBe(200)
    expect({ status: answered.status, body: answered.body }).toMatchObject({ status: 200 })
    expect(answered.body.refreshToken).toBe(lost.body.refreshToken)
    // the session lives on
    expect(remember(await refresh(app, answered.body.refreshToken)).status).toBe(200)
  })

  it('a connection terminated in the middle of a refresh answers 503, and the same token refreshes on a new connection', async () => {
    const app = await start(pool({ max: 2 }))
    const tokens = remember((await freshLogin(app)) as any)
    const release = await lockSession(sessionOf(tokens.refreshToken))

    const pending = refresh(app, tokens.refreshToken)
    const [pid] = await lockWaiters(1)
    await admin.query('SELECT pg_terminate_backend($1)', [pid])
    expectUnavailable(await pending)

    await release()
    const after = remember(await refresh(app, tokens.refreshToken))
    expect(after.status).toBe(200)
    expect(remember(await refresh(app, after.body.refreshToken)).status).toBe(200)
  })

  /**
   * A server on a scratch database of its own, with ada logged in. The database is dropped afterwards, under
   * its own name and as `${name}_away` (what a test may rename it to), whatever state the test left it in.
   */
  async function onScratchDatabase(
    prefix: string,
    run: (scratch: { app: AuthServer; database: string; tokens: any }) => Promise<void>,
  ) {
    const database = `${prefix}_${randomBytes(6).toString('hex')}`
    await admin.query(`CREATE DATABASE ${database}`)
    const target = new URL(connectionString)
    target.pathname = `/${database}`
    const client = pool({ connectionString: target.toString(), max: 2 })
    try {
      const app = server({ store: createPostgresStore({ client }), now })
      await app.ready()
      await app.tokenflow.issuer.addUser('ada', PASSWORD)
      await run({ app, database, tokens: remember((await freshLogin(app)) as any) })
      await app.close()
    } finally {
      await client.end()
      pools.splice(pools.indexOf(client), 1)
      for (const name of [database, `${database}_away`]) {
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      }
    }
  }

  it('a database closed to connections for maintenance (ALLOW_CONNECTIONS false, SQLSTATE 55000) answers 503, and the same token refreshes once it opens', async () => {
    await onScratchDatabase('tf_closed', async ({ app, database, tokens }) => {
      await admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS false`)
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [
        database,
      ])
      expectUnavailable(await refresh(app, tokens.refreshToken))
      expectUnavailable(await loginAs(app))

      await admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS true`)
      expect(remember(await refresh(app, tokens.refreshToken)).status).toBe(200)
    })
  })

  it('bug: a database that is not there (renamed during maintenance, SQLSTATE 3D000) answered 500 ERR_INTERNAL; now 503, and the same token refreshes once it is back', async () => {
    await onScratchDatabase('tf_renamed', async ({ app, database, tokens }) => {
      // a rename needs the database to itself: the pool's idle connections are ended first, and its next
      // connection finds no database of that name
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [
        database,
      ])
      await admin.query(`ALTER DATABASE ${database} RENAME TO ${database}_away`)
      expectUnavailable(await refresh(app, tokens.refreshToken))
      expectUnavailable(await loginAs(app))

      await admin.query(`ALTER DATABASE ${database}_away RENAME TO ${database}`)
      const after = remember(await refresh(app, tokens.refreshToken))
      expect(after.status).toBe(200)
      expect(remember(await refresh(app, after.body.refreshToken)).status).toBe(200)
    })
  })

  it('serialization failures that outlast the retries answer 503, and the same token refreshes after', async () => {
    const app = await start(pool({ max: 2 }))
    const tokens = remember((await freshLogin(app)) as any)
    await admin.query(`CREATE FUNCTION "${schema}".serialization_failure() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN RAISE EXCEPTION 'could not serialize access' USING ERRCODE = 'serialization_failure'; END $$`)
    await admin.query(`CREATE TRIGGER serialization_failure BEFORE UPDATE ON "${schema}".sessions
      FOR EACH ROW EXECUTE FUNCTION "${schema}".serialization_failure()`)

    expectUnavailable(await refresh(app, tokens.refreshToken))

    await admin.query(`DROP TRIGGER serialization_failure ON "${schema}".sessions`)
    expect(remember(await refresh(app, tokens.refreshToken)).status).toBe(200)
  })

  it('a rotation that committed is answered even when reading the signing keys fails after it', async () => {
    const app = await start(pool({ max: 2, options: '-c statement_timeout=200' }))
    const tokens = remember((await freshLogin(app)) as any)
    // the keyring reads the keys again after its cache time (30 s); the keys table is locked meanwhile
    clock += 31_000
    const locker = await admin.connect()
    await locker.query('BEGIN')
    await locker.query(`LOCK TABLE "${schema}".signing_keys IN ACCESS EXCLUSIVE MODE`)
    let answer: Answer
    try {
      // the rotation commits before the keys are read: an error now would leave the client with a spent
      // token, and its retry after reuseGrace would revoke the session
      answer = remember(await refresh(app, tokens.refreshToken))
    } finally {
      await locker.query('ROLLBACK')
      locker.release()
    }
    expect({ status: answer.status, body: answer.body }).toMatchObject({ status: 200 })
    expect(remember(await refresh(app, answer.body.refreshToken)).status).toBe(200)
  })
})
