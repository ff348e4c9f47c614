/**
 * The script every test tab runs, bundled by esbuild from the client's sources (harness.ts). It sets up one
 * token manager per tab on the real `navigator.locks`, BroadcastChannel and web storage of the page's origin,
 * and exposes a small API on `window.tf` for the tests to drive through `page.evaluate`.
 */
import {
  createTokenManager,
  jsonRefresh,
  memoryStorage,
  type TokenManager,
  webStorage,
} from '@tokenflow/client'
import { createAuthFetch } from '@tokenflow/client/fetch'

/** How a tab builds its manager. */
export interface PageSetup {
  /**
   * which web storage `webStorage()` wraps; 'local' passes no argument, so the default is what runs.
   * 'cookie' is the README's cookie-mode recipe for a server with `cookie: true`: `memoryStorage` holding an
   * expired placeholder with the refresh token `'cookie'`, the CSRF header on each refresh, and the channel
   * 'tokenflow' (unless `channel` says otherwise)
   */
  storage: 'local' | 'session' | 'cookie'
  /** `webStorage`'s key; left out, the default ('tokenflow') is used */
  key?: string
  /** ms; left out, the manager's default */
  lockTimeout?: number
  /** left out, the manager's default (navigator.locks is used and the channel is 'tokenflow') */
  channel?: string | false
  /**
   * ms by which this tab's BroadcastChannel messages reach its manager late. Chromium can hand a tab the
   * refresh lock before the message the lock's last holder sent; a delay makes that order certain
   */
  messageDelay?: number
}

/** A manager event as the page saw it, with the wall-clock time (epoch ms, sub-ms precision) it arrived. */
export interface RecordedEvent {
  type: string
  at: number
  source?: 'local' | 'otherTab'
  reason?: string
  /** `error.kind` of a refreshFailed or loggedOut event */
  kind?: string
  accessToken?: string
}

/** How one request of a burst ended. */
export interface RequestResult {
  /** the HTTP status, or 0 when authFetch rejected */
  status: number
  /** `jti` of the access token the server accepted */
  jti?: string
  /** the server's error code, or the rejection's `code`/`name` */
  code?: string
  /** epoch ms at which the response (or rejection) arrived */
  doneAt: number
}

/** What the tests call in the page. */
export interface PageApi {
  setup(options: PageSetup): void
  /**
   * logs in at POST /auth/login and hands the tokens to the manager, at wall-clock time `at` (epoch ms) if
   * given; resolves with the access token
   */
  login(username: string, password: string, at?: number): Promise<string>
  /** at wall-clock time `at` (epoch ms), sends `count` requests to GET /api/data at once through createAuthFetch */
  burst(count: number, at?: number): Promise<RequestResult[]>
  /** the manager's `getAccessToken()` */
  getAccessToken(): Promise<string | null>
  /**
   * `manager.clear()`, at wall-clock time `at` (epoch ms) if given; resolves with the wall-clock time just
   * before it was called
   */
  clear(at?: number): Promise<number>
  status(): TokenManager['status']
  events(): RecordedEvent[]
  /** the raw string kept under `key` in localStorage or sessionStorage */
  stored(storage: 'local' | 'session', key: string): string | null
}

declare global {
  interface Window {
    tf: PageApi
  }
}

const clock = () => performance.timeOrigin + performance.now()
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))

let manager: TokenManager | undefined
let authFetch: typeof fetch | undefined
let cookieMode = false
const recorded: RecordedEvent[] = []

function need<T>(value: T | undefined): T {
  if (value === undefined) throw new Error('call tf.setup() first')
  return value
}

// the README's cookie recipe: the page never sees the refresh token, so it holds the placeholder 'cookie'
const CSRF = { 'x-tokenflow-refresh': '1' }
const PLACEHOLDER = 'cookie'

function tokenStorage(storage: PageSetup['storage'], key: string | undefined) {
  // each page load starts from an expired placeholder, so the first read refreshes from the cookie
  if (storage === 'cookie')
    return memoryStorage({ accessToken: 'reload', refreshToken: PLACEHOLDER, expiresAt: 0 })
  if (storage === 'session') return webStorage(sessionStorage, key ? { key } : {})
  // without arguments the defaults run: localStorage under the key 'tokenflow'
  return key ? webStorage(localStorage, { key }) : webStorage()
}

/** Makes every BroadcastChannel created from now on hand its messages to `onmessage` `delay` ms late. */
function delayMessages(delay: number): void {
  const Native = globalThis.BroadcastChannel
  globalThis.BroadcastChannel = class extends Native {
    #handler: ((this: BroadcastChannel, event: MessageEvent) => unknown) | null = null
    override get onmessage() {
      return this.#handler
    }
    override set onmessage(handler) {
      this.#handler = handler
      super.onmessage = handler && ((event) => setTimeout(() => handler.call(this, event), delay))
    }
  }
}

window.tf = {
  setup({ storage, key, lockTimeout, channel, messageDelay }) {
    cookieMode = storage === 'cookie'
    if (messageDelay) delayMessages(messageDelay)
    manager = createTokenManager({
      refresh: cookieMode ? jsonRefresh('/refresh/token', { headers: CSRF }) : jsonRefresh('/refresh/token'),
      storage: tokenStorage(storage, key),
      ...(lockTimeout === undefined ? {} : { lockTimeout }),
      ...(channel === undefined ? (cookieMode ? { channel: 'tokenflow' } : {}) : { channel }),
    })
    manager.subscribe((event) => {
      const entry: RecordedEvent = { type: event.type, at: clock() }
      if (event.type === 'refreshed') {
        entry.source = event.source
        entry.accessToken = event.tokens.accessToken
      }
      if (event.type === 'loggedOut') entry.reason = event.reason
      if ((event.type === 'refreshFailed' || event.type === 'loggedOut') && event.error)
        entry.kind = event.error.kind
      recorded.push(entry)
    })
    authFetch = createAuthFetch(manager)
  },

  async login(username, password, at) {
    const response = await fetch('/auth/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username, password }),
    })
    if (!response.ok) throw new Error(`login answered ${response.status}`)
    const { accessToken, refreshToken } = (await response.json()) as {
      accessToken: string
      refreshToken?: string
    }
    if (at !== undefined) await sleep(at - Date.now())
    // in cookie mode the answer has no refresh token: the server set the cookie
    await need(manager).setTokens({ accessToken, refreshToken: cookieMode ? PLACEHOLDER : refreshToken! })
    return accessToken
  },

  async burst(count, at) {
    const send = need(authFetch)
    if (at !== undefined) await sleep(at - Date.now())
    return Promise.all(
      Array.from({ length: count }, async (): Promise<RequestResult> => {
        try {
          const response = await send('/api/data')
          const body = (await response.json()) as { jti?: string; code?: string }
          const result: RequestResult = { status: response.status, doneAt: Date.now() }
          if (body.jti) result.jti = body.jti
          if (body.code) result.code = body.code
          return result
        } catch (error) {
          const { code, name } = error as { code?: string; name?: string }
          return { status: 0, code: code ?? name ?? 'unknown', doneAt: Date.now() }
        }
      }),
    )
  },

  getAccessToken: () => need(manager).getAccessToken(),

  async clear(when) {
    if (when !== undefined) await sleep(when - Date.now())
    const at = clock()
    await need(manager).clear()
    return at
  },

  status: () => need(manager).status,
  events: () => recorded,
  stored: (storage, key) => (storage === 'local' ? localStorage : sessionStorage).getItem(key),
}
