/**
 * The demo server behind `npm start`, `npm run demo:cli` and the demo's browser test: the real
 * @tokenflow/server on SQLite (rotating refresh tokens, no reuse grace), a protected API checked by
 * @tokenflow/server/verify, and the demo page with its script bundled by esbuild from the BUILT client,
 * all on one origin. It imports the packages by name, so under `tsx` it runs the same dist a user installs.
 */
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type AuthServer, createAuthServer, createSqliteStore, type IssuerEvent } from '@tokenflow/server'
import { createVerifier, type Verifier } from '@tokenflow/server/verify'
import { build } from 'esbuild'

/**
 * Options of `startDemo`. Durations are in ms.
 * @example
 * const options: DemoOptions = { dataDir: '.tokenflow', port: 3000, accessTokenTtl: 10_000 }
 */
export interface DemoOptions {
  /** where the SQLite database and the demo user's credentials live; created when missing */
  dataDir: string
  /**
   * Port on 127.0.0.1; 0 picks a free one.
   * @default 3000
   */
  port?: number
  /**
   * Access-token lifetime. JWT times have a resolution of one second, so at least 2_000.
   * @default 10_000
   */
  accessTokenTtl?: number
  /**
   * Bundle and serve the page. `npm run demo:cli` needs only the server and the API.
   * @default true
   */
  page?: boolean
}

/**
 * What the demo server counted since it started. Never a token or a password.
 * @example
 * const { apiOk, apiUnauthorized }: DemoStats = demo.stats()
 */
export interface DemoStats {
  /** rotations (refreshes outside the grace window, which is 0 here) */
  refreshes: number
  /** old refresh tokens presented again: each one revoked its session */
  reuseDetected: number
  logins: number
  /** `/api/*` requests answered 200 */
  apiOk: number
  /** `/api/*` requests answered 401 by the verifier */
  apiUnauthorized: number
  /** every `/api/*` request answered, whatever the status */
  apiRequests: number
}

/**
 * Rotations and reuse detections of one session (one login: its family of refresh tokens).
 * @example
 * const { refreshes }: SessionStats = demo.session(sid)
 */
export interface SessionStats {
  refreshes: number
  reuseDetected: number
}

/**
 * A running demo.
 * @example
 * const demo = await startDemo({ dataDir: '.tokenflow' })
 * console.log(demo.url, demo.username, demo.password)
 * await demo.close()
 */
export interface Demo {
  /** `http://127.0.0.1:<port>` */
  url: string
  username: string
  password: string
  /** true when this start created the demo user (a fresh data directory) */
  createdUser: boolean
  /** path of the SQLite database file */
  database: string
  accessTokenTtl: number
  stats(): DemoStats
  /** counts of one session, by `sid` (all zero for one the server has not seen since it started) */
  session(sid: string): SessionStats
  close(): Promise<void>
}

/** The demo user's name; its password is generated on first start. */
export const DEMO_USERNAME = 'demo'
/** Any second use of a rotated refresh token revokes the session: a double refresh shows as a reuse detection. */
export const REUSE_GRACE = 0
const PAGE_DIR = fileURLToPath(new URL('./page/', import.meta.url))
/** The per-session counts kept in memory: enough for a demo, bounded for a server left running. */
const MAX_SESSIONS = 1_000
const SESSION_ID = /^[0-9a-f]{32}$/

/**
 * Starts the demo on 127.0.0.1 and resolves once it listens. The database file and the demo user are
 * created in `dataDir` on first start and reused afterwards.
 * @example
 * const demo = await startDemo({ dataDir: fileURLToPath(new URL('../../.tokenflow/', import.meta.url)) })
 */
export async function startDemo({
  dataDir,
  port = 3000,
  accessTokenTtl = 10_000,
  page = true,
}: DemoOptions): Promise<Demo> {
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new Error('"port" must be a whole number from 0 to 65535')
  }
  // exp has a resolution of one second (RFC 7519): a shorter token could be born (nearly) expired
  if (!Number.isInteger(accessTokenTtl) || accessTokenTtl < 2_000 || accessTokenTtl > 3_600_000) {
    throw new Error('"accessTokenTtl" must be a whole number of milliseconds from 2000 to 3600000')
  }
  // bundled before anything listens: unbuilt packages fail here, with the fix in the message
  const assets = page ? await loadPage() : undefined
  // the database holds the signing keys, password hashes and sessions: the directory is the owner's alone
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  // one made by an earlier start, before this: made the owner's alone too (as demo-user.json is). A directory
  // of someone else's cannot be, and the demo still runs in it
  await chmod(dataDir, 0o700).catch(() => {})
  // the issuer URL names the real port (RFC 8414 metadata lists the endpoints under it), so find it first
  const listenPort = port === 0 ? await freePort() : port
  const url = `http://127.0.0.1:${listenPort}`
  const database = join(dataDir, 'demo.db')

  const stats: DemoStats = {
    refreshes: 0,
    reuseDetected: 0,
    logins: 0,
    apiOk: 0,
    apiUnauthorized: 0,
    apiRequests: 0,
  }
  const sessions = new Map<string, SessionStats>()
  const sessionOf = (sid: string) => {
    let entry = sessions.get(sid)
    if (!entry) {
      entry = { refreshes: 0, reuseDetected: 0 }
      sessions.set(sid, entry)
      // Maps keep insertion order: the first key is the oldest session
      if (sessions.size > MAX_SESSIONS) sessions.delete(sessions.keys().next().value!)
    }
    return entry
  }
  const onEvent = (event: IssuerEvent) => {
    if (event.type === 'login') stats.logins++
    if (event.type === 'refreshed' && !event.grace) {
      stats.refreshes++
      sessionOf(event.sessionId).refreshes++
    }
    if (event.type === 'reuseDetected') {
      stats.reuseDetected++
      sessionOf(event.sessionId).reuseDetected++
    }
  }

  const store = createSqliteStore({ filename: database })
  let app: AuthServer | undefined
  try {
    app = createAuthServer({
      issuer: url,
      audience: `${url}/api`,
      store,
      accessTokenTtl,
      reuseGrace: REUSE_GRACE,
      onEvent,
    })
    let verifier: Verifier | undefined
    const server = app
    registerRoutes(server, { assets, accessTokenTtl, stats, sessions, verify: () => verifier! })
    await server.ready()
    const credentials = await demoUser(server, dataDir)
    verifier = createVerifier({
      // the issuer's own keyring: the same keys its JWKS endpoint publishes
      jwks: await server.tokenflow.keyring.jwks(),
      issuer: url,
      audience: `${url}/api`,
      // no tolerance: the page counts down to exp, so the API must refuse the token exactly then
      clockTolerance: 0,
    })
    await server.listen({ host: '127.0.0.1', port: listenPort })
    return {
      url,
      ...credentials,
      database,
      accessTokenTtl,
      stats: () => ({ ...stats }),
      session: (sid) => ({ ...(sessions.get(sid) ?? { refreshes: 0, reuseDetected: 0 }) }),
      async close() {
        // a browser tab or a hung recipe request may still hold a connection: do not wait for it
        const closing = server.close()
        server.server.closeAllConnections()
        await closing
        await store.close()
      },
    }
  } catch (error) {
    await app?.close().catch(() => {})
    await store.close().catch(() => {})
    throw error
  }
}

interface PageAssets {
  html: string
  css: string
  script: string
}

/** Reads the page and bundles its script from the built packages (no `@tokenflow/source` condition). */
async function loadPage(): Promise<PageAssets> {
  let script: string
  try {
    const result = await build({
      entryPoints: [join(PAGE_DIR, 'main.ts')],
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'browser',
      target: 'es2022',
      // kept readable: a visitor may open it to see how little the integration takes
      minify: false,
      legalComments: 'none',
      logLevel: 'silent',
    })
    script = result.outputFiles[0]!.text
  } catch (error) {
    const unresolved = (error as { errors?: Array<{ text: string }> }).errors?.find((entry) =>
      entry.text.includes('@tokenflow/'),
    )
    if (unresolved) throw new Error('the packages are not built: run "npm run build" first', { cause: error })
    throw error
  }
  const [html, css] = await Promise.all([
    readFile(join(PAGE_DIR, 'index.html'), 'utf8'),
    readFile(join(PAGE_DIR, 'demo.css'), 'utf8'),
  ])
  return { html, css, script }
}

function registerRoutes(
  app: AuthServer,
  {
    assets,
    accessTokenTtl,
    stats,
    sessions,
    verify,
  }: {
    assets: PageAssets | undefined
    accessTokenTtl: number
    stats: DemoStats
    sessions: Map<string, SessionStats>
    verify: () => Verifier
  },
): void {
  if (assets) {
    const headers = {
      'cache-control': 'no-store',
      // everything is same-origin and nothing is inline
      'content-security-policy':
        "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
    }
    app.get('/', (_request, reply) =>
      reply.headers(headers).type('text/html; charset=utf-8').send(assets.html),
    )
    app.get('/demo.css', (_request, reply) => reply.headers(headers).type('text/css').send(assets.css))
    app.get('/demo.js', (_request, reply) =>
      reply.headers(headers).type('text/javascript; charset=utf-8').send(assets.script),
    )
  }

  // the protected API: any item, for anyone holding a valid access token of this issuer
  app.get<{ Params: { id: string } }>(
    '/api/items/:id',
    { preHandler: (request, reply) => verify().fastify(request, reply) },
    (request) => ({ id: request.params.id.slice(0, 64), at: Date.now() }),
  )
  app.addHook('onResponse', async (request, reply) => {
    if (!request.url.startsWith('/api/')) return
    stats.apiRequests++
    if (reply.statusCode === 200) stats.apiOk++
    if (reply.statusCode === 401) stats.apiUnauthorized++
  })

  // demo-only: what the page shows next to its own counts. Counters and settings, never a token; the
  // session ids asked about are the `sid` claims of the page's own access tokens.
  app.get('/demo/config', () => ({ username: DEMO_USERNAME, accessTokenTtl, reuseGrace: REUSE_GRACE }))
  app.get<{ Querystring: { sid?: string } }>('/demo/stats', (request, reply) => {
    const asked = String(request.query.sid ?? '')
      .split(',')
      .filter((sid) => SESSION_ID.test(sid))
      .slice(0, 8)
    reply.header('cache-control', 'no-store')
    return {
      server: { ...stats },
      sessions: Object.fromEntries(
        asked.map((sid) => [sid, sessions.get(sid) ?? { refreshes: 0, reuseDetected: 0 }]),
      ),
    }
  })
}

/**
 * The demo user: created with a random password on first start (kept next to the database, readable
 * by the owner only, so `npm start` can print it again), reused afterwards. The first start writes the
 * file exclusively (O_EXCL), so that two starts at the same moment agree on one password.
 */
export async function demoUser(
  app: AuthServer,
  dataDir: string,
): Promise<{ username: string; password: string; createdUser: boolean }> {
  const file = join(dataDir, 'demo-user.json')
  const { issuer } = app.tokenflow
  const fresh = randomBytes(9).toString('base64url')
  const contents = `${JSON.stringify({ username: DEMO_USERNAME, password: fresh })}\n`
  let password = await savedPassword(file)
  let newFile = false
  if (password === undefined) {
    try {
      await writeFile(file, contents, { flag: 'wx', mode: 0o600 })
      newFile = true
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
      // another start is writing it; or it is not ours to read (edited, broken): then it is written over
      password = await savedPassword(file, 2_000)
      if (password === undefined) {
        await writeFile(file, contents, { mode: 0o600 })
        newFile = true
      }
    }
    password ??= fresh
  }
  // the owner's alone, also a file an earlier version (or a copy) left readable by others
  await chmod(file, 0o600)
  const exists = (await issuer.listUsers()).some((user) => user.username === DEMO_USERNAME)
  if (exists && !newFile) return { username: DEMO_USERNAME, password, createdUser: false }
  // a new file, whose password the user left in the database does not have; or a database without the user
  if (exists) await issuer.removeUser(DEMO_USERNAME)
  try {
    await issuer.addUser(DEMO_USERNAME, password)
  } catch (error) {
    // a start at the same moment added it, with the same password
    if ((error as { code?: unknown }).code !== 'ERR_USER_EXISTS') throw error
  }
  return { username: DEMO_USERNAME, password, createdUser: true }
}

/** The demo user's password in `file`, waiting up to `waitMs` for a file another start is writing. */
async function savedPassword(file: string, waitMs = 0): Promise<string | undefined> {
  const until = Date.now() + waitMs
  for (;;) {
    const saved = await readFile(file, 'utf8')
      .then((text) => JSON.parse(text) as { username?: unknown; password?: unknown } | null)
      .catch(() => undefined)
    if (saved?.username === DEMO_USERNAME && typeof saved.password === 'string' && saved.password !== '')
      return saved.password
    if (Date.now() >= until) return undefined
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** A port that was free a moment ago on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address()
      const found = typeof address === 'object' && address ? address.port : 0
      probe.close(() => resolve(found))
    })
  })
}
