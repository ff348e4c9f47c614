import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AuthError } from '../src/errors.js'
import {
  createIssuer,
  type IssuedTokens,
  type Issuer,
  type IssuerEvent,
  type IssuerOptions,
} from '../src/issuer.js'
import { createKeyring } from '../src/keys.js'
import { createPasswordHasher } from '../src/passwords.js'
import { createRateLimiter } from '../src/rate-limit.js'
import { encodeRefreshToken, newSessionId, newSessionKey, parseRefreshToken } from '../src/refresh-token.js'
import { createSqliteStore } from '../src/stores/sqlite.js'
import type { TokenStore } from '../src/stores/store.js'

const ISSUER = 'https://auth.tokenflow.test'
const AUDIENCE = 'https://api.tokenflow.test'
const T0 = Date.UTC(2030, 0, 1)
const SECOND = 1000
const MINUTE = 60 * SECOND
const DAY = 86_400_000
const PASSWORD = 'correct horse battery staple'

// one store and one Argon2 hash for the whole file: hashing is the slow part
let store: TokenStore
let userId: string
const passwords = createPasswordHasher()

beforeAll(async () => {
  store = createSqliteStore({ filename: ':memory:' })
  await store.migrate()
  const { issuer } = setup()
  userId = (await issuer.addUser('ada', PASSWORD)).id
})

afterAll(async () => {
  await store.close()
})

function setup(options: Partial<IssuerOptions> = {}, target: TokenStore = store) {
  const clock = { now: T0 }
  const events: IssuerEvent[] = []
  const now = () => clock.now
  const issuer = createIssuer({
    store: target,
    keyring: createKeyring({ store: target, now }),
    issuer: ISSUER,
    audience: AUDIENCE,
    clientId: 'web',
    passwords,
    onEvent: (event) => events.push(event),
    now,
    ...options,
  })
  return {
    issuer,
    events,
    clock,
    advance(ms: number) {
      clock.now += ms
    },
  }
}

/** The error a promise rejects with; fails the test if it resolves. */
async function rejection(promise: Promise<unknown>): Promise<AuthError> {
  return promise.then(
    () => {
      throw new Error('expected a rejection')
    },
    (error: AuthError) => error,
  )
}

/** The answer to a token that was never issued: every refresh failure must look exactly like it. */
function unknownTokenError(issuer: Issuer): Promise<AuthError> {
  return rejection(
    issuer.refresh(encodeRefreshToken({ sessionId: newSessionId(), counter: 0, key: newSessionKey() })),
  )
}

async function expectInvalidGrant(issuer: Issuer, promise: Promise<unknown>) {
  const reference = await unknownTokenError(issuer)
  expect(reference).toBeInstanceOf(AuthError)
  expect(reference.code).toBe('ERR_INVALID_GRANT')
  const error = await rejection(promise)
  expect(error).toBeInstanceOf(AuthError)
  expect({ code: error.code, message: error.message }).toEqual({
    code: reference.code,
    message: reference.message,
  })
}

describe('login', () => {
  it('issues an RFC 9068 access token and an opaque refresh token', async () => {
    const { issuer } = setup()
    const keyring = createKeyring({ store, now: () => T0 })
    const tokens = await issuer.login('ada', PASSWORD, { ip: '203.0.113.1', userAgent: 'vitest' })
    expect(tokens).toMatchObject({ tokenType: 'Bearer', expiresIn: 900, userId })
    expect(parseRefreshToken(tokens.refreshToken)).toMatchObject({ sessionId: tokens.sessionId, counter: 0 })

    const header = decodeProtectedHeader(tokens.accessToken)
    expect(header).toEqual({ alg: 'ES256', typ: 'at+jwt', kid: (await keyring.activeKey()).kid })
    const { payload } = await jwtVerify(tokens.accessToken, createLocalJWKSet(await keyring.jwks()), {
      issuer: ISSUER,
      audience: AUDIENCE,
      typ: 'at+jwt',
      currentDate: new Date(T0),
    })
    expect(Object.keys(payload).sort()).toEqual([
      'aud',
      'client_id',
      'exp',
      'iat',
      'iss',
      'jti',
      'sid',
      'sub',
    ])
    expect(payload).toMatchObject({
      sub: userId,
      client_id: 'web',
      sid: tokens.sessionId,
      iat: T0 / 1000,
      exp: T0 / 1000 + 900,
    })
    const sessions = await issuer.listSessions(userId)
    expect(sessions.find((session) => session.id === tokens.sessionId)).toMatchObject({
      clientId: 'web',
      userAgent: 'vitest',
      createdAt: T0,
    })
  })

  it('gives an unknown user and a wrong password the same error, after the same Argon2 work', async () => {
    let dummyChecks = 0
    const counting = {
      ...passwords,
      verifyDummy: (password: string) => {
        dummyChecks++
        return passwords.verifyDummy(password)
      },
    }
    const { issuer, events } = setup({ passwords: counting })
    const wrong = await rejection(issuer.login('ada', 'wrong password'))
    const unknown = await rejection(issuer.login('nobody', PASSWORD))
    expect(wrong).toBeInstanceOf(AuthError)
    expect(unknown).toBeInstanceOf(AuthError)
    expect({ code: wrong.code, message: wrong.message }).toEqual({
      code: 'ERR_INVALID_CREDENTIALS',
      message: 'invalid username or password',
    })
    expect({ code: unknown.code, message: unknown.message }).toEqual({
      code: wrong.code,
      message: wrong.message,
    })
    expect(dummyChecks).toBe(1)
    expect(events.filter((event) => event.type === 'loginFailed')).toEqual([
      { type: 'loginFailed', reason: 'credentials' },
      { type: 'loginFailed', reason: 'credentials' },
    ])
  })

  it('refuses non-string or oversized credentials without hashing', async () => {
    const { issuer } = setup()
    for (const [username, password] of [
      [undefined, PASSWORD],
      ['ada', { $ne: null }],
      ['ada', ''],
      ['ada', 'x'.repeat(1025)],
    ] as const) {
      await expect(issuer.login(username, password)).rejects.toMatchObject({ code: 'ERR_INVALID_REQUEST' })
    }
  })

  it('rehashes a password made with other Argon2 parameters on a successful login', async () => {
    const { issuer } = setup()
    const weak = createPasswordHasher({ timeCost: 1 })
    const id = `rehash-${newSessionId()}`
    await store.createUser({
      id,
      username: 'rehash-me',
      passwordHash: await weak.hash(PASSWORD),
      createdAt: T0,
      passwordChangedAt: T0,
    })
    expect(passwords.needsRehash((await store.getUser(id))!.passwordHash)).toBe(true)
    await issuer.login('rehash-me', PASSWORD)
    const after = (await store.getUser(id))!
    expect(after.passwordHash).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/)
    // a rehash is not a password change
    expect(after.passwordChangedAt).toBe(T0)
    await issuer.login('rehash-me', PASSWORD)
  })

  it('checks the per-IP and per-account limits before any password is hashed', async () => {
    let hashes = 0
    const counting = {
      ...passwords,
      verify: (phc: string, password: string) => {
        hashes++
        return passwords.verify(phc, password)
      },
      verifyDummy: (password: string) => {
        hashes++
        return passwords.verifyDummy(password)
      },
    }
    const clock = { now: T0 }
    const perAccount = createRateLimiter({ limit: 2, now: () => clock.now })
    const perIp = createRateLimiter({ limit: 3, now: () => clock.now })
    const { issuer } = setup({ passwords: counting, loginLimits: { perAccount, perIp } })
    await expect(issuer.login('Ada', 'wrong', { ip: '198.51.100.1' })).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    await expect(issuer.login('ada', 'wrong', { ip: '198.51.100.2' })).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    // "Ada" and "ada" share one account budget, whatever the address
    const limited = await rejection(issuer.login('ADA', PASSWORD, { ip: '198.51.100.3' }))
    expect(limited).toMatchObject({ code: 'ERR_RATE_LIMITED', retryAfter: 60 })
    expect(hashes).toBe(2)
    // the IP budget is separate: a fourth attempt from one address is refused for the address
    await expect(issuer.login('someone', 'x', { ip: '198.51.100.1' })).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    await expect(issuer.login('someone', 'x', { ip: '198.51.100.1' })).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    await expect(issuer.login('other', 'x', { ip: '198.51.100.1' })).rejects.toMatchObject({
      code: 'ERR_RATE_LIMITED',
    })
    clock.now += MINUTE
    await expect(issuer.login('ada', PASSWORD, { ip: '198.51.100.1' })).resolves.toMatchObject({ userId })
  })

  it('uses a custom authenticate function instead of the users table', async () => {
    const { issuer } = setup({
      authenticate: async ({ username, password }) =>
        username === 'external' && password === 'sesame' ? { userId: 'ext-42' } : null,
    })
    const tokens = await issuer.login('external', 'sesame')
    expect(tokens.userId).toBe('ext-42')
    await expect(issuer.refresh(tokens.refreshToken)).resolves.toMatchObject({ userId: 'ext-42' })
    await expect(issuer.login('external', 'wrong')).rejects.toMatchObject({ code: 'ERR_INVALID_CREDENTIALS' })
    // the row that ties its sessions to the store is not a user of the built-in table
    expect((await issuer.listUsers()).map((user) => user.username)).toEqual(['ada', 'rehash-me'])
    // and nobody can log in to it with the built-in check
    const builtIn = setup().issuer
    await expect(builtIn.login('\u0001external:ext-42', '!')).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
  })
})

describe('refresh rotation', () => {
  it('rotates: the successor works, the counter moves by one', async () => {
    const { issuer, advance } = setup()
    const first = await issuer.login('ada', PASSWORD)
    advance(MINUTE)
    const second = await issuer.refresh(first.refreshToken)
    expect(second.sessionId).toBe(first.sessionId)
    expect(second.refreshToken).not.toBe(first.refreshToken)
    expect(parseRefreshToken(second.refreshToken)?.counter).toBe(1)
    expect(second.accessToken).not.toBe(first.accessToken)
    advance(MINUTE)
    const third = await issuer.refresh(second.refreshToken)
    expect(parseRefreshToken(third.refreshToken)?.counter).toBe(2)
    expect((await store.getSession(first.sessionId))?.counter).toBe(2)
  })

  it('answers a retry of the previous token within reuseGrace with the byte-identical current token', async () => {
    const { issuer, advance, events } = setup()
    const first = await issuer.login('ada', PASSWORD)
    const second = await issuer.refresh(first.refreshToken)
    advance(10 * SECOND)
    const retry = await issuer.refresh(first.refreshToken)
    expect(retry.refreshToken).toBe(second.refreshToken)
    expect(retry.sessionId).toBe(first.sessionId)
    expect(issuer.stats).toMatchObject({ refreshes: 1, graceReplays: 1, reuseDetected: 0 })
    expect(events.filter((event) => event.type === 'refreshed').map((event) => event)).toEqual([
      { type: 'refreshed', userId, sessionId: first.sessionId, grace: false },
      { type: 'refreshed', userId, sessionId: first.sessionId, grace: true },
    ])
    // the current token still rotates normally afterwards
    await expect(issuer.refresh(second.refreshToken)).resolves.toMatchObject({ sessionId: first.sessionId })
  })

  it('treats the previous token after reuseGrace as reuse: invalid_grant, and the current token dies too', async () => {
    const { issuer, advance, events } = setup()
    const first = await issuer.login('ada', PASSWORD)
    const second = await issuer.refresh(first.refreshToken)
    advance(10 * SECOND + 1)
    await expectInvalidGrant(issuer, issuer.refresh(first.refreshToken))
    expect(issuer.stats.reuseDetected).toBe(1)
    expect(events).toContainEqual({ type: 'reuseDetected', userId, sessionId: first.sessionId })
    expect(await store.getSession(first.sessionId)).toMatchObject({ revokedReason: 'reuse' })
    // the legitimate holder's current token is dead: the whole family is revoked
    await expectInvalidGrant(issuer, issuer.refresh(second.refreshToken))
  })

  it('treats a token two rotations old as reuse even inside the grace window', async () => {
    const { issuer } = setup()
    const first = await issuer.login('ada', PASSWORD)
    const second = await issuer.refresh(first.refreshToken)
    const third = await issuer.refresh(second.refreshToken)
    await expectInvalidGrant(issuer, issuer.refresh(first.refreshToken))
    expect(issuer.stats.reuseDetected).toBe(1)
    await expectInvalidGrant(issuer, issuer.refresh(third.refreshToken))
  })

  it('honours reuseGrace 0: any retry of the previous token is reuse', async () => {
    const { issuer } = setup({ reuseGrace: 0 })
    const first = await issuer.login('ada', PASSWORD)
    const second = await issuer.refresh(first.refreshToken)
    // even in the millisecond of the rotation (this clock does not move): there is no grace at all
    await expectInvalidGrant(issuer, issuer.refresh(first.refreshToken))
    expect(issuer.stats).toMatchObject({ graceReplays: 0, reuseDetected: 1 })
    await expectInvalidGrant(issuer, issuer.refresh(second.refreshToken))
  })

  it('ends a session at its absolute expiry, however recently it was used', async () => {
    const { issuer, advance } = setup({ refreshTokenTtl: 10 * MINUTE, refreshIdleTimeout: 5 * MINUTE })
    let tokens = await issuer.login('ada', PASSWORD)
    for (let i = 0; i < 3; i++) {
      advance(3 * MINUTE)
      tokens = await issuer.refresh(tokens.refreshToken)
    }
    // 1 ms before the end, used 0 minutes ago; its access token stops with the session
    advance(MINUTE - 1)
    tokens = await issuer.refresh(tokens.refreshToken)
    expect(tokens.expiresIn).toBe(1)
    advance(1)
    await expectInvalidGrant(issuer, issuer.refresh(tokens.refreshToken))
    // an expiry is not reuse: nothing was revoked
    expect(issuer.stats.reuseDetected).toBe(0)
  })

  it('ends a session unused for refreshIdleTimeout', async () => {
    const { issuer, advance } = setup({ refreshIdleTimeout: 7 * DAY })
    const first = await issuer.login('ada', PASSWORD)
    advance(7 * DAY - 1)
    const second = await issuer.refresh(first.refreshToken)
    advance(7 * DAY - 1)
    const third = await issuer.refresh(second.refreshToken)
    advance(7 * DAY)
    await expectInvalidGrant(issuer, issuer.refresh(third.refreshToken))
  })

  it('gives forged tokens (bad HMAC, counter ahead, unknown session, garbage) the answer of an unknown token', async () => {
    const { issuer } = setup()
    const tokens = await issuer.login('ada', PASSWORD)
    const session = (await store.getSession(tokens.sessionId))!
    const bytes = Buffer.from(tokens.refreshToken, 'base64url')
    bytes[bytes.length - 1]! ^= 0x01
    const badMac = bytes.toString('base64url')
    const ahead = encodeRefreshToken({
      sessionId: session.id,
      counter: session.counter + 5,
      key: session.key,
    })
    const otherKey = encodeRefreshToken({
      sessionId: session.id,
      counter: session.counter,
      key: newSessionKey(),
    })
    const unknown = encodeRefreshToken({ sessionId: newSessionId(), counter: 0, key: newSessionKey() })
    for (const forged of [badMac, ahead, otherKey, unknown, 'garbage', '', 'A'.repeat(10_000), 42, null]) {
      await expectInvalidGrant(issuer, issuer.refresh(forged))
    }
    // a forgery is not reuse: it must not let anyone who knows a session id end that session
    expect(issuer.stats.reuseDetected).toBe(0)
    await expect(issuer.refresh(tokens.refreshToken)).resolves.toMatchObject({ sessionId: tokens.sessionId })
  })

  it('rejects garbage before any database lookup', async () => {
    let lookups = 0
    const counting = new Proxy(store, {
      get(target, property, receiver) {
        const value = Reflect.get(target, property, receiver)
        if (property === 'getSession') {
          return (id: string) => {
            lookups++
            return target.getSession(id)
          }
        }
        return typeof value === 'function' ? value.bind(target) : value
      },
    })
    const { issuer } = setup({}, counting)
    // the reference answer itself needs a lookup (its token parses); count from here
    const reference = await unknownTokenError(issuer)
    lookups = 0
    for (const garbage of ['garbage', 'x'.repeat(52), '*'.repeat(52), undefined, { token: 1 }]) {
      await expect(issuer.refresh(garbage)).rejects.toMatchObject({
        code: reference.code,
        message: reference.message,
      })
    }
    await issuer.logout('garbage')
    expect(lookups).toBe(0)
  })

  it('refuses a refresh through /oauth/token for another client (RFC 6749 section 6)', async () => {
    const { issuer } = setup()
    const tokens = await issuer.login('ada', PASSWORD)
    await expectInvalidGrant(issuer, issuer.refresh(tokens.refreshToken, { clientId: 'other' }))
    await expect(issuer.refresh(tokens.refreshToken, { clientId: 'web' })).resolves.toMatchObject({
      sessionId: tokens.sessionId,
    })
  })

  it('gives 20 concurrent refreshes of one token exactly one successor; every answer is it or invalid_grant', async () => {
    const { issuer } = setup()
    const tokens = await issuer.login('ada', PASSWORD)
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, () => issuer.refresh(tokens.refreshToken)),
    )
    const successors = new Set<string>()
    for (const result of results) {
      if (result.status === 'fulfilled') successors.add(result.value.refreshToken)
      else expect(result.reason).toMatchObject({ code: 'ERR_INVALID_GRANT' })
    }
    expect(successors.size).toBe(1)
    expect((await store.getSession(tokens.sessionId))?.counter).toBe(1)
    expect(parseRefreshToken([...successors][0])?.counter).toBe(1)
    expect(issuer.stats).toMatchObject({ refreshes: 1, reuseDetected: 0 })
  })

  it('gives 20 concurrent refreshes through two stores over one SQLite file exactly one successor', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tokenflow-issuer-'))
    const filename = join(dir, 'shared.db')
    const first = createSqliteStore({ filename })
    await first.migrate()
    const second = createSqliteStore({ filename })
    await second.migrate()
    try {
      const a = setup({}, first).issuer
      const b = setup({}, second).issuer
      await a.addUser('bob', PASSWORD)
      const tokens = await a.login('bob', PASSWORD)
      const results = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).refresh(tokens.refreshToken)),
      )
      const successors = new Set<string>()
      for (const result of results) {
        if (result.status === 'fulfilled') successors.add(result.value.refreshToken)
        else expect(result.reason).toMatchObject({ code: 'ERR_INVALID_GRANT' })
      }
      expect(successors.size).toBe(1)
      expect((await second.getSession(tokens.sessionId))?.counter).toBe(1)
      // both instances sign with the same key
      expect(await createKeyring({ store: first }).activeKey()).toEqual(
        await createKeyring({ store: second }).activeKey(),
      )
    } finally {
      await first.close()
      await second.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('kills every token of the family once a logout racing a refresh has answered', async () => {
    for (const order of ['refresh-first', 'logout-first', 'refresh-late'] as const) {
      const { issuer } = setup()
      const tokens = await issuer.login('ada', PASSWORD)
      let refreshing: Promise<IssuedTokens>
      let loggingOut: Promise<void>
      if (order === 'refresh-first') {
        refreshing = issuer.refresh(tokens.refreshToken)
        loggingOut = issuer.logout(tokens.refreshToken)
      } else if (order === 'logout-first') {
        loggingOut = issuer.logout(tokens.refreshToken)
        refreshing = issuer.refresh(tokens.refreshToken)
      } else {
        loggingOut = issuer.logout(tokens.refreshToken)
        await loggingOut
        refreshing = issuer.refresh(tokens.refreshToken)
      }
      await loggingOut
      const outcome = await refreshing.catch((error: Error) => error)
      // the refresh may have won the race, but whatever it handed out is dead now
      const family = [tokens.refreshToken]
      if (!(outcome instanceof Error)) family.push(outcome.refreshToken)
      else expect(outcome).toMatchObject({ code: 'ERR_INVALID_GRANT' })
      for (const token of family) await expectInvalidGrant(issuer, issuer.refresh(token))
      expect(await store.getSession(tokens.sessionId)).toMatchObject({ revokedReason: 'logout' })
    }
  })
})

describe('logout and sessions', () => {
  it('logout revokes the session and resolves the same way for any input', async () => {
    const { issuer } = setup()
    const tokens = await issuer.login('ada', PASSWORD)
    const forged = encodeRefreshToken({ sessionId: tokens.sessionId, counter: 0, key: newSessionKey() })
    for (const input of ['garbage', forged, undefined, 7])
      await expect(issuer.logout(input)).resolves.toBeUndefined()
    // a forged token (wrong key) did not end the session
    const next = await issuer.refresh(tokens.refreshToken)
    await expect(issuer.logout(next.refreshToken)).resolves.toBeUndefined()
    await expectInvalidGrant(issuer, issuer.refresh(next.refreshToken))
    await expect(issuer.logout(next.refreshToken)).resolves.toBeUndefined()
  })

  it('logoutAll revokes every session of the user and only theirs', async () => {
    const { issuer } = setup()
    await issuer.addUser('carol', PASSWORD).catch(() => undefined)
    const carol = await issuer.login('carol', PASSWORD)
    const one = await issuer.login('ada', PASSWORD)
    const two = await issuer.login('ada', PASSWORD)
    expect(await issuer.logoutAll(userId)).toBeGreaterThanOrEqual(2)
    await expectInvalidGrant(issuer, issuer.refresh(one.refreshToken))
    await expectInvalidGrant(issuer, issuer.refresh(two.refreshToken))
    expect(await issuer.listSessions(userId)).toEqual([])
    await expect(issuer.refresh(carol.refreshToken)).resolves.toMatchObject({ sessionId: carol.sessionId })
  })

  it("lists live sessions and revokes one; another user's session is ERR_NOT_FOUND", async () => {
    const { issuer } = setup()
    await issuer.addUser('dave', PASSWORD).catch(() => undefined)
    const dave = await issuer.login('dave', PASSWORD)
    const mine = await issuer.login('ada', PASSWORD)
    const ids = (await issuer.listSessions(userId)).map((session) => session.id)
    expect(ids).toContain(mine.sessionId)
    expect(ids).not.toContain(dave.sessionId)
    for (const id of [dave.sessionId, newSessionId(), 'not-an-id']) {
      await expect(issuer.revokeSession(userId, id)).rejects.toMatchObject({
        code: 'ERR_NOT_FOUND',
        message: 'session not found',
      })
    }
    await expect(issuer.refresh(dave.refreshToken)).resolves.toMatchObject({ sessionId: dave.sessionId })
    await issuer.revokeSession(userId, mine.sessionId)
    await expectInvalidGrant(issuer, issuer.refresh(mine.refreshToken))
    await expect(issuer.revokeSession(userId, mine.sessionId)).rejects.toMatchObject({
      code: 'ERR_NOT_FOUND',
    })
  })

  it("a password change revokes the user's other sessions and keeps the current one", async () => {
    const { issuer } = setup()
    const { id } = await issuer.addUser('erin', 'old password')
    const current = await issuer.login('erin', 'old password')
    const other = await issuer.login('erin', 'old password')
    await expect(issuer.changePassword(id, 'not the old one', 'new password')).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    await issuer.changePassword(id, 'old password', 'new password', { keepSessionId: current.sessionId })
    await expect(issuer.refresh(current.refreshToken)).resolves.toMatchObject({
      sessionId: current.sessionId,
    })
    await expectInvalidGrant(issuer, issuer.refresh(other.refreshToken))
    await expect(issuer.login('erin', 'old password')).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    await expect(issuer.login('erin', 'new password')).resolves.toMatchObject({ userId: id })
  })

  it('pruneSessions deletes expired and revoked sessions and keeps live ones', async () => {
    const { issuer, advance } = setup({ refreshTokenTtl: DAY, refreshIdleTimeout: DAY })
    const revoked = await issuer.login('ada', PASSWORD)
    await issuer.logout(revoked.refreshToken)
    const expiring = await issuer.login('ada', PASSWORD)
    advance(DAY)
    const live = await issuer.login('ada', PASSWORD)
    advance(1)
    expect(await issuer.pruneSessions()).toBeGreaterThanOrEqual(2)
    expect(await store.getSession(revoked.sessionId)).toBeNull()
    expect(await store.getSession(expiring.sessionId)).toBeNull()
    await expect(issuer.refresh(live.refreshToken)).resolves.toMatchObject({ sessionId: live.sessionId })
  })

  it('pruneSessions deletes a session dead by the idle timeout long before its absolute expiry', async () => {
    const { issuer, advance } = setup({ refreshTokenTtl: 365 * DAY, refreshIdleTimeout: 7 * DAY })
    const idle = await issuer.login('ada', PASSWORD)
    const used = await issuer.login('ada', PASSWORD)
    advance(6 * DAY)
    const next = await issuer.refresh(used.refreshToken)
    advance(DAY + 1)
    await expectInvalidGrant(issuer, issuer.refresh(idle.refreshToken))
    expect(await issuer.pruneSessions()).toBeGreaterThanOrEqual(1)
    expect(await store.getSession(idle.sessionId)).toBeNull()
    await expect(issuer.refresh(next.refreshToken)).resolves.toMatchObject({ sessionId: used.sessionId })
  })

  it('removing a user ends their sessions', async () => {
    const { issuer } = setup()
    await issuer.addUser('frank', PASSWORD)
    const tokens = await issuer.login('frank', PASSWORD)
    expect(await issuer.removeUser('frank')).toBe(true)
    expect(await issuer.removeUser('frank')).toBe(false)
    await expectInvalidGrant(issuer, issuer.refresh(tokens.refreshToken))
  })
})

describe('maxSessionsPerUser', () => {
  /** logins through `authenticate`: no Argon2 hash, so a test can log one user in a hundred times */
  const capped = (name: string, options: Partial<IssuerOptions> = {}) => {
    const context = setup({ authenticate: async () => ({ userId: name }), ...options })
    return { ...context, login: () => context.issuer.login(name, 'any password') }
  }
  const liveIds = async (issuer: Issuer, user: string) =>
    (await issuer.listSessions(user)).map((session) => session.id).sort()

  it('a login beyond the cap revokes the least recently used sessions, with reason session-limit', async () => {
    const { issuer, events, advance, login } = capped('cap-lru', { maxSessionsPerUser: 3 })
    const first = await login()
    advance(SECOND)
    const second = await login()
    advance(SECOND)
    const third = await login()
    advance(SECOND)
    // the oldest session is the one in use: a refresh makes it the most recently used
    const firstNext = await issuer.refresh(first.refreshToken)
    advance(SECOND)
    const fourth = await login()
    advance(SECOND)
    const fifth = await login()

    expect(await liveIds(issuer, 'cap-lru')).toEqual(
      [first.sessionId, fourth.sessionId, fifth.sessionId].sort(),
    )
    await expectInvalidGrant(issuer, issuer.refresh(second.refreshToken))
    await expectInvalidGrant(issuer, issuer.refresh(third.refreshToken))
    await expect(issuer.refresh(firstNext.refreshToken)).resolves.toMatchObject({
      sessionId: first.sessionId,
    })
    expect((await store.getSession(second.sessionId))?.revokedReason).toBe('session-limit')
    expect((await store.getSession(third.sessionId))?.revokedReason).toBe('session-limit')
    expect(events.filter((event) => event.type === 'sessionsRevoked')).toEqual([
      { type: 'sessionsRevoked', userId: 'cap-lru', reason: 'session-limit', count: 1 },
      { type: 'sessionsRevoked', userId: 'cap-lru', reason: 'session-limit', count: 1 },
    ])
  })

  it('defaults to 100 live sessions per user, and leaves other users alone', async () => {
    const other = capped('cap-default-other')
    const bystander = await other.login()
    const { issuer, login, advance } = capped('cap-default')
    const first = await login()
    for (let i = 1; i < 100; i++) await login()
    expect(await liveIds(issuer, 'cap-default')).toHaveLength(100)
    advance(SECOND)
    await expect(issuer.refresh(first.refreshToken)).resolves.toMatchObject({ sessionId: first.sessionId })
    // the first session was just used: the 101st login revokes the second one instead
    const sessions = await issuer.listSessions('cap-default')
    const secondOldest = sessions.filter((session) => session.id !== first.sessionId).at(-1)!
    await login()
    const after = await liveIds(issuer, 'cap-default')
    expect(after).toHaveLength(100)
    expect(after).toContain(first.sessionId)
    expect(after).not.toContain(secondOldest.id)
    expect(await liveIds(other.issuer, 'cap-default-other')).toEqual([bystander.sessionId])
  })

  it('Infinity turns the cap off', async () => {
    const { issuer, events, login } = capped('cap-off', { maxSessionsPerUser: Number.POSITIVE_INFINITY })
    for (let i = 0; i < 101; i++) await login()
    expect(await liveIds(issuer, 'cap-off')).toHaveLength(101)
    expect(events.some((event) => event.type === 'sessionsRevoked')).toBe(false)
  })

  it('concurrent logins never revoke below the cap, nor each leave more than one over it', async () => {
    const { issuer, login, advance } = capped('cap-race', { maxSessionsPerUser: 2 })
    const results = await Promise.all(Array.from({ length: 10 }, () => login()))
    const live = await liveIds(issuer, 'cap-race')
    // every login ranks the sessions the same way and never revokes its own: 2, or 3 when the last login to
    // look ranked its own session below two others made in the same millisecond
    expect(live.length).toBeGreaterThanOrEqual(2)
    expect(live.length).toBeLessThanOrEqual(3)
    for (const id of live) expect(results.map((tokens) => tokens.sessionId)).toContain(id)
    // the next login, a moment later, brings it back to the cap
    advance(1)
    const next = await login()
    const after = await liveIds(issuer, 'cap-race')
    expect(after).toHaveLength(2)
    expect(after).toContain(next.sessionId)
  })

  it('brings a user far over the cap down by at most 16 per login, least recently used first', async () => {
    const { issuer, events, advance, login, clock } = capped('cap-batch', { maxSessionsPerUser: 5 })
    await login()
    // 40 sessions made before the cap (or under a higher one), each used a moment after the one before
    const old: string[] = []
    for (let i = 0; i < 40; i++) {
      const id = newSessionId()
      old.push(id)
      await store.createSession({
        id,
        userId: 'cap-batch',
        clientId: 'web',
        key: newSessionKey(),
        counter: 0,
        createdAt: clock.now,
        expiresAt: clock.now + DAY,
        lastUsedAt: clock.now + i,
        rotatedAt: clock.now,
        revokedAt: null,
        revokedReason: null,
        userAgent: null,
      })
    }
    advance(SECOND)
    await login()
    // 42 live, the cap is 5: this login revoked the 16 least recently used, the first login's session among them
    const live = await liveIds(issuer, 'cap-batch')
    expect(live).toHaveLength(42 - 16)
    for (const id of old.slice(0, 15)) expect(live).not.toContain(id)
    for (const id of old.slice(15)) expect(live).toContain(id)
    advance(SECOND)
    await login()
    advance(SECOND)
    await login()
    expect(await liveIds(issuer, 'cap-batch')).toHaveLength(5)
    expect(events.flatMap((event) => (event.type === 'sessionsRevoked' ? [event.count] : []))).toEqual([
      16, 16, 7,
    ])
  })

  it('refuses a cap that is not a whole number of at least 1', () => {
    for (const maxSessionsPerUser of [0, -1, 1.5, Number.NaN, '5' as unknown as number]) {
      expect(() => setup({ maxSessionsPerUser })).toThrow(
        expect.objectContaining({
          code: 'ERR_CONFIG',
          message: expect.stringContaining('maxSessionsPerUser'),
        }),
      )
    }
  })
})

describe('a login racing a password change', () => {
  const OLD = 'old password that leaked'
  const NEW = 'brand new password 123'

  /** A fresh store with one user whose hash is weaker than the hasher's (a login rehashes it), and a login
   * that stops, once, after its password check (`verify`) or after its rehash (`hash`) until released.
   * `full`: every password check after the first fails as a hasher whose line is full. */
  async function racing(stopAfter: 'verify' | 'hash', { full = false } = {}) {
    const own = createSqliteStore({ filename: ':memory:' })
    await own.migrate()
    let release!: () => void
    const gate = new Promise<void>((resolve) => {
      release = resolve
    })
    let stopped!: () => void
    const atGate = new Promise<void>((resolve) => {
      stopped = resolve
    })
    let once = false
    let verifies = 0
    const stop = async () => {
      if (once) return
      once = true
      stopped()
      await gate
    }
    const gated = {
      ...passwords,
      async hash(password: string) {
        const phc = await passwords.hash(password)
        if (stopAfter === 'hash' && password === OLD) await stop()
        return phc
      },
      async verify(phc: string, password: string) {
        if (full && ++verifies > 1)
          throw new AuthError('ERR_UNAVAILABLE', 'too many password checks at once', { retryAfter: 1 })
        const ok = await passwords.verify(phc, password)
        if (stopAfter === 'verify') await stop()
        return ok
      },
    }
    const { issuer } = setup({ passwords: gated }, own)
    const weak = createPasswordHasher({ memoryCost: 8192, timeCost: 1 })
    await own.createUser({
      id: 'u1',
      username: 'ada',
      passwordHash: await weak.hash(OLD),
      createdAt: T0,
      passwordChangedAt: T0,
    })
    return { own, issuer, release, atGate }
  }

  it('a rehash on login does not put the old password back over a change made meanwhile', async () => {
    const { own, issuer, release, atGate } = await racing('hash')
    const login = issuer.login('ada', OLD)
    await atGate
    await issuer.changePassword('u1', OLD, NEW)
    release()
    // and that login, whose password no longer holds by the time its session would start, gets none
    await expect(login).rejects.toMatchObject({ code: 'ERR_INVALID_CREDENTIALS' })
    expect(await issuer.listSessions('u1')).toEqual([])
    await expect(issuer.login('ada', OLD)).rejects.toMatchObject({ code: 'ERR_INVALID_CREDENTIALS' })
    await expect(issuer.login('ada', NEW)).resolves.toMatchObject({ userId: 'u1' })
    await own.close()
  })

  it('a login whose re-check fails (the hasher is full) leaves no session behind, and says why', async () => {
    const { own, issuer, release, atGate } = await racing('verify', { full: true })
    const login = issuer.login('ada', OLD)
    await atGate
    // the stored hash changes while the login waits (the same password, hashed again): the re-check must verify
    await own.setPasswordHash('u1', await passwords.hash(OLD), T0 + 1)
    release()
    await expect(login).rejects.toMatchObject({ code: 'ERR_UNAVAILABLE' })
    expect(await issuer.listSessions('u1')).toEqual([])
    await own.close()
  })

  it('a login whose password check came before a change gets no session that outlives it', async () => {
    const { own, issuer, release, atGate } = await racing('verify')
    const login = issuer.login('ada', OLD)
    await atGate
    await issuer.changePassword('u1', OLD, NEW)
    release()
    await expect(login).rejects.toMatchObject({ code: 'ERR_INVALID_CREDENTIALS' })
    expect(await issuer.listSessions('u1')).toEqual([])
    await own.close()
  })
})

describe('users', () => {
  it('refuses duplicate, empty and control-character usernames', async () => {
    const { issuer } = setup()
    await expect(issuer.addUser('ada', 'another')).rejects.toMatchObject({
      code: 'ERR_USER_EXISTS',
      message: 'user "ada" already exists',
    })
    for (const name of ['', 'tab\tname', '\u0001external:x', 'x'.repeat(257)]) {
      await expect(issuer.addUser(name, PASSWORD)).rejects.toMatchObject({ code: 'ERR_INVALID_REQUEST' })
    }
    await expect(issuer.addUser('gina', '')).rejects.toMatchObject({ code: 'ERR_INVALID_REQUEST' })
    const users = await issuer.listUsers()
    expect(users.find((user) => user.username === 'ada')).toEqual({
      id: userId,
      username: 'ada',
      createdAt: T0,
    })
    expect(JSON.stringify(users)).not.toContain('argon2')
  })
})

describe('verifyAccessToken', () => {
  it("accepts a live session's token and refuses it once the session ends", async () => {
    const { issuer } = setup()
    const tokens = await issuer.login('ada', PASSWORD)
    await expect(issuer.verifyAccessToken(tokens.accessToken)).resolves.toMatchObject({
      sub: userId,
      sid: tokens.sessionId,
      client_id: 'web',
    })
    await issuer.logout(tokens.refreshToken)
    await expect(issuer.verifyAccessToken(tokens.accessToken)).rejects.toMatchObject({
      code: 'ERR_INVALID_TOKEN',
      message: 'the session of this access token has ended',
    })
  })

  it("refuses expired, tampered and foreign tokens with the verifier's codes", async () => {
    const { issuer, advance } = setup()
    const tokens = await issuer.login('ada', PASSWORD)
    const [header, payload, signature] = tokens.accessToken.split('.')
    const tampered = `${header}.${Buffer.from(JSON.stringify({ sub: 'mallory' })).toString('base64url')}.${signature}`
    await expect(issuer.verifyAccessToken(tampered)).rejects.toMatchObject({ name: 'VerifyError' })
    await expect(issuer.verifyAccessToken(tokens.refreshToken)).rejects.toMatchObject({
      code: 'ERR_JWS_INVALID',
    })
    await expect(issuer.verifyAccessToken(`${header}.${payload}`)).rejects.toMatchObject({
      code: 'ERR_JWS_INVALID',
    })
    const foreign = setup({ audience: 'https://elsewhere.test' }).issuer
    const theirs = await foreign.login('ada', PASSWORD)
    await expect(issuer.verifyAccessToken(theirs.accessToken)).rejects.toMatchObject({
      code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
    })
    advance(15 * MINUTE + 31 * SECOND)
    await expect(issuer.verifyAccessToken(tokens.accessToken)).rejects.toMatchObject({
      code: 'ERR_JWT_EXPIRED',
    })
  })
})

describe('createIssuer options', () => {
  it('throws ERR_CONFIG for bad options at creation', () => {
    const keyring = createKeyring({ store })
    const base = { store, keyring, issuer: ISSUER, audience: AUDIENCE, clientId: 'web' }
    for (const bad of [
      { issuer: '' },
      { audience: [] },
      { clientId: 3 },
      { accessTokenTtl: 10 },
      { refreshTokenTtl: Number.NaN },
      { refreshIdleTimeout: -1 },
      { reuseGrace: 1.5 },
      { store: {} },
      { authenticate: 'yes' },
    ]) {
      expect(() => createIssuer({ ...base, ...(bad as object) } as IssuerOptions)).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG' }),
      )
    }
  })
})

describe('partial failures and races (a code review of the issuer)', () => {
  /** The file's store, with some methods replaced. */
  const wrapped = (overrides: Partial<TokenStore>): TokenStore =>
    new Proxy(store, {
      get(target, property, receiver) {
        if (property in overrides) return overrides[property as keyof TokenStore]
        const value = Reflect.get(target, property, receiver)
        return typeof value === 'function' ? value.bind(target) : value
      },
    })
  /** What pg throws on a statement timeout: a 503 at the routes (ERR_UNAVAILABLE). */
  const timeout = () =>
    Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014' })

  it.each([
    ['the first revocation', 'revokeUserSessions', 1],
    ['storing the new hash', 'setPasswordHash', 1],
    ['the second revocation', 'revokeUserSessions', 2],
  ] as const)(
    'bug: a password change that failed at %s left the sessions of whoever knew the old password live, and its retry was refused',
    async (_name, method, failing) => {
      let calls = 0
      const flaky = wrapped({
        [method]: (...args: never[]) => {
          calls++
          if (calls === failing) return Promise.reject(timeout())
          return (store[method] as (...a: never[]) => Promise<unknown>)(...args)
        },
      })
      const { issuer } = setup({}, flaky)
      const name = `changing-${method}-${failing}`
      const { id } = await issuer.addUser(name, PASSWORD)
      const intruder = await issuer.login(name, PASSWORD)
      const owner = await issuer.login(name, PASSWORD)
      const change = () =>
        issuer.changePassword(id, PASSWORD, 'a new password', { keepSessionId: owner.sessionId })
      await expect(change()).rejects.toMatchObject({ code: '57014' })
      // the owner tries again, as a 503 invites: either it goes through, or the first try did
      const retry = await change().then(
        () => 'changed',
        (error: AuthError) => error.code,
      )
      expect(['changed', 'ERR_INVALID_CREDENTIALS']).toContain(retry)
      // either way the new password is the one that works, and only the owner's session is left
      await expect(issuer.login(name, PASSWORD)).rejects.toMatchObject({ code: 'ERR_INVALID_CREDENTIALS' })
      await expect(issuer.refresh(intruder.refreshToken)).rejects.toMatchObject({ code: 'ERR_INVALID_GRANT' })
      await expect(issuer.refresh(owner.refreshToken)).resolves.toMatchObject({ sessionId: owner.sessionId })
    },
  )

  it('bug: a login held up at the session cap revoked a session refreshed meanwhile, leaving fewer than the cap', async () => {
    let hold: { id: string; reached: () => void; release?: () => void } | undefined
    const slow = wrapped({
      async revokeSession(id, now, reason, expectedLastUsedAt) {
        if (hold && id === hold.id) {
          const released = new Promise<void>((resolve) => (hold!.release = resolve))
          hold.reached()
          await released
        }
        return store.revokeSession(id, now, reason, expectedLastUsedAt)
      },
    })
    const { issuer, advance } = setup(
      { authenticate: async () => ({ userId: 'capped' }), maxSessionsPerUser: 2 },
      slow,
    )
    const x = await issuer.login('capped', 'x')
    advance(SECOND)
    const y = await issuer.login('capped', 'x')
    advance(SECOND)
    // the third login ranks [it, y, x] and goes to revoke x, the least recently used; it is held there
    const reached = new Promise<void>((resolve) => (hold = { id: x.sessionId, reached: resolve }))
    const third = issuer.login('capped', 'x')
    await reached
    advance(SECOND)
    // meanwhile x is used: now the most recently used session
    const xNext = await issuer.refresh(x.refreshToken)
    advance(SECOND)
    // a fourth login ranks [it, x, third, y] and revokes third and y
    const fourth = await issuer.login('capped', 'x')
    hold!.release!()
    await third
    const live = (await issuer.listSessions('capped')).map((session) => session.id).sort()
    // the cap's two: the two used last
    expect(live).toEqual([fourth.sessionId, xNext.sessionId].sort())
    expect(live).not.toContain(y.sessionId)
  })

  it('bug: a login racing the removal of its user answered 404 naming the internal user id', async () => {
    const name = 'removed-while-logging-in'
    const { issuer: admin } = setup()
    await admin.addUser(name, PASSWORD)
    const racing = wrapped({
      async createSession(session) {
        // the operator removes the user while this login checks the password
        await admin.removeUser(name)
        return store.createSession(session)
      },
    })
    const { issuer, events } = setup({}, racing)
    const error = await rejection(issuer.login(name, PASSWORD))
    expect(error).toMatchObject({ code: 'ERR_INVALID_CREDENTIALS' })
    expect(error.message).not.toMatch(/[0-9a-f]{8}-/)
    expect(events.map((event) => event.type)).toContain('loginFailed')
  })
})

describe('the login path (a review of it)', () => {
  it('bug: a login the full hasher line refused (503) still spent the account budget, so a user obeying Retry-After was locked out', async () => {
    // one attempt a window: any refused try that spent it would lock her out
    const perAccount = createRateLimiter({ limit: 1 })
    // one hasher, no line: a second check at the same moment is refused at once
    const hasher = createPasswordHasher({ maxConcurrency: 1, maxQueue: 0 })
    const { issuer } = setup({ passwords: hasher, loginLimits: { perAccount } })
    await issuer.addUser('lined-up', 'pw-carol')
    // the dummy hash made beforehand: the flood's login then holds the hasher for one check, without a gap
    await hasher.verifyDummy('warm up')
    const answers: string[] = []
    // someone else's login keeps the one hasher busy while carol tries three times
    const flood = issuer.login('someone-else', 'x').catch(() => undefined)
    while (!hasher.busy?.()) await new Promise((resolve) => setImmediate(resolve))
    for (let i = 0; i < 3; i++)
      answers.push(
        await issuer.login('lined-up', 'pw-carol').then(
          () => 'ok',
          (error: AuthError) => error.code,
        ),
      )
    await flood
    expect(answers).toEqual(['ERR_UNAVAILABLE', 'ERR_UNAVAILABLE', 'ERR_UNAVAILABLE'])
    // the line is free again: her password is checked, with her budget whole
    await expect(issuer.login('lined-up', 'pw-carol')).resolves.toMatchObject({ tokenType: 'Bearer' })
  })

  it('bug: width and compatibility variants of a name each had a budget of their own (a custom authenticate may match them all)', async () => {
    const perAccount = createRateLimiter({ limit: 3 })
    const { issuer } = setup({ authenticate: async () => null, loginLimits: { perAccount } })
    const answers: string[] = []
    for (const name of ['ada', 'ＡＤＡ', 'ａda', 'aｄa', 'Ada ', 'ADA'])
      answers.push(
        await issuer.login(name, 'guess').then(
          () => 'ok',
          (error: AuthError) => error.code,
        ),
      )
    expect(answers).toEqual([
      'ERR_INVALID_CREDENTIALS',
      'ERR_INVALID_CREDENTIALS',
      'ERR_INVALID_CREDENTIALS',
      'ERR_RATE_LIMITED',
      'ERR_RATE_LIMITED',
      'ERR_RATE_LIMITED',
    ])
  })

  it('keeps the per-account key bounded: NFKC expands some characters (U+FDFA to 18)', async () => {
    const keys: string[] = []
    const perAccount = {
      consume: async (key: string) => {
        keys.push(key)
        return { ok: true, retryAfter: 0 }
      },
      close: async () => {},
    }
    const { issuer } = setup({ authenticate: async () => null, loginLimits: { perAccount } })
    await expect(issuer.login('\uFDFA'.repeat(1024), 'guess')).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    expect(keys).toHaveLength(1)
    expect(keys[0]!.length).toBeLessThanOrEqual('user:'.length + 1024)
  })

  it('bug: a name with a control character reached a row made for a custom authenticate, checked faster than an unknown name', async () => {
    const { issuer: external } = setup({ authenticate: async () => ({ userId: 'ext-1' }) })
    // the login makes the row of that user: its name starts with a control character, its hash is unusable
    await external.login('whoever', 'x')
    const rows = (await store.listUsers()).filter((user) => user.id === 'ext-1')
    expect(rows).toHaveLength(1)
    const counting = { ...passwords, dummies: 0, checks: 0 }
    const spy: typeof passwords = {
      ...passwords,
      verify: (phc, password) => {
        counting.checks++
        return passwords.verify(phc, password)
      },
      verifyDummy: (password) => {
        counting.dummies++
        return passwords.verifyDummy(password)
      },
    }
    // back to the built-in users: that row's name is not a user's name
    const { issuer } = setup({ passwords: spy })
    await expect(issuer.login(rows[0]!.username, 'x')).rejects.toMatchObject({
      code: 'ERR_INVALID_CREDENTIALS',
    })
    expect(counting).toMatchObject({ checks: 0, dummies: 1 })
  })
})
