import { type OutgoingHttpHeaders, request } from 'node:http'

/**
 * Real HTTP to a listening server on 127.0.0.1, with the raw body kept, so tests can compare answers
 * byte for byte instead of through a JSON parse that would hide a field order or an extra space.
 */

export const ISSUER = 'https://auth.tokenflow.test'
export const AUDIENCE = 'https://api.tokenflow.test'
export const PASSWORD = 'correct horse battery staple'

/** The one body every refresh-token failure gets (RFC 6749 section 5.2), as the server serialises it. */
export const INVALID_GRANT_BODY = JSON.stringify({
  error: 'invalid_grant',
  error_description: 'the refresh token is invalid, expired or revoked',
  code: 'ERR_INVALID_GRANT',
})

/** An HTTP answer with its raw body. */
export interface HttpReply {
  status: number
  headers: Headers
  text: string
  json(): any
}

/**
 * Sends one request and reads the whole answer.
 * @example
 * const reply = await send(`${origin}/auth/login`, { method: 'POST', body })
 */
export async function send(url: string, init: RequestInit = {}): Promise<HttpReply> {
  const response = await fetch(url, init)
  const text = await response.text()
  return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) }
}

/**
 * POSTs `body` as JSON (a string is sent as it is).
 * @example
 * const reply = await postJson(origin, '/refresh/token', { refreshToken })
 */
export function postJson(
  origin: string,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<HttpReply> {
  return send(`${origin}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })
}

/**
 * POSTs form-encoded parameters, as the OAuth routes want them.
 * @example
 * const reply = await postForm(origin, '/oauth/token', { grant_type: 'refresh_token', refresh_token, client_id: 'web' })
 */
export function postForm(origin: string, path: string, params: Record<string, string>): Promise<HttpReply> {
  return send(`${origin}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(params).toString(),
  })
}

/** What `/auth/login` and `/refresh/token` answer. */
export interface TokenPair {
  accessToken: string
  refreshToken: string
  tokenType: string
  expiresIn: number
}

/**
 * Logs in over HTTP and returns the tokens; fails the caller when the answer is not a 200.
 * @example
 * const { refreshToken } = await login(origin)
 */
export async function login(origin: string, username = 'ada', password = PASSWORD): Promise<TokenPair> {
  const reply = await postJson(origin, '/auth/login', { username, password })
  if (reply.status !== 200) throw new Error(`login answered ${reply.status}: ${reply.text}`)
  return reply.json() as TokenPair
}

/**
 * POSTs a refresh token to `/refresh/token`.
 * @example
 * const reply = await refresh(origin, tokens.refreshToken)
 */
export function refresh(origin: string, refreshToken: string): Promise<HttpReply> {
  return postJson(origin, '/refresh/token', { refreshToken })
}

/**
 * Sends one request through node:http, whose headers may repeat a field (an array value is sent as one
 * field line per element), which fetch cannot do: it joins them into one.
 * @example
 * const reply = await sendLines(`${api}/me`, { authorization: ['Bearer a', 'Bearer b'] })
 */
export function sendLines(
  url: string,
  headers: Record<string, string | string[]>,
  method = 'GET',
  body?: string,
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    // node's types allow one value for authorization; node:http sends an array as one line per value
    request(url, { method, headers: headers as OutgoingHttpHeaders }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        const answer = new Headers()
        for (const [name, value] of Object.entries(response.headers))
          if (value !== undefined) answer.set(name, Array.isArray(value) ? value.join(', ') : value)
        resolve({ status: response.statusCode!, headers: answer, text, json: () => JSON.parse(text) })
      })
      response.on('error', reject)
    })
      .on('error', reject)
      .end(body)
  })
}
