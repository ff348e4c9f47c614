/**
 * Usernames and passwords as keyboards type them: "é" is one code point (NFC) on most keyboards and
 * "e" plus a combining accent (NFD) on others, or when pasted from a file name. A password set on one
 * device must work on another (NIST SP 800-63B section 5.1.1.2), and two names that look the same must
 * not be two accounts.
 */
import { randomUUID } from 'node:crypto'
import {
  type AuthServer,
  createAuthServer,
  createPasswordHasher,
  createSqliteStore,
  type TokenStore,
} from '@tokenflow/server'
import { decodeJwt } from 'jose'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AUDIENCE, ISSUER, postJson } from './helpers/http.js'

const NFC_PASSWORD = 'p\u00e4ssw\u00f6rd f\u00fcr K\u00f6ln'
const NFD_PASSWORD = 'pa\u0308sswo\u0308rd fu\u0308r Ko\u0308ln'
const NFC_NAME = 'jos\u00e9'
const NFD_NAME = 'jose\u0301'

let store: TokenStore
const servers: AuthServer[] = []

async function start(options: { rateLimit?: { perAccount: number; perIp: number } } = {}) {
  const app = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    clientId: 'web',
    store,
    rateLimit: options.rateLimit ?? false,
    pruneInterval: 0,
  })
  servers.push(app)
  return { app, origin: await app.listen({ port: 0, host: '127.0.0.1' }) }
}

let app: AuthServer
let origin: string

beforeAll(async () => {
  store = createSqliteStore({ filename: ':memory:' })
  ;({ app, origin } = await start())
})

afterAll(async () => {
  for (const server of servers) await server.close()
  await store.close()
})

const login = (username: string, password: string, target = origin) =>
  postJson(target, '/auth/login', { username, password })

describe('passwords in NFC and NFD', () => {
  it('logs in with a password typed in NFD that was set in NFC, and the other way round', async () => {
    expect(NFC_PASSWORD).not.toBe(NFD_PASSWORD)
    expect(NFC_PASSWORD.normalize('NFD')).toBe(NFD_PASSWORD)
    const composed = await app.tokenflow.issuer.addUser('composed', NFC_PASSWORD)
    const decomposed = await app.tokenflow.issuer.addUser('decomposed', NFD_PASSWORD)
    for (const [name, id] of [
      ['composed', composed.id],
      ['decomposed', decomposed.id],
    ] as const) {
      for (const password of [NFC_PASSWORD, NFD_PASSWORD]) {
        const reply = await login(name, password)
        expect(reply.status).toBe(200)
        expect(decodeJwt(reply.json().accessToken).sub).toBe(id)
      }
    }
    // still a password: another one is refused
    const wrong = await login('composed', 'passwort fur Koln')
    expect(wrong.status).toBe(400)
    expect(wrong.json()).toMatchObject({ error: 'invalid_grant', code: 'ERR_INVALID_CREDENTIALS' })
  })

  it('changes a password whose old one is typed in the other form, and takes the new one in both', async () => {
    const { id } = await app.tokenflow.issuer.addUser('changer', NFC_PASSWORD)
    await app.tokenflow.issuer.changePassword(id, NFD_PASSWORD, 'n\u00e9u')
    expect((await login('changer', 'ne\u0301u')).status).toBe(200)
    expect((await login('changer', 'n\u00e9u')).status).toBe(200)
    expect((await login('changer', NFC_PASSWORD)).status).toBe(400)
  })

  it('keeps a password hashed as typed before normalization working, and upgrades its hash on login', async () => {
    // a row written before passwords were normalized: the hash of the NFD bytes as they were typed
    const id = randomUUID()
    const legacyHash = await createPasswordHasher().hash(NFD_PASSWORD)
    await store.createUser({
      id,
      username: 'legacy-password',
      passwordHash: legacyHash,
      createdAt: 0,
      passwordChangedAt: 0,
    })
    // from the device that set it
    expect((await login('legacy-password', NFD_PASSWORD)).status).toBe(200)
    const upgraded = (await store.getUser(id))!
    expect(upgraded.passwordHash).not.toBe(legacyHash)
    // a rehash is not a password change
    expect(upgraded.passwordChangedAt).toBe(0)
    // and from then on from any device
    expect((await login('legacy-password', NFC_PASSWORD)).status).toBe(200)
    expect((await login('legacy-password', NFD_PASSWORD)).status).toBe(200)
  })
})

describe('usernames in NFC and NFD', () => {
  it('does not make "é" and "e\\u0301" two accounts, and logs in with either spelling', async () => {
    const user = await app.tokenflow.issuer.addUser(NFC_NAME, NFC_PASSWORD)
    await expect(app.tokenflow.issuer.addUser(NFD_NAME, 'another password')).rejects.toMatchObject({
      code: 'ERR_USER_EXISTS',
    })
    for (const name of [NFC_NAME, NFD_NAME]) {
      const reply = await login(name, NFC_PASSWORD)
      expect(reply.status).toBe(200)
      expect(decodeJwt(reply.json().accessToken).sub).toBe(user.id)
    }
    // the name is stored in NFC, whatever form it was given in
    const other = await app.tokenflow.issuer.addUser('zo\u0308e', NFC_PASSWORD)
    expect(other.username).toBe('z\u00f6e')
    expect((await login('z\u00f6e', NFC_PASSWORD)).status).toBe(200)
  })

  it('finds a name stored in NFD before normalization from a device that types NFC, and removes it', async () => {
    const id = randomUUID()
    const name = 'rene\u0301e'
    await store.createUser({
      id,
      username: name,
      passwordHash: await createPasswordHasher().hash(NFC_PASSWORD),
      createdAt: 0,
      passwordChangedAt: 0,
    })
    for (const typed of [name, 'ren\u00e9e']) {
      const reply = await login(typed, NFC_PASSWORD)
      expect(reply.status).toBe(200)
      expect(decodeJwt(reply.json().accessToken).sub).toBe(id)
    }
    await expect(app.tokenflow.issuer.addUser('ren\u00e9e', 'x')).rejects.toMatchObject({
      code: 'ERR_USER_EXISTS',
    })
    await expect(app.tokenflow.issuer.removeUser('ren\u00e9e')).resolves.toBe(true)
    expect(await store.getUser(id)).toBeNull()
  })

  it('logs in with a name a phone keyboard typed with a trailing space, and makes no second account of it', async () => {
    const user = await app.tokenflow.issuer.addUser('grace', NFC_PASSWORD)
    for (const typed of ['grace ', ' grace', 'grace\u00a0']) {
      const reply = await login(typed, NFC_PASSWORD)
      expect(reply.status).toBe(200)
      expect(decodeJwt(reply.json().accessToken).sub).toBe(user.id)
    }
    await expect(app.tokenflow.issuer.addUser('grace ', 'another password')).rejects.toMatchObject({
      code: 'ERR_USER_EXISTS',
    })
    expect((await app.tokenflow.issuer.addUser(' hopper\t', NFC_PASSWORD)).username).toBe('hopper')
    await expect(app.tokenflow.issuer.addUser('   ', NFC_PASSWORD)).rejects.toMatchObject({
      code: 'ERR_INVALID_REQUEST',
    })
    // the password is never trimmed: its spaces are part of it
    expect((await login('grace', `${NFC_PASSWORD} `)).status).toBe(400)
  })

  it('counts every spelling of a name against one per-account budget', async () => {
    const limited = await start({ rateLimit: { perAccount: 2, perIp: 1000 } })
    await limited.app.tokenflow.issuer.addUser('chlo\u00e9', NFC_PASSWORD)
    expect((await login('chlo\u00e9', 'guess 1', limited.origin)).status).toBe(400)
    expect((await login('chloe\u0301', 'guess 2', limited.origin)).status).toBe(400)
    const third = await login('CHLOE\u0301 ', NFC_PASSWORD, limited.origin)
    expect(third.status).toBe(429)
    expect(third.json()).toMatchObject({ error: 'too_many_requests', code: 'ERR_RATE_LIMITED' })
  })
})
