import type { LockManagerLike, TokenSet } from './types.js'

/**
 * What a tab tells the others. `at`: the sender's clock when it sent it (tabs of one browser share that
 * clock), so that a tab can tell a message sent before its own latest login or logout.
 */
export type CrossTabMessage =
  /**
   * `spent`: the refresh token this refresh rotated, which nobody may use again; `login`: the tokens start a
   * new session (setTokens), which replaces the one a tab holds, refresh under way included
   */
  | { type: 'refreshed'; tokens: TokenSet; spent?: string; login?: true; at?: number }
  | { type: 'loggedOut'; at?: number }

/** Cross-tab coordination for one manager: BroadcastChannel, or the storage event, plus the rotation signal. */
export interface CrossTab {
  /** sends the message to the other tabs, with `at` set to `now()` */
  post(message: CrossTabMessage): void
  /**
   * after a rotation: hold a lock named after the spent refresh token for a few seconds; with `remember` (this
   * tab's storage is its own), also note its fingerprint in localStorage, for a copy of the session that acts
   * long after (a duplicated sessionStorage tab)
   */
  rotated(spentRefreshToken: string, remember?: boolean): void
  /**
   * after a refresh that kept the refresh token (cookie mode's placeholder, a server that does not rotate), when
   * talking: the same signal, named after the access token it replaced
   */
  replaced(accessToken: string): void
  /**
   * Before refreshing under the lock: if another tab holds the rotation signal for the refresh token that `read`
   * shows, our copy of storage is behind (Chromium copies localStorage writes between tabs asynchronously), so
   * wait for `read` to show its successor; the same for the signal of a replaced access token, whose successor
   * the other tab's message brings (in Chromium the lock can reach this tab before that message does). Resolves with what `read` last returned. `stuck`, when this tab's
   * storage is its own (sessionStorage, memory) and no successor can ever show: a signal that outlasts the
   * wait means a copy of this session (a duplicated tab) rotated the token, and sending it would revoke both.
   */
  settle(
    read: () => Promise<TokenSet | null | undefined>,
    stuck?: () => never,
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
 * Sets up cross-tab coordination named `name`. With `talk`, messages go over a BroadcastChannel of that name:
 * `receive` gets other tabs' messages (unchecked: the manager checks them), and `changed` runs on the
 * `storage` event where BroadcastChannel is missing. The rotation signal needs only the lock.
 */
export function createCrossTab(
  name: string,
  talk: boolean,
  lock: LockManagerLike | false,
  receive: (message: CrossTabMessage) => void,
  changed: () => void,
  now: () => number,
): CrossTab {
  const signalName = (token: string, kind = 'rotated') => `${name}:${kind}:${fingerprint(token)}`
  /** holds the named lock for a few seconds, unless some tab holds it already (ifAvailable) */
  const signal = (lockName: string) => {
    if (lock)
      lock
        .request(lockName, { ifAvailable: true }, (held) => (held ? sleep(SIGNAL_MS) : undefined))
        .catch(() => {})
  }
  const g = globalThis as {
    BroadcastChannel?: typeof BroadcastChannel
    addEventListener?: (type: string, listener: (event: { key?: string | null }) => void) => void
    localStorage?: { getItem(key: string): string | null; setItem(key: string, value: string): void }
  }
  // fingerprints of the refresh tokens tabs of this origin rotated from storage of their own, the latest 100:
  // the lock that signals a rotation lives a few seconds, a duplicated tab may act hours later
  const spentKey = `${name}:spent`
  const spentList = (): string[] => {
    try {
      const list: unknown = JSON.parse(g.localStorage?.getItem(spentKey) ?? '[]')
      return Array.isArray(list) ? list : []
    } catch {
      return []
    }
  }
  let channel: (BroadcastChannel & { unref?: () => void }) | undefined
  if (talk && g.BroadcastChannel) {
    channel = new g.BroadcastChannel(name)
    channel.onmessage = (event) => receive(event.data)
    // a channel must not keep a Node process (tests, SSR) alive
    channel.unref?.()
  } else if (talk) g.addEventListener?.('storage', changed)

  return {
    post(message) {
      try {
        channel?.postMessage({ ...message, at: now() })
      } catch {
        // a closed channel (page unloading) has no one left to tell
      }
    },

    rotated(spent, remember) {
      if (remember) {
        try {
          g.localStorage?.setItem(spentKey, JSON.stringify([...spentList().slice(-99), fingerprint(spent)]))
        } catch {
          // no localStorage (a sandboxed frame, a full quota): the lock below still signals for a while
        }
      }
      signal(signalName(spent))
    },

    replaced(accessToken) {
      // without messages another tab cannot learn this refresh's tokens, and waiting would only delay it
      if (talk) signal(signalName(accessToken, 'replaced'))
    },

    async settle(read, stuck) {
      let current = await read()
      // a twin of this session rotated this very token, however long ago: sending it would revoke both
      if (stuck && current?.refreshToken && spentList().includes(fingerprint(current.refreshToken))) stuck()
      const { query } = lock || {}
      if (!query) return current
      /** 2: another tab rotated the refresh token `current` shows; 1: it replaced its access token */
      const signalled = async () => {
        if (!current) return 0
        const { held = [] } = await query.call(lock).catch(() => ({ held: [] }))
        const names = held.map((l) => l.name)
        return current.refreshToken && names.includes(signalName(current.refreshToken))
          ? 2
          : +(talk && names.includes(signalName(current.accessToken, 'replaced')))
      }
      // another tab refreshed this very token moments ago: wait for its write (or its broadcast) to reach us
      for (let waited = 0; waited < SETTLE_MS && (await signalled()); waited += 25) {
        await sleep(25)
        current = await read()
      }
      // a replaced access token whose successor never came: refresh (no refresh token was spent)
      if (stuck && (await signalled()) > 1) stuck()
      return current
    },
  }
}
