import { invalidOption, kindOfStatus, RefreshError, type RefreshErrorKind } from './errors.js'
import { isTokenSet } from './storage.js'
import type { RefreshContext, RefreshFunction, TokenSet } from './types.js'

type RefreshErrorOptions = ConstructorParameters<typeof RefreshError>[2]

/**
 * Options of `jsonRefresh`.
 * @example
 * const refresh = jsonRefresh('/refresh/token', { headers: { 'x-csrf-token': csrf }, credentials: 'include' })
 */
export interface JsonRefreshOptions {
  /**
   * The fetch to call; never the intercepted axios instance or auth fetch.
   * @default globalThis.fetch, looked up on each refresh
   */
  fetch?: typeof fetch | undefined
  /**
   * Extra request headers, e.g. a CSRF token; they win over the defaults.
   * @default none: `Content-Type` and `Accept` are `application/json`
   */
  headers?: RequestInit['headers'] | undefined
  /**
   * Set `'include'` when the refresh endpoint is on another origin and also needs its cookies.
   * @default fetch's own, `'same-origin'`
   */
  credentials?: RequestInit['credentials'] | undefined
}

/**
 * Options of `oauthRefresh`.
 * @example
 * const refresh = oauthRefresh('https://auth.example.com/oauth/token', { clientId: 'my-app' })
 */
export interface OAuthRefreshOptions {
  /** The `client_id` sent with every refresh (RFC 6749 section 2.2). */
  clientId: string
  /**
   * The fetch to call.
   * @default globalThis.fetch, looked up on each refresh
   */
  fetch?: typeof fetch | undefined
  /**
   * Extra request headers, e.g. `Authorization: Basic …` for a confidential client.
   * @default none: `Content-Type` is form-encoded, `Accept` is `application/json`
   */
  headers?: RequestInit['headers'] | undefined
}

/** Checks what every refresh factory takes, when the factory runs (not on the first refresh). */
function checkOptions(name: string, url: unknown, customFetch: unknown): void {
  if (!url || (typeof url !== 'string' && typeof (url as URL).href !== 'string'))
    invalidOption(name, 'a string or URL')
  if (customFetch !== undefined && typeof customFetch !== 'function') invalidOption('fetch', 'a function')
}

async function send(
  url: string | URL,
  init: RequestInit,
  customFetch: typeof fetch | undefined,
  { signal, now }: RefreshContext,
): Promise<TokenSet> {
  // messages carry no url and no server text but a short error code: urls and servers' answers can hold secrets
  const fail = (kind: RefreshErrorKind, what: string, options?: RefreshErrorOptions) =>
    new RefreshError(kind, `refresh failed: ${what}`, options)
  let response: Response | undefined
  let body: unknown
  let cause: unknown
  try {
    response = await (customFetch ?? globalThis.fetch)(url, { ...init, signal })
    const text = await response.text()
    try {
      body = JSON.parse(text)
    } catch (error) {
      cause = error
    }
  } catch (error) {
    // the manager aborts `signal` when refreshTimeout passes; fetch rejects with an AbortError then
    throw fail(signal.aborted ? 'timeout' : 'network', signal.aborted ? 'timed out' : 'got no response', {
      cause: error,
      status: response?.status,
    })
  }
  const { status } = response
  // JSON.parse also returns strings, numbers, arrays and null: only an object's fields are read
  const fields = (typeof body === 'object' && body ? body : {}) as Record<string, unknown>
  const error = fields.error
  if (!response.ok || error === 'invalid_grant') {
    // only what an RFC 6749 error code looks like (invalid_grant): a token has digits or capitals
    const code = typeof error === 'string' && /^[a-z_]{1,40}$/.test(error) ? ` (${error})` : ''
    const retryAfter = response.headers.get('retry-after') ?? ''
    throw fail(kindOfStatus(status, error), `answered ${status}${code}`, {
      status,
      retryAfter: /^\s*\d+\s*$/.test(retryAfter) ? Number(retryAfter) : undefined,
    })
  }
  // camelCase as the recipe's POST /refresh/token answers; snake_case as RFC 6749 section 5.1 does
  const accessToken = fields.accessToken ?? fields.access_token
  const refreshToken = fields.refreshToken ?? fields.refresh_token
  // isTokenSet's check, here too, so that the error carries the status it came with
  if (
    typeof accessToken !== 'string' ||
    !isTokenSet({ accessToken }) ||
    (refreshToken != null && (!refreshToken || typeof refreshToken !== 'string'))
  )
    throw fail('invalid-response', `answered ${status} without a valid token`, { cause, status })
  // a missing refresh token keeps the current one: servers that do not rotate leave it out
  const tokens: TokenSet = { accessToken, refreshToken: refreshToken ?? undefined }
  // expires_in is in seconds (RFC 6749 section 5.1); some servers send it as a string
  const expiresIn = fields.expiresIn ?? fields.expires_in
  const seconds = typeof expiresIn === 'number' || typeof expiresIn === 'string' ? Number(expiresIn) : 0
  const expiresAt = now() + seconds * 1000
  // finite after the multiplication too: an absurd expires_in (1e306) means "no known expiry", not a failure
  if (seconds > 0 && Number.isFinite(expiresAt)) tokens.expiresAt = expiresAt
  return tokens
}

/** The caller's headers over the defaults. */
const withHeaders = (contentType: string, headers: RequestInit['headers']) => ({
  accept: 'application/json',
  'content-type': contentType,
  ...Object.fromEntries(new Headers(headers)),
})

/**
 * Refreshes with the recipe's protocol: POST `{ refreshToken }` as JSON, answered with `{ accessToken, refreshToken, expiresIn }`.
 * @example
 * const manager = createTokenManager({ refresh: jsonRefresh('https://api.example.com/refresh/token') })
 */
export function jsonRefresh(
  url: string | URL,
  { fetch: customFetch, headers, credentials }: JsonRefreshOptions = {},
): RefreshFunction {
  checkOptions('url', url, customFetch)
  return (context) => {
    const init: RequestInit = {
      method: 'POST',
      headers: withHeaders('application/json', headers),
      body: JSON.stringify({ refreshToken: context.refreshToken }),
    }
    if (credentials) init.credentials = credentials
    return send(url, init, customFetch, context)
  }
}

/**
 * Refreshes at an OAuth 2 token endpoint with `grant_type=refresh_token` (RFC 6749 section 6).
 * @example
 * const refresh = oauthRefresh('https://auth.example.com/oauth/token', { clientId: 'my-app' })
 */
export function oauthRefresh(tokenEndpoint: string | URL, options: OAuthRefreshOptions): RefreshFunction {
  // required by the types; a plain-JS call without it still gets ERR_INVALID_OPTION, not a TypeError
  const { clientId, fetch: customFetch, headers } = options ?? ({} as OAuthRefreshOptions)
  checkOptions('tokenEndpoint', tokenEndpoint, customFetch)
  if (typeof clientId !== 'string' || !clientId) invalidOption('clientId', 'a non-empty string')
  return (context) =>
    send(
      tokenEndpoint,
      {
        method: 'POST',
        headers: withHeaders('application/x-www-form-urlencoded', headers),
        // encoded by hand: React Native's URLSearchParams is incomplete
        body: `grant_type=refresh_token&refresh_token=${encodeURIComponent(context.refreshToken)}&client_id=${encodeURIComponent(clientId)}`,
      },
      customFetch,
      context,
    )
}
