// Types only: axios is an optional peer dependency and the client has no runtime dependencies.
import type { AxiosError, AxiosInstance, AxiosResponse, InternalAxiosRequestConfig } from 'axios'
import { invalidOption, TokenflowError } from './errors.js'
import type { TokenManager } from './token-manager.js'

/** Per-request options of the axios adapter, under the `tokenflow` key of an axios request config. */
export interface TokenflowRequestOptions {
  /**
   * Send this request as it is: no `Authorization` header, no refresh on 401.
   * Use it for the login and refresh calls when they go through the intercepted instance.
   * @default false
   */
  skip?: boolean | undefined
}

declare module 'axios' {
  // the type parameters must match axios's own declaration for the interfaces to merge
  interface AxiosRequestConfig<D = any, P = any> {
    /** tokenflow's per-request options, e.g. `{ tokenflow: { skip: true } }` */
    tokenflow?: TokenflowRequestOptions | undefined
  }
}

/** Options of `attachTokenRefresh`. */
export interface AttachTokenRefreshOptions {
  /**
   * Decides whether a response means "the access token was refused": refresh and retry once.
   * It replaces the default. It is called for errors that have a response, and for responses of status
   * 300 or more that your `validateStatus` accepted, wrapped in an error of the same shape (`isAxiosError`,
   * `config`, `response`).
   * @default (error) => error.response?.status === 401
   */
  shouldRefresh?: ((error: AxiosError) => boolean) | undefined
}

/** What the adapter itself adds under `config.tokenflow`: kept off the public type. */
interface InternalFlags extends TokenflowRequestOptions {
  /**
   * Set on the one retry the adapter sends, so its own 401 is passed on instead of refreshed again. It hands
   * the retry's outcome to the original request, and answers true the first time only.
   * A function, because axios deep-copies plain objects of a config but keeps functions as they are.
   */
  retried?: (ok: boolean, value: unknown) => boolean
  /**
   * The token the retry is for, one of the session its first try went out in, while that retry is under way
   * (null after: an app that sends error.config again makes a new request). A function, as `retried` is
   */
  chosen?: () => string | null
  /**
   * The body as this adapter's request interceptor saw it, before transformRequest: the retry is sent from it,
   * as a first try (in Node axios serialises a plain object sent as `multipart/form-data`, `postForm`, into a
   * stream, which could not be sent again; the JSON string of a body would reach the app's interceptors)
   */
  given?: () => unknown
  /** the token a pass of the request interceptor set: a config sent again while logged out drops it */
  applied?: () => string
}

/**
 * The names under which a header is set. AxiosHeaders keeps each header as an own property, as a plain
 * object another interceptor put in its place does, so one lookup serves both.
 */
const headerKeys = (headers: object | undefined, name: string): string[] =>
  Object.keys(headers ?? {}).filter((key) => key.toLowerCase() === name)

/** Sets `Authorization: Bearer <token>`, in place of the header under any spelling of its name. */
function setBearer(headers: Record<string, unknown>, token: string): void {
  for (const name of headerKeys(headers, 'authorization')) delete headers[name]
  headers.Authorization = `Bearer ${token}`
}

/** A body that was used up by the first try: a Node stream, a web ReadableStream, an async iterable. */
const isStream = (data: unknown): boolean =>
  typeof data === 'object' &&
  !!data &&
  (typeof (data as { pipe?: unknown }).pipe === 'function' ||
    Symbol.asyncIterator in data ||
    (typeof ReadableStream !== 'undefined' && data instanceof ReadableStream))

/**
 * Releases the body of a refused answer the app will not get (`responseType: 'stream'`): unread, it would keep
 * its connection, and with an agent's `maxSockets` the retry would wait for that socket forever.
 */
function release(data: unknown): void {
  if (!isStream(data)) return
  const stream = data as { destroy?: () => void; cancel?: () => Promise<void> }
  if (typeof stream.destroy === 'function') stream.destroy()
  else stream.cancel?.().catch(() => {})
}

/** Never settles: ends the retry's own trip through the interceptors, whose outcome went to the original. */
const handedOver = () => new Promise<never>(() => {})

/**
 * The error of a request aborted while it waited for the refresh after its 401: its CancelToken's reason, or
 * one made as axios's CanceledError is, from the AxiosError class of the 401 (`toJSON()`, `instanceof
 * AxiosError`; `axios.isCancel()` and `axios.isAxiosError()` hold, code ERR_CANCELED)
 */
function cancelOf(error: AxiosError, config: InternalAxiosRequestConfig): unknown {
  if (config.cancelToken?.reason) return config.cancelToken.reason
  // an error-shaped object of ours (a 401 validateStatus let through) has no class: a plain Error then
  const Made: unknown = error.constructor
  const made =
    typeof Made === 'function' && Made !== Object
      ? new (Made as new (...args: unknown[]) => Error)('canceled', 'ERR_CANCELED', config, error.request)
      : Object.assign(new Error('canceled'), { code: 'ERR_CANCELED', config, isAxiosError: true })
  return Object.assign(made, { name: 'CanceledError', __CANCEL__: true })
}

/** The request was aborted by its `signal`, or canceled by axios's deprecated `CancelToken`. */
const canceled = (config: InternalAxiosRequestConfig) =>
  (config.signal as AbortSignal | undefined)?.aborted || config.cancelToken?.reason

/**
 * The signal a waiting request is watched with: its own `signal`, joined by its deprecated `CancelToken`
 * when it has one. Call the second item when the wait is over.
 */
function watch(config: InternalAxiosRequestConfig): [AbortSignal | undefined, () => void] {
  const signal = config.signal as AbortSignal | undefined
  // axios has had these since 0.22, but its types do not declare them
  const token = config.cancelToken as
    | { subscribe(listener: () => void): void; unsubscribe(listener: () => void): void }
    | undefined
  if (!token) return [signal, () => {}]
  const controller = new AbortController()
  const abort = () => controller.abort()
  // subscribe calls it at once for a token canceled already
  token.subscribe(abort)
  signal?.addEventListener?.('abort', abort)
  if (signal?.aborted) abort()
  return [
    controller.signal,
    () => {
      token.unsubscribe(abort)
      signal?.removeEventListener?.('abort', abort)
    },
  ]
}

/**
 * The manager attached to each instance, and how many times: no tokens, and nothing kept once an instance is
 * gone (a frozen instance, or a Proxy, takes a mark here too)
 */
const shared = globalThis as Record<symbol, WeakMap<object, [TokenManager, number]> | undefined>
const ATTACHMENTS = Symbol.for('tokenflow.attachments')
const attachments = shared[ATTACHMENTS] ?? new WeakMap()
try {
  // one map for every copy of this module in the page (two bundles, two versions); in a frozen realm (SES's
  // harden(globalThis)) each copy keeps its own
  shared[ATTACHMENTS] = attachments
} catch {}

/**
 * Attaches a token manager to an axios instance: every request gets `Authorization: Bearer …`,
 * and a 401 refreshes once (shared with every other request) and retries the request once.
 * Returns `detach`, which removes both interceptors; a request whose refresh was under way then is still
 * retried once, with the new token.
 *
 * A refresh that fails rejects every waiting request with the same `RefreshError`, and so does a 401
 * for the session it ended that comes back later.
 * A request whose `signal` aborts while it waits rejects at once with axios's `CanceledError`
 * and is never sent. A request that fails without a response is passed on untouched. A stream body
 * cannot be sent twice: its 401 still refreshes, and is then passed on.
 * The retry runs the instance's request interceptors again, so they should be idempotent.
 * @example
 * import axios from 'axios'
 * import { createTokenManager, jsonRefresh } from '@tokenflow/client'
 * import { attachTokenRefresh } from '@tokenflow/client/axios'
 *
 * const api = axios.create({ baseURL: 'https://api.example.com' })
 * const manager = createTokenManager({ refresh: jsonRefresh('https://api.example.com/refresh/token') })
 * const detach = attachTokenRefresh(api, manager)
 * const { data } = await api.post('/auth/login', { username: 'ada', password: 'secret' }, { tokenflow: { skip: true } }) // as it is
 * await manager.setTokens(data) // { accessToken, refreshToken }
 * await api.get('/me') // sent with the current access token, refreshed first when needed
 */
export function attachTokenRefresh(
  instance: AxiosInstance,
  manager: TokenManager,
  { shouldRefresh = (error) => error.response?.status === 401 }: AttachTokenRefreshOptions = {},
): () => void {
  if (typeof instance?.interceptors?.request?.use !== 'function')
    invalidOption('instance', 'an axios instance')
  if (typeof manager?.getAccessToken !== 'function' || typeof manager.refresh !== 'function')
    invalidOption('manager', 'a token manager')
  if (typeof shouldRefresh !== 'function') invalidOption('shouldRefresh', 'a function')
  // A second manager on one instance would send the first one's token for both (on a server: another user's).
  // The same manager twice (an effect run twice) works: the mark counts its attachments
  const mark = attachments.get(instance) ?? [manager, 0]
  if (mark[0] !== manager)
    invalidOption('instance', 'free of another manager (detach it, or make one instance per manager)')
  mark[1]++
  attachments.set(instance, mark)

  const requestId = instance.interceptors.request.use(async (config) => {
    if (config.tokenflow?.skip) return config
    const given = config.data
    const flags = config.tokenflow as InternalFlags | undefined
    const chosen = flags?.chosen?.()
    const previous = flags?.applied?.()
    config.tokenflow = { ...config.tokenflow, given: () => given } as InternalFlags
    // the manager only needs the parts of an AbortSignal that axios's GenericAbortSignal has too
    const [signal, done] = watch(config)
    try {
      let token = await manager.getAccessToken({ signal })
      // a retry is not sent as another session (a login while the app's interceptors ran): the manager answers
      // the current token for an earlier one of its session, ERR_SESSION_CLEARED for another session's
      if (chosen && token !== null && token !== chosen)
        token = await manager.refresh({ rejectedToken: chosen, signal })
      // logged out: the request goes without a token, and a 401 then reaches the app unchanged. Another
      // interceptor may have put a plain object in place of the AxiosHeaders, or nothing at all
      if (token !== null) {
        const set = token
        config.headers ??= {} as never
        setBearer(config.headers as unknown as Record<string, unknown>, set)
        ;(config.tokenflow as InternalFlags).applied = () => set
      }
      // a retry whose session ended (a logout while the app's interceptors ran) is not sent again
      else if (chosen) throw new TokenflowError('ERR_SESSION_CLEARED', 'the session was cleared')
      // a config sent again (response.config, error.config) while logged out: not as the session that ended
      else if (previous)
        for (const name of headerKeys(config.headers, 'authorization'))
          if (String(config.headers[name]) === `Bearer ${previous}`) delete config.headers[name]
    } catch (error) {
      // aborted (or its CancelToken canceled) while it waited for a refresh: axios rejects it with its own
      // CanceledError before sending
      if (!canceled(config)) throw error
    } finally {
      done()
    }
    return config
  })

  /**
   * Sends the request again. When the retry reaches this interceptor, its outcome goes straight to the
   * original request and its own trip ends there: the interceptors after this one then see it once, in the
   * original chain (`response => response.data` unwraps once, a logger logs once).
   */
  function retry(config: InternalAxiosRequestConfig, flags: InternalFlags | undefined, token: string | null) {
    return new Promise((resolve, reject) => {
      let done = false
      const retried = (ok: boolean, value: unknown) => {
        if (done) return false
        done = true
        ;(ok ? resolve : reject)(value)
        return true
      }
      // the body went through transformRequest already, and the adapter set a Content-Length for it. The
      // retry's config reaches the app (error.config): sent again with other data, that data is transformed
      const headers: Record<string, unknown> = { ...config.headers }
      for (const name of headerKeys(headers, 'content-length')) delete headers[name]
      // the retry passes the request interceptor again, which sets the freshest token; this one is for a
      // retry that no longer meets it (detached while the refresh ran), which would send the refused token
      if (token !== null) setBearer(headers, token)
      const sent = config.data
      const transforms = [config.transformRequest ?? []].flat() as Array<
        (this: unknown, data: unknown, headers: unknown) => unknown
      >
      // the retry is sent as a first try: the app's request interceptors and transformRequest run again, on the
      // body as it was before the first transform (this adapter's interceptor saw it), never on the string made
      // of it (a spread of that, or a field set on it, would corrupt it or throw). What reaches transformRequest
      // as the very bytes the first try sent (no body of that pass, a Buffer) goes out as it is
      const given = flags?.given ? flags.given() : sent
      instance
        .request({
          ...config,
          data: given,
          headers: headers as InternalAxiosRequestConfig['headers'],
          transformRequest: [
            function (this: unknown, next: unknown, headers: unknown) {
              return next === sent
                ? sent
                : transforms.reduce((body, fn) => fn.call(this, body, headers), next)
            },
          ],
          tokenflow: { ...flags, retried, chosen: () => (done ? null : token) } as InternalFlags,
        })
        // an interceptor before this one did not hand the retry on with its config: take the end result
        .then(
          (value) => retried(true, value),
          (error) => retried(false, error),
        )
    })
  }

  /** A refused token (a 401, or what `shouldRefresh` says): refresh, then retry once, else `passOn()`. */
  async function recover(error: AxiosError, passOn: () => unknown): Promise<unknown> {
    const config = error.config!
    // the token this request really went out with, read back from its own headers: axios hands the response
    // side a flattened copy of the config and other interceptors may spread it, but the header survives both
    const [sent] = headerKeys(config.headers, 'authorization').map((name) => String(config.headers[name]))
    const rejectedToken = /^bearer\s+(\S+)/i.exec(sent ?? '')?.[1]
    const flags = config.tokenflow as InternalFlags | undefined
    const applied = flags?.applied?.()
    // sent without a token (nobody was logged in): the 401 is the answer, even when a session started since,
    // which may be another user's. So is the 401 for a token an interceptor after this one put in place of the
    // manager's (another API's key): it refused that token, not the session's. And so is the 401 of a request
    // with `auth`, which axios sends as Basic credentials in place of the token (the fetch and XHR adapters leave
    // the config's header as it was)
    if (!rejectedToken || (applied !== undefined && rejectedToken !== applied) || config.auth) return passOn()
    const [signal, done] = watch(config)
    let token: string | null = null
    try {
      // rule 2: the manager refreshes only when the refused token is still the current one
      token = await manager.refresh({ rejectedToken, signal })
    } catch (reason) {
      // nobody is logged in: the 401 is the answer; otherwise the same RefreshError for every waiter, not wrapped
      if (!canceled(config)) {
        if ((reason as TokenflowError)?.code === 'ERR_NO_REFRESH_TOKEN') return passOn()
        release(error.response?.data)
        throw reason
      }
    } finally {
      done()
    }
    // aborted while it waited: rejected as canceled, and never sent again. Not through a retry, whose pass
    // through the app's request interceptors can give it a signal of its own (an AbortController per request)
    if (canceled(config)) {
      release(error.response?.data)
      throw cancelOf(error, config)
    }
    // A stream was used up by the first try: the refresh above still lets the app's own retry succeed. A stream
    // axios made of the app's body (postForm in Node) is made again from that body
    if (token === null || isStream(flags?.given ? flags.given() : config.data)) return passOn()
    release(error.response?.data)
    return retry(config, flags, token)
  }

  /** Both sides of the response: `ok` for a response axios resolved, else the error it rejected with. */
  function onResponse(ok: boolean, value: unknown): unknown {
    const config = (value as AxiosError | undefined)?.config
    const flags = config?.tokenflow as InternalFlags | undefined
    if (flags?.retried?.(ok, value)) return handedOver()
    // a success by axios's default validateStatus is never a refused token
    if (ok && (value as AxiosResponse)?.status < 300) return value
    // yours let a refused token through as a success: it gets the same check as an error
    const error = (ok ? { isAxiosError: true, config, response: value } : value) as AxiosError
    const passOn = () => {
      if (ok) return value
      throw value
    }
    // rule 4: one retry at most, so a token the server keeps refusing cannot loop.
    // No response (network error, timeout, cancel) or not from axios: pass on the very same error
    if (
      !config ||
      !error?.isAxiosError ||
      !error.response ||
      flags?.retried ||
      flags?.skip ||
      !shouldRefresh(error)
    )
      return passOn()
    return recover(error, passOn)
  }

  const responseId = instance.interceptors.response.use(
    (response) => onResponse(true, response) as Promise<AxiosResponse>,
    (error) => onResponse(false, error),
  )

  let attached = true
  return () => {
    instance.interceptors.request.eject(requestId)
    instance.interceptors.response.eject(responseId)
    // once per attachment; the last one frees the instance
    if (attached && !--mark[1]) attachments.delete(instance)
    attached = false
  }
}
