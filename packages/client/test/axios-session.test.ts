import type { TokenSet } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosStatic, type InternalAxiosRequestConfig } from 'axios'
import axios16 from 'axios-1.6'
import { describe, expect, it } from 'vitest'
import { deferred, flush, setupManager, tokenSet } from './helpers/tokens.js'

const T0 = 1_700_000_000_000
const MIN = 60_000

/** an instance whose server refuses `refused` tokens with 401; the first answer waits for `firstAnswer` */
function instance(ax: AxiosStatic, refused: Set<string>, firstAnswer?: Promise<void>) {
  const sentWith: string[] = []
  const api = ax.create({
    adapter: async (config: InternalAxiosRequestConfig) => {
      const auth = String(config.headers.Authorization ?? '')
      sentWith.push(auth)
      if (sentWith.length === 1 && firstAnswer) await firstAnswer
      const token = auth.replace(/^Bearer /, '')
      const status = refused.has(token) ? 401 : 200
      const response = { data: { as: auth }, status, statusText: '', headers: {}, config }
      if (status === 401) throw new ax.AxiosError('401', 'ERR_BAD_REQUEST', config, null, response)
      return response
    },
  })
  return { api, sentWith }
}

/** The axios retry and a change of session while the app's own interceptors run. From a code review. */
describe('attachTokenRefresh: a retry stays in its session', () => {
  it('a retry whose session was logged out (clear()) while the app interceptor ran is not sent with the ended session token', async () => {
    const { manager, calls } = setupManager({}, T0)
    const a1 = tokenSet(T0, 15 * MIN, 'A1')
    const a2 = tokenSet(T0, 15 * MIN, 'A2')
    await manager.setTokens(a1)
    const { api, sentWith } = instance(axios, new Set([a1.accessToken]))
    attachTokenRefresh(api, manager)
    let passes = 0
    api.interceptors.request.use(async (config) => {
      // on the retry, the user logs out
      if (++passes === 2) await manager.clear()
      return config
    })
    const request = api.get('/me').then(
      (r) => r.data,
      (e: unknown) => e,
    )
    await flush()
    calls[0]!.resolve(a2)
    const outcome = await request
    // after clear(), nothing may go out as the logged-out session
    expect(sentWith).toEqual([`Bearer ${a1.accessToken}`])
    expect(outcome).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
  })

  it('attached twice to one instance (a doubled effect, a hot reload), a retry still stays in its session', async () => {
    // a front-end review: the first of the two request interceptors used up the marker of the retry's session
    const { manager, calls } = setupManager({}, T0)
    const [a1, a2, b] = ['A1', 'A2', 'B'].map((n) => tokenSet(T0, 15 * MIN, n)) as [
      TokenSet,
      TokenSet,
      TokenSet,
    ]
    await manager.setTokens(a1)
    const first = deferred<void>()
    const { api, sentWith } = instance(axios, new Set([a1.accessToken]), first.promise)
    attachTokenRefresh(api, manager)
    let passes = 0
    api.interceptors.request.use(async (config) => {
      if (++passes === 2) await manager.setTokens(b)
      return config
    })
    attachTokenRefresh(api, manager)
    const request = api.get('/me').catch((e: unknown) => e)
    await flush()
    // the session refreshes to A2 before the first try's 401 (for A1) comes back
    const refreshed = manager.refresh()
    await flush()
    calls[0]!.resolve(a2)
    await refreshed
    first.resolve()
    expect(await request).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    expect(sentWith).toEqual([`Bearer ${a1.accessToken}`])
  })

  it("an app that replays a retry's error.config after logging in again sends it as the new session (20070c3 refused it)", async () => {
    const { manager, calls } = setupManager({}, T0)
    const a1 = tokenSet(T0, 15 * MIN, 'A1')
    const a2 = tokenSet(T0, 15 * MIN, 'A2')
    const b = tokenSet(T0, 15 * MIN, 'B')
    await manager.setTokens(a1)
    // the server refuses both of A's tokens (the session was revoked server-side)
    const { api, sentWith } = instance(axios, new Set([a1.accessToken, a2.accessToken]))
    attachTokenRefresh(api, manager)
    const request = api.get('/me').catch((e: unknown) => e)
    await flush()
    calls[0]!.resolve(a2)
    const error = (await request) as { config: InternalAxiosRequestConfig; response?: { status: number } }
    expect(error.response?.status).toBe(401)
    // the app's usual answer to a 401 it got: log in again, then replay the request
    await manager.setTokens(b)
    const replay = await api.request(error.config).then(
      (r) => r.data,
      (e: unknown) => e,
    )
    expect(replay).toEqual({ as: `Bearer ${b.accessToken}` })
    expect(sentWith.at(-1)).toBe(`Bearer ${b.accessToken}`)
  })

  it('axios 1.6: a retry is kept out of another session too', async () => {
    const { manager, calls } = setupManager({}, T0)
    const [a1, a2, b] = ['A1', 'A2', 'B'].map((n) => tokenSet(T0, 15 * MIN, n)) as ReturnType<
      typeof tokenSet
    >[]
    await manager.setTokens(a1!)
    const first = deferred<void>()
    const { api, sentWith } = instance(
      axios16 as unknown as AxiosStatic,
      new Set([a1!.accessToken]),
      first.promise,
    )
    attachTokenRefresh(api as never, manager)
    let passes = 0
    api.interceptors.request.use(async (config) => {
      if (++passes === 2) await manager.setTokens(b!)
      return config
    })
    const request = api.get('/me').catch((e: unknown) => e)
    await flush()
    const refreshed = manager.refresh()
    await flush()
    calls[0]!.resolve(a2!)
    await refreshed
    first.resolve()
    expect(await request).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    expect(sentWith).toEqual([`Bearer ${a1!.accessToken}`])
  })

  it("the retry's own getAccessToken refreshes: one refresh, the retry goes once with the newest token", async () => {
    const { manager, calls, clock } = setupManager({}, T0)
    const a1 = tokenSet(T0, 15 * MIN, 'A1')
    const a2 = tokenSet(T0, 2 * MIN, 'A2')
    await manager.setTokens(a1)
    const { api, sentWith } = instance(axios, new Set([a1.accessToken]))
    attachTokenRefresh(api, manager)
    let passes = 0
    api.interceptors.request.use(async (config) => {
      if (++passes === 2) clock.advance(2 * MIN + 1_000) // A2 expired by the time the retry is sent
      return config
    })
    const request = api.get('/me')
    await flush()
    calls[0]!.resolve(a2)
    await flush()
    await flush()
    const a3 = tokenSet(clock.now(), 15 * MIN, 'A3')
    calls[1]!.resolve(a3)
    expect((await request).data).toEqual({ as: `Bearer ${a3.accessToken}` })
    expect(sentWith).toEqual([`Bearer ${a1.accessToken}`, `Bearer ${a3.accessToken}`])
    expect(calls).toHaveLength(2)
  })

  it("sends a config again after clear() without the logged-out session's token", async () => {
    // a code review: response.config or error.config sent again (an offline queue) kept the Authorization header
    // this adapter had set, and went out as the session that ended
    for (const retried of [false, true]) {
      const { manager, calls } = setupManager({}, T0)
      const [a1, a2] = ['A1', 'A2'].map((n) => tokenSet(T0, 15 * MIN, n)) as [TokenSet, TokenSet]
      await manager.setTokens(a1)
      const { api, sentWith } = instance(axios, new Set(retried ? [a1.accessToken] : []))
      attachTokenRefresh(api, manager)
      const request = api.get('/me')
      await flush()
      if (retried) calls[0]!.resolve(a2)
      const ok = await request
      await manager.clear()
      const again = await api.request(ok.config).catch((e: { response?: { status: number } }) => e.response)
      expect(again?.status, `retried: ${retried}`).toBe(200)
      expect(sentWith.at(-1), `retried: ${retried}`).toBe('')
    }
  })
})
