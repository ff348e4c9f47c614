/**
 * Two token sets of one origin, kept under two webStorage keys (two APIs, two micro-frontends): found by a
 * review, their managers shared the default channel and lock, so one's login became the other's session and
 * one's logout ended the other's. The default channel and lock are now named after the key.
 */
import {
  createTokenManager,
  type TokenEvent,
  type TokenSet,
  type TokenStorage,
  webStorage,
} from '@tokenflow/client'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { eventually, tabClock } from './helpers/tabs.js'
import { createTestLock, tokenSet } from './helpers/tokens.js'

const T0 = 1_700_000_000_000
const MIN = 60_000

afterEach(() => vi.unstubAllGlobals())

/** a page (a document, so the default channel talks) with a localStorage the test can see and count */
function page() {
  const map = new Map<string, string>()
  const reads: string[] = []
  const local = {
    getItem: (key: string) => {
      reads.push(key)
      return map.get(key) ?? null
    },
    setItem: (key: string, value: string) => void map.set(key, value),
    removeItem: (key: string) => void map.delete(key),
  }
  vi.stubGlobal('document', {})
  vi.stubGlobal('localStorage', local)
  return { map, reads }
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 30))

describe('managers on two webStorage keys of one origin, with the default channel', () => {
  const clock = tabClock(T0)
  const make = (key: string, lock?: ReturnType<typeof createTestLock>) => {
    const events: TokenEvent[] = []
    const manager = createTokenManager({
      refresh: async () => tokenSet(clock.now(), 15 * MIN, `${key}-refreshed`),
      storage: webStorage(localStorage, { key }),
      lock: lock ?? false,
      now: clock.now,
    })
    manager.subscribe((event) => events.push(event))
    return { manager, events }
  }

  it("bug: a login under one key became the other's session, and a logout of one ended the other's", async () => {
    const { map } = page()
    const a = make('api-a')
    const b = make('api-b')
    const tokensB = tokenSet(T0, 15 * MIN, 'user-of-api-b')
    await b.manager.setTokens(tokensB)
    await settle()
    await a.manager.setTokens(tokenSet(T0, 15 * MIN, 'user-of-api-a'))
    await settle()
    expect(await b.manager.getAccessToken()).toBe(tokensB.accessToken)
    await a.manager.clear()
    await settle()
    expect(b.events).toEqual([])
    expect(b.manager.status).toBe('authenticated')
    expect(JSON.parse(map.get('api-b')!).accessToken).toBe(tokensB.accessToken)
    expect(map.has('api-a')).toBe(false)
  })

  it('managers on one key (two tabs) still share their sessions: a login in one is the other’s', async () => {
    page()
    const first = make('api-b')
    const second = make('api-b')
    const tokens = tokenSet(T0, 15 * MIN, 'shared')
    await first.manager.setTokens(tokens)
    await eventually(() => second.manager.status === 'authenticated')
    expect(second.events).toEqual([{ type: 'refreshed', tokens, source: 'otherTab' }])
    await first.manager.clear()
    await eventually(() => second.manager.status === 'unauthenticated')
  })

  it('each key refreshes under a lock of its own: one’s refresh does not wait for the other’s', async () => {
    page()
    const names: string[] = []
    const lock = createTestLock()
    const request = lock.request.bind(lock)
    lock.request = (name, options, callback) => {
      names.push(name)
      return request(name, options, callback)
    }
    const a = make('api-a', lock)
    const b = make('tokenflow', lock)
    await a.manager.setTokens(tokenSet(T0, 15 * MIN, 'a'))
    await b.manager.setTokens(tokenSet(T0, 15 * MIN, 'b'))
    await Promise.all([a.manager.refresh(), b.manager.refresh()])
    expect(names.filter((name) => name.endsWith(':refresh')).sort()).toEqual([
      'tokenflow:api-a:refresh',
      'tokenflow:refresh',
    ])
  })
})

describe('the storage event, where BroadcastChannel is missing', () => {
  it("reads storage for its own key's change and a localStorage.clear(), not for another key's", async () => {
    const { map, reads } = page()
    const listeners: Array<(event: { key: string | null }) => void> = []
    vi.stubGlobal('BroadcastChannel', undefined)
    vi.stubGlobal('addEventListener', (type: string, listener: (event: { key: string | null }) => void) => {
      if (type === 'storage') listeners.push(listener)
    })
    const clock = tabClock(T0)
    const events: TokenEvent[] = []
    const manager = createTokenManager({
      refresh: async () => tokenSet(clock.now(), 15 * MIN, 'refreshed'),
      storage: webStorage(localStorage, { key: 'api-a' }),
      lock: false,
      now: clock.now,
    })
    manager.subscribe((event) => events.push(event))
    await manager.setTokens(tokenSet(T0, 15 * MIN, 1))
    expect(listeners).toHaveLength(1)
    reads.length = 0
    for (let i = 0; i < 20; i++) listeners[0]!({ key: 'analytics:last-seen' })
    await settle()
    expect(reads).toEqual([])
    // another tab's login under this key
    const other = tokenSet(T0, 15 * MIN, 2)
    map.set('api-a', JSON.stringify(other))
    listeners[0]!({ key: 'api-a' })
    await eventually(() => events.length === 1)
    expect(events).toEqual([{ type: 'refreshed', tokens: other, source: 'otherTab' }])
    // localStorage.clear() in another tab
    map.clear()
    listeners[0]!({ key: null })
    await eventually(() => manager.status === 'unauthenticated')
  })
})

describe('a storage of your own that has a `key` member (a review of the change above)', () => {
  /** the tokens under `<key>:access`, `<key>:refresh`: a common shape, whose `key` is its own business */
  class PrefixedStorage implements TokenStorage {
    readonly shared = true
    constructor(private readonly key: string) {}
    get(): TokenSet | null {
      const accessToken = localStorage.getItem(`${this.key}:access`)
      if (!accessToken) return null
      const refreshToken = localStorage.getItem(`${this.key}:refresh`)
      return { accessToken, refreshToken }
    }
    set(tokens: TokenSet): void {
      localStorage.setItem(`${this.key}:access`, tokens.accessToken)
      if (tokens.refreshToken) localStorage.setItem(`${this.key}:refresh`, tokens.refreshToken)
    }
    clear(): void {
      for (const part of ['access', 'refresh']) localStorage.removeItem(`${this.key}:${part}`)
    }
  }

  it('bug: its `key` was taken for the storage key (and `implements TokenStorage` no longer compiled): another tab’s login through the storage event was ignored', async () => {
    page()
    const listeners: Array<(event: { key: string | null }) => void> = []
    vi.stubGlobal('BroadcastChannel', undefined)
    vi.stubGlobal('addEventListener', (type: string, listener: (event: { key: string | null }) => void) => {
      if (type === 'storage') listeners.push(listener)
    })
    const events: TokenEvent[] = []
    const manager = createTokenManager({
      refresh: async () => tokenSet(T0, 15 * MIN, 'refreshed'),
      storage: new PrefixedStorage('auth'),
      lock: false,
      now: () => T0,
    })
    manager.subscribe((event) => events.push(event))
    await manager.setTokens(tokenSet(T0, 15 * MIN, 1))
    expect(listeners).toHaveLength(1)
    // another tab logs in: it writes both keys, each firing a storage event here
    const other = tokenSet(T0, 15 * MIN, 2)
    new PrefixedStorage('auth').set(other)
    for (const part of ['access', 'refresh']) listeners[0]!({ key: `auth:${part}` })
    await eventually(() => events.some((event) => event.type === 'refreshed'))
    expect(await manager.getAccessToken()).toBe(other.accessToken)
  })
})
