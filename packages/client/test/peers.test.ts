import { createTokenManager, isTokenflowError, jsonRefresh, RefreshError } from '@tokenflow/client'
import { createAuthFetch } from '@tokenflow/client/fetch'
import ky from 'ky'
import { ofetch } from 'ofetch'
import createClient from 'openapi-fetch'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { createTestClock, startTestAuthServer, type TestAuthServer } from './helpers/auth-server.js'

/**
 * createAuthFetch as the custom fetch of the real ky, ofetch and openapi-fetch (the versions installed at the
 * root), against the local test auth server: each library must send through it, so a burst after expiry
 * refreshes once, and a JSON body survives the retry.
 */

const TTL = 60_000

let server: TestAuthServer
let serverClock: ReturnType<typeof createTestClock>

beforeEach(async () => {
  serverClock = createTestClock()
  server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
})
afterEach(() => server.close())

interface Echo {
  sub: string
  tokenNumber: number
  body: string
  contentType: string
}

interface Item {
  name: string
  list: Array<number | { nested: boolean }>
}

/** The two routes of the test server the openapi-fetch client uses, written by hand in openapi-typescript's shape. */
interface paths {
  '/api/data': {
    get: {
      parameters: { header: { 'x-req-id': string } }
      responses: { 200: { content: { 'application/json': Echo } } }
    }
  }
  '/api/items': {
    post: {
      parameters: { header: { 'x-req-id': string } }
      requestBody: { content: { 'application/json': Item } }
      responses: { 200: { content: { 'application/json': Echo } } }
    }
  }
}

/** What each test needs of a library: a GET and a JSON POST through it, answering the echoed body. */
interface Peer {
  name: string
  connect(authFetch: typeof fetch): {
    get(id: string): Promise<Echo>
    post(id: string, item: Item): Promise<Echo>
  }
}

const peers: Peer[] = [
  {
    name: 'ky',
    connect(authFetch) {
      const api = ky.create({ prefixUrl: server.url, fetch: authFetch })
      return {
        get: (id) => api.get('api/data', { headers: { 'x-req-id': id } }).json<Echo>(),
        post: (id, item) => api.post('api/items', { json: item, headers: { 'x-req-id': id } }).json<Echo>(),
      }
    },
  },
  {
    name: 'ofetch',
    connect(authFetch) {
      // create(defaults, globalOptions): the fetch goes in the second argument
      const api = ofetch.create({ baseURL: server.url }, { fetch: authFetch })
      return {
        get: (id) => api<Echo>('/api/data', { headers: { 'x-req-id': id } }),
        post: (id, item) =>
          api<Echo>('/api/items', { method: 'POST', body: item, headers: { 'x-req-id': id } }),
      }
    },
  },
  {
    name: 'openapi-fetch',
    connect(authFetch) {
      const client = createClient<paths>({ baseUrl: server.url, fetch: authFetch })
      const ok = ({ data, response }: { data?: Echo; response: Response }): Echo => {
        expect(response.status).toBe(200)
        return data!
      }
      return {
        get: async (id) => ok(await client.GET('/api/data', { params: { header: { 'x-req-id': id } } })),
        post: async (id, item) =>
          ok(await client.POST('/api/items', { params: { header: { 'x-req-id': id } }, body: item })),
      }
    },
  },
]

async function loggedIn() {
  const manager = createTokenManager({
    refresh: jsonRefresh(`${server.url}/refresh/token`),
    lock: false,
    channel: false,
  })
  const tokens = server.login('alice')
  await manager.setTokens(tokens)
  return { authFetch: createAuthFetch(manager), first: server.claims(tokens.accessToken)!.n }
}

const expireOnServer = () => serverClock.advance(TTL + 1_000)
const ids = (prefix: string, count: number) => Array.from({ length: count }, (_, i) => `${prefix}${i}`)

describe.each(peers)('createAuthFetch as the fetch of $name', (peer) => {
  it('30 concurrent requests after expiry: 1 refresh, 30 ok', async () => {
    const { authFetch, first } = await loggedIn()
    const api = peer.connect(authFetch)
    expireOnServer()
    const echoes = await Promise.all(ids('c', 30).map((id) => api.get(id)))
    // every one went out with the expired token, got its 401, and was retried with the one new token
    expect(echoes.map(({ tokenNumber }) => tokenNumber)).toEqual(Array(30).fill(first + 1))
    expect(ids('c', 30).map((id) => server.hits(id))).toEqual(Array(30).fill(2))
    expect(server.counters.unauthorized).toBe(30)
    expect(server.counters.refreshAttempts).toBe(1)
    expect(server.counters.refreshes).toBe(1)
  })

  it('retries a POST with a JSON body intact', async () => {
    const { authFetch, first } = await loggedIn()
    const api = peer.connect(authFetch)
    expireOnServer()
    const item: Item = { name: 'ünïcode & "quotes" 🔑', list: [1, { nested: true }] }
    const echo = await api.post('post', item)
    expect(echo.tokenNumber).toBe(first + 1)
    const tries = server.requests.filter(({ id }) => id === 'post')
    expect(tries.map(({ method, status }) => [method, status])).toEqual([
      ['POST', 401],
      ['POST', 200],
    ])
    for (const { body, contentType } of tries) {
      expect(contentType).toMatch(/^application\/json/)
      expect(JSON.parse(body)).toEqual(item)
    }
    // byte for byte: the retry is the very body of the first try
    expect(tries[1]!.body).toBe(tries[0]!.body)
    expect(server.counters.refreshes).toBe(1)
  })
})

/**
 * ky and ofetch retry a GET whose fetch threw, whatever it threw: a RefreshError then goes out again, without a
 * token after a rejected refresh (the app gets ky's HTTPError 401 instead), or with the refused token after a
 * transient failure (a second and a third refresh). Told not to retry tokenflow's errors, they leave one
 * refresh, one send and the RefreshError itself. (Proposed README wording for both libraries.)
 */
describe('ky and ofetch told not to retry a RefreshError', () => {
  const clients = [
    {
      name: 'ky',
      get(authFetch: typeof fetch) {
        const api = ky.create({
          prefixUrl: server.url,
          fetch: authFetch,
          retry: { shouldRetry: ({ error }) => (isTokenflowError(error) ? false : undefined) },
        })
        return api.get('api/data', { headers: { 'x-req-id': 'get' } }).json()
      },
    },
    {
      name: 'ofetch',
      get(authFetch: typeof fetch) {
        const api = ofetch.create(
          {
            baseURL: server.url,
            onRequestError({ error }) {
              // thrown from this hook, the error skips ofetch's retry and reaches the app as it is
              if (isTokenflowError(error)) throw error
            },
          },
          { fetch: authFetch },
        )
        return api('/api/data', { headers: { 'x-req-id': 'get' } })
      },
    },
  ]
  for (const { name, get } of clients)
    for (const [mode, kind] of [
      [401, 'rejected'],
      [500, 'server'],
    ] as const)
      it(`${name}: a refresh failing with ${mode} rejects with the RefreshError (${kind}), one refresh, one send`, async () => {
        const manager = createTokenManager({
          refresh: jsonRefresh(`${server.url}/refresh/token`),
          lock: false,
          channel: false,
          retry: false,
        })
        await manager.setTokens(server.login('alice'))
        expireOnServer()
        server.refreshMode = mode
        const error = await get(createAuthFetch(manager)).catch((reason: unknown) => reason)
        expect(error).toBeInstanceOf(RefreshError)
        expect(error).toMatchObject({ kind })
        expect(server.hits('get')).toBe(1)
        expect(server.counters.refreshAttempts).toBe(1)
      })
})
