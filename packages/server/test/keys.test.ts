import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { calculateJwkThumbprint, createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createKeyring } from '../src/keys.js'
import { createSqliteStore } from '../src/stores/sqlite.js'
import type { TokenStore } from '../src/stores/store.js'

const T0 = Date.UTC(2030, 0, 1)
const MINUTE = 60_000
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']

let store: TokenStore

beforeEach(async () => {
  store = createSqliteStore({ filename: ':memory:' })
  await store.migrate()
})

afterEach(async () => {
  await store.close()
})

async function verifyWith(
  jwks: Awaited<ReturnType<ReturnType<typeof createKeyring>['jwks']>>,
  token: string,
) {
  return jwtVerify(token, createLocalJWKSet(jwks), { currentDate: new Date(T0) })
}

describe('createKeyring', () => {
  it('generates one ES256 key on first use, kid = JWK thumbprint, and keeps it in the store', async () => {
    const keyring = createKeyring({ store, now: () => T0 })
    const { kid, alg } = await keyring.activeKey()
    expect(alg).toBe('ES256')
    const { keys } = await keyring.jwks()
    expect(keys).toHaveLength(1)
    expect(keys[0]).toMatchObject({ kid, alg: 'ES256', use: 'sig', kty: 'EC', crv: 'P-256' })
    expect(await calculateJwkThumbprint(keys[0]!)).toBe(kid)
    const records = await store.listKeys()
    expect(records.map((record) => record.kid)).toEqual([kid])
    expect(JSON.parse(records[0]!.privateJwk)).toHaveProperty('d')
  })

  it('signs with the stored key after a restart, so issued tokens stay valid', async () => {
    const before = createKeyring({ store, now: () => T0 })
    const token = await before.sign({ sub: 'ada', exp: T0 / 1000 + 60 }, { typ: 'at+jwt' })
    const after = createKeyring({ store, now: () => T0 })
    expect(await after.activeKey()).toEqual(await before.activeKey())
    const { payload, protectedHeader } = await verifyWith(await after.jwks(), token)
    expect(payload.sub).toBe('ada')
    expect(protectedHeader).toEqual({ alg: 'ES256', kid: (await before.activeKey()).kid, typ: 'at+jwt' })
    expect(await store.listKeys()).toHaveLength(1)
  })

  it('makes instances starting at once over an empty database sign with one key from the start', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tokenflow-keys-'))
    const filename = join(dir, 'tokenflow.db')
    const stores = [createSqliteStore({ filename }), createSqliteStore({ filename })]
    try {
      for (const each of stores) await each.migrate()
      for (let round = 0; round < 5; round++) {
        // three instances, two of them on one connection, the third on another
        const keyrings = [stores[0]!, stores[0]!, stores[1]!].map((each) =>
          createKeyring({ store: each, now: () => T0 + round }),
        )
        const tokens = await Promise.all(keyrings.map((keyring, i) => keyring.sign({ sub: `user-${i}` })))
        const kids = tokens.map((token) => decodeProtectedHeader(token).kid)
        expect(new Set(kids).size).toBe(1)
        const live = (await stores[1]!.listKeys()).filter((record) => record.retiredAt === null)
        expect(live.map((record) => record.kid)).toEqual([kids[0]])
        // and every instance publishes it
        for (const keyring of keyrings) {
          await expect(verifyWith(await keyring.jwks(), tokens[0]!)).resolves.toMatchObject({
            payload: { sub: 'user-0' },
          })
        }
        // retired, so that the next round starts again from no live key
        await stores[0]!.retireKey(kids[0]!, T0 + round)
      }
    } finally {
      for (const each of stores) await each.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('publishes a key rotated in by another instance at once', async () => {
    const reader = createKeyring({ store, now: () => T0 })
    await reader.activeKey()
    const { kid } = await createKeyring({ store, now: () => T0 }).rotateKeys()
    expect((await reader.jwks()).keys.map((key) => key.kid)).toContain(kid)
  })

  it('rotateKeys: the new key is published at once, signs activationDelay later; the old one then stays in the JWKS for accessTokenTtl + 60 s', async () => {
    const clock = { now: T0 }
    const keyring = createKeyring({ store, accessTokenTtl: 15 * MINUTE, now: () => clock.now })
    const old = await keyring.activeKey()
    const oldToken = await keyring.sign({ sub: 'ada', exp: T0 / 1000 + 900 })
    const { kid, activatesAt } = await keyring.rotateKeys()
    expect(kid).not.toBe(old.kid)
    expect(activatesAt).toBe(T0 + 2 * MINUTE)
    // published before any token carries its kid
    expect((await keyring.jwks()).keys.map((key) => key.kid).sort()).toEqual([old.kid, kid].sort())
    expect((await keyring.activeKey()).kid).toBe(old.kid)
    clock.now = activatesAt - 1
    expect(decodeProtectedHeader(await keyring.sign({ sub: 'ada' })).kid).toBe(old.kid)
    expect(
      JSON.parse((await store.listKeys()).find((record) => record.kid === old.kid)!.privateJwk),
    ).toHaveProperty('d')

    clock.now = activatesAt
    expect((await keyring.activeKey()).kid).toBe(kid)
    expect(decodeProtectedHeader(await keyring.sign({ sub: 'ada' })).kid).toBe(kid)
    // a token signed before the switch still verifies against the published keys
    await expect(verifyWith(await keyring.jwks(), oldToken)).resolves.toMatchObject({
      payload: { sub: 'ada' },
    })
    // the old key is retired as of the switch, its private half gone; the new key keeps its own
    const records = await store.listKeys()
    expect(records.find((record) => record.kid === old.kid)).toMatchObject({
      retiredAt: activatesAt,
      privateJwk: '',
    })
    expect(JSON.parse(records.find((record) => record.kid === kid)!.privateJwk)).toHaveProperty('d')

    clock.now = activatesAt + 16 * MINUTE - 1
    expect((await createKeyring({ store, now: () => clock.now }).jwks()).keys).toHaveLength(2)
    clock.now = activatesAt + 16 * MINUTE
    const later = createKeyring({ store, now: () => clock.now })
    expect((await later.jwks()).keys.map((key) => key.kid)).toEqual([kid])
  })

  it('makes every instance switch to a rotated-in key at its activatesAt, whoever rotated', async () => {
    const clock = { now: T0 }
    const reader = createKeyring({ store, cacheTtl: 30_000, now: () => clock.now })
    const old = await reader.activeKey()
    const { kid, activatesAt } = await createKeyring({ store, now: () => clock.now }).rotateKeys()
    // published everywhere at once: the JWKS is read from the store
    expect((await reader.jwks()).keys.map((key) => key.kid)).toContain(kid)
    // the reader learns of the key at its next read (cacheTtl), and keeps signing with the old one until then
    clock.now += 30_000
    expect((await reader.activeKey()).kid).toBe(old.kid)
    clock.now = activatesAt
    expect((await reader.activeKey()).kid).toBe(kid)
  })

  it('signs at once with the only key there is, even when a rotation stored it ahead of time', async () => {
    const { kid } = await createKeyring({ store, now: () => T0 }).rotateKeys()
    const keyring = createKeyring({ store, now: () => T0 })
    expect((await keyring.activeKey()).kid).toBe(kid)
    expect(await store.listKeys()).toHaveLength(1)
  })

  it('two rotations racing leave one key signing once both are due, and retire the rest', async () => {
    const clock = { now: T0 }
    const a = createKeyring({ store, now: () => clock.now })
    const old = await a.activeKey()
    const b = createKeyring({ store, now: () => clock.now })
    const [first, second] = await Promise.all([a.rotateKeys(), b.rotateKeys()])
    clock.now = Math.max(first.activatesAt, second.activatesAt)
    const [x, y] = await Promise.all([a.activeKey(), b.activeKey()])
    expect(x).toEqual(y)
    expect([first.kid, second.kid]).toContain(x.kid)
    const live = (await store.listKeys()).filter((record) => record.retiredAt === null)
    expect(live.map((record) => record.kid)).toEqual([x.kid])
    expect(x.kid).not.toBe(old.kid)
  })

  it('supports RS256', async () => {
    const keyring = createKeyring({ store, alg: 'RS256', now: () => T0 })
    const token = await keyring.sign({ sub: 'ada' }, { typ: 'at+jwt' })
    expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'RS256', typ: 'at+jwt' })
    const { keys } = await keyring.jwks()
    expect(keys[0]).toMatchObject({ kty: 'RSA', alg: 'RS256', use: 'sig', e: 'AQAB' })
    await expect(verifyWith({ keys }, token)).resolves.toMatchObject({ payload: { sub: 'ada' } })
  })

  it('never publishes a private member, even if the stored public JWK carries one', async () => {
    for (const alg of ['ES256', 'RS256'] as const) {
      const keyring = createKeyring({ store, alg, now: () => T0 })
      await keyring.rotateKeys()
      for (const key of (await keyring.jwks()).keys) {
        for (const member of PRIVATE_MEMBERS) expect(key).not.toHaveProperty(member)
      }
    }
    await store.insertKey({
      kid: 'tampered',
      alg: 'ES256',
      privateJwk: '{}',
      publicJwk: JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'secret' }),
      createdAt: T0 + 10 * MINUTE,
      retiredAt: null,
    })
    const { keys } = await createKeyring({ store, now: () => T0 }).jwks()
    expect(keys.find((key) => key.kid === 'tampered')).toEqual({
      kid: 'tampered',
      alg: 'ES256',
      use: 'sig',
      kty: 'EC',
      crv: 'P-256',
      x: 'x',
      y: 'y',
    })
  })

  it('rejects bad options with ERR_CONFIG', () => {
    expect(() => createKeyring({ store, alg: 'HS256' as 'ES256' })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    )
    expect(() => createKeyring({ store, accessTokenTtl: -1 })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    )
    expect(() => createKeyring({ store, activationDelay: 1.5 })).toThrow(
      expect.objectContaining({
        code: 'ERR_CONFIG',
        message: '"activationDelay" must be a non-negative integer (ms)',
      }),
    )
    expect(() => createKeyring({ store: {} as TokenStore })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    )
    // a store written before insertFirstKey existed is named, not left to fail at the first token
    const { insertFirstKey: _, ...older } = { ...store, listKeys: store.listKeys }
    expect(() => createKeyring({ store: older as TokenStore })).toThrow(
      expect.objectContaining({
        code: 'ERR_CONFIG',
        message: '"store" must be a TokenStore: it has no insertFirstKey() method',
      }),
    )
  })
})
