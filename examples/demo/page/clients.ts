/**
 * The three clients the page drives, each with the same instrumentation around it and nothing changed
 * inside: tokenflow on axios (attachTokenRefresh), tokenflow on fetch (createAuthFetch), and the recipe's
 * interceptor (../recipe.ts, as transcribed, with localStorage behind its AsyncStorage calls).
 *
 * axios runs request interceptors last-added-first and response interceptors first-added-first, so an
 * interceptor added before the client's sees each request right before it leaves and each answer before
 * the client does, and one added after the client's sees each request as it enters.
 */
import type { TokenManager } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import { createAuthFetch } from '@tokenflow/client/fetch'
import axios, { type AxiosAdapter, type AxiosInstance } from 'axios'
import { installRecipe, type RecipeAsyncStorage } from '../recipe.js'

/**
 * What a client reports about the request with the given id.
 * @example
 * const hooks: Hooks = { queued: (id) => column.queued(id), sent: (id) => column.sent(id), answered: (id, status) => column.answered(id, status) }
 */
export interface Hooks {
  queued(id: number): void
  sent(id: number): void
  /** status 0: no response */
  answered(id: number, status: number): void
}

/**
 * Where the recipe's refresh calls are reported: it has no events of its own.
 * @example
 * const refresh: RefreshHooks = { started: () => column.refreshStarted(), ended: (ok) => column.refreshEnded(ok ? 'ok' : 'failed') }
 */
export interface RefreshHooks {
  started(): void
  ended(ok: boolean): void
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/**
 * The request id in `/api/items/<prefix>-<n>`, or undefined for any other URL.
 * @example
 * idOf('/api/items/tf-12?link=slow', 'tf') // 12
 */
export function idOf(url: string | undefined, prefix: string): number | undefined {
  const match = new RegExp(`/api/items/${prefix}-(\\d+)`).exec(url ?? '')
  return match ? Number(match[1]) : undefined
}

/**
 * The URL of request `id`; `slow` marks one that goes over a slow link (see `Link`).
 * @example
 * itemUrl('tf', 12, true) // '/api/items/tf-12?link=slow'
 */
export function itemUrl(prefix: string, id: number, slow: boolean): string {
  return `/api/items/${prefix}-${id}${slow ? '?link=slow' : ''}`
}

/**
 * How many ms a send of `url` spends on the way before it leaves: a bad mobile link, simulated.
 * @example
 * const link: Link = (url) => (url.includes('link=slow') ? 1_300 : 0)
 */
export type Link = (url: string) => number

/** axios's own browser adapter, with the link in front. */
function linkAdapter(link: Link): AxiosAdapter {
  const base = axios.getAdapter(['xhr', 'fetch'])
  return async (config) => {
    const delay = link(config.url ?? '')
    if (delay > 0) await sleep(delay)
    return base(config)
  }
}

/** Reports every request of `instance` that goes to `/api/items/<prefix>-*`; call before and after the client's. */
function instrument(instance: AxiosInstance, prefix: string, hooks: Hooks, refresh?: RefreshHooks) {
  const isRefresh = (url: string | undefined) => url?.endsWith('/refresh/token') === true
  instance.interceptors.request.use((config) => {
    const id = idOf(config.url, prefix)
    if (id !== undefined) hooks.sent(id)
    else if (refresh && isRefresh(config.url)) refresh.started()
    return config
  })
  instance.interceptors.response.use(
    (response) => {
      const id = idOf(response.config.url, prefix)
      if (id !== undefined) hooks.answered(id, response.status)
      else if (refresh && isRefresh(response.config.url)) refresh.ended(true)
      return response
    },
    (error) => {
      const url: string | undefined = error?.config?.url
      const id = idOf(url, prefix)
      if (id !== undefined) hooks.answered(id, error?.response?.status ?? 0)
      else if (refresh && isRefresh(url)) refresh.ended(false)
      throw error
    },
  )
  return () =>
    instance.interceptors.request.use((config) => {
      const id = idOf(config.url, prefix)
      if (id !== undefined) hooks.queued(id)
      return config
    })
}

/**
 * tokenflow on axios, as the README shows it, between the page's reporting interceptors.
 * @example
 * const api = tokenflowAxios(manager, { prefix: 'tf', hooks, link })
 * await api.get(itemUrl('tf', 1, false))
 */
export function tokenflowAxios(
  manager: TokenManager,
  { prefix, hooks, link }: { prefix: string; hooks: Hooks; link: Link },
): AxiosInstance {
  const api = axios.create({ adapter: linkAdapter(link) })
  const entering = instrument(api, prefix, hooks)
  attachTokenRefresh(api, manager)
  entering()
  return api
}

/**
 * tokenflow's fetch wrapper around a fetch that reports each send and answer; resolves with the JSON body.
 * @example
 * const get = tokenflowFetch(manager, { prefix: 'tf', hooks, link })
 * await get(itemUrl('tf', 1, false))
 */
export function tokenflowFetch(
  manager: TokenManager,
  { prefix, hooks, link }: { prefix: string; hooks: Hooks; link: Link },
): (url: string) => Promise<unknown> {
  const reporting: typeof fetch = async (input, init) => {
    const url = input instanceof Request ? input.url : String(input)
    const id = idOf(url, prefix)
    if (id !== undefined) hooks.sent(id)
    const delay = link(url)
    if (delay > 0) await sleep(delay)
    try {
      const response = await fetch(input, init)
      if (id !== undefined) hooks.answered(id, response.status)
      return response
    } catch (error) {
      if (id !== undefined) hooks.answered(id, 0)
      throw error
    }
  }
  const authFetch = createAuthFetch(manager, { fetch: reporting })
  return async (url) => {
    const id = idOf(url, prefix)
    if (id !== undefined) hooks.queued(id)
    const response = await authFetch(url)
    if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status })
    return response.json()
  }
}

/**
 * The recipe's AsyncStorage calls, answered by localStorage: the page's only change to it. Its keys,
 * `accessToken` and `refreshToken`, are the ones the recipe uses.
 * @example
 * await recipeStorage.multiSet([['accessToken', accessToken], ['refreshToken', refreshToken]])
 */
export const recipeStorage: RecipeAsyncStorage = {
  getItem: async (key) => localStorage.getItem(key),
  multiSet: async (pairs) => {
    for (const [key, value] of pairs) localStorage.setItem(key, value)
  },
}

/**
 * The recipe's interceptor on its own axios instance, against this page's origin.
 * @example
 * const api = recipeAxios({ prefix: 'rc', hooks, link, refresh })
 */
export function recipeAxios({
  prefix,
  hooks,
  link,
  refresh,
}: {
  prefix: string
  hooks: Hooks
  link: Link
  refresh: RefreshHooks
}): AxiosInstance {
  const api = axios.create({ adapter: linkAdapter(link) })
  const entering = instrument(api, prefix, hooks, refresh)
  installRecipe(api, { baseUrl: location.origin, AsyncStorage: recipeStorage })
  entering()
  return api
}
