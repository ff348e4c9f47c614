/**
 * Races between tabs found by a review of cross-tab coordination (rule 7): a refresh answer that comes after
 * other tabs rotated past it, and a logout in one tab while another is mid-refresh. Two managers in one process
 * stand in for two tabs, over one storage, one channel and one lock.
 */
import {
  createTokenManager,
  RefreshError,
  type TokenEvent,
  type TokenSet,
  type TokenStorage,
  webStorage,
} from '@tokenflow/client'
import { afterEach, describe, expect, it, vi } from 'vitest'
import {
  eventually,
  freshChannel,
  Holdable,
  holdMessages,
  openTab,
  releaseMessages,
  tabClock,
} from './helpers/tabs.js'
import { createTestLock, deferred, makeJwt, placeholderStorage, tokenSet } from './helpers/tokens.js'

const T0 = 1_700_000_000_000
const MIN = 60_000

afterEach(() => {
  releaseMessages(false)
  vi.unstubAllGlobals()
})

/** localStorage for the tabs: one map, which the test reads */
function sharedStorage() {
  const map = new Map<string, string>()
  const storage = webStorage({
    getItem: (key) => map.get(key) ?? null,
    setItem: (key, value) => void map.set(key, value),
    removeItem: (key) => void map.delete(key),
  })
  const stored = () => (map.has('tokenflow') ? (JSON.parse(map.get('tokenflow')!) as TokenSet) : null)
  return { map, storage, stored }
}

/** A server that rotates refresh tokens, with reuse detection and a reuse grace (10 s) */
function rotationServer(now: () => number) {
  let n = 0
  let current = 'rt-0'
  let previous: string | undefined
  let rotatedAt = 0
  const state = { revoked: false, reuse: 0, sent: [] as string[] }
  const pair = (): TokenSet => ({
    accessToken: makeJwt({ iat: Math.floor(now() / 1000), exp: Math.floor((now() + 15 * MIN) / 1000), n }),
    refreshToken: current,
  })
  return {
    state,
    login: () => pair(),
    handle(refreshToken: string): TokenSet {
      state.sent.push(refreshToken)
      if (state.revoked) throw new RefreshError('rejected', 'revoked')
      if (refreshToken === current) {
        previous = current
        current = `rt-${++n}`
        rotatedAt = now()
        return pair()
      }
      if (refreshToken === previous && now() - rotatedAt < 10_000) return pair()
      state.revoked = true
      state.reuse++
      throw new RefreshError('rejected', 'refresh token reuse: session revoked')
    },
  }
}

describe('a refresh answer that comes after other tabs rotated past it (a tab frozen with its call out)', () => {
  /**
   * Tab a refreshes under the lock and freezes before its answer comes; b gives up on the lock and refreshes twice.
   * `late`: b's messages reach a only after a has handled its answer (they queued behind it while a was frozen).
   */
  async function frozenHolder({ late = false } = {}) {
    if (late) vi.stubGlobal('BroadcastChannel', Holdable)
    const clock = tabClock(T0)
    const server = rotationServer(clock.now)
    const { storage, stored } = sharedStorage()
    const channel = freshChannel()
    const lock = createTestLock({ query: true })
    let frozen: ReturnType<typeof deferred<void>> | undefined
    const tab = (name: string) => {
      const events: TokenEvent[] = []
      const manager = createTokenManager({
        refresh: async ({ refreshToken }) => {
          // the server rotates at once; the answer reaches tab a only when it wakes
          const answer = server.handle(refreshToken)
          if (name === 'a' && frozen) await frozen.promise
          return answer
        },
        storage,
        channel,
        lock,
        lockTimeout: 50,
        now: clock.now,
      })
      manager.subscribe((event) => events.push(event))
      return { manager, events }
    }
    const a = tab('a')
    const b = tab('b')
    const login = server.login()
    await a.manager.setTokens(login)
    await eventually(() => b.manager.status === 'authenticated')
    frozen = deferred<void>()
    const fromA = a.manager.refresh({ rejectedToken: login.accessToken })
    await eventually(() => server.state.sent.length === 1)
    if (late) holdMessages()
    // b gives up on the lock after lockTimeout and refreshes (rt-0 within the grace: it gets rt-1)
    const b1 = await b.manager.refresh({ rejectedToken: login.accessToken })
    if (!late)
      await eventually(() => a.events.some((e) => e.type === 'refreshed' && e.tokens.accessToken === b1))
    // a minute later b refreshes again, a still frozen: rt-1 -> rt-2
    clock.skip(MIN)
    const b2 = await b.manager.refresh({ rejectedToken: b1 })
    if (!late)
      await eventually(() => a.events.some((e) => e.type === 'refreshed' && e.tokens.accessToken === b2))
    expect(stored()?.refreshToken).toBe('rt-2')
    // a wakes: its answer (rt-1, which b's messages tell it is spent) lands, before or after those messages
    const wake = async () => {
      frozen!.resolve()
      frozen = undefined
      const answer = await fromA
      if (late) {
        releaseMessages()
        await eventually(() => a.events.some((e) => e.type === 'refreshed' && e.tokens.accessToken === b2))
      }
      return answer
    }
    return { a, b, b2, clock, server, stored, wake, tab }
  }

  it('bug: it was written over the newer tokens and used; now the tab keeps what it took from the others', async () => {
    const { a, b2, stored, wake } = await frozenHolder()
    expect(await wake()).toBe(b2)
    expect(stored()?.refreshToken).toBe('rt-2')
    expect(await a.manager.getAccessToken()).toBe(b2)
  })

  it('bug: the next refresh in that tab sent the spent refresh token, a reuse that logged every tab out', async () => {
    const { a, b, clock, server, wake } = await frozenHolder()
    await wake()
    // later, a 401 in tab a
    clock.skip(MIN)
    const current = await a.manager.getAccessToken()
    await a.manager.refresh({ rejectedToken: current! })
    expect(server.state.sent).toEqual(['rt-0', 'rt-0', 'rt-1', 'rt-2'])
    expect(server.state.reuse).toBe(0)
    for (const tab of [a, b]) expect(tab.events.some((e) => e.type === 'loggedOut')).toBe(false)
  })
})

describe('a logout in one tab while another is mid-refresh', () => {
  /** Two tabs that read their session from storage (an earlier page load); b's refresh is under way. */
  async function midRefresh() {
    vi.stubGlobal('BroadcastChannel', Holdable)
    const clock = tabClock(T0).now
    const { map, storage, stored } = sharedStorage()
    const first = tokenSet(T0, 15 * MIN, 0)
    map.set('tokenflow', JSON.stringify(first))
    const channel = freshChannel()
    const lock = createTestLock({ query: true })
    const a = openTab({ storage, channel, lock }, clock)
    const b = openTab({ storage, channel, lock }, clock)
    expect(await a.manager.getAccessToken()).toBe(first.accessToken)
    expect(await b.manager.getAccessToken()).toBe(first.accessToken)
    const fromB = b.manager.refresh({ rejectedToken: first.accessToken }).catch((error: unknown) => error)
    await eventually(() => b.calls.length === 1)
    return { a, b, fromB, stored }
  }

  it('bug: the tab where the user logged out took the other tab’s refresh and was logged in again', async () => {
    const { a, b, fromB } = await midRefresh()
    // the user logs out in a; its message is still on its way when b's answer lands
    holdMessages()
    await a.manager.clear()
    const answer = tokenSet(T0, 15 * MIN, 1)
    b.calls[0]!.resolve(answer)
    // b's requests of the session get its answer; the logout then reaches b
    expect(await fromB).toBe(answer.accessToken)
    releaseMessages()
    await eventually(() => b.manager.status === 'unauthenticated')
    await new Promise((resolve) => setTimeout(resolve, 30))
    // a took nothing of it (storage may still hold b's answer: see README, Several tabs)
    expect(a.manager.status).toBe('unauthenticated')
    expect(a.events.filter((e) => e.type === 'refreshed')).toEqual([])
    expect(b.events.filter((e) => e.type === 'loggedOut')).toEqual([
      { type: 'loggedOut', reason: 'otherTab' },
    ])
  })

  it('a tab that logged out and in again keeps its new session when the other tab’s refresh of the old one reaches it', async () => {
    const { a, b, fromB } = await midRefresh()
    holdMessages()
    await a.manager.clear()
    const again = tokenSet(T0, 15 * MIN, 'new-login')
    await a.manager.setTokens(again)
    // b's answer lands after a's new login (it sees no logout in storage: the login is there)
    b.calls[0]!.resolve(tokenSet(T0, 15 * MIN, 1))
    await fromB
    releaseMessages()
    await new Promise((resolve) => setTimeout(resolve, 30))
    expect(await a.manager.getAccessToken()).toBe(again.accessToken)
    await eventually(() => b.manager.status === 'authenticated')
    expect(await b.manager.getAccessToken()).toBe(again.accessToken)
  })
})

describe('a storage read that does not answer in time right after the server answered', () => {
  for (const shared of [true, undefined])
    it(`keeps the rotation (shared: ${shared}): the answer is used and the next refresh sends its refresh token, not a spent one (a second review)`, async () => {
      const clock = tabClock(T0)
      const server = rotationServer(clock.now)
      let saved: TokenSet | null = null
      let hang = false
      const storage: TokenStorage = {
        shared,
        get: () => (hang ? new Promise<never>(() => {}) : saved),
        set: (tokens) => {
          saved = tokens
        },
        clear: () => {
          saved = null
        },
      }
      const events: TokenEvent[] = []
      const manager = createTokenManager({
        refresh: async ({ refreshToken }) => {
          const answer = server.handle(refreshToken)
          // storage stalls while the answer travels back (once)
          if (refreshToken === 'rt-0') hang = true
          return answer
        },
        storage,
        channel: freshChannel(),
        lock: createTestLock({ query: true }),
        refreshTimeout: 200,
        now: clock.now,
      })
      manager.subscribe((event) => events.push(event))
      const login = server.login()
      await manager.setTokens(login)
      const first = await manager.refresh({ rejectedToken: login.accessToken })
      hang = false
      clock.skip(MIN)
      await manager.refresh({ rejectedToken: first })
      expect(server.state.sent).toEqual(['rt-0', 'rt-1'])
      expect(server.state.reuse).toBe(0)
      expect(events.filter((e) => e.type === 'loggedOut')).toEqual([])
    })
})

describe('cookie mode (the refresh token is a placeholder that never rotates)', () => {
  it('a tab where the user logged out takes the session a later page restored from the cookie (a sign-in by redirect; a second review)', async () => {
    const clock = tabClock(T0)
    const channel = freshChannel()
    const lock = createTestLock({ query: true })
    const access = (n: string) =>
      makeJwt({ iat: Math.floor(clock.now() / 1000), exp: Math.floor((clock.now() + 15 * MIN) / 1000), n })
    const a = openTab({ storage: placeholderStorage(), channel, lock }, clock.now)
    const restoring = a.manager.getAccessToken()
    await eventually(() => a.calls.length === 1)
    a.calls[0]!.resolve({ accessToken: access('first') })
    await restoring
    await a.manager.clear()
    clock.skip(MIN)
    // the sign-in callback page is a new tab that restores its session from the new cookie
    const callback = openTab({ storage: placeholderStorage(), channel, lock }, clock.now)
    const restored = callback.manager.getAccessToken()
    await eventually(() => callback.calls.length === 1)
    const second = access('second')
    callback.calls[0]!.resolve({ accessToken: second })
    expect(await restored).toBe(second)
    await eventually(() => a.manager.status === 'authenticated')
    expect(await a.manager.getAccessToken()).toBe(second)
  })
})
