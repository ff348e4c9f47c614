// Types only: axios is an optional peer dependency and the client has no runtime dependencies.
import type { AxiosError, AxiosInstance, InternalAxiosRequestConfig } from 'axios'
import { invalidOption, type TokenflowError } from './errors.js'
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
  /**
   * Set on the one retry the adapter sends, so its own 401 is passed on instead of refreshed again.
   * A function, because axios deep-copies plain objects of a config but keeps functions as they are.
   */
  retried?: (ok: boolean, value: unknown) => void
}

/**
 * The names of every spelling of the Authorization header. AxiosHeaders keeps each header as an own
 * property, as a plain object another interceptor put in its place does, so one lookup serves both.
 */
const authorizationKeys = (headers: object | undefined): string[] =>
  Object.keys(headers ?? {}).filter((name) => name.toLowerCase() === 'authorization')

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
    invalidOption('instance', 'an axios instance')
  if (typeof manager?.getAccessToken !== 'function' || typeof manager.refresh !== 'function')
    invalidOption('manager', 'a token manager')
  if (typeof shouldRefresh !== 'function') invalidOption('shouldRefresh', 'a function')

  const requestId = instance.interceptors.request.use(async (config) => {
    if (config.tokenflow?.skip) return config
    // the manager only needs the parts of an AbortSignal that axios's GenericAbortSignal has too
    const signal = config.signal as AbortSignal | undefined
    try {
      const token = await manager.getAccessToken({ signal })
      // logged out: the request goes without a token, and a 401 then reaches the app unchanged
      if (token !== null) {
        // another interceptor may have put a plain object in place of the AxiosHeaders, or nothing at all
        config.headers ??= {} as never
        const headers = config.headers as unknown as Record<string, unknown>
        for (const name of authorizationKeys(headers)) delete headers[name]
        headers.Authorization = `Bearer ${token}`
      }
    } catch (error) {
      // aborted while it waited for a refresh: axios rejects it with its own CanceledError before sending
      if (!signal?.aborted) throw error
    }
    return config
  })

  /**
   * The retry runs the whole response chain, and its result then runs the rest of the original chain:
   * interceptors after this one would see it twice (`response => response.data` would unwrap twice), so the
   * original chain goes on from what the retry looked like when it reached this interceptor.
   */
  async function retry(config: InternalAxiosRequestConfig, flags: InternalFlags | undefined) {
    let captured: [ok: boolean, value: unknown] | undefined
    const retried = (ok: boolean, value: unknown) => {
      captured ??= [ok, value]
    }
    try {
      // the retry passes the request interceptor again, which sets the fresh token
      const result = await instance.request({ ...config, tokenflow: { ...flags, retried } as InternalFlags })
      if (!captured) return result
    } catch (error) {
      if (!captured) throw error
    }
    if (captured[0]) return captured[1]
    throw captured[1]
  }

  const responseId = instance.interceptors.response.use(
    (response) => {
      ;(response?.config?.tokenflow as InternalFlags | undefined)?.retried?.(true, response)
      return response
    },
    async (error: AxiosError) => {
      const config = error?.config
      const flags = config?.tokenflow as InternalFlags | undefined
      // rule 4: one retry at most, so a token the server keeps refusing cannot loop
      flags?.retried?.(false, error)
      // no response (network error, timeout, cancel) or not from axios: pass on the very same error
      if (
        !config ||
        !error.isAxiosError ||
        !error.response ||
        flags?.retried ||
        flags?.skip ||
        !shouldRefresh(error)
      )
        throw error

      const signal = config.signal as AbortSignal | undefined
      // the token this request really went out with, read back from its own headers: axios hands the response
      // side a flattened copy of the config and other interceptors may spread it, but the header survives both
      const [sent] = authorizationKeys(config.headers).map((name) => String(config.headers[name]))
      const rejectedToken = /^bearer\s+(\S+)/i.exec(sent ?? '')?.[1]
      let token: string | null = null
      try {
        token = rejectedToken
          ? // rule 2: the manager refreshes only when the refused token is still the current one
            await manager.refresh({ rejectedToken, signal })
          : // sent without a token: retry only when a session started meanwhile, and never refresh for it
            await manager.getAccessToken({ signal })
      } catch (reason) {
        // nobody is logged in: the 401 is the answer; otherwise the same RefreshError for every waiter, not wrapped
        if (!signal?.aborted)
          throw (reason as TokenflowError)?.code === 'ERR_NO_REFRESH_TOKEN' ? error : reason
      }
      // aborted while it waited: the retry goes through axios, which rejects it as canceled without sending it
      if (token === null && !signal?.aborted) throw error
      return retry(config, flags)
    },
  )

  return () => {
    instance.interceptors.request.eject(requestId)
    instance.interceptors.response.eject(responseId)
  }
}
