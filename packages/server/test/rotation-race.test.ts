/**
 * Rotation races through the real HTTP server: two `createAuthServer` instances over one database,
 * as two processes behind a load balancer would run, on SQLite (one file), PGlite and, when
 * DATABASE_URL is set, a real PostgreSQL (two pg Pools). Issue 3, "Rotation and reuse":
 * - 20 concurrent refreshes with one token produce exactly one successor, and every response is
 *   either that successor or invalid_grant;
 * - a refresh racing a logout: once the logout has answered, no token of the family works.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import {
  type AuthenticateFunction,
  type AuthServer,
  createAuthServer,
  createSqliteStore,
  type TokenStore,
} from '@tokenflow/server'
import { createPostgresStore } from '@tokenflow/server/postgres'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseRefreshToken } from '../src/refresh-token.js'
import {
  AUDIENCE,
  type HttpReply,
  INVALID_GRANT_BODY,
  ISSUER,
  login,
  PASSWORD,
  postJson,
  refresh,
  send,
} from './helpers/http.js'

const databaseUrl = process.env.DATABASE_URL

const authenticate: AuthenticateFunction = async ({ username, password }) =>
  username === 'ada' && password === PASSWORD ? { userId: 'ada' } : null

/** Two stores over one database, as two server processes would hold. */
interface Database {
  stores: [TokenStore, TokenStore]
  close(): Promise<void>
}

/** Two listening server instances over one database. */
interface Cluster {
  apps: AuthServer[]
  origins: string[]
  /** the issuer counters summed over both instances */
  stats(): { refreshes: number; graceReplays: number; reuseDetected: number; invalidGrants: number }
  close(): Promise<void>
}

async function startCluster(stores: readonly TokenStore[], reuseGrace?: number): Promise<Cluster> {
  const apps = stores.map((store) =>
    createAuthServer({
      issuer: ISSUER,
      audience: AUDIENCE,
      clientId: 'web',
      store,
      rateLimit: false,
      pruneInterval: 0,
      // these tests are about rotation: a plain credential check keeps Argon2 out of the 40-odd logins
      authenticate,
      ...(reuseGrace === undefined ? {} : { reuseGrace }),
    }),
  )
  // started together, as a deployment would: both must agree on the signing key
  const origins = await Promise.all(apps.map((app) => app.listen({ port: 0, host: '127.0.0.1' })))
  return {
    apps,
    origins,
    stats() {
      const sum = { refreshes: 0, graceReplays: 0, reuseDetected: 0, invalidGrants: 0 }
      for (const app of apps) {
        const stats = app.tokenflow.issuer.stats
        for (const key of Object.keys(sum) as Array<keyof typeof sum>) sum[key] += stats[key]
      }
      return sum
    },
    async close() {
      for (const app of apps) await app.close()
    },
  }
}

function delta<T extends Record<string, number>>(after: T, before: T): T {
  return Object.fromEntries(Object.entries(after).map(([key, value]) => [key, value - before[key]!])) as T
}

function sessionIdOf(refreshToken: string): string {
  const parsed = parseRefreshToken(refreshToken)
  if (!parsed) throw new Error('not a refresh token')
  return parsed.sessionId
}

function expectInvalidGrant(reply: HttpReply) {
  expect(reply.status).toBe(400)
  // byte-identical to the answer for a token that never existed
  expect(reply.text).toBe(INVALID_GRANT_BODY)
  expect(reply.headers.get('cache-control')).toBe('no-store')
}

/** Registers the race tests for one kind of database. */
function describeRaces(name: string, open: () => Promise<Database>) {
  describe(name, () => {
    let db: Database | undefined
    // the default reuseGrace (10 s), and none
    let graceful: Cluster
    let strict: Cluster
    let store: TokenStore

    beforeAll(async () => {
      db = await open()
      store = db.stores[0]
      graceful = await startCluster(db.stores)
      strict = await startCluster(db.stores, 0)
      // every instance signs with the one key in the database
      const jwks = await Promise.all(
        [...graceful.origins, ...strict.origins].map(async (origin) =>
          (await send(`${origin}/.well-known/jwks.json`)).json(),
        ),
      )
      for (const set of jwks) expect(set).toEqual(jwks[0])
    })

    afterAll(async () => {
      await graceful?.close()
      await strict?.close()
      await db?.close()
    })

    it('20 concurrent refreshes of one token on two instances: one successor, and (reuseGrace 10 s) every answer is it', async () => {
      const { origins } = graceful
      const tokens = await login(origins[0]!)
      const before = graceful.stats()
      const replies = await Promise.all(
        Array.from({ length: 20 }, (_, i) => refresh(origins[i % 2]!, tokens.refreshToken)),
      )
      const successors = new Set<string>()
      for (const reply of replies) {
        if (reply.status === 200) successors.add(reply.json().refreshToken)
        else expectInvalidGrant(reply)
      }
      expect(successors.size).toBe(1)
      const [successor] = successors as Set<string> & [string]
      expect(parseRefreshToken(successor)).toMatchObject({
        sessionId: sessionIdOf(tokens.refreshToken),
        counter: 1,
      })
      // within the grace window every loser of the compare-and-swap gets the byte-identical successor
      expect(replies.map((reply) => reply.status)).toEqual(Array(20).fill(200))
      expect(replies.map((reply) => reply.json().refreshToken)).toEqual(Array(20).fill(successor))
      expect(delta(graceful.stats(), before)).toEqual({
        refreshes: 1,
        graceReplays: 19,
        reuseDetected: 0,
        invalidGrants: 0,
      })
      expect(await store.getSession(sessionIdOf(tokens.refreshToken))).toMatchObject({
        counter: 1,
        revokedAt: null,
      })
      // the successor is a working token on either instance
      const next = await refresh(origins[1]!, successor)
      expect(next.status).toBe(200)
      expect(parseRefreshToken(next.json().refreshToken)?.counter).toBe(2)
    })

    it('20 concurrent refreshes of one token on two instances with reuseGrace 0: exactly one 200, 19 invalid_grant', async () => {
      const { origins } = strict
      const tokens = await login(origins[0]!)
      const before = strict.stats()
      const replies = await Promise.all(
        Array.from({ length: 20 }, (_, i) => refresh(origins[i % 2]!, tokens.refreshToken)),
      )
      const winners = replies.filter((reply) => reply.status === 200)
      expect(winners).toHaveLength(1)
      for (const reply of replies) if (reply.status !== 200) expectInvalidGrant(reply)
      const successor = winners[0]!.json().refreshToken as string
      expect(parseRefreshToken(successor)?.counter).toBe(1)
      const after = delta(strict.stats(), before)
      expect(after).toMatchObject({ refreshes: 1, graceReplays: 0, invalidGrants: 19 })
      // without a grace window a second use of the token is reuse: the family is revoked, successor included
      expect(after.reuseDetected).toBeGreaterThanOrEqual(1)
      expect(await store.getSession(sessionIdOf(tokens.refreshToken))).toMatchObject({
        counter: 1,
        revokedReason: 'reuse',
      })
      expectInvalidGrant(await refresh(origins[0]!, successor))
    })

    for (const [label, cluster] of [
      ['reuseGrace 10 s', () => graceful],
      ['reuseGrace 0', () => strict],
    ] as const) {
      it(`refreshes racing a logout on the other instance (${label}): once the logout answered, no token of the family works`, async () => {
        const { origins } = cluster()
        const before = cluster().stats()
        for (let round = 0; round < 6; round++) {
          const tokens = await login(origins[0]!)
          let logoutAnswered = false
          const refreshes: Array<{ startedAfterLogout: boolean; reply: Promise<HttpReply> }> = []
          const startRefresh = (origin: string, token: string) => {
            const entry = { startedAfterLogout: logoutAnswered, reply: refresh(origin, token) }
            refreshes.push(entry)
            return entry.reply
          }
          // the logout names the session by the login's token, however far the chain has rotated it
          const sendLogout = () =>
            postJson(origins[(round + 1) % 2]!, '/auth/logout', { refreshToken: tokens.refreshToken })
          // round 0 sends the logout before the refreshes, the others after `round` turns of the event loop
          let logoutReply = round === 0 ? sendLogout() : undefined
          const seen = [tokens.refreshToken]
          const accessTokens = [tokens.accessToken]
          const keep = (reply: HttpReply) => {
            if (reply.status !== 200) return false
            seen.push(reply.json().refreshToken)
            accessTokens.push(reply.json().accessToken)
            return true
          }
          // even rounds: a burst of retries of the login's token on both instances (a lost answer, two
          // tabs); odd rounds: one client that keeps refreshing with the newest token it holds
          const clients =
            round % 2 === 0
              ? Array.from({ length: 6 }, async (_, i) => {
                  keep(await startRefresh(origins[i % 2]!, tokens.refreshToken))
                })
              : [
                  (async () => {
                    while (keep(await startRefresh(origins[round % 4 === 1 ? 0 : 1]!, seen.at(-1)!)));
                  })(),
                ]
          for (let wait = 0; wait < round; wait++) await new Promise((resolve) => setImmediate(resolve))
          logoutReply ??= sendLogout()
          const logout = await logoutReply
          logoutAnswered = true
          expect(logout.status).toBe(200)
          expect(logout.text).toBe('{}')
          // a refresh sent after the logout answered fails, on either instance
          for (const origin of origins) expectInvalidGrant(await startRefresh(origin, tokens.refreshToken))
          await Promise.all(clients)

          for (const entry of refreshes) {
            const reply = await entry.reply
            if (entry.startedAfterLogout) expectInvalidGrant(reply)
            else if (reply.status !== 200) expectInvalidGrant(reply)
          }
          // whatever a refresh in flight handed out before the revocation landed is dead now
          for (const token of new Set(seen)) {
            for (const origin of origins) expectInvalidGrant(await refresh(origin, token))
          }
          // and the session's access tokens no longer manage anything on the server
          for (const accessToken of new Set(accessTokens)) {
            const sessions = await send(`${origins[round % 2]}/auth/sessions`, {
              headers: { authorization: `Bearer ${accessToken}` },
            })
            expect(sessions.status).toBe(401)
            expect(sessions.json()).toMatchObject({ error: 'invalid_token', code: 'ERR_INVALID_TOKEN' })
          }
          const row = await store.getSession(sessionIdOf(tokens.refreshToken))
          expect(row?.revokedAt).not.toBeNull()
          // with a grace window the retries are replays and the chain uses each token once: never reuse,
          // so the logout is what ended the session
          if (label === 'reuseGrace 10 s') expect(row?.revokedReason).toBe('logout')
        }
        if (label === 'reuseGrace 10 s') expect(delta(cluster().stats(), before).reuseDetected).toBe(0)
      })
    }
  })
}

/* ---------------------------------------------------------------- reuseGrace 0 */

describe('reuseGrace 0', () => {
  // A frozen clock puts every request in the millisecond of the rotation. The window test was
  // `now - rotatedAt <= reuseGrace`, which is true at 0 ms, so with reuseGrace 0 a replay (or a
  // concurrent duplicate) landing in that millisecond got the successor and one more access token:
  // the token was exchanged twice, as in Keycloak #50999 (a stale token replayed within the same second).
  let app: AuthServer
  let store: TokenStore
  let origin: string
  beforeAll(async () => {
    store = createSqliteStore({ filename: ':memory:' })
    const frozen = Date.UTC(2030, 0, 1)
    app = createAuthServer({
      issuer: ISSUER,
      audience: AUDIENCE,
      store,
      reuseGrace: 0,
      rateLimit: false,
      authenticate,
      now: () => frozen,
    })
    origin = await app.listen({ port: 0, host: '127.0.0.1' })
  })
  afterAll(async () => {
    await app?.close()
    await store?.close()
  })

  it('treats a replay of the previous token in the millisecond of its rotation as reuse (it got the successor back)', async () => {
    const tokens = await login(origin)
    const first = await refresh(origin, tokens.refreshToken)
    expect(first.status).toBe(200)
    const before = app.tokenflow.issuer.stats
    expectInvalidGrant(await refresh(origin, tokens.refreshToken))
    expect(app.tokenflow.issuer.stats.reuseDetected - before.reuseDetected).toBe(1)
    expect(app.tokenflow.issuer.stats.graceReplays).toBe(0)
    expectInvalidGrant(await refresh(origin, first.json().refreshToken))
  })

  it('gives 20 concurrent refreshes in one millisecond exactly one 200 (each got the successor)', async () => {
    const tokens = await login(origin)
    const replies = await Promise.all(Array.from({ length: 20 }, () => refresh(origin, tokens.refreshToken)))
    expect(replies.filter((reply) => reply.status === 200)).toHaveLength(1)
    for (const reply of replies) if (reply.status !== 200) expectInvalidGrant(reply)
    expect(await store.getSession(sessionIdOf(tokens.refreshToken))).toMatchObject({
      counter: 1,
      revokedReason: 'reuse',
    })
  })
})

/* ---------------------------------------------------------------- SQLite */

describeRaces('SQLite: two instances over one file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tokenflow-race-'))
  const filename = join(dir, 'tokenflow.db')
  const stores: [TokenStore, TokenStore] = [createSqliteStore({ filename }), createSqliteStore({ filename })]
  return {
    stores,
    async close() {
      for (const store of stores) await store.close()
      rmSync(dir, { recursive: true, force: true })
    },
  }
})

/* ---------------------------------------------------------------- PGlite */

describeRaces('PGlite: two instances over one database', async () => {
  const pglite = new PGlite()
  await pglite.waitReady
  await pglite.query('CREATE SCHEMA tf_race')
  return {
    // PGlite is one connection: the two stores share it, so the race runs through two stores and two servers
    stores: [
      createPostgresStore({ client: pglite, schema: 'tf_race' }),
      createPostgresStore({ client: pglite, schema: 'tf_race' }),
    ],
    close: () => pglite.close(),
  }
})

/* ---------------------------------------------------------------- PostgreSQL */

describe('PostgreSQL in CI', () => {
  it.runIf(process.env.CI === 'true')('has DATABASE_URL set', () => {
    expect(
      databaseUrl,
      'DATABASE_URL is required in CI: the races must run against a real server',
    ).toBeTruthy()
  })
})

describe.skipIf(!databaseUrl)('PostgreSQL (DATABASE_URL)', () => {
  describeRaces('two instances, two pg Pools, one schema', async () => {
    // loaded only here: pg is an optional peer dependency of the package
    const pg = (await import('pg')).default
    const pools = [0, 1].map(() => {
      const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 })
      pool.on('error', () => undefined)
      return pool
    })
    // a schema per run, so parallel runs against one database never see each other's rows
    const schema = `tf_race_${randomBytes(6).toString('hex')}`
    await pools[0]!.query(`CREATE SCHEMA ${schema}`)
    return {
      stores: [
        createPostgresStore({ client: pools[0]!, schema }),
        createPostgresStore({ client: pools[1]!, schema }),
      ],
      async close() {
        await pools[0]!.query(`DROP SCHEMA ${schema} CASCADE`)
        for (const pool of pools) await pool.end()
      },
    }
  })
})
