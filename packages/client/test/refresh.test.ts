import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { isRefreshError, RefreshError, TokenflowError } from '../src/errors.js'
import { jsonRefresh, oauthRefresh } from '../src/refresh.js'
import type { RefreshContext, RefreshFunction } from '../src/types.js'

interface Received {
  method: string | undefined
  url: string | undefined
  headers: IncomingHttpHeaders
  body: string
}

type Handler = (request: IncomingMessage, response: ServerResponse, received: Received) => void

const NOW = 1_700_000_000_000
let handler: Handler
let requests: Received[]
let origin: string

const server = createServer((request, response) => {
  let body = ''
  request.setEncoding('utf8')
  request.on('data', (chunk: string) => {
    body += chunk
  })
  request.on('end', () => {
    const received = { method: request.method, url: request.url, headers: request.headers, body }
    requests.push(received)
    handler(request, response, received)
  })
})

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})

afterAll(async () => {
  server.closeAllConnections()
  await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())))
})

beforeEach(() => {
  requests = []
  handler = () => {
    throw new Error('no handler set for this test')
  }
})

afterEach(() => {
  vi.unstubAllGlobals()
})

/** Answers every request with this status, JSON (or raw text) body and headers. */
function answer(status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body)
  const type = typeof body === 'string' ? 'text/plain' : 'application/json'
  handler = (_, response) => {
    response.writeHead(status, { 'content-type': type, ...headers })
    response.end(text)
  }
}

function context(overrides: Partial<RefreshContext> = {}): RefreshContext {
  return { refreshToken: 'refresh-1', signal: new AbortController().signal, now: () => NOW, ...overrides }
}

/** What the refresh rejected with; fails the test when it resolved. */
async function failure(refresh: RefreshFunction, ctx: RefreshContext = context()): Promise<RefreshError> {
  const error: unknown = await refresh(ctx).then(
    () => {
      throw new Error('expected the refresh to fail')
    },
    (error: unknown) => error,
  )
  expect(error).toBeInstanceOf(RefreshError)
  expect(isRefreshError(error)).toBe(true)
  expect((error as RefreshError).code).toBe('ERR_REFRESH_FAILED')
  return error as RefreshError
}

describe('jsonRefresh', () => {
  it("POSTs { refreshToken } as JSON with Accept: application/json (the recipe's protocol)", async () => {
    answer(200, { accessToken: 'access-2', refreshToken: 'refresh-2' })
    await jsonRefresh(`${origin}/refresh/token`)(context({ refreshToken: 'refresh-"1"' }))
    expect(requests).toHaveLength(1)
    const [request] = requests
    expect(request?.method).toBe('POST')
    expect(request?.url).toBe('/refresh/token')
    expect(request?.headers['content-type']).toBe('application/json')
    expect(request?.headers.accept).toBe('application/json')
    expect(JSON.parse(request!.body)).toStrictEqual({ refreshToken: 'refresh-"1"' })
  })

  it('reads a camelCase answer and turns expiresIn seconds into expiresAt with the injected now', async () => {
    answer(200, { accessToken: 'access-2', refreshToken: 'refresh-2', expiresIn: 900, tokenType: 'Bearer' })
    const tokens = await jsonRefresh(`${origin}/refresh/token`)(context())
    expect(tokens).toStrictEqual({
      accessToken: 'access-2',
      refreshToken: 'refresh-2',
      expiresAt: NOW + 900_000,
    })
  })

  it('reads an OAuth snake_case answer', async () => {
    answer(200, {
      access_token: 'access-2',
      refresh_token: 'refresh-2',
      expires_in: 3600,
      token_type: 'Bearer',
    })
    const tokens = await jsonRefresh(`${origin}/refresh/token`)(context())
    expect(tokens).toStrictEqual({
      accessToken: 'access-2',
      refreshToken: 'refresh-2',
      expiresAt: NOW + 3_600_000,
    })
  })

  it('answers refreshToken undefined, keeping the current one, when the server does not rotate', async () => {
    for (const body of [{ accessToken: 'access-2' }, { access_token: 'access-2', refresh_token: null }]) {
      answer(200, body)
      const tokens = await jsonRefresh(`${origin}/refresh/token`)(context())
      expect(tokens.accessToken).toBe('access-2')
      expect(tokens.refreshToken).toBeUndefined()
      expect(tokens.expiresAt).toBeUndefined()
    }
  })

  it('accepts expires_in sent as a numeric string', async () => {
    answer(200, { access_token: 'access-2', expires_in: '3599' })
    const tokens = await jsonRefresh(`${origin}/refresh/token`)(context())
    expect(tokens.expiresAt).toBe(NOW + 3_599_000)
  })

  it.each(['0', '-5', '"soon"', '""', 'true', 'null', '1e999', '1e306', '"1e306"', '[60]', '{"seconds":60}'])(
    'leaves expiresAt out for expiresIn %s, so the JWT exp is used',
    async (expiresIn) => {
      answer(200, `{"accessToken":"access-2","expiresIn":${expiresIn}}`)
      const tokens = await jsonRefresh(`${origin}/refresh/token`)(context())
      expect(tokens).toStrictEqual({ accessToken: 'access-2', refreshToken: undefined })
    },
  )

  it('sends extra headers, which win over the defaults, and passes credentials to fetch', async () => {
    answer(200, { accessToken: 'access-2' })
    const inits: RequestInit[] = []
    const refresh = jsonRefresh(new URL('/refresh/token', origin), {
      headers: [
        ['x-csrf-token', 'csrf-1'],
        ['accept', 'application/vnd.api+json'],
      ],
      credentials: 'include',
      fetch: (input, init) => {
        inits.push(init!)
        return globalThis.fetch(input, init)
      },
    })
    await refresh(context())
    expect(requests[0]?.headers['x-csrf-token']).toBe('csrf-1')
    expect(requests[0]?.headers.accept).toBe('application/vnd.api+json')
    expect(requests[0]?.headers['content-type']).toBe('application/json')
    expect(inits[0]?.credentials).toBe('include')
    expect(inits[0]?.method).toBe('POST')
  })

  it('looks up globalThis.fetch on each refresh, so a fetch polyfilled later is used', async () => {
    answer(200, { accessToken: 'access-2' })
    const refresh = jsonRefresh(`${origin}/refresh/token`)
    const realFetch = globalThis.fetch
    const calls: string[] = []
    vi.stubGlobal('fetch', (input: string | URL | Request, init?: RequestInit) => {
      calls.push(String(input))
      return realFetch(input, init)
    })
    await refresh(context())
    expect(calls).toEqual([`${origin}/refresh/token`])
  })

  it('passes the context signal to fetch', async () => {
    answer(200, { accessToken: 'access-2' })
    const controller = new AbortController()
    const signals: Array<AbortSignal | null | undefined> = []
    const refresh = jsonRefresh(`${origin}/refresh/token`, {
      fetch: (input, init) => {
        signals.push(init?.signal)
        return globalThis.fetch(input, init)
      },
    })
    await refresh(context({ signal: controller.signal }))
    expect(signals).toEqual([controller.signal])
  })

  it.each([
    ['a number', 42],
    ['an empty string', ''],
    ['undefined', undefined],
    ['an object that is not a URL', { path: '/refresh/token' }],
  ])('throws ERR_INVALID_OPTION when the url is %s', (_, url) => {
    expect(() => jsonRefresh(url as unknown as string)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_OPTION', message: '"url" must be a string or URL' }),
    )
  })

  it('throws ERR_INVALID_OPTION when fetch is not a function', () => {
    const error = (() => {
      try {
        jsonRefresh('/refresh/token', { fetch: 'fetch' as unknown as typeof fetch })
      } catch (error) {
        return error
      }
    })()
    expect(error).toBeInstanceOf(TokenflowError)
    expect(error).toMatchObject({ code: 'ERR_INVALID_OPTION', message: '"fetch" must be a function' })
  })
})

describe('oauthRefresh', () => {
  it('POSTs a form with grant_type, refresh_token and client_id (RFC 6749 section 6)', async () => {
    answer(200, {
      access_token: 'access-2',
      token_type: 'Bearer',
      expires_in: 300,
      refresh_token: 'refresh-2',
    })
    const refreshToken = 'a+b/c=d&e f%'
    const tokens = await oauthRefresh(`${origin}/oauth/token`, { clientId: 'my app&co' })(
      context({ refreshToken }),
    )
    expect(tokens).toStrictEqual({
      accessToken: 'access-2',
      refreshToken: 'refresh-2',
      expiresAt: NOW + 300_000,
    })
    const [request] = requests
    expect(request?.method).toBe('POST')
    expect(request?.url).toBe('/oauth/token')
    expect(request?.headers['content-type']).toBe('application/x-www-form-urlencoded')
    expect(request?.headers.accept).toBe('application/json')
    expect([...new URLSearchParams(request!.body)]).toEqual([
      ['grant_type', 'refresh_token'],
      ['refresh_token', refreshToken],
      ['client_id', 'my app&co'],
    ])
  })

  it('sends extra headers, e.g. Basic client authentication', async () => {
    answer(200, { access_token: 'access-2' })
    await oauthRefresh(`${origin}/oauth/token`, {
      clientId: 'my-app',
      headers: { authorization: 'Basic bXktYXBwOnNlY3JldA==' },
    })(context())
    expect(requests[0]?.headers.authorization).toBe('Basic bXktYXBwOnNlY3JldA==')
  })

  it('rejects with kind "rejected", status and the RFC 6749 section 5.2 error for invalid_grant', async () => {
    answer(400, { error: 'invalid_grant', error_description: 'the refresh token was revoked' })
    const error = await failure(oauthRefresh(`${origin}/oauth/token`, { clientId: 'my-app' }))
    expect(error.kind).toBe('rejected')
    expect(error.status).toBe(400)
    expect(error.message).toBe('refresh failed: answered 400 (invalid_grant)')
  })

  it.each([
    ['missing', undefined],
    ['an empty string', ''],
    ['a number', 42],
  ])('throws ERR_INVALID_OPTION when clientId is %s', (_, clientId) => {
    expect(() => oauthRefresh('/oauth/token', { clientId } as unknown as { clientId: string })).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_OPTION',
        message: '"clientId" must be a non-empty string',
      }),
    )
  })

  it('throws ERR_INVALID_OPTION when the options are left out', () => {
    const untyped = oauthRefresh as (endpoint: string) => RefreshFunction
    expect(() => untyped('/oauth/token')).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_OPTION',
        message: '"clientId" must be a non-empty string',
      }),
    )
  })

  it('throws ERR_INVALID_OPTION when the token endpoint is not a string or URL', () => {
    expect(() => oauthRefresh(null as unknown as string, { clientId: 'my-app' })).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_OPTION',
        message: '"tokenEndpoint" must be a string or URL',
      }),
    )
  })
})

const factories: Array<[string, string, (url: string) => RefreshFunction]> = [
  ['jsonRefresh', '/refresh/token', (url) => jsonRefresh(url)],
  ['oauthRefresh', '/oauth/token', (url) => oauthRefresh(url, { clientId: 'my-app' })],
]

describe.each(factories)('%s failure classification', (_, path, make) => {
  const refresh = () => make(`${origin}${path}`)

  it.each([
    [400, { error: 'invalid_grant' }],
    [400, { error: 'invalid_request' }],
    [401, ''],
    [401, { error: 'invalid_client' }],
    [403, 'Forbidden'],
  ])('status %i with body %j is "rejected"', async (status, body) => {
    answer(status, body)
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'rejected', status, retryAfter: undefined })
  })

  it.each([200, 500, 503])('status %i with error "invalid_grant" is "rejected"', async (status) => {
    answer(status, { error: 'invalid_grant' })
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'rejected', status })
  })

  it.each([
    [429, { 'retry-after': '30' }, 30],
    [503, { 'retry-after': ' 120 ' }, 120],
    [503, { 'retry-after': '0' }, 0],
    [503, { 'retry-after': 'Wed, 21 Oct 2015 07:28:00 GMT' }, undefined],
    [503, { 'retry-after': '1.5' }, undefined],
    [503, { 'retry-after': '-3' }, undefined],
    [500, {}, undefined],
    [502, {}, undefined],
    [504, {}, undefined],
  ])('status %i with headers %j is "server" with retryAfter %s', async (status, headers, retryAfter) => {
    answer(status, { error: 'temporarily_unavailable' }, headers)
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'server', status, retryAfter })
    expect(error.message).toBe(`refresh failed: answered ${status} (temporarily_unavailable)`)
  })

  it.each([404, 405, 409, 418, 300])('any other non-2xx status (%i) is "server"', async (status) => {
    answer(status, 'nope')
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'server', status, retryAfter: undefined })
    expect(error.message).toBe(`refresh failed: answered ${status}`)
  })

  it('a 200 with a body that is not JSON is "invalid-response" and keeps the parse error as cause', async () => {
    answer(200, '<html>login page</html>')
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'invalid-response', status: 200 })
    expect(error.cause).toBeInstanceOf(SyntaxError)
    expect(error.message).toBe('refresh failed: answered 200 without a valid token')
  })

  it.each(['[]', '"access-2"', 'null', '42', ''])(
    'a 200 with JSON %j that is not an object is "invalid-response"',
    async (text) => {
      handler = (_, response) => response.writeHead(200, { 'content-type': 'application/json' }).end(text)
      const error = await failure(refresh())
      expect(error).toMatchObject({ kind: 'invalid-response', status: 200 })
    },
  )

  it('a 204 with no body is "invalid-response"', async () => {
    handler = (_, response) => response.writeHead(204).end()
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'invalid-response', status: 204 })
  })

  it.each([
    [{}],
    [{ accessToken: '' }],
    [{ accessToken: 5 }],
    [{ access_token: null }],
    [{ access_token: ['access-2'] }],
    [{ error: 'server_error' }],
    [{ accessToken: 'access-2', refreshToken: 5 }],
    [{ access_token: 'access-2', refresh_token: '' }],
    // it goes in an Authorization header: a space or a line break would make every request throw
    [{ accessToken: 'access 2' }],
    [{ access_token: 'access-2\n' }],
  ])('a 200 with %j is "invalid-response"', async (body) => {
    answer(200, body)
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'invalid-response', status: 200 })
    expect(error.message).toBe('refresh failed: answered 200 without a valid token')
  })

  it('a connection dropped before any answer is "network", with the fetch error as cause', async () => {
    handler = (request) => request.socket.destroy()
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'network', status: undefined, retryAfter: undefined })
    expect(error.cause).toBeInstanceOf(TypeError)
    expect(error.message).toBe('refresh failed: got no response')
  })

  it('a connection dropped in the middle of the body is "network"', async () => {
    handler = (_, response) => {
      response.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' })
      response.write('{"accessToken":"acc', () => response.socket?.destroy())
    }
    const error = await failure(refresh())
    expect(error).toMatchObject({ kind: 'network', status: 200 })
    expect(error.cause).toBeDefined()
  })

  it('a refused connection is "network"', async () => {
    const closed = createServer()
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
    const port = (closed.address() as AddressInfo).port
    await new Promise((resolve) => closed.close(resolve))
    const error = await failure(make(`http://127.0.0.1:${port}${path}`))
    expect(error).toMatchObject({ kind: 'network', status: undefined })
  })

  it('a hanging server is "timeout" once the context signal aborts, with the abort as cause', async () => {
    let received!: () => void
    const arrived = new Promise<void>((resolve) => {
      received = resolve
    })
    handler = () => received() // never answers
    const controller = new AbortController()
    const pending = failure(refresh(), context({ signal: controller.signal }))
    await arrived
    controller.abort()
    const error = await pending
    expect(error).toMatchObject({ kind: 'timeout', status: undefined })
    expect((error.cause as Error).name).toBe('AbortError')
    expect(error.message).toBe('refresh failed: timed out')
  })

  it('a signal that aborts while the body is read is "timeout"', async () => {
    handler = (_, response) => {
      response.writeHead(200, { 'content-type': 'application/json' })
      response.write('{"accessToken":') // the rest never comes
    }
    const controller = new AbortController()
    // abort exactly between the headers and the body, through the fetch the factory looks up
    const realFetch = globalThis.fetch
    vi.stubGlobal('fetch', async (input: string | URL | Request, init?: RequestInit) => {
      const response = await realFetch(input, init)
      controller.abort()
      return response
    })
    const error = await failure(refresh(), context({ signal: controller.signal }))
    expect(error).toMatchObject({ kind: 'timeout', status: 200 })
    expect((error.cause as Error).name).toBe('AbortError')
  })

  it('a signal already aborted is "timeout" and sends nothing', async () => {
    answer(200, { accessToken: 'access-2' })
    const error = await failure(refresh(), context({ signal: AbortSignal.abort() }))
    expect(error.kind).toBe('timeout')
    expect(requests).toHaveLength(0)
  })

  it('a 500 whose body holds token-looking strings does not leak them into the message', async () => {
    const jwt =
      'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIiwiZXhwIjoxNzAwMDAwMDAwfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk'
    const refreshToken = 'rt_9f8e7d6c5b4a39281706f5e4d3c2b1a0'
    handler = (_, response) =>
      response.writeHead(500).end(`upstream failed for ${refreshToken}, access ${jwt}`)
    const plain = await failure(refresh(), context({ refreshToken }))
    expect(plain.message).toBe('refresh failed: answered 500')

    answer(500, {
      error: 'server_error',
      error_description: `could not rotate ${refreshToken} for ${jwt}`,
      access_token: jwt,
    })
    const json = await failure(refresh(), context({ refreshToken }))
    expect(json.kind).toBe('server')
    expect(json.message).toBe('refresh failed: answered 500 (server_error)')
    for (const error of [plain, json]) {
      expect(error.message).not.toContain(refreshToken)
      expect(error.message).not.toContain('eyJ')
      expect(JSON.stringify(error)).not.toContain(refreshToken)
    }
  })

  it('leaves the query string and user:password of the url out of messages', async () => {
    handler = (request) => request.socket.destroy()
    const url = new URL(`${origin}${path}?api_key=secret-key#frag`)
    url.username = 'user'
    url.password = 'password-1'
    const error = await failure(make(url.href))
    expect(error.message).toBe('refresh failed: got no response')
  })
})

describe('custom fetch failures', () => {
  it.each([
    [
      'throws synchronously',
      () => {
        throw new TypeError('fetch is not a function')
      },
    ],
    ['rejects with a non-Error', () => Promise.reject('offline')],
  ])('a fetch that %s is "network" with the cause kept', async (_, broken) => {
    const refresh = jsonRefresh('https://auth.example/refresh/token', { fetch: broken as typeof fetch })
    const error = await failure(refresh)
    expect(error.kind).toBe('network')
    expect(error.cause).toBeDefined()
  })
})
