import {
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
  type JWTPayload,
  SignJWT,
} from 'jose'
import { AuthError, isStoreUnavailable } from './errors.js'
import type { KeyRecord, TokenStore } from './stores/store.js'

/**
 * Signature algorithms a keyring can generate keys for.
 * @example
 * const alg: SigningAlgorithm = 'RS256'
 */
export type SigningAlgorithm = 'ES256' | 'ES384' | 'RS256' | 'PS256'

const ALGORITHMS: readonly SigningAlgorithm[] = ['ES256', 'ES384', 'RS256', 'PS256']

/**
 * A public key as published in the JWKS.
 * @example
 * const [key]: PublicJwk[] = (await keyring.jwks()).keys
 */
export interface PublicJwk extends JWK {
  kid: string
  alg: string
  use: 'sig'
}

/**
 * The JWKS document served at `/.well-known/jwks.json`.
 * @example
 * const jwks: JsonWebKeySet = await keyring.jwks()
 */
export interface JsonWebKeySet {
  keys: PublicJwk[]
}

/**
 * Options of `createKeyring`.
 * @example
 * const options: KeyringOptions = { store, alg: 'ES256', accessTokenTtl: 15 * 60_000 }
 */
export interface KeyringOptions {
  /** where keys are kept, so every instance and every restart signs with the same key */
  store: TokenStore
  /**
   * Algorithm of the keys this keyring generates (the first key, and each `rotateKeys()`).
   * A key already in the store keeps its algorithm until the next rotation.
   * @default 'ES256'
   */
  alg?: SigningAlgorithm | undefined
  /**
   * Lifetime of the access tokens, in ms: a retired key stays in the JWKS this long plus `skew`,
   * so every token it signed can still be verified.
   * @default 900_000 (15 min)
   */
  accessTokenTtl?: number | undefined
  /**
   * Clock skew allowance added to how long a retired key stays published, in ms.
   * @default 60_000
   */
  skew?: number | undefined
  /**
   * How long a rotated-in key is published in the JWKS before it signs, in ms. A resource server that
   * fetched the JWKS shortly before the rotation does not look again at once: a cache in between may keep
   * the JWKS for its `max-age` (60 s here), and a verifier waits out a cooldown before it refetches for an
   * unknown `kid` (30 s in `createVerifier` and in jose). A token signed with the new key right away would
   * be refused there, so the new key signs only once every verifier can have it. Must cover
   * max-age + cooldown (90 s); the default leaves room.
   * @default 120_000
   */
  activationDelay?: number | undefined
  /**
   * How long the signing key read from the store is used before re-reading, in ms: another
   * instance's rotation makes this one sign with the new key within this delay (the JWKS is
   * always read fresh). Keep it below `skew`.
   * @default 30_000
   */
  cacheTtl?: number | undefined
  /** clock, epoch ms */
  now?: (() => number) | undefined
}

/**
 * Signing keys kept in the store: the active one signs, retired ones stay in the JWKS for a while.
 * @example
 * const { kid } = await keyring.rotateKeys()
 */
export interface Keyring {
  /** signs `claims` as a JWS with the active key; the header gets `alg`, `kid` and `typ` */
  sign(claims: JWTPayload, options?: { typ?: string }): Promise<string>
  /** the public keys to publish: the active key and the recently retired ones */
  jwks(): Promise<JsonWebKeySet>
  /** the `kid` and `alg` of the key that signs now */
  activeKey(): Promise<{ kid: string; alg: string }>
  /**
   * Generates and stores a new key. The JWKS publishes it at once, and it signs from `activatesAt`
   * (`activationDelay` later) on every instance; the keys before it are retired then.
   */
  rotateKeys(): Promise<{ kid: string; activatesAt: number }>
}

interface SigningKey {
  loadedAt: number
  /** when a key stored ahead of time starts signing: the cached key is read again then */
  switchAt: number
  kid: string
  alg: string
  privateKey: CryptoKey
}

// members of a public JWK; anything else (above all `d`, `p`, `q`) never reaches the JWKS
const PUBLIC_MEMBERS = ['kty', 'crv', 'x', 'y', 'n', 'e'] as const

/**
 * Creates the keyring: on first use it loads the active key from the store, generating one if
 * there is none. The store must be migrated before that first use.
 * @example
 * const store = createSqliteStore()
 * await store.migrate()
 * const keyring = createKeyring({ store, alg: 'ES256', accessTokenTtl: 15 * 60_000 })
 * const jwt = await keyring.sign({ sub: 'user-1' }, { typ: 'at+jwt' })
 * await keyring.rotateKeys()
 */
export function createKeyring({
  store,
  alg = 'ES256',
  accessTokenTtl = 15 * 60_000,
  skew = 60_000,
  activationDelay = 120_000,
  cacheTtl = 30_000,
  now = Date.now,
}: KeyringOptions): Keyring {
  if (!store || typeof store.listKeys !== 'function') {
    throw new AuthError('ERR_CONFIG', '"store" must be a TokenStore')
  }
  for (const method of ['insertKey', 'insertFirstKey', 'retireKey'] as const) {
    if (typeof store[method] !== 'function') {
      throw new AuthError('ERR_CONFIG', `"store" must be a TokenStore: it has no ${method}() method`)
    }
  }
  if (!ALGORITHMS.includes(alg)) {
    throw new AuthError('ERR_CONFIG', `"alg" must be one of ${ALGORITHMS.map((a) => `"${a}"`).join(', ')}`)
  }
  for (const [name, value] of Object.entries({ accessTokenTtl, skew, activationDelay, cacheTtl })) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new AuthError('ERR_CONFIG', `"${name}" must be a non-negative integer (ms)`)
    }
  }

  let loaded: SigningKey | undefined
  let loading: Promise<SigningKey> | undefined
  let reading: Promise<JsonWebKeySet> | undefined
  // bumped by rotateKeys, so a load that started before the rotation cannot cache the old key
  let generation = 0

  const generate = async (): Promise<Omit<KeyRecord, 'createdAt' | 'retiredAt'>> => {
    const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true })
    const publicJwk = await exportJWK(publicKey)
    const kid = await calculateJwkThumbprint(publicJwk)
    return {
      kid,
      alg,
      privateJwk: JSON.stringify({ ...(await exportJWK(privateKey)), kid, alg }),
      publicJwk: JSON.stringify({ ...publicJwk, kid, alg, use: 'sig' }),
    }
  }

  const load = async (): Promise<SigningKey> => {
    let records = await store.listKeys()
    let time = now()
    let active = pickActive(records, time)
    if (!active) {
      const fresh = await generate()
      // the first key signs at once: no token carries an older kid that a verifier could have cached.
      // Instances starting together over an empty database each try to store theirs; the store keeps one,
      // and every instance reads that one back and signs with it
      time = now()
      await store.insertFirstKey({ ...fresh, createdAt: time, retiredAt: null })
      records = await store.listKeys()
      active = pickActive(records, time)
      if (!active) throw new AuthError('ERR_CONFIG', 'no signing key in the store after inserting one')
    }
    // the live keys before the active one stopped signing when it started: retire them (any instance
    // may do it first; a retirement keeps its first time). Until then they stay published anyway
    for (const record of records) {
      if (record.retiredAt === null && byAge(record, active) < 0) {
        await store.retireKey(record.kid, active.createdAt)
      }
    }
    const waiting = records.filter((record) => record.retiredAt === null && record.createdAt > time)
    let privateKey: CryptoKey
    try {
      privateKey = (await importJWK(JSON.parse(active.privateJwk) as JWK, active.alg)) as CryptoKey
    } catch (error) {
      throw new AuthError('ERR_CONFIG', `signing key "${active.kid}" in the store cannot be imported`, {
        cause: error,
      })
    }
    const switchAt = Math.min(...waiting.map((record) => record.createdAt))
    return { loadedAt: time, switchAt, kid: active.kid, alg: active.alg, privateKey }
  }

  const current = (): Promise<SigningKey> => {
    const time = now()
    if (loaded && time - loaded.loadedAt < cacheTtl && time < loaded.switchAt) return Promise.resolve(loaded)
    if (!loading) {
      const started = generation
      const pending = load()
        .then(
          (key) => {
            if (started === generation) loaded = key
            return key
          },
          (error: unknown) => {
            // the store cannot be read (down, locked, timed out): sign with the key loaded before, which
            // stays published long after it stops signing. A rotation that already committed must still be
            // answered, or its client's retry after reuseGrace would count as reuse and end the session
            if (loaded && started === generation && isStoreUnavailable(error)) return loaded
            throw error
          },
        )
        .finally(() => {
          if (loading === pending) loading = undefined
        })
      loading = pending
    }
    return loading
  }

  const readJwks = async (): Promise<JsonWebKeySet> => {
    // a key exists before anything is published
    await current()
    const time = now()
    const keys = (await store.listKeys())
      .filter((record) => record.retiredAt === null || record.retiredAt + accessTokenTtl + skew > time)
      .sort(byAge)
      .map(toPublicJwk)
    return { keys }
  }

  return {
    async sign(claims, { typ } = {}) {
      const key = await current()
      return new SignJWT(claims)
        .setProtectedHeader(
          typ === undefined ? { alg: key.alg, kid: key.kid } : { alg: key.alg, kid: key.kid, typ },
        )
        .sign(key.privateKey)
    },
    jwks() {
      // read from the store every time (one read shared by concurrent callers), never cached: a key
      // another instance just inserted or rotated in must verify here at once
      if (!reading) {
        const pending = readJwks().finally(() => {
          if (reading === pending) reading = undefined
        })
        reading = pending
      }
      return reading.then(({ keys }) => ({ keys: keys.map((key) => ({ ...key })) }))
    },
    async activeKey() {
      const { kid, alg } = await current()
      return { kid, alg }
    },
    async rotateKeys() {
      const next = await generate()
      const records = await store.listKeys()
      // stored with the time it starts signing; strictly after every key, even on a frozen test clock,
      // so "the newest key that has started" stays well defined
      const activatesAt = Math.max(now() + activationDelay, ...records.map((record) => record.createdAt + 1))
      await store.insertKey({ ...next, createdAt: activatesAt, retiredAt: null })
      generation++
      loaded = undefined
      loading = undefined
      await current()
      return { kid: next.kid, activatesAt }
    },
  }
}

/** Oldest first; `kid` breaks ties so every instance picks the same key. */
function byAge(a: KeyRecord, b: KeyRecord): number {
  return a.createdAt - b.createdAt || (a.kid < b.kid ? -1 : a.kid > b.kid ? 1 : 0)
}

/** The newest live key that has started signing; the oldest live one when none has (a clock set back). */
function pickActive(records: KeyRecord[], time: number): KeyRecord | undefined {
  const live = records.filter((record) => record.retiredAt === null).sort(byAge)
  return live.filter((record) => record.createdAt <= time).at(-1) ?? live[0]
}

function toPublicJwk(record: KeyRecord): PublicJwk {
  const stored = JSON.parse(record.publicJwk) as Record<string, unknown>
  const jwk: PublicJwk = { kid: record.kid, alg: record.alg, use: 'sig' }
  for (const member of PUBLIC_MEMBERS) {
    if (typeof stored[member] === 'string') jwk[member] = stored[member]
  }
  return jwk
}
