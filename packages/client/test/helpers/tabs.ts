/**
 * Tabs in one process: Node has BroadcastChannel, so two managers stand in for two tabs of one page. Channels
 * of one name in one process hear each other, so each test takes a name of its own.
 */
import { createTokenManager, type TokenEvent, type TokenStorage } from '@tokenflow/client'
import { controlledRefresh, type createTestLock } from './tokens.js'

let channelCount = 0
/** A channel name no other test of this process uses. */
export const freshChannel = () => `tokenflow-test-${process.pid}-${++channelCount}`

let held: Array<() => void> | undefined
/**
 * A BroadcastChannel whose messages wait while they are held (`holdMessages()`), as a busy tab's event loop
 * can hold them. A test puts it in place with `vi.stubGlobal('BroadcastChannel', Holdable)`.
 */
export class Holdable extends globalThis.BroadcastChannel {
  override postMessage(message: unknown) {
    if (held) held.push(() => super.postMessage(message))
    else super.postMessage(message)
  }
}
/** From now on, messages wait until `releaseMessages()`. */
export const holdMessages = () => {
  held = []
}
/** Sends the messages held back, in order, and holds no more; `deliver: false` drops them (after a test). */
export function releaseMessages(deliver = true): void {
  const messages = held ?? []
  held = undefined
  if (deliver) for (const message of messages) message()
}

/**
 * The tabs' clock: `start`, moving on in real time (sub-millisecond), as one browser's tabs share theirs.
 * Messages are dated by it: with a clock that stood still, a logout and a login one after the other would tie.
 * `skip(ms)` moves it on at once.
 */
export function tabClock(start: number) {
  const loadedAt = performance.now()
  let skipped = 0
  return {
    now: () => start + (performance.now() - loadedAt) + skipped,
    skip(ms: number) {
      skipped += ms
    },
  }
}

/** A tab: a manager on `storage` and `channel`, with a controlled refresh function and the events it heard. */
export function openTab(
  options: { storage: TokenStorage; channel: string; lock?: ReturnType<typeof createTestLock> | false },
  now: () => number,
) {
  const control = controlledRefresh()
  const events: TokenEvent[] = []
  const manager = createTokenManager({
    refresh: control.refresh,
    storage: options.storage,
    channel: options.channel,
    lock: options.lock ?? false,
    now,
  })
  manager.subscribe((event) => events.push(event))
  return { manager, events, ...control }
}

/** Resolves once `check()` holds, or rejects after `ms`. */
export async function eventually(check: () => boolean, ms = 1_000): Promise<void> {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > ms) throw new Error('condition not met in time')
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}
