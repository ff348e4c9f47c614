import {
  type LockManagerLike,
  memoryStorage,
  RefreshError,
  type TokenManagerOptions,
  type TokenSet,
  type TokenStorage,
  webStorage,
} from '@tokenflow/client'
import fc from 'fast-check'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { type Milestone, runSchedule, scheduleArbitrary, T0 } from './helpers/schedule.js'
import {
  createTestLock,
  deferred,
  flush,
  placeholderStorage,
  setupManager,
  slowReadStorage,
  tokenSet,
} from './helpers/tokens.js'

/**
 * Issue 2: random schedules of requests, clock jumps, refresh outcomes (ok, 400, 401, 500, network error,
 * never answers), aborts, logins and logouts, in orders fast-check's scheduler picks. After each schedule
 * has drained, helpers/schedule.ts checks:
 * - settles: every request and every manager call settled; no manager is left 'refreshing'
 * - single-flight: at most one refresh function call in flight per manager, and between two managers
 *   sharing storage and a lock (a call ends when it settles or when the manager aborts its signal)
 * - no-expired-token: getAccessToken() and refresh() never hand out a token whose `exp` has passed
 * - logged-out-once: loggedOut fires at most once per session (a session starts at each setTokens)
 * - abort: a call whose signal aborts while it waits rejects with that signal's reason (identity)
 * - error-identity: a refresh failure reaches every waiter as the very RefreshError of its refreshFailed
 *   event (code ERR_REFRESH_FAILED); a rejected one logged out exactly once with that error, a transient
 *   one did not log out; the manager's errors wrap the refresh function's (kind network keeps the cause)
 * - own-session: a rejected refresh logs out the session it was made for, never a login that replaced it
 * - stale-401 (rule 2): a 401 for a token that is no longer current gets the current token, no refresh; one
 *   for a token of a session that has ended (a login or a logout since) rejects with ERR_SESSION_CLEARED
 * - one-session: a request made in one session is never handed the token of a login that replaced it
 * - bounded-retries (rule 5): one refresh makes at most `retry.attempts + 1` calls
 * - no-reuse (rule 7): a refresh token whose rotation reached a manager is never sent again, by either
 *   manager (unless the storage threw: then the other manager may not know)
 * - unhandled-rejection: none, seen through process.on('unhandledRejection')
 * Half of the two-manager schedules also connect them by a BroadcastChannel whose messages arrive as late as
 * the scheduler likes, in any order between senders and in posting order from one sender (as in browsers).
 * An async storage answers whenever the scheduler says, but carries its calls out in the order they were made.
 * Two fifths of the two-manager schedules give each manager its own copy of storage, which gets the other's writes
 * late (by less than half a second of the clock), as Chromium copies localStorage between tabs; the lock then
 * answers query(), so the rotation signal of rule 7 is what keeps a manager from reusing a rotated token. Half of
 * those copies say `shared: true`, as webStorage() over localStorage does, and half leave it unset.
 * Another fifth is cookie mode: each manager's storage is its own (`shared: false`), the refresh token is the
 * placeholder 'cookie', and a session reaches the other manager only by broadcast. There one more invariant holds:
 * - no-phantom-rejection: no refresh fails as rejected unless the refresh function said so (a tab's own storage
 *   says nothing about a session a broadcast brought)
 * A third of the schedules wait a short `lockTimeout` for the lock; a manager that gives up refreshes under the
 * fallback lock by design, so only the two invariants between managers are not checked there.
 * A quarter of the schedules have a storage that throws now and then: the same invariants hold, and each
 * failure reaches the app as a storageError event with code ERR_STORAGE and the storage's error as cause.
 * A failure prints fast-check's seed and path and the scheduler's order of answers; rerun that one schedule with
 * TOKENFLOW_PROPERTY_SEED=<seed> TOKENFLOW_PROPERTY_PATH=<path> npx vitest run token-manager.property -t 'two managers'
 */

/** 1000 per property by default; TOKENFLOW_PROPERTY_RUNS=20000 for a longer soak */
const RUNS = Number(process.env.TOKENFLOW_PROPERTY_RUNS) || 1_000
/** 1000 runs take about 2.5 s of CPU per property; the margin is for a loaded 2-core CI runner */
const TIMEOUT = Math.max(60_000, RUNS * 60)
/** replays one failure: TOKENFLOW_PROPERTY_SEED and TOKENFLOW_PROPERTY_PATH from fast-check's report */
const { TOKENFLOW_PROPERTY_SEED: seed, TOKENFLOW_PROPERTY_PATH: path } = process.env
const replay: { seed?: number; path?: string } = seed ? { seed: Number(seed), ...(path ? { path } : {}) } : {}

const everyRun: Milestone[] = [
  'proactive refresh',
  'joined a running refresh',
  'retried after a 401',
  'stale 401 answered without a refresh',
  'transient failure retried',
  'refresh failed: rejected',
  'refresh failed: server',
  'refresh failed: network',
  'refresh failed: timeout',
  'loggedOut: refreshRejected',
  'loggedOut: cleared',
  'aborted while waiting',
  'session changed during a refresh',
  'storage failed',
  'storage call outlasted refreshTimeout',
]

/**
 * Reached in about 2 % of the runs (18 to 26 of 1,000 in eight runs on 2026-11-27): a floor of 1 % failed one run
 * in ten, with 9. The floor for these is 0.4 %.
 */
const rare = new Set<Milestone>(['refreshed what a broadcast brought, over storage of its own'])

/** Runs the property and then checks that the generated schedules got into every situation worth testing. */
async function check(managers: 1 | 2, milestones: Milestone[]) {
  const reached = new Map<Milestone, number>()
  await fc.assert(
    fc.asyncProperty(fc.scheduler(), scheduleArbitrary(managers), async (s, schedule) => {
      const result = await runSchedule(s, schedule)
      for (const milestone of result.reached) reached.set(milestone, (reached.get(milestone) ?? 0) + 1)
      expect(result.violations).toEqual([])
    }),
    { numRuns: RUNS, ...replay },
  )
  if (replay.seed !== undefined) return
  // each is reached in 3 % or more of the runs (the rare ones in 2 %); below 1 % (0.4 %) the generators have drifted
  for (const milestone of milestones)
    expect(reached.get(milestone) ?? 0, milestone).toBeGreaterThanOrEqual(
      RUNS / (rare.has(milestone) ? 250 : 100),
    )
}

describe(`token manager properties (fast-check, ${RUNS} random schedules each)`, () => {
  it(
    'one manager: every request settles once, one refresh at a time, no expired token, loggedOut once per session',
    async () => {
      await check(1, [...everyRun, '401 for a token of an ended session'])
    },
    TIMEOUT,
  )

  it(
    'two managers sharing storage and a lock: the same invariants, and one refresh in flight between them',
    async () => {
      await check(2, [
        ...everyRun,
        'loggedOut: otherTab',
        'adopted tokens from the other manager',
        'broadcast delivered',
        'saw a rotation signal',
        'lock wait timed out',
        'refreshed what a broadcast brought, over storage of its own',
      ])
    },
    TIMEOUT,
  )
})

// --- counterexamples the properties found, minimised by hand into plain scenarios; each fails until fixed

const MIN = 60_000

/** `exp` of a token made by tokenSet(), in epoch ms. */
const expOf = (token: string): number =>
  JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).exp * 1000

const setup = (options: Partial<TokenManagerOptions> = {}) => setupManager(options, T0)

afterEach(() => {
  vi.restoreAllMocks()
  vi.useRealTimers()
})

/**
 * Stubs BroadcastChannel with one that holds every message until the test delivers it, in any order it likes
 * (a tab that was frozen, or busy, gets its messages late). Restore with vi.unstubAllGlobals().
 */
function holdBroadcasts() {
  const held: Array<{ from: string; to: string; data: unknown; deliver: () => void }> = []
  const open = new Set<{ id: string; name: string; onmessage: ((event: { data: unknown }) => void) | null }>()
  let channels = 0
  class HeldChannel {
    onmessage: ((event: { data: unknown }) => void) | null = null
    readonly id = `channel ${++channels}`
    constructor(readonly name: string) {
      open.add(this)
    }
    postMessage(data: unknown) {
      for (const other of open)
        if (other !== this && other.name === this.name)
          held.push({
            from: this.id,
            to: other.id,
            data,
            deliver: () => other.onmessage?.({ data: structuredClone(data) }),
          })
    }
    close() {}
  }
  vi.stubGlobal('BroadcastChannel', HeldChannel)
  return held
}

describe('counterexamples found by the properties', () => {
  it('answers a late 401 for a stale token with a fresh token, not with a current token that has expired', async () => {
    // no-expired-token: createAuthFetch sends its one retry with what refresh() returns, so the request is lost
    const { manager, calls, clock } = setup({ leeway: 0 })
    const first = tokenSet(clock.now(), MIN, 0)
    await manager.setTokens(first)
    // a request goes out with `first`; meanwhile a refresh replaces it
    const refreshed = manager.refresh()
    await flush()
    const second = tokenSet(clock.now(), MIN, 1)
    calls[0]!.resolve(second)
    expect(await refreshed).toBe(second.accessToken)
    // the request's 401 comes back after `second` expired too (a long upload, a suspended app)
    clock.advance(2 * MIN)
    const retry = manager.refresh({ rejectedToken: first.accessToken })
    await flush()
    const third = tokenSet(clock.now(), MIN, 2)
    calls[1]?.resolve(third)
    const token = await retry
    expect(expOf(token)).toBeGreaterThan(clock.now())
    expect(token).toBe(third.accessToken)
    expect(calls[1]!.context.refreshToken).toBe('rt-1')
  })

  it('calls off the refresh of a replaced session, so two refreshes are never in flight at once', async () => {
    // single-flight: setTokens() settles the running refresh's waiters but lets its call run on
    const { manager, calls, clock } = setup()
    await manager.setTokens(tokenSet(clock.now(), MIN, 0))
    const waiter = manager.refresh().catch((error: unknown) => error)
    await flush()
    expect(calls).toHaveLength(1)
    const login = tokenSet(clock.now(), MIN, 'login')
    await manager.setTokens(login)
    // the old session's waiter is not handed the login's token (it may be another user's)
    expect(await waiter).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    const next = manager.refresh()
    await flush()
    expect(calls).toHaveLength(2)
    expect(calls[1]!.context.refreshToken).toBe('rt-login')
    // when the new session's call starts, the old one must have been called off
    expect(calls[0]!.context.signal.aborted).toBe(true)
    calls[1]!.resolve(tokenSet(clock.now(), MIN, 'login-2'))
    await next
  })

  it('makes no further attempt for a session replaced during the retry backoff', async () => {
    // single-flight, same cause: the session is checked before the backoff, not after it
    vi.useFakeTimers({ now: T0 })
    const { manager, calls } = setup({
      retry: { attempts: 2, baseDelay: 1_000, maxDelay: 1_000 },
      now: Date.now,
    })
    vi.spyOn(Math, 'random').mockReturnValue(0.5)
    await manager.setTokens(tokenSet(Date.now(), MIN, 0))
    const waiter = manager.refresh().catch((e: unknown) => e)
    await vi.advanceTimersByTimeAsync(0)
    calls[0]!.reject(new TypeError('fetch failed'))
    await vi.advanceTimersByTimeAsync(100)
    // the backoff is running; a login replaces the session
    await manager.setTokens(tokenSet(Date.now(), MIN, 'login'))
    await waiter
    await vi.advanceTimersByTimeAsync(5_000)
    expect(calls.map((call) => call.context.refreshToken)).toEqual(['rt-0'])
  })

  it("does not log out a new login when the replaced session's refresh is rejected", async () => {
    // own-session: after a rejection the manager reads storage (did another tab rotate?); a login during that
    // read is then logged out with the old session's error, and storage is cleared
    let saved: TokenSet | null = null
    let slowRead: ReturnType<typeof deferred<void>> | undefined
    const storage: TokenStorage = {
      get: async () => {
        await slowRead?.promise
        return saved
      },
      set: (tokens) => {
        saved = tokens
      },
      clear: () => {
        saved = null
      },
    }
    const { manager, calls, clock, events, types } = setup({ storage })
    await manager.setTokens(tokenSet(clock.now(), MIN, 0))
    const waiter = manager.refresh().catch((e: unknown) => e)
    await flush()
    slowRead = deferred<void>()
    calls[0]!.reject(new RefreshError('rejected', 'refresh failed: invalid_grant', { status: 400 }))
    await flush()
    const login = tokenSet(clock.now(), MIN, 'login')
    await manager.setTokens(login)
    expect(await waiter).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    slowRead.resolve()
    await flush()
    expect(types()).not.toContain('loggedOut')
    expect(events.find((e) => e.type === 'refreshFailed')).toMatchObject({ willLogout: false })
    expect(manager.status).toBe('authenticated')
    expect(saved).toEqual(login)
    expect(await manager.getAccessToken()).toBe(login.accessToken)
  })

  it('estimates clock skew when the refresh answer arrives, not after a slow storage write', async () => {
    // no-expired-token: a write that takes longer than 5 s (the app was suspended while saving) is taken for a
    // device clock running that far ahead, and every later read trusts the token for that much longer
    let saved: TokenSet | null = null
    let slowWrite: ReturnType<typeof deferred<void>> | undefined
    const storage: TokenStorage = {
      get: () => saved,
      set: async (tokens) => {
        await slowWrite?.promise
        saved = tokens
      },
      clear: () => {
        saved = null
      },
    }
    const { manager, calls, clock } = setup({ storage, leeway: 0 })
    await manager.setTokens(tokenSet(clock.now(), MIN, 0))
    clock.advance(2 * MIN)
    const read = manager.getAccessToken()
    await flush()
    slowWrite = deferred<void>()
    // the server's clock agrees with ours: iat is now
    const next = tokenSet(clock.now(), MIN, 1)
    calls[0]!.resolve(next)
    await flush()
    clock.advance(2 * MIN)
    slowWrite.resolve()
    await read
    // `next` expired a minute ago by a clock that was right all along: the next read must refresh first
    const again = manager.getAccessToken()
    await flush()
    calls[1]?.resolve(tokenSet(clock.now(), MIN, 2))
    const token = await again
    expect(expOf(token!)).toBeGreaterThan(clock.now())
    expect(calls).toHaveLength(2)
  })

  it('does not adopt an expired token after a rejected refresh, when another manager rotated meanwhile', async () => {
    // no-expired-token: the adoption after a rejection skips the expiry check that the adoption under the lock has
    const storage = memoryStorage()
    const a = setup({ storage, refreshTimeout: 10 * MIN })
    const b = setup({ storage, refreshTimeout: 10 * MIN })
    await a.manager.setTokens(tokenSet(T0, MIN, 0))
    expect(await b.manager.getAccessToken()).toBe(tokenSet(T0, MIN, 0).accessToken)
    a.clock.advance(2 * MIN)
    b.clock.advance(2 * MIN)
    // no lock (React Native, Node): both refresh with rt-0; a wins and saves its rotated tokens
    const fromA = a.manager.getAccessToken()
    const fromB = b.manager.getAccessToken()
    await flush()
    const rotated = tokenSet(a.clock.now(), MIN, 1)
    a.calls[0]!.resolve(rotated)
    expect(await fromA).toBe(rotated.accessToken)
    // b's refresh hangs for two minutes, then the server calls rt-0 reused
    a.clock.advance(2 * MIN)
    b.clock.advance(2 * MIN)
    b.calls[0]!.reject(new RefreshError('rejected', 'refresh failed: invalid_grant', { status: 400 }))
    await flush()
    b.calls[1]?.resolve(tokenSet(b.clock.now(), MIN, 2))
    const token = await fromB
    expect(token).not.toBeNull()
    expect(expOf(token!)).toBeGreaterThan(b.clock.now())
    // the only way to a fresh token: refresh with the refresh token a left in storage
    expect(b.calls.map((call) => call.context.refreshToken)).toEqual(['rt-0', 'rt-1'])
    expect(b.types()).not.toContain('loggedOut')
  })

  it('never calls the refresh function without a refresh token, when another manager logged in with none and it expired', async () => {
    // error-identity, with the managers also talking over a BroadcastChannel: under the lock, a found b's login in
    // storage and refreshed it with its missing refresh token (null), then crashed on it (a 'network' TypeError)
    const storage = memoryStorage()
    const lock = createTestLock()
    const a = setup({ storage, lock })
    const b = setup({ storage, lock })
    await a.manager.setTokens(tokenSet(T0, MIN, 0))
    const login = { ...tokenSet(T0, MIN, 1), refreshToken: null }
    await b.manager.setTokens(login)
    a.clock.advance(2 * MIN)
    b.clock.advance(2 * MIN)
    const waiter = a.manager.getAccessToken().catch((e: unknown) => e)
    await flush()
    expect(a.calls.map((call) => call.context.refreshToken)).toEqual([])
    const error = await waiter
    // the session this refresh was for was replaced, and the one that replaced it cannot be refreshed
    expect(error).toMatchObject({ name: 'TokenflowError', code: 'ERR_SESSION_CLEARED' })
    expect(a.events).toEqual([
      { type: 'refreshStarted' },
      { type: 'refreshed', tokens: login, source: 'otherTab' },
    ])
    // from now on a holds b's session: expired and without a refresh token, so no token at all
    expect(await a.manager.getAccessToken()).toBeNull()
    await expect(a.manager.refresh()).rejects.toMatchObject({ code: 'ERR_NO_REFRESH_TOKEN' })
    expect(a.calls).toHaveLength(0)
    // and status says so too: a token that expired and cannot be refreshed is no session
    expect(a.manager.status).toBe('unauthenticated')
  })

  it('does not hand the waiters of a rejected refresh an expired token from a login broadcast long ago', async () => {
    // no-expired-token, with a BroadcastChannel that delivers late (a tab that thaws gets its messages then):
    // logged out by the rejection, a adopted b's old login as a new session and gave its expired token to the
    // waiters of the refresh that had just failed
    const held = holdBroadcasts()
    try {
      const cleared = deferred<void>()
      let saved: TokenSet | null = null
      const storage: TokenStorage = {
        get: () => saved,
        set(tokens) {
          saved = tokens
        },
        clear() {
          saved = null
          return cleared.promise
        },
      }
      const a = setup({ storage, channel: 'tabs' })
      const b = setup({ channel: 'tabs' })
      await a.manager.setTokens(tokenSet(T0, MIN, 0))
      // b logs in after a did
      b.clock.advance(1)
      const login = tokenSet(T0, MIN, 1)
      await b.manager.setTokens(login)
      a.clock.advance(2 * MIN)
      const waiter = a.manager.getAccessToken().catch((e: unknown) => e)
      await flush()
      a.calls[0]!.reject(new RefreshError('rejected', 'refresh failed: invalid_grant', { status: 400 }))
      await flush()
      // a logged out and is clearing its storage; b's login, broadcast two minutes ago, arrives only now
      expect(a.types()).toEqual(['refreshStarted', 'refreshFailed', 'loggedOut'])
      for (const message of held.splice(0)) message.deliver()
      cleared.resolve()
      const result = await waiter
      // the refusal itself: a session that arrives after the logout began does not change what its waiters get
      expect(result).toMatchObject({ name: 'RefreshError', code: 'ERR_REFRESH_FAILED', kind: 'rejected' })
      // a follows b's session from now on (its next read refreshes that session first)
      expect(a.events.at(-1)).toEqual({ type: 'refreshed', tokens: login, source: 'otherTab' })
      expect(a.manager.status).toBe('authenticated')
      expect(a.calls).toHaveLength(1)
    } finally {
      vi.unstubAllGlobals()
    }
  })

  it('calls off the refresh of a replaced session even after an older refresh ended its backoff', async () => {
    // single-flight: the refresh of a session replaced during its retry backoff woke up after the next session's
    // refresh had started, and forgot that one's attempt; a third session then ran a refresh next to it
    const { manager, calls } = setup({ retry: { attempts: 1, baseDelay: 40, maxDelay: 40 } })
    vi.spyOn(Math, 'random').mockReturnValue(0.999)
    await manager.setTokens(tokenSet(T0, MIN, 0))
    const first = manager.refresh().catch((e: unknown) => e)
    await flush()
    calls[0]!.reject(new TypeError('fetch failed'))
    await flush()
    // in the backoff: a login replaces the session, and its own refresh starts
    const second = tokenSet(T0, MIN, 1)
    await manager.setTokens(second)
    expect(await first).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    const waiting = manager.refresh().catch((e: unknown) => e)
    await flush()
    expect(calls.map((call) => call.context.refreshToken)).toEqual(['rt-0', 'rt-1'])
    // the first refresh's backoff ends
    await new Promise((resolve) => setTimeout(resolve, 80))
    // another login: the refresh of the session it replaces is called off
    await manager.setTokens(tokenSet(T0, MIN, 2))
    expect(calls[1]!.context.signal.aborted).toBe(true)
    expect(await waiting).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    const third = manager.refresh()
    await flush()
    expect(calls).toHaveLength(3)
    calls[2]!.resolve(tokenSet(T0, MIN, 3))
    expect(await third).toBe(tokenSet(T0, MIN, 3).accessToken)
  })

  it('waits for its copy of storage when the refresh token it shows was just rotated, even if it is not the one it started from', async () => {
    // no-reuse, with a copy of storage per manager (Chromium's localStorage between tabs): a's copy showed rt-2,
    // newer than the rt-1 a started from; the rotation signal was checked for rt-1 only, so a refreshed with rt-2,
    // which b had rotated a moment before
    const copies = [memoryStorage(), memoryStorage()]
    const inTransit: Array<() => void> = []
    const copyFor = (index: number): TokenStorage => {
      const write = (apply: (copy: TokenStorage) => unknown) => {
        apply(copies[index]!)
        inTransit.push(() => apply(copies[1 - index]!))
      }
      return {
        get: () => copies[index]!.get(),
        set: (tokens) => write((copy) => copy.set(tokens)),
        clear: () => write((copy) => copy.clear()),
      }
    }
    const lock = createTestLock({ query: true })
    const a = setup({ storage: copyFor(0), lock })
    const b = setup({ storage: copyFor(1), lock })
    const advance = (ms: number) => {
      a.clock.advance(ms)
      b.clock.advance(ms)
    }
    const deliver = () => {
      for (const apply of inTransit.splice(0)) apply()
    }
    const first = tokenSet(T0, MIN, 1)
    await b.manager.setTokens(first)
    deliver()
    expect(await a.manager.getAccessToken()).toBe(first.accessToken)
    // b rotates rt-1; a's copy gets it, a's memory still holds the first tokens
    advance(2 * MIN)
    const second = b.manager.getAccessToken()
    await flush()
    b.calls[0]!.resolve(tokenSet(b.clock.now(), MIN, 2))
    await second
    deliver()
    // b rotates rt-2; this time a's copy is behind
    advance(2 * MIN)
    const third = b.manager.getAccessToken()
    await flush()
    const latest = tokenSet(b.clock.now(), MIN, 3)
    b.calls[1]!.resolve(latest)
    expect(await third).toBe(latest.accessToken)
    const fromA = a.manager.getAccessToken()
    await new Promise((resolve) => setTimeout(resolve, 60))
    // a holds the lock and waits: its copy shows rt-2, whose rotation signal b holds
    expect(a.calls).toHaveLength(0)
    deliver()
    expect(await fromA).toBe(latest.accessToken)
    expect(a.calls).toHaveLength(0)
    expect(b.calls.map((call) => call.context.refreshToken)).toEqual(['rt-1', 'rt-2'])
  })

  it('does not take tokens from a late broadcast whose refresh token it rotated itself, so never sends that one again', async () => {
    // no-reuse: waiting for the lock, b took a's login from a broadcast that arrived late, and then refreshed it
    // with rt-1, which b itself had rotated: a server with no reuse grace revokes the session for that
    const held = holdBroadcasts()
    try {
      const storage = memoryStorage()
      const lock = createTestLock()
      const a = setup({ storage, lock, channel: 'tabs' })
      const b = setup({ storage, lock, channel: 'tabs' })
      const login = tokenSet(T0, MIN, 1)
      await a.manager.setTokens(login)
      // the login's broadcast to b is held back; b reads the login from storage
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
      const advance = (ms: number) => {
        a.clock.advance(ms)
        b.clock.advance(ms)
      }
      advance(2 * MIN)
      const first = b.manager.getAccessToken()
      await flush()
      const second = tokenSet(b.clock.now(), MIN, 2)
      b.calls[0]!.resolve(second)
      expect(await first).toBe(second.accessToken)
      advance(2 * MIN)
      // a refreshes what it finds in storage (rt-2) and holds the lock; b waits for the lock
      const fromA = a.manager.getAccessToken()
      await flush()
      expect(a.calls.map((call) => call.context.refreshToken)).toEqual(['rt-2'])
      const fromB = b.manager.getAccessToken()
      await flush()
      // now the login a broadcast at the start reaches b
      const late = held.find(
        (message) => (message.data as { tokens?: TokenSet }).tokens?.refreshToken === 'rt-1',
      )!
      late.deliver()
      const third = tokenSet(a.clock.now(), MIN, 3)
      a.calls[0]!.resolve(third)
      expect(await fromA).toBe(third.accessToken)
      await flush()
      // b takes what a left in storage, and sends no refresh token twice
      expect(b.calls.map((call) => call.context.refreshToken)).toEqual(['rt-1'])
      expect(await fromB).toBe(third.accessToken)
      expect(b.events.filter((event) => event.type === 'refreshed' && event.source === 'otherTab')).toEqual([
        { type: 'refreshed', tokens: third, source: 'otherTab' },
      ])
    } finally {
      vi.unstubAllGlobals()
    }
  })
  it('does not refresh tokens a broadcast brought when a storage that does not say it is its own was emptied meanwhile', async () => {
    // no-reuse: two managers share one storage that does not set `shared`, talk over a channel and share a lock
    // that cannot be queried. b took a's login from a broadcast; a rotated rt-1 and logged out, both of its
    // messages still on their way. b's refresh found the storage empty and, since its tokens came by broadcast,
    // took that for its own logout: it sent rt-1, which a had rotated (e430c8a; seed 1275775253 in CI)
    const held = holdBroadcasts()
    try {
      const backing = memoryStorage()
      const storage: TokenStorage = {
        get: () => backing.get(),
        set: (tokens) => backing.set(tokens),
        clear: () => backing.clear(),
      }
      const lock = createTestLock()
      const a = setup({ storage, lock, channel: 'tabs' })
      const b = setup({ storage, lock, channel: 'tabs' })
      expect(await b.manager.getAccessToken()).toBeNull()
      const login = tokenSet(T0, MIN, 1)
      await a.manager.setTokens(login)
      for (const message of held.splice(0)) message.deliver()
      expect(b.events.at(-1)).toEqual({ type: 'refreshed', tokens: login, source: 'otherTab' })
      // a's token is refused: a rotates rt-1, then logs out; b hears neither yet
      const fromA = a.manager.refresh({ rejectedToken: login.accessToken })
      await flush()
      a.calls[0]!.resolve(tokenSet(T0, MIN, 2))
      await fromA
      await a.manager.clear()
      expect(held).toHaveLength(2)
      // b's token is refused too
      const error = await b.manager.refresh({ rejectedToken: login.accessToken }).catch((e: unknown) => e)
      expect(b.calls).toHaveLength(0)
      expect(error).toMatchObject({ name: 'RefreshError', code: 'ERR_REFRESH_FAILED', kind: 'rejected' })
      expect(b.events.at(-1)).toMatchObject({ type: 'loggedOut', reason: 'otherTab' })
    } finally {
      vi.unstubAllGlobals()
    }
  })
  describe('cookie mode: a tab that gets the lock before the message of the refresh that let it go', () => {
    // a Chromium review: 1 to 2 bursts in 20 made two refreshes, the lock reaching the next tab before the
    // BroadcastChannel message did; with a tab closed mid-refresh that second rotation got the session revoked
    afterEach(() => vi.unstubAllGlobals())
    const cookie = (at: number, id: number) => ({ ...tokenSet(at, MIN, id), refreshToken: 'cookie' })

    /** two tabs on one login, its token expired; both read, a refreshes first, and its message is held */
    async function refreshedInA(
      options: Partial<TokenManagerOptions> = {},
      lock: LockManagerLike = createTestLock({ query: true }),
    ) {
      const held = holdBroadcasts()
      const a = setup({ storage: placeholderStorage(), lock, channel: 'tabs', ...options })
      const b = setup({ storage: placeholderStorage(), lock, channel: 'tabs', ...options })
      const login = cookie(T0, 1)
      await a.manager.setTokens(login)
      for (const message of held.splice(0)) message.deliver()
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
      a.clock.advance(2 * MIN)
      b.clock.advance(2 * MIN)
      const fromA = a.manager.getAccessToken()
      await flush()
      const fromB = b.manager.getAccessToken()
      await vi.waitFor(() => expect(a.calls).toHaveLength(1))
      const next = cookie(a.clock.now(), 2)
      a.calls[0]!.resolve(next)
      expect(await fromA).toBe(next.accessToken)
      return { held, b, fromB, next }
    }

    it('waits for that message, and does not refresh again', async () => {
      const { held, b, fromB, next } = await refreshedInA()
      // b holds the lock now, and a's message is still on its way
      await new Promise((resolve) => setTimeout(resolve, 60))
      expect(b.calls).toHaveLength(0)
      for (const message of held.splice(0)) message.deliver()
      expect(await fromB).toBe(next.accessToken)
      expect(b.calls).toHaveLength(0)
    })

    it('when that message never comes, refreshes after the wait and stays logged in', async () => {
      // the signal of a replaced access token spent no refresh token: unlike a rotation, it never means a logout
      const { held, b, fromB } = await refreshedInA()
      held.length = 0 // a's tab closed
      await vi.waitFor(() => expect(b.calls).toHaveLength(1), { timeout: 3_000 })
      const own = cookie(b.clock.now(), 3)
      b.calls[0]!.resolve(own)
      expect(await fromB).toBe(own.accessToken)
      expect(b.types()).not.toContain('loggedOut')
    })

    it('waits 2 s of the clock however slowly the lock answers, not a number of looks at it', async () => {
      // a second code review: 80 looks of 25 ms each, and a query() that took 100 ms made the wait 5 s. Each look
      // now takes at least 125 ms (the query and the 25 ms pause), so 2 s leave room for 16 at most; the old loop
      // made about 40, until the other tab's signal ran out after 5 s
      const base = createTestLock({ query: true })
      let looks = 0
      const lock: LockManagerLike = {
        request: base.request,
        async query() {
          looks++
          await new Promise((resolve) => setTimeout(resolve, 100))
          return base.query!()
        },
      }
      const { held, b, fromB } = await refreshedInA({}, lock)
      held.length = 0
      looks = 0
      await vi.waitFor(() => expect(b.calls).toHaveLength(1), { timeout: 8_000 })
      expect(looks).toBeLessThanOrEqual(20)
      b.calls[0]!.resolve(cookie(b.clock.now(), 3))
      await fromB
    }, 15_000)

    it('a retry after the lost message does not wait for it a second time', async () => {
      const { held, b, fromB } = await refreshedInA({ retry: { attempts: 2, baseDelay: 10, maxDelay: 10 } })
      held.length = 0
      await vi.waitFor(() => expect(b.calls).toHaveLength(1), { timeout: 3_000 })
      b.calls[0]!.reject(new TypeError('fetch failed'))
      // the retry follows its 10 ms backoff, not another 2 s wait
      await vi.waitFor(() => expect(b.calls).toHaveLength(2), { timeout: 1_000 })
      const own = cookie(b.clock.now(), 3)
      b.calls[1]!.resolve(own)
      expect(await fromB).toBe(own.accessToken)
    })
  })

  it('cookie mode: a tab opened after another tab replaced the placeholder does not wait for a message it can never get', async () => {
    // every page load holds the same placeholder token; the signal of the first tab's refresh named it, and a tab
    // opened within 5 s waited 2 s for that refresh's message, sent before it existed (a code review); the held
    // channel keeps that message from ever reaching it, as in a browser
    holdBroadcasts()
    try {
      const lock = createTestLock({ query: true })
      const a = setup({ storage: placeholderStorage(), lock, channel: 'tabs' })
      const fromA = a.manager.getAccessToken()
      await flush()
      a.calls[0]!.resolve({ ...tokenSet(T0, MIN, 1), refreshToken: 'cookie' })
      await fromA
      a.clock.advance(1_000)
      const b = setup({ storage: placeholderStorage(), lock, channel: 'tabs', now: () => a.clock.now() })
      const fromB = b.manager.getAccessToken()
      await vi.waitFor(() => expect(b.calls).toHaveLength(1), { timeout: 1_000 })
      b.calls[0]!.resolve({ ...tokenSet(T0, MIN, 2), refreshToken: 'cookie' })
      expect(await fromB).toBe(tokenSet(T0, MIN, 2).accessToken)
    } finally {
      vi.unstubAllGlobals()
    }
  })

  it('a storage of its own that two frames of one tab share: the frame waits for the message of a rotation it did not hear of', async () => {
    // no-reuse: sessionStorage says shared: false, but a page and its same-origin iframe both read it; the frame
    // holds the rt-1 a broadcast brought, the page rotated it, and the rotation signal (navigator.locks answers
    // query()) makes the frame wait for the page's message instead of sending rt-1
    const held = holdBroadcasts()
    try {
      const map = new Map<string, string>()
      const backend = {
        getItem: (key: string) => map.get(key) ?? null,
        setItem: (key: string, value: string) => void map.set(key, value),
        removeItem: (key: string) => void map.delete(key),
      }
      const storage = { ...webStorage(backend), shared: false }
      const lock = createTestLock({ query: true })
      const top = setup({ storage, lock, channel: 'tabs' })
      const frame = setup({ storage, lock, channel: 'tabs' })
      expect(await frame.manager.getAccessToken()).toBeNull()
      const login = tokenSet(T0, MIN, 1)
      await top.manager.setTokens(login)
      for (const message of held.splice(0)) message.deliver()
      expect(await frame.manager.getAccessToken()).toBe(login.accessToken)
      const fromTop = top.manager.refresh({ rejectedToken: login.accessToken })
      await flush()
      top.calls[0]!.resolve(tokenSet(T0, MIN, 2))
      await fromTop
      const fromFrame = frame.manager.refresh({ rejectedToken: login.accessToken })
      await new Promise((resolve) => setTimeout(resolve, 60))
      expect(frame.calls).toHaveLength(0)
      for (const message of held.splice(0)) message.deliver()
      expect(await fromFrame).toBe(tokenSet(T0, MIN, 2).accessToken)
      expect(frame.calls).toHaveLength(0)
    } finally {
      vi.unstubAllGlobals()
    }
  })

  it('with memoryStorage, a channel and rotating refresh tokens, a tab refreshes the login another tab brought, not its own earlier one', async () => {
    // a second code review: a rule 216d729 added let storage of a tab's own win when it held a refresh token other
    // than the broadcast's, and the tab sent its own earlier login's rt-0
    const held = holdBroadcasts()
    try {
      const a = setup({ storage: memoryStorage(), channel: 'tabs' })
      const b = setup({ storage: memoryStorage(), channel: 'tabs' })
      await a.manager.setTokens(tokenSet(T0, MIN, 0))
      for (const message of held.splice(0)) message.deliver()
      b.clock.advance(1_000)
      const login = tokenSet(T0 + 1_000, MIN, 5)
      await b.manager.setTokens(login)
      for (const message of held.splice(0)) message.deliver()
      expect(await a.manager.getAccessToken()).toBe(login.accessToken)
      a.clock.advance(2 * MIN)
      const fromA = a.manager.getAccessToken()
      await flush()
      expect(a.calls.map((call) => call.context.refreshToken)).toEqual(['rt-5'])
      a.calls[0]!.resolve(tokenSet(a.clock.now(), MIN, 6))
      expect(await fromA).toBe(tokenSet(a.clock.now(), MIN, 6).accessToken)
    } finally {
      vi.unstubAllGlobals()
    }
  })

  describe('two tabs that log in or out at the same moment (a Chromium review found two logins swap sessions)', () => {
    // each tab's message is still on its way when the other acts; the later action wins in both tabs
    const twoTabs = () => {
      const held = holdBroadcasts()
      const a = setup({ storage: memoryStorage(), channel: 'tabs' })
      const b = setup({ storage: memoryStorage(), channel: 'tabs' })
      const deliverAll = () => {
        for (const message of held.splice(0)) message.deliver()
      }
      return { a, b, deliverAll }
    }
    afterEach(() => vi.unstubAllGlobals())

    it("two logins: both tabs hold the later one, neither the other tab's earlier one", async () => {
      const { a, b, deliverAll } = twoTabs()
      const first = tokenSet(T0, MIN, 'first')
      await a.manager.setTokens(first)
      b.clock.advance(1)
      const second = tokenSet(T0, MIN, 'second')
      await b.manager.setTokens(second)
      deliverAll()
      expect(await a.manager.getAccessToken()).toBe(second.accessToken)
      expect(await b.manager.getAccessToken()).toBe(second.accessToken)
      expect(b.events.filter((event) => event.type === 'refreshed')).toEqual([])
    })

    it('a login, then a logout in the other tab: both tabs are logged out', async () => {
      const { a, b, deliverAll } = twoTabs()
      await a.manager.setTokens(tokenSet(T0, MIN, 0))
      deliverAll()
      expect(await b.manager.getAccessToken()).toBe(tokenSet(T0, MIN, 0).accessToken)
      // b logs in anew; a, not having heard, logs out a moment later
      await b.manager.setTokens(tokenSet(T0, MIN, 'login'))
      a.clock.advance(1)
      await a.manager.clear()
      deliverAll()
      expect(a.manager.status).toBe('unauthenticated')
      expect(b.manager.status).toBe('unauthenticated')
      expect(b.events.at(-1)).toEqual({ type: 'loggedOut', reason: 'otherTab' })
    })

    it('two logins at the very same clock reading: the tabs agree on one of them', async () => {
      const { a, b, deliverAll } = twoTabs()
      const first = tokenSet(T0, MIN, 'first')
      await a.manager.setTokens(first)
      const second = tokenSet(T0, MIN, 'second')
      await b.manager.setTokens(second)
      deliverAll()
      const inA = await a.manager.getAccessToken()
      expect([first.accessToken, second.accessToken]).toContain(inA)
      expect(await b.manager.getAccessToken()).toBe(inA)
    })

    it('a third tab that hears two logins in the wrong order ends on the later one', async () => {
      // the Chromium review's scripts again: 1 round in 6 had a tab that was logged out take the earlier login last
      const held = holdBroadcasts()
      const a = setup({ storage: memoryStorage(), channel: 'tabs' })
      const b = setup({ storage: memoryStorage(), channel: 'tabs' })
      const c = setup({ storage: memoryStorage(), channel: 'tabs' })
      expect(await c.manager.getAccessToken()).toBeNull()
      const first = tokenSet(T0, MIN, 'first')
      await a.manager.setTokens(first)
      b.clock.advance(1)
      const second = tokenSet(T0, MIN, 'second')
      await b.manager.setTokens(second)
      const login = (message: (typeof held)[number]) =>
        (message.data as { tokens: TokenSet }).tokens.accessToken
      for (const message of held.splice(0).reverse()) message.deliver()
      expect(login).toBeDefined()
      expect(await a.manager.getAccessToken()).toBe(second.accessToken)
      expect(await b.manager.getAccessToken()).toBe(second.accessToken)
      expect(await c.manager.getAccessToken()).toBe(second.accessToken)
    })

    it('a logout after a refused refresh of the old session does not log out a login that replaced it', async () => {
      // a second code review: a refreshed session S0 while b logged in anew; S0's refusal came a second later,
      // and its logout message logged b out while a took b's login
      const { a, b, deliverAll } = twoTabs()
      await a.manager.setTokens(tokenSet(T0, MIN, 0))
      deliverAll()
      expect(b.manager.status).toBe('authenticated')
      a.clock.advance(2 * MIN)
      b.clock.advance(2 * MIN)
      const waiter = a.manager.getAccessToken().catch((e: unknown) => e)
      await flush()
      const login = tokenSet(b.clock.now(), 10 * MIN, 1)
      await b.manager.setTokens(login)
      a.clock.advance(1_000)
      a.calls[0]!.reject(new RefreshError('rejected', 'refresh failed: invalid_grant', { status: 400 }))
      await waiter
      deliverAll()
      expect(b.types()).not.toContain('loggedOut')
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
      expect(await a.manager.getAccessToken()).toBe(login.accessToken)
    })

    it('a refused refresh sent before a login elsewhere, by a tab that read its session from storage, does not log that login out', async () => {
      // such a tab does not know which login its session comes from (its messages carry no base), but a
      // message it sent before b's login cannot be about that login: the date orders it (a third code review)
      const held = holdBroadcasts()
      const old = tokenSet(T0, MIN, 0)
      const a = setup({ storage: memoryStorage(old), channel: 'tabs' })
      const b = setup({ storage: memoryStorage(), channel: 'tabs' })
      a.clock.advance(2 * MIN)
      b.clock.advance(2 * MIN)
      const waiter = a.manager.getAccessToken().catch((e: unknown) => e)
      await flush()
      a.calls[0]!.reject(new RefreshError('rejected', 'refresh failed: invalid_grant', { status: 400 }))
      expect(await waiter).toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected' })
      b.clock.advance(1)
      const login = tokenSet(b.clock.now(), 10 * MIN, 1)
      await b.manager.setTokens(login)
      for (const message of held.splice(0)) message.deliver()
      expect(b.types()).not.toContain('loggedOut')
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
      expect(await a.manager.getAccessToken()).toBe(login.accessToken)
    })

    it('a logout by a clear() that did not wait for its first read is dated when clear() was called: a later login elsewhere wins', async () => {
      // a code review of 43aa497: the loggedOut went out when the late read answered, dated then, so b's login
      // made after the clear() looked older; b logged out and a ignored b's login, while storage held it
      const held = holdBroadcasts()
      const { slow, shared, finishRead, stored } = slowReadStorage(tokenSet(T0, MIN, 'old'))
      const a = setup({ storage: slow, channel: 'tabs' })
      const b = setup({ storage: shared, channel: 'tabs' })
      await a.manager.clear()
      a.clock.advance(1_000)
      b.clock.advance(1_000)
      const login = tokenSet(b.clock.now(), 10 * MIN, 'new')
      await b.manager.setTokens(login)
      a.clock.advance(1_000)
      b.clock.advance(1_000)
      // a's read answers (with the session it had cleared) before b's login reaches it
      finishRead()
      await flush()
      expect(a.types()).toEqual(['loggedOut'])
      for (const message of held.splice(0)) message.deliver()
      await flush()
      expect(stored()).toEqual(login)
      expect(b.types()).toEqual([])
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
      expect(await a.manager.getAccessToken()).toBe(login.accessToken)
    })

    it('that late-dated logout does not take its tab back to before a newer logout it heard: a login the newer logout ended stays ended', async () => {
      // a second code review of c3be87b: posting the logout dated at clear() also set the tab's own base to that
      // time, below the base a later logout elsewhere had given it, so a login that logout had ended was taken
      const held = holdBroadcasts()
      const { slow, shared, finishRead, stored } = slowReadStorage(tokenSet(T0, 10 * MIN, 'old'))
      const a = setup({ storage: slow, channel: 'tabs' }) // channel 1
      const b = setup({ storage: shared, channel: 'tabs' }) // channel 2
      const c = setup({ storage: shared, channel: 'tabs' }) // channel 3
      const advance = (ms: number) => {
        for (const tab of [a, b, c]) tab.clock.advance(ms)
      }
      const deliver = (messages: typeof held, to: string) => {
        for (const message of messages) if (message.to === to) message.deliver()
      }
      await b.manager.getAccessToken()
      await c.manager.getAccessToken()
      advance(1_000)
      await a.manager.clear() // a's first read has not answered
      advance(1_000)
      const login = tokenSet(T0 + 2_000, 10 * MIN, 'c-login')
      await c.manager.setTokens(login)
      const fromC = held.splice(0)
      deliver(fromC, 'channel 2')
      await flush()
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
      advance(1_000)
      await b.manager.clear() // b logs out c's login
      const fromB = held.splice(0)
      deliver(fromB, 'channel 1')
      await flush()
      // a's read answers: its logout goes out, dated when clear() was called
      finishRead()
      await flush()
      // c's login, which b's logout ended, reaches a late
      deliver(fromC, 'channel 1')
      await flush()
      expect(stored()).toBeNull()
      expect(await a.manager.getAccessToken()).toBeNull()
    })

    it('a login after that late-dated logout and a clock set back 5 s still reaches the tab that obeyed the logout', async () => {
      // a third code review of 5a2e999: the late-dated logout did not move its tab's clock, so after the clock
      // was set back the tab's next login was dated before that logout, and the other tab ignored it
      const held = holdBroadcasts()
      const { slow, shared, finishRead, stored } = slowReadStorage(tokenSet(T0, 10 * MIN, 'old'))
      const a = setup({ storage: slow, channel: 'tabs' })
      const b = setup({ storage: shared, channel: 'tabs' })
      const advance = (ms: number) => {
        for (const tab of [a, b]) tab.clock.advance(ms)
      }
      expect(await b.manager.getAccessToken()).toBe(tokenSet(T0, 10 * MIN, 'old').accessToken)
      advance(1_000)
      await a.manager.clear() // a's first read has not answered
      advance(1_000)
      finishRead()
      await flush()
      for (const message of held.splice(0)) message.deliver()
      await flush()
      expect(b.types()).toEqual(['loggedOut'])
      advance(-5_000)
      const login = tokenSet(a.clock.now(), 10 * MIN, 'new')
      await a.manager.setTokens(login)
      for (const message of held.splice(0)) message.deliver()
      await flush()
      expect(stored()).toEqual(login)
      expect(await a.manager.getAccessToken()).toBe(login.accessToken)
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
    })

    it.each([
      ['Infinity', Number.POSITIVE_INFINITY],
      ['a date far ahead', 1e16],
      ['a numeric string', String(T0 + 1)],
    ])('a message dated %s orders nothing: a later login still reaches every tab', async (_, at) => {
      const { a, b, deliverAll } = twoTabs()
      // an older or buggy tab sends one message of a type nobody acts on
      const stray = new BroadcastChannel('tabs')
      stray.postMessage({ type: 'hello', at, base: [at, 1] })
      deliverAll()
      await a.manager.setTokens(tokenSet(T0, MIN, 'first'))
      deliverAll()
      a.clock.advance(5 * MIN)
      b.clock.advance(5 * MIN)
      const second = tokenSet(b.clock.now(), MIN, 'second')
      await b.manager.setTokens(second)
      deliverAll()
      expect(await a.manager.getAccessToken()).toBe(second.accessToken)
      await b.manager.clear()
      deliverAll()
      expect(a.manager.status).toBe('unauthenticated')
    })

    it('a clock set back after a login does not make a later logout elsewhere look older', async () => {
      // each tab's `at` never falls behind a message it has received (a code review: the logout was ignored)
      const { a, b, deliverAll } = twoTabs()
      await b.manager.setTokens(tokenSet(T0, 60 * MIN, 'login'))
      deliverAll()
      expect(a.manager.status).toBe('authenticated')
      a.clock.advance(-5 * MIN)
      b.clock.advance(-5 * MIN)
      await a.manager.clear()
      deliverAll()
      expect(b.manager.status).toBe('unauthenticated')
      expect(b.events.at(-1)).toEqual({ type: 'loggedOut', reason: 'otherTab' })
    })

    it('a clear() with no session to end does not make a tab ignore a login elsewhere', async () => {
      // it tells no one, so it is no logout to order messages by (a code review: the tabs disagreed for good)
      const { a, b, deliverAll } = twoTabs()
      const login = tokenSet(T0, MIN, 'login')
      await a.manager.setTokens(login)
      b.clock.advance(1)
      await b.manager.clear()
      deliverAll()
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
    })

    it('a logout, then a login in the other tab: both tabs hold the login', async () => {
      const { a, b, deliverAll } = twoTabs()
      await a.manager.setTokens(tokenSet(T0, MIN, 0))
      deliverAll()
      expect(await b.manager.getAccessToken()).toBe(tokenSet(T0, MIN, 0).accessToken)
      await a.manager.clear()
      b.clock.advance(1)
      const login = tokenSet(T0, MIN, 'login')
      await b.manager.setTokens(login)
      deliverAll()
      expect(await a.manager.getAccessToken()).toBe(login.accessToken)
      expect(await b.manager.getAccessToken()).toBe(login.accessToken)
      expect(b.types()).not.toContain('loggedOut')
    })
  })
})
