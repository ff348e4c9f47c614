import type { LockManagerLike, TokenSet } from './types.js'

/** What a tab tells the others. */
export type CrossTabMessage =
  /** `spent`: the refresh token this refresh rotated, which nobody may use again */
  { type: 'refreshed'; tokens: TokenSet; spent?: string } | { type: 'loggedOut' }

/** Cross-tab coordination for one manager: BroadcastChannel, or the storage event, plus the rotation signal. */
export interface CrossTab {
  post(message: CrossTabMessage): void
  /** after a rotation: hold a lock named after the spent refresh token for a few seconds */
  rotated(spentRefreshToken: string): void
  /**
   * Before refreshing under the lock with `refreshToken`: if another tab holds the rotation signal for it,
   * our copy of storage is behind (Chromium copies localStorage writes between tabs asynchronously), so wait
   * for `read` to show something newer. Resolves with what `read` last returned.
   */
  settle(
    refreshToken: string,
    read: () => Promise<TokenSet | null | undefined>,
  ): Promise<TokenSet | null | undefined>
}

/** How long the tab that rotated keeps the signal, and how long another tab waits for storage to catch up. */
const SIGNAL_MS = 5_000
const SETTLE_MS = 2_000

/** FNV-1a: a lock name must not carry the refresh token itself. */
function fingerprint(value: string): string {
  let hash = 0x811c9dc5
  for (let i = 0; i < value.length; i++) hash = Math.imul(hash ^ value.charCodeAt(i), 0x01000193)
  return (hash >>> 0).toString(36)
}

/** Resolves after `ms`. */
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Sets up cross-tab coordination on channel `name`: `receive` gets other tabs' messages (unchecked: the
 * manager checks them), `changed` runs on the `storage` event where BroadcastChannel is missing.
 */
export function createCrossTab(
  name: string,
  lock: LockManagerLike | false,
  receive: (message: CrossTabMessage) => void,
  changed: () => void,
): CrossTab {
  const signalName = (token: string) => `${name}:rotated:${fingerprint(token)}`
  const g = globalThis as {
    BroadcastChannel?: typeof BroadcastChannel
    addEventListener?: (type: string, listener: (event: { key?: string | null }) => void) => void
  }
  let channel: (BroadcastChannel & { unref?: () => void }) | undefined
  if (g.BroadcastChannel) {
    channel = new g.BroadcastChannel(name)
    channel.onmessage = (event) => receive(event.data)
    // a channel must not keep a Node process (tests, SSR) alive
    channel.unref?.()
  } else g.addEventListener?.('storage', changed)

  return {
    post(message) {
      try {
        channel?.postMessage(message)
      } catch {
        // a closed channel (page unloading) has no one left to tell
      }
    },

    rotated(spent) {
      if (!lock) return
      lock
        // exclusive, the default mode; ifAvailable: a signal some tab holds already is left as it is
        .request(signalName(spent), { ifAvailable: true }, (held) => (held ? sleep(SIGNAL_MS) : undefined))
        .catch(() => {})
    },

    async settle(refreshToken, read) {
      let current = await read()
      if (!lock || lock.query === undefined) return current
      const wanted = signalName(refreshToken)
      const { held = [] } = await lock.query().catch(() => ({ held: [] }))
      if (!held.some((l) => l.name === wanted)) return current
      // another tab rotated this very token moments ago: wait for its write (or its broadcast) to reach us
      for (let waited = 0; waited < SETTLE_MS && current?.refreshToken === refreshToken; waited += 25) {
        await sleep(25)
        current = await read()
      }
      return current
    },
  }
}
