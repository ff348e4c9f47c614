import { randomBytes } from 'node:crypto'
import { PGlite } from '@electric-sql/pglite'
import fc from 'fast-check'
import { afterAll, describe, expect, it } from 'vitest'
import { AuthError } from '../src/errors.js'
import { createIssuer, type Issuer } from '../src/issuer.js'
import { createKeyring } from '../src/keys.js'
import { parseRefreshToken } from '../src/refresh-token.js'
import { createPostgresStore } from '../src/stores/postgres.js'
import { createSqliteStore } from '../src/stores/sqlite.js'
import type { TokenStore } from '../src/stores/store.js'

/**
 * Refresh-token rotation against a model (one compare-and-swap per rotation, a reuse grace for the previous token, any other reuse revokes the session): random sequences of refreshes with any
 * token a family ever had, pairs of concurrent refreshes, logouts and clock jumps, over two families at once.
 * After every step the issuer's answer and the stored row must be what the model says:
 * - the current token rotates: the successor, counter + 1;
 * - the one before it, within `reuseGrace`, gets the byte-identical current token back, and nothing changes;
 * - any other older token revokes the family (reuse), and every later refresh is `invalid_grant`;
 * - two concurrent refreshes of the current token: both get the one successor within the grace, and with
 *   no grace exactly one does and the family is revoked;
 * - a logout with any token of the family ends it; a dead family (revoked, expired, idle) answers
 *   `invalid_grant` to every refresh and is not touched by it; another family is never affected.
 */

/** 200 sequences per store by default; TOKENFLOW_PROPERTY_RUNS raises it */
const RUNS = Math.max(200, Number(process.env.TOKENFLOW_PROPERTY_RUNS) / 5 || 0)
const SECOND = 1000
const MINUTE = 60 * SECOND
const REFRESH_TTL = 60 * MINUTE
const IDLE = 20 * MINUTE

type Op =
  /** refresh family `family` with its token number `pick` (modulo how many it has had) */
  | { type: 'refresh'; family: number; pick: number }
  /** two refreshes of the family's current token at once */
  | { type: 'race'; family: number }
  | { type: 'logout'; family: number; pick: number }
  | { type: 'advance'; ms: number }

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ type: fc.constant('refresh' as const), family: fc.nat(1), pick: fc.nat(20) }),
  },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('race' as const), family: fc.nat(1) }) },
  {
    weight: 1,
    arbitrary: fc.record({ type: fc.constant('logout' as const), family: fc.nat(1), pick: fc.nat(20) }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      type: fc.constant('advance' as const),
      // mostly around the grace window, sometimes past the idle timeout or the session's lifetime
      ms: fc.oneof(
        fc.integer({ min: 0, max: 15 * SECOND }),
        fc.integer({ min: 0, max: 15 * SECOND }),
        fc.integer({ min: 10 * MINUTE, max: 70 * MINUTE }),
      ),
    }),
  },
)

const sequence = fc.record({
  reuseGrace: fc.constantFrom(0, 10 * SECOND),
  ops: fc.array(op, { minLength: 1, maxLength: 30 }),
})

/** What the model knows of one family. */
interface Family {
  sessionId: string
  /** every refresh token the family had, by counter; the last one is current */
  tokens: string[]
  rotatedAt: number
  lastUsedAt: number
  expiresAt: number
  revoked: boolean
}

type Outcome = { ok: true; refreshToken: string } | { ok: false; code: string }

async function outcome(promise: Promise<{ refreshToken: string }>): Promise<Outcome> {
  try {
    return { ok: true, refreshToken: (await promise).refreshToken }
  } catch (error) {
    if (!(error instanceof AuthError)) throw error
    return { ok: false, code: error.code }
  }
}

const invalidGrant: Outcome = { ok: false, code: 'ERR_INVALID_GRANT' }

/** one clock for the whole file that only moves forward, so the keyring's cache never sees time go back */
const clock = { now: Date.UTC(2030, 0, 1) }

async function check(store: TokenStore, reuseGrace: number, ops: Op[]): Promise<void> {
  const issuer: Issuer = createIssuer({
    store,
    keyring: createKeyring({ store, now: () => clock.now }),
    issuer: 'https://auth.tokenflow.test',
    audience: 'https://api.tokenflow.test',
    clientId: 'web',
    refreshTokenTtl: REFRESH_TTL,
    refreshIdleTimeout: IDLE,
    reuseGrace,
    authenticate: async ({ username }) => ({ userId: username }),
    now: () => clock.now,
  })
  const families: Family[] = []
  for (const user of ['ada', 'bob']) {
    const { refreshToken } = await issuer.login(user, 'any password')
    families.push({
      sessionId: parseRefreshToken(refreshToken)!.sessionId,
      tokens: [refreshToken],
      rotatedAt: clock.now,
      lastUsedAt: clock.now,
      expiresAt: clock.now + REFRESH_TTL,
      revoked: false,
    })
  }
  const live = (family: Family) =>
    !family.revoked && family.expiresAt > clock.now && family.lastUsedAt + IDLE > clock.now

  /** What refreshing `family` with its token number `index` must answer, and what it does to the family. */
  const expectRefresh = (family: Family, index: number): Outcome => {
    const current = family.tokens.length - 1
    if (!live(family)) return invalidGrant
    if (index === current) {
      // the successor is not known before the issuer makes it: record it when it arrives
      family.rotatedAt = family.lastUsedAt = clock.now
      return { ok: true, refreshToken: '(successor)' }
    }
    if (reuseGrace > 0 && index === current - 1 && clock.now - family.rotatedAt <= reuseGrace)
      return { ok: true, refreshToken: family.tokens[current]! }
    family.revoked = true
    return invalidGrant
  }

  const steps: string[] = []
  const fail = (message: string) => {
    throw new Error(`${message}\nsteps:\n${steps.join('\n')}`)
  }
  const compare = (family: Family, actual: Outcome, expected: Outcome, what: string) => {
    if (expected.ok && expected.refreshToken === '(successor)') {
      if (!actual.ok) return fail(`${what}: expected the successor, got ${actual.code}`)
      if (family.tokens.includes(actual.refreshToken)) return fail(`${what}: the "successor" is an old token`)
      family.tokens.push(actual.refreshToken)
      return
    }
    if (actual.ok !== expected.ok) {
      fail(
        `${what}: expected ${expected.ok ? 'a token' : 'invalid_grant'}, got ${actual.ok ? 'a token' : actual.code}`,
      )
    }
    if (actual.ok && expected.ok && actual.refreshToken !== expected.refreshToken) {
      const index = family.tokens.indexOf(actual.refreshToken)
      fail(`${what}: expected token #${family.tokens.indexOf(expected.refreshToken)}, got #${index}`)
    }
    if (!actual.ok && !expected.ok && actual.code !== expected.code) fail(`${what}: got ${actual.code}`)
  }

  for (const step of ops) {
    steps.push(JSON.stringify(step))
    switch (step.type) {
      case 'advance':
        clock.now += step.ms
        break
      case 'refresh': {
        const family = families[step.family]!
        const index = step.pick % family.tokens.length
        const expected = expectRefresh(family, index)
        const actual = await outcome(issuer.refresh(family.tokens[index]))
        compare(family, actual, expected, `refresh of family ${step.family} with token #${index}`)
        break
      }
      case 'race': {
        const family = families[step.family]!
        const token = family.tokens.at(-1)!
        const wasLive = live(family)
        const [a, b] = await Promise.all([outcome(issuer.refresh(token)), outcome(issuer.refresh(token))])
        const what = `two concurrent refreshes of family ${step.family}'s current token`
        if (!wasLive) {
          compare(family, a, invalidGrant, what)
          compare(family, b, invalidGrant, what)
        } else if (reuseGrace > 0) {
          // one rotation; the other caller gets the same successor from the grace window
          if (!a.ok || !b.ok || a.refreshToken !== b.refreshToken)
            fail(`${what}: expected one shared successor`)
          compare(family, a, { ok: true, refreshToken: '(successor)' }, what)
          family.rotatedAt = family.lastUsedAt = clock.now
        } else {
          // no grace: the loser's token is the previous one, which is reuse
          if ([a, b].filter((answer) => answer.ok).length !== 1) fail(`${what}: expected exactly one success`)
          const winner = (a.ok ? a : b) as { ok: true; refreshToken: string }
          if (family.tokens.includes(winner.refreshToken)) fail(`${what}: the winner got an old token`)
          family.tokens.push(winner.refreshToken)
          family.revoked = true
        }
        break
      }
      case 'logout': {
        const family = families[step.family]!
        const index = step.pick % family.tokens.length
        await issuer.logout(family.tokens[index])
        // any token the family had proves the caller held it: the family ends (a dead one is marked too)
        family.revoked = true
        break
      }
    }
    // the stored rows say the same as the model
    for (const [index, family] of families.entries()) {
      const row = await store.getSession(family.sessionId)
      if (!row) return fail(`family ${index}: its row is gone`)
      if (row.counter !== family.tokens.length - 1)
        fail(`family ${index}: the row's counter is ${row.counter}, the model's ${family.tokens.length - 1}`)
      // a family that died of age keeps revokedAt null; one that was revoked has it set
      if ((row.revokedAt !== null) !== family.revoked)
        fail(
          `family ${index}: revokedAt is ${row.revokedAt}, the model says ${family.revoked ? '' : 'not '}revoked`,
        )
    }
  }
}

const stores: Array<[string, () => Promise<{ store: TokenStore; close: () => Promise<void> }>, number]> = [
  [
    'SQLite (group commit)',
    async () => {
      const store = createSqliteStore({ filename: ':memory:' })
      await store.migrate()
      return { store, close: () => store.close() }
    },
    RUNS,
  ],
  [
    'PostgreSQL on PGlite',
    async () => {
      const db = new PGlite()
      const store = createPostgresStore({ client: db })
      await store.migrate()
      return { store, close: () => db.close() }
    },
    Math.ceil(RUNS / 4),
  ],
]
const databaseUrl = process.env.DATABASE_URL
if (databaseUrl)
  stores.push([
    'PostgreSQL through a pg Pool (the race runs on two connections)',
    async () => {
      const pg = (await import('pg')).default
      const pool = new pg.Pool({ connectionString: databaseUrl, max: 4 })
      const schema = `tf_rotation_${randomBytes(6).toString('hex')}`
      await pool.query(`CREATE SCHEMA ${schema}`)
      const store = createPostgresStore({ client: pool, schema })
      await store.migrate()
      return {
        store,
        close: async () => {
          await pool.query(`DROP SCHEMA ${schema} CASCADE`)
          await pool.end()
        },
      }
    },
    Math.ceil(RUNS / 4),
  ])

const opened: Array<() => Promise<void>> = []
afterAll(async () => {
  for (const close of opened) await close()
})

describe('refresh-token rotation against a model (fast-check)', () => {
  for (const [name, open, runs] of stores) {
    it(`${name}: ${runs} random sequences of refreshes, races, logouts and clock jumps`, async () => {
      const { store, close } = await open()
      opened.push(close)
      await fc.assert(
        fc.asyncProperty(sequence, async ({ reuseGrace, ops }) => {
          await check(store, reuseGrace, ops)
        }),
        { numRuns: runs },
      )
    }, 120_000)
  }
})

it('the model itself fails on a store that forgets rotations', async () => {
  // a check that cannot fail proves nothing: a store whose rotation does not stick must be caught
  const store = createSqliteStore({ filename: ':memory:' })
  await store.migrate()
  const forgetful: TokenStore = {
    ...store,
    rotateSession: async (id, expected, now) => {
      const rotated = await store.rotateSession(id, expected, now)
      if (rotated) await store.revokeSession(id, now, 'forgot')
      return rotated
    },
  }
  await expect(
    check(forgetful, 10 * SECOND, [
      { type: 'refresh', family: 0, pick: 0 },
      { type: 'refresh', family: 0, pick: 1 },
    ]),
  ).rejects.toThrow(/revokedAt|expected the successor/)
  await store.close()
})
