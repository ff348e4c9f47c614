import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { AuthError } from '../src/errors.js'
import { newSessionId } from '../src/refresh-token.js'
import { createSqliteStore } from '../src/stores/sqlite.js'
import type { SessionRecord, TokenStore } from '../src/stores/store.js'
import { describeTokenStore } from './helpers/describe-token-store.js'
import { sessionRecord } from './helpers/records.js'

const NOW = 1_700_000_000_000

function tempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tokenflow-group-commit-'))
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

/* ------------------------------------------------ the contract suite, with and without group commit */

for (const groupCommit of [true, false]) {
  describeTokenStore(`sqlite (file, two connections, groupCommit: ${groupCommit})`, async () => {
    const { dir, remove } = tempDir()
    const filename = join(dir, 'tokenflow.db')
    // small, so that the prune tests of the contract suite span several batches
    const pruneBatchSize = 4
    return {
      store: createSqliteStore({ filename, groupCommit, pruneBatchSize }),
      makeSecond: async () => createSqliteStore({ filename, groupCommit, pruneBatchSize }),
      cleanup: async () => remove(),
      pruneBatchSize,
    }
  })
}

/* ------------------------------------------------ group commit */

describe('sqlite group commit', () => {
  let dir: { dir: string; remove: () => void }
  let filename: string
  let store: TokenStore
  /** a second connection to the same file: it sees only what was committed */
  let observer: Database.Database

  const open = (options: { groupCommit?: boolean; busyTimeout?: number } = {}) =>
    createSqliteStore({ filename, ...options })

  const committedCounter = (id: string) =>
    observer.prepare('SELECT counter FROM sessions WHERE id = ?').pluck().get(id) as number

  const createSessions = async (on: TokenStore, count: number, counter = 0): Promise<SessionRecord[]> => {
    const sessions: SessionRecord[] = []
    for (let i = 0; i < count; i++) {
      const session = sessionRecord({ counter })
      await on.createSession(session)
      sessions.push(session)
    }
    return sessions
  }

  /** counts the transactions the store opens and commits, by spying on the statements it runs */
  const countTransactions = () => {
    const exec = vi.spyOn(Database.prototype, 'exec')
    const count = (sql: string) => exec.mock.calls.filter(([text]) => text === sql).length
    return {
      begins: () => count('BEGIN IMMEDIATE'),
      commits: () => count('COMMIT'),
      rollbacks: () => count('ROLLBACK'),
    }
  }

  beforeEach(async () => {
    dir = tempDir()
    filename = join(dir.dir, 'tokenflow.db')
    store = open()
    await store.migrate()
    await store.createUser({
      id: 'u1',
      username: 'ada',
      passwordHash: 'x',
      createdAt: NOW,
      passwordChangedAt: NOW,
    })
    observer = new Database(filename)
  })

  afterEach(async () => {
    vi.restoreAllMocks()
    await store.close()
    observer.close()
    dir.remove()
  })

  it('validates "groupCommit" when created', () => {
    for (const groupCommit of ['yes', 1, null]) {
      let error: unknown
      try {
        createSqliteStore({ filename: ':memory:', groupCommit: groupCommit as never })
      } catch (caught) {
        error = caught
      }
      expect(error).toBeInstanceOf(AuthError)
      expect(error).toMatchObject({ code: 'ERR_CONFIG', message: '"groupCommit" must be a boolean' })
    }
  })

  it('commits 50 concurrent rotations of different sessions in one transaction', async () => {
    const sessions = await createSessions(store, 50)
    const transactions = countTransactions()

    const results = await Promise.all(
      sessions.map((session, i) => store.rotateSession(session.id, 0, NOW + i)),
    )

    expect(transactions.begins()).toBe(1)
    expect(transactions.commits()).toBe(1)
    expect(transactions.rollbacks()).toBe(0)
    results.forEach((result, i) => {
      expect(result).toEqual({ ...sessions[i], counter: 1, rotatedAt: NOW + i, lastUsedAt: NOW + i })
      expect(committedCounter(sessions[i]!.id)).toBe(1)
    })
  })

  it('commits rotations that arrive in different event-loop turns separately', async () => {
    const [first, second] = await createSessions(store, 2)
    const transactions = countTransactions()

    expect(await store.rotateSession(first!.id, 0, NOW)).toMatchObject({ counter: 1 })
    expect(await store.rotateSession(second!.id, 0, NOW)).toMatchObject({ counter: 1 })

    expect(transactions.begins()).toBe(2)
    expect(transactions.commits()).toBe(2)
  })

  it('with groupCommit false, commits every rotation on its own (no explicit transaction)', async () => {
    await store.close()
    store = open({ groupCommit: false })
    const sessions = await createSessions(store, 5)
    const transactions = countTransactions()

    const results = await Promise.all(sessions.map((session) => store.rotateSession(session.id, 0, NOW)))

    expect(results.map((result) => result?.counter)).toEqual([1, 1, 1, 1, 1])
    expect(transactions.begins()).toBe(0)
    for (const session of sessions) expect(committedCounter(session.id)).toBe(1)
  })

  it('two rotations of the same session in one batch: the second loses the compare-and-swap', async () => {
    const [current] = await createSessions(store, 1, 7)
    const transactions = countTransactions()

    const [first, second] = await Promise.all([
      store.rotateSession(current!.id, 7, NOW + 1),
      store.rotateSession(current!.id, 7, NOW + 2),
    ])

    expect(transactions.commits()).toBe(1)
    expect(first).toMatchObject({ counter: 8, rotatedAt: NOW + 1 })
    expect(second).toBeNull()
    expect(await store.getSession(current!.id)).toEqual(first)
  })

  it('rotations in one batch run in arrival order: each sees the counter the previous one set', async () => {
    const [current] = await createSessions(store, 1)

    const results = await Promise.all([
      store.rotateSession(current!.id, 0, NOW + 1),
      store.rotateSession(current!.id, 1, NOW + 2),
      store.rotateSession(current!.id, 1, NOW + 3),
      store.rotateSession(current!.id, 2, NOW + 4),
    ])

    expect(results.map((result) => result?.counter ?? null)).toEqual([1, 2, null, 3])
    expect(committedCounter(current!.id)).toBe(3)
  })

  it('a rotation queued after a revocation in the same turn loses, as if serial', async () => {
    const [current] = await createSessions(store, 1)

    const rotation = store.rotateSession(current!.id, 0, NOW + 1)
    const revoked = store.revokeSession(current!.id, NOW, 'logout')

    expect(await revoked).toBe(true)
    expect(await rotation).toBeNull()
    expect(await store.getSession(current!.id)).toMatchObject({ counter: 0, revokedReason: 'logout' })
  })

  it('no rotation resolves before its COMMIT returned: a second connection already sees it', async () => {
    const sessions = await createSessions(store, 20)
    const seen: number[] = []

    await Promise.all(
      sessions.map((session) =>
        store.rotateSession(session.id, 0, NOW).then((result) => {
          // read through another connection, which sees committed data only
          seen.push(committedCounter(session.id))
          return result
        }),
      ),
    )

    expect(seen).toEqual(Array.from({ length: 20 }, () => 1))
  })

  it('one failing rotation fails every caller of its batch, and none of the batch is applied', async () => {
    const sessions = await createSessions(store, 10)
    const doomed = sessions[6]!
    observer.exec(`CREATE TRIGGER fail_one BEFORE UPDATE ON sessions WHEN OLD.id = '${doomed.id}'
      BEGIN SELECT RAISE(ABORT, 'simulated failure'); END`)

    const outcomes = await Promise.allSettled(
      sessions.map((session) => store.rotateSession(session.id, 0, NOW)),
    )

    for (const outcome of outcomes) {
      expect(outcome.status).toBe('rejected')
      expect((outcome as PromiseRejectedResult).reason).toMatchObject({
        code: 'SQLITE_CONSTRAINT_TRIGGER',
        message: 'simulated failure',
      })
    }
    // they were one transaction: the nine rotations before and after the failing one were rolled back
    for (const session of sessions) expect(committedCounter(session.id)).toBe(0)
  })

  it('with groupCommit false, the same failure fails only its own rotation', async () => {
    await store.close()
    store = open({ groupCommit: false })
    const sessions = await createSessions(store, 3)
    observer.exec(`CREATE TRIGGER fail_one BEFORE UPDATE ON sessions WHEN OLD.id = '${sessions[1]!.id}'
      BEGIN SELECT RAISE(ABORT, 'simulated failure'); END`)

    const outcomes = await Promise.allSettled(
      sessions.map((session) => store.rotateSession(session.id, 0, NOW)),
    )

    expect(outcomes.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'fulfilled'])
    expect(sessions.map((session) => committedCounter(session.id))).toEqual([1, 0, 1])
  })

  it('a failing COMMIT rejects every caller, applies nothing, and leaves the store usable', async () => {
    const sessions = await createSessions(store, 5)
    // a deferred foreign key is checked at COMMIT: every statement succeeds and the COMMIT fails
    observer.exec(`CREATE TABLE audit (session_id TEXT REFERENCES nowhere (id) DEFERRABLE INITIALLY DEFERRED);
      CREATE TABLE nowhere (id TEXT PRIMARY KEY);
      CREATE TRIGGER audit_rotation AFTER UPDATE ON sessions BEGIN INSERT INTO audit VALUES (NEW.id); END`)
    const transactions = countTransactions()

    const outcomes = await Promise.allSettled(
      sessions.map((session) => store.rotateSession(session.id, 0, NOW)),
    )

    expect(transactions.commits()).toBe(1)
    for (const outcome of outcomes) {
      expect(outcome.status).toBe('rejected')
      expect((outcome as PromiseRejectedResult).reason).toMatchObject({
        code: 'SQLITE_CONSTRAINT_FOREIGNKEY',
        message: 'FOREIGN KEY constraint failed',
      })
    }
    for (const session of sessions) expect(committedCounter(session.id)).toBe(0)
    expect(observer.prepare('SELECT count(*) FROM audit').pluck().get()).toBe(0)

    // the failed transaction was rolled back, not left open: the next batch commits
    observer.exec('DROP TRIGGER audit_rotation')
    const retried = await Promise.all(sessions.map((session) => store.rotateSession(session.id, 0, NOW)))
    expect(retried.map((result) => result?.counter)).toEqual([1, 1, 1, 1, 1])
    for (const session of sessions) expect(committedCounter(session.id)).toBe(1)
  })

  it('a batch that cannot get the write lock rejects every caller with SQLITE_BUSY', async () => {
    await store.close()
    store = open({ busyTimeout: 20 })
    const sessions = await createSessions(store, 3)
    observer.exec('BEGIN IMMEDIATE')

    const outcomes = await Promise.allSettled(
      sessions.map((session) => store.rotateSession(session.id, 0, NOW)),
    )
    observer.exec('ROLLBACK')

    for (const outcome of outcomes) {
      expect(outcome.status).toBe('rejected')
      expect((outcome as PromiseRejectedResult).reason).toMatchObject({ code: 'SQLITE_BUSY' })
    }
    for (const session of sessions) expect(committedCounter(session.id)).toBe(0)
    expect(await store.rotateSession(sessions[0]!.id, 0, NOW)).toMatchObject({ counter: 1 })
  })

  it('close() commits and answers the rotations already queued', async () => {
    const sessions = await createSessions(store, 3)

    const rotations = sessions.map((session) => store.rotateSession(session.id, 0, NOW))
    await store.close()

    expect((await Promise.all(rotations)).map((result) => result?.counter)).toEqual([1, 1, 1])
    for (const session of sessions) expect(committedCounter(session.id)).toBe(1)
  })

  it('a rotation before migrate() fails with ERR_CONFIG', async () => {
    const fresh = createSqliteStore({ filename: join(dir.dir, 'fresh.db') })
    try {
      const error = await rejection(fresh.rotateSession(newSessionId(), 0, NOW))
      expect(error).toBeInstanceOf(AuthError)
      expect(error).toMatchObject({ code: 'ERR_CONFIG' })
      expect((error as Error).message).toContain('"migrate()"')
    } finally {
      await fresh.close()
    }
  })

  it('a rotation after close() rejects instead of resolving', async () => {
    const [current] = await createSessions(store, 1)
    await store.close()

    const error = await rejection(store.rotateSession(current!.id, 0, NOW))

    expect(error).toBeInstanceOf(TypeError)
    expect((error as Error).message).toBe('The database connection is not open')
    expect(committedCounter(current!.id)).toBe(0)
  })
})
