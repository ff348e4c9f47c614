import { afterEach, describe, expect, it, vi } from 'vitest'
import { TokenflowError } from '../src/errors.js'
import {
  type AsyncStorageLike,
  asyncStorage,
  isTokenSet,
  memoryStorage,
  type StorageLike,
  webStorage,
} from '../src/storage.js'
import { describeTokenStorage } from './helpers/describe-token-storage.js'

/** A Map-backed Storage, like the browser's localStorage and sessionStorage. */
class MapStorage implements StorageLike {
  readonly items = new Map<string, string>()
  getItem(key: string): string | null {
    return this.items.get(key) ?? null
  }
  setItem(key: string, value: string): void {
    this.items.set(key, String(value))
  }
  removeItem(key: string): void {
    this.items.delete(key)
  }
}

/** A promise-based map with AsyncStorage's single-key methods, recording every call. */
class MapAsyncStorage implements AsyncStorageLike {
  readonly items = new Map<string, string>()
  readonly calls: string[] = []
  constructor(initial: Record<string, string> = {}) {
    for (const [key, value] of Object.entries(initial)) this.items.set(key, value)
  }
  async getItem(key: string): Promise<string | null> {
    this.calls.push(`getItem ${key}`)
    return this.items.get(key) ?? null
  }
  async setItem(key: string, value: string): Promise<void> {
    this.calls.push(`setItem ${key}`)
    this.items.set(key, value)
  }
  async removeItem(key: string): Promise<void> {
    this.calls.push(`removeItem ${key}`)
    this.items.delete(key)
  }
}

/** The same, plus AsyncStorage's batched methods. */
class MultiMapAsyncStorage extends MapAsyncStorage {
  async multiGet(keys: readonly string[]): Promise<readonly [string, string | null][]> {
    this.calls.push(`multiGet ${keys.join(',')}`)
    // answered in reverse order: the storage must match values by key, not by position
    return keys.map((key): [string, string | null] => [key, this.items.get(key) ?? null]).reverse()
  }
  async multiSet(pairs: readonly (readonly [string, string])[]): Promise<void> {
    this.calls.push(`multiSet ${pairs.map(([key]) => key).join(',')}`)
    for (const [key, value] of pairs) this.items.set(key, value)
  }
  async multiRemove(keys: readonly string[]): Promise<void> {
    this.calls.push(`multiRemove ${keys.join(',')}`)
    for (const key of keys) this.items.delete(key)
  }
}

function quotaExceeded(): DOMException {
  return new DOMException('the quota has been exceeded', 'QuotaExceededError')
}

/** Runs `run` and returns what it threw, sync or async. */
async function caught(run: () => unknown): Promise<unknown> {
  try {
    await run()
  } catch (error) {
    return error
  }
  throw new Error('expected a throw')
}

let counter = 0
const uniqueKey = () => `tokens-${++counter}`

describeTokenStorage('memoryStorage', () => memoryStorage())

const localStorageLike = new MapStorage()
const sessionStorageLike = new MapStorage()
// one backend per kind, as in a browser: instances are kept apart by their keys
describeTokenStorage('webStorage over a localStorage', () =>
  webStorage(localStorageLike, { key: uniqueKey() }),
)
describeTokenStorage('webStorage over a sessionStorage', () =>
  webStorage(sessionStorageLike, { key: uniqueKey() }),
)
describeTokenStorage('webStorage, one backend each', () => webStorage(new MapStorage()))

const sharedAsync = new MapAsyncStorage()
describeTokenStorage('asyncStorage with getItem/setItem/removeItem', () =>
  asyncStorage(sharedAsync, {
    accessTokenKey: uniqueKey(),
    refreshTokenKey: uniqueKey(),
    expiresAtKey: uniqueKey(),
  }),
)
describeTokenStorage('asyncStorage with multiGet/multiSet/multiRemove', () =>
  asyncStorage(new MultiMapAsyncStorage()),
)

describe('memoryStorage', () => {
  it('starts with the initial token set, copied', async () => {
    const initial = { accessToken: 'access-1', refreshToken: 'refresh-1', expiresAt: 5 }
    const storage = memoryStorage(initial)
    initial.accessToken = 'mutated'
    expect(await storage.get()).toEqual({ accessToken: 'access-1', refreshToken: 'refresh-1', expiresAt: 5 })
  })

  it('starts empty with a null initial value', async () => {
    expect(await memoryStorage(null).get()).toBeNull()
  })
})

describe('webStorage', () => {
  afterEach(() => {
    vi.unstubAllGlobals()
  })

  it('stores the whole token set as JSON under the key "tokenflow" by default', () => {
    const backend = new MapStorage()
    webStorage(backend).set({ accessToken: 'access-1', refreshToken: 'refresh-1', expiresAt: 42 })
    expect([...backend.items.keys()]).toEqual(['tokenflow'])
    expect(JSON.parse(backend.items.get('tokenflow')!)).toEqual({
      accessToken: 'access-1',
      refreshToken: 'refresh-1',
      expiresAt: 42,
    })
  })

  it('stores under the given key and leaves other keys alone', () => {
    const backend = new MapStorage()
    backend.setItem('unrelated', 'value')
    const storage = webStorage(backend, { key: 'my-app' })
    storage.set({ accessToken: 'access-1' })
    storage.clear()
    expect([...backend.items]).toEqual([['unrelated', 'value']])
  })

  it('is synchronous, so a read needs no microtask', () => {
    const storage = webStorage(new MapStorage())
    storage.set({ accessToken: 'access-1', refreshToken: 'refresh-1' })
    expect(storage.get()).toEqual({ accessToken: 'access-1', refreshToken: 'refresh-1' })
  })

  it('defaults to the localStorage present when the factory is called, not at import', () => {
    const backend = new MapStorage()
    vi.stubGlobal('localStorage', backend)
    webStorage().set({ accessToken: 'access-1' })
    expect(JSON.parse(backend.items.get('tokenflow')!)).toEqual({
      accessToken: 'access-1',
      refreshToken: null,
    })
  })

  it('throws ERR_INVALID_OPTION pointing at memoryStorage() when there is no localStorage (SSR)', () => {
    vi.stubGlobal('localStorage', undefined)
    const error = (() => {
      try {
        webStorage()
      } catch (error) {
        return error
      }
    })()
    expect(error).toBeInstanceOf(TokenflowError)
    expect(error).toMatchObject({
      code: 'ERR_INVALID_OPTION',
      message: '"storage" is required: localStorage is not available; pass memoryStorage() on the server',
    })
  })

  it('throws ERR_INVALID_OPTION with the cause when reading localStorage throws (sandboxed iframe)', () => {
    const denied = new DOMException('access is denied for this document', 'SecurityError')
    const descriptor = Object.getOwnPropertyDescriptor(globalThis, 'localStorage')
    Object.defineProperty(globalThis, 'localStorage', {
      configurable: true,
      get() {
        throw denied
      },
    })
    try {
      expect(() => webStorage()).toThrow(
        expect.objectContaining({
          code: 'ERR_INVALID_OPTION',
          cause: denied,
          message: expect.stringContaining('memoryStorage()'),
        }),
      )
    } finally {
      if (descriptor) Object.defineProperty(globalThis, 'localStorage', descriptor)
      else Reflect.deleteProperty(globalThis, 'localStorage')
    }
  })

  it.each([
    ['an object without the methods', {}],
    ['a string', 'localStorage'],
  ])('throws ERR_INVALID_OPTION for a storage that is %s', (_, storage) => {
    expect(() => webStorage(storage as unknown as StorageLike)).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_OPTION',
        message: '"storage" must be a Storage: getItem, setItem and removeItem',
      }),
    )
  })

  it('throws ERR_INVALID_OPTION for an empty key', () => {
    expect(() => webStorage(new MapStorage(), { key: '' })).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_OPTION',
        message: '"key" must be a non-empty string',
      }),
    )
  })

  it.each([
    ['truncated JSON', '{"accessToken":"acc'],
    ['the string "undefined"', 'undefined'],
    ['JSON null', 'null'],
    ['a JSON string', '"access-1"'],
    ['a JSON array', '["access-1","refresh-1"]'],
    ['an object without accessToken', '{"refreshToken":"refresh-1"}'],
    ['an empty accessToken', '{"accessToken":""}'],
    ['a numeric accessToken', '{"accessToken":5}'],
    ['a numeric refreshToken', '{"accessToken":"access-1","refreshToken":5}'],
    ['a string expiresAt', '{"accessToken":"access-1","expiresAt":"soon"}'],
    ['an empty string', ''],
  ])('reads %s as null: the user is logged out and nothing crashes', (_, raw) => {
    const backend = new MapStorage()
    backend.setItem('tokenflow', raw)
    expect(webStorage(backend).get()).toBeNull()
  })

  it('overwrites a corrupt value on the next set', () => {
    const backend = new MapStorage()
    backend.setItem('tokenflow', '{corrupt')
    const storage = webStorage(backend)
    storage.set({ accessToken: 'access-1', refreshToken: undefined })
    expect(storage.get()).toEqual({ accessToken: 'access-1', refreshToken: null })
  })

  it('wraps a QuotaExceededError from setItem in ERR_STORAGE, keeps the cause and the previous tokens', async () => {
    const backend = new MapStorage()
    const storage = webStorage(backend)
    storage.set({ accessToken: 'access-1', refreshToken: 'refresh-1' })
    const quota = quotaExceeded()
    backend.setItem = () => {
      throw quota
    }
    const error = await caught(() => storage.set({ accessToken: 'access-2', refreshToken: 'refresh-2' }))
    expect(error).toBeInstanceOf(TokenflowError)
    expect(error).toMatchObject({ code: 'ERR_STORAGE', message: 'token storage failed', cause: quota })
    expect(storage.get()).toEqual({ accessToken: 'access-1', refreshToken: 'refresh-1' })
  })

  it('wraps a SecurityError from getItem and removeItem in ERR_STORAGE with the cause', async () => {
    const denied = new DOMException('access is denied', 'SecurityError')
    const throwing: StorageLike = {
      getItem() {
        throw denied
      },
      setItem() {},
      removeItem() {
        throw denied
      },
    }
    const storage = webStorage(throwing)
    for (const run of [() => storage.get(), () => storage.clear(), () => storage.set({ accessToken: 'a' })]) {
      expect(await caught(run)).toMatchObject({ code: 'ERR_STORAGE', cause: denied })
    }
  })
})

describe('asyncStorage', () => {
  it("reads the recipe's plain accessToken and refreshToken strings, so migrating users stay logged in", async () => {
    const recipe = new MapAsyncStorage({
      accessToken: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln',
      refreshToken: 'recipe-refresh-token',
    })
    expect(await asyncStorage(recipe).get()).toEqual({
      accessToken: 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln',
      refreshToken: 'recipe-refresh-token',
    })
  })

  it("writes plain strings under the recipe's keys, so rolling the app back keeps users logged in too", async () => {
    const backend = new MapAsyncStorage()
    await asyncStorage(backend).set({
      accessToken: 'access-1',
      refreshToken: 'refresh-1',
      expiresAt: 1_700_000_000_000,
    })
    expect(Object.fromEntries(backend.items)).toEqual({
      accessToken: 'access-1',
      refreshToken: 'refresh-1',
      accessTokenExpiresAt: '1700000000000',
    })
  })

  it('uses the given keys', async () => {
    const backend = new MapAsyncStorage()
    const storage = asyncStorage(backend, { accessTokenKey: 'a', refreshTokenKey: 'r', expiresAtKey: 'e' })
    await storage.set({ accessToken: 'access-1', refreshToken: 'refresh-1', expiresAt: 7 })
    expect(Object.fromEntries(backend.items)).toEqual({ a: 'access-1', r: 'refresh-1', e: '7' })
  })

  it('reads null when only a refresh token is stored', async () => {
    expect(await asyncStorage(new MapAsyncStorage({ refreshToken: 'refresh-1' })).get()).toBeNull()
  })

  it('ignores an expiresAt that is not a number and keeps the user logged in', async () => {
    const backend = new MapAsyncStorage({ accessToken: 'access-1', accessTokenExpiresAt: 'tomorrow' })
    expect(await asyncStorage(backend).get()).toEqual({ accessToken: 'access-1', refreshToken: null })
  })

  it('uses multiGet, multiSet and multiRemove when the backend has them', async () => {
    const backend = new MultiMapAsyncStorage()
    const storage = asyncStorage(backend)
    await storage.set({ accessToken: 'access-1', refreshToken: null })
    await storage.get()
    await storage.clear()
    expect(backend.calls).toEqual([
      'multiSet accessToken',
      'multiRemove refreshToken,accessTokenExpiresAt',
      'multiGet accessToken,refreshToken,accessTokenExpiresAt',
      'multiRemove accessToken,refreshToken,accessTokenExpiresAt',
    ])
  })

  it('does not touch the refresh token key when set gets refreshToken undefined', async () => {
    const backend = new MapAsyncStorage({ refreshToken: 'refresh-1' })
    await asyncStorage(backend).set({ accessToken: 'access-2', expiresAt: 9 })
    expect(backend.calls).toEqual(['setItem accessToken', 'setItem accessTokenExpiresAt'])
  })

  it('wraps a rejected setItem (QuotaExceededError) in ERR_STORAGE and keeps the cause', async () => {
    const backend = new MapAsyncStorage()
    const quota = quotaExceeded()
    backend.setItem = async () => {
      throw quota
    }
    const error = await caught(() => asyncStorage(backend).set({ accessToken: 'access-1' }))
    expect(error).toBeInstanceOf(TokenflowError)
    expect(error).toMatchObject({ code: 'ERR_STORAGE', message: 'token storage failed', cause: quota })
  })

  it('wraps a rejected multiSet in ERR_STORAGE and does not remove the stored refresh token', async () => {
    const backend = new MultiMapAsyncStorage({ accessToken: 'access-1', refreshToken: 'refresh-1' })
    const quota = quotaExceeded()
    backend.multiSet = async () => {
      throw quota
    }
    const storage = asyncStorage(backend)
    await expect(storage.set({ accessToken: 'access-2', refreshToken: null })).rejects.toMatchObject({
      code: 'ERR_STORAGE',
      cause: quota,
    })
    expect(await storage.get()).toEqual({ accessToken: 'access-1', refreshToken: 'refresh-1' })
  })

  it('wraps a getItem that throws synchronously, and a rejected removeItem, in ERR_STORAGE', async () => {
    const failure = new Error('native module missing')
    const backend = new MapAsyncStorage()
    backend.getItem = () => {
      throw failure
    }
    backend.removeItem = () => Promise.reject(failure)
    const storage = asyncStorage(backend)
    await expect(storage.get()).rejects.toMatchObject({ code: 'ERR_STORAGE', cause: failure })
    await expect(storage.clear()).rejects.toMatchObject({ code: 'ERR_STORAGE', cause: failure })
  })

  it.each([
    ['undefined', undefined],
    ['an object without the methods', { getItem: async () => null }],
  ])('throws ERR_INVALID_OPTION for a storage that is %s', (_, storage) => {
    expect(() => asyncStorage(storage as unknown as AsyncStorageLike)).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_OPTION',
        message: '"storage" must be a Storage: getItem, setItem and removeItem',
      }),
    )
  })

  it('throws ERR_INVALID_OPTION for an empty key', () => {
    expect(() => asyncStorage(new MapAsyncStorage(), { refreshTokenKey: '' })).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_OPTION',
        message: '"refreshTokenKey" must be a non-empty string',
      }),
    )
  })
})

describe('isTokenSet', () => {
  it.each([
    [{ accessToken: 'a' }, true],
    [{ accessToken: 'a', refreshToken: null, expiresAt: 1 }, true],
    [{ accessToken: 'a', refreshToken: 'r', expiresAt: undefined }, true],
    [{ accessToken: '' }, false],
    [{ accessToken: 'a', refreshToken: 1 }, false],
    [{ accessToken: 'a', expiresAt: Number.NaN }, false],
    [{ accessToken: 'a', expiresAt: '1' }, false],
    [null, false],
    ['a', false],
  ])('isTokenSet(%j) is %s', (value, expected) => {
    expect(isTokenSet(value)).toBe(expected)
  })
})
