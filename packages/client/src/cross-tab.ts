import type { LockManagerLike, TokenSet } from './types.js'

/**
 * What a tab tells the others. `post` adds `at`, the sender's clock (never behind an `at` it has received), and
 * `base`, the login or logout ([time, tab]) the sender's session comes from, as far as it knows: a tab ignores a
 * message whose `base` is older than its own (a refused refresh of an old session, a login overtaken by another).
 */
export type CrossTabMessage =
  /**
   * `spent`: the refresh token this refresh rotated, which nobody may use again; `login`: the tokens start a
   * new session (setTokens), which replaces the one a tab holds, refresh under way included
   */
  | {
      type: 'refreshed'
      tokens: TokenSet
      spent?: string
      login?: true
      at?: number
      base?: number[]
    }
  | { type: 'loggedOut'; at?: number; base?: number[] }

/** Cross-tab coordination for one manager: BroadcastChannel, or the storage event, plus the rotation signal. */
export interface CrossTab {
  /**
   * sends the message to the other tabs, with `at` and `base`; `own`: it tells of this tab's own login or
   * logout (setTokens, clear), which becomes its base; `at`: when that happened, if not now
   */
  post(message: CrossTabMessage, own?: boolean, at?: number): void
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
   * the other tab's message brings (in Chromium the lock can reach this tab before that message does). Waits
   * 2 s at most, and resolves with what `read` last returned. `stuck`, when this tab's storage is its own
   * (sessionStorage, memory) and no successor can ever show: a rotation signal that outlasts the wait means a
   * copy of this session (a duplicated tab) rotated the token, and sending it would revoke both.
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
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Sets up cross-tab coordination named `name`. With `talk`, messages go over a BroadcastChannel of that name:
 * `receive` gets other tabs' messages (unchecked: the manager checks them), with `stale` set for one whose
 * base is older than this tab's, `unknown` for one whose sender read its session from storage while this tab
 * knows where its own comes from, and `changed` runs on the `storage` event where BroadcastChannel
 * is missing (for `key`, the storage's, when it names one). The rotation signal needs only the lock.
 */
export function createCrossTab(
  name: string,
  talk: boolean,
  lock: LockManagerLike | false,
  receive: (message: CrossTabMessage, stale: boolean, unknown: boolean) => void,
  changed: () => void,
  now: () => number,
  key?: string,
): CrossTab {
  // a hybrid logical clock: the time, but never behind a message received, so a clock set back after the tabs
  // talked cannot make a later message look older; ties between two tabs go to the larger random `from`
  const from = Math.random()
  let clock = now()
  const tick = () => (clock = Math.max(clock + 0.001, now()))
  /** the login or logout the session this tab holds comes from, [time, tab]: [-Infinity, 0] when not known */
  let base = [-1 / 0, 0]
  const before = (a: number[], b: number[]) => a[0]! < b[0]! || (a[0] === b[0] && a[1]! < b[1]!)
  /** when this tab last sent a message */
  let sent: number | undefined
  /** the access token this tab already waited out a replaced signal for (a retry does not wait again) */
  let waitedOut: string | undefined
  // a message sent before this tab's channel existed never reaches it: a signal that old promises nothing (and
  // one sent about then, within 25 ms, may not: this tab then refreshes, as without the signal)
  const born = clock + 25
  const signalName = (token: string, kind = 'rotated') => `${name}:${kind}:${fingerprint(token)}`
  /** holds the named lock for a few seconds, unless some tab holds it already (ifAvailable) */
  const signal = (lockName: string) => {
    if (lock)
      lock
        .request(lockName, { ifAvailable: true }, (held) =>
          // unref (Node): a signal for other tabs must not keep a process alive that is done
          held
            ? new Promise((resolve) => (setTimeout(resolve, SIGNAL_MS) as { unref?(): void }).unref?.())
            : undefined,
        )
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
    channel.onmessage = ({ data }) => {
      const { at, base: of } = data ?? {}
      // only a message dated by a number no later than a minute ahead orders anything (an older version sends
      // none; a date far ahead would hold every clock there)
      const dated =
        typeof at === 'number' && at < now() + 60_000 && typeof of?.[0] === 'number' && of[0] <= at
      if (dated && at > clock) clock = at
      // a message from an older session is stale; one whose sender does not know where its session comes from
      // (it read it from storage) is stale only if it was sent before this tab's session began
      const stale = dated && (of[0] > -1 / 0 ? before(of, base) : at < base[0]!)
      // a tab that heard two logins ends on the later one, whatever order they came in
      if (dated && !stale && before(base, of)) base = of
      // its sender does not know where its session comes from, and this tab does (a login or a logout it made
      // or heard of): the manager takes its refresh only as one of the session it holds
      receive(data, stale, dated && !(of[0] > -1 / 0) && base[0]! > -1 / 0)
    }
    // a channel must not keep a Node process (tests, SSR) alive
    channel.unref?.()
  } else if (talk)
    // another key's change (another app's, another token set's) is none of this session's; a null key is a
    // localStorage.clear()
    g.addEventListener?.('storage', (event) => {
      if (!key || event.key == null || event.key === key) changed()
    })

  return {
    post(message, own, at) {
      try {
        if (!channel) return
        // a message dated now is this tab's latest; one dated in the past is not
        if (at === undefined) {
          sent = tick()
          at = sent
        } else if (at > clock) clock = at // later messages still date after it, whatever the clock does
        const mine = [at, from]
        // a message dated in the past (a logout that waited for storage) does not take this tab back to
        // before a newer login or logout it has heard of since (a second code review)
        if (own && before(base, mine)) base = mine
        channel.postMessage({ ...message, at, base: own ? mine : base })
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
      // only with messages: without them no tab can learn this refresh's tokens, and waiting would only delay
      // it. Named with the time of this tab's message, so that a tab born after it does not wait for it
      if (channel) signal(`${signalName(accessToken, 'replaced')}:${sent}`)
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
        const replaced = `${signalName(current.accessToken, 'replaced')}:`
        return current.refreshToken && names.includes(signalName(current.refreshToken))
          ? 2
          : +(
              current.accessToken !== waitedOut &&
              names.some((n) => n?.startsWith(replaced) && +n.slice(replaced.length) > born)
            )
      }
      // another tab refreshed this very token moments ago: wait for its write (or its broadcast) to reach us
      for (const until = Date.now() + SETTLE_MS; Date.now() < until && (await signalled()); ) {
        await sleep(25)
        current = await read()
      }
      const still = await signalled()
      // a replaced access token whose successor never came: refresh (no refresh token was spent), and do not
      // wait for it again before a retry
      if (still === 1) waitedOut = current!.accessToken
      if (stuck && still > 1) stuck()
      return current
    },
  }
}
