/**
 * "@tokenflow/server/verify": checks RFC 9068 access tokens on a resource server, with framework
 * middleware for Fastify (preHandler) and Express or bare `node:http` (`(req, res, next)`).
 */
import { createPublicKey, type JsonWebKeyInput } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyReply, FastifyRequest } from 'fastify'
import {
  base64url,
  type CompactJWSHeaderParameters,
  type CryptoKey,
  compactVerify,
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  errors,
  type FlattenedJWSInput,
  type JSONWebKeySet,
  type JWK,
  type JWSHeaderParameters,
  type JWTPayload,
  jwtVerify,
} from 'jose'
import { authorizationOf } from './authorization.js'
import { AuthError } from './errors.js'
import { isLoopbackHost } from './loopback.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** claims of the verified access token, set by `verifier.fastify` */
    auth?: AccessTokenClaims
  }
}

declare global {
  // Express declares its request in this global namespace (@types/express-serve-static-core)
  namespace Express {
    interface Request {
      /** claims of the verified access token, set by `verifier.express` */
      auth?: AccessTokenClaims
    }
  }
}

/**
 * Stable codes of a failed verification. Where jose has a code for the failure, it is jose's own.
 * Only `ERR_JWKS_UNAVAILABLE` is not about the token: the keys could not be obtained (HTTP 503).
 * @example
 * const retryLater = (code: VerifyErrorCode) => code === 'ERR_JWKS_UNAVAILABLE'
 */
export type VerifyErrorCode =
  /** no `Authorization` header, or not the Bearer scheme, or no token after it */
  | 'ERR_TOKEN_MISSING'
  /** the token is longer than 16 KiB; it is refused before it is parsed */
  | 'ERR_TOKEN_TOO_LARGE'
  /** the protected header carries `jku`, `x5u`, `jwk` or `x5c`: the token names its own key */
  | 'ERR_JWT_UNTRUSTED_HEADER'
  /** not a well-formed compact JWS (segments, base64url, header JSON, `kid`) */
  | 'ERR_JWS_INVALID'
  /** the payload is not a JWT claims set */
  | 'ERR_JWT_INVALID'
  /** `alg` is not in the allow-list (this is where `none` and HS* end) */
  | 'ERR_JOSE_ALG_NOT_ALLOWED'
  /** a JOSE feature the verifier does not implement, such as an unknown `crit` extension */
  | 'ERR_JOSE_NOT_SUPPORTED'
  /** no trusted key has this `kid` and `alg` */
  | 'ERR_JWKS_NO_MATCHING_KEY'
  /** several trusted keys match and the token has no `kid` to choose between them */
  | 'ERR_JWKS_MULTIPLE_MATCHING_KEYS'
  /** the signature does not verify */
  | 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED'
  /** `exp` is in the past (beyond the clock tolerance) */
  | 'ERR_JWT_EXPIRED'
  /**
   * `iss`, `aud`, `typ`, `nbf` or `iat` is wrong, or a required claim (`sub`, `jti`, `client_id`,
   * `exp`, `iat`, `iss`, `aud`) is missing or not what RFC 9068 section 2.2 asks; see `claim`
   */
  | 'ERR_JWT_CLAIM_VALIDATION_FAILED'
  /**
   * the JWKS could not be fetched or used; the token was not judged (HTTP 503, with `Retry-After`
   * from the error's `retryAfter`)
   */
  | 'ERR_JWKS_UNAVAILABLE'

/**
 * A failed verification: `code` says why and `status` is what the middlewares answer (401, or 503
 * for `ERR_JWKS_UNAVAILABLE`, with `Retry-After: retryAfter`). The message never contains the token.
 * @example
 * try {
 *   await verifier.verify(token)
 * } catch (error) {
 *   if (isVerifyError(error) && error.code === 'ERR_JWT_EXPIRED') console.log('expired')
 * }
 */
export class VerifyError extends Error {
  override name = 'VerifyError' as const
  readonly code: VerifyErrorCode
  /** 401, or 503 when the keys are unavailable */
  readonly status: 401 | 503
  /** the claim or header parameter that failed, for `ERR_JWT_CLAIM_VALIDATION_FAILED` and `ERR_JWT_EXPIRED` */
  readonly claim: string | undefined
  /**
   * For `ERR_JWKS_UNAVAILABLE` only (undefined for every other code): in how many seconds the token
   * can usefully be sent again, a whole number, at least 1; the middlewares send it as `Retry-After`
   * (RFC 9110 section 10.2.3), rounded up. While a failed fetch holds off the next one for an unknown
   * `kid` (`cooldownDuration`), it is the time until that cooldown ends. With no usable keys (none
   * fetched yet, or the last good set older than `cacheMaxAge + staleIfError`), it is the time until
   * the backoff after the last failed fetch ends: 1 after the first failure in a row, then 2, 4, ...,
   * at most `cooldownDuration`. For a key that cannot be used, 1.
   * @example
   * if (error.code === 'ERR_JWKS_UNAVAILABLE') reply.header('retry-after', String(error.retryAfter))
   */
  readonly retryAfter: number | undefined

  /**
   * `options.retryAfter` (seconds) is rounded up to a whole number, at least 1 (1 when left out); it is
   * ignored unless `code` is `ERR_JWKS_UNAVAILABLE`.
   */
  constructor(
    code: VerifyErrorCode,
    message: string,
    options?: { cause?: unknown; claim?: string; retryAfter?: number },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.status = code === 'ERR_JWKS_UNAVAILABLE' ? 503 : 401
    this.claim = options?.claim
    this.retryAfter = code === 'ERR_JWKS_UNAVAILABLE' ? retryAfterSeconds(options?.retryAfter) : undefined
  }
}

/** a Retry-After delay-seconds value: a whole number of seconds, at least 1 (1 when unknown) */
function retryAfterSeconds(seconds: unknown): number {
  return typeof seconds === 'number' && Number.isFinite(seconds) ? Math.max(1, Math.ceil(seconds)) : 1
}

/**
 * True for a `VerifyError`, even from another copy of the package.
 * @example
 * if (isVerifyError(error)) reply.code(error.status)
 */
export function isVerifyError(error: unknown): error is VerifyError {
  return (
    error instanceof VerifyError ||
    (error instanceof Error &&
      error.name === 'VerifyError' &&
      typeof (error as { code?: unknown }).code === 'string')
  )
}

/**
 * Asymmetric JWS algorithms the verifier can be allowed to accept. `none` and HS* are never among them.
 * @example
 * const algorithms: VerifyAlgorithm[] = ['ES256', 'PS256']
 */
export type VerifyAlgorithm =
  | 'ES256'
  | 'ES384'
  | 'ES512'
  | 'RS256'
  | 'RS384'
  | 'RS512'
  | 'PS256'
  | 'PS384'
  | 'PS512'
  | 'EdDSA'
  | 'Ed25519'

/**
 * Claims of a verified RFC 9068 access token. The verifier requires every claim RFC 9068 section 2.2
 * does: `iss` and `aud` matching the options, `exp` and `iat` numbers, and `sub`, `jti` and
 * `client_id` non-empty strings.
 * @example
 * const { sub, sid } = await verifier.verify(token)
 */
export interface AccessTokenClaims extends JWTPayload {
  iss: string
  sub: string
  aud: string | string[]
  exp: number
  iat: number
  jti: string
  /** the client the token was issued to (RFC 9068 section 2.2); required, a non-empty string */
  client_id: string
  /** the session (refresh-token family) the token was issued for; checked to be a string when present */
  sid?: string
}

/**
 * Options of `createVerifier`.
 * @example
 * const options: VerifierOptions = { jwks: 'https://auth.example.com/.well-known/jwks.json', issuer: 'https://auth.example.com', audience: 'api' }
 */
export interface VerifierOptions {
  /**
   * The issuer's keys: the JWKS URL (fetched with jose `createRemoteJWKSet` and cached here, see
   * `cacheMaxAge`, `cooldownDuration` and `staleIfError`; https, or http on localhost only), or the
   * JWKS itself `{ keys: [...] }` (public keys only).
   */
  jwks: string | URL | JSONWebKeySet
  /** the exact `iss` the tokens must carry */
  issuer: string
  /** the `aud` this API accepts; a token passes when its `aud` holds one of them */
  audience: string | readonly string[]
  /**
   * Allowed `alg` values, asymmetric only. With a JWKS object it is narrowed to what its keys
   * declare; a key is only used with its own `alg`, and one without `alg` with each allowed algorithm
   * its type fits (an RSA key: RS256 and PS256 by default).
   * @default ['ES256', 'ES384', 'RS256', 'PS256'] (every algorithm @tokenflow/server signs with)
   */
  algorithms?: readonly VerifyAlgorithm[] | undefined
  /**
   * Clock skew accepted on `exp`, `nbf` and `iat`, in ms; at most 60_000.
   * @default 30_000
   */
  clockTolerance?: number | undefined
  /**
   * The required `typ` header; `at+jwt` also matches `application/at+jwt` (RFC 9068 section 4).
   * @default 'at+jwt'
   */
  typ?: string | undefined
  /**
   * Remote JWKS only: how long a fetch may take, in ms (1 to 2^31 - 1), its body included; it holds for a
   * `fetch` option that does not listen to its signal too. A request that starts a fetch waits for it
   * (and so does every request that arrives while it runs): with no usable keys and a hanging JWKS
   * endpoint, that is the first request after each backoff (see `cooldownDuration`); the requests
   * during a backoff get 503 at once.
   * @default 5_000
   */
  timeoutDuration?: number | undefined
  /**
   * Remote JWKS only: after a fetch, one that failed too, an unknown `kid` does not trigger another
   * fetch for this long, in ms (after a failed one such a token gets 503 `ERR_JWKS_UNAVAILABLE`, whose
   * `Retry-After` is the time until this cooldown ends, in whole seconds rounded up). It also caps the
   * backoff while no keys are usable (none fetched yet, or the last good set older than `cacheMaxAge +
   * staleIfError`): a failed fetch then holds off the next one for 1 s, doubling with each failure in
   * a row (2 s, 4 s, ...) up to this; meanwhile every token gets 503 `ERR_JWKS_UNAVAILABLE` at once,
   * with `Retry-After` the time until the backoff ends. A fetch that works ends the backoff. `0`: no
   * backoff, every such request fetches again.
   * @default 30_000
   */
  cooldownDuration?: number | undefined
  /**
   * Remote JWKS only: how long a fetched JWKS is used before it is fetched again, in ms. Past it, a
   * request waits for the refetch and uses the new set; when that fails, see `staleIfError`.
   * @default 600_000
   */
  cacheMaxAge?: number | undefined
  /**
   * Remote JWKS only: how long past `cacheMaxAge` the last fetched JWKS is still used while the JWKS
   * endpoint fails (error, non-200, bad JSON, timeout), in ms: stale-if-error, as in RFC 5861
   * section 4. When a refetch fails, a token whose `kid` is in the last fetched set is verified with
   * that set, and the next attempt waits for `cooldownDuration`; meanwhile such tokens do not wait for
   * any fetch (nor for that next attempt, which replaces the set once it works). Once `cacheMaxAge +
   * staleIfError` have passed since the last fetch that worked, a token waits for a refetch again and
   * gets 503 `ERR_JWKS_UNAVAILABLE` while it fails; after a failure, the next fetch waits for a
   * backoff (see `cooldownDuration`) and the tokens meanwhile get 503 at once. Failures while the
   * stale set still serves do not count towards that backoff. The trade-off: a key removed from the
   * JWKS during an outage is trusted up to this much longer. `0` never uses a set past `cacheMaxAge`.
   * @default 3_600_000
   */
  staleIfError?: number | undefined
  /**
   * Remote JWKS only: the fetch implementation. A response body over 1 MiB is not read: the fetch fails
   * (a real key set is a few KiB, with certificate chains tens). That holds for bodies that are web or Node
   * streams; another kind is left to jose, bounded by `timeoutDuration` only.
   * @default globalThis.fetch
   */
  fetch?: typeof globalThis.fetch | undefined
  /**
   * Clock for `exp`, `nbf` and `iat`, epoch ms.
   * @default Date.now
   */
  now?: (() => number) | undefined
  /**
   * `realm` of the `WWW-Authenticate` challenge; left out when unset.
   * @default undefined
   */
  realm?: string | undefined
}

/**
 * Verifies access tokens. `fastify` is a preHandler hook and `express` a `(req, res, next)`
 * middleware; both set `auth` on the request, or answer 401 (503 with `Retry-After` when the keys
 * are unavailable).
 * @example
 * app.get('/me', { preHandler: verifier.fastify }, (request) => request.auth)
 */
export interface Verifier {
  /** resolves with the claims of a valid token; rejects with a `VerifyError` */
  verify(token: string): Promise<AccessTokenClaims>
  /** Fastify preHandler hook: sets `request.auth` or replies 401/503 (see `verifyErrorResponse`) */
  readonly fastify: (request: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined>
  /** Express / `node:http` middleware: sets `req.auth` and calls `next()`, or answers 401/503 (see `verifyErrorResponse`) */
  readonly express: (
    req: IncomingMessage & { auth?: AccessTokenClaims },
    res: ServerResponse,
    next: (error?: unknown) => void,
  ) => void
}

// limits for hostile input: our access tokens are well under 2 KiB and our kids are 43-character
// JWK thumbprints, so these only cap what a forged token can make the verifier parse and look up
const MAX_TOKEN_LENGTH = 16 * 1024
const MAX_KID_LENGTH = 256
const MAX_CLOCK_TOLERANCE = 60_000
/** The longest delay a timer takes (2^31 - 1 ms, 24.8 days): a longer one fires at once */
const MAX_TIMER = 2_147_483_647
// the first backoff of a remote JWKS with nothing usable, in ms; it doubles with each further failure
const BACKOFF_BASE = 1_000
// the most of a JWKS response read: a real key set is a few KiB (with x5c certificate chains, tens), and
// an endpoint that sends more (a misconfigured proxy, an attacker on it) must not fill the memory
const MAX_JWKS_BYTES = 1024 * 1024
// every algorithm @tokenflow/server signs with (`keys.alg`, `keys rotate --alg`): a rotation to another one
// must not make every API refuse the new tokens. Each key is still used only with what its own alg and shape
// allow, so allowing more algorithms lets no key verify under an algorithm it was not made for
const DEFAULT_ALGORITHMS: readonly VerifyAlgorithm[] = ['ES256', 'ES384', 'RS256', 'PS256']
const ASYMMETRIC_ALGORITHMS: readonly VerifyAlgorithm[] = [
  'ES256',
  'ES384',
  'ES512',
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'EdDSA',
  'Ed25519',
]
// RFC 9068 section 2.2; jose adds iss and aud, which it checks against the issuer and audience options
const REQUIRED_CLAIMS = ['exp', 'iat', 'sub', 'jti', 'client_id']
// Header parameters that point at or carry a key (RFC 7515 sections 4.1.2, 4.1.3, 4.1.5, 4.1.6). A verifier that
// followed them would let the token choose the key that verifies it; jose ignores them, and we refuse
// the token outright so a misconfigured proxy or a future library change cannot start trusting them.
const UNTRUSTED_HEADERS = ['jku', 'x5u', 'jwk', 'x5c'] as const
// JWK members that only private or secret keys have
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'] as const
const BASE64URL_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const BASE64URL = /^[A-Za-z0-9_-]*$/

// error_description is a quoted-string that RFC 6750 section 3 limits to %x20-21 / %x23-5B / %x5D-7E:
// fixed texts, never anything taken from the token
const DESCRIPTIONS: Record<VerifyErrorCode, string> = {
  ERR_TOKEN_MISSING: 'the access token is missing',
  ERR_TOKEN_TOO_LARGE: 'the access token is too large',
  ERR_JWT_UNTRUSTED_HEADER: 'the access token header names its own key',
  ERR_JWS_INVALID: 'the access token is malformed',
  ERR_JWT_INVALID: 'the access token claims are malformed',
  ERR_JOSE_ALG_NOT_ALLOWED: 'the access token algorithm is not allowed',
  ERR_JOSE_NOT_SUPPORTED: 'the access token uses an unsupported feature',
  ERR_JWKS_NO_MATCHING_KEY: 'the access token key is unknown',
  ERR_JWKS_MULTIPLE_MATCHING_KEYS: 'the access token key is ambiguous',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'the access token signature is invalid',
  ERR_JWT_EXPIRED: 'the access token expired',
  ERR_JWT_CLAIM_VALIDATION_FAILED: 'the access token claims are invalid',
  ERR_JWKS_UNAVAILABLE: 'the signing keys are unavailable, try again later',
}
// claim names jose reports, echoed in error_description; anything else gets the generic text
const DESCRIBED_CLAIMS = new Set(['iss', 'aud', 'typ', 'sub', 'jti', 'exp', 'iat', 'nbf', 'client_id', 'sid'])

// jose codes that describe the token (the rest of jose's errors are about keys or bugs)
const JOSE_TOKEN_CODES = new Set<string>([
  'ERR_JWS_INVALID',
  'ERR_JWT_INVALID',
  'ERR_JOSE_ALG_NOT_ALLOWED',
  'ERR_JOSE_NOT_SUPPORTED',
  'ERR_JWKS_NO_MATCHING_KEY',
  'ERR_JWKS_MULTIPLE_MATCHING_KEYS',
  'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
  'ERR_JWT_EXPIRED',
  'ERR_JWT_CLAIM_VALIDATION_FAILED',
])

type GetKey = (header: CompactJWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>

interface KeySource {
  getKey: GetKey
  /** the allow-list after narrowing to the keys, in the order the caller gave */
  algorithms: string[]
}

interface RemoteOptions {
  timeoutDuration: number
  cooldownDuration: number
  cacheMaxAge: number
  staleIfError: number
  fetch: typeof globalThis.fetch | undefined
}

const configError = (message: string, cause?: unknown) =>
  new AuthError('ERR_CONFIG', message, cause === undefined ? undefined : { cause })

/**
 * Creates a verifier for access tokens signed by the issuer's keys. Options are checked here and
 * throw an `AuthError` with code `ERR_CONFIG`. A token passes with `typ` `at+jwt`, an allowed `alg`
 * and a trusted key, `iss` and `aud` matching the options, `exp`, `nbf` and `iat` within the clock
 * tolerance, and the other claims RFC 9068 section 2.2 requires (`sub`, `jti`, `client_id`) as
 * non-empty strings; `sid`, when present, must be a string.
 * @example
 * const verifier = createVerifier({
 *   jwks: 'https://auth.example.com/.well-known/jwks.json',
 *   issuer: 'https://auth.example.com',
 *   audience: 'https://api.example.com',
 * })
 * app.addHook('preHandler', verifier.fastify)
 */
export function createVerifier({
  jwks,
  issuer,
  audience,
  algorithms = DEFAULT_ALGORITHMS,
  clockTolerance = 30_000,
  typ = 'at+jwt',
  timeoutDuration = 5_000,
  cooldownDuration = 30_000,
  cacheMaxAge = 600_000,
  staleIfError = 3_600_000,
  fetch,
  now = Date.now,
  realm,
}: VerifierOptions): Verifier {
  if (typeof issuer !== 'string' || issuer === '') throw configError('"issuer" must be a non-empty string')
  const audiences = typeof audience === 'string' ? [audience] : audience
  if (
    !Array.isArray(audiences) ||
    audiences.length === 0 ||
    audiences.some((value) => typeof value !== 'string' || value === '')
  ) {
    throw configError('"audience" must be a non-empty string or a non-empty array of them')
  }
  if (!Number.isSafeInteger(clockTolerance) || clockTolerance < 0 || clockTolerance > MAX_CLOCK_TOLERANCE) {
    throw configError(`"clockTolerance" must be an integer from 0 to ${MAX_CLOCK_TOLERANCE} (ms)`)
  }
  if (typeof typ !== 'string' || typ === '') throw configError('"typ" must be a non-empty string')
  // 0 would abort every fetch at once, and so would a timer past 2^31 - 1 ms, which fires at once: the API
  // would answer 503 for good
  if (!Number.isSafeInteger(timeoutDuration) || timeoutDuration < 1 || timeoutDuration > MAX_TIMER)
    throw configError(`"timeoutDuration" must be an integer from 1 to ${MAX_TIMER} (ms)`)
  for (const [name, value] of Object.entries({
    cooldownDuration,
    cacheMaxAge,
    staleIfError,
  })) {
    if (!Number.isSafeInteger(value) || value < 0)
      throw configError(`"${name}" must be a non-negative integer (ms)`)
  }
  if (fetch !== undefined && typeof fetch !== 'function') throw configError('"fetch" must be a function')
  if (typeof now !== 'function') throw configError('"now" must be a function')
  checkRealm(realm)
  const allowed = checkAlgorithms(algorithms, ASYMMETRIC_ALGORITHMS)
  const source = createKeySource(jwks, allowed, {
    timeoutDuration,
    cooldownDuration,
    cacheMaxAge,
    staleIfError,
    fetch,
  })
  // jose takes the tolerance in seconds; the public option is ms like every duration here
  const toleranceSeconds = clockTolerance / 1000

  const verify = async (token: string): Promise<AccessTokenClaims> => {
    try {
      inspectToken(token, source.algorithms)
      const currentDate = new Date(now())
      const { payload } = await jwtVerify(token, source.getKey, {
        algorithms: source.algorithms,
        issuer,
        audience: [...audiences],
        typ,
        clockTolerance: toleranceSeconds,
        currentDate,
        requiredClaims: REQUIRED_CLAIMS,
      })
      return checkClaims(payload, currentDate.getTime() / 1000 + toleranceSeconds)
    } catch (error) {
      throw toVerifyError(error)
    }
  }

  // async, so a missing header rejects like every other failure instead of throwing synchronously
  const authenticate = async (authorization: string | string[] | undefined) =>
    verify(bearerToken(authorization))

  return {
    verify,
    fastify: async (request, reply) => {
      try {
        request.auth = await authenticate(authorizationOf(request.headers.authorization, request.raw))
        return undefined
      } catch (error) {
        if (!isVerifyError(error)) throw error
        const { status, headers, body } = errorResponse(error, realm)
        // returning the reply tells Fastify the hook answered and the handler must not run
        return reply.code(status).headers(headers).send(body)
      }
    },
    express: (req, res, next) => {
      authenticate(authorizationOf(req.headers.authorization, req)).then(
        (claims) => {
          req.auth = claims
          next()
        },
        (error: unknown) => {
          if (!isVerifyError(error)) return next(error)
          // answered meanwhile (a request-timeout middleware in front, while this one waited for the JWKS):
          // writing again would throw ERR_HTTP_HEADERS_SENT here, an unhandled rejection that ends the process
          if (res.headersSent || res.writableEnded) return
          const { status, headers, body } = errorResponse(error, realm)
          res.writeHead(status, { ...headers, 'content-type': 'application/json; charset=utf-8' })
          res.end(JSON.stringify(body))
        },
      )
    },
  }
}

/**
 * The JWS layer of `createVerifier`, exported for conformance tests (Wycheproof): the same
 * pre-parse checks, key selection and error codes, then jose `compactVerify` with the allow-list.
 * A JWKS object is checked and narrowed exactly as `createVerifier` does; a bare key is used as is.
 * It checks no claims: use `createVerifier` to accept access tokens.
 * @internal
 * @example
 * const { payload } = await verifyJws(jws, { keys: [publicJwk] }, { algorithms: ['ES256'] })
 */
export async function verifyJws(
  token: string,
  key: JSONWebKeySet | CryptoKey | Uint8Array,
  { algorithms }: { algorithms: readonly string[] },
): Promise<{ payload: Uint8Array; protectedHeader: JWSHeaderParameters }> {
  try {
    let getKey: GetKey | CryptoKey | Uint8Array
    let allowed: string[]
    if (isJwkSet(key)) {
      const source = createKeySource(key, checkAlgorithms(algorithms, ASYMMETRIC_ALGORITHMS), undefined)
      getKey = source.getKey
      allowed = source.algorithms
    } else {
      allowed = checkAlgorithms(algorithms, undefined)
      getKey = key
    }
    inspectToken(token, allowed)
    const { payload, protectedHeader } = await compactVerify(token, getKey, { algorithms: allowed })
    return { payload, protectedHeader }
  } catch (error) {
    throw toVerifyError(error)
  }
}

function checkAlgorithms(algorithms: unknown, permitted: readonly string[] | undefined): string[] {
  const list = Array.isArray(algorithms) ? (algorithms as unknown[]) : []
  const names = permitted ? permitted.join(', ') : 'JWS algorithm names'
  if (
    list.length === 0 ||
    list.some((alg) => typeof alg !== 'string' || alg.toLowerCase() === 'none') ||
    (permitted !== undefined && list.some((alg) => !permitted.includes(alg as string)))
  ) {
    // 'none' and HS* land here: an HMAC "verification" with a published public key is a forgery
    throw configError(`"algorithms" must be a non-empty array of ${names}`)
  }
  return [...new Set(list as string[])]
}

function createKeySource(jwks: unknown, algorithms: string[], remote: RemoteOptions | undefined): KeySource {
  if (typeof jwks === 'string' || jwks instanceof URL) {
    if (!remote) throw configError('"jwks" must be a JSON Web Key Set')
    return remoteKeySource(jwks, algorithms, remote)
  }
  if (!isJwkSet(jwks)) throw configError('"jwks" must be a URL or a JSON Web Key Set ({ keys: [...] })')
  for (const key of jwks.keys) {
    if (PRIVATE_MEMBERS.some((member) => Object.hasOwn(key, member))) {
      // a private JWK pasted into the config would also be a leaked signing key
      throw configError('"jwks" must hold public keys only')
    }
    if (key.kty === 'RSA') {
      const problem = rsaKeyProblem(decodedBits(key.n), decoded(key.e))
      if (problem !== undefined) throw configError(`"jwks" holds an RSA key ${problem}`)
    }
  }
  const usable = new Set(jwks.keys.flatMap(keyAlgorithms))
  const narrowed = algorithms.filter((alg) => usable.has(alg))
  if (narrowed.length === 0) throw configError('"jwks" has no key for any of "algorithms"')
  for (const key of jwks.keys) {
    if (!keyAlgorithms(key).some((alg) => narrowed.includes(alg))) continue
    // a key that does not import (a point off its curve, a member cut short in a paste) would otherwise answer
    // every token with 503 "try again" for a key set that never changes
    const named = typeof key.kid === 'string' ? ` "${key.kid.slice(0, 64)}"` : ''
    try {
      // jose imports a key with its key_ops as the usages, and a public key can do nothing but verify; it
      // never selects one whose key_ops repeat or whose ext is not a boolean
      if (Array.isArray(key.key_ops) && (key.key_ops.length !== 1 || key.key_ops[0] !== 'verify'))
        throw new Error('the key_ops of a public key may only be ["verify"]')
      if (key.ext !== undefined && typeof key.ext !== 'boolean') throw new Error('"ext" must be a boolean')
      createPublicKey({ key: key as JsonWebKeyInput['key'], format: 'jwk' })
    } catch (error) {
      throw configError(`"jwks" holds a key${named} that cannot be imported`, error)
    }
  }
  let local: ReturnType<typeof createLocalJWKSet>
  try {
    local = createLocalJWKSet(jwks)
  } catch (error) {
    throw configError('"jwks" is not a valid JSON Web Key Set', error)
  }
  return { getKey: guardKeySelection(local), algorithms: narrowed }
}

function remoteKeySource(jwks: string | URL, algorithms: string[], options: RemoteOptions): KeySource {
  let url: URL
  try {
    url = new URL(jwks)
  } catch (error) {
    throw configError('"jwks" must be a URL or a JSON Web Key Set ({ keys: [...] })', error)
  }
  // keys fetched over plain http can be swapped by anyone on the path; only loopback is exempt
  const loopback = isLoopbackHost(url.hostname)
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) {
    throw configError('"jwks" URL must use https (http only on localhost)')
  }
  // jose fetches (timeout, no redirects, JSON); the cache and the cooldown are kept here. jose's own
  // cooldown only starts at a fetch that worked: while the JWKS endpoint fails, every token with an
  // unknown kid (a flood of random ones) would fetch it again. Here any attempt, good or failed,
  // holds off the next fetch for an unknown kid for cooldownDuration.
  // Stale-if-error (RFC 5861 section 4): past cacheMaxAge a token waits for the refetch, as long as the
  // endpoint is believed to work; if that fails, the last good set keeps serving known kids until
  // cacheMaxAge + staleIfError after the last good fetch. While the last attempt failed, known kids
  // use that set at once: the next attempt starts once cooldownDuration after the last one has passed
  // and runs in the background, so neither a failing nor a hanging endpoint delays them.
  // Backoff: a failed fetch that leaves nothing usable (no set yet, or the last good one too stale)
  // holds off the next fetch for 1 s, then 2 s, 4 s, ... after each further such failure, at most
  // cooldownDuration; meanwhile every token gets 503 at once instead of each fetching again (a refusing
  // endpoint would get one fetch per request) or waiting timeoutDuration (a hanging one). The first
  // request after the backoff fetches and waits for it; a fetch that works ends the backoff.
  const remote = createRemoteJWKSet(url, {
    timeoutDuration: options.timeoutDuration,
    [customFetch]: boundedFetch(options.fetch),
  })
  const { cooldownDuration, cacheMaxAge, staleIfError } = options
  let local: ReturnType<typeof createLocalJWKSet> | undefined
  let fetchedAt = Number.NEGATIVE_INFINITY
  let attemptedAt = Number.NEGATIVE_INFINITY
  let failed = false
  // consecutive failed fetches that left nothing usable, the start and length of the backoff after the
  // last one, and its error (the cause of the 503s answered meanwhile)
  let failures = 0
  let backoffFrom = Number.NEGATIVE_INFINITY
  let backoff = 0
  let backoffCause: unknown
  let pending: Promise<void> | undefined
  // Whether less than `duration` ms have passed since `since` (epoch ms). A wall clock set back (NTP
  // stepping a clock that ran ahead) makes the time since negative: that counts as passed, so a step back
  // of an hour neither holds off the fetch for a rotated-in kid, nor keeps a backoff or a cached set, for
  // an hour (a fetch too many, at worst)
  const within = (since: number, duration: number, at = Date.now()) => {
    const passed = at - since
    return passed >= 0 && passed < duration
  }
  const refetch = (): Promise<void> => {
    if (!pending) {
      attemptedAt = Date.now()
      const current = (async () => {
        try {
          await remote.reload()
          local = createLocalJWKSet(remote.jwks() as JSONWebKeySet)
          fetchedAt = Date.now()
          failed = false
          failures = 0
          backoff = 0
          backoffCause = undefined
        } catch (error) {
          failed = true
          // set before the waiting requests see the failure, so they all answer with this backoff;
          // a failure while a stale set still serves is no outage of keys and does not count
          if (!staleUsable()) {
            failures++
            backoffFrom = Date.now()
            backoff = Math.min(BACKOFF_BASE * 2 ** Math.min(failures - 1, 30), cooldownDuration)
            backoffCause = error
          }
          throw error
        }
      })().finally(() => {
        if (pending === current) pending = undefined
      })
      pending = current
    }
    return pending
  }
  // Retry-After of a token that met a failed fetch: the seconds until the verifier fetches again for it
  // (the end of the cooldown for an unknown kid, of the backoff when nothing is usable)
  const unavailable = (cause: unknown, retryAt: number) =>
    new VerifyError(
      'ERR_JWKS_UNAVAILABLE',
      cause === undefined
        ? 'the json web key set could not be fetched'
        : 'the json web key set could not be fetched or used',
      // never longer than the cooldown: a time dated before a clock was set back would name the step
      {
        ...(cause === undefined ? {} : { cause }),
        retryAfter: Math.min(retryAt - Date.now(), cooldownDuration) / 1000,
      },
    )
  // the last good set may stand in for a failed refetch (staleIfError 0: never past cacheMaxAge). A clock set
  // back since it was fetched keeps it usable as long as a set that old would be, counted the other way: the
  // step forces a refetch, and a failed one must not leave every token without keys, nor trust the set for
  // as long as the step
  const staleUsable = () =>
    local !== undefined && Math.abs(Date.now() - fetchedAt) < cacheMaxAge + staleIfError
  const select = async (header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<CryptoKey> => {
    if (!local || !within(fetchedAt, cacheMaxAge)) {
      // an outage is a failed refetch of an expired set: a failed fetch for an unknown kid earlier, while the
      // set was fresh, says nothing about the endpoint now, so a set past cacheMaxAge is refetched first
      // (an attempt dated before the fetch was made after a clock was set back: the set counted as expired then)
      if (failed && !within(fetchedAt, cacheMaxAge, attemptedAt) && staleUsable()) {
        // an outage: the stale set serves at once; at most one attempt per cooldown, not awaited here
        // (an unknown kid below still waits for it), its failure only keeps `failed` set
        if (!pending && !within(attemptedAt, cooldownDuration)) refetch().catch(() => undefined)
      } else {
        // no keys yet, or kept past cacheMaxAge with an endpoint believed to work, or too stale to use:
        // fetch and wait, unless a failure with nothing usable holds off the next fetch (the backoff)
        if (!staleUsable() && within(backoffFrom, backoff)) {
          throw unavailable(backoffCause, backoffFrom + backoff)
        }
        await refetch().catch((error: unknown) => {
          if (!staleUsable()) throw unavailable(error, backoffFrom + backoff)
        })
      }
    }
    try {
      return await local!(header, token)
    } catch (error) {
      if (!(error instanceof errors.JWKSNoMatchingKey)) throw error
      if (!pending && within(attemptedAt, cooldownDuration)) {
        // the last fetch failed: the kid may well be published, so the token cannot be judged until
        // the cooldown lets the next unknown kid fetch again
        if (failed) throw unavailable(undefined, attemptedAt + cooldownDuration)
        throw error
      }
      // a failure holds off the next fetch for an unknown kid, this one's too, until the cooldown ends
      await refetch().catch((error: unknown) => {
        throw unavailable(error, attemptedAt + cooldownDuration)
      })
      return local!(header, token)
    }
  }
  return { getKey: guardKeySelection(select), algorithms }
}

/**
 * The fetch jose gets for a remote JWKS: `inner` (globalThis.fetch, looked up at each call, when not given),
 * bounded. It fails when jose's signal aborts (`timeoutDuration`) even if `inner` does not listen to it, which
 * would leave jose's fetch, and every later reload that joins it, pending for good; it reads at most
 * MAX_JWKS_BYTES of a 200's body; and it releases the body of any other answer, which jose refuses unread.
 */
function boundedFetch(inner: typeof fetch | undefined): typeof fetch {
  return (input, init) =>
    new Promise<Response>((resolve, reject) => {
      const signal = init?.signal ?? undefined
      const abort = () => reject(signal!.reason)
      if (signal?.aborted) return abort()
      signal?.addEventListener('abort', abort, { once: true })
      Promise.resolve()
        .then(() => (inner ?? globalThis.fetch)(input, init))
        .then((response) => readBounded(response, signal))
        .then(resolve, reject)
        .finally(() => signal?.removeEventListener('abort', abort))
    })
}

/** What fetch implementations give as a body: a web ReadableStream, or a Node Readable (node-fetch) */
type AnyBody = {
  getReader?: () => ReadableStreamDefaultReader<unknown>
  cancel?: () => Promise<void>
  destroy?: () => void
  [Symbol.asyncIterator]?: () => AsyncIterator<unknown>
}

/** Lets a body go unread: cancelled (a web stream) or destroyed (a Node stream), so its connection is released. */
function discard(body: AnyBody | null | undefined): void {
  try {
    if (typeof body?.cancel === 'function') body.cancel().catch(() => {})
    else body?.destroy?.()
  } catch {
    // a locked stream: its reader is being cancelled
  }
}

async function readBounded(response: Response, signal: AbortSignal | undefined): Promise<Response> {
  const body = response.body as AnyBody | null
  if (response.status !== 200 || !body) {
    discard(body)
    return response
  }
  const tooLarge = () => new Error(`the json web key set response is larger than ${MAX_JWKS_BYTES} bytes`)
  if (Number(response.headers.get('content-length')) > MAX_JWKS_BYTES) {
    discard(body)
    throw tooLarge()
  }
  const reader = typeof body.getReader === 'function' ? body.getReader() : undefined
  const chunks = reader ? { next: () => reader.read() } : body[Symbol.asyncIterator]?.()
  // a body of another kind: jose reads it, bounded by the timeout only
  if (!chunks) return response
  // the timeout ends the read too, not only the wait for it: a body that stops arriving would hold its connection
  const stop = () => (reader ? reader.cancel().catch(() => {}) : discard(body))
  // given up on before the answer came (a fetch option that ignores its signal): not read at all
  if (signal?.aborted) {
    stop()
    throw signal.reason
  }
  signal?.addEventListener('abort', stop, { once: true })
  const parts: Uint8Array[] = []
  let size = 0
  try {
    for (;;) {
      const { done, value } = await chunks.next()
      if (done) break
      const part = typeof value === 'string' ? new TextEncoder().encode(value) : value
      if (!(part instanceof Uint8Array)) throw new Error('the json web key set response body is not bytes')
      size += part.byteLength
      // past the limit, or given up on (the timeout): nothing more is read
      if (size > MAX_JWKS_BYTES || signal?.aborted) {
        stop()
        throw signal?.aborted ? signal.reason : tooLarge()
      }
      parts.push(part)
    }
  } catch (error) {
    // a chunk that is not bytes, a body that errors: released, not left open
    stop()
    throw error
  } finally {
    signal?.removeEventListener('abort', stop)
  }
  const bytes = new Uint8Array(size)
  let offset = 0
  for (const part of parts) {
    bytes.set(part, offset)
    offset += part.byteLength
  }
  return new Response(bytes, { status: 200, headers: response.headers })
}

/**
 * Wraps jose's JWKS selection (by `kid`, `alg`, `kty`, `crv`, `use`, `key_ops`; a key with an `alg`
 * is only used with it). "No key matches" is the token's fault; any other failure to get a key is
 * the key set's (fetch failed, timed out, bad JSON, a key that does not import) and must not be
 * reported as an invalid token.
 */
function guardKeySelection(
  select: (header: JWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>,
) {
  return async (header: CompactJWSHeaderParameters, token: FlattenedJWSInput): Promise<CryptoKey> => {
    let key: CryptoKey
    try {
      key = await select(header, token)
    } catch (error) {
      if (isVerifyError(error)) throw error
      if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys)
        throw error
      throw new VerifyError('ERR_JWKS_UNAVAILABLE', 'the json web key set could not be fetched or used', {
        cause: error,
      })
    }
    const { modulusLength, publicExponent } = key.algorithm as {
      modulusLength?: number
      publicExponent?: Uint8Array
    }
    const problem = modulusLength === undefined ? undefined : rsaKeyProblem(modulusLength, publicExponent)
    if (problem !== undefined) {
      // the key set is at fault, not the token (jose refuses a short modulus too, but with a TypeError)
      throw new VerifyError('ERR_JWKS_UNAVAILABLE', `the json web key set holds an RSA key ${problem}`)
    }
    return key
  }
}

/**
 * What makes an RSA public key unusable: a modulus under 2048 bits (RFC 7518 section 3.3), or a public
 * exponent that is even or below 3 (RFC 8017 section 3.1); with e = 1 a "signature" is the padded
 * message itself, so anyone can forge one.
 */
function rsaKeyProblem(modulusBits: number, exponent: Uint8Array | undefined): string | undefined {
  if (modulusBits < 2048) return 'shorter than 2048 bits'
  const e = exponent === undefined ? 0n : exponent.reduce((value, byte) => (value << 8n) | BigInt(byte), 0n)
  if (e < 3n || e % 2n === 0n) return 'whose public exponent is even or below 3'
  return undefined
}

/**
 * The algorithms a JWK may verify: those its `kty`/`crv` fit, narrowed to its own `alg` when it
 * declares one (so a P-384 key that claims ES256 fits none).
 */
function keyAlgorithms(jwk: JWK): string[] {
  if (jwk.use !== undefined && jwk.use !== 'sig') return []
  if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes('verify'))) return []
  const fitting = algorithmsForShape(jwk.kty, jwk.crv)
  return jwk.alg === undefined ? fitting : fitting.filter((alg) => alg === jwk.alg)
}

function algorithmsForShape(kty: unknown, crv: unknown): string[] {
  switch (kty) {
    case 'RSA':
      return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']
    case 'EC':
      return crv === 'P-256' ? ['ES256'] : crv === 'P-384' ? ['ES384'] : crv === 'P-521' ? ['ES512'] : []
    case 'OKP':
      return crv === 'Ed25519' ? ['EdDSA', 'Ed25519'] : []
    default:
      // an `oct` key never gets here (it has `k`), and nothing else can verify a signature
      return []
  }
}

/**
 * Checks what can be checked before any cryptography, so hostile input is refused cheaply and with a
 * precise code: size, shape, strict base64url, header JSON, untrusted headers, `kid`, `alg`.
 */
function inspectToken(token: unknown, algorithms: readonly string[]): void {
  if (typeof token !== 'string' || token === '') throw new VerifyError('ERR_TOKEN_MISSING', 'no access token')
  if (token.length > MAX_TOKEN_LENGTH) {
    throw new VerifyError(
      'ERR_TOKEN_TOO_LARGE',
      `the access token is longer than ${MAX_TOKEN_LENGTH} characters`,
    )
  }
  const segments = token.split('.')
  if (segments.length !== 3)
    throw new VerifyError('ERR_JWS_INVALID', 'a compact jws has exactly three segments')
  // the signature covers the segments' exact bytes, and a lenient decoder that skips spaces or
  // padding would accept many spellings of one token (Wycheproof "base64" vectors)
  if (!segments.every(isCanonicalBase64url)) {
    throw new VerifyError('ERR_JWS_INVALID', 'a jws segment is not canonical unpadded base64url')
  }
  let header: unknown
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(base64url.decode(segments[0]!)))
  } catch (error) {
    throw new VerifyError('ERR_JWS_INVALID', 'the jws protected header is not json', { cause: error })
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new VerifyError('ERR_JWS_INVALID', 'the jws protected header is not a json object')
  }
  const present = UNTRUSTED_HEADERS.filter((name) => Object.hasOwn(header, name))
  if (present.length > 0) {
    throw new VerifyError(
      'ERR_JWT_UNTRUSTED_HEADER',
      `the jws header carries ${present.map((name) => `"${name}"`).join(', ')}; keys come from the trusted jwks only`,
    )
  }
  const { kid, alg } = header as { kid?: unknown; alg?: unknown }
  if (kid !== undefined && (typeof kid !== 'string' || kid.length > MAX_KID_LENGTH)) {
    throw new VerifyError('ERR_JWS_INVALID', `"kid" must be a string of at most ${MAX_KID_LENGTH} characters`)
  }
  if (typeof alg !== 'string' || alg === '') throw new VerifyError('ERR_JWS_INVALID', '"alg" is missing')
  // jose checks the allow-list too; checking here keeps "none" away from every later step
  if (!algorithms.includes(alg)) throw new VerifyError('ERR_JOSE_ALG_NOT_ALLOWED', '"alg" is not allowed')
}

function isCanonicalBase64url(segment: string): boolean {
  if (!BASE64URL.test(segment) || segment.length % 4 === 1) return false
  const tail = segment.length % 4
  if (tail === 0) return true
  // the last character of a 2- (3-) character tail carries 4 (2) bits that must be zero (RFC 4648 section 3.5)
  const value = BASE64URL_ALPHABET.indexOf(segment.at(-1)!)
  return (value & (tail === 2 ? 0x0f : 0x03)) === 0
}

function checkClaims(payload: JWTPayload, latestIat: number): AccessTokenClaims {
  const invalid = (claim: string, message: string) =>
    new VerifyError('ERR_JWT_CLAIM_VALIDATION_FAILED', message, { claim })
  // jose checks that iat is present, but not that it is a past number unless maxTokenAge is set
  if (typeof payload.iat !== 'number' || !Number.isFinite(payload.iat))
    throw invalid('iat', '"iat" must be a number')
  if (payload.iat > latestIat) throw invalid('iat', '"iat" is in the future')
  // jose only checks that they are present; RFC 9068 section 2.2 requires all three
  for (const claim of ['sub', 'jti', 'client_id'] as const) {
    if (typeof payload[claim] !== 'string' || payload[claim] === '') {
      throw invalid(claim, `"${claim}" must be a non-empty string`)
    }
  }
  if (payload.sid !== undefined && typeof payload.sid !== 'string')
    throw invalid('sid', '"sid" must be a string')
  return payload as AccessTokenClaims
}

function toVerifyError(error: unknown): unknown {
  if (isVerifyError(error)) return error
  if (error instanceof errors.JOSEError && JOSE_TOKEN_CODES.has(error.code)) {
    const claim = (error as { claim?: unknown }).claim
    // jose's claim errors carry the whole claims set (as `payload`, and again in their own cause): kept as the
    // cause, a logged error would show the subject and session of every expired or misdirected token. Their
    // code, message and claim say all there is
    const claimsError = error instanceof errors.JWTClaimValidationFailed || error instanceof errors.JWTExpired
    return new VerifyError(error.code as VerifyErrorCode, error.message, {
      ...(claimsError ? {} : { cause: error }),
      ...(typeof claim === 'string' ? { claim } : {}),
    })
  }
  // anything else is not about the token (a bug, or a key jose cannot use): let it surface as a 500
  return error
}

function bearerToken(authorization: string | string[] | undefined): string {
  if (typeof authorization !== 'string')
    throw new VerifyError('ERR_TOKEN_MISSING', 'no "authorization" header')
  // auth-scheme is case-insensitive (RFC 7235 section 2.1), then 1*SP and the token (RFC 6750 section 2.1)
  const scheme = /^bearer(?: +|$)/i.exec(authorization)
  if (scheme === null) {
    throw new VerifyError('ERR_TOKEN_MISSING', 'the "authorization" header does not use the bearer scheme')
  }
  const token = authorization.slice(scheme[0].length)
  if (token === '')
    throw new VerifyError('ERR_TOKEN_MISSING', 'the "authorization" header has no bearer token')
  return token
}

/**
 * The HTTP answer the middlewares give for a `VerifyError`: status, headers (`WWW-Authenticate` on a
 * 401, `Retry-After` in whole seconds on a 503 (the error's `retryAfter`), `Cache-Control: no-store`)
 * and the JSON body `{ error, error_description, code }`. Use it to answer like them from a route
 * that calls `verify` itself. A `realm` that `createVerifier` would refuse throws its `ERR_CONFIG`.
 * @example
 * const { status, headers, body } = verifyErrorResponse(error, { realm: 'api' })
 * return reply.code(status).headers(headers).send(body)
 */
export function verifyErrorResponse(
  error: VerifyError,
  { realm }: { realm?: string | undefined } = {},
): {
  status: 401 | 503
  headers: Record<string, string>
  body: {
    error: 'invalid_token' | 'temporarily_unavailable'
    error_description: string
    code: VerifyErrorCode
  }
} {
  checkRealm(realm)
  return errorResponse(error, realm)
}

/** The realm goes into a quoted-string: no quote, backslash or line break can break out of it. */
function checkRealm(realm: unknown): void {
  if (realm !== undefined && (typeof realm !== 'string' || !/^[\x20\x21\x23-\x5b\x5d-\x7e]*$/.test(realm))) {
    throw configError('"realm" must be a string of printable ASCII without double quotes or backslashes')
  }
}

function errorResponse(error: VerifyError, realm: string | undefined) {
  const description =
    error.code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' &&
    error.claim !== undefined &&
    DESCRIBED_CLAIMS.has(error.claim)
      ? `the access token ${error.claim} ${error.claim === 'typ' ? 'header' : 'claim'} is invalid`
      : DESCRIPTIONS[error.code]
  const headers: Record<string, string> = { 'cache-control': 'no-store' }
  if (error.status === 401) {
    // RFC 6750 section 3.1 leaves out error for a missing token; this server gives every 401 one, so clients need no special case
    const realmParam = realm === undefined ? '' : `realm="${realm}", `
    headers['www-authenticate'] =
      `Bearer ${realmParam}error="invalid_token", error_description="${description}"`
  } else {
    // RFC 9110 section 10.2.3: delay-seconds; a VerifyError of another copy may not carry retryAfter
    headers['retry-after'] = String(retryAfterSeconds(error.retryAfter))
  }
  const body = {
    error: error.status === 401 ? ('invalid_token' as const) : ('temporarily_unavailable' as const),
    error_description: description,
    code: error.code,
  }
  return { status: error.status, headers, body }
}

function decoded(value: unknown): Uint8Array | undefined {
  if (typeof value !== 'string' || !isCanonicalBase64url(value)) return undefined
  return base64url.decode(value)
}

function decodedBits(value: unknown): number {
  const bytes = decoded(value)
  if (bytes === undefined) return 0
  const first = bytes.findIndex((byte) => byte !== 0)
  return first === -1 ? 0 : (bytes.length - first) * 8 - Math.clz32(bytes[first]!) + 24
}

function isJwkSet(value: unknown): value is JSONWebKeySet {
  if (typeof value !== 'object' || value === null) return false
  const { keys } = value as { keys?: unknown }
  return (
    Array.isArray(keys) && keys.every((key) => typeof key === 'object' && key !== null && !Array.isArray(key))
  )
}
