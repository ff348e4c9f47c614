/**
 * The terminal demo (`npm run demo:cli`): concurrent axios requests across an access-token expiry, against
 * the real @tokenflow/server the web demo runs (SQLite in a temporary directory, rotating refresh tokens, no
 * reuse grace, the API checked by @tokenflow/server/verify), first through tokenflow, then through the blog
 * recipe it replaces. tokenflow must make 1 refresh and get every request back ok; the exit code says
 * whether it did.
 *
 *   npx tsx examples/demo/cli-demo.ts [--requests 50] [--access-ttl 3s]
 *
 * It imports the packages by name, so it runs on the built packages (`npm run build` first).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createTokenManager, isTokenflowError, jsonRefresh } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosAdapter, type AxiosInstance } from 'axios'
import { installRecipe, type RecipeAsyncStorage } from './recipe.js'
import { type Demo, startDemo } from './start-demo.js'

/** how long the recipe's requests get to settle after the last one is sent: some never do */
const recipeTimeout = 5_000
/** the same bound for tokenflow, which needs a fraction of it */
const tokenflowTimeout = 10_000

const usage = 'usage: npm run demo:cli -- [--requests N] [--access-ttl 3s]'

/** Parses `3s`, `2.5s`, `3000ms` or `3000` (ms); NaN for anything else. */
function duration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$/.exec(text)
  if (!match) return Number.NaN
  return Math.round(Number(match[1]) * (match[2] === 's' ? 1_000 : 1))
}

function options(): { requests: number; ttl: number } {
  let values: { requests?: string | undefined; 'access-ttl'?: string | undefined; help?: boolean | undefined }
  try {
    ;({ values } = parseArgs({
      options: {
        requests: { type: 'string', default: '50' },
        // exp has a one-second resolution, so a token refreshed just before T lives about TTL - 1 s: 3 s
        // leaves the storm a margin of over a second on a loaded machine, where 2 s leaves a few hundred ms
        'access-ttl': { type: 'string', default: '3s' },
        help: { type: 'boolean', short: 'h' },
      },
    }))
  } catch (error) {
    console.error(`${(error as Error).message.split('. ')[0]}\n${usage}`)
    process.exit(1)
  }
  if (values.help) {
    console.log(
      `${usage}\n  --requests N    concurrent requests sent across the expiry (default 50)\n  --access-ttl T  access-token lifetime: seconds with "s" (3s) or milliseconds (3000); from 2 s to 120 s (default 3s)`,
    )
    process.exit(0)
  }
  const requests = Number(values.requests)
  const ttl = duration(values['access-ttl'] ?? '')
  const problems = [
    !Number.isInteger(requests) || requests < 1 || requests > 10_000
      ? '"--requests" must be a whole number from 1 to 10000'
      : '',
    // exp has a resolution of one second (RFC 7519): a shorter token, refreshed just before a second
    // ends, would be born (nearly) expired
    !Number.isInteger(ttl) || ttl < 2_000 || ttl > 120_000
      ? '"--access-ttl" must be from 2s to 120s (e.g. 3s, or 3000 for milliseconds)'
      : '',
  ].filter(Boolean)
  if (problems.length > 0) {
    console.error(`${problems.join('\n')}\n${usage}`)
    process.exit(1)
  }
  return { requests, ttl }
}

// ---------------------------------------------------------------------------------------------
// Output: colours only on a terminal, and never a token

const colour = process.stdout.isTTY === true && !process.env.NO_COLOR
const paint = (code: string) => (text: string) => (colour ? `\x1b[${code}m${text}\x1b[0m` : text)
const bold = paint('1')
const dim = paint('2')
const green = paint('32')
const red = paint('31')

/**
 * Counted, not fatal: the recipe re-sends requests whose promises nobody holds any more, so their
 * failures are unhandled rejections. For tokenflow the count must stay 0.
 */
let unhandledRejections = 0
process.on('unhandledRejection', () => {
  unhandledRejections++
})

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)))

/** Prints a progress line stamped relative to the access token's expiry T. */
function timeline(expiry: () => number) {
  return (message: string) => {
    const offset = Math.round(Date.now() - expiry())
    const stamp = `T${offset < 0 ? '-' : '+'}${Math.abs(offset)} ms`.padStart(10)
    console.log(`  ${dim(stamp)}  ${message}`)
  }
}

// ---------------------------------------------------------------------------------------------
// The storm

interface Outcome {
  requests: number
  refreshes: number
  unauthorized: number
  ok: number
  failed: number
  hung: number
  reuseDetections: number
  /** requests that reached /api/*, first tries and retries, counted by the server */
  apiHits: number
  unhandledRejections: number
  /** failure reasons (error code or status), with how often each happened */
  failures: Map<string, number>
}

interface Client {
  /** what happens when the storm is over, e.g. unsubscribe */
  done?: () => void
}

type Connect = (context: {
  server: Demo
  login: { accessToken: string; refreshToken: string }
  api: AxiosInstance
  /** ms before exp at which tokenflow refreshes first */
  leeway: number
  log: (message: string) => void
}) => Client | Promise<Client>

/** Splits the requests: a few in flight across the expiry, some just before it, most after it. */
function split(requests: number) {
  const slow = Math.floor(requests / 10)
  const before = Math.floor((requests * 3) / 10)
  return { slow, before, after: requests - slow - before }
}

function reason(error: unknown): string {
  if (isTokenflowError(error)) return error.code
  const { response, code, name } = (error ?? {}) as {
    response?: { status?: number }
    code?: string
    name?: string
  }
  if (response?.status) return `HTTP ${response.status}`
  return code ?? name ?? 'unknown error'
}

/** `exp` (epoch s) of a JWT, read without verifying it. */
function expiryOf(token: string): number {
  return (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { exp: number })
    .exp
}

async function storm({
  requests,
  ttl,
  timeout,
  connect,
}: {
  requests: number
  ttl: number
  timeout: number
  /** sets up the client under test on `api` */
  connect: Connect
}): Promise<Outcome> {
  // a server of its own, in a directory of its own: its counters are this storm's, and closing it at the
  // end makes whatever is still in flight fail, so it is counted
  const dataDir = await mkdtemp(join(tmpdir(), 'tokenflow-demo-cli-'))
  const server = await startDemo({ dataDir, port: 0, accessTokenTtl: ttl, page: false })
  const rejectionsBefore = unhandledRejections
  let listening = true
  const close = async () => {
    if (listening) await server.close()
    listening = false
  }
  // tokenflow's proactive window, scaled to the TTL: the default 30 s (capped at half the lifetime)
  // suits real TTLs, but with 2 s tokens and a one-second exp a refreshed token would start inside it
  const leeway = Math.min(1_000, ttl / 10)
  try {
    // exp has a one-second resolution: log in just after a second starts, so the token lives the whole TTL
    await sleep(1_000 - (Date.now() % 1_000) + 20)
    const { data: tokens } = await axios.post(`${server.url}/auth/login`, {
      username: server.username,
      password: server.password,
    })
    const expiry = expiryOf(tokens.accessToken) * 1_000
    const log = timeline(() => expiry)

    // sent before the proactive window, so with the old token, and in flight until 200 ms after T
    const slowAt = expiry - leeway - 100
    const slowLatency = leeway + 300
    // inside the window: the first of them starts the refresh, the others wait for it
    const beforeAt = expiry - leeway / 2
    const afterAt = expiry + 100

    const http = axios.getAdapter('http')
    // a slow mobile link for the first trip of the requests that ask for it: they carry the token they got
    // before T to the server after T. Retries (and the recipe's replays) travel at normal speed, so what
    // decides their fate is the token they carry, as in the web demo.
    const travelled = new Set<unknown>()
    const adapter: AxiosAdapter = async (config) => {
      const id = config.headers?.['x-req-id']
      if (config.params?.link === 'slow' && !travelled.has(id)) {
        travelled.add(id)
        await sleep(slowLatency)
      }
      return http(config)
    }
    const api = axios.create({ baseURL: server.url, adapter })
    // added first, so it sees each 401 before the client under test handles it
    let first401 = true
    api.interceptors.response.use(undefined, (error) => {
      if (first401 && error?.response?.status === 401) {
        first401 = false
        log('first 401 back, for a request sent with the expired token')
      }
      throw error
    })
    const client = await connect({ server, login: tokens, api, leeway, log })

    let ok = 0
    let failed = 0
    let settled = 0
    let closed = false
    const failures = new Map<string, number>()
    let allSettled!: () => void
    const everyoneSettled = new Promise<void>((resolve) => {
      allSettled = resolve
    })
    const settle = () => {
      if (++settled === requests) allSettled()
    }
    let next = 0
    const send = (count: number, slow: boolean) => {
      for (let i = 0; i < count; i++) {
        const id = `r${next++}`
        api
          .get(`/api/items/${id}`, {
            headers: { 'x-req-id': id },
            params: slow ? { link: 'slow' } : undefined,
          })
          .then(
            (response) => {
              if (closed) return
              if (response.status === 200) ok++
              else failed++
              settle()
            },
            (error: unknown) => {
              if (closed) return
              failed++
              failures.set(reason(error), (failures.get(reason(error)) ?? 0) + 1)
              settle()
            },
          )
      }
    }

    const { slow, before, after } = split(requests)
    log(`logged in; the access token expires at T (${ttl} ms TTL)`)
    if (slow > 0) {
      await sleep(slowAt - Date.now())
      send(slow, true)
      log(`${slow} requests sent over a slow link (${slowLatency} ms in flight: they arrive after T)`)
    }
    if (before > 0) {
      await sleep(beforeAt - Date.now())
      send(before, false)
      log(`${before} requests sent just before expiry`)
    }
    await sleep(afterAt - Date.now())
    send(after, false)
    log(`${after} requests sent after expiry`)

    // on a terminal, one line that counts the answers while they come in
    const live = process.stdout.isTTY === true
    const ticker = live
      ? setInterval(
          () => process.stdout.write(`\r\x1b[2K  ${dim(`${settled} of ${requests} answered…`)}`),
          100,
        )
      : undefined
    await Promise.race([everyoneSettled, sleep(timeout)])
    clearInterval(ticker)
    if (live) process.stdout.write('\r\x1b[2K')
    closed = true
    log(
      settled === requests
        ? `all ${requests} requests settled`
        : `${requests - settled} of ${requests} requests still waiting after ${timeout} ms: counted as hung`,
    )
    client.done?.()
    const counts = server.stats()
    const outcome = {
      requests,
      refreshes: counts.refreshes,
      unauthorized: counts.apiUnauthorized,
      ok,
      failed,
      hung: requests - settled,
      reuseDetections: counts.reuseDetected,
      apiHits: counts.apiRequests,
      failures,
    }
    await close()
    // requests still in flight fail now that the server is gone: give their rejections a moment to surface
    await sleep(100)
    return { ...outcome, unhandledRejections: unhandledRejections - rejectionsBefore }
  } finally {
    await close()
    await rm(dataDir, { recursive: true, force: true })
  }
}

/** tokenflow, as the README shows it: a manager with jsonRefresh, attached to the instance. */
const tokenflowClient: Connect = async ({ server, login, api, leeway, log }) => {
  const manager = createTokenManager({ refresh: jsonRefresh(`${server.url}/refresh/token`), leeway })
  const unsubscribe = manager.subscribe((event) => {
    if (event.type === 'refreshStarted') log('refresh started')
    else if (event.type === 'refreshed') log('refresh finished: new access and refresh token')
    else if (event.type === 'refreshFailed') log(red(`refresh failed (${event.error.kind})`))
    else if (event.type === 'loggedOut') log(red(`logged out (${event.reason})`))
  })
  attachTokenRefresh(api, manager)
  await manager.setTokens(login)
  return { done: unsubscribe }
}

/** The blog recipe, with the tokens in (a stand-in for) AsyncStorage under its keys. */
const recipeClient: Connect = ({ server, login, api, log }) => {
  const items = new Map<string, string>([
    ['accessToken', login.accessToken],
    ['refreshToken', login.refreshToken],
  ])
  const AsyncStorage: RecipeAsyncStorage = {
    getItem: async (key) => items.get(key) ?? null,
    multiSet: async (pairs) => {
      for (const [key, value] of pairs) items.set(key, value)
    },
  }
  installRecipe(api, { baseUrl: server.url, AsyncStorage })
  // the recipe has no events: watch its refresh calls go by instead
  let refreshes = 0
  api.interceptors.response.use(
    (response) => {
      if (response.config.url?.endsWith('/refresh/token')) log(`refresh #${++refreshes} finished`)
      return response
    },
    (error) => {
      if (error?.config?.url?.endsWith('/refresh/token')) log(red(`refresh #${++refreshes} failed`))
      throw error
    },
  )
  return {}
}

// ---------------------------------------------------------------------------------------------

function comparison(tokenflow: Outcome, recipe: Outcome): string {
  const rows: Array<[string, keyof Outcome]> = [
    ['requests', 'requests'],
    ['refreshes', 'refreshes'],
    ['401s', 'unauthorized'],
    ['ok', 'ok'],
    ['failed', 'failed'],
    [`hung (after ${recipeTimeout / 1_000} s)`, 'hung'],
    ['reuse detections', 'reuseDetections'],
    ['requests reaching /api', 'apiHits'],
  ]
  if (tokenflow.unhandledRejections + recipe.unhandledRejections > 0)
    rows.push(['unhandled rejections', 'unhandledRejections'])
  const width = Math.max(...rows.map(([label]) => label.length))
  const line = (label: string, a: string, b: string) =>
    `  ${label.padEnd(width)}  ${a.padStart(9)}  ${b.padStart(9)}`
  return [
    bold(line('', 'tokenflow', 'recipe')),
    ...rows.map(([label, key]) => line(label, String(tokenflow[key]), String(recipe[key]))),
  ].join('\n')
}

function verdict(outcome: Outcome): string[] {
  const problems: string[] = []
  if (outcome.refreshes !== 1) problems.push(`expected 1 refresh, got ${outcome.refreshes}`)
  if (outcome.ok !== outcome.requests) problems.push(`expected ${outcome.requests} ok, got ${outcome.ok}`)
  if (outcome.failed > 0) {
    const why = [...outcome.failures].map(([what, count]) => `${count} × ${what}`).join(', ')
    problems.push(`${outcome.failed} failed (${why})`)
  }
  if (outcome.hung > 0) problems.push(`${outcome.hung} never settled`)
  if (outcome.unhandledRejections > 0) problems.push(`${outcome.unhandledRejections} unhandled rejections`)
  if (outcome.reuseDetections > 0) problems.push(`${outcome.reuseDetections} refresh-token reuse detections`)
  return problems
}

const { requests, ttl } = options()
const { slow, before, after } = split(requests)
console.log(
  bold(`tokenflow demo: ${requests} concurrent axios requests across an access-token expiry`) +
    `\n${dim('  @tokenflow/server on SQLite, its API checked by @tokenflow/server/verify; a fresh server for each client')}` +
    `\n${dim(`  access tokens live ${ttl} ms; refresh tokens rotate, and any reuse revokes the session (no grace)`)}` +
    `\n${dim(`  ${slow} in flight across the expiry, ${before} sent just before it, ${after} just after`)}\n`,
)

console.log(
  bold('tokenflow') +
    dim(': createTokenManager({ refresh: jsonRefresh(url) }) + attachTokenRefresh(api, manager)'),
)
const tokenflow = await storm({ requests, ttl, timeout: tokenflowTimeout, connect: tokenflowClient })
const width = String(requests).length
const summary: Array<[string, number, string?]> = [
  ['refreshes', tokenflow.refreshes, '(server count)'],
  ['401s', tokenflow.unauthorized, '(server count; each request is retried once at most)'],
  ['ok', tokenflow.ok],
  ['failed', tokenflow.failed],
  ['reuse detections', tokenflow.reuseDetections, '(server count)'],
]
for (const [label, value, note] of summary)
  console.log(`  ${label.padEnd(16)}  ${String(value).padStart(width)}${note ? `  ${dim(note)}` : ''}`)

console.log(
  `\n${bold('recipe')}${dim(': isTokenRefreshing + refreshSubscribers (examples/demo/recipe.ts), same storm')}`,
)
const recipe = await storm({ requests, ttl, timeout: recipeTimeout, connect: recipeClient })

console.log(`\n${comparison(tokenflow, recipe)}\n`)
const problems = verdict(tokenflow)
if (problems.length === 0) {
  console.log(green(`PASS: tokenflow made 1 refresh and got ${requests} of ${requests} requests back ok`))
} else {
  console.log(red(`FAIL: tokenflow ${problems.join('; ')}`))
  process.exitCode = 1
}
