/**
 * Wycheproof JWS and JWK vectors (C2SP/wycheproof) through the verifier's JWS layer, `verifyJws`:
 * the same pre-parse checks, JWKS key selection, allow-list and error codes as `createVerifier`,
 * followed by jose `compactVerify` (createVerifier runs jose `jwtVerify`, which is compactVerify
 * plus the claims checks; the vectors' payloads are not JWTs).
 */
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { isVerifyError, verifyJws } from '@tokenflow/server/verify'
import { base64url, type JSONWebKeySet, type JWK } from 'jose'
import { beforeAll, describe, expect, it } from 'vitest'
import { isAuthError } from '../src/errors.js'

interface Vector {
  tcId: number
  comment: string
  jws: string
  result: 'valid' | 'invalid' | 'acceptable'
  flags: string[]
}
interface SignatureGroup {
  comment: string
  public?: JWK
  private: JWK
  tests: Vector[]
}
interface KeySetGroup {
  comment: string
  public?: JSONWebKeySet
  private: JSONWebKeySet
  tests: Vector[]
}
interface VectorFile<Group> {
  numberOfTests: number
  testGroups: Group[]
}

/** accepted, or the stable code it was rejected with */
type Outcome = 'accepted' | string

// The vectors are vendored from C2SP/wycheproof (Apache-2.0, see fixtures/wycheproof/LICENSE), so a fresh
// clone runs them; where the project's shared/ folder sits next to the repository (as in CI), the vendored
// copy must be byte-identical to it.
function loadVectors<Group>(name: string): VectorFile<Group> {
  const vendored = readFileSync(new URL(`fixtures/wycheproof/${name}`, import.meta.url), 'utf8')
  const shared = new URL(`../../../../shared/testdata/wycheproof/${name}`, import.meta.url)
  if (existsSync(shared) && readFileSync(shared, 'utf8') !== vendored) {
    throw new Error(`${fileURLToPath(shared)} differs from the vendored copy: update fixtures/wycheproof`)
  }
  return JSON.parse(vendored) as VectorFile<Group>
}

/** The algorithm allow-list of a key: its own `alg`, or the ones its `kty`/`crv` allow. */
function algorithmsOf(jwk: JWK): string[] {
  if (jwk.alg !== undefined) return [jwk.alg]
  if (jwk.kty === 'RSA') return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return ['ES256']
  throw new Error(`no algorithm for a ${jwk.kty} key`)
}

async function outcomeOf(run: () => Promise<unknown>): Promise<Outcome> {
  try {
    await run()
    return 'accepted'
  } catch (error) {
    // a rejection must carry a stable code; anything else (a TypeError, a crash) fails the vector
    if (isVerifyError(error) || isAuthError(error)) return error.code
    throw error
  }
}

/**
 * Every vector goes through the JWS layer with its own key and an allow-list of that key's alg.
 * Asymmetric keys are used as a one-key JWKS, exactly as `createVerifier({ jwks: { keys } })` uses
 * them (kid, alg, use and key_ops selection). The HS256 groups have only a secret key: the verifier
 * never accepts HS*, so those vectors exercise the same pre-parse checks and jose call with the
 * secret as a bare key.
 */
function verifySignatureVector(group: SignatureGroup, vector: Vector): Promise<Outcome> {
  const key = group.public ?? group.private
  return outcomeOf(() =>
    key.kty === 'oct'
      ? verifyJws(vector.jws, base64url.decode(key.k!), { algorithms: algorithmsOf(key) })
      : verifyJws(vector.jws, { keys: [key] }, { algorithms: algorithmsOf(key) }),
  )
}

const signatures = loadVectors<SignatureGroup>('json_web_signature_test.json')
const signatureVectors = signatures.testGroups.flatMap((group) =>
  group.tests.map((vector) => ({ group, vector })),
)

/**
 * Vectors whose label this verifier does not follow, each with the outcome it gets instead and why.
 * They are asserted one by one, so a change in the file or in the verifier shows up here.
 */
const SIGNATURE_DEVIATIONS = new Map<number, { outcome: Outcome; why: string }>([
  ...[346, 350].map(
    (tcId) =>
      [
        tcId,
        {
          outcome: 'ERR_JOSE_ALG_NOT_ALLOWED',
          why: 'labelled valid (RFC 7520 figure 20), but the key declares "alg": "PS256" and the token is PS384: a key is only used with its own alg (RFC 7517 section 4.4)',
        },
      ] as const,
  ),
  ...[347, 351].map(
    (tcId) =>
      [
        tcId,
        {
          outcome: 'ERR_CONFIG',
          why: 'labelled valid (RFC 7520 figure 27), but the key declares "alg": "ES521", which is no JWS algorithm (ES512 is): the verifier refuses to be configured with it',
        },
      ] as const,
  ),
  ...[372, 373].map(
    (tcId) =>
      [
        tcId,
        {
          outcome: 'ERR_JWS_INVALID',
          why: 'labelled valid, but a "?" is inserted into a segment: it is no base64url character and the MAC covers the exact bytes, so a strict verifier refuses it',
        },
      ] as const,
  ),
  ...[367, 370].map(
    (tcId) =>
      [
        tcId,
        {
          outcome: 'accepted',
          why: 'labelled invalid, but byte-identical to tcId 357 (labelled valid) with the same key: the file contradicts itself (C2SP/wycheproof#236)',
        },
      ] as const,
  ),
])

describe(`wycheproof json_web_signature_test.json (${signatures.numberOfTests} vectors)`, () => {
  const outcomes = new Map<number, Outcome>()

  beforeAll(async () => {
    for (const { group, vector } of signatureVectors) {
      outcomes.set(vector.tcId, await verifySignatureVector(group, vector))
    }
  })

  it('holds the vectors this test was written against', () => {
    expect(signatureVectors).toHaveLength(signatures.numberOfTests)
    expect(signatures.numberOfTests).toBe(401)
    expect(signatureVectors.every(({ vector }) => typeof vector.jws === 'string')).toBe(true)
    expect(signatureVectors.filter(({ vector }) => vector.result === 'acceptable')).toHaveLength(0)
  })

  it('counts: 40 valid accepted, 353 invalid rejected, 8 documented deviations, 0 skipped (1 JSON serialization, rejected)', () => {
    const tally = { validAccepted: 0, invalidRejected: 0, deviations: 0, jsonSerialization: 0, skipped: 0 }
    for (const { vector } of signatureVectors) {
      const outcome = outcomes.get(vector.tcId)
      if (outcome === undefined) tally.skipped++
      else if (SIGNATURE_DEVIATIONS.has(vector.tcId)) tally.deviations++
      else if (vector.result === 'valid' && outcome === 'accepted') tally.validAccepted++
      else if (vector.result === 'invalid' && outcome !== 'accepted') tally.invalidRejected++
      // JSON serialization is out of scope for a compact verifier: the one vector is labelled invalid
      // because a compact verifier must refuse it, so it is fed to the compact path, not dropped
      if (vector.flags.includes('JsonSerialization')) tally.jsonSerialization++
    }
    expect(tally).toEqual({
      validAccepted: 40,
      invalidRejected: 353,
      deviations: 8,
      jsonSerialization: 1,
      skipped: 0,
    })
  })

  it('the contradictory vectors are byte-identical to tcId 357', () => {
    const jwsOf = (tcId: number) => signatureVectors.find(({ vector }) => vector.tcId === tcId)?.vector.jws
    expect(jwsOf(367)).toBe(jwsOf(357))
    expect(jwsOf(370)).toBe(jwsOf(357))
    expect(outcomes.get(357)).toBe('accepted')
  })

  describe.each(signatures.testGroups.map((group, index) => ({ group, index })))(
    'group $index: $group.comment',
    ({ group }) => {
      it.each(group.tests)('tcId $tcId $comment ($result)', (vector) => {
        const outcome = outcomes.get(vector.tcId)
        const deviation = SIGNATURE_DEVIATIONS.get(vector.tcId)
        if (deviation) {
          expect(outcome, deviation.why).toBe(deviation.outcome)
        } else if (vector.result === 'valid') {
          expect(outcome).toBe('accepted')
        } else {
          expect(outcome).not.toBe('accepted')
          expect(outcome).toMatch(/^ERR_[A-Z_]+$/)
        }
      })
    },
  )
})

const keys = loadVectors<KeySetGroup>('json_web_key_test.json')

/**
 * The outcome of every public-key-set vector: most bad key sets are refused when the verifier is
 * configured (ERR_CONFIG), before any token is seen. `createVerifier` takes public keys only, so the
 * secret-key groups are refused at configuration too (asserted below, not skipped).
 */
const KEY_OUTCOMES = new Map<number, { outcome: Outcome; why: string }>([
  [5, { outcome: 'accepted', why: 'a valid RS256 key set' }],
  [
    6,
    {
      outcome: 'ERR_CONFIG',
      why: 'the only key is "use": "enc": the set has no key for any allowed algorithm',
    },
  ],
  [
    7,
    {
      outcome: 'accepted',
      why: 'DEVIATION, labelled invalid: the RSA modulus has the ROCA weakness (CVE-2017-15361); neither jose nor WebCrypto detects it, and neither does this verifier (a known gap)',
    },
  ],
  [8, { outcome: 'ERR_CONFIG', why: 'a 1024-bit RSA modulus is refused (at least 2048 bits)' }],
  [9, { outcome: 'ERR_CONFIG', why: 'an RSA public exponent of 1 is refused (with e = 1 anyone can forge)' }],
  [19, { outcome: 'ERR_CONFIG', why: 'a P-256 key that declares "alg": "ES521" fits no allowed algorithm' }],
  [20, { outcome: 'ERR_CONFIG', why: 'a P-256 key that declares "alg": "ES224" fits no allowed algorithm' }],
  [21, { outcome: 'ERR_CONFIG', why: 'the only key is "use": "enc"' }],
  [
    22,
    {
      outcome: 'ERR_CONFIG',
      why: 'the point is not on the curve: a key set whose key does not import is refused at configuration (it was a 503 on every token)',
    },
  ],
  [23, { outcome: 'ERR_CONFIG', why: 'a P-384 key that declares "alg": "ES256" fits no allowed algorithm' }],
  [24, { outcome: 'ERR_CONFIG', why: 'an EC key labelled "kty": "RSA" has no RSA modulus' }],
])

describe(`wycheproof json_web_key_test.json (${keys.numberOfTests} vectors)`, () => {
  const publicGroups = keys.testGroups.filter((group) => group.public !== undefined)
  const secretGroups = keys.testGroups.filter((group) => group.public === undefined)

  it('counts: 11 public-key-set vectors judged (1 deviation), 15 secret-key-set vectors refused at configuration', () => {
    const count = (groups: KeySetGroup[]) => groups.reduce((sum, group) => sum + group.tests.length, 0)
    expect(count(publicGroups)).toBe(11)
    expect(count(secretGroups)).toBe(15)
    expect(count(publicGroups) + count(secretGroups)).toBe(keys.numberOfTests)
    expect([...KEY_OUTCOMES.keys()].sort((a, b) => a - b)).toEqual(
      publicGroups.flatMap((group) => group.tests.map((vector) => vector.tcId)),
    )
  })

  // the allow-list is every asymmetric algorithm, narrowed to what the set's keys declare: the
  // same narrowing createVerifier applies to a JWKS object
  const everyAsymmetric = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']

  it.each(publicGroups.flatMap((group) => group.tests.map((vector) => ({ group, vector }))))(
    'public set $group.comment: tcId $vector.tcId $vector.comment ($vector.result)',
    async ({ group, vector }) => {
      const outcome = await outcomeOf(() =>
        verifyJws(vector.jws, group.public!, { algorithms: everyAsymmetric }),
      )
      const expected = KEY_OUTCOMES.get(vector.tcId)!
      expect(outcome, expected.why).toBe(expected.outcome)
    },
  )

  it.each(secretGroups.flatMap((group) => group.tests.map((vector) => ({ group, vector }))))(
    'secret set $group.comment: tcId $vector.tcId $vector.comment is refused with ERR_CONFIG',
    async ({ group, vector }) => {
      const outcome = await outcomeOf(() =>
        verifyJws(vector.jws, group.private, { algorithms: everyAsymmetric }),
      )
      expect(outcome).toBe('ERR_CONFIG')
    },
  )
})
