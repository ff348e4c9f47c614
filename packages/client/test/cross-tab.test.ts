import { createTokenManager, memoryStorage, type TokenStorage, webStorage } from '@tokenflow/client'
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
import { createTestLock, flush, placeholderStorage, tokenSet } from './helpers/tokens.js'

const T0 = 1_700_000_000_000
const MIN = 60_000
const clock = tabClock(T0).now
const tab = (options: Parameters<typeof openTab>[0]) => openTab(options, clock)

afterEach(() => {
  releaseMessages(false)
  vi.unstubAllGlobals()
})

describe('BroadcastChannel', () => {
  it("bug: with storage of each tab's own (cookie mode) a tab that got the lock after another tab's refresh refreshed again, though the broadcast had brought the new tokens", async () => {
    const channel = freshChannel()
    const base = createTestLock({ query: true })
    // a grant waits for this once it is set: see below
    let gate: Promise<unknown> | undefined
    const lock: typeof base = {
      ...base,
      request: (name, options, callback) =>
        base.request(name, options, async (held) => {
          await gate
          return callback(held)
        }),
    }
    // cookie mode: each page's memory holds an expired placeholder, the refresh token lives in the cookie
    const a = tab({ storage: placeholderStorage(), channel, lock })
    const b = tab({ storage: placeholderStorage(), channel, lock })
    const [fromA, fromB] = [a.manager.getAccessToken(), b.manager.getAccessToken()]
    await eventually(() => a.calls.length + b.calls.length === 1)
    const [first, firstTab] = a.calls.length ? [a.calls[0]!, a] : [b.calls[0]!, b]
    const other = firstTab === a ? b : a
    // as in a browser, where the lock reaches the next tab through another process: the broadcast, sent
    // before the lock is let go, gets to the other tab before the lock does
    gate = eventually(() => other.events.some((event) => event.type === 'refreshed'), 5_000)
    const next = { ...tokenSet(T0, MIN, 1), refreshToken: undefined }
    first.resolve(next)
    expect(await fromA).toBe(next.accessToken)
    expect(await fromB).toBe(next.accessToken)
    // one refresh between the two tabs: the other took the tokens the broadcast brought
    expect(a.calls.length + b.calls.length).toBe(1)
    expect(other.events.map((event) => event.type)).toEqual(['refreshStarted', 'refreshed'])
    expect(other.events[1]).toMatchObject({ type: 'refreshed', source: 'otherTab' })
  })

  it("bug: with storage of each tab's own (cookie mode) a tab that had logged out failed every refresh of a session a login in another tab brought it", async () => {
    const channel = freshChannel()
    const lock = createTestLock()
    const a = tab({ storage: placeholderStorage(), channel, lock })
    const b = tab({ storage: placeholderStorage(), channel, lock })
    // a logs out: its own storage now holds nothing
    await a.manager.clear()
    expect(await a.manager.getAccessToken()).toBeNull()
    // the user logs in in b; a takes the session from the broadcast, in memory only
    const login = { ...tokenSet(T0, MIN, 'login'), refreshToken: 'cookie' }
    await b.manager.setTokens(login)
    await eventually(() => a.manager.status === 'authenticated')
    a.events.length = 0

    // a's next refresh (its token expired, or a 401): was rejected, "the session ended in another tab"
    const refreshed = a.manager.refresh({ rejectedToken: login.accessToken })
    await eventually(() => a.calls.length === 1)
    expect(a.calls[0]!.context.refreshToken).toBe('cookie')
    const next = { ...tokenSet(T0, MIN, 'next'), refreshToken: 'cookie' }
    a.calls[0]!.resolve(next)
    expect(await refreshed).toBe(next.accessToken)
    expect(a.events.map((event) => event.type)).toEqual(['refreshStarted', 'refreshed'])
    await eventually(() =>
      b.events.some((event) => event.type === 'refreshed' && event.tokens.accessToken === next.accessToken),
    )
    expect(b.calls).toHaveLength(0)
  })

  it("bug: with storage of each tab's own (cookie mode) a tab went back to its own earlier login at a refresh, though a login in another tab had replaced it", async () => {
    const channel = freshChannel()
    const lock = createTestLock()
    const a = tab({ storage: placeholderStorage(), channel, lock })
    const b = tab({ storage: placeholderStorage(), channel, lock })
    // the user logs in in a, then, as someone else, in b: the cookie is b's login's now
    const first = { ...tokenSet(T0, MIN, 'first'), refreshToken: 'cookie' }
    await a.manager.setTokens(first)
    await eventually(() => b.events.some((event) => event.type === 'refreshed'))
    const second = { ...tokenSet(T0, MIN, 'second'), refreshToken: 'cookie' }
    await b.manager.setTokens(second)
    await eventually(() =>
      a.events.some((e) => e.type === 'refreshed' && e.tokens.accessToken === second.accessToken),
    )
    expect(await a.manager.getAccessToken()).toBe(second.accessToken)
    a.events.length = 0

    // a 401 for b's login in a: a's storage still holds a's own first login, still valid, which was handed out
    const refreshed = a.manager.refresh({ rejectedToken: second.accessToken })
    await eventually(() => a.calls.length === 1)
    const next = { ...tokenSet(T0, MIN, 'next'), refreshToken: 'cookie' }
    a.calls[0]!.resolve(next)
    expect(await refreshed).toBe(next.accessToken)
    expect(a.events.map((event) => event.type)).toEqual(['refreshStarted', 'refreshed'])
    expect(await a.manager.getAccessToken()).toBe(next.accessToken)
  })

  it('with shared storage (localStorage), a tab whose refresh finds it emptied by a logout elsewhere ends the session a login elsewhere brought it, once', async () => {
    const map = new Map<string, string>()
    const storage = webStorage({
      getItem: (key) => map.get(key) ?? null,
      setItem: (key, value) => void map.set(key, value),
      removeItem: (key) => void map.delete(key),
    })
    expect(storage.shared).toBe(true)
    const channel = freshChannel()
    const a = tab({ storage, channel })
    const b = tab({ storage, channel })
    await b.manager.setTokens(tokenSet(T0, MIN, 0))
    await eventually(() => a.manager.status === 'authenticated')
    // another tab cleared the shared storage; its message never came (it was closed at once)
    map.clear()
    await expect(a.manager.refresh()).rejects.toMatchObject({ code: 'ERR_REFRESH_FAILED', kind: 'rejected' })
    expect(a.calls).toHaveLength(0)
    expect(a.events.filter((event) => event.type === 'loggedOut')).toEqual([
      { type: 'loggedOut', reason: 'otherTab', error: expect.objectContaining({ kind: 'rejected' }) },
    ])
  })

  it("a login in one tab calls off another tab's refresh of the old session: the new session stays in every tab", async () => {
    const storage = memoryStorage()
    const channel = freshChannel()
    const lock = createTestLock()
    const a = tab({ storage, channel, lock })
    const b = tab({ storage, channel, lock })
    await a.manager.setTokens(tokenSet(T0, MIN, 'old'))
    await b.manager.getAccessToken()
    // b refreshes the old session; its answer is on its way
    const fromB = b.manager.refresh().catch((error: unknown) => error)
    await eventually(() => b.calls.length === 1)
    // meanwhile the user logs in again in a (another account, say)
    const login = tokenSet(T0, MIN, 'new')
    await a.manager.setTokens(login)
    // the login calls b's refresh off as soon as it arrives, not when the refresh times out
    await eventually(() => b.calls[0]!.context.signal.aborted, 500)
    // and what waited for it is not sent with the new session's token: that may be another user's
    expect(await fromB).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    b.calls[0]!.resolve(tokenSet(T0, MIN, 'old-refreshed'))
    await flush()
    for (const t of [a, b]) expect(await t.manager.getAccessToken()).toBe(login.accessToken)
    expect(await storage.get()).toMatchObject({ accessToken: login.accessToken })
  })

  /**
   * Tab b refreshes behind a lock another tab holds for a moment; meanwhile another user logs in in tab a with
   * `login`: storage holds it at once, and its message is held back (a busy tab's event loop) until `deliver()`.
   */
  async function loginFoundInStorage(login: ReturnType<typeof tokenSet>) {
    vi.stubGlobal('BroadcastChannel', Holdable)
    const map = new Map<string, string>()
    const storage = webStorage({
      getItem: (key) => map.get(key) ?? null,
      setItem: (key, value) => void map.set(key, value),
      removeItem: (key) => void map.delete(key),
    })
    const channel = freshChannel()
    const lock = createTestLock()
    const a = tab({ storage, channel, lock })
    const b = tab({ storage, channel, lock })
    const old = tokenSet(T0, 15 * MIN, 'old-user-1')
    await a.manager.setTokens(old)
    await eventually(() => b.events.some((event) => event.type === 'refreshed'))
    let free!: () => void
    void lock.request(`${channel}:refresh`, {}, () => new Promise<void>((resolve) => (free = resolve)))
    const fromB = b.manager.refresh({ rejectedToken: old.accessToken })
    await flush()
    holdMessages()
    await a.manager.setTokens(login)
    free()
    const deliver = async () => {
      releaseMessages()
      await new Promise((resolve) => setTimeout(resolve, 30))
    }
    return { b, old, fromB, deliver }
  }

  describe("a login another tab's refresh found in storage before its message (code reviews)", () => {
    it('from the message on, a 401 of the old session is not retried as the new one', async () => {
      // taken from storage under the lock, the login counted as a refresh of the old session, and its message,
      // whose token was current already, was dropped: a 401 for the old session's token went out as the login
      const login = tokenSet(T0, 15 * MIN, 'user-2')
      const { b, old, fromB, deliver } = await loginFoundInStorage(login)
      // the limit the README names: what waited for that refresh takes the login, found in storage
      expect(await fromB).toBe(login.accessToken)
      await deliver()
      await expect(b.manager.refresh({ rejectedToken: old.accessToken })).rejects.toMatchObject({
        code: 'ERR_SESSION_CLEARED',
      })
      expect(b.calls).toHaveLength(0)
    })

    it('also when that tab found the login expired and refreshed it before the message came', async () => {
      // tokens restored with an access token that has expired already (or a skewed clock)
      const { b, old, fromB, deliver } = await loginFoundInStorage(
        tokenSet(T0 - 30 * MIN, 15 * MIN, 'user-2'),
      )
      await eventually(() => b.calls.length === 1)
      const refreshed = tokenSet(T0, 15 * MIN, 'user-2b')
      b.calls[0]!.resolve(refreshed)
      expect(await fromB).toBe(refreshed.accessToken)
      await deliver()
      await expect(b.manager.refresh({ rejectedToken: old.accessToken })).rejects.toMatchObject({
        code: 'ERR_SESSION_CLEARED',
      })
    })
  })

  it('a logout in one tab logs out every tab', async () => {
    const storage = memoryStorage()
    const channel = freshChannel()
    const tabs = [tab({ storage, channel }), tab({ storage, channel }), tab({ storage, channel })]
    await tabs[0]!.manager.setTokens(tokenSet(T0, MIN, 0))
    for (const t of tabs) expect(await t.manager.getAccessToken()).toBe(tokenSet(T0, MIN, 0).accessToken)
    await tabs[0]!.manager.clear()
    await eventually(() => tabs.every((t) => t.events.some((e) => e.type === 'loggedOut')))
    expect(tabs[0]!.events.filter((e) => e.type === 'loggedOut')).toEqual([
      { type: 'loggedOut', reason: 'cleared' },
    ])
    for (const t of tabs.slice(1)) {
      expect(t.events.filter((e) => e.type === 'loggedOut')).toEqual([
        { type: 'loggedOut', reason: 'otherTab' },
      ])
      expect(t.manager.status).toBe('unauthenticated')
      expect(await t.manager.getAccessToken()).toBeNull()
    }
  })

  it('hands a refresh to the other tabs, which then do not refresh', async () => {
    const storage = memoryStorage()
    const channel = freshChannel()
    const a = tab({ storage, channel })
    const b = tab({ storage, channel })
    await a.manager.setTokens(tokenSet(T0, MIN, 0))
    await eventually(() => b.manager.status === 'authenticated')
    const refreshed = a.manager.refresh()
    await flush()
    const next = tokenSet(T0, MIN, 1)
    a.calls[0]!.resolve(next)
    await refreshed
    await eventually(() =>
      b.events.some((e) => e.type === 'refreshed' && e.tokens.accessToken === next.accessToken),
    )
    expect(b.events.at(-1)).toMatchObject({ type: 'refreshed', source: 'otherTab', tokens: next })
    expect(await b.manager.getAccessToken()).toBe(next.accessToken)
    // a late 401 in b for the old token retries with the new one, without a refresh
    expect(await b.manager.refresh({ rejectedToken: tokenSet(T0, MIN, 0).accessToken })).toBe(
      next.accessToken,
    )
    expect(b.calls).toHaveLength(0)
  })

  it('a login in one tab starts the session in the others', async () => {
    const channel = freshChannel()
    const storage = memoryStorage()
    const a = tab({ storage, channel })
    const b = tab({ storage, channel })
    expect(await b.manager.getAccessToken()).toBeNull()
    await a.manager.setTokens(tokenSet(T0, MIN, 'login'))
    await eventually(() => b.manager.status === 'authenticated')
    expect(await b.manager.getAccessToken()).toBe(tokenSet(T0, MIN, 'login').accessToken)
  })

  it('ignores malformed messages', async () => {
    const channel = freshChannel()
    const b = tab({ storage: memoryStorage(), channel })
    await b.manager.setTokens(tokenSet(T0, MIN, 0))
    const intruder = new BroadcastChannel(channel)
    for (const message of [
      null,
      42,
      'x',
      { type: 'refreshed' },
      { type: 'refreshed', tokens: { accessToken: 7 } },
    ])
      intruder.postMessage(message)
    intruder.close()
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(b.events).toEqual([])
    expect(await b.manager.getAccessToken()).toBe(tokenSet(T0, MIN, 0).accessToken)
  })

  it('is off by default outside a page, so two users in one server process never share tokens', async () => {
    const alice = createTokenManager({
      refresh: async () => tokenSet(T0, MIN, 'a2'),
      lock: false,
      now: () => T0,
    })
    const bob = createTokenManager({
      refresh: async () => tokenSet(T0, MIN, 'b2'),
      lock: false,
      now: () => T0,
    })
    await alice.setTokens(tokenSet(T0, MIN, 'alice'))
    await bob.setTokens(tokenSet(T0, MIN, 'bob'))
    await alice.refresh()
    await alice.clear()
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(await bob.getAccessToken()).toBe(tokenSet(T0, MIN, 'bob').accessToken)
  })
})

describe('default channel in a page', () => {
  function mapStorage() {
    const map = new Map<string, string>()
    return {
      getItem: (key: string) => map.get(key) ?? null,
      setItem: (key: string, value: string) => void map.set(key, value),
      removeItem: (key: string) => void map.delete(key),
    }
  }

  it('is on for localStorage, which the tabs share, and off for sessionStorage, which is per tab', async () => {
    const local = mapStorage()
    const perTab = [mapStorage(), mapStorage()]
    vi.stubGlobal('document', {})
    vi.stubGlobal('localStorage', local)
    vi.stubGlobal('sessionStorage', perTab[0])
    const make = (storage: TokenStorage) =>
      createTokenManager({ refresh: async () => tokenSet(T0, MIN, 'r'), storage, lock: false, now: () => T0 })
    // sessionStorage: a login in one tab must not become the other tab's session
    const [a, b] = [make(webStorage(perTab[0])), make(webStorage(perTab[0]))]
    expect(webStorage(perTab[0]).shared).toBe(false)
    await a.setTokens(tokenSet(T0, MIN, 'tab-a'))
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(b.status).toBe('unauthenticated')
    a.clear()
    // localStorage: the default channel carries the login to the other tab
    expect(webStorage().shared).toBe(true)
    const [c, d] = [make(webStorage()), make(webStorage())]
    await c.setTokens(tokenSet(T0, MIN, 'shared'))
    await eventually(() => d.status === 'authenticated')
    await c.clear()
    await eventually(() => d.status === 'unauthenticated')
  })
})

describe('without BroadcastChannel', () => {
  it('falls back to the storage event', async () => {
    const listeners: Array<() => void> = []
    vi.stubGlobal('BroadcastChannel', undefined)
    vi.stubGlobal('addEventListener', (type: string, listener: () => void) => {
      if (type === 'storage') listeners.push(listener)
    })
    const shared = memoryStorage()
    const channel = freshChannel()
    const a = tab({ storage: shared, channel })
    const b = tab({ storage: shared, channel })
    expect(listeners).toHaveLength(2)
    await a.manager.setTokens(tokenSet(T0, MIN, 0))
    // the browser fires `storage` in the other tabs after a write
    listeners[1]!()
    await eventually(() => b.manager.status === 'authenticated')
    await a.manager.clear()
    listeners[1]!()
    await eventually(() => b.events.some((e) => e.type === 'loggedOut'))
    expect(b.events.at(-1)).toEqual({ type: 'loggedOut', reason: 'otherTab' })
  })
})

describe('no deadlock', () => {
  it('a subscriber that throws does not wedge the lock', async () => {
    vi.stubGlobal('reportError', () => {})
    const lock = createTestLock()
    const storage = memoryStorage()
    const channel = freshChannel()
    const a = tab({ storage, channel, lock })
    a.manager.subscribe(() => {
      throw new Error('listener bug')
    })
    await a.manager.setTokens(tokenSet(T0, MIN, 0))
    const first = a.manager.refresh()
    await flush()
    a.calls[0]!.resolve(tokenSet(T0, MIN, 1))
    await first
    expect(lock.held()).toBe(false)
    const second = a.manager.refresh()
    await flush()
    expect(a.calls).toHaveLength(2)
    a.calls[1]!.resolve(tokenSet(T0, MIN, 2))
    expect(await second).toBe(tokenSet(T0, MIN, 2).accessToken)
  })

  it('a subscriber that calls getAccessToken() from its own callback does not wedge the lock', async () => {
    const lock = createTestLock()
    const a = tab({ storage: memoryStorage(), channel: freshChannel(), lock })
    const reads: Array<Promise<string | null>> = []
    a.manager.subscribe((event) => {
      if (event.type !== 'storageError')
        reads.push(
          a.manager.getAccessToken(),
          a.manager.refresh().catch(() => null),
        )
    })
    await a.manager.setTokens(tokenSet(T0, MIN, 0))
    const first = a.manager.refresh()
    await flush()
    a.calls[0]!.resolve(tokenSet(T0, MIN, 1))
    await first
    const results = await Promise.all(reads)
    expect(results.every((r) => r === tokenSet(T0, MIN, 1).accessToken)).toBe(true)
    expect(a.calls).toHaveLength(1)
    expect(lock.held()).toBe(false)
  })
})

describe('rotation signal', () => {
  it('waits for storage to catch up when another tab holds the signal for the token it would send', async () => {
    // tab b reads a copy of storage that lags behind a's write, as Chromium's localStorage can across processes
    const lock = createTestLock()
    const held: string[] = []
    const lockWithQuery = Object.assign(lock, {
      query: async () => ({ held: held.map((name) => ({ name })) }),
    })
    const real = memoryStorage()
    let lagging = true
    const stale = tokenSet(T0, MIN, 0)
    const lagged: TokenStorage = {
      get: async () => (lagging ? stale : real.get()),
      set: (t) => real.set(t),
      clear: () => real.clear(),
    }
    const channel = freshChannel()
    const a = tab({ storage: real, channel, lock: lockWithQuery })
    await a.manager.setTokens(stale)
    const request = lock.request.bind(lock)
    lockWithQuery.request = ((name: string, options: never, callback: never) => {
      if (name.includes(':rotated:')) held.push(name)
      return request(name, options, callback)
    }) as typeof lock.request
    // a rotates: it leaves the signal named after the spent token
    const rotation = a.manager.refresh()
    await flush()
    a.calls[0]!.resolve(tokenSet(T0, MIN, 1))
    await rotation
    expect(held).toHaveLength(1)
    expect(held[0]).not.toContain('rt-0')

    const b = createTokenManager({
      refresh: async () => {
        throw new Error('b must not refresh with the spent token')
      },
      storage: lagged,
      lock: lockWithQuery,
      // same channel as a, created after a's broadcast: only the lock signal can tell b about the rotation
      channel,
      now: () => T0,
    })
    expect(await b.getAccessToken()).toBe(stale.accessToken)
    const fromB = b.refresh({ rejectedToken: stale.accessToken })
    setTimeout(() => {
      lagging = false
    }, 100)
    expect(await fromB).toBe(tokenSet(T0, MIN, 1).accessToken)
  })
})
