/**
 * The peer-scenario part of `npm run bench`: the same small list of refresh scenarios sent through
 * tokenflow, the blog recipe, axios-auth-refresh (default settings, and `deduplicateRefresh: false`)
 * and axios-jwt, each against its own fresh test auth server (rotating refresh tokens, reuse grace 0).
 *
 * Every client runs every scenario in a child process of its own: the recipe and axios-jwt keep
 * module-global state, and a request that hangs must not leak into the next run.
 * The figures are outcomes, not timings: what settled, how, and what reached the server.
 * Run on the BUILT packages (`npm run build` first): that is what an app installs.
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { createTokenManager, jsonRefresh } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosInstance } from 'axios'
import { createAuthRefresh } from 'axios-auth-refresh'
import { applyAuthTokenInterceptor, type StorageType, setAuthTokens } from 'axios-jwt'
import { installRecipe } from '../examples/demo/recipe.js'
import { startTestAuthServer, type TestAuthServer } from '../packages/client/test/helpers/auth-server.js'
import type { BenchPartResult } from './run.js'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')

type Client = 'tokenflow' | 'recipe' | 'axiosAuthRefresh' | 'axiosAuthRefreshNoDedupe' | 'axiosJwt'
const clients: readonly Client[] = [
  'tokenflow',
  'recipe',
  'axiosAuthRefresh',
  'axiosAuthRefreshNoDedupe',
  'axiosJwt',
]
const clientLabels: Record<Client, string> = {
  tokenflow: 'tokenflow',
  recipe: 'blog recipe',
  axiosAuthRefresh: 'axios-auth-refresh (defaults)',
  axiosAuthRefreshNoDedupe: 'axios-auth-refresh (`deduplicateRefresh: false`)',
  axiosJwt: 'axios-jwt',
}

type Scenario = 'expired' | 'lateUnauthorized' | 'refreshHangs' | 'refreshRejected'
const scenarios: readonly Scenario[] = ['expired', 'lateUnauthorized', 'refreshHangs', 'refreshRejected']
const scenarioLabels: Record<Scenario, string> = {
  expired: '1. 100 concurrent requests, access token expired',
  lateUnauthorized: '2. 100 requests whose 401 arrives while the refresh runs',
  refreshHangs: '3. refresh never answers, then recovers',
  refreshRejected: '4. refresh answers 401 (session revoked)',
}

const requestCount = 100
/** ms a request may take before it counts as hung */
const bound = 5_000
/**
 * ms for the never-answering refresh: longer than tokenflow's default give-up time
 * (3 tries × `refreshTimeout` 10 s + backoff), so "hung" means never, not "slower than 5 s".
 */
const hangBound = 40_000
/** ms the server holds the refresh in scenario 2 */
const refreshHold = 200

export interface PeerOutcome {
  ok: number
  failed: number
  /** not settled within the bound */
  hung: number
  /** ms from the first request until the last one settled; null when some hung */
  settledMs: number | null
  /** `POST /refresh/token` requests that reached the server */
  refreshAttempts: number
  /** refreshes the server answered with new tokens */
  refreshes: number
  reuseDetections: number
  /** scenario 3: a new request after the refresh endpoint recovered */
  recovery?: 'ok' | 'failed' | 'hung'
  /** scenario 4: what tells the app the session is gone */
  logoutSignal?: string
  /** anything the run had to work around */
  note?: string
}

export interface PeersBenchResult {
  machine: { cpus: number; model: string; node: string }
  date: string
  versions: { axios: string; axiosAuthRefresh: string; axiosJwt: string }
  method: string
  settings: {
    requests: number
    boundMs: number
    hangBoundMs: number
    refreshHoldMs: number
    reuseGraceMs: number
  }
  clients: Record<Client, string>
  scenarios: Record<Scenario, string>
  results: Record<Scenario, Record<Client, PeerOutcome>>
}

// ---------------------------------------------------------------------------------------------
// One client, one scenario (runs in a child process)

/** Both peers ship CommonJS typings, which see axios's CommonJS declaration file (see bench/client.ts). */
const asCommonJs = (instance: AxiosInstance) => instance as unknown as Parameters<typeof createAuthRefresh>[0]

interface Setup {
  instance: AxiosInstance
  /** what the app was told about a logout, read at the end of the run */
  logoutSignal(): string
}

interface Tokens {
  accessToken: string
  refreshToken: string
}

async function setUp(client: Client, server: TestAuthServer, tokens: Tokens): Promise<Setup> {
  const instance = axios.create({ baseURL: server.url })
  const refreshUrl = `${server.url}/refresh/token`
  // the peers keep tokens where their READMEs do (localStorage / AsyncStorage): here in memory
  const memory = new Map<string, string>()

  if (client === 'tokenflow') {
    const manager = createTokenManager({ refresh: jsonRefresh(refreshUrl) })
    let loggedOut = 0
    manager.subscribe((event) => {
      if (event.type === 'loggedOut') loggedOut++
    })
    await manager.setTokens(tokens)
    attachTokenRefresh(instance, manager)
    return {
      instance,
      logoutSignal: () => (loggedOut > 0 ? `\`loggedOut\` event (×${loggedOut})` : 'none'),
    }
  }

  if (client === 'recipe') {
    memory.set('accessToken', tokens.accessToken)
    memory.set('refreshToken', tokens.refreshToken)
    installRecipe(instance, {
      baseUrl: server.url,
      AsyncStorage: {
        getItem: async (key) => memory.get(key) ?? null,
        multiSet: async (pairs) => {
          for (const [key, value] of pairs) memory.set(key, value)
        },
      },
    })
    return { instance, logoutSignal: () => 'none (the recipe has no hook)' }
  }

  if (client === 'axiosAuthRefresh' || client === 'axiosAuthRefreshNoDedupe') {
    memory.set('accessToken', tokens.accessToken)
    memory.set('refreshToken', tokens.refreshToken)
    // the refresh logic and request interceptor the README shows
    const refreshAuthLogic = async (failedRequest: {
      response: { config: { headers: Record<string, string> } }
    }) => {
      const { data } = await axios.post<Tokens>(refreshUrl, { refreshToken: memory.get('refreshToken') })
      memory.set('accessToken', data.accessToken)
      memory.set('refreshToken', data.refreshToken)
      failedRequest.response.config.headers.Authorization = `Bearer ${data.accessToken}`
    }
    createAuthRefresh(
      asCommonJs(instance),
      refreshAuthLogic,
      client === 'axiosAuthRefreshNoDedupe' ? { deduplicateRefresh: false } : {},
    )
    instance.interceptors.request.use((request) => {
      request.headers.Authorization = `Bearer ${memory.get('accessToken')}`
      return request
    })
    return { instance, logoutSignal: () => 'none (no hook; the refresh function rejects)' }
  }

  // axios-jwt 4 takes any storage through `getStorage`
  const storage: StorageType = {
    get: async (key) => memory.get(key) ?? null,
    set: async (key, value) => void memory.set(key, value),
    remove: async (key) => void memory.delete(key),
  }
  const requestRefresh = async (refreshToken: string) => {
    const { data } = await axios.post<Tokens>(refreshUrl, { refreshToken })
    return { accessToken: data.accessToken, refreshToken: data.refreshToken }
  }
  applyAuthTokenInterceptor(asCommonJs(instance), { requestRefresh, getStorage: () => storage })
  await setAuthTokens(tokens)
  return {
    instance,
    logoutSignal: () => (memory.size === 0 ? 'none (no hook; stored tokens cleared)' : 'none (no hook)'),
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Waits until `done()` or `ms` pass; says which. */
async function waitFor(done: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (!done()) {
    if (Date.now() >= end) return false
    await sleep(5)
  }
  return true
}

type State = 'pending' | 'ok' | 'failed'

/** Sends requests and follows how each one settles. */
function tracker(instance: AxiosInstance) {
  const states: State[] = []
  let lastSettled = 0
  let next = 0
  return {
    states,
    get lastSettled() {
      return lastSettled
    },
    send(query = '') {
      const index = states.length
      states.push('pending')
      // a unique id, so the server holds only a request's first try
      const id = `r${next++}`
      instance.get(`/api/me${query}`, { headers: { 'x-req-id': id } }).then(
        () => {
          states[index] = 'ok'
          lastSettled = Date.now()
        },
        () => {
          states[index] = 'failed'
          lastSettled = Date.now()
        },
      )
    },
    settled: () => states.every((state) => state !== 'pending'),
    count: (state: State) => states.filter((s) => s === state).length,
  }
}

/** A session whose access token has already expired, for the client's clock and the server's alike. */
async function expiredSession(server: TestAuthServer): Promise<Tokens> {
  server.accessTtl = 1_000
  const tokens = server.login()
  server.accessTtl = 60_000
  const exp = server.claims(tokens.accessToken)?.exp ?? 0
  await sleep(Math.max(0, exp * 1000 - Date.now()) + 50)
  return tokens
}

async function runScenario(client: Client, scenario: Scenario): Promise<PeerOutcome> {
  // the server's clock can be moved alone, so the server rejects a token the client still trusts
  let offset = 0
  const server = await startTestAuthServer({ reuseGrace: 0, now: () => Date.now() + offset })
  try {
    const tokens = scenario === 'lateUnauthorized' ? server.login() : await expiredSession(server)
    const setup = await setUp(client, server, tokens)
    const requests = tracker(setup.instance)
    let note: string | undefined
    const start = Date.now()

    if (scenario === 'lateUnauthorized') {
      // the token expires on the server only: every client still trusts it and sends it
      offset = 120_000
      const openRefresh = server.holdRefreshes()
      // 99 requests reach the server with the old token; it judges them (401) and holds their answers
      for (let i = 1; i < requestCount; i++) requests.send('?hold=late')
      if (!(await waitFor(() => server.held('late') === requestCount - 1, bound)))
        note = `only ${server.held('late')} of ${requestCount - 1} requests reached the server`
      // one more gets its 401 at once and starts the refresh, which the server holds
      requests.send()
      if (!(await waitFor(() => server.counters.refreshAttempts > 0, 1_000)))
        note = 'the first 401 started no refresh'
      // the held 401s arrive while the refresh runs
      server.release('late')
      await sleep(refreshHold)
      openRefresh()
    } else {
      if (scenario === 'refreshHangs') server.refreshMode = 'hang'
      if (scenario === 'refreshRejected') server.refreshMode = 401
      for (let i = 0; i < requestCount; i++) requests.send()
    }

    const limit = scenario === 'refreshHangs' ? hangBound : bound
    await waitFor(requests.settled, limit - (Date.now() - start))
    const outcome: PeerOutcome = {
      ok: requests.count('ok'),
      failed: requests.count('failed'),
      hung: requests.count('pending'),
      settledMs: requests.settled() ? requests.lastSettled - start : null,
      refreshAttempts: server.counters.refreshAttempts,
      refreshes: server.counters.refreshes,
      reuseDetections: server.counters.reuseDetections,
    }

    if (scenario === 'refreshHangs') {
      // the refresh endpoint answers again: does the app?
      server.refreshMode = 'ok'
      const later = tracker(setup.instance)
      later.send()
      await waitFor(later.settled, bound)
      outcome.recovery = later.states[0] === 'pending' ? 'hung' : later.states[0]!
      outcome.refreshAttempts = server.counters.refreshAttempts
      outcome.refreshes = server.counters.refreshes
      outcome.reuseDetections = server.counters.reuseDetections
    }
    if (scenario === 'refreshRejected') outcome.logoutSignal = setup.logoutSignal()
    if (note !== undefined) outcome.note = note
    return outcome
  } finally {
    await server.close()
  }
}

// ---------------------------------------------------------------------------------------------
// The parent: one child process per client and scenario

function runChild(client: Client, scenario: Scenario): Promise<PeerOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(import.meta.url), client, scenario],
      {
        cwd: root,
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    )
    let stdout = ''
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8')
    })
    // a child that outlives every bound by far is stuck in setup: stop it
    const timer = setTimeout(() => child.kill('SIGKILL'), hangBound + 30_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      // peers may log to stdout: the result is the last line
      const last = stdout.trim().split('\n').at(-1) ?? ''
      try {
        resolve(JSON.parse(last) as PeerOutcome)
      } catch {
        reject(new Error(`"${client}" in "${scenario}" exited with ${code} and no result`))
      }
    })
  })
}

const version = (name: string): string =>
  (JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string })
    .version

const plural = (count: number, one: string, many: string) => `${count} ${count === 1 ? one : many}`

function cell(scenario: Scenario, outcome: PeerOutcome): string {
  const parts = [`${outcome.ok} ok`]
  if (outcome.failed > 0) parts.push(`${outcome.failed} failed`)
  if (outcome.hung > 0) parts.push(`${outcome.hung} hung`)
  if (scenario === 'refreshHangs' && outcome.settledMs !== null)
    parts.push(`all settled in ${(outcome.settledMs / 1000).toFixed(1)} s`)
  parts.push(plural(outcome.refreshAttempts, 'refresh', 'refreshes'))
  if (outcome.reuseDetections > 0)
    parts.push(plural(outcome.reuseDetections, 'reuse detection', 'reuse detections'))
  if (outcome.recovery) parts.push(`then a new request: ${outcome.recovery}`)
  if (outcome.logoutSignal) parts.push(`logout signal: ${outcome.logoutSignal}`)
  if (outcome.note) parts.push(`(${outcome.note})`)
  return parts.join(' · ')
}

/** The scenario table, rows = scenarios, columns = clients. */
export function peersTable(result: PeersBenchResult): string {
  const escapePipes = (text: string) => text.replace(/\|/g, '\\|')
  return [
    `| scenario | ${clients.map((c) => result.clients[c]).join(' | ')} |`,
    `| --- | ${clients.map(() => '---').join(' | ')} |`,
    ...scenarios.map(
      (s) =>
        `| ${result.scenarios[s]} | ${clients.map((c) => escapePipes(cell(s, result.results[s][c]))).join(' | ')} |`,
    ),
  ].join('\n')
}

/** Runs every scenario against every client. */
export async function run(): Promise<BenchPartResult<PeersBenchResult>> {
  const results = {} as Record<Scenario, Record<Client, PeerOutcome>>
  for (const scenario of scenarios) {
    const row = {} as Record<Client, PeerOutcome>
    if (scenario === 'refreshHangs') {
      // mostly waiting on the bound: the clients wait side by side, each with its own server
      const outcomes = await Promise.all(clients.map((client) => runChild(client, scenario)))
      clients.forEach((client, i) => {
        row[client] = outcomes[i]!
      })
    } else {
      for (const client of clients) row[client] = await runChild(client, scenario)
    }
    results[scenario] = row
  }
  const cpu = cpus()
  const result: PeersBenchResult = {
    machine: { cpus: cpu.length, model: cpu[0]?.model ?? 'unknown', node: process.version },
    date: new Date().toISOString(),
    versions: {
      axios: version('axios'),
      axiosAuthRefresh: version('axios-auth-refresh'),
      axiosJwt: version('axios-jwt'),
    },
    method: `each client with its default settings (axios-auth-refresh also with deduplicateRefresh: false) and the refresh code its README shows, in a child process of its own, against a fresh test auth server on 127.0.0.1 (rotating refresh tokens, reuse grace 0); ${requestCount} requests per scenario; a request not settled within ${bound / 1000} s (${hangBound / 1000} s when the refresh never answers) counts as hung; "refreshes" are POST /refresh/token requests that reached the server. Scenario 2: 99 requests reach the server with the old token and their 401s are held, 1 more gets its 401 at once and starts the refresh, the server holds that refresh ${refreshHold} ms, and the 99 held 401s arrive meanwhile`,
    settings: {
      requests: requestCount,
      boundMs: bound,
      hangBoundMs: hangBound,
      refreshHoldMs: refreshHold,
      reuseGraceMs: 0,
    },
    clients: clientLabels,
    scenarios: scenarioLabels,
    results,
  }
  return { result, table: peersTable(result) }
}

// `node --import tsx bench/peers.ts <client> <scenario>`: one run, its outcome as the last line of stdout
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [client, scenario] = process.argv.slice(2) as [Client, Scenario]
  if (!clients.includes(client) || !scenarios.includes(scenario)) {
    console.error(`usage: bench/peers.ts <${clients.join('|')}> <${scenarios.join('|')}>`)
    process.exit(2)
  }
  const outcome = await runScenario(client, scenario)
  console.log(JSON.stringify(outcome))
  // hung requests and the peers' pending promises must not keep the child alive
  process.exit(0)
}
