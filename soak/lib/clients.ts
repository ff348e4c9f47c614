/**
 * The soak's simulated clients. Each one is what an app would run: a real `createTokenManager` with
 * `memoryStorage`, `jsonRefresh`, and its own axios instance with `attachTokenRefresh`. What the soak
 * adds is failover: a list of base URLs, tried in turn when a connection fails (refused, reset), for
 * the API requests (an axios adapter under the interceptors, so tokenflow never sees the failed
 * attempt) and for the refresh calls (the `fetch` given to `jsonRefresh`).
 */
import {
  createTokenManager,
  isRefreshError,
  isTokenflowError,
  jsonRefresh,
  memoryStorage,
  type TokenManager,
  type TokenStorage,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosAdapter, type AxiosInstance } from 'axios'
import { SOAK_PASSWORD } from './protocol.js'

/** What the fleet counts during one phase. */
export interface PhaseCounters {
  startedAt: number
  requests: number
  ok: number
  failed: number
  /** failed requests, each with when it failed and how (see `classify`) */
  failures: { at: number; client: number; kind: string }[]
  /** ok answers that named another user than the client's: tokens crossed between sessions */
  wrongUser: number
  /** ms from sending to the answer, of ok requests */
  latencies: number[]
  /** refreshes that succeeded (manager event `refreshed`, source 'local') */
  refreshes: number
  /** refresh failures by kind (manager event `refreshFailed`) */
  refreshFailures: Record<string, number>
  /** manager event `loggedOut`: with a valid session, every one is a false logout */
  logouts: number
  /** connection attempts that failed and were sent to the next base URL */
  failovers: number
  /** ok answers by the name of the instance that sent them */
  answersByInstance: Record<string, number>
}

/** One simulated app user. */
export interface SoakClient {
  id: number
  username: string
  storage: TokenStorage
  manager: TokenManager
  api: AxiosInstance
  /** epoch ms of each ok request in the current phase, in order */
  okTimes: number[]
  logouts: number
  /** logs in through the failover list and hands the tokens to the manager */
  login(): Promise<void>
}

/** The simulated clients and their counters. */
export interface Fleet {
  clients: SoakClient[]
  /** the counters of the current phase */
  readonly counters: PhaseCounters
  /** logs every client in (through the failover list) */
  login(): Promise<void>
  /** starts fresh counters and returns them */
  beginPhase(): PhaseCounters
  /** every client starts sending requests in a loop */
  start(): void
  /** stops the loops and waits for every request in flight */
  stop(): Promise<void>
  /** one request of one client: undefined when ok, else the failure kind */
  probe(client: SoakClient): Promise<string | undefined>
}

/** Options of `createFleet`. */
export interface FleetOptions {
  /** base URLs of the server instances, in failover order */
  bases: readonly string[]
  /** how many clients */
  count: number
  /** pause between two requests of a client: uniform in [min, max] ms */
  interval: readonly [number, number]
  /** prefix of the usernames, so fleets of one soak never share a user */
  userPrefix: string
  /**
   * The managers' `leeway`, in ms. `exp` has 1-second resolution and the server sets exp = floor(iat) + 1:
   * a refresh before the second is over gets the same `exp` back, so with 1-second tokens any leeway only
   * adds refreshes. At 0 the token is refreshed on the first read after it expired; one that expires in
   * flight gets a 401, and rule 2 retries it.
   * @default 0
   */
  leeway?: number
}

const httpAdapter = axios.getAdapter('http')

/** Refused or cut connections: the request may be sent to another instance (refresh replays fall in `reuseGrace`). */
const CONNECTION_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ERR_SOCKET_CONNECTION_TIMEOUT'])

/**
 * How a request failed, as a short stable string: `refresh:server:500`, `http:401`, `network:ECONNRESET`, …
 * @example
 * classify(new RefreshError('server', 'refresh failed: answered 500', { status: 500 })) // 'refresh:server:500'
 */
export function classify(error: unknown): string {
  if (isRefreshError(error))
    return `refresh:${error.kind}${error.status === undefined ? '' : `:${error.status}`}`
  if (isTokenflowError(error)) return `tokenflow:${error.code}`
  if (axios.isAxiosError(error)) {
    return error.response ? `http:${error.response.status}` : `network:${error.code ?? 'unknown'}`
  }
  return `other:${error instanceof Error ? error.name : typeof error}`
}

/**
 * A failure the app should retry later without logging out: a refresh that failed transiently, a 5xx, no connection.
 * @example
 * isTransient('refresh:server:500') // true; isTransient('http:401') and isTransient('refresh:rejected:400') are false
 */
export function isTransient(kind: string): boolean {
  return /^(refresh:(server|network|timeout)|http:5\d\d$|network:)/.test(kind)
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Creates `count` clients spread over `bases`.
 * @example
 * const fleet = createFleet({ bases: [a.url, b.url], count: 50, interval: [300, 500], userPrefix: 'pg' })
 * await fleet.login()
 * fleet.start()
 */
export function createFleet({ bases, count, interval, userPrefix, leeway = 0 }: FleetOptions): Fleet {
  const fresh = (): PhaseCounters => ({
    startedAt: Date.now(),
    requests: 0,
    ok: 0,
    failed: 0,
    failures: [],
    wrongUser: 0,
    latencies: [],
    refreshes: 0,
    refreshFailures: {},
    logouts: 0,
    failovers: 0,
    answersByInstance: {},
  })
  let counters = fresh()

  /** Base URLs in the order to try them: each request starts one further, so both instances take load. */
  const router = (start: number) => {
    let turn = start
    return () => {
      const first = turn++ % bases.length
      return [...bases.slice(first), ...bases.slice(0, first)]
    }
  }

  const makeClient = (id: number): SoakClient => {
    const order = router(id)
    const failoverFetch: typeof fetch = async (input, init) => {
      const path = new URL(input instanceof Request ? input.url : String(input)).pathname
      let lastError: unknown
      for (const base of order()) {
        try {
          return await fetch(`${base}${path}`, init)
        } catch (error) {
          // fetch rejects with a TypeError when no answer came; an abort is the manager's timeout
          if (init?.signal?.aborted || !(error instanceof TypeError)) throw error
          lastError = error
          counters.failovers++
        }
      }
      throw lastError
    }
    const adapter: AxiosAdapter = async (config) => {
      let lastError: unknown
      for (const base of order()) {
        try {
          return await httpAdapter({ ...config, baseURL: base })
        } catch (error) {
          if (!axios.isAxiosError(error) || error.response || !CONNECTION_ERRORS.has(error.code ?? ''))
            throw error
          lastError = error
          counters.failovers++
        }
      }
      throw lastError
    }

    const storage = memoryStorage()
    const manager = createTokenManager({
      // the host is replaced by the failover fetch
      refresh: jsonRefresh('http://soak.invalid/refresh/token', { fetch: failoverFetch }),
      storage,
      leeway,
      refreshTimeout: 5_000,
      lock: false,
      channel: false,
    })
    const api = axios.create({ adapter, timeout: 10_000 })
    attachTokenRefresh(api, manager)
    const username = `${userPrefix}-${id}`
    const login = async () => {
      const response = await failoverFetch('http://soak.invalid/auth/login', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username, password: SOAK_PASSWORD }),
      })
      const body = (await response.json()) as { accessToken?: string; refreshToken?: string }
      if (!response.ok || !body.accessToken)
        throw new Error(`login of "${username}" answered ${response.status}`)
      await manager.setTokens({ accessToken: body.accessToken, refreshToken: body.refreshToken ?? null })
    }
    const client: SoakClient = { id, username, storage, manager, api, okTimes: [], logouts: 0, login }
    manager.subscribe((event) => {
      if (event.type === 'refreshed' && event.source === 'local') counters.refreshes++
      if (event.type === 'refreshFailed') {
        const kind = classify(event.error)
        counters.refreshFailures[kind] = (counters.refreshFailures[kind] ?? 0) + 1
      }
      if (event.type === 'loggedOut') {
        counters.logouts++
        client.logouts++
      }
    })
    return client
  }

  const clients = Array.from({ length: count }, (_, id) => makeClient(id))

  const request = async (client: SoakClient): Promise<string | undefined> => {
    const sent = Date.now()
    counters.requests++
    try {
      const response = await client.api.get<{ sub?: string; instance?: string }>('/api/ping')
      const at = Date.now()
      counters.ok++
      const instance = response.data.instance ?? 'unknown'
      counters.answersByInstance[instance] = (counters.answersByInstance[instance] ?? 0) + 1
      counters.latencies.push(at - sent)
      client.okTimes.push(at)
      if (response.data.sub !== client.username) counters.wrongUser++
      return undefined
    } catch (error) {
      const kind = classify(error)
      counters.failed++
      counters.failures.push({ at: Date.now(), client: client.id, kind })
      return kind
    }
  }

  let running = false
  let loops: Promise<void>[] = []
  const loop = async (client: SoakClient) => {
    const [min, max] = interval
    // spread the first requests over one interval, so the clients do not beat in step
    await sleep(Math.random() * max)
    while (running) {
      await request(client)
      await sleep(min + Math.random() * (max - min))
    }
  }

  return {
    clients,
    get counters() {
      return counters
    },
    async login() {
      // a few at a time: logins are a burst the soak does not measure
      for (let i = 0; i < clients.length; i += 20) {
        await Promise.all(clients.slice(i, i + 20).map((client) => client.login()))
      }
    },
    beginPhase() {
      counters = fresh()
      for (const client of clients) client.okTimes = []
      return counters
    },
    start() {
      if (running) return
      running = true
      loops = clients.map(loop)
    },
    async stop() {
      running = false
      await Promise.all(loops)
      loops = []
    },
    probe: request,
  }
}
