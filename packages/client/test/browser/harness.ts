/**
 * What the browser suite runs on: the real @tokenflow/server (1 s access tokens, rotation, no reuse grace)
 * on 127.0.0.1, which also serves the test page, the page script bundled from the client's sources, and a
 * protected `GET /api/data`; and Debian's Chromium driven by playwright-core (never a downloaded browser).
 */
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { type AuthServer, createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import { createVerifier, type Verifier } from '@tokenflow/server/verify'
import { build } from 'esbuild'
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import type { PageSetup, RecordedEvent, RequestResult } from './page.js'

/** Where Debian puts Chromium; `TOKENFLOW_CHROMIUM` points elsewhere (or nowhere, to try the skip path). */
export const CHROMIUM_PATH = process.env.TOKENFLOW_CHROMIUM ?? '/usr/bin/chromium'
export const hasChromium = existsSync(CHROMIUM_PATH)

export const USERNAME = 'ada'
/** a second user, for tests where two tabs log in as different people */
export const OTHER_USERNAME = 'grace'
export const PASSWORD = 'correct horse battery staple'
const ISSUER = 'https://tokenflow.test'
const AUDIENCE = 'https://tokenflow.test/api'

/** Bundles page.ts for the browser from the client's TypeScript sources. */
export async function bundlePage(): Promise<string> {
  const result = await build({
    entryPoints: [fileURLToPath(new URL('./page.ts', import.meta.url))],
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    target: 'chrome120',
    // `@tokenflow/client` resolves to packages/client/src, so the tabs run the code under test
    conditions: ['@tokenflow/source'],
    logLevel: 'silent',
  })
  return result.outputFiles[0]!.text
}

/** What the server saw since the last `reset()`. */
export interface ServerCounts {
  logins: number
  /** POST /refresh/token requests that arrived, answered or not */
  refreshRequests: number
  /** rotations (the issuer's `refreshed` events outside the grace window) */
  refreshes: number
  graceReplays: number
  /** old refresh tokens presented again: each one revoked its session */
  reuseDetected: number
  apiOk: number
  apiUnauthorized: number
}

/** A refresh request the server holds until `release()` (or `close()`). */
export interface HeldRefresh {
  /** resolves when the request has arrived */
  arrived: Promise<void>
  /**
   * 'unavailable' (the default) answers 503 without rotating anything; 'pass' hands the request on to the
   * issuer, as if the network had just been slow
   */
  release(outcome?: 'unavailable' | 'pass'): void
}

export interface BrowserTestServer {
  /** `http://127.0.0.1:<port>` */
  url: string
  counts(): ServerCounts
  /** `jti` of the access token each 200 from /api/data was sent with, in order */
  apiTokens(): string[]
  /** `sid` (session) of each rotation, in order */
  refreshedSessions(): string[]
  /** holds the next POST /refresh/token */
  holdNextRefresh(): HeldRefresh
  reset(): void
  close(): Promise<void>
}

const zero = (): ServerCounts => ({
  logins: 0,
  refreshRequests: 0,
  refreshes: 0,
  graceReplays: 0,
  reuseDetected: 0,
  apiOk: 0,
  apiUnauthorized: 0,
})

/** How the test server runs, beyond the page script. */
export interface ServerSetup {
  /** the server's cookie mode (`cookie: true`): the refresh token lives in an HttpOnly cookie; default false */
  cookie?: boolean
  /** access-token lifetime in ms; default 1_000 */
  accessTokenTtl?: number
}

/**
 * Starts the real auth server on 127.0.0.1 with 1 s access tokens (unless told otherwise) and no reuse grace,
 * plus the page, its script and `GET /api/data`, which answers the `jti` of the access token it was sent with.
 */
export async function startBrowserTestServer({
  script,
  cookie = false,
  accessTokenTtl = 1_000,
}: { script: string } & ServerSetup): Promise<BrowserTestServer> {
  let counts = zero()
  let apiTokens: string[] = []
  let refreshedSessions: string[] = []
  type Outcome = 'unavailable' | 'pass'
  const holds: { arrive(): void; released: Promise<Outcome> }[] = []
  const releases = new Set<(outcome: Outcome) => void>()

  const store: TokenStore = createSqliteStore({ filename: ':memory:' })
  const app: AuthServer = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    store,
    accessTokenTtl,
    cookie,
    // any second use of a rotated refresh token, even a millisecond later, revokes the session
    reuseGrace: 0,
    rateLimit: false,
    onEvent(event) {
      if (event.type === 'login') counts.logins++
      if (event.type === 'reuseDetected') counts.reuseDetected++
      if (event.type === 'refreshed' && event.grace) counts.graceReplays++
      if (event.type === 'refreshed' && !event.grace) {
        counts.refreshes++
        refreshedSessions.push(event.sessionId)
      }
    },
  })

  app.addHook('onRequest', async (request, reply) => {
    if (request.method !== 'POST' || request.url !== '/refresh/token') return
    counts.refreshRequests++
    const hold = holds.shift()
    if (!hold) return
    hold.arrive()
    if ((await hold.released) === 'pass') return
    // not handed to the issuer: rotating now, with a token another tab has since rotated, would be reuse
    return reply.code(503).send({ error: 'temporarily_unavailable' })
  })

  let verifier: Verifier | undefined
  app.get('/', (_request, reply) =>
    reply
      .header('cache-control', 'no-store')
      .type('text/html')
      .send(
        '<!doctype html><meta charset="utf-8"><title>tokenflow</title><script type="module" src="/page.js"></script>',
      ),
  )
  app.get('/page.js', (_request, reply) =>
    reply.header('cache-control', 'no-store').type('text/javascript').send(script),
  )
  app.get('/api/data', { preHandler: (request, reply) => verifier!.fastify(request, reply) }, (request) => {
    counts.apiOk++
    apiTokens.push(request.auth!.jti)
    return { jti: request.auth!.jti }
  })
  app.addHook('onResponse', async (request, reply) => {
    if (request.url === '/api/data' && reply.statusCode === 401) counts.apiUnauthorized++
  })

  await app.listen({ host: '127.0.0.1', port: 0 })
  await app.tokenflow.issuer.addUser(USERNAME, PASSWORD)
  await app.tokenflow.issuer.addUser(OTHER_USERNAME, PASSWORD)
  verifier = createVerifier({
    jwks: await app.tokenflow.keyring.jwks(),
    issuer: ISSUER,
    audience: AUDIENCE,
    // a burst of 100 requests on a busy machine can outlive a fresh 1 s token while it is in flight; the
    // tests check which token every request carried (its `jti`) instead of relying on the API's clock
    clockTolerance: 10_000,
  })
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : 0

  return {
    url: `http://127.0.0.1:${port}`,
    counts: () => ({ ...counts }),
    apiTokens: () => [...apiTokens],
    refreshedSessions: () => [...refreshedSessions],
    holdNextRefresh() {
      let arrive!: () => void
      let release!: (outcome: Outcome) => void
      const arrived = new Promise<void>((resolve) => {
        arrive = resolve
      })
      const released = new Promise<Outcome>((resolve) => {
        release = resolve
      })
      holds.push({ arrive, released })
      releases.add(release)
      return { arrived, release: (outcome = 'unavailable') => release(outcome) }
    },
    reset() {
      counts = zero()
      apiTokens = []
      refreshedSessions = []
    },
    async close() {
      holds.length = 0
      for (const release of releases) release('unavailable')
      await app.close()
      await store.close()
    },
  }
}

/** Launches Debian's Chromium headless. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-sync',
    ],
  })
}

/** A tab of the test profile, with every uncaught page error it threw. */
export interface Tab {
  page: Page
  errors: Error[]
}

/** Opens a tab on the test page and sets up its manager. Tabs of one context share storage, locks and channels. */
export async function openTab(context: BrowserContext, url: string, setup: PageSetup): Promise<Tab> {
  const page = await context.newPage()
  const errors: Error[] = []
  page.on('pageerror', (error) => errors.push(error))
  await page.goto(url)
  await setUp(page, setup)
  return { page, errors }
}

/** Reloads a tab and sets its manager up again, as an app does on every page load. */
export async function reloadTab(tab: Tab, setup: PageSetup): Promise<void> {
  await tab.page.reload()
  await setUp(tab.page, setup)
}

async function setUp(page: Page, setup: PageSetup): Promise<void> {
  await page.waitForFunction(() => 'tf' in window, undefined, { polling: 10 })
  await page.evaluate((options) => window.tf.setup(options), setup)
}

/** The `exp` (epoch s), `jti` and `sid` of a JWT, read without verifying it. */
export function claimsOf(token: string): { exp: number; jti: string; sid: string } {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'))
}

/**
 * A wall-clock time (epoch ms) at which a token with `exp` (epoch s) has certainly expired, 50 ms into a
 * second: the token a refresh then issues has `exp` at the next whole second, so it lives about 950 ms
 * (JWT times have 1 s resolution, so a "1 s" token issued late in a second could be nearly dead at birth).
 */
export function afterExpiry(exp: number): number {
  return Math.max(exp, Math.ceil((Date.now() + 200) / 1000)) * 1000 + 50
}

export const sleepUntil = (at: number) =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, at - Date.now())))

/** What a server counted before any traffic. */
export const noTraffic = (): ServerCounts => zero()

export const ofType = (list: RecordedEvent[], type: string) => list.filter((event) => event.type === type)
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Under CI=true a missing Chromium fails the file, where a newcomer's run skips it (browser.test.ts says so). */
export function failWithoutChromiumInCI(name: string): void {
  describe.runIf(!hasChromium && process.env.CI === 'true')(name, () => {
    it('have Chromium to run on', () => {
      throw new Error('Chromium is required in CI: apt-get install -y chromium')
    })
  })
}

/**
 * Chromium and the auth server for the tests of one describe block. `profile()` opens a fresh browser
 * profile, whose tabs share storage, locks and channels with each other and with no other test; it is
 * closed after the test.
 */
export function useChromium(setup: ServerSetup = {}): {
  server: BrowserTestServer
  profile(): Promise<BrowserContext>
} {
  let browser: Browser | undefined
  const contexts: BrowserContext[] = []
  const env = {
    server: undefined as unknown as BrowserTestServer,
    async profile() {
      const context = await browser!.newContext()
      contexts.push(context)
      return context
    },
  }
  beforeAll(async () => {
    const [script, launched] = await Promise.all([bundlePage(), launchChromium()])
    browser = launched
    env.server = await startBrowserTestServer({ script, ...setup })
  })
  afterEach(async () => {
    for (const context of contexts.splice(0)) await context.close()
  })
  afterAll(async () => {
    await browser?.close()
    await env.server?.close()
  })
  return env
}

/** logs in as `username` (default ada); with `at` (epoch ms), the page hands the tokens to the manager then */
export const login = (tab: Tab, username = USERNAME, at?: number) =>
  tab.page.evaluate(([name, password, time]) => window.tf.login(name, password, time), [
    username,
    PASSWORD,
    at,
  ] as const)
export const events = (tab: Tab) => tab.page.evaluate(() => window.tf.events())
export const status = (tab: Tab) => tab.page.evaluate(() => window.tf.status())

/** `count` requests to GET /api/data at once in the tab, at wall-clock time `at` (epoch ms) if given. */
export const burst = (tab: Tab, count: number, at?: number): Promise<RequestResult[]> =>
  tab.page.evaluate(([n, time]) => window.tf.burst(n, time), [count, at] as const)

/**
 * A burst in every tab after expiry: once `accessToken` has certainly expired, each tab sends `perTab`
 * requests at the same moment. Expects one refresh for all of them: one refresh request reached the server and
 * rotated once, every request got 200 with the one new token, exactly one tab refreshed, and every `refreshed`
 * event in any tab carries that token. Resolves with the new access token and each tab's events of the burst.
 */
export async function expectOneRefreshPerBurst(
  server: BrowserTestServer,
  tabs: Tab[],
  perTab: number,
  accessToken: string,
  label: string,
): Promise<{ accessToken: string; fresh: RecordedEvent[][] }> {
  server.reset()
  const seen = await Promise.all(tabs.map(async (tab) => (await events(tab)).length))
  const at = afterExpiry(claimsOf(accessToken).exp)
  const results = await Promise.all(tabs.map((tab) => burst(tab, perTab, at)))
  const total = tabs.length * perTab
  // a tab that refreshed again (it missed the first refresh's tokens) shows here as a second refresh request
  expect(server.counts(), label).toEqual({ ...noTraffic(), refreshRequests: 1, refreshes: 1, apiOk: total })
  const [jti, ...others] = new Set(server.apiTokens())
  expect(others, `${label}: every request carried the one new token`).toEqual([])
  expect(
    results.flat().map((result) => [result.status, result.jti]),
    label,
  ).toEqual(Array.from({ length: total }, () => [200, jti]))

  const fresh = await Promise.all(tabs.map(async (tab, i) => (await events(tab)).slice(seen[i])))
  const refreshed = fresh.flatMap((list) => ofType(list, 'refreshed'))
  const local = refreshed.filter((event) => event.source === 'local')
  expect(local, `${label}: exactly one tab refreshed`).toHaveLength(1)
  const next = local[0]!.accessToken!
  expect(claimsOf(next).jti, label).toBe(jti)
  // the other tabs adopted that very token
  expect(new Set(refreshed.map((event) => event.accessToken)), label).toEqual(new Set([next]))
  return { accessToken: next, fresh }
}
