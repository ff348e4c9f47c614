import { invalidOption, isTokenflowError } from './errors.js'
import type { TokenManager } from './token-manager.js'

/** Options of `createAuthFetch`. */
export interface AuthFetchOptions {
  /** the fetch to wrap, looked up at call time @default globalThis.fetch */
  fetch?: typeof fetch | undefined
  /** which responses mean "refresh and retry once" @default (response) => response.status === 401 */
  shouldRefresh?: ((response: Response) => boolean) | undefined
}

type Body = RequestInit['body']

/**
 * Two sends' worth of body: the first try and the one retry. Strings, URLSearchParams, FormData, Blob and
 * buffers are re-sent as they are; a ReadableStream is tee'd; anything else (an async iterable, a Node stream)
 * cannot be replayed, so a 401 for it is returned as it came.
 */
function replayable(body: Body | undefined): [Body | undefined, Body | undefined] | undefined {
  if (typeof ReadableStream !== 'undefined' && body instanceof ReadableStream) return body.tee()
  if (
    body == null ||
    typeof body === 'string' ||
    body instanceof URLSearchParams ||
    (typeof FormData !== 'undefined' && body instanceof FormData) ||
    (typeof Blob !== 'undefined' && body instanceof Blob) ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body)
  )
    return [body, body]
  return undefined
}

/**
 * A Request of any fetch implementation: the global class, a ponyfill's (cross-fetch, whatwg-fetch imported as a
 * module) or another realm's. `instanceof Request` misses those, and their headers and body would be dropped
 */
const isRequest = (input: unknown): input is Request =>
  typeof (input as Request | null)?.url === 'string' && typeof (input as Request).clone === 'function'

/**
 * Wraps fetch: adds `Authorization: Bearer …`, waits for a running refresh, and on a 401 refreshes once and
 * retries once. Same signature and types as fetch, so it also serves ky, ofetch and openapi-fetch.
 * @example
 * const authFetch = createAuthFetch(manager)
 * const response = await authFetch('/api/me')
 */
export function createAuthFetch(
  manager: TokenManager,
  { fetch: baseFetch, shouldRefresh = (response) => response.status === 401 }: AuthFetchOptions = {},
): typeof fetch {
  if (typeof manager?.getAccessToken !== 'function' || typeof manager.refresh !== 'function')
    invalidOption('manager', 'a token manager')
  if (baseFetch !== undefined && typeof baseFetch !== 'function') invalidOption('fetch', 'a function')
  if (typeof shouldRefresh !== 'function') invalidOption('shouldRefresh', 'a function')

  return async function authFetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
    const doFetch = baseFetch ?? globalThis.fetch
    const original = isRequest(input) ? input : undefined
    const signal = init?.signal ?? original?.signal ?? undefined
    // waited for before the body is touched: a request aborted while it waits leaves its body to the caller
    const sent = await manager.getAccessToken({ signal })

    // a Request's body can be read once: clone it before the first send, so the retry has its own copy
    let bodies: [Body | undefined, Body | undefined] | undefined = [undefined, undefined]
    let inputs: [RequestInfo | URL, RequestInfo | URL] = [input, input]
    if (init?.body != null) bodies = replayable(init.body)
    else if (original?.bodyUsed) bodies = undefined
    // every Request, not only one whose `body` shows: React Native's (whatwg-fetch) has no `body`, and its
    // fetch marks the Request it was given used
    else if (original) {
      inputs = [original, original.clone()]
      // whatwg-fetch's clone() marks a Request whose body is '' used: undone (a getter-only bodyUsed throws)
      if (original.bodyUsed)
        try {
          ;(original as { bodyUsed: boolean }).bodyUsed = false
        } catch {}
    }
    // the unused copy of a tee'd stream or a cloned Request would otherwise buffer the whole body. It is
    // dropped, never waited for: a tee'd stream's cancel settles only once both copies are done, and a
    // server that answers before it has read the upload (a 413, an early 401) leaves the sent copy unread
    const dropSpare = () => {
      const spare = inputs[1] !== inputs[0] ? (inputs[1] as Request).body : bodies?.[1]
      if (typeof ReadableStream !== 'undefined' && spare instanceof ReadableStream && spare !== bodies?.[0])
        spare.cancel().catch(() => {})
    }

    const send = (attempt: 0 | 1, token: string | null) => {
      const headers = new Headers(init?.headers ?? original?.headers)
      if (token) headers.set('authorization', `Bearer ${token}`)
      const next: RequestInit = { ...init, headers }
      if (init?.body != null) next.body = bodies ? bodies[attempt]! : init.body
      return doFetch(inputs[attempt], next)
    }

    let retrying = false
    try {
      const response = await send(0, sent)
      // dropped unread, its connection released: cancelled, or destroyed where the body is a Node stream (the
      // fetch of node-fetch)
      const release = () => {
        const body = response.body as { cancel?: () => Promise<void>; destroy?: () => void } | null
        try {
          if (typeof body?.cancel === 'function') body.cancel().catch(() => {})
          else body?.destroy?.()
        } catch {}
      }
      let refresh: boolean
      try {
        refresh = shouldRefresh(response)
      } catch (error) {
        release()
        throw error
      }
      if (!refresh) return response
      // sent without a token (nobody was logged in): the 401 is the answer, even when a session started since,
      // which may be another user's
      if (!sent) return response
      let token: string
      try {
        // rule 2: a 401 for a token that is no longer current retries with the current one, without a refresh
        token = await manager.refresh({ rejectedToken: sent, signal })
      } catch (error) {
        if (isTokenflowError(error) && error.code === 'ERR_NO_REFRESH_TOKEN') return response
        // the caller gets the error (a RefreshError, its signal's reason), not this answer: release its connection
        release()
        throw error
      }
      // a body that cannot be replayed is not retried; the refresh above still lets the caller's own retry succeed
      if (!bodies) return response
      // the first answer is not read: release its connection before the retry. Not waited for: the body of a
      // Response that the wrapped fetch cloned (a logger, a cache) is one copy of a tee, whose cancel settles only
      // once the other copy is read or dropped too
      release()
      retrying = true
      return await send(1, token)
    } finally {
      // on every way out but the retry (which sends it): a network error, a throwing shouldRefresh, no retry
      if (!retrying) dropSpare()
    }
  }
}
