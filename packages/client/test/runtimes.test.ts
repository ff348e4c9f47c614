import { execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { AsyncStorageStatic } from '@react-native-async-storage/async-storage'
import { asyncStorage, createTokenManager, jsonRefresh, memoryStorage, RefreshError } from '@tokenflow/client'
import { createAuthFetch } from '@tokenflow/client/fetch'
import { buildSync } from 'esbuild'
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'
import * as whatwg from 'whatwg-fetch'
import { controlledRefresh, tokenSet } from './helpers/tokens.js'

/**
 * The client on the runtimes its users run it on, with the globals those lack removed or replaced.
 * React Native (0.72 up to 0.86 at least) installs AbortController and AbortSignal from the abort-controller@3
 * polyfill (Libraries/Core/setUpXHR.js): `abort(reason)` drops the reason, and a signal has no `reason`, no
 * `throwIfAborted`. RNAbortController is what of it matters here: `'reason' in signal` is false, as there.
 */
class RNAbortSignal {
  aborted = false
  onabort: (() => void) | null = null
  private listeners: Array<() => void> = []
  addEventListener(_type: 'abort', listener: () => void) {
    this.listeners.push(listener)
  }
  removeEventListener(_type: 'abort', listener: () => void) {
    this.listeners = this.listeners.filter((other) => other !== listener)
  }
  dispatch() {
    this.onabort?.()
    for (const listener of [...this.listeners]) listener()
  }
}
class RNAbortController {
  readonly signal = new RNAbortSignal()
  abort() {
    if (this.signal.aborted) return
    this.signal.aborted = true
    this.signal.dispatch()
  }
}
const rnSignal = (controller: RNAbortController) => controller.signal as unknown as AbortSignal

/** React Native's fetch (whatwg-fetch): an abort rejects, on the next tick, with an error named AbortError */
const rnFetch = (() => (_url: unknown, init: RequestInit) =>
  new Promise((_resolve, reject) =>
    init.signal?.addEventListener('abort', () =>
      setTimeout(() => reject(Object.assign(new Error('Aborted'), { name: 'AbortError' }))),
    ),
  )) as unknown as () => typeof fetch

const T0 = 1_700_000_000_000
const MIN = 60_000

afterEach(() => {
  vi.unstubAllGlobals()
})

describe('React Native: AbortSignal without reason (abort-controller polyfill)', () => {
  /** a manager whose token expired, so the next read waits for a refresh that never answers */
  function waiting() {
    const { refresh, calls } = controlledRefresh()
    const manager = createTokenManager({
      refresh,
      storage: memoryStorage(tokenSet(T0 - 10 * MIN, MIN)),
      now: () => T0,
    })
    return { manager, calls }
  }

  it('getAccessToken: a waiter whose signal aborts rejects with an AbortError, not with undefined', async () => {
    const { manager, calls } = waiting()
    const controller = new RNAbortController()
    const read = manager.getAccessToken({ signal: rnSignal(controller) })
    await vi.waitFor(() => expect(calls).toHaveLength(1))
    controller.abort()
    const error = await read.catch((reason: unknown) => reason)
    expect(error).toBeInstanceOf(Error)
    expect(error).toMatchObject({ name: 'AbortError' })
    // the refresh goes on for the others
    calls[0]!.resolve(tokenSet(T0, MIN, 1))
    expect(await manager.getAccessToken()).toBe(tokenSet(T0, MIN, 1).accessToken)
  })

  it('refresh: an already aborted signal rejects with an AbortError', async () => {
    const { manager } = waiting()
    const controller = new RNAbortController()
    controller.abort()
    const error = await manager.refresh({ signal: rnSignal(controller) }).catch((reason: unknown) => reason)
    expect(error).toMatchObject({ name: 'AbortError' })
  })

  it('createAuthFetch: a request aborted while it waits for the refresh rejects with an AbortError and is never sent', async () => {
    const { manager, calls } = waiting()
    const baseFetch = vi.fn(async () => new Response('ok'))
    const authFetch = createAuthFetch(manager, { fetch: baseFetch })
    const controller = new RNAbortController()
    const response = authFetch('https://api.example.com/me', { signal: rnSignal(controller) })
    await vi.waitFor(() => expect(calls).toHaveLength(1))
    controller.abort()
    const error = await response.catch((reason: unknown) => reason)
    expect(error).toMatchObject({ name: 'AbortError' })
    expect(baseFetch).not.toHaveBeenCalled()
  })

  it('a refresh that outlasts refreshTimeout fails with kind "timeout", not "network"', async () => {
    vi.stubGlobal('AbortController', RNAbortController)
    const seen: AbortSignal[] = []
    const refresh = jsonRefresh('https://auth.example.com/refresh/token', { fetch: rnFetch() })
    const manager = createTokenManager({
      refresh: (context) => {
        seen.push(context.signal)
        return refresh(context)
      },
      storage: memoryStorage(tokenSet(T0 - 10 * MIN, MIN)),
      refreshTimeout: 20,
      retry: false,
      now: () => T0,
    })
    const error = await manager.getAccessToken().catch((reason: unknown) => reason)
    expect(error).toBeInstanceOf(RefreshError)
    expect(error).toMatchObject({ kind: 'timeout' })
    expect(seen[0]?.aborted).toBe(true)
    // a timeout is transient: the session is kept
    expect(manager.status).toBe('authenticated')
  })
})

describe('React Native (Hermes): only the globals it has', () => {
  it('logs in, refreshes once for a burst after expiry, and keeps the tokens in AsyncStorage', async () => {
    // what Hermes on RN 0.72-0.76 lacks, or lacks on some of those versions; RN has no document either
    for (const name of [
      'structuredClone',
      'TextDecoder',
      'TextEncoder',
      'atob',
      'btoa',
      'BroadcastChannel',
      'reportError',
      'localStorage',
      'sessionStorage',
      'ReadableStream',
    ])
      vi.stubGlobal(name, undefined)
    vi.stubGlobal('navigator', { product: 'ReactNative' })
    vi.stubGlobal('AbortController', RNAbortController)
    // React Native timers answer numbers, which have no unref
    const realSetTimeout = globalThis.setTimeout
    vi.stubGlobal('setTimeout', (fn: () => void, ms?: number) => Number(realSetTimeout(fn, ms)))

    const require = createRequire(import.meta.url)
    const globals = globalThis as { jest?: unknown }
    globals.jest = { fn: vi.fn }
    const path = require.resolve('@react-native-async-storage/async-storage/jest/async-storage-mock')
    delete require.cache[path]
    const AsyncStorage = require(path) as AsyncStorageStatic
    delete globals.jest

    let now = T0
    let refreshes = 0
    const manager = createTokenManager({
      refresh: async ({ refreshToken }) => {
        refreshes++
        await new Promise((resolve) => setTimeout(resolve, 5))
        return tokenSet(now, MIN, Number(refreshToken.slice(3)) + 1)
      },
      storage: asyncStorage(AsyncStorage),
      now: () => now,
    })
    await manager.setTokens(tokenSet(T0, MIN))
    expect(await manager.getAccessToken()).toBe(tokenSet(T0, MIN).accessToken)
    now += 2 * MIN
    const tokens = await Promise.all(Array.from({ length: 5 }, () => manager.getAccessToken()))
    expect(refreshes).toBe(1)
    expect(new Set(tokens)).toEqual(new Set([tokenSet(now, MIN, 1).accessToken]))
    // the expiry came from the JWT's exp, decoded without atob
    expect(await AsyncStorage.getItem('refreshToken')).toBe('rt-1')
  })
})

describe('React Native: fetch, Request and Headers from whatwg-fetch', () => {
  // React Native installs whatwg-fetch's Request, Headers, Response and fetch (Libraries/Core/setUpXHR.js).
  // Its Request has no `body`, and its fetch starts with `new Request(input, init)`, which takes the body of a
  // Request it is given and marks that one used: sending the same Request twice throws "Already read".
  /** whatwg-fetch's globals, and a manager whose refresh gives token 1, with a fetch whose answers are `statuses` */
  function reactNative(statuses: number[]) {
    vi.stubGlobal('Request', whatwg.Request)
    vi.stubGlobal('Headers', whatwg.Headers)
    vi.stubGlobal('Response', whatwg.Response)
    const sent: Array<{ authorization: string | null; body: string }> = []
    // whatwg-fetch's fetch up to its XMLHttpRequest
    const baseFetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
      const request = new whatwg.Request(input, init)
      sent.push({ authorization: request.headers.get('authorization'), body: await request.text() })
      return new whatwg.Response('{}', { status: statuses[sent.length - 1] ?? 500 })
    }) as typeof fetch
    const manager = createTokenManager({
      refresh: async () => tokenSet(T0, MIN, 1),
      storage: memoryStorage(tokenSet(T0, MIN)),
      now: () => T0,
    })
    return { sent, authFetch: createAuthFetch(manager, { fetch: baseFetch }) }
  }
  const bearer = (n: number) => `Bearer ${tokenSet(T0, MIN, n).accessToken}`

  it('a Request with a body (what ky and openapi-fetch pass) whose first try gets 401 is sent again, body intact', async () => {
    const { sent, authFetch } = reactNative([401, 200])
    const request = new whatwg.Request('https://api.example.com/orders', {
      method: 'POST',
      body: '{"order":42}',
      headers: { 'content-type': 'application/json' },
    })
    const response = await authFetch(request)

    expect(response.status).toBe(200)
    expect(sent).toEqual([
      { authorization: bearer(0), body: '{"order":42}' },
      { authorization: bearer(1), body: '{"order":42}' },
    ])
  })

  it("a Request whose body is '' is sent, and sent again after a 401 (whatwg-fetch's clone() marks it used)", async () => {
    for (const statuses of [[200], [401, 200]]) {
      const { sent, authFetch } = reactNative(statuses)
      const response = await authFetch(
        new whatwg.Request('https://api.example.com/ping', { method: 'POST', body: '' }),
      )
      expect(response.status).toBe(200)
      expect(sent).toEqual(
        [bearer(0), bearer(1)]
          .slice(0, statuses.length)
          .map((authorization) => ({ authorization, body: '' })),
      )
    }
  })
})

describe('a realm whose globalThis takes no new properties (SES harden, a frozen global)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tokenflow-frozen-'))
  const adapter = join(dir, 'axios-adapter.mjs')
  afterAll(() => rmSync(dir, { recursive: true, force: true }))
  // the adapter as an app bundle has it, axios left out (a peer)
  buildSync({
    entryPoints: [fileURLToPath(new URL('../src/axios.ts', import.meta.url))],
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    outfile: adapter,
    external: ['axios'],
    logLevel: 'silent',
  })

  it.each(['Object.freeze(globalThis)', 'Object.preventExtensions(globalThis)', 'Object.seal(globalThis)'])(
    'bug: importing @tokenflow/client/axios after %s threw at module load',
    (prelude) => {
      const main = join(dir, `main-${randomUUID()}.mjs`)
      writeFileSync(
        main,
        `${prelude}\ntry { const m = await import(${JSON.stringify(adapter)}); console.log('ok', typeof m.attachTokenRefresh) } catch (e) { console.log('threw', e.message) }\n`,
      )
      expect(execFileSync(process.execPath, [main], { encoding: 'utf8' }).trim()).toBe('ok function')
    },
  )
})
