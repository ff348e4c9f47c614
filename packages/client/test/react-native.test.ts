import { createRequire } from 'node:module'
import type { AsyncStorageStatic } from '@react-native-async-storage/async-storage'
import {
  asyncStorage,
  createTokenManager,
  jsonRefresh,
  RefreshError,
  type TokenEvent,
} from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import { createAsyncStorage as createAsyncStorage3 } from 'async-storage-3/jest'
import axios from 'axios'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createTestClock, startTestAuthServer, type TestAuthServer } from './helpers/auth-server.js'
import { describeTokenStorage } from './helpers/describe-token-storage.js'

/**
 * asyncStorage over the in-memory AsyncStorage mock that ships inside @react-native-async-storage/async-storage
 * (jest/async-storage-mock.js): the package's own behaviour, not a fake of ours. The keys are the ones the
 * well-known axios recipe writes with `AsyncStorage.setItem`, so an app that migrates keeps its users logged in.
 */

const require = createRequire(import.meta.url)
const MOCK = '@react-native-async-storage/async-storage/jest/async-storage-mock'

/**
 * A fresh instance of the package's mock. It is CommonJS and keeps its data in a module-level object, so each
 * load from a cleared require cache is a separate backend. It wraps its methods in `jest.fn(impl)` while it loads,
 * and vitest's `vi.fn(impl)` behaves the same: the shim exists only for that moment.
 */
function loadAsyncStorageMock(): AsyncStorageStatic {
  const path = require.resolve(MOCK)
  delete require.cache[path]
  const globals = globalThis as { jest?: unknown }
  globals.jest = { fn: vi.fn }
  try {
    return require(path) as AsyncStorageStatic
  } finally {
    delete globals.jest
  }
}

describeTokenStorage("asyncStorage over @react-native-async-storage's own mock", () =>
  asyncStorage(loadAsyncStorageMock()),
)

describe("asyncStorage with the recipe's keys", () => {
  const TTL = 60_000
  let server: TestAuthServer
  let serverClock: ReturnType<typeof createTestClock>
  let AsyncStorage: AsyncStorageStatic

  beforeEach(async () => {
    serverClock = createTestClock()
    server = await startTestAuthServer({ accessTtl: TTL, now: serverClock.now })
    AsyncStorage = loadAsyncStorageMock()
  })
  afterEach(() => server.close())

  /** what the recipe did after its login: two plain strings under its two keys */
  async function recipeLogin() {
    const tokens = server.login('alice')
    await AsyncStorage.setItem('accessToken', tokens.accessToken)
    await AsyncStorage.setItem('refreshToken', tokens.refreshToken)
    return tokens
  }

  /** the app after it switched to tokenflow: a manager over the same AsyncStorage, attached to axios */
  function app() {
    const manager = createTokenManager({
      refresh: jsonRefresh(`${server.url}/refresh/token`),
      storage: asyncStorage(AsyncStorage),
      lock: false,
      channel: false,
    })
    const events: TokenEvent[] = []
    manager.subscribe((event) => events.push(event))
    const api = axios.create({ baseURL: server.url })
    attachTokenRefresh(api, manager)
    return { manager, api, events }
  }

  const tokenNumber = (token: string | null) => server.claims(token!)!.n

  it('reads the tokens the recipe stored under "accessToken" and "refreshToken": the user stays logged in', async () => {
    const tokens = await recipeLogin()
    expect(await asyncStorage(AsyncStorage).get()).toEqual({
      accessToken: tokens.accessToken,
      refreshToken: tokens.refreshToken,
    })
    const { manager, api } = app()
    expect(await manager.getAccessToken()).toBe(tokens.accessToken)
    expect(manager.status).toBe('authenticated')
    const { data } = await api.get<{ tokenNumber: number }>('/api/data')
    expect(data.tokenNumber).toBe(tokenNumber(tokens.accessToken))
    expect(server.counters).toMatchObject({ logins: 1, refreshAttempts: 0 })
  })

  it('expired token: 1 refresh, and the new tokens are written back under the recipe keys as plain strings', async () => {
    const old = await recipeLogin()
    const { api, events } = app()
    serverClock.advance(TTL + 1_000)
    const responses = await Promise.all(
      Array.from({ length: 10 }, () => api.get<{ tokenNumber: number }>('/api/data')),
    )
    expect(responses.map(({ status }) => status)).toEqual(Array(10).fill(200))
    expect(server.counters.refreshes).toBe(1)
    expect(server.counters.reuseDetections).toBe(0)

    const accessToken = await AsyncStorage.getItem('accessToken')
    const refreshToken = await AsyncStorage.getItem('refreshToken')
    // plain strings, as the recipe reads them: a JWT and the server's opaque token, not JSON
    expect(accessToken).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/)
    expect(refreshToken).toMatch(/^rt_[\w-]+$/)
    expect(tokenNumber(accessToken)).toBe(tokenNumber(old.accessToken) + 1)
    expect(responses.map(({ data }) => data.tokenNumber)).toEqual(Array(10).fill(tokenNumber(accessToken)))
    expect(refreshToken).not.toBe(old.refreshToken)
    expect(events.filter(({ type }) => type === 'refreshed')).toEqual([
      { type: 'refreshed', source: 'local', tokens: expect.objectContaining({ accessToken, refreshToken }) },
    ])

    // the app restarts: the rotated tokens are what it finds, and they work without another refresh
    const restarted = app()
    expect(await restarted.manager.getAccessToken()).toBe(accessToken)
    expect((await restarted.api.get('/api/data')).status).toBe(200)
    expect(server.counters.refreshAttempts).toBe(1)
  })

  it('a refused refresh token logs out: the recipe keys are removed', async () => {
    await recipeLogin()
    const { api, events } = app()
    serverClock.advance(TTL + 1_000)
    server.refreshMode = 401
    const error = await api.get('/api/data').catch((reason: unknown) => reason)
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ kind: 'rejected' })
    expect(events.filter(({ type }) => type === 'loggedOut')).toEqual([
      { type: 'loggedOut', reason: 'refreshRejected', error },
    ])
    expect(await AsyncStorage.multiGet(['accessToken', 'refreshToken', 'accessTokenExpiresAt'])).toEqual([
      ['accessToken', null],
      ['refreshToken', null],
      ['accessTokenExpiresAt', null],
    ])
    expect(await AsyncStorage.getAllKeys()).toEqual([])
  })
})

/**
 * AsyncStorage 3 (what `npm install @react-native-async-storage/async-storage` gives today) has `getMany`,
 * `setMany` and `removeMany` instead of the `multi*` methods, and ships its in-memory mock as ESM ("./jest").
 * Its default export is the legacy database, where apps of versions 1 and 2 kept their keys.
 */
let databases = 0
const loadAsyncStorage3 = () => createAsyncStorage3(`tokenflow-test-${++databases}`)

describeTokenStorage("asyncStorage over AsyncStorage 3's own mock", () => asyncStorage(loadAsyncStorage3()))

describe('asyncStorage over AsyncStorage 3', () => {
  it('bug: wrote the token pair with one setItem per key (a failure between them left a spent refresh token next to the new access token); it uses setMany, getMany and removeMany', async () => {
    const backend = loadAsyncStorage3()
    const single = {
      getItem: vi.spyOn(backend, 'getItem'),
      setItem: vi.spyOn(backend, 'setItem'),
      removeItem: vi.spyOn(backend, 'removeItem'),
    }
    const storage = asyncStorage(backend)
    await storage.set({ accessToken: 'at-1', refreshToken: 'rt-1', expiresAt: 1_700_000_000_000 })
    expect(await backend.getMany(['accessToken', 'refreshToken', 'accessTokenExpiresAt'])).toEqual({
      accessToken: 'at-1',
      refreshToken: 'rt-1',
      accessTokenExpiresAt: '1700000000000',
    })
    expect(await storage.get()).toEqual({
      accessToken: 'at-1',
      refreshToken: 'rt-1',
      expiresAt: 1_700_000_000_000,
    })
    // a set without expiresAt removes the stale one, in the same batch style
    await storage.set({ accessToken: 'at-2', refreshToken: 'rt-2' })
    expect(await storage.get()).toEqual({ accessToken: 'at-2', refreshToken: 'rt-2' })
    await storage.clear()
    expect(await backend.getAllKeys()).toEqual([])
    expect(single.getItem).not.toHaveBeenCalled()
    expect(single.setItem).not.toHaveBeenCalled()
    expect(single.removeItem).not.toHaveBeenCalled()
  })

  it("keeps a migrating app's users logged in: the recipe's keys in the legacy database", async () => {
    const legacy = (await import('async-storage-3/jest')).default
    await legacy.setMany({ accessToken: 'at-recipe', refreshToken: 'rt-recipe' })
    expect(await asyncStorage(legacy).get()).toEqual({ accessToken: 'at-recipe', refreshToken: 'rt-recipe' })
    await legacy.clear()
  })
})
