/**
 * `createAuthServer` with nothing but `issuer` and `audience`: the defaults issue 3 names
 * (`accessTokenTtl` 15 min, `reuseGrace` 10 s, `refreshIdleTimeout` 7 days, `refreshTokenTtl`
 * 30 days absolute, `store` SQLite in ./tokenflow.db) hold through HTTP.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  type AuthServer,
  type AuthServerOptions,
  createAuthServer,
  createSqliteStore,
  type TokenStore,
} from '@tokenflow/server'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { AUDIENCE, INVALID_GRANT_BODY, ISSUER, PASSWORD } from './helpers/http.js'

const SECOND = 1000
const DAY = 86_400_000
// a whole second, so `exp` (1 s resolution) comes out exact
const T0 = Date.UTC(2030, 0, 1)

const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString())

describe('default lifetimes', () => {
  let store: TokenStore
  let app: AuthServer
  const clock = { now: T0 }

  beforeAll(async () => {
    store = createSqliteStore({ filename: ':memory:' })
    // only what is required, plus the store and the clock under test
    app = createAuthServer({ issuer: ISSUER, audience: AUDIENCE, store, now: () => clock.now })
    await app.ready()
    await app.tokenflow.issuer.addUser('ada', PASSWORD)
  })
  afterAll(async () => {
    await app.close()
    await store.close()
  })

  const login = async () => {
    const response = await app.inject({
      method: 'POST',
      url: '/auth/login',
      payload: { username: 'ada', password: PASSWORD },
    })
    expect(response.statusCode).toBe(200)
    return response.json() as { accessToken: string; refreshToken: string; expiresIn: number }
  }
  const refresh = (refreshToken: string) =>
    app.inject({ method: 'POST', url: '/refresh/token', payload: { refreshToken } })

  it('access tokens live 15 minutes', async () => {
    clock.now = T0
    const tokens = await login()
    expect(tokens.expiresIn).toBe(900)
    const { iat, exp } = claimsOf(tokens.accessToken)
    expect({ iat, exp }).toEqual({ iat: T0 / 1000, exp: T0 / 1000 + 900 })
  })

  it('the previous refresh token gets the same successor for 10 s, and is reuse after that', async () => {
    clock.now = T0
    const first = await login()
    const second = (await refresh(first.refreshToken)).json()
    clock.now += 10 * SECOND
    const retry = await refresh(first.refreshToken)
    expect(retry.statusCode).toBe(200)
    expect(retry.json().refreshToken).toBe(second.refreshToken)
    const reuseBefore = app.tokenflow.issuer.stats.reuseDetected
    clock.now += 1
    expect((await refresh(first.refreshToken)).body).toBe(INVALID_GRANT_BODY)
    expect(app.tokenflow.issuer.stats.reuseDetected).toBe(reuseBefore + 1)
    expect((await refresh(second.refreshToken)).body).toBe(INVALID_GRANT_BODY)
  })

  it('a session unused for 7 days ends', async () => {
    clock.now = T0
    let { refreshToken } = await login()
    clock.now += 7 * DAY - 1
    const used = await refresh(refreshToken)
    expect(used.statusCode).toBe(200)
    refreshToken = used.json().refreshToken
    const reuseBefore = app.tokenflow.issuer.stats.reuseDetected
    // idle time counts from the last use
    clock.now += 7 * DAY
    expect((await refresh(refreshToken)).body).toBe(INVALID_GRANT_BODY)
    expect(app.tokenflow.issuer.stats.reuseDetected).toBe(reuseBefore)
  })

  it('a session ends 30 days after the login however often it is used, and its last access token with it', async () => {
    clock.now = T0
    let { refreshToken } = await login()
    for (let day = 6; day < 30; day += 6) {
      clock.now = T0 + day * DAY
      const used = await refresh(refreshToken)
      expect(used.statusCode).toBe(200)
      refreshToken = used.json().refreshToken
    }
    clock.now = T0 + 30 * DAY - 1
    const last = await refresh(refreshToken)
    expect(last.statusCode).toBe(200)
    // the access token does not outlive the session: 1 s left, not 15 minutes
    expect(last.json().expiresIn).toBe(1)
    expect(claimsOf(last.json().accessToken).exp).toBe((T0 + 30 * DAY) / 1000)
    clock.now = T0 + 30 * DAY
    expect((await refresh(last.json().refreshToken)).body).toBe(INVALID_GRANT_BODY)
  })
})

describe('default store', () => {
  it('is opened on first use: an option refused at creation leaves no ./tokenflow.db behind', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tokenflow-default-store-'))
    const cwd = process.cwd()
    process.chdir(dir)
    try {
      for (const bad of [{ audience: '' }, { keys: { alg: 'HS256' } }, { accessTokenTtl: 0 }]) {
        expect(() =>
          createAuthServer({ issuer: ISSUER, audience: AUDIENCE, ...(bad as object) } as AuthServerOptions),
        ).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }))
      }
      expect(readdirSync(dir)).toEqual([])
    } finally {
      process.chdir(cwd)
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('is SQLite in ./tokenflow.db: a restart in the same directory keeps users, keys and sessions', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tokenflow-default-store-'))
    const cwd = process.cwd()
    process.chdir(dir)
    try {
      const first = createAuthServer({ issuer: ISSUER, audience: AUDIENCE })
      await first.ready()
      await first.tokenflow.issuer.addUser('ada', PASSWORD)
      const login = await first.inject({
        method: 'POST',
        url: '/auth/login',
        payload: { username: 'ada', password: PASSWORD },
      })
      const jwks = (await first.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json()
      // the server owns the store it made, and closes it
      await first.close()
      expect(existsSync(join(dir, 'tokenflow.db'))).toBe(true)

      const second = createAuthServer({ issuer: ISSUER, audience: AUDIENCE })
      try {
        expect((await second.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json()).toEqual(jwks)
        const refreshed = await second.inject({
          method: 'POST',
          url: '/refresh/token',
          payload: { refreshToken: login.json().refreshToken },
        })
        expect(refreshed.statusCode).toBe(200)
        expect((await second.tokenflow.issuer.listUsers()).map((user) => user.username)).toEqual(['ada'])
      } finally {
        await second.close()
      }
    } finally {
      process.chdir(cwd)
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe("the README's server in code", () => {
  // the README's "In code" snippet on a fresh database file: ready(), then addUser, then listen()
  it('adds a user after ready() and logs them in once it listens; before ready() the store says it is not migrated', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tokenflow-readme-'))
    const store = createSqliteStore({ filename: join(dir, 'auth.db') })
    const app = createAuthServer({
      issuer: ISSUER,
      audience: AUDIENCE,
      store,
      rateLimit: false,
      pruneInterval: 0,
    })
    try {
      const early = await app.tokenflow.issuer.addUser('ada', PASSWORD).catch((error: unknown) => error)
      expect(early).toMatchObject({
        code: 'ERR_CONFIG',
        message: expect.stringContaining('no tokenflow tables'),
      })
      await app.ready()
      await app.tokenflow.issuer.addUser('ada', PASSWORD)
      const origin = await app.listen({ port: 0, host: '127.0.0.1' })
      const response = await fetch(`${origin}/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: 'ada', password: PASSWORD }),
      })
      expect(response.status).toBe(200)
      expect(await response.json()).toMatchObject({ tokenType: 'Bearer', expiresIn: 900 })
    } finally {
      await app.close()
      await store.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('the prune timer', () => {
  it('starts no second prune while one still runs, and close() waits for the running one', async () => {
    const store = createSqliteStore({ filename: ':memory:' })
    let running = 0
    let most = 0
    let calls = 0
    let finish: (() => void) | undefined
    const slowStore: TokenStore = {
      ...store,
      // a prune that lasts until the test lets it end: many intervals fire meanwhile
      deleteExpiredSessions: async () => {
        calls++
        most = Math.max(most, ++running)
        await new Promise<void>((resolve) => {
          finish = resolve
        })
        running--
        return 0
      },
    }
    const app = createAuthServer({ issuer: ISSUER, audience: AUDIENCE, store: slowStore, pruneInterval: 5 })
    await app.ready()
    await vi.waitFor(() => expect(calls).toBe(1))
    // forty intervals later, still the one prune
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(calls).toBe(1)
    finish!()
    await vi.waitFor(() => expect(calls).toBe(2))
    let closed = false
    const closing = app.close().then(() => {
      closed = true
    })
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(closed).toBe(false)
    finish!()
    await closing
    expect(most).toBe(1)
    expect(calls).toBe(2)
    await store.close()
  })
})

describe('options read from unset environment variables', () => {
  it('an optional option given as undefined means its default, for the types (exactOptionalPropertyTypes) and at run time', async () => {
    const env: Record<string, string | undefined> = {}
    const store = createSqliteStore({ filename: ':memory:' })
    // every optional option, from a variable that is not set: this must type-check as it is
    const options: AuthServerOptions = {
      issuer: ISSUER,
      audience: AUDIENCE,
      clientId: env.CLIENT_ID,
      accessTokenTtl: undefined,
      refreshTokenTtl: undefined,
      refreshIdleTimeout: undefined,
      reuseGrace: undefined,
      maxSessionsPerUser: undefined,
      store,
      keys: { alg: undefined, activationDelay: undefined },
      authenticate: undefined,
      cookie: undefined,
      rateLimit: { perAccount: undefined, perIp: undefined, window: undefined, redis: undefined },
      redisUrl: env.REDIS_URL,
      logger: undefined,
      trustProxy: undefined,
      pruneInterval: undefined,
      onEvent: undefined,
      now: undefined,
    }
    const app = createAuthServer(options)
    try {
      await app.ready()
      await app.tokenflow.issuer.addUser('ada', PASSWORD)
      const login = await app.inject({
        method: 'POST',
        url: '/auth/login',
        payload: { username: 'ada', password: PASSWORD },
      })
      expect(login.statusCode).toBe(200)
      const tokens = login.json() as { accessToken: string; refreshToken: string; expiresIn: number }
      expect(tokens.expiresIn).toBe(900)
      const { client_id, alg } = {
        ...claimsOf(tokens.accessToken),
        ...JSON.parse(Buffer.from(tokens.accessToken.split('.')[0]!, 'base64url').toString()),
      }
      expect({ client_id, alg }).toEqual({ client_id: 'tokenflow', alg: 'ES256' })
      const refreshed = await app.inject({
        method: 'POST',
        url: '/refresh/token',
        payload: { refreshToken: tokens.refreshToken },
      })
      expect(refreshed.statusCode).toBe(200)
    } finally {
      await app.close()
      await store.close()
    }
  })
})
