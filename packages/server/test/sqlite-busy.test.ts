/**
 * The SQLite store while another connection holds the write lock (a long transaction in the `sqlite3`
 * shell, another process): a write that finds the database locked waits without blocking the event
 * loop, so reads and requests that need no write are served meanwhile; it completes once the lock is
 * released, or fails with SQLITE_BUSY (a 503) about `busyTimeout` after its own start, not after the
 * waits of every write before it. The driver used to wait inside its synchronous busy handler: 8 writes
 * behind a lock answered at 5, 10 … 40 s, and a JWKS request waited 20 s.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type AuthServer, createAuthServer } from '@tokenflow/server'
import Database from 'better-sqlite3'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { isStoreUnavailable } from '../src/errors.js'
import { createSqliteStore, type SqliteStoreOptions } from '../src/stores/sqlite.js'
import type { SessionRecord, TokenStore } from '../src/stores/store.js'
import { AUDIENCE, ISSUER, PASSWORD } from './helpers/http.js'
import { sessionRecord } from './helpers/records.js'
import { thrown } from './helpers/thrown.js'

const NOW = 1_700_000_000_000
/** packages/server, where `require('better-sqlite3')` resolves */
const serverDir = join(dirname(fileURLToPath(import.meta.url)), '..')

/** A promise's outcome as it comes, so a test can ask whether it is still pending. */
interface Watched<T> {
  promise: Promise<T>
  settled: boolean
  /** ms from `watch()` to settling */
  after: number
  /** `performance.now()` when it settled */
  at: number
  value?: T
  error?: unknown
}

function watch<T>(promise: Promise<T>): Watched<T> {
  const started = performance.now()
  const watched: Watched<T> = { promise, settled: false, after: Number.NaN, at: Number.NaN }
  const settle = () => {
    watched.settled = true
    watched.at = performance.now()
    watched.after = watched.at - started
  }
  promise.then(
    (value) => {
      watched.value = value
      settle()
    },
    (error: unknown) => {
      watched.error = error
      settle()
    },
  )
  return watched
}

const pause = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const session = sessionRecord
/** the user the sessions belong to */
const ada = { id: 'u1', username: 'ada', passwordHash: 'x', createdAt: NOW, passwordChangedAt: NOW }

describe('sqlite store behind another connection’s write lock', () => {
  let dir: string
  let filename: string
  let store: TokenStore
  /** the other connection: holds the write lock, and sees only what was committed */
  let other: Database.Database

  const open = async (options: SqliteStoreOptions = {}) => {
    store = createSqliteStore({ filename, ...options })
    await store.migrate()
    return store
  }
  const createSessions = async (count: number, overrides: Partial<SessionRecord> = {}) => {
    const sessions: SessionRecord[] = []
    for (let i = 0; i < count; i++) {
      const created = session(overrides)
      await store.createSession(created)
      sessions.push(created)
    }
    return sessions
  }
  const committedCounter = (id: string) =>
    other.prepare('SELECT counter FROM sessions WHERE id = ?').pluck().get(id) as number | undefined
  /** takes the write lock on the other connection, as `BEGIN EXCLUSIVE` in the sqlite3 shell does */
  const lock = () => other.exec('BEGIN EXCLUSIVE')
  const unlock = () => {
    if (other.inTransaction) other.exec('ROLLBACK')
  }

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tokenflow-sqlite-busy-'))
    filename = join(dir, 'tokenflow.db')
    await open()
    await store.createUser(ada)
    await store.close()
    other = new Database(filename, { timeout: 0 })
  })

  afterEach(async () => {
    unlock()
    await store.close()
    other.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('a write waiting for the lock does not block the event loop: timers fire and reads resolve meanwhile', async () => {
    await open({ busyTimeout: 2000 })
    const [existing] = await createSessions(1)
    lock()

    const write = watch(store.createSession(session()))
    let timerFired = false
    setTimeout(() => {
      timerFired = true
    }, 10)
    await pause(30)
    const read = await store.getSession(existing!.id)

    expect(timerFired).toBe(true)
    expect(read).toMatchObject({ id: existing!.id, counter: 0 })
    expect(write.settled).toBe(false)

    unlock()
    await write.promise
    expect(write.error).toBeUndefined()
  })

  it('writes waiting for the lock all complete once it is released: a batch of rotations, a race of two rotations of one session (one wins), a login, a revocation', async () => {
    await open({ busyTimeout: 2000 })
    const sessions = await createSessions(5)
    const [raced, revoked] = await createSessions(2)
    lock()

    const rotations = sessions.map((current, i) => watch(store.rotateSession(current.id, 0, NOW + i)))
    const race = [
      watch(store.rotateSession(raced!.id, 0, NOW + 10)),
      watch(store.rotateSession(raced!.id, 0, NOW + 11)),
    ]
    const created = session()
    const login = watch(store.createSession(created))
    const revocation = watch(store.revokeSession(revoked!.id, NOW, 'logout'))
    const all = [...rotations, ...race, login, revocation]

    // several retries later, nothing is done and nothing failed: they wait
    await pause(100)
    expect(all.map((pending) => pending.settled)).toEqual(all.map(() => false))
    for (const current of [...sessions, raced!]) expect(committedCounter(current.id)).toBe(0)

    unlock()
    await Promise.allSettled(all.map((pending) => pending.promise))

    for (const pending of all) expect(pending.error).toBeUndefined()
    rotations.forEach((rotation, i) => {
      expect(rotation.value).toEqual({ ...sessions[i], counter: 1, rotatedAt: NOW + i, lastUsedAt: NOW + i })
      expect(committedCounter(sessions[i]!.id)).toBe(1)
    })
    // arrival order: the first rotation of the session wins the compare-and-swap, the second loses
    expect(race.map((rotation) => rotation.value?.counter ?? null)).toEqual([1, null])
    expect(committedCounter(raced!.id)).toBe(1)
    expect(await store.getSession(raced!.id)).toEqual(race[0]!.value)
    expect(committedCounter(created.id)).toBe(0)
    expect(revocation.value).toBe(true)
    expect(await store.getSession(revoked!.id)).toMatchObject({ revokedAt: NOW, revokedReason: 'logout' })
  })

  it('with groupCommit false, rotations waiting for the lock complete once it is released, and one of a race wins', async () => {
    await open({ busyTimeout: 2000, groupCommit: false })
    const [first, second] = await createSessions(2)
    lock()

    const rotations = [
      watch(store.rotateSession(first!.id, 0, NOW)),
      watch(store.rotateSession(second!.id, 0, NOW)),
      watch(store.rotateSession(second!.id, 0, NOW)),
    ]
    await pause(50)
    expect(rotations.map((rotation) => rotation.settled)).toEqual([false, false, false])

    unlock()
    await Promise.allSettled(rotations.map((rotation) => rotation.promise))

    expect(rotations[0]!.value).toMatchObject({ counter: 1 })
    // the two rotations of one session retried independently: either may win, never both
    const raced = rotations.slice(1).map((rotation) => rotation.value?.counter ?? null)
    expect(raced.sort()).toEqual([1, null])
    expect([committedCounter(first!.id), committedCounter(second!.id)]).toEqual([1, 1])
  })

  it('N writes behind a lock held past busyTimeout all fail with SQLITE_BUSY (a 503) together, not one busyTimeout after another', async () => {
    const busyTimeout = 300
    await open({ busyTimeout })
    const [rotated, revoked] = await createSessions(2)
    lock()

    const started = performance.now()
    const writes = [
      watch(store.createSession(session())),
      watch(store.rotateSession(rotated!.id, 0, NOW)),
      watch(store.revokeSession(revoked!.id, NOW, 'logout')),
      watch(
        store.createUser({
          id: 'u2',
          username: 'bob',
          passwordHash: 'x',
          createdAt: NOW,
          passwordChangedAt: NOW,
        }),
      ),
      watch(store.setPasswordHash('u1', 'y', NOW)),
    ]
    // sequential waits took 5 × 300 = 1,500 ms; together they take about 300
    await Promise.race([Promise.allSettled(writes.map((write) => write.promise)), pause(4 * busyTimeout)])

    // all settled within 4 × busyTimeout of the first one's start (a loose bound, for a loaded machine)
    expect(writes.map((write) => write.at - started <= 4 * busyTimeout)).toEqual(writes.map(() => true))
    for (const write of writes) {
      expect(write.error).toMatchObject({ code: 'SQLITE_BUSY' })
      expect(isStoreUnavailable(write.error)).toBe(true)
      // each waited its own busyTimeout before giving up (a timer may fire a millisecond early)
      expect(write.after).toBeGreaterThanOrEqual(busyTimeout - 5)
    }
    expect(committedCounter(rotated!.id)).toBe(0)
    unlock()
    expect(await store.getSession(revoked!.id)).toMatchObject({ revokedAt: null })
    expect(await store.getUserByName('bob')).toBeNull()
    // the store goes on once the lock is gone
    expect(await store.rotateSession(rotated!.id, 0, NOW)).toMatchObject({ counter: 1 })
  })

  it('each rotation of a batch waiting for the lock has its own busyTimeout: a later one commits after an earlier one gave up', async () => {
    // wide enough apart that a loaded machine's stalls do not close the gap between the two deadlines
    const busyTimeout = 1_500
    await open({ busyTimeout })
    const [early, late] = await createSessions(2)
    lock()

    const first = watch(store.rotateSession(early!.id, 0, NOW))
    await pause(800)
    const second = watch(store.rotateSession(late!.id, 0, NOW))
    // the first gives up at its own busyTimeout, and the second, which joined its retries, waits on
    await first.promise.catch(() => {})
    // the second's own deadline is at least 800 ms later
    await pause(50)
    expect(first.error).toMatchObject({ code: 'SQLITE_BUSY' })
    expect(second.settled).toBe(false)

    unlock()
    expect(await second.promise).toMatchObject({ counter: 1 })
    expect([committedCounter(early!.id), committedCounter(late!.id)]).toEqual([0, 1])
  })

  it('busyTimeout 0 still fails at once', async () => {
    await open({ busyTimeout: 0 })
    const [current] = await createSessions(1)
    lock()

    const write = watch(store.createSession(session()))
    const rotation = watch(store.rotateSession(current!.id, 0, NOW))
    // a turn of the event loop: the batch is tried once, and no retry was waited for
    await new Promise(setImmediate)
    await new Promise(setImmediate)

    expect(write.error).toMatchObject({ code: 'SQLITE_BUSY' })
    expect(rotation.error).toMatchObject({ code: 'SQLITE_BUSY' })
  })

  it('a prune waiting for the lock lets the event loop run, and deletes once the lock is released', async () => {
    await open({ busyTimeout: 2000, pruneBatchSize: 2 })
    await createSessions(5, { expiresAt: NOW - 1 })
    const [live] = await createSessions(1)
    lock()

    const prune = watch(store.deleteExpiredSessions(NOW))
    let timerFired = false
    setTimeout(() => {
      timerFired = true
    }, 10)
    await pause(50)
    expect(timerFired).toBe(true)
    expect(prune.settled).toBe(false)

    unlock()
    expect(await prune.promise).toBe(5)
    expect(other.prepare('SELECT id FROM sessions').pluck().all()).toEqual([live!.id])
  })

  it('writes waiting for the lock apply in the order they were asked for: a revocation asked for after its session’s creation finds the session', async () => {
    await open({ busyTimeout: 2000, groupCommit: false })
    lock()
    // 20 pairs: with a timer per waiting write (the code before), each pair's order was a coin toss
    const pairs = Array.from({ length: 20 }, () => {
      const created = session()
      return {
        created,
        creation: watch(store.createSession(created)),
        revocation: watch(store.revokeSession(created.id, NOW, 'logout')),
      }
    })
    await pause(60)
    unlock()
    await Promise.allSettled(
      pairs.flatMap(({ creation, revocation }) => [creation.promise, revocation.promise]),
    )

    for (const { created, creation, revocation } of pairs) {
      expect(creation.error).toBeUndefined()
      expect(revocation.value).toBe(true)
      expect(await store.getSession(created.id)).toMatchObject({ revokedAt: NOW, revokedReason: 'logout' })
    }
  })

  it('writes waiting for the lock make one try per pause between them, not one each: 200 waiting writes, fewer than 400 statement runs', async () => {
    await open({ busyTimeout: 5000 })
    const sessions = await createSessions(200)
    // every statement run of every connection in this process, failed or not
    const statementPrototype = Object.getPrototypeOf(other.prepare('SELECT 1')) as {
      run: (...parameters: unknown[]) => unknown
    }
    const run = vi.spyOn(statementPrototype, 'run')
    try {
      lock()
      const revocations = sessions.map((current) => watch(store.revokeSession(current.id, NOW, 'logout')))
      // about ten pauses of 5-100 ms; the code before tried each of the 200 writes after each of its own
      await pause(600)
      expect(revocations.filter((revocation) => revocation.settled)).toEqual([])
      unlock()
      await Promise.allSettled(revocations.map((revocation) => revocation.promise))
      for (const revocation of revocations) expect(revocation.value).toBe(true)
      expect(run.mock.calls.length).toBeGreaterThanOrEqual(200)
      expect(run.mock.calls.length).toBeLessThan(400)
    } finally {
      run.mockRestore()
    }
  })

  it('a read whose first try meets SQLITE_BUSY (another connection recovering the WAL) tries again on its own, not behind the writes waiting for the write lock', async () => {
    await open({ busyTimeout: 5000 })
    const [existing] = await createSessions(1)
    lock()
    const writes = [
      watch(store.createSession(session())),
      watch(store.revokeSession(existing!.id, NOW, 'logout')),
    ]
    await pause(20)
    // the next statement read fails once, as while another connection recovers the WAL
    const statementPrototype = Object.getPrototypeOf(other.prepare('SELECT 1')) as {
      get: (...parameters: unknown[]) => unknown
    }
    const get = statementPrototype.get
    let failed = false
    const spy = vi.spyOn(statementPrototype, 'get').mockImplementation(function (
      this: unknown,
      ...parameters
    ) {
      if (failed) return get.apply(this, parameters)
      failed = true
      throw new Database.SqliteError('database is locked', 'SQLITE_BUSY_RECOVERY')
    })
    try {
      // was: it waited behind the two writes, until the lock was released or their busyTimeout ran out
      const read = await store.getSession(existing!.id)
      expect(failed).toBe(true)
      expect(read).toMatchObject({ id: existing!.id, revokedAt: null })
      expect(writes.map((write) => write.settled)).toEqual([false, false])
    } finally {
      spy.mockRestore()
    }
    unlock()
    await Promise.all(writes.map((write) => write.promise))
    expect(writes[1]!.value).toBe(true)
  })

  it('a waiting write that fails for another reason (a foreign key) rejects with that error, and the writes behind it still run', async () => {
    await open({ busyTimeout: 2000 })
    lock()
    const orphan = watch(store.createSession(session({ userId: 'nobody' })))
    const created = session()
    const behind = watch(store.createSession(created))
    await pause(50)
    unlock()
    await Promise.allSettled([orphan.promise, behind.promise])
    expect(orphan.error).toMatchObject({ name: 'AuthError', code: 'ERR_NOT_FOUND' })
    expect(behind.error).toBeUndefined()
    expect(committedCounter(created.id)).toBe(0)
  })

  it('a long queue of waiting writes runs in slices once the lock is released: the event loop gets turns in between', async () => {
    await open({ busyTimeout: 5000 })
    const sessions = await createSessions(3000)
    lock()
    const revocations = sessions.map((current) => watch(store.revokeSession(current.id, NOW, 'logout')))
    await pause(30)
    // how many had settled when the event loop next got a turn after the first one settled
    let atFirstTurn: number | undefined
    void revocations[0]!.promise.then(() =>
      setImmediate(() => {
        atFirstTurn = revocations.filter((revocation) => revocation.settled).length
      }),
    )
    unlock()
    await Promise.all(revocations.map((revocation) => revocation.promise))
    for (const revocation of revocations) expect(revocation.value).toBe(true)
    // in one slice (the code without slices) all 3,000 (one fsync each) ran before the loop got a turn
    expect(atFirstTurn).toBeGreaterThan(0)
    expect(atFirstTurn).toBeLessThan(revocations.length)
  })

  it('close() lets the writes waiting for the lock finish, and they commit when it is released in time', async () => {
    await open({ busyTimeout: 2000 })
    const [current] = await createSessions(1)
    lock()

    const rotation = watch(store.rotateSession(current!.id, 0, NOW))
    const created = session()
    const login = watch(store.createSession(created))
    await pause(20)
    const closed = watch(store.close())
    await pause(50)
    expect([rotation.settled, login.settled, closed.settled]).toEqual([false, false, false])

    unlock()
    await closed.promise
    expect(closed.error).toBeUndefined()
    expect(rotation.value).toMatchObject({ counter: 1 })
    expect(login.error).toBeUndefined()
    expect(committedCounter(current!.id)).toBe(1)
    expect(committedCounter(created.id)).toBe(0)
  })
})

describe('token server on SQLite behind another connection’s write lock', () => {
  let dir: string
  let app: AuthServer
  let other: Database.Database

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tokenflow-sqlite-busy-http-'))
    const filename = join(dir, 'tokenflow.db')
    app = createAuthServer({
      issuer: ISSUER,
      audience: AUDIENCE,
      rateLimit: false,
      pruneInterval: 0,
      logger: false,
      store: createSqliteStore({ filename, busyTimeout: 2000 }),
    })
    await app.ready()
    await app.tokenflow.issuer.addUser('ada', PASSWORD)
    other = new Database(filename, { timeout: 0 })
  })

  afterEach(async () => {
    if (other.inTransaction) other.exec('ROLLBACK')
    other.close()
    await app.close()
    await app.tokenflow.store.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('GET /.well-known/jwks.json answers while a refresh waits for the lock, and the refresh answers 200 once it is released', async () => {
    const login = await app.inject({
      method: 'POST',
      url: '/auth/login',
      payload: { username: 'ada', password: PASSWORD },
    })
    expect(login.statusCode).toBe(200)
    other.exec('BEGIN EXCLUSIVE')
    // the JWKS is asked for once the refresh's rotation has reached the locked store
    const store = app.tokenflow.store
    const rotateSession = store.rotateSession.bind(store)
    let reached!: () => void
    const rotating = new Promise<void>((resolve) => {
      reached = resolve
    })
    store.rotateSession = (...args) => {
      reached()
      return rotateSession(...args)
    }

    const refresh = watch(
      app.inject({
        method: 'POST',
        url: '/refresh/token',
        payload: { refreshToken: login.json().refreshToken },
      }),
    )
    await rotating
    // and once the turn in which its group commit tries to take the lock has come
    await new Promise((resolve) => setImmediate(resolve))
    const jwks = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })

    expect(jwks.statusCode).toBe(200)
    expect(jwks.json().keys).toHaveLength(1)
    expect(refresh.settled).toBe(false)

    other.exec('ROLLBACK')
    const answer = await refresh.promise
    expect(answer.statusCode).toBe(200)
    expect(answer.json().refreshToken).toEqual(expect.any(String))
  })
})

describe('opening a new file while another process writes it', () => {
  // Another process that has begun writing a file still in rollback mode (a store opening the same new
  // file at the same moment, the sqlite3 shell): switching to WAL then fails with SQLITE_BUSY at once,
  // without the driver's busy handler. It happened to one of two servers started together on one file.
  let dir: string
  let filename: string
  let holder: ChildProcess | undefined

  /**
   * Starts a process that holds `BEGIN IMMEDIATE` on the file for `ms`, then, with `exclusiveMs`, `BEGIN
   * EXCLUSIVE` for that long (a lock SQLite does wait for with the busy handler); resolves once it holds the first.
   */
  const holdWriteLock = (ms: number, exclusiveMs = 0) =>
    new Promise<void>((resolve, reject) => {
      const script = `
        const db = new (require('better-sqlite3'))(${JSON.stringify(filename)})
        db.exec('BEGIN IMMEDIATE')
        process.stdout.write('held\\n')
        setTimeout(() => {
          db.exec('COMMIT')
          if (${exclusiveMs} === 0) return db.close()
          db.exec('BEGIN EXCLUSIVE')
          setTimeout(() => { db.exec('COMMIT'); db.close() }, ${exclusiveMs})
        }, ${ms})`
      holder = spawn(process.execPath, ['-e', script], {
        cwd: serverDir,
        stdio: ['ignore', 'pipe', 'inherit'],
      })
      holder.once('error', reject)
      holder.stdout!.once('data', () => resolve())
    })

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tokenflow-sqlite-open-'))
    filename = join(dir, 'tokenflow.db')
  })

  afterEach(() => {
    holder?.kill()
    rmSync(dir, { recursive: true, force: true })
  })

  it('waits for the lock within busyTimeout, and the store works', async () => {
    await holdWriteLock(400)
    const started = performance.now()
    const store = createSqliteStore({ filename, busyTimeout: 5000 })
    // it waited for the other process's commit (the constructor blocks, as the driver's busy handler does)
    expect(performance.now() - started).toBeGreaterThanOrEqual(100)
    await store.migrate()
    await store.createUser(ada)
    await store.createSession(session())
    await store.close()
    const check = new Database(filename, { readonly: true })
    expect(check.pragma('journal_mode', { simple: true })).toBe('wal')
    check.close()
  })

  it('fails with ERR_CONFIG and the SQLITE_BUSY as its cause once busyTimeout has passed', async () => {
    await holdWriteLock(3000)
    const started = performance.now()
    const error = thrown(() => createSqliteStore({ filename, busyTimeout: 200 }))
    const waited = performance.now() - started
    expect(error).toMatchObject({ name: 'AuthError', code: 'ERR_CONFIG', cause: { code: 'SQLITE_BUSY' } })
    expect((error as Error).message).toMatch(/^cannot open sqlite database ".*": database is locked$/)
    expect(waited).toBeGreaterThanOrEqual(190)
    expect(waited).toBeLessThan(2500)
  })

  it('waits busyTimeout in all, also when a later try meets a lock SQLite waits for with the busy handler', async () => {
    // refused at once while the other process writes, then waited for while it holds an exclusive lock: the
    // busy handler gets what is left of busyTimeout, not all of it again
    await holdWriteLock(800, 5000)
    const started = performance.now()
    const error = thrown(() => createSqliteStore({ filename, busyTimeout: 1000 }))
    const waited = performance.now() - started
    expect(error).toMatchObject({ name: 'AuthError', code: 'ERR_CONFIG', cause: { code: 'SQLITE_BUSY' } })
    expect(waited).toBeGreaterThanOrEqual(990)
    // it was 1,800 ms (800 refused at once, then a whole busyTimeout in the busy handler)
    expect(waited).toBeLessThan(1400)
  })
})
