// Random schedules for the token manager's property tests (issue 2): a model of an app whose requests retry
// once on 401 (as the adapters do), a fake resource server, a scripted refresh endpoint and a clock, driven by
// fast-check's scheduler so that refresh answers, storage calls and responses arrive in the orders it picks.
import {
  createTokenManager,
  isRefreshError,
  isTokenflowError,
  memoryStorage,
  type RefreshContext,
  RefreshError,
  type TokenEvent,
  type TokenManager,
  type TokenSet,
  type TokenStorage,
} from '@tokenflow/client'
import fc from 'fast-check'
import { vi } from 'vitest'
import { createTestLock, tokenSet } from './tokens.js'

export const T0 = 1_700_000_000_000
/** long enough that the lock never times out during a run: a lock timeout lets a second refresh start by design */
const LOCK_TIMEOUT = 3_600_000

export type Outcome =
  | { kind: 'ok'; ttl: number }
  | { kind: 'rejected'; status: 400 | 401 }
  | { kind: 'server' }
  | { kind: 'network' }
  | { kind: 'never' }

export type Op =
  /** an API request: `getAccessToken()`, send, and on 401 `refresh({ rejectedToken })` and one retry */
  | { type: 'request'; manager: number; signal: 'none' | 'live' | 'aborted' }
  /** the app calls `refresh()` itself, optionally naming a token a 401 came back for */
  | { type: 'refresh'; manager: number; signal: 'none' | 'live'; rejected: 'none' | 'stale' | 'latest' }
  | { type: 'advance'; ms: number }
  /** abort one of the live signals still not aborted */
  | { type: 'abort'; pick: number }
  /** let the scheduler deliver up to `count` pending answers (refresh, storage, responses), in an order it picks */
  | { type: 'release'; count: number }
  /** a re-login: a new session */
  | { type: 'setTokens'; manager: number; ttl: number; refreshToken: boolean }
  | { type: 'clear'; manager: number }
  /** the resource server stops accepting the most recently issued access token */
  | { type: 'revoke' }

export interface Schedule {
  managers: 1 | 2
  /** what storage holds when the managers are created */
  initial: 'none' | 'fresh' | 'expired' | 'noRefreshToken'
  initialTtl: number
  /**
   * 'async': every storage call is an answer the scheduler delivers (AsyncStorage-like).
   * 'lagging' (two managers): each has its own copy of storage, which gets the other's writes when the scheduler
   * delivers them, in order, as Chromium copies localStorage between tabs; the lock then answers `query()`, so
   * the rotation signal of rule 7 is in play.
   * 'localStorage' (two managers): the same copies, saying `shared: true` as `webStorage()` over localStorage does
   * ('lagging' leaves `shared` unset, as a custom storage may).
   * 'own' (two managers): cookie mode. Each has storage of its own (`shared: false`) and the refresh token is the
   * placeholder 'cookie', which never rotates (the real one is an HttpOnly cookie the tabs share), so the managers
   * share a session only through broadcasts; the lock answers `query()`.
   */
  storage: 'sync' | 'async' | 'lagging' | 'localStorage' | 'own'
  /** one per storage call (get, set or clear, of either manager), in call order: true throws; none once they run out */
  storageFailures: boolean[]
  /**
   * two managers also talk over a BroadcastChannel (a fake one, whose messages the scheduler delivers in the
   * order it picks, as late as it likes): refreshed and loggedOut reach the other manager that way too
   */
  broadcast: boolean
  lock: boolean
  /**
   * ms to wait for the lock: mostly `LOCK_TIMEOUT` (never), sometimes short. Then a manager that gives up refreshes
   * under the fallback lock, by design next to the one holding the lock: the invariants between the two managers
   * (one refresh in flight between them, no reuse) do not apply, and every other one still does.
   */
  lockTimeout: number
  leeway: number
  refreshTimeout: number
  retry: false | { attempts: number; baseDelay: number; maxDelay: number }
  /** what `Math.random()` returns, so the backoff jitter is reproducible */
  jitter: number
  /** one per call of the refresh function, in call order; 'ok' once they run out */
  outcomes: Outcome[]
  ops: Op[]
}

export type Invariant =
  | 'settles'
  | 'single-flight'
  | 'no-expired-token'
  | 'logged-out-once'
  | 'abort'
  | 'error-identity'
  | 'unhandled-rejection'
  | 'bounded-retries'
  | 'stale-401'
  | 'own-session'
  | 'no-reuse'
  | 'no-phantom-rejection'
  | 'one-session'

export interface Violation {
  invariant: Invariant
  message: string
}

/** Situations a run got into: the suite checks that the generated schedules reach each of them. */
export type Milestone =
  | 'proactive refresh'
  | 'joined a running refresh'
  | 'retried after a 401'
  | 'stale 401 answered without a refresh'
  | '401 for a token of an ended session'
  | 'transient failure retried'
  | `refresh failed: ${'rejected' | 'server' | 'network' | 'timeout'}`
  | `loggedOut: ${'refreshRejected' | 'cleared' | 'otherTab'}`
  | 'aborted while waiting'
  | 'session changed during a refresh'
  | 'adopted tokens from the other manager'
  | 'storage failed'
  | 'storage call outlasted refreshTimeout'
  | 'broadcast delivered'
  | 'saw a rotation signal'
  | 'lock wait timed out'
  | 'refreshed what a broadcast brought, over storage of its own'

export interface RunResult {
  violations: Violation[]
  reached: Set<Milestone>
}

// mostly short lives, so that tokens expire often within a schedule
const ttl = fc.oneof(fc.integer({ min: 2_000, max: 10_000 }), fc.integer({ min: 10_000, max: 120_000 }))

const outcome: fc.Arbitrary<Outcome> = fc.oneof(
  { weight: 4, arbitrary: ttl.map((ttl) => ({ kind: 'ok' as const, ttl })) },
  {
    weight: 1,
    arbitrary: fc
      .constantFrom(400 as const, 401 as const)
      .map((status) => ({ kind: 'rejected' as const, status })),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'server' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'network' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'never' as const }) },
)

function op(managers: 1 | 2): fc.Arbitrary<Op> {
  const manager = fc.integer({ min: 0, max: managers - 1 })
  return fc.oneof(
    {
      weight: 15,
      arbitrary: fc.record({
        type: fc.constant('request' as const),
        manager,
        signal: fc.constantFrom('none' as const, 'live' as const, 'live' as const, 'aborted' as const),
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({
        type: fc.constant('refresh' as const),
        manager,
        signal: fc.constantFrom('none' as const, 'live' as const),
        rejected: fc.constantFrom('none' as const, 'stale' as const, 'latest' as const),
      }),
    },
    {
      weight: 10,
      arbitrary: fc.record({
        type: fc.constant('advance' as const),
        // mostly short steps, sometimes past a token's lifetime or a refresh timeout
        ms: fc.oneof(
          fc.integer({ min: 0, max: 1_500 }),
          fc.integer({ min: 1_500, max: 20_000 }),
          fc.integer({ min: 20_000, max: 200_000 }),
        ),
      }),
    },
    { weight: 4, arbitrary: fc.record({ type: fc.constant('abort' as const), pick: fc.nat(20) }) },
    {
      weight: 15,
      arbitrary: fc.record({ type: fc.constant('release' as const), count: fc.integer({ min: 1, max: 4 }) }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        type: fc.constant('setTokens' as const),
        manager,
        ttl,
        // mostly with a refresh token; without one, an expired token must not be handed out
        refreshToken: fc.constantFrom(true, true, true, false),
      }),
    },
    { weight: 1, arbitrary: fc.record({ type: fc.constant('clear' as const), manager }) },
    { weight: 2, arbitrary: fc.constant({ type: 'revoke' as const }) },
  )
}

/** A random schedule for one manager, or for two managers sharing storage and a lock. */
export function scheduleArbitrary(managers: 1 | 2, maxOps = 40): fc.Arbitrary<Schedule> {
  return fc.record({
    managers: fc.constant(managers),
    initial: fc.constantFrom(
      'none' as const,
      'fresh' as const,
      'fresh' as const,
      'fresh' as const,
      'expired' as const,
      'noRefreshToken' as const,
    ),
    initialTtl: ttl,
    storage:
      managers === 2
        ? fc.constantFrom(
            'sync' as const,
            'async' as const,
            'lagging' as const,
            'localStorage' as const,
            'own' as const,
          )
        : fc.constantFrom('sync' as const, 'async' as const),
    // a quarter of the schedules have a storage that throws now and then (quota, disk, SecurityError)
    storageFailures: fc.oneof(
      { weight: 3, arbitrary: fc.constant<boolean[]>([]) },
      { weight: 1, arbitrary: fc.array(fc.boolean(), { minLength: 1, maxLength: 12 }) },
    ),
    broadcast: managers === 2 ? fc.boolean() : fc.constant(false),
    // two managers always share a lock: without one, two refreshes at once are expected (rule 7)
    lock: managers === 2 ? fc.constant(true) : fc.boolean(),
    lockTimeout: fc.oneof(
      { weight: 2, arbitrary: fc.constant(LOCK_TIMEOUT) },
      { weight: 1, arbitrary: fc.integer({ min: 50, max: 1_000 }) },
    ),
    leeway: fc.constantFrom(0, 1_000, 5_000, 30_000),
    refreshTimeout: fc.integer({ min: 500, max: 10_000 }),
    retry: fc.oneof(
      { weight: 1, arbitrary: fc.constant(false as const) },
      {
        weight: 3,
        arbitrary: fc.record({
          attempts: fc.integer({ min: 0, max: 2 }),
          baseDelay: fc.integer({ min: 10, max: 1_000 }),
          maxDelay: fc.integer({ min: 10, max: 3_000 }),
        }),
      },
    ),
    jitter: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
    outcomes: fc.array(outcome, { maxLength: 10 }),
    ops: fc.array(op(managers), { minLength: 1, maxLength: maxOps, size: 'max' }),
  })
}

/** Lets every promise callback that is ready run; setImmediate is not faked, so this is a real macrotask. */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve))

interface Call {
  id: number
  api: 'getAccessToken' | 'refresh' | 'setTokens' | 'clear'
  manager: number
  signal: AbortSignal | undefined
  settled: boolean
  /** the signal aborted while the call was still pending (or before it started) */
  abortedPending: boolean
  result?: { ok: true; value: unknown } | { ok: false; error: unknown }
}

interface RequestRecord {
  id: number
  manager: number
  signal: AbortSignal | undefined
  settled: boolean
  result?: { ok: true; status: number } | { ok: false; error: unknown }
}

interface ManagerState {
  manager: TokenManager
  /** bumps at every setTokens(): loggedOut may fire once per value */
  session: number
  events: Array<{ event: TokenEvent; session: number }>
  inFlight: number
  /** clock at the last refreshStarted event */
  refreshStartedAt: number
  /** calls of the refresh function since the last refreshStarted event */
  attempts: number
  /** refreshStarted events so far */
  starts: number
  /** the access token the manager holds, as its events tell; `undefined` when not known (loaded silently) */
  current: string | null | undefined
  /** a read has settled, so the manager has loaded storage and answers without waiting for it */
  loaded: boolean
  /**
   * every access token the manager was given or handed out (a request can only have been sent with one), and
   * the `epoch` at which it first held it
   */
  held: Map<string, number>
  /** bumps when the manager logs out or takes a login (its own, or another's it hears of) */
  epoch: number
  /** the tokens it holds came from the other manager (its last `refreshed` event says 'otherTab') */
  fromOther: boolean
}

/**
 * Runs one schedule against real token managers and returns every invariant it saw broken.
 * Installs fake timers (setTimeout and Date only) for the duration of the run.
 */
export async function runSchedule(s: fc.Scheduler, schedule: Schedule): Promise<RunResult> {
  const violations: Violation[] = []
  const reached = new Set<Milestone>()
  const violate = (invariant: Invariant, message: string) => violations.push({ invariant, message })
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown) => unhandled.push(reason)
  process.on('unhandledRejection', onUnhandled)
  vi.useFakeTimers({ now: T0, toFake: ['setTimeout', 'clearTimeout', 'Date'] })
  const random = vi.spyOn(Math, 'random').mockReturnValue(schedule.jitter)
  if (schedule.broadcast) vi.stubGlobal('BroadcastChannel', fakeBroadcastChannel(s, reached))
  try {
    await run(s, schedule, violate, reached)
    // unhandled rejections are reported after the microtask queue drains
    await flush()
    await flush()
  } finally {
    if (schedule.broadcast) vi.unstubAllGlobals()
    random.mockRestore()
    vi.useRealTimers()
    process.off('unhandledRejection', onUnhandled)
  }
  for (const reason of unhandled) violate('unhandled-rejection', `unhandled rejection: ${show(reason)}`)
  return { violations, reached }
}

/**
 * A BroadcastChannel for one run: a message reaches every other channel of the same name, as a structured
 * clone, when the scheduler delivers it: as late as it likes (a frozen tab gets its messages when it thaws),
 * in any order between senders, and in the order they were posted from one sender, as the HTML spec has it.
 */
function fakeBroadcastChannel(s: fc.Scheduler, reached: Set<Milestone>) {
  const open = new Set<FakeChannel>()
  class FakeChannel {
    onmessage: ((event: { data: unknown }) => void) | null = null
    constructor(readonly name: string) {
      open.add(this)
    }
    /** messages posted to each other channel and not delivered yet, oldest first */
    readonly queues = new Map<FakeChannel, unknown[]>()
    postMessage(message: unknown) {
      const data = structuredClone(message)
      for (const other of open) {
        if (other === this || other.name !== this.name) continue
        const queue = this.queues.get(other) ?? []
        this.queues.set(other, queue)
        queue.push(data)
        // each delivery takes the oldest message still queued for that channel
        void s.schedule(Promise.resolve(), `broadcast ${(data as { type?: string })?.type}`).then(() => {
          reached.add('broadcast delivered')
          other.onmessage?.({ data: structuredClone(queue.shift()) })
        })
      }
    }
    close() {
      open.delete(this)
    }
  }
  return FakeChannel
}

/** An error or value, short and without any token in it. */
function show(value: unknown): string {
  if (isRefreshError(value)) return `RefreshError(${value.kind}${value.status ? ` ${value.status}` : ''})`
  if (isTokenflowError(value)) return `TokenflowError(${value.code})`
  if (value instanceof Error) return `${value.name}(${value.message})`
  return String(value)
}

async function run(
  s: fc.Scheduler,
  schedule: Schedule,
  violate: (invariant: Invariant, message: string) => void,
  reached: Set<Milestone>,
): Promise<void> {
  // --- the fake resource server and the tokens it knows
  let serial = 0
  /** epoch ms at which the server stops accepting each access token (its `exp`) */
  const expiry = new Map<string, number>()
  /** epoch ms at which each access token reached the client (login, or the refresh answer) */
  const issuedAt = new Map<string, number>()
  /** the JWT's `iat`, in ms */
  const iat = new Map<string, number>()
  const issued: string[] = []
  const revoked = new Set<string>()
  /**
   * The session (login) each access token belongs to: a login starts one, a refresh stays in the one of the
   * refresh token it sent. In cookie mode every refresh sends the same placeholder, and the browser sends the
   * cookie of the latest login, in any tab: a refresh stays in that one.
   */
  const family = new Map<string, number>()
  const familyOfRefresh = new Map<string, number>()
  let cookieFamily: number | undefined
  const issue = (lifetime: number, at = Date.now(), refreshToken = true, from?: string): TokenSet => {
    const made = tokenSet(at, lifetime, ++serial)
    const session =
      from === undefined ? serial : schedule.storage === 'own' ? cookieFamily : familyOfRefresh.get(from)
    if (from === undefined) cookieFamily = serial
    if (session !== undefined) {
      family.set(made.accessToken, session)
      familyOfRefresh.set(made.refreshToken!, session)
    }
    // cookie mode: the page holds the placeholder, the cookie the real refresh token
    const set = schedule.storage === 'own' ? { ...made, refreshToken: 'cookie' } : made
    const exp = Math.floor((at + lifetime) / 1000) * 1000
    expiry.set(set.accessToken, exp)
    iat.set(set.accessToken, Math.floor(at / 1000) * 1000)
    // a token stored before the run (`at` in the past) reaches the client when the run starts
    issuedAt.set(set.accessToken, Date.now())
    issued.push(set.accessToken)
    return refreshToken ? set : { ...set, refreshToken: null }
  }
  const label = (token: string) => `token#${issued.indexOf(token) + 1}`
  /** the access tokens of logins (setTokens) */
  const logins = new Set<string>()
  const hold = (state: ManagerState, token: string) => {
    if (!state.held.has(token)) state.held.set(token, state.epoch)
  }

  // --- the scripted refresh endpoint
  const outcomes = [...schedule.outcomes]
  /** what the refresh function threw, and the session (setTokens count) its call was made in */
  const thrown = new Map<unknown, number>()
  let refreshCalls = 0
  let inFlight = 0
  const states: ManagerState[] = []
  /** every error a storageError event carried: a clear() the storage did not keep rejects with one of them */
  const storageErrors = new Set<unknown>()
  /**
   * a storage call outlasted refreshTimeout: the manager went on without it (a write not made, a read not
   * answered), so a manager may not see the other's rotation in storage, as after a storage that threw
   */
  let storageTimedOut = false
  /** refresh tokens whose rotation (an ok answer) reached the manager that sent them, and that manager */
  const spent = new Map<string, number>()
  const makeRefresh =
    (index: number) =>
    ({ signal, refreshToken }: RefreshContext): Promise<TokenSet> => {
      const id = ++refreshCalls
      const state = states[index]!
      // rule 7: once a refresh token's rotation reached a manager, no manager sends it again (a server with
      // no reuse grace would revoke the session). A storage that threw can leave the other manager behind.
      // In cookie mode the placeholder never rotates: one refresh in flight between the tabs (single-flight,
      // below) is what keeps the browser from sending a cookie twice
      if (schedule.storage === 'own' && state.fromOther)
        reached.add('refreshed what a broadcast brought, over storage of its own')
      if (
        schedule.storage !== 'own' &&
        spent.has(refreshToken) &&
        !schedule.storageFailures.includes(true) &&
        !storageTimedOut &&
        schedule.lockTimeout === LOCK_TIMEOUT
      )
        violate(
          'no-reuse',
          `manager ${index}: refresh call #${id} sent ${refreshToken}, whose rotation manager ${spent.get(refreshToken)} had received`,
        )
      state.attempts++
      if (state.attempts > 1) reached.add('transient failure retried')
      const allowed = schedule.retry === false ? 1 : schedule.retry.attempts + 1
      if (state.attempts > allowed)
        violate(
          'bounded-retries',
          `manager ${index}: refresh call #${id} is attempt ${state.attempts} of one refresh`,
        )
      state.inFlight++
      inFlight++
      if (state.inFlight > 1)
        violate('single-flight', `manager ${index}: refresh call #${id} started while another was in flight`)
      if (schedule.managers === 2 && inFlight > 1 && schedule.lockTimeout === LOCK_TIMEOUT)
        violate(
          'single-flight',
          `refresh call #${id} (manager ${index}) started while the other manager's was in flight`,
        )
      let ended = false
      // a call ends when it settles, or when the manager gives up on it (timeout): a real fetch aborts then
      const end = () => {
        if (ended) return
        ended = true
        state.inFlight--
        inFlight--
      }
      signal.addEventListener('abort', end, { once: true })
      const session = state.session
      const next = outcomes.shift() ?? { kind: 'ok', ttl: 60_000 }
      if (next.kind === 'never') return new Promise<TokenSet>(() => {})
      return s.schedule(Promise.resolve(), `refresh#${id} ${next.kind}`).then(() => {
        end()
        let error: unknown
        switch (next.kind) {
          case 'ok':
            // an answer after the manager gave up on the call (timeout, session replaced) never reaches it
            if (!signal.aborted) spent.set(refreshToken, index)
            return issue(next.ttl, undefined, undefined, refreshToken)
          case 'rejected':
            error = new RefreshError('rejected', 'refresh failed: invalid_grant', { status: next.status })
            break
          case 'server':
            error = new RefreshError('server', 'refresh failed: 500', { status: 500 })
            break
          case 'network':
            error = new TypeError('fetch failed')
            break
        }
        thrown.set(error, session)
        throw error
      })
    }

  // --- storage, shared by the managers
  const initial =
    schedule.initial === 'none'
      ? null
      : schedule.initial === 'expired'
        ? issue(schedule.initialTtl, T0 - 2 * schedule.initialTtl)
        : issue(schedule.initialTtl, T0, schedule.initial !== 'noRefreshToken')
  const backing = memoryStorage(initial)
  let storageCalls = 0
  let readFailed = false
  /** the backing call, or the throw `storageFailures` asks for at this call */
  const attempt = <T>(run: () => T, read = false): T => {
    if (schedule.storageFailures[storageCalls++]) {
      // a manager whose first read failed reads again on its next call: when it loads is not known any more
      if (read) readFailed = true
      throw new Error(`storage failure #${storageCalls}`)
    }
    return run()
  }
  /**
   * An async storage answers when the scheduler says, but carries its calls out in the order they were made,
   * as AsyncStorage's native queue and a browser's storage do: a write never lands after a later one.
   */
  const waiting: Array<() => void> = []
  const queued = <T>(label: string, run: () => T, read = false): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      waiting.push(() => {
        try {
          resolve(attempt(run, read))
        } catch (error) {
          reject(error)
        }
      })
      void s.schedule(Promise.resolve(), label).then(() => waiting.shift()!())
    })
  /** 'lagging': each manager's copy, and the other's writes still on their way to it (oldest first) */
  const copies = [memoryStorage(initial), memoryStorage(initial)]
  const inTransit: Array<Array<(copy: TokenStorage) => void>> = [[], []]
  const deliverCopy = (to: number) => {
    const write = inTransit[to]!.shift()
    if (write) write(copies[to]!)
  }
  /** a write lands in the writer's copy at once and in the other's when the scheduler says */
  const writeCopies = (from: number, write: (copy: TokenStorage) => void) =>
    attempt(() => {
      write(copies[from]!)
      const to = 1 - from
      inTransit[to]!.push(write)
      void s.schedule(Promise.resolve(), `storage copy to manager ${to}`).then(() => deliverCopy(to))
    })
  /** 'own': each manager's storage is its own, as in cookie mode (memoryStorage says `shared: false`) */
  const ownStorage = (index: number): TokenStorage => ({
    shared: false,
    get: () => attempt(() => copies[index]!.get(), true),
    set: (tokens) => attempt(() => copies[index]!.set(tokens)),
    clear: () => attempt(() => copies[index]!.clear()),
  })
  const lags = schedule.storage === 'lagging' || schedule.storage === 'localStorage'
  const laggingStorage = (index: number): TokenStorage => ({
    ...(schedule.storage === 'localStorage' ? { shared: true } : {}),
    get: () => attempt(() => copies[index]!.get(), true),
    set: (tokens) => writeCopies(index, (copy) => copy.set(tokens)),
    clear: () => writeCopies(index, (copy) => copy.clear()),
  })
  const storage: TokenStorage =
    schedule.storage === 'sync'
      ? {
          get: () => attempt(() => backing.get(), true),
          set: (tokens) => attempt(() => backing.set(tokens)),
          clear: () => attempt(() => backing.clear()),
        }
      : {
          get: () => queued('storage.get', () => backing.get() as TokenSet | null, true),
          set: (tokens) => queued('storage.set', () => void backing.set(tokens)),
          clear: () => queued('storage.clear', () => void backing.clear()),
        }
  const lock = schedule.lock
    ? createTestLock({
        query: lags || schedule.storage === 'own',
        onGiveUp: () => reached.add('lock wait timed out'),
        onQuery: (held) => {
          if (held.some((name) => name.includes(':rotated:'))) reached.add('saw a rotation signal')
        },
      })
    : false
  for (let index = 0; index < schedule.managers; index++) {
    const manager = createTokenManager({
      refresh: makeRefresh(index),
      storage: lags ? laggingStorage(index) : schedule.storage === 'own' ? ownStorage(index) : storage,
      leeway: schedule.leeway,
      refreshTimeout: schedule.refreshTimeout,
      retry: schedule.retry,
      lock,
      lockTimeout: schedule.lockTimeout,
      channel: schedule.broadcast ? 'tokenflow-property' : false,
      now: () => Date.now(),
    })
    const state: ManagerState = {
      manager,
      session: 0,
      events: [],
      inFlight: 0,
      refreshStartedAt: 0,
      attempts: 0,
      starts: 0,
      loaded: false,
      // with two managers, a manager holds the stored tokens only if it read them before the other replaced them
      held: new Map(initial && schedule.managers === 1 ? [[initial.accessToken, 0]] : []),
      epoch: 0,
      fromOther: false,
      // with two managers, each loads whatever the other wrote by the time it first reads storage
      current: schedule.managers === 1 ? (initial?.accessToken ?? null) : undefined,
    }
    manager.subscribe((event) => {
      const before = state.current
      // logged out, a manager takes a login broadcast by the other one as a session of its own
      if (event.type === 'refreshed' && event.source === 'otherTab' && state.current === null) state.session++
      state.events.push({ event, session: state.session })
      if (event.type === 'refreshStarted') {
        state.refreshStartedAt = Date.now()
        state.attempts = 0
        state.starts++
      }
      if (event.type === 'refreshed') state.current = event.tokens.accessToken
      // a login the other manager made (its first token) is a new session here too, and so are tokens of
      // another login than the ones before (a login found in storage and refreshed: the README's window)
      const token = event.type === 'refreshed' ? event.tokens.accessToken : undefined
      const switched =
        token !== undefined &&
        (logins.has(token) ||
          (typeof before === 'string' &&
            family.has(before) &&
            family.has(token) &&
            family.get(before) !== family.get(token)))
      if (event.type === 'loggedOut' || switched) state.epoch++
      if (event.type === 'refreshed') hold(state, event.tokens.accessToken)
      if (event.type === 'refreshed') state.fromOther = event.source === 'otherTab'
      if (event.type === 'loggedOut') state.fromOther = false
      if (event.type === 'loggedOut') state.current = null
      if (event.type === 'refreshFailed') reached.add(`refresh failed: ${event.error.kind}` as Milestone)
      if (event.type === 'loggedOut') reached.add(`loggedOut: ${event.reason}`)
      if (event.type === 'refreshed' && event.source === 'otherTab')
        reached.add('adopted tokens from the other manager')
      if (event.type === 'storageError') {
        reached.add('storage failed')
        const { error } = event
        storageErrors.add(error)
        if (/^the storage did not answer/.test(String((error.cause as Error)?.message))) {
          storageTimedOut = true
          reached.add('storage call outlasted refreshTimeout')
        }
        if (
          !isTokenflowError(error) ||
          error.code !== 'ERR_STORAGE' ||
          // the storage's own error, or the manager's for a call that outlasted refreshTimeout
          !/^(storage failure #|the storage did not answer within \d+ ms$)/.test(
            String((error.cause as Error)?.message),
          )
        )
          violate(
            'error-identity',
            `manager ${index}: storageError carried ${show(error)}, not ERR_STORAGE with the storage's error (or its timeout) as cause`,
          )
      }
    })
    states.push(state)
  }

  // --- the app
  const calls: Call[] = []
  const requests: RequestRecord[] = []
  const controllers: AbortController[] = []
  const handedOut: string[] = []

  function track<T>(api: Call['api'], manager: number, signal: AbortSignal | undefined, promise: Promise<T>) {
    const call: Call = {
      id: calls.length + 1,
      api,
      manager,
      signal,
      settled: false,
      abortedPending: !!signal?.aborted,
    }
    calls.push(call)
    const settle = (result: NonNullable<Call['result']>) => {
      call.settled = true
      call.result = result
      // an answer other than the abort means the call got past the manager's first read of storage
      const aborted = !result.ok && signal?.aborted && result.error === signal.reason
      if ((api === 'getAccessToken' || api === 'refresh') && !aborted) states[manager]!.loaded = true
    }
    promise.then(
      (value) => settle({ ok: true, value }),
      (error: unknown) => settle({ ok: false, error }),
    )
    return promise
  }

  /**
   * When the manager last had the chance to check the token a call will get: when the call was made, or,
   * for a call that joins a running refresh, when that refresh started. A token that reached the client
   * after that, fresh, and expired while the manager was still saving it is the refresh's own latency,
   * like the app's delay between reading a token and sending it.
   */
  const checkpoint = (index: number) => {
    const state = states[index]!
    if (state.manager.status !== 'refreshing') return Date.now()
    reached.add('joined a running refresh')
    return state.refreshStartedAt
  }

  /** Outside the leeway, by the manager's own rule (rule 3): `exp - min(leeway, lifetime / 2) > now`. */
  const fresh = (token: string) => {
    const exp = expiry.get(token)!
    return exp - Math.min(schedule.leeway, (exp - iat.get(token)!) / 2) > Date.now()
  }

  /**
   * Rule 2: a 401 for a token that is no longer current resolves with the current token and starts no
   * refresh, as long as the current token itself needs none; a 401 for a token of another session (a login
   * since) rejects with ERR_SESSION_CLEARED, refreshing nothing. With two managers a login can reach the other
   * one through storage alone, which tells no login from a refresh: there only the first rule is checked, and
   * ERR_SESSION_CLEARED is taken for it too (see below).
   * Call before `refresh()`; returns the check.
   */
  function staleRule(index: number, rejectedToken: string | undefined, signal: AbortSignal | undefined) {
    const state = states[index]!
    const current = state.current
    const starts = state.starts
    const heldSince = rejectedToken === undefined ? 0 : (state.held.get(rejectedToken) ?? 0)
    const known =
      state.loaded &&
      !readFailed &&
      typeof current === 'string' &&
      rejectedToken !== undefined &&
      rejectedToken !== current &&
      state.held.has(rejectedToken) &&
      family.has(rejectedToken) &&
      family.has(current)
    const foreign =
      known && schedule.managers === 1 && family.get(rejectedToken!) !== family.get(current as string)
    const applies =
      known &&
      family.get(rejectedToken!) === family.get(current as string) &&
      state.manager.status !== 'refreshing' &&
      fresh(current as string)
    return (result: { ok: true; token: string } | { ok: false; error: unknown }) => {
      if (foreign) {
        reached.add('401 for a token of an ended session')
        const cleared = !result.ok && (result.error as { code?: unknown })?.code === 'ERR_SESSION_CLEARED'
        if (
          state.starts !== starts ||
          !(cleared || (signal?.aborted && !result.ok && result.error === signal.reason))
        )
          violate(
            'stale-401',
            `manager ${index}: a 401 for ${label(rejectedToken!)} of an ended session got ${
              result.ok ? label(result.token) : show(result.error)
            }${state.starts !== starts ? ' and started a refresh' : ''}, not ERR_SESSION_CLEARED`,
          )
      }
      if (!applies) return
      // with two managers a session can leave a manager and come back: it logs out (a refused refresh, the
      // other's logout) and then takes the other's refresh of that session, or it takes the other's login and
      // then a refresh of its own old session from the other. A manager that logged out or took a login since
      // it held the token may count it as another session's: failing the request then is safe
      const ended = !result.ok && (result.error as { code?: unknown })?.code === 'ERR_SESSION_CLEARED'
      if (ended && schedule.managers === 2 && state.epoch > heldSince) {
        if (state.starts !== starts)
          violate('stale-401', `manager ${index}: a 401 for ${label(rejectedToken!)} started a refresh`)
        return
      }
      if (state.starts !== starts)
        violate(
          'stale-401',
          `manager ${index}: a 401 for the stale ${label(rejectedToken)} started a refresh`,
        )
      else if (result.ok ? result.token !== current : !signal?.aborted || result.error !== signal.reason)
        violate(
          'stale-401',
          `manager ${index}: a 401 for the stale ${label(rejectedToken)} got ${
            result.ok ? label(result.token) : show(result.error)
          }, not the current ${label(current)}`,
        )
    }
  }

  /** Rule 3: the manager never hands out a token it knows has expired. */
  function handOut(token: string | null, api: string, manager: number, calledAt: number): void {
    if (token === null) return
    handedOut.push(token)
    hold(states[manager]!, token)
    const exp = expiry.get(token)
    const received = issuedAt.get(token)
    if (exp === undefined || received === undefined)
      violate('no-expired-token', `manager ${manager}: ${api}() returned a token nobody issued`)
    else if (exp <= Date.now() && (received < calledAt || exp <= received))
      violate(
        'no-expired-token',
        `manager ${manager}: ${api}() returned ${label(token)}, expired ${Date.now() - exp} ms ago (t=+${Date.now() - T0})`,
      )
  }

  /** The server checks the token when the request arrives, so a token can expire on the way. */
  function send(request: RequestRecord, token: string): Promise<number> {
    return s.schedule(Promise.resolve(), `request#${request.id} ${label(token)}`).then(() => {
      const exp = expiry.get(token) ?? Number.NEGATIVE_INFINITY
      return revoked.has(token) || exp <= Date.now() ? 401 : 200
    })
  }

  /** What the axios and fetch adapters do: send with the current token; on 401 refresh once and retry once. */
  async function request(record: RequestRecord): Promise<number> {
    const { manager: index, signal } = record
    const manager = states[index]!.manager
    let calledAt = checkpoint(index)
    // (before the first read of storage has answered, no session is known yet: a login then is the first one)
    const before = states[index]!.loaded && !readFailed ? states[index]!.current : undefined
    const token = await track('getAccessToken', index, signal, manager.getAccessToken({ signal }))
    handOut(token, 'getAccessToken', index, calledAt)
    // one manager knows every session change: a request made in one session never gets another's token
    if (
      schedule.managers === 1 &&
      typeof before === 'string' &&
      token !== null &&
      family.has(before) &&
      family.has(token) &&
      family.get(before) !== family.get(token)
    )
      violate(
        'one-session',
        `manager ${index}: a request made with ${label(before)} current was handed ${label(token)} of another session`,
      )
    // logged out: the request goes without a token and its 401 reaches the app unchanged
    if (token === null) return 401
    if ((issuedAt.get(token) ?? 0) > calledAt) reached.add('proactive refresh')
    const first = await send(record, token)
    if (first !== 401) return first
    let retry: string
    calledAt = checkpoint(index)
    const callsBefore = refreshCalls
    const checkStale = staleRule(index, token, signal)
    try {
      retry = await track('refresh', index, signal, manager.refresh({ rejectedToken: token, signal }))
      checkStale({ ok: true, token: retry })
    } catch (error) {
      checkStale({ ok: false, error })
      // nobody is logged in any more: the 401 is the answer
      if (isTokenflowError(error) && error.code === 'ERR_NO_REFRESH_TOKEN') return 401
      throw error
    }
    handOut(retry, 'refresh', index, calledAt)
    if (retry !== token && refreshCalls === callsBefore) reached.add('stale 401 answered without a refresh')
    const second = await send(record, retry)
    if (second === 200) reached.add('retried after a 401')
    return second
  }

  const newSignal = (kind: 'none' | 'live' | 'aborted'): AbortSignal | undefined => {
    if (kind === 'none') return undefined
    const controller = new AbortController()
    if (kind === 'aborted') controller.abort(new Error('aborted before the call'))
    else controllers.push(controller)
    return controller.signal
  }

  const release = async (count: number) => {
    for (let i = 0; i < count && s.count() > 0; i++) {
      await s.waitOne()
      await flush()
    }
  }

  for (const step of schedule.ops) {
    switch (step.type) {
      case 'request': {
        const record: RequestRecord = {
          id: requests.length + 1,
          manager: step.manager,
          signal: newSignal(step.signal),
          settled: false,
        }
        requests.push(record)
        request(record).then(
          (status) => {
            record.settled = true
            record.result = { ok: true, status }
          },
          (error: unknown) => {
            record.settled = true
            record.result = { ok: false, error }
          },
        )
        break
      }
      case 'refresh': {
        const signal = newSignal(step.signal)
        const rejectedToken =
          step.rejected === 'none'
            ? undefined
            : step.rejected === 'latest'
              ? issued.at(-1)
              : handedOut[Math.max(0, handedOut.length - 2)]
        const calledAt = checkpoint(step.manager)
        const checkStale = staleRule(step.manager, rejectedToken, signal)
        const promise = track(
          'refresh',
          step.manager,
          signal,
          states[step.manager]!.manager.refresh({ rejectedToken, signal }),
        )
        promise.then(
          (token) => {
            checkStale({ ok: true, token })
            handOut(token, 'refresh', step.manager, calledAt)
          },
          (error: unknown) => checkStale({ ok: false, error }),
        )
        break
      }
      case 'advance':
        if (!lags) await vi.advanceTimersByTimeAsync(step.ms)
        // a copy of storage lags by less than half a second: well inside what rule 7 waits for (2 s)
        else
          for (let left = step.ms; left > 0; left -= 500) {
            for (const to of [0, 1]) while (inTransit[to]!.length) deliverCopy(to)
            await vi.advanceTimersByTimeAsync(Math.min(left, 500))
          }
        break
      case 'abort': {
        const live = controllers.filter((controller) => !controller.signal.aborted)
        const controller = live[step.pick % Math.max(1, live.length)]
        if (!controller) break
        for (const call of calls)
          if (call.signal === controller.signal && !call.settled) {
            call.abortedPending = true
            reached.add('aborted while waiting')
          }
        controller.abort(new Error(`abort of signal #${controllers.indexOf(controller) + 1}`))
        break
      }
      case 'release':
        await release(step.count)
        break
      case 'setTokens': {
        const state = states[step.manager]!
        if (state.manager.status === 'refreshing') reached.add('session changed during a refresh')
        state.session++
        const login = issue(step.ttl, Date.now(), step.refreshToken)
        state.current = login.accessToken
        logins.add(login.accessToken)
        state.epoch++
        hold(state, login.accessToken)
        state.fromOther = false
        track('setTokens', step.manager, undefined, state.manager.setTokens(login))
        break
      }
      case 'clear':
        if (states[step.manager]!.manager.status === 'refreshing')
          reached.add('session changed during a refresh')
        track('clear', step.manager, undefined, states[step.manager]!.manager.clear())
        break
      case 'revoke': {
        const latest = issued.at(-1)
        if (latest) revoked.add(latest)
        break
      }
    }
    await flush()
  }

  // drain: deliver every answer and fire every timer (timeouts, backoff) until nothing is left to happen
  let quiet = false
  for (let round = 0; round < 1_000; round++) {
    if (s.count() > 0) await s.waitOne()
    else if (vi.getTimerCount() > 0) await vi.advanceTimersToNextTimerAsync()
    else {
      quiet = true
      break
    }
    await flush()
  }

  // --- invariant 1: everything settles, and nothing is left refreshing
  if (!quiet) violate('settles', 'the schedule did not come to rest after 1000 answers and timers')
  for (const record of requests)
    if (!record.settled) violate('settles', `request #${record.id} (manager ${record.manager}) never settled`)
  for (const call of calls)
    if (!call.settled)
      violate('settles', `${call.api}() call #${call.id} (manager ${call.manager}) never settled`)
  states.forEach((state, index) => {
    if (state.manager.status === 'refreshing')
      violate('settles', `manager ${index} still says 'refreshing' with nothing left to happen`)
  })

  // --- invariant 4: loggedOut at most once per session
  states.forEach((state, index) => {
    const perSession = new Map<number, number>()
    for (const { event, session } of state.events)
      if (event.type === 'loggedOut') perSession.set(session, (perSession.get(session) ?? 0) + 1)
    for (const [session, count] of perSession)
      if (count > 1)
        violate('logged-out-once', `manager ${index}: loggedOut fired ${count} times in session ${session}`)
  })

  // --- invariant 5: an aborted waiter rejects with its signal's reason
  for (const call of calls) {
    if (!call.abortedPending || !call.result) continue
    if (call.result.ok || call.result.error !== call.signal!.reason)
      violate(
        'abort',
        `${call.api}() call #${call.id} (manager ${call.manager}) was aborted while waiting but ${
          call.result.ok ? 'resolved' : `rejected with ${show(call.result.error)}`
        } instead of its signal's reason`,
      )
  }

  // --- invariant 6: refresh failures reach every waiter as the one RefreshError the manager reported
  states.forEach((state, index) => {
    const failed = new Map<RefreshError, boolean>()
    const loggedOut = new Map<unknown, number>()
    for (const { event, session } of state.events) {
      if (event.type === 'refreshFailed') {
        failed.set(event.error, event.willLogout)
        const error = event.error
        const known =
          thrown.has(error) ||
          (error.kind === 'network' && thrown.has(error.cause)) ||
          error.kind === 'timeout' ||
          (error.kind === 'rejected' && error.status === undefined)
        if (!isRefreshError(error) || error.code !== 'ERR_REFRESH_FAILED' || !known)
          violate(
            'error-identity',
            `manager ${index}: refreshFailed carries ${show(error)} (cause ${show(error.cause)}), not a classified failure`,
          )
        if (error.kind !== 'rejected' && event.willLogout)
          violate('error-identity', `manager ${index}: a ${error.kind} failure said willLogout`)
        // cookie mode: a tab's own storage holds only what it wrote itself, and says nothing about a session a
        // broadcast brought; a refusal the server never gave is a logout out of nothing
        if (
          schedule.storage === 'own' &&
          error.kind === 'rejected' &&
          !thrown.has(error) &&
          !schedule.storageFailures.includes(true)
        )
          violate(
            'no-phantom-rejection',
            `manager ${index}: a refresh failed with '${error.message}', though the server refused nothing`,
          )
      }
      if (event.type === 'loggedOut' && event.error)
        loggedOut.set(event.error, (loggedOut.get(event.error) ?? 0) + 1)
      if (event.type === 'loggedOut' && event.reason === 'refreshRejected' && !failed.get(event.error!))
        violate(
          'error-identity',
          `manager ${index}: loggedOut 'refreshRejected' without a refreshFailed that said willLogout`,
        )
      // a refresh only ever ends the session it was made for, never a login that replaced it
      const madeIn = event.type === 'loggedOut' ? thrown.get(event.error) : undefined
      if (madeIn !== undefined && madeIn !== session)
        violate(
          'own-session',
          `manager ${index}: a refresh of session ${madeIn} was rejected and logged out session ${session}`,
        )
    }
    for (const [error, willLogout] of failed) {
      const count = loggedOut.get(error) ?? 0
      if (willLogout && count !== 1)
        violate(
          'error-identity',
          `manager ${index}: a rejected refresh was followed by ${count} loggedOut events`,
        )
      if (!willLogout && count !== 0)
        violate(
          'error-identity',
          `manager ${index}: a ${error.kind} failure that kept the session logged out`,
        )
    }
    const allowed = (error: unknown, signal: AbortSignal | undefined, api: string): string | undefined => {
      if (signal?.aborted && error === signal.reason) return undefined
      if (isRefreshError(error)) {
        if (!failed.has(error)) return `a ${show(error)} the manager never reported in refreshFailed`
        if (error.kind === 'rejected' && loggedOut.get(error) !== 1)
          return `a rejected refresh error whose session did not log out exactly once`
        return undefined
      }
      if (isTokenflowError(error) && error.code === 'ERR_SESSION_CLEARED') return undefined
      // a logout that the storage did not keep: the same error the storageError event reported
      if (api === 'clear' && isTokenflowError(error) && error.code === 'ERR_STORAGE')
        return storageErrors.has(error) ? undefined : `${show(error)} never reported in a storageError event`
      if (api === 'refresh' && isTokenflowError(error) && error.code === 'ERR_NO_REFRESH_TOKEN')
        return undefined
      return show(error)
    }
    for (const call of calls) {
      if (call.manager !== index || call.result?.ok !== false) continue
      const problem = allowed(call.result.error, call.signal, call.api)
      if (problem)
        violate(
          'error-identity',
          `${call.api}() call #${call.id} (manager ${index}) rejected with ${problem}`,
        )
    }
    for (const record of requests) {
      if (record.manager !== index || record.result?.ok !== false) continue
      const problem = allowed(record.result.error, record.signal, 'request')
      if (problem)
        violate('error-identity', `request #${record.id} (manager ${index}) rejected with ${problem}`)
    }
  })
}
