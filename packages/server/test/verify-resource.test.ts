/**
 * The verifier as a resource server meets it: a real `createAuthServer` issues tokens and serves its
 * JWKS on 127.0.0.1 (behind a relay that can be made to fail), and a protected API checks them with
 * `verifier.fastify` or `verifier.express`. The JWKS cache and cooldown run on `Date.now`, which the
 * tests move with fake `Date` only (timers stay real): no assertion depends on how long anything takes.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { type AddressInfo, connect } from 'node:net'
import {
  type AccessTokenClaims,
  type AuthenticateFunction,
  type AuthServer,
  type AuthServerOptions,
  createAuthServer,
  createKeyring,
  createSqliteStore,
} from '@tokenflow/server'
import { createVerifier, type Verifier, type VerifierOptions } from '@tokenflow/server/verify'
import Fastify, { type FastifyInstance } from 'fastify'
import { decodeProtectedHeader } from 'jose'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { type HttpReply, PASSWORD, postJson, send, sendLines } from './helpers/http.js'

const ISSUER = 'http://127.0.0.1'
const AUDIENCE = 'https://api.tokenflow.test'
const START = 1_800_000_000_000

const authenticate: AuthenticateFunction = async ({ username, password }) =>
  username === 'ada' && password === PASSWORD ? { userId: 'ada' } : null

type JwksMode = 'up' | 'error' | 'garbage' | 'redirect' | 'hang'

interface World {
  auth: AuthServer
  /** the auth server's origin */
  origin: string
  /** the JWKS URL the verifier fetches: a relay to the auth server's JWKS */
  jwksUrl: string
  /** the protected API (Fastify, `verifier.fastify`) */
  api: string
  verifier: Verifier
  /** fetches of the JWKS the verifier made */
  hits(): number
  setMode(mode: JwksMode): void
  /** moves the clock of the auth server, the verifier and the JWKS cache */
  advance(ms: number): void
  login(): Promise<string>
  close(): Promise<void>
}

function listen(server: Server): Promise<string> {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`))
  })
}

async function startWorld(
  options: {
    verifier?: Partial<VerifierOptions>
    issuer?: string
    audience?: string | string[]
    keys?: AuthServerOptions['keys']
  } = {},
): Promise<World> {
  let time = START
  vi.setSystemTime(time)
  const auth = createAuthServer({
    issuer: options.issuer ?? ISSUER,
    audience: options.audience ?? AUDIENCE,
    clientId: 'web',
    store: createSqliteStore({ filename: ':memory:' }),
    rateLimit: false,
    pruneInterval: 0,
    authenticate,
    now: () => time,
    ...(options.keys ? { keys: options.keys } : {}),
  })
  const origin = await auth.listen({ port: 0, host: '127.0.0.1' })
  let mode: JwksMode = 'up'
  let hits = 0
  const relay = createServer((_req, res) => {
    hits++
    if (mode === 'hang') return // answers nothing; closeAllConnections() ends it
    if (mode === 'error') return void res.writeHead(500).end()
    if (mode === 'garbage') return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html>')
    if (mode === 'redirect')
      return void res.writeHead(302, { location: `${origin}/.well-known/jwks.json` }).end()
    fetch(`${origin}/.well-known/jwks.json`).then(
      async (answer) =>
        res.writeHead(answer.status, { 'content-type': 'application/json' }).end(await answer.text()),
      () => res.writeHead(502).end(),
    )
  })
  const jwksUrl = `${await listen(relay)}/.well-known/jwks.json`
  const verifier = createVerifier({
    jwks: jwksUrl,
    issuer: ISSUER,
    audience: AUDIENCE,
    now: () => time,
    ...options.verifier,
  })
  const app: FastifyInstance = Fastify()
  app.get('/me', { preHandler: verifier.fastify }, async (request) => ({ auth: request.auth }))
  const api = await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    auth,
    origin,
    jwksUrl,
    api,
    verifier,
    hits: () => hits,
    setMode: (next) => {
      mode = next
    },
    advance: (ms) => {
      time += ms
      vi.setSystemTime(time)
    },
    login: async () =>
      (await postJson(origin, '/auth/login', { username: 'ada', password: PASSWORD })).json().accessToken,
    close: async () => {
      await app.close()
      relay.closeAllConnections()
      await new Promise((resolve) => relay.close(resolve))
      await auth.close()
    },
  }
}

/** a well-formed token of the auth server re-headed with another kid: looks valid, no key has it */
function withKid(token: string, kid: string): string {
  const [, payload, signature] = token.split('.')
  const header = Buffer.from(JSON.stringify({ ...decodeProtectedHeader(token), kid })).toString('base64url')
  return `${header}.${payload}.${signature}`
}

const me = (api: string, token: string | undefined, path = '/me') =>
  send(`${api}${path}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } })

/** Writes `request` on a raw socket to 127.0.0.1 and answers the status line of the reply. */
function statusLine(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let reply = ''
    // not half-closed: a FIN while the middleware verifies would make Node drop the answer
    const socket = connect(port, '127.0.0.1', () => socket.write(request))
    socket.on('data', (chunk) => {
      reply += chunk
      if (reply.includes('\r\n')) socket.destroy()
    })
    socket.on('close', () => resolve(reply.split('\r\n')[0]!))
    socket.on('error', reject)
  })
}

/** a bare `node:http` server whose only handler is `verifier.express`, answering `req.auth` on success */
async function expressApi(
  verifier: Verifier,
  maxHeadersCount?: number,
): Promise<{ origin: string; close(): Promise<void> }> {
  const server = createServer((req: IncomingMessage & { auth?: AccessTokenClaims }, res: ServerResponse) => {
    verifier.express(req, res, (error) => {
      if (error !== undefined) return void res.writeHead(500).end('next(error)')
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(req.auth))
    })
  })
  if (maxHeadersCount !== undefined) server.maxHeadersCount = maxHeadersCount
  return {
    origin: await listen(server),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  }
}

/**
 * The `Retry-After` of a 503 ERR_JWKS_UNAVAILABLE answer, after checking the rest of it: delay-seconds
 * (RFC 9110 section 10.2.3), so a whole number of at least 1.
 */
function retryAfter(reply: HttpReply): number {
  expect(reply.status).toBe(503)
  expect(reply.json()).toEqual({
    error: 'temporarily_unavailable',
    error_description: 'the signing keys are unavailable, try again later',
    code: 'ERR_JWKS_UNAVAILABLE',
  })
  expect(reply.headers.get('www-authenticate')).toBeNull()
  expect(reply.headers.get('cache-control')).toBe('no-store')
  const value = reply.headers.get('retry-after')
  expect(value).toEqual(expect.stringMatching(/^[1-9][0-9]*$/))
  return Number(value)
}

let world: World | undefined

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date'] })
})
afterEach(async () => {
  await world?.close()
  world = undefined
  vi.useRealTimers()
})

describe('JWKS outage and unknown kids', () => {
  it('fetches the failing JWKS at most once per cooldown for a flood of unknown kids, and valid tokens keep passing', async () => {
    world = await startWorld()
    const token = await world.login()
    expect((await me(world.api, token)).status).toBe(200)
    expect(world.hits()).toBe(1)

    world.setMode('error')
    world.advance(31_000) // past the cooldown of the first fetch
    for (let index = 0; index < 10; index++) {
      const reply = await me(world.api, withKid(token, `random-${index}`))
      // the keys cannot be fetched: the token is not judged, and the answer says to try again
      expect(reply.status).toBe(503)
      expect(reply.json().code).toBe('ERR_JWKS_UNAVAILABLE')
      // the cached keys still serve every token whose kid they hold
      expect((await me(world.api, token)).status).toBe(200)
    }
    expect(world.hits()).toBe(2)

    // once the cooldown of that failed attempt is over, the next unknown kid may look again
    world.setMode('up')
    world.advance(31_000)
    const reply = await me(world.api, withKid(token, 'random-after'))
    expect(reply.status).toBe(401)
    expect(reply.json().code).toBe('ERR_JWKS_NO_MATCHING_KEY')
    expect(world.hits()).toBe(3)
  })

  it('fetches a healthy JWKS at most once per cooldown for a flood of unknown kids', async () => {
    world = await startWorld()
    const token = await world.login()
    expect((await me(world.api, token)).status).toBe(200)
    world.advance(31_000)
    for (let index = 0; index < 10; index++) {
      const reply = await me(world.api, withKid(token, `random-${index}`))
      expect(reply.status).toBe(401)
      expect(reply.json().code).toBe('ERR_JWKS_NO_MATCHING_KEY')
    }
    expect(world.hits()).toBe(2)
  })

  it.each<JwksMode>(['error', 'garbage', 'redirect', 'hang'])(
    'answers 503 ERR_JWKS_UNAVAILABLE while the JWKS endpoint answers %s, and recovers without a restart',
    async (mode) => {
      world = await startWorld({ verifier: { timeoutDuration: 200 } })
      const token = await world.login()
      world.setMode(mode)
      const down = await me(world.api, token)
      expect(down.status).toBe(503)
      expect(down.json()).toEqual({
        error: 'temporarily_unavailable',
        error_description: 'the signing keys are unavailable, try again later',
        code: 'ERR_JWKS_UNAVAILABLE',
      })
      expect(down.headers.get('www-authenticate')).toBeNull()
      expect(down.headers.get('cache-control')).toBe('no-store')
      // the failure holds off the next fetch for 1 s (the backoff)
      expect(down.headers.get('retry-after')).toBe('1')
      world.setMode('up')
      world.advance(1_000)
      expect((await me(world.api, token)).status).toBe(200)
    },
  )
})

describe('Retry-After on the 503 of an unavailable JWKS', () => {
  it('a 503 for an unavailable JWKS says when to retry', async () => {
    world = await startWorld()
    const express = await expressApi(world.verifier)
    try {
      const token = await world.login()
      expect((await me(world.api, token)).status).toBe(200)
      world.setMode('error')
      world.advance(31_000) // past the cooldown of the first fetch
      const attempt = START + 31_000

      // this token's kid sends the verifier to the failing JWKS: no unknown kid fetches again for 30 s
      expect(retryAfter(await me(world.api, withKid(token, 'random-0')))).toBe(30)
      expect(world.hits()).toBe(2)
      // during that cooldown, both middlewares count down to its end, in whole seconds rounded up
      for (const [at, seconds] of [
        [0, 30],
        [12_300, 18],
        [29_000, 1],
        [29_999, 1],
      ] as const) {
        world.advance(attempt + at - Date.now())
        expect(retryAfter(await me(world.api, withKid(token, `fastify-${at}`)))).toBe(seconds)
        expect(retryAfter(await me(express.origin, withKid(token, `express-${at}`)))).toBe(seconds)
      }
      expect(world.hits()).toBe(2)
      // known keys pass meanwhile, with no Retry-After
      expect((await me(world.api, token)).status).toBe(200)
      expect((await me(express.origin, token)).headers.get('retry-after')).toBeNull()

      // the cooldown is over: the next unknown kid fetches, fails, and starts another one
      world.advance(1)
      expect(retryAfter(await me(express.origin, withKid(token, 'random-1')))).toBe(30)
      expect(world.hits()).toBe(3)
    } finally {
      await express.close()
    }
  })

  it('a 503 before the JWKS was ever fetched says to retry in 1 second, as the first request after that second fetches again', async () => {
    world = await startWorld({ verifier: { cooldownDuration: 60_000 } })
    const express = await expressApi(world.verifier)
    try {
      const token = await world.login()
      world.setMode('error')
      expect(retryAfter(await me(world.api, token))).toBe(1)
      // within that second no fetch: answered at once
      expect(retryAfter(await me(express.origin, token))).toBe(1)
      expect(world.hits()).toBe(1)
      world.setMode('up')
      world.advance(1_000)
      expect((await me(express.origin, token)).status).toBe(200)
      expect((await me(world.api, token)).status).toBe(200)
    } finally {
      await express.close()
    }
  })
})

describe('key rotation end to end', () => {
  it('accepts the new key from the moment it signs and the old key until its tokens expire', async () => {
    world = await startWorld()
    const before = await world.login()
    expect((await me(world.api, before)).status).toBe(200)
    const { kid, activatesAt } = await world.auth.tokenflow.rotateKeys()

    world.advance(activatesAt - 1 - START)
    const lastOld = await world.login()
    expect(decodeProtectedHeader(lastOld).kid).not.toBe(kid)

    world.advance(1)
    const firstNew = await world.login()
    expect(decodeProtectedHeader(firstNew).kid).toBe(kid)
    const reply = await me(world.api, firstNew)
    expect(reply.status).toBe(200)
    expect((reply.json().auth as AccessTokenClaims).sub).toBe('ada')
    expect((await me(world.api, lastOld)).status).toBe(200)

    // the last token of the old key lives until its exp plus the 30 s tolerance (jose compares whole
    // seconds: expired once exp <= now - 30), on a JWKS refetched once the 10-minute cache is over
    const { exp } = JSON.parse(Buffer.from(lastOld.split('.')[1] ?? '', 'base64url').toString()) as {
      exp: number
    }
    world.advance((exp + 29) * 1000 + 999 - activatesAt)
    expect((await me(world.api, lastOld)).status).toBe(200)
    expect(world.hits()).toBe(3)
    world.advance(1)
    const expired = await me(world.api, lastOld)
    expect(expired.status).toBe(401)
    expect(expired.json().code).toBe('ERR_JWT_EXPIRED')
  })
})

describe('every signing algorithm of the server', () => {
  it.each(['ES256', 'ES384', 'RS256', 'PS256'] as const)(
    'a verifier with the default algorithms accepts tokens signed with %s',
    async (alg) => {
      world = await startWorld({ keys: { alg } })
      const token = await world.login()
      expect(decodeProtectedHeader(token).alg).toBe(alg)
      const reply = await me(world.api, token)
      expect({ status: reply.status, code: reply.json().code }).toEqual({ status: 200, code: undefined })
    },
  )

  it('a rotation to another algorithm keeps both keys verifying with the default algorithms', async () => {
    world = await startWorld()
    const before = await world.login()
    // as `tokenflow-server keys rotate --alg PS256` does: a keyring of that algorithm over the same store
    const keyring = createKeyring({ store: world.auth.tokenflow.store, alg: 'PS256', now: () => Date.now() })
    const { activatesAt } = await keyring.rotateKeys()
    world.advance(activatesAt - Date.now())
    const after = await world.login()
    expect(decodeProtectedHeader(after).alg).toBe('PS256')
    expect((await me(world.api, after)).status).toBe(200)
    expect((await me(world.api, before)).status).toBe(200)
  })
})

describe('the middlewares', () => {
  it('refuses a token in the query string (RFC 6750 section 2.3) and a malformed header, with a challenge', async () => {
    world = await startWorld()
    const token = await world.login()
    for (const reply of [
      await send(`${world.api}/me?access_token=${token}`),
      await send(`${world.api}/me`, { headers: { authorization: token } }),
      await send(`${world.api}/me`, { headers: { authorization: `Basic ${token}` } }),
      await send(`${world.api}/me`, { headers: { authorization: 'Bearer ' } }),
    ]) {
      expect(reply.status).toBe(401)
      expect(reply.json().code).toBe('ERR_TOKEN_MISSING')
      expect(reply.headers.get('www-authenticate')).toBe(
        'Bearer error="invalid_token", error_description="the access token is missing"',
      )
    }
  })

  it('express on node:http: sets req.auth for the next handler and answers a refused token itself, in JSON', async () => {
    world = await startWorld()
    const token = await world.login()
    const { verifier } = world
    const server = createServer(
      (req: IncomingMessage & { auth?: AccessTokenClaims }, res: ServerResponse) => {
        verifier.express(req, res, (error) => {
          if (error !== undefined) return void res.writeHead(500).end('next(error)')
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(req.auth))
        })
      },
    )
    const origin = await listen(server)
    try {
      const ok = await me(origin, token, '/')
      expect(ok.status).toBe(200)
      expect(ok.json()).toMatchObject({ sub: 'ada', iss: ISSUER, aud: AUDIENCE, client_id: 'web' })
      const refused = await me(origin, withKid(token, 'x'), '/')
      expect(refused.status).toBe(401)
      expect(refused.headers.get('content-type')).toBe('application/json; charset=utf-8')
      expect(refused.json().code).toBe('ERR_JWKS_NO_MATCHING_KEY')
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  })
})

describe('two Authorization headers', () => {
  // Node keeps the first and drops the other: a proxy in front that reads the last would judge another
  // credential than the API. Joined as RFC 9110 section 5.3 combines them, no token parses
  /** Runs `check` against the world's Fastify API (`verifier.fastify`) and a node:http one (`verifier.express`). */
  const eachMiddleware = async (check: (api: string, path: string) => Promise<void>) => {
    const express = await expressApi(world!.verifier)
    try {
      await check(world!.api, '/me')
      await check(express.origin, '/')
    } finally {
      await express.close()
    }
  }

  it('are refused as malformed by both middlewares, whichever comes first', async () => {
    world = await startWorld()
    const token = await world.login()
    await eachMiddleware(async (api, path) => {
      const once = await sendLines(`${api}${path}`, { authorization: `Bearer ${token}` })
      expect(once.status).toBe(200)
      for (const lines of [
        [`Bearer ${token}`, 'Bearer junk'],
        ['Bearer junk', `Bearer ${token}`],
        [`Bearer ${token}`, `Bearer ${token}`],
      ]) {
        const reply = await sendLines(`${api}${path}`, { authorization: lines })
        expect(reply.status).toBe(401)
        expect(reply.json()).toMatchObject({ error: 'invalid_token', code: 'ERR_JWS_INVALID' })
        expect(reply.headers.get('www-authenticate')).toMatch(/^Bearer error="invalid_token"/)
      }
    })
  })

  it('are refused when 1,100 header lines stand between them (Node keeps the first 1,000 lines only)', async () => {
    world = await startWorld()
    const token = await world.login()
    await eachMiddleware(async (api, path) => {
      const { port } = new URL(api)
      const head = (padding: number, second: boolean) =>
        `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n${'a: b\r\n'.repeat(padding)}` +
        `${second ? 'Authorization: Bearer junk\r\n' : ''}Connection: close\r\n\r\n`
      // the padding alone is no reason to refuse
      expect(await statusLine(Number(port), head(900, false))).toBe('HTTP/1.1 200 OK')
      expect(await statusLine(Number(port), head(10, true))).toBe('HTTP/1.1 401 Unauthorized')
      expect(await statusLine(Number(port), head(1_100, true))).toBe('HTTP/1.1 401 Unauthorized')
    })
  })

  it("are refused past a lowered maxHeadersCount too (the server's own cut)", async () => {
    world = await startWorld()
    const token = await world.login()
    const express = await expressApi(world.verifier, 100)
    try {
      const { port } = new URL(express.origin)
      const head = (padding: number) =>
        `GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n${'a: b\r\n'.repeat(padding)}` +
        'Authorization: Bearer junk\r\nConnection: close\r\n\r\n'
      expect(await statusLine(Number(port), head(300))).toBe('HTTP/1.1 401 Unauthorized')
    } finally {
      await express.close()
    }
  })

  it("are refused by the auth server's own Bearer routes and by its token and revocation endpoints", async () => {
    world = await startWorld()
    const token = await world.login()
    expect(
      (await sendLines(`${world.origin}/auth/sessions`, { authorization: `Bearer ${token}` })).status,
    ).toBe(200)
    const twice = await sendLines(`${world.origin}/auth/sessions`, {
      authorization: [`Bearer ${token}`, 'Bearer junk'],
    })
    expect(twice.status).toBe(401)
    expect(twice.json()).toMatchObject({ error: 'invalid_token', code: 'ERR_JWS_INVALID' })
    // the token endpoint: which line names the client would depend on who reads it. Refused whatever the
    // order, as a repeated parameter is (RFC 6749 section 3.2)
    const basic = (client: string) => `Basic ${Buffer.from(`${client}:`).toString('base64')}`
    for (const lines of [
      [basic('web'), basic('web')],
      ['Bearer junk', basic('evil')],
      [basic('evil'), 'Bearer junk'],
    ]) {
      for (const [path, form] of [
        ['/oauth/token', 'grant_type=refresh_token&refresh_token=x&client_id=web'],
        ['/oauth/revoke', 'token=x&client_id=web'],
      ] as const) {
        const reply = await sendLines(
          `${world.origin}${path}`,
          { authorization: lines, 'content-type': 'application/x-www-form-urlencoded' },
          'POST',
          form,
        )
        expect(reply.status, path).toBe(400)
        expect(reply.json()).toEqual({
          error: 'invalid_request',
          error_description: 'the "authorization" header is repeated',
          code: 'ERR_INVALID_REQUEST',
        })
      }
    }
  })
})

describe('claims of real tokens', () => {
  it('accepts a token whose aud list holds one of the audiences the API accepts', async () => {
    world = await startWorld({
      audience: ['https://other.tokenflow.test', AUDIENCE],
      verifier: { audience: ['https://third.tokenflow.test', AUDIENCE] },
    })
    const reply = await me(world.api, await world.login())
    expect(reply.status).toBe(200)
    expect(reply.json().auth.aud).toEqual(['https://other.tokenflow.test', AUDIENCE])
  })

  it.each([
    ['an audience the token does not name', { audience: 'https://other.tokenflow.test' }, 'aud'],
    ['the issuer spelled with a trailing slash', { issuer: `${ISSUER}/` }, 'iss'],
  ] as const)('refuses a token for %s, naming the claim', async (_name, verifier, claim) => {
    world = await startWorld({ verifier })
    const reply = await me(world.api, await world.login())
    expect(reply.status).toBe(401)
    expect(reply.json()).toEqual({
      error: 'invalid_token',
      error_description: `the access token ${claim} claim is invalid`,
      code: 'ERR_JWT_CLAIM_VALIDATION_FAILED',
    })
  })

  it('refuses the token of another issuer, also when its header borrows a trusted kid', async () => {
    world = await startWorld()
    const trustedKid = decodeProtectedHeader(await world.login()).kid as string
    const other = createAuthServer({
      issuer: ISSUER,
      audience: AUDIENCE,
      clientId: 'web',
      store: createSqliteStore({ filename: ':memory:' }),
      rateLimit: false,
      pruneInterval: 0,
      authenticate,
    })
    const otherOrigin = await other.listen({ port: 0, host: '127.0.0.1' })
    try {
      const foreign = (
        await postJson(otherOrigin, '/auth/login', { username: 'ada', password: PASSWORD })
      ).json().accessToken as string
      const unknown = await me(world.api, foreign)
      expect(unknown.status).toBe(401)
      expect(unknown.json().code).toBe('ERR_JWKS_NO_MATCHING_KEY')
      const borrowed = await me(world.api, withKid(foreign, trustedKid))
      expect(borrowed.status).toBe(401)
      expect(borrowed.json().code).toBe('ERR_JWS_SIGNATURE_VERIFICATION_FAILED')
    } finally {
      await other.close()
    }
  })
})
