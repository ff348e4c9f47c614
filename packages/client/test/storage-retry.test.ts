/**
 * A storage write that threw is made again by a later call (a second on), so that an app start does not read
 * what storage held before. Not where other tabs write the same storage: outside the lock this tab's tokens
 * may be older than theirs, or than their logout. And never in a loop with a storageError listener that makes
 * a request. (A code review of the first version found all three.)
 */
import type { TokenSet, TokenStorage } from '@tokenflow/client'
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
import { flush, setupManager, tokenSet } from './helpers/tokens.js'

const T0 = 1_700_000_000_000
const MIN = 60_000
/** moved on (`skip`) past the retry's delay, so that only the shared-storage rule keeps a tab from writing again */
const clock = tabClock(T0)

/** one localStorage, seen by two tabs; tab a's view refuses writes while `refuseA` (a full quota, say) */
function sharedStore() {
  const state = { held: null as TokenSet | null, refuseA: false }
  const view = (refuses: () => boolean): TokenStorage & { shared: true } => ({
    shared: true,
    get: () => state.held,
    set(tokens) {
      if (refuses()) throw new Error('QuotaExceededError')
      state.held = tokens
    },
    clear() {
      if (refuses()) throw new Error('QuotaExceededError')
      state.held = null
    },
  })
  return { state, a: view(() => state.refuseA), b: view(() => false) }
}

const tab = (storage: TokenStorage, channel: string) => openTab({ storage, channel }, clock.now)

afterEach(() => {
  releaseMessages(false)
  vi.unstubAllGlobals()
})

/** a and b share storage; a's refresh to T1 could not be written (storage still holds T0), b follows a */
async function afterRefusedWrite() {
  vi.stubGlobal('BroadcastChannel', Holdable)
  const store = sharedStore()
  const channel = freshChannel()
  const a = tab(store.a, channel)
  const b = tab(store.b, channel)
  const t0 = tokenSet(clock.now(), 15 * MIN, 0)
  const t1 = tokenSet(clock.now(), 15 * MIN, 1)
  await a.manager.setTokens(t0)
  await eventually(() => b.manager.status === 'authenticated')
  store.state.refuseA = true
  const refreshed = a.manager.refresh()
  await flush()
  a.calls[0]!.resolve(t1)
  expect(await refreshed).toBe(t1.accessToken)
  expect(a.events.some((e) => e.type === 'storageError')).toBe(true)
  expect(store.state.held).toEqual(t0)
  await eventually(() =>
    b.events.some((e) => e.type === 'refreshed' && e.tokens.accessToken === t1.accessToken),
  )
  expect(await b.manager.getAccessToken()).toBe(t1.accessToken)
  // a's storage works again (quota freed)
  store.state.refuseA = false
  return { store, a, b, t1, channel }
}

describe('a write refused in storage other tabs share is not made again outside the lock', () => {
  it("bug: it overwrote another tab's logout, so the next start logged the user back in", async () => {
    const { store, a, b } = await afterRefusedWrite()
    // the user logs out in tab b; b's message reaches a a moment later (a busy event loop)
    holdMessages()
    await b.manager.clear()
    expect(store.state.held).toBeNull()
    // a request in a in that moment
    clock.skip(1_100)
    await a.manager.getAccessToken()
    await flush()
    releaseMessages()
    await eventually(() => a.events.some((e) => e.type === 'loggedOut'))
    await flush()
    // every tab is logged out; storage must say so, or the next start logs the user back in
    expect(a.manager.status).toBe('unauthenticated')
    expect(store.state.held).toBeNull()
  })

  it("bug: it overwrote another tab's newer rotation with a spent refresh token, which the next start sent (reuse)", async () => {
    const { store, a, b, t1 } = await afterRefusedWrite()
    const t2 = tokenSet(clock.now(), 15 * MIN, 2)
    holdMessages()
    const refreshed = b.manager.refresh()
    await flush()
    expect(b.calls[0]!.context.refreshToken).toBe(t1.refreshToken)
    b.calls[0]!.resolve(t2)
    await refreshed
    expect(store.state.held).toEqual(t2)
    clock.skip(1_100)
    await a.manager.getAccessToken()
    await flush()
    releaseMessages()
    await eventually(() => a.events.some((e) => e.type === 'refreshed' && e.source === 'otherTab'))
    await flush()
    // rt-1 was rotated by b: a tab opened now (or a reload) must not read it
    expect(store.state.held).toEqual(t2)
    const openedStorage: TokenStorage = { shared: true, get: () => store.state.held, set() {}, clear() {} }
    const opened = tab(openedStorage, `${freshChannel()}-opened`)
    const sending = opened.manager.refresh().catch(() => {})
    await flush()
    await flush()
    expect(opened.calls[0]?.context.refreshToken).toBe(t2.refreshToken)
    opened.calls[0]!.resolve(tokenSet(clock.now(), 15 * MIN, 3))
    await sending
  })
})

describe('the same without BroadcastChannel (the storage event)', () => {
  it("bug: a's next request wrote its session over b's logout, and b was logged back in", async () => {
    const listeners: Array<() => void> = []
    vi.stubGlobal('BroadcastChannel', undefined)
    vi.stubGlobal('addEventListener', (type: string, listener: () => void) => {
      if (type === 'storage') listeners.push(listener)
    })
    const store = sharedStore()
    const channel = freshChannel()
    const a = tab(store.a, channel)
    const b = tab(store.b, channel)
    const t0 = tokenSet(clock.now(), 15 * MIN, 0)
    await a.manager.setTokens(t0)
    listeners[1]!()
    await eventually(() => b.manager.status === 'authenticated')
    // a login in a (another account) that its storage refused
    store.state.refuseA = true
    const t1 = { ...tokenSet(clock.now(), 15 * MIN, 1), refreshToken: 'rt-user-2' }
    await a.manager.setTokens(t1)
    store.state.refuseA = false
    // the user logs out in b; the browser fires `storage` in a
    await b.manager.clear()
    expect(store.state.held).toBeNull()
    listeners[0]!()
    await flush()
    // a request in a
    clock.skip(1_100)
    await a.manager.getAccessToken()
    await flush()
    listeners[1]!()
    await flush()
    await flush()
    expect(store.state.held).toBeNull()
    expect(b.manager.status).toBe('unauthenticated')
  })
})

/** a storage that refuses every write (a full quota, a read-only disk) and reads nothing */
const refusing = (): TokenStorage => ({
  get: () => null,
  set() {
    throw new Error('QuotaExceededError')
  },
  clear() {
    throw new Error('QuotaExceededError')
  },
})

describe('a storageError listener that makes a request', () => {
  it('bug: reporting each storageError through the app API (a request, so getAccessToken) looped, a request and a write each time', async () => {
    const { manager, types } = setupManager({ storage: refusing() }, T0)
    let reports = 0
    manager.subscribe((event) => {
      // e.g. `api.post('/telemetry', …)` through attachTokenRefresh: the interceptor calls getAccessToken()
      if (event.type === 'storageError' && reports < 200) {
        reports++
        setTimeout(() => void manager.getAccessToken(), 1)
      }
    })
    await manager.setTokens(tokenSet(T0, 15 * MIN, 0))
    await new Promise((resolve) => setTimeout(resolve, 300))
    // one write refused, one report: a call within a second of it does not write again
    expect(types().filter((type) => type === 'storageError').length).toBeLessThanOrEqual(2)
  })

  it('bug: a listener that calls getAccessToken() on storageError spun the microtask queue: nothing else ran again', async () => {
    const { manager, types } = setupManager({ storage: refusing() }, T0)
    let calls = 0
    manager.subscribe((event) => {
      // capped so the test ends: uncapped, no macrotask (timer, I/O, rendering) would ever run again
      if (event.type === 'storageError' && calls < 10_000) {
        calls++
        void manager.getAccessToken()
      }
    })
    await manager.setTokens(tokenSet(T0, 15 * MIN, 0))
    await new Promise((resolve) => setImmediate(resolve))
    expect(calls).toBeLessThan(10)
    expect(types().filter((type) => type === 'storageError').length).toBeLessThan(10)
  })
})
