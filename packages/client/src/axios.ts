// Types only: axios is an optional peer dependency and the client has no runtime dependencies.
import type { AxiosError, AxiosInstance, GenericAbortSignal, InternalAxiosRequestConfig } from 'axios'
import { isTokenflowError, TokenflowError } from './errors.js'
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
   * Decides whether a failed response means "the access token was refused": refresh and retry once.
   * It replaces the default and is called only for errors that have a response.
   * @default (error) => error.response?.status === 401
   */
  shouldRefresh?(error: AxiosError): boolean
}

/** What the adapter itself adds under `config.tokenflow`: kept off the public type. */
interface InternalFlags extends TokenflowRequestOptions {
  /** set on the one retry the adapter sends, so its own 401 is passed on instead of refreshed again */
  retried?: symbol
}

const BEARER = /^\s*bearer\s+(\S+)\s*$/i

/** The value of a header in an AxiosHeaders instance or a plain object another interceptor put there. */
function readHeader(headers: unknown, name: string): unknown {
  if (!headers || typeof headers !== 'object') return undefined
  const get = (headers as { get?: unknown }).get
  if (typeof get === 'function') return get.call(headers, name)
  const key = Object.keys(headers).find((candidate) => candidate.toLowerCase() === name.toLowerCase())
  return key === undefined ? undefined : (headers as Record<string, unknown>)[key]
}

/**
 * The bearer token this request really went out with, read back from its own headers.
 * axios hands the response side a flattened copy of the config and other interceptors may spread it,
 * so a field or a WeakMap keyed by the config object would not survive; the header always does.
 */
function sentToken(config: InternalAxiosRequestConfig): string | null {
  const value = readHeader(config.headers, 'Authorization')
  const match = typeof value === 'string' ? BEARER.exec(value) : null
  return match?.[1] ?? null
}

function setAuthorization(config: InternalAxiosRequestConfig, token: string): void {
  const value = `Bearer ${token}`
  const headers = config.headers as unknown
  if (headers && typeof (headers as { set?: unknown }).set === 'function') {
    config.headers.set('Authorization', value)
    return
  }
  // another interceptor replaced the AxiosHeaders with a plain object: drop any other spelling first
  const plain = (headers && typeof headers === 'object' ? headers : {}) as Record<string, unknown>
  for (const key of Object.keys(plain)) if (key.toLowerCase() === 'authorization') delete plain[key]
  plain.Authorization = value
  config.headers = plain as InternalAxiosRequestConfig['headers']
}

/** The manager needs a real AbortSignal; axios accepts any object shaped like one. */
function toAbortSignal(signal: GenericAbortSignal | undefined): AbortSignal | undefined {
  if (!signal) return undefined
  const native = signal as AbortSignal
  if (typeof native.throwIfAborted === 'function' && typeof native.addEventListener === 'function')
    return native
  // a polyfilled or foreign signal: follow it with a native one
  const controller = new AbortController()
  if (signal.aborted) controller.abort()
  else signal.addEventListener?.('abort', () => controller.abort(), { once: true })
  return controller.signal
}

const invalid = (message: string): never => {
  throw new TokenflowError('ERR_INVALID_OPTION', message)
}

const isAxiosError = (error: unknown): error is AxiosError =>
  typeof error === 'object' && error !== null && (error as { isAxiosError?: unknown }).isAxiosError === true

/**
 * Attaches a token manager to an axios instance: every request gets `Authorization: Bearer …`,
 * and a 401 refreshes once (shared with every other request) and retries the request once.
 * Returns `detach`, which removes both interceptors.
 *
 * A refresh that fails rejects every waiting request with the same `RefreshError`.
 * A request whose `signal` aborts while it waits rejects at once with axios's `CanceledError`
 * and is never sent. A request that fails without a response is passed on untouched.
 * The retry runs the instance's request interceptors again, so they should be idempotent.
 * @example
 * import axios from 'axios'
 * import { createTokenManager, jsonRefresh } from '@tokenflow/client'
 * import { attachTokenRefresh } from '@tokenflow/client/axios'
 *
 * const api = axios.create({ baseURL: 'https://api.example.com' })
 * const manager = createTokenManager({ refresh: jsonRefresh('https://api.example.com/refresh/token') })
 * const detach = attachTokenRefresh(api, manager)
 * await api.get('/me') // sent with the current access token, refreshed first when needed
 * await api.post('/auth/login', { username: 'ada', password: 'secret' }, { tokenflow: { skip: true } }) // as it is
 */
export function attachTokenRefresh(
  instance: AxiosInstance,
  manager: TokenManager,
  { shouldRefresh = (error) => error.response?.status === 401 }: AttachTokenRefreshOptions = {},
): () => void {
  if (typeof instance?.interceptors?.request?.use !== 'function')
    invalid('"instance" must be an axios instance')
  if (typeof manager?.getAccessToken !== 'function' || typeof manager.refresh !== 'function')
    invalid('"manager" must be a token manager')
  if (typeof shouldRefresh !== 'function') invalid('"shouldRefresh" must be a function')

  const requestId = instance.interceptors.request.use(async (config) => {
    if (config.tokenflow?.skip) return config
    const signal = toAbortSignal(config.signal)
    let token: string | null
    try {
      token = await manager.getAccessToken({ signal })
    } catch (error) {
      // aborted while it waited for a refresh: axios rejects it with its own CanceledError before sending
      if (signal?.aborted) return config
      throw error
    }
    // logged out: the request goes without a token, and a 401 then reaches the app unchanged
    if (token !== null) setAuthorization(config, token)
    return config
  })

  /**
   * What each retry in flight looked like when it reached this interceptor. The retry runs the whole
   * response chain, and its result then runs the rest of the original chain: interceptors after this one
   * would see it twice (`response => response.data` would unwrap twice), so the original chain goes on
   * from the value captured here instead.
   */
  const retries = new Map<symbol, { captured: boolean; ok: boolean; value: unknown }>()
  const capture = (marker: unknown, ok: boolean, value: unknown): void => {
    const slot = typeof marker === 'symbol' ? retries.get(marker) : undefined
    if (slot && !slot.captured) Object.assign(slot, { captured: true, ok, value })
  }

  async function retry(
    config: InternalAxiosRequestConfig,
    flags: InternalFlags | undefined,
  ): Promise<unknown> {
    const marker = Symbol('tokenflow retry')
    const slot = { captured: false, ok: false, value: undefined as unknown }
    retries.set(marker, slot)
    let result: unknown
    try {
      // the retry passes the request interceptor again, which sets the fresh token
      const tokenflow: InternalFlags = { ...flags, retried: marker }
      result = await instance.request({ ...config, tokenflow })
    } catch (error) {
      if (!slot.captured) throw error
    } finally {
      retries.delete(marker)
    }
    if (!slot.captured) return result
    if (slot.ok) return slot.value
    throw slot.value
  }

  const responseId = instance.interceptors.response.use(
    (response) => {
      capture((response?.config?.tokenflow as InternalFlags | undefined)?.retried, true, response)
      return response
    },
    async (error: unknown) => {
      // no response (network error, timeout, cancel) or not from axios: pass on the very same error
      if (!isAxiosError(error) || !error.config) throw error
      const config = error.config
      const flags = config.tokenflow as InternalFlags | undefined
      // rule 4: one retry at most, so a token the server keeps refusing cannot loop
      if (flags?.retried) {
        capture(flags.retried, false, error)
        throw error
      }
      if (!error.response || flags?.skip || !shouldRefresh(error)) throw error

      const signal = toAbortSignal(config.signal)
      const rejectedToken = sentToken(config)
      let token: string | null
      try {
        token =
          rejectedToken === null
            ? // sent without a token: retry only when a session started meanwhile, and never refresh for it
              await manager.getAccessToken({ signal })
            : // rule 2: the manager refreshes only when the refused token is still the current one
              await manager.refresh({ rejectedToken, signal })
      } catch (reason) {
        // aborted while it waited: the retry goes through axios, which rejects it as canceled without sending it
        if (signal?.aborted) return retry(config, flags)
        // nobody is logged in: the 401 is the answer
        if (isTokenflowError(reason) && reason.code === 'ERR_NO_REFRESH_TOKEN') throw error
        // the same RefreshError for every waiter, not wrapped
        throw reason
      }
      if (token === null) throw error
      return retry(config, flags)
    },
  )

  return () => {
    instance.interceptors.request.eject(requestId)
    instance.interceptors.response.eject(responseId)
  }
}
