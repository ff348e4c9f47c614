/**
 * The one contract suite every `TokenStore` runs (SQLite, PostgreSQL, PGlite). Each test gets a
 * fresh, empty database from `make()`; `makeSecond()`, when given, opens a second store over the
 * same database, as a second server instance would.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { AuthError } from '../../src/errors.js'
import { newSessionId } from '../../src/refresh-token.js'
import type { KeyRecord, SessionRecord, TokenStore, UserRecord } from '../../src/stores/store.js'
import { sessionRecord } from './records.js'

/** What `make()` hands the suite for one test. */
export interface TokenStoreFixture {
  /** a store over a fresh database, not migrated yet */
  store: TokenStore
  /** a second store over the same database, for races between instances */
  makeSecond?: () => Promise<TokenStore>
  /** drops the database; runs after every store was closed */
  cleanup: () => Promise<void>
  /** the `pruneBatchSize` the stores were made with, when it is small enough for a test to span several batches */
  pruneBatchSize?: number
}

const NOW = 1_700_000_000_000
const DAY = 86_400_000

let sequence = 0

function user(overrides: Partial<UserRecord> = {}): UserRecord {
  sequence++
  return {
    id: `user-${sequence}-${newSessionId().slice(0, 8)}`,
    username: `user${sequence}@example.com`,
    passwordHash: `$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaC0${sequence}`,
    createdAt: NOW,
    passwordChangedAt: NOW,
    ...overrides,
  }
}

function session(userId: string, overrides: Partial<SessionRecord> = {}): SessionRecord {
  return sessionRecord({ userId, userAgent: 'Mozilla/5.0 (vitest)', ...overrides })
}

function key(kid: string, createdAt: number): KeyRecord {
  return {
    kid,
    alg: 'ES256',
    privateJwk: JSON.stringify({ kty: 'EC', crv: 'P-256', kid, d: `private-${kid}` }),
    publicJwk: JSON.stringify({ kty: 'EC', crv: 'P-256', kid }),
    createdAt,
    retiredAt: null,
  }
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected the promise to reject')
}

async function expectAuthError(promise: Promise<unknown>, code: AuthError['code']): Promise<AuthError> {
  const error = await rejection(promise)
  expect(error).toBeInstanceOf(AuthError)
  expect(error).toMatchObject({ name: 'AuthError', code })
  return error as AuthError
}

/**
 * Registers the `TokenStore` contract tests for one store.
 * @example
 * describeTokenStore('sqlite', async () => ({ store: createSqliteStore({ filename: ':memory:' }), cleanup: async () => {} }))
 */
export function describeTokenStore(name: string, make: () => Promise<TokenStoreFixture>): void {
  describe(name, () => {
    let fixture: TokenStoreFixture
    let store: TokenStore
    let seconds: TokenStore[] = []

    const second = async (): Promise<TokenStore> => {
      const other = await fixture.makeSecond!()
      seconds.push(other)
      return other
    }

    beforeEach(async () => {
      fixture = await make()
      store = fixture.store
    })

    afterEach(async () => {
      for (const other of seconds) await other.close()
      seconds = []
      await store.close()
      await fixture.cleanup()
    })

    describe('migrate', () => {
      it('fails with ERR_CONFIG when the store is used before migrate()', async () => {
        const error = await expectAuthError(store.getSession(newSessionId()), 'ERR_CONFIG')
        expect(error.message).toContain('"migrate()"')
      })

      it('is idempotent: running it again keeps the data', async () => {
        await store.migrate()
        const alice = user()
        await store.createUser(alice)
        await store.migrate()
        await Promise.all([store.migrate(), store.migrate()])
        expect(await store.getUser(alice.id)).toEqual(alice)
      })

      it('two instances migrating at once both succeed and share the schema', async (context) => {
        if (!fixture.makeSecond) context.skip()
        const other = await second()
        await Promise.all([store.migrate(), other.migrate(), store.migrate(), other.migrate()])
        const alice = user()
        await store.createUser(alice)
        expect(await other.getUser(alice.id)).toEqual(alice)
      })
    })

    describe('with the schema', () => {
      let alice: UserRecord
      let bob: UserRecord

      beforeEach(async () => {
        await store.migrate()
        alice = user()
        bob = user()
        await store.createUser(alice)
        await store.createUser(bob)
      })

      describe('sessions', () => {
        it('round-trips a session, key bytes included', async () => {
          const live = session(alice.id, { counter: 7, userAgent: 'curl/8.5.0' })
          const revoked = session(alice.id, {
            clientId: 'mobile',
            revokedAt: NOW + 5,
            revokedReason: 'logout',
            userAgent: null,
          })
          await store.createSession(live)
          await store.createSession(revoked)

          const got = await store.getSession(live.id)
          expect(got).toEqual(live)
          expect(got?.key).toBeInstanceOf(Uint8Array)
          expect(Buffer.from(got!.key).equals(Buffer.from(live.key))).toBe(true)
          expect(typeof got?.counter).toBe('number')
          expect(typeof got?.expiresAt).toBe('number')
          expect(await store.getSession(revoked.id)).toEqual(revoked)
          expect(await store.getSession(newSessionId())).toBeNull()
        })

        it('createSession for an unknown user fails with ERR_NOT_FOUND and stores nothing', async () => {
          const orphan = session('no-such-user')
          const error = await expectAuthError(store.createSession(orphan), 'ERR_NOT_FOUND')
          expect(error.message).toBe('user "no-such-user" does not exist')
          expect(await store.getSession(orphan.id)).toBeNull()
        })
      })

      describe('rotateSession', () => {
        it('moves the counter once for the expected counter and returns the new row', async () => {
          const current = session(alice.id, { counter: 5 })
          await store.createSession(current)

          const rotated = await store.rotateSession(current.id, 5, NOW + 1000)
          const expected = { ...current, counter: 6, rotatedAt: NOW + 1000, lastUsedAt: NOW + 1000 }
          expect(rotated).toEqual(expected)
          expect(await store.getSession(current.id)).toEqual(expected)
        })

        it('returns null for a stale or a future counter and changes nothing', async () => {
          const current = session(alice.id, { counter: 5 })
          await store.createSession(current)
          await store.rotateSession(current.id, 5, NOW + 1000)

          expect(await store.rotateSession(current.id, 5, NOW + 2000)).toBeNull()
          expect(await store.rotateSession(current.id, 4, NOW + 2000)).toBeNull()
          expect(await store.rotateSession(current.id, 7, NOW + 2000)).toBeNull()
          expect(await store.getSession(current.id)).toMatchObject({ counter: 6, rotatedAt: NOW + 1000 })
        })

        it('returns null for a revoked session', async () => {
          const current = session(alice.id)
          await store.createSession(current)
          await store.revokeSession(current.id, NOW + 10, 'logout')

          expect(await store.rotateSession(current.id, 0, NOW + 20)).toBeNull()
          expect(await store.getSession(current.id)).toMatchObject({ counter: 0, rotatedAt: NOW })
        })

        it('returns null for an expired session, from the exact expiry on', async () => {
          const current = session(alice.id, { expiresAt: NOW + 1000 })
          await store.createSession(current)

          expect(await store.rotateSession(current.id, 0, NOW + 1000)).toBeNull()
          expect(await store.rotateSession(current.id, 0, NOW + 5000)).toBeNull()
          expect(await store.getSession(current.id)).toMatchObject({ counter: 0 })
          expect(await store.rotateSession(current.id, 0, NOW + 999)).toMatchObject({ counter: 1 })
        })

        it('returns null for an unknown session', async () => {
          expect(await store.rotateSession(newSessionId(), 0, NOW)).toBeNull()
        })

        it('20 concurrent rotations with the same expected counter: exactly one wins', async () => {
          const current = session(alice.id, { counter: 3 })
          await store.createSession(current)

          const results = await Promise.all(
            Array.from({ length: 20 }, (_, i) => store.rotateSession(current.id, 3, NOW + i)),
          )
          const winners = results.filter((result) => result !== null)
          expect(winners).toHaveLength(1)
          expect(winners[0]?.counter).toBe(4)
          expect(await store.getSession(current.id)).toEqual(winners[0])
        })

        it('concurrent rotations split across two instances: exactly one wins each round', async (context) => {
          if (!fixture.makeSecond) context.skip()
          const other = await second()
          await other.migrate()
          const current = session(alice.id)
          await store.createSession(current)

          for (let round = 0; round < 5; round++) {
            const results = await Promise.all(
              Array.from({ length: 20 }, (_, i) =>
                (i % 2 === 0 ? store : other).rotateSession(current.id, round, NOW + round),
              ),
            )
            const winners = results.filter((result) => result !== null)
            expect(winners).toHaveLength(1)
            expect(winners[0]?.counter).toBe(round + 1)
          }
          expect(await other.getSession(current.id)).toMatchObject({ counter: 5 })
          expect(await store.getSession(current.id)).toMatchObject({ counter: 5 })
        })
      })

      describe('revocation', () => {
        it('revokeSession resolves true once, then false, keeping the first time and reason', async () => {
          const current = session(alice.id)
          await store.createSession(current)

          expect(await store.revokeSession(current.id, NOW + 1, 'logout')).toBe(true)
          expect(await store.revokeSession(current.id, NOW + 2, 'reuse')).toBe(false)
          expect(await store.getSession(current.id)).toEqual({
            ...current,
            revokedAt: NOW + 1,
            revokedReason: 'logout',
          })
          expect(await store.revokeSession(newSessionId(), NOW, 'logout')).toBe(false)
        })

        it('revokeSession with expectedLastUsedAt revokes only a session last used then', async () => {
          const current = session(alice.id)
          await store.createSession(current)
          // a rotation since: last used at NOW + 5
          expect(await store.rotateSession(current.id, 0, NOW + 5)).not.toBeNull()
          expect(await store.revokeSession(current.id, NOW + 10, 'session-limit', NOW)).toBe(false)
          expect(await store.getSession(current.id)).toMatchObject({ revokedAt: null, counter: 1 })
          expect(await store.revokeSession(current.id, NOW + 10, 'session-limit', NOW + 5)).toBe(true)
          expect(await store.getSession(current.id)).toMatchObject({
            revokedAt: NOW + 10,
            revokedReason: 'session-limit',
          })
        })

        it('revokeUserSessions revokes the live sessions of one user, except exceptId', async () => {
          const kept = session(alice.id)
          const another = session(alice.id)
          const third = session(alice.id)
          const earlier = session(alice.id, { revokedAt: NOW + 1, revokedReason: 'logout' })
          const expired = session(alice.id, { expiresAt: NOW + 10 })
          const bobs = session(bob.id)
          for (const s of [kept, another, third, earlier, expired, bobs]) await store.createSession(s)

          expect(await store.revokeUserSessions(alice.id, NOW + 100, 'logout-all', kept.id)).toBe(2)
          expect(await store.getSession(kept.id)).toEqual(kept)
          for (const s of [another, third]) {
            expect(await store.getSession(s.id)).toEqual({
              ...s,
              revokedAt: NOW + 100,
              revokedReason: 'logout-all',
            })
          }
          expect(await store.getSession(earlier.id)).toEqual(earlier)
          expect(await store.getSession(expired.id)).toEqual(expired)
          expect(await store.getSession(bobs.id)).toEqual(bobs)

          expect(await store.revokeUserSessions(alice.id, NOW + 200, 'password-change')).toBe(1)
          expect(await store.getSession(kept.id)).toMatchObject({
            revokedAt: NOW + 200,
            revokedReason: 'password-change',
          })
          expect(await store.revokeUserSessions(alice.id, NOW + 300, 'admin')).toBe(0)
          expect(await store.getSession(bobs.id)).toEqual(bobs)
        })
      })

      describe('listSessions', () => {
        it('lists the live sessions of one user, newest first', async () => {
          const oldest = session(alice.id, { createdAt: NOW })
          const newest = session(alice.id, { createdAt: NOW + 2 })
          const middle = session(alice.id, { createdAt: NOW + 1 })
          const revoked = session(alice.id, {
            createdAt: NOW + 3,
            revokedAt: NOW + 4,
            revokedReason: 'logout',
          })
          const expiring = session(alice.id, { createdAt: NOW + 5, expiresAt: NOW + 50 })
          const bobs = session(bob.id, { createdAt: NOW + 6 })
          for (const s of [oldest, newest, middle, revoked, expiring, bobs]) await store.createSession(s)

          const listed = await store.listSessions(alice.id, NOW + 50)
          expect(listed.map((s) => s.id)).toEqual([newest.id, middle.id, oldest.id])
          expect(listed[0]).toEqual(newest)
          expect((await store.listSessions(alice.id, NOW + 49)).map((s) => s.id)).toEqual([
            expiring.id,
            newest.id,
            middle.id,
            oldest.id,
          ])
          expect(await store.listSessions('no-such-user', NOW)).toEqual([])
        })
      })

      describe('deleteExpiredSessions', () => {
        it('deletes sessions that expired or were revoked before the given time', async () => {
          const expiredBefore = session(alice.id, { expiresAt: NOW - 1 })
          const revokedBefore = session(alice.id, { revokedAt: NOW - 1, revokedReason: 'logout' })
          const expiresAtCutoff = session(alice.id, { expiresAt: NOW })
          const revokedAtCutoff = session(alice.id, { revokedAt: NOW, revokedReason: 'reuse' })
          const revokedAfter = session(alice.id, { revokedAt: NOW + 1, revokedReason: 'logout' })
          const live = session(bob.id)
          const all = [expiredBefore, revokedBefore, expiresAtCutoff, revokedAtCutoff, revokedAfter, live]
          for (const s of all) await store.createSession(s)

          expect(await store.deleteExpiredSessions(NOW)).toBe(2)
          expect(await store.getSession(expiredBefore.id)).toBeNull()
          expect(await store.getSession(revokedBefore.id)).toBeNull()
          for (const s of [expiresAtCutoff, revokedAtCutoff, revokedAfter, live]) {
            expect(await store.getSession(s.id)).toEqual(s)
          }
          expect(await store.deleteExpiredSessions(NOW)).toBe(0)
          expect(await store.deleteExpiredSessions(NOW + 2)).toBe(3)
          expect(await store.getSession(live.id)).toEqual(live)
        })

        it('also deletes sessions last used before idleBefore (dead by the idle timeout)', async () => {
          const idle = session(alice.id, { lastUsedAt: NOW - 2 })
          const atCutoff = session(alice.id, { lastUsedAt: NOW - 1 })
          const recent = session(bob.id, { lastUsedAt: NOW })
          for (const s of [idle, atCutoff, recent]) await store.createSession(s)
          // without idleBefore (a caller of the one-argument form) nothing idle goes
          expect(await store.deleteExpiredSessions(NOW)).toBe(0)
          expect(await store.deleteExpiredSessions(NOW, NOW - 1)).toBe(1)
          expect(await store.getSession(idle.id)).toBeNull()
          for (const s of [atCutoff, recent]) expect(await store.getSession(s.id)).toEqual(s)
        })

        it('deletes the dead sessions of every batch, counts them all, and keeps the live ones', async (context) => {
          const batch = fixture.pruneBatchSize
          if (batch === undefined) context.skip()
          const dead = (i: number) =>
            [
              session(alice.id, { expiresAt: NOW - 1 - i }),
              session(bob.id, { revokedAt: NOW - 1 - i, revokedReason: 'logout' }),
              session(alice.id, { lastUsedAt: NOW - DAY - 1 - i }),
            ][i % 3]!
          // a batch of live sessions alone, a batch of dead ones alone, a mixed one, and one more past those
          const sessions = [
            ...Array.from({ length: batch! }, () => ({ dead: false, session: session(bob.id) })),
            ...Array.from({ length: batch! }, (_, i) => ({ dead: true, session: dead(i) })),
            ...Array.from({ length: batch! }, (_, i) =>
              i % 2 === 0 ? { dead: true, session: dead(i) } : { dead: false, session: session(alice.id) },
            ),
            { dead: true, session: dead(1) },
          ]
          for (const { session: s } of sessions) await store.createSession(s)

          const deadCount = sessions.filter((s) => s.dead).length
          expect(await store.deleteExpiredSessions(NOW, NOW - DAY)).toBe(deadCount)
          for (const { dead: gone, session: s } of sessions) {
            expect(await store.getSession(s.id)).toEqual(gone ? null : s)
          }
          expect(await store.deleteExpiredSessions(NOW, NOW - DAY)).toBe(0)
        })

        it('a session rotated while a prune runs is rotated, and stays', async () => {
          const dead = Array.from({ length: 3 * (fixture.pruneBatchSize ?? 1) }, (_, i) =>
            session(alice.id, { expiresAt: NOW - 1 - i }),
          )
          const live = session(bob.id)
          for (const s of [...dead, live]) await store.createSession(s)

          let pruned = false
          const pruning = store.deleteExpiredSessions(NOW, NOW - DAY).finally(() => {
            pruned = true
          })
          // the first rotation starts before the prune can have finished; more follow until it has
          let counter = 0
          do {
            const rotated = await store.rotateSession(live.id, counter, NOW + counter + 1)
            expect(rotated).toMatchObject({ id: live.id, counter: counter + 1 })
            counter++
            // each rotation in a turn of its own, as requests come: a store whose rotation settles
            // without one (SQLite without group commit) would otherwise never let the prune go on
            await new Promise((resolve) => setImmediate(resolve))
          } while (!pruned)

          expect(await pruning).toBe(dead.length)
          expect(await store.getSession(live.id)).toEqual({
            ...live,
            counter,
            lastUsedAt: NOW + counter,
            rotatedAt: NOW + counter,
          })
          for (const s of dead) expect(await store.getSession(s.id)).toBeNull()
        })
      })

      describe('users', () => {
        it('finds a user by name and by id', async () => {
          expect(await store.getUserByName(alice.username)).toEqual(alice)
          expect(await store.getUser(alice.id)).toEqual(alice)
          expect(await store.getUserByName('nobody@example.com')).toBeNull()
          expect(await store.getUser('no-such-user')).toBeNull()
        })

        it('a duplicate username fails with ERR_USER_EXISTS and keeps the first user', async () => {
          const impostor = user({ username: alice.username, passwordHash: 'other-hash' })
          const error = await expectAuthError(store.createUser(impostor), 'ERR_USER_EXISTS')
          expect(error.message).toBe(`user "${alice.username}" already exists`)
          expect(await store.getUserByName(alice.username)).toEqual(alice)
          expect(await store.getUser(impostor.id)).toBeNull()
        })

        it('listUsers lists every user, oldest first', async () => {
          const later = user({ createdAt: NOW + 2 })
          const earlier = user({ createdAt: NOW - 2 })
          await store.createUser(later)
          await store.createUser(earlier)
          const ids = (await store.listUsers()).map((u) => u.id)
          expect(ids[0]).toBe(earlier.id)
          expect(ids.at(-1)).toBe(later.id)
          expect([...ids].sort()).toEqual([alice.id, bob.id, later.id, earlier.id].sort())
        })

        it('setPasswordHash replaces the hash and passwordChangedAt', async () => {
          await store.setPasswordHash(alice.id, 'new-hash', NOW + 60_000)
          expect(await store.getUser(alice.id)).toEqual({
            ...alice,
            passwordHash: 'new-hash',
            passwordChangedAt: NOW + 60_000,
          })
          expect(await store.getUser(bob.id)).toEqual(bob)
          await expectAuthError(store.setPasswordHash('no-such-user', 'x', NOW), 'ERR_NOT_FOUND')
        })

        it('setPasswordHash with expectedHash writes only while the stored hash is still that one', async () => {
          await store.setPasswordHash(alice.id, 'rehashed', alice.passwordChangedAt, 'not-the-stored-hash')
          expect(await store.getUser(alice.id)).toEqual(alice)
          await store.setPasswordHash(alice.id, 'rehashed', alice.passwordChangedAt, alice.passwordHash)
          expect(await store.getUser(alice.id)).toEqual({ ...alice, passwordHash: 'rehashed' })
          // an unknown user is no error here: the rehash of a user deleted meanwhile just does not happen
          await store.setPasswordHash('no-such-user', 'x', NOW, 'x')
        })

        it('deleteUser deletes the user and its sessions, and nobody else', async () => {
          const first = session(alice.id)
          const revoked = session(alice.id, { revokedAt: NOW, revokedReason: 'logout' })
          const bobs = session(bob.id)
          for (const s of [first, revoked, bobs]) await store.createSession(s)

          expect(await store.deleteUser(alice.username)).toBe(true)
          expect(await store.getUser(alice.id)).toBeNull()
          expect(await store.getUserByName(alice.username)).toBeNull()
          expect(await store.getSession(first.id)).toBeNull()
          expect(await store.getSession(revoked.id)).toBeNull()
          expect(await store.getSession(bobs.id)).toEqual(bobs)
          expect(await store.getUser(bob.id)).toEqual(bob)
          expect(await store.deleteUser(alice.username)).toBe(false)
        })
      })

      describe('signing keys', () => {
        it('insertKey and listKeys round-trip, newest first', async () => {
          const older = key('k1', NOW)
          const newer = key('k2', NOW + 1)
          const retired = { ...key('k0', NOW - 1), retiredAt: NOW }
          await store.insertKey(older)
          await store.insertKey(newer)
          await store.insertKey(retired)
          expect(await store.listKeys()).toEqual([newer, older, retired])
        })

        it('a duplicate kid fails with ERR_CONFIG and keeps the first key', async () => {
          const first = key('k1', NOW)
          await store.insertKey(first)
          const error = await expectAuthError(
            store.insertKey({ ...key('k1', NOW + 1), alg: 'EdDSA' }),
            'ERR_CONFIG',
          )
          expect(error.message).toBe('signing key "k1" already exists')
          expect(await store.listKeys()).toEqual([first])
        })

        it('retireKey sets retiredAt once and drops the private key; an unknown kid fails with ERR_NOT_FOUND', async () => {
          const first = key('k1', NOW)
          const other = key('k2', NOW + 1)
          await store.insertKey(first)
          await store.insertKey(other)

          await store.retireKey('k1', NOW + 5)
          await store.retireKey('k1', NOW + 9)
          // the private half is gone, the public half (still in the JWKS for a while) is kept
          expect(await store.listKeys()).toEqual([other, { ...first, retiredAt: NOW + 5, privateJwk: '' }])
          await expectAuthError(store.retireKey('k9', NOW), 'ERR_NOT_FOUND')
        })

        it('insertFirstKey stores a key only while no live key exists', async () => {
          const first = key('k1', NOW)
          expect(await store.insertFirstKey(first)).toBe(true)
          expect(await store.insertFirstKey(key('k2', NOW + 1))).toBe(false)
          expect(await store.listKeys()).toEqual([first])
          // a retired key does not count: the store has no key that may sign
          await store.retireKey('k1', NOW + 2)
          const next = key('k3', NOW + 3)
          expect(await store.insertFirstKey(next)).toBe(true)
          expect(await store.listKeys()).toEqual([next, { ...first, retiredAt: NOW + 2, privateJwk: '' }])
          // a key stored ahead of time by a rotation is live too
          await store.retireKey('k3', NOW + 4)
          await store.insertKey(key('k4', NOW + 100))
          expect(await store.insertFirstKey(key('k5', NOW + 5))).toBe(false)
          expect((await store.listKeys()).map((record) => record.kid)).toEqual(['k4', 'k3', 'k1'])
        })

        it('insertFirstKey from two instances at once: exactly one key is stored each round', async (context) => {
          if (!fixture.makeSecond) context.skip()
          const other = await second()
          await other.migrate()
          for (let round = 0; round < 10; round++) {
            const tries = Array.from({ length: 6 }, (_, i) => key(`r${round}-${i}`, NOW + round))
            const results = await Promise.all(
              tries.map((record, i) => (i % 2 === 0 ? store : other).insertFirstKey(record)),
            )
            expect(results.filter(Boolean)).toHaveLength(1)
            const live = (await other.listKeys()).filter((record) => record.retiredAt === null)
            expect(live).toEqual([tries[results.indexOf(true)]])
            await store.retireKey(live[0]!.kid, NOW + round)
          }
        })
      })
    })
  })
}
