import { RefreshError, type RefreshErrorKind, TokenflowError } from './errors.js'
import type { RefreshContext, RefreshFunction, TokenSet } from './types.js'

/**
 * Options of `jsonRefresh`.
 * @example
 * const options: JsonRefreshOptions = { headers: { 'x-csrf-token': csrf }, credentials: 'include' }
 */
export interface JsonRefreshOptions {
  /**
   * The fetch to call; never the intercepted axios instance or auth fetch.
   * @default globalThis.fetch, looked up on each refresh
   */
  fetch?: typeof fetch
  /**
   * Extra request headers, e.g. a CSRF token; they win over the defaults.
   * @default none: `Content-Type` and `Accept` are `application/json`
   */
  headers?: HeadersInit
  /**
   * Set `'include'` when the refresh endpoint is on another origin and also needs its cookies.
   * @default fetch's own, `'same-origin'`
   */
  credentials?: RequestCredentials
}

/**
 * Options of `oauthRefresh`.
 * @example
 * const options: OAuthRefreshOptions = { clientId: 'my-app' }
 */
export interface OAuthRefreshOptions {
  /** The `client_id` sent with every refresh (RFC 6749 section 2.2). */
  clientId: string
  /**
   * The fetch to call.
   * @default globalThis.fetch, looked up on each refresh
   */
  fetch?: typeof fetch
  /**
   * Extra request headers, e.g. `Authorization: Basic …` for a confidential client.
   * @default none: `Content-Type` is form-encoded, `Accept` is `application/json`
   */
  headers?: HeadersInit
}

function invalidOption(message: string): TokenflowError {
  return new TokenflowError('ERR_INVALID_OPTION', message)
}

function checkOptions(name: string, url: unknown, customFetch: unknown): string {
  if (!url || (typeof url !== 'string' && typeof (url as URL).href !== 'string')) {
    throw invalidOption(`"${name}" must be a string or URL`)
  }
  if (customFetch !== undefined && typeof customFetch !== 'function')
    throw invalidOption('"fetch" must be a function')
  // what messages show: no query string and no user:password, which may carry secrets
  return `POST ${String(url)
    .replace(/\/\/[^/@]*@/, '//')
    .replace(/[?#][\s\S]*/, '')}`
}

/** Cuts anything token-shaped from server text before it goes into a message: servers echo tokens. */
function redact(text: unknown): string {
  return typeof text === 'string' ? text.replace(/[\w.~+/=-]{24,}/g, '[redacted]') : ''
}

async function send(
  url: string | URL,
  target: string,
  init: RequestInit,
  customFetch: typeof fetch | undefined,
  { signal, now }: RefreshContext,
): Promise<TokenSet> {
  const fail = (
    kind: RefreshErrorKind,
    what: string,
    options: ConstructorParameters<typeof RefreshError>[2],
  ) => new RefreshError(kind, `refresh failed: ${target} ${what}`, options)
  let response: Response | undefined
  let text: string
  try {
    response = await (customFetch ?? globalThis.fetch)(url, { ...init, signal })
    text = await response.text()
  } catch (cause) {
    // the manager aborts `signal` when refreshTimeout passes; fetch rejects with an AbortError then
    const timeout = signal.aborted
    throw fail(timeout ? 'timeout' : 'network', timeout ? 'timed out' : 'got no response', {
      cause,
      status: response?.status,
    })
  }
  const { status } = response
  let body: Record<string, unknown> | undefined
  let cause: unknown
  try {
    const parsed: unknown = JSON.parse(text)
    if (typeof parsed === 'object' && parsed && !Array.isArray(parsed))
      body = parsed as Record<string, unknown>
  } catch (error) {
    cause = error
  }
  const error = body?.error
  if (!response.ok || error === 'invalid_grant') {
    const retryAfter = response.headers.get('retry-after')?.trim()
    const description = redact(body?.error_description)
    const detail = redact(error) + (description && `: ${description}`)
    // RFC 6749 section 5.2: invalid_grant means the refresh token is expired, revoked or already used
    throw fail(
      status === 400 || status === 401 || status === 403 || error === 'invalid_grant' ? 'rejected' : 'server',
      `answered ${status}${detail && ` (${detail})`}`,
      { status, retryAfter: retryAfter && /^\d+$/.test(retryAfter) ? Number(retryAfter) : undefined },
    )
  }
  // camelCase as the recipe's POST /refresh/token answers; snake_case as RFC 6749 section 5.1 does
  const accessToken = body?.accessToken ?? body?.access_token
  const refreshToken = body?.refreshToken ?? body?.refresh_token
  if (
    !accessToken ||
    typeof accessToken !== 'string' ||
    (refreshToken != null && (!refreshToken || typeof refreshToken !== 'string'))
  ) {
    throw fail('invalid-response', `answered ${status} without a valid token`, { cause, status })
  }
  // a missing refresh token keeps the current one: servers that do not rotate leave it out
  const tokens: TokenSet = { accessToken, refreshToken: refreshToken ?? undefined }
  // expires_in is in seconds (RFC 6749 section 5.1); some servers send it as a string
  const rawExpiresIn = body!.expiresIn ?? body!.expires_in
  const expiresIn =
    typeof rawExpiresIn === 'number' || typeof rawExpiresIn === 'string' ? Number(rawExpiresIn) : 0
  if (expiresIn > 0 && expiresIn < Number.POSITIVE_INFINITY) tokens.expiresAt = now() + expiresIn * 1000
  return tokens
}

/**
 * Refreshes with the recipe's protocol: POST `{ refreshToken }` as JSON, answered with `{ accessToken, refreshToken, expiresIn }`.
 * @example
 * const manager = createTokenManager({ refresh: jsonRefresh('https://api.example.com/refresh/token') })
 */
export function jsonRefresh(
  url: string | URL,
  { fetch: customFetch, headers, credentials }: JsonRefreshOptions = {},
): RefreshFunction {
  const target = checkOptions('url', url, customFetch)
  return (context) => {
    const init: RequestInit = {
      method: 'POST',
      headers: buildHeaders({ 'content-type': 'application/json' }, headers),
      body: JSON.stringify({ refreshToken: context.refreshToken }),
    }
    if (credentials) init.credentials = credentials
    return send(url, target, init, customFetch, context)
  }
}

/**
 * Refreshes at an OAuth 2 token endpoint with `grant_type=refresh_token` (RFC 6749 section 6).
 * @example
 * const refresh = oauthRefresh('https://auth.example.com/oauth/token', { clientId: 'my-app' })
 */
export function oauthRefresh(
  tokenEndpoint: string | URL,
  { clientId, fetch: customFetch, headers }: OAuthRefreshOptions = {} as OAuthRefreshOptions,
): RefreshFunction {
  const target = checkOptions('tokenEndpoint', tokenEndpoint, customFetch)
  if (typeof clientId !== 'string' || !clientId) throw invalidOption('"clientId" must be a non-empty string')
  return (context) =>
    send(
      tokenEndpoint,
      target,
      {
        method: 'POST',
        headers: buildHeaders({ 'content-type': 'application/x-www-form-urlencoded' }, headers),
        // encoded by hand: React Native's URLSearchParams is incomplete
        body: `grant_type=refresh_token&refresh_token=${encodeURIComponent(context.refreshToken)}&client_id=${encodeURIComponent(clientId)}`,
      },
      customFetch,
      context,
    )
}

function buildHeaders(defaults: Record<string, string>, extra: HeadersInit | undefined): Headers {
  const headers = new Headers({ accept: 'application/json', ...defaults })
  new Headers(extra).forEach((value, name) => {
    headers.set(name, value)
  })
  return headers
}
