/**
 * The axios adapter and a change of session: a request is never sent, or sent again, as a session it was not
 * made in, whatever the app's own interceptors wait for meanwhile. From the reviews of session 12.
 */
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosStatic, type InternalAxiosRequestConfig } from 'axios'
import axios16 from 'axios-1.6'
import { describe, expect, it } from 'vitest'
import { deferred, flush, setupManager, tokenSet } from './helpers/tokens.js'

const T0 = 1_700_000_000_000
const MIN = 60_000
/** the same token set for the same name: A1, A2, … are one session's, B another's */
const token = (name: string) => tokenSet(T0, 15 * MIN, name)
const bearer = (name: string) => `Bearer ${token(name).accessToken}`

/** an instance whose server refuses `refused` tokens with 401; the first answer waits for `firstAnswer` */
function instance(ax: AxiosStatic, refused: string[], firstAnswer?: Promise<void>) {
  const sentWith: string[] = []
  const api = ax.create({
    adapter: async (config: InternalAxiosRequestConfig) => {
      const auth = String(config.headers.Authorization ?? '')
      sentWith.push(auth)
      if (sentWith.length === 1 && firstAnswer) await firstAnswer
      const status = refused.includes(auth) ? 401 : 200
      const response = { data: { as: auth }, status, statusText: '', headers: {}, config }
      if (status === 401) throw new ax.AxiosError('401', 'ERR_BAD_REQUEST', config, null, response)
      return response
    },
  })
  return { api, sentWith }
}

/**
 * A request sent with A1 whose 401 comes back after the session refreshed to A2 (A1 is stale by then), so it is
 * retried; `onRetry` runs in the app's own async request interceptor while the retry passes it.
 */
async function retryAfterStale401(
  onRetry: (control: ReturnType<typeof setupManager>) => Promise<unknown>,
  { ax = axios, attachTwice = false }: { ax?: AxiosStatic; attachTwice?: boolean } = {},
) {
  const control = setupManager({}, T0)
  const { manager, calls } = control
  await manager.setTokens(token('A1'))
  const firstAnswer = deferred<void>()
  const { api, sentWith } = instance(ax, [bearer('A1')], firstAnswer.promise)
  attachTokenRefresh(api as never, manager)
  // the app's own interceptor, registered later, so it runs first
  let passes = 0
  api.interceptors.request.use(async (config) => {
    if (++passes === 2) await onRetry(control)
    return config
  })
  // attached twice (a doubled effect, a hot reload): the first of our interceptors must not hide the retry's
  // session from the second
  if (attachTwice) attachTokenRefresh(api as never, manager)
  const request = api.get('/me').catch((error: unknown) => error)
  await flush()
  const refreshed = manager.refresh()
  await flush()
  calls[0]!.resolve(token('A2'))
  await refreshed
  firstAnswer.resolve()
  return { outcome: await request, sentWith, calls }
}

describe('attachTokenRefresh: a retry stays in its session', () => {
  const axios16Static = axios16 as unknown as AxiosStatic
  it.each([
    ['a login (B) while the app interceptor ran', {}, 'B'],
    ['a login, with the adapter attached twice to the instance', { attachTwice: true }, 'B'],
    ['a login, on axios 1.6.0', { ax: axios16Static }, 'B'],
    ['a logout (clear()) while the app interceptor ran', {}, null],
  ] as const)('the retry is not sent after %s: ERR_SESSION_CLEARED', async (_, options, login) => {
    // reviews: the retry passed the request interceptor again, which put in the current token (B's); a logout
    // left the retry with the ended session's token; attached twice, the first interceptor used up the mark
    const { outcome, sentWith } = await retryAfterStale401(
      ({ manager }) => (login ? manager.setTokens(token(login)) : manager.clear()),
      options,
    )
    expect(outcome).toMatchObject({ code: 'ERR_SESSION_CLEARED' })
    expect(sentWith).toEqual([bearer('A1')])
  })

  it('sends the retry with the newest token of the same session', async () => {
    // on the retry, the session refreshes once more (A2 to A3) while the app's interceptor runs
    const { outcome, sentWith, calls } = await retryAfterStale401(async ({ manager, calls }) => {
      const again = manager.refresh()
      await flush()
      calls[1]!.resolve(token('A3'))
      await again
    })
    expect(outcome).toMatchObject({ data: { as: bearer('A3') } })
    expect(sentWith).toEqual([bearer('A1'), bearer('A3')])
    expect(calls).toHaveLength(2)
  })

  it("the retry's own getAccessToken refreshes: one refresh, the retry goes once with the newest token", async () => {
    const { manager, calls, clock } = setupManager({}, T0)
    await manager.setTokens(token('A1'))
    const { api, sentWith } = instance(axios, [bearer('A1')])
    attachTokenRefresh(api, manager)
    let passes = 0
    api.interceptors.request.use(async (config) => {
      if (++passes === 2) clock.advance(2 * MIN + 1_000) // A2 expired by the time the retry is sent
      return config
    })
    const request = api.get('/me')
    await flush()
    calls[0]!.resolve(tokenSet(T0, 2 * MIN, 'A2'))
    await flush()
    await flush()
    const a3 = tokenSet(clock.now(), 15 * MIN, 'A3')
    calls[1]!.resolve(a3)
    expect((await request).data).toEqual({ as: `Bearer ${a3.accessToken}` })
    expect(sentWith).toEqual([bearer('A1'), `Bearer ${a3.accessToken}`])
    expect(calls).toHaveLength(2)
  })
})

describe('attachTokenRefresh: a config the app sends again', () => {
  it("a retry's error.config, sent again after a new login, goes as the new session (20070c3 refused it)", async () => {
    const { manager, calls } = setupManager({}, T0)
    await manager.setTokens(token('A1'))
    // the server refuses both of A's tokens (the session was revoked server-side)
    const { api, sentWith } = instance(axios, [bearer('A1'), bearer('A2')])
    attachTokenRefresh(api, manager)
    const request = api.get('/me').catch((e: unknown) => e)
    await flush()
    calls[0]!.resolve(token('A2'))
    const error = (await request) as { config: InternalAxiosRequestConfig; response?: { status: number } }
    expect(error.response?.status).toBe(401)
    // the app's usual answer to a 401 it got: log in again, then send the request again
    await manager.setTokens(token('B'))
    expect(await api.request(error.config).then((r) => r.data)).toEqual({ as: bearer('B') })
    expect(sentWith.at(-1)).toBe(bearer('B'))
  })

  it.each([false, true])(
    "after clear(), goes without the logged-out session's token (retried before: %s)",
    async (retried) => {
      // a code review: response.config sent again (an offline queue) kept the Authorization header this adapter
      // had set, and went out as the session that ended
      const { manager, calls } = setupManager({}, T0)
      await manager.setTokens(token('A1'))
      const { api, sentWith } = instance(axios, retried ? [bearer('A1')] : [])
      attachTokenRefresh(api, manager)
      const request = api.get('/me')
      await flush()
      if (retried) calls[0]!.resolve(token('A2'))
      const ok = await request
      await manager.clear()
      expect((await api.request(ok.config)).status).toBe(200)
      expect(sentWith.at(-1)).toBe('')
    },
  )
})
