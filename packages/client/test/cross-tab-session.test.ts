import { createTokenManager, type TokenEvent, type TokenStorage, webStorage } from '@tokenflow/client'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { controlledRefresh, createTestLock, flush, tokenSet } from './helpers/tokens.js'

let count = 0
const freshChannel = () => `zz-review-${process.pid}-${++count}`
const T0 = 1_700_000_000_000
const MIN = 60_000
const loadedAt = performance.now()
const clock = () => T0 + (performance.now() - loadedAt)

// BroadcastChannel whose messages the test can hold back, as a busy tab's event loop can
const Real = globalThis.BroadcastChannel
let held: Array<() => void> | undefined
class Holdable extends Real {
  override postMessage(message: unknown) {
    if (held) held.push(() => super.postMessage(message))
    else super.postMessage(message)
  }
}

function tab(storage: TokenStorage, channel: string, lock: ReturnType<typeof createTestLock>) {
  const control = controlledRefresh()
  const events: TokenEvent[] = []
  const manager = createTokenManager({ refresh: control.refresh, storage, channel, lock, now: clock })
  manager.subscribe((event) => events.push(event))
  return { manager, events, ...control }
}

async function eventually(check: () => boolean, ms = 1_000) {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > ms) throw new Error('condition not met in time')
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

afterEach(() => {
  held = undefined
  vi.unstubAllGlobals()
})

/**
 * A login in another tab that this tab's refresh found in storage, under the lock, before the login's message
 * (cross-tab.test.ts has the case of a login still valid). From a code review.
 */
describe('a login another tab took from storage before its message', () => {
  it('and refreshed before the message came: from the message on, a 401 of the old session is not retried as the new one', async () => {
    vi.stubGlobal('BroadcastChannel', Holdable)
    const map = new Map<string, string>()
    const storage = webStorage({
      getItem: (key) => map.get(key) ?? null,
      setItem: (key, value) => void map.set(key, value),
      removeItem: (key) => void map.delete(key),
    })
    const channel = freshChannel()
    const lock = createTestLock()
    const a = tab(storage, channel, lock)
    const b = tab(storage, channel, lock)
    const old = tokenSet(T0, 15 * MIN, 'old-user-1')
    await a.manager.setTokens(old)
    await eventually(() => b.events.some((event) => event.type === 'refreshed'))
    let free!: () => void
    void lock.request(`${channel}:refresh`, {}, () => new Promise<void>((resolve) => (free = resolve)))
    const fromB = b.manager.refresh({ rejectedToken: old.accessToken })
    await flush()
    // another user logs in in a with tokens whose access token has expired already (restored tokens, a
    // skewed clock): storage holds them at once, their message is on its way
    held = []
    const login = tokenSet(T0 - 30 * MIN, 15 * MIN, 'user-2')
    await a.manager.setTokens(login)
    free()
    // b finds the login in storage under the lock, expired: it refreshes it (the README's window)
    await eventually(() => b.calls.length === 1)
    const login2 = tokenSet(T0, 15 * MIN, 'user-2b')
    b.calls[0]!.resolve(login2)
    expect(await fromB).toBe(login2.accessToken)
    // now the login's message arrives
    const messages = held
    held = undefined
    for (const deliver of messages) deliver()
    await new Promise((resolve) => setTimeout(resolve, 50))
    // README: "Once the message arrives, a 401 for the old session's tokens is not retried"
    await expect(b.manager.refresh({ rejectedToken: old.accessToken })).rejects.toMatchObject({
      code: 'ERR_SESSION_CLEARED',
    })
  })
})
