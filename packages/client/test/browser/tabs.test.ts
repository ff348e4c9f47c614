import { describe, expect, it } from 'vitest'
import {
  afterExpiry,
  claimsOf,
  events,
  failWithoutChromiumInCI,
  hasChromium,
  login,
  noTraffic,
  ofType,
  openTab,
  sleep,
  sleepUntil,
  status,
  type Tab,
  useChromium,
} from './harness.js'
import type { PageSetup } from './page.js'

// Regression tests for three multi-tab bugs, in real tabs of one Chromium profile against the real
// @tokenflow/server (1 s access tokens, rotating refresh tokens, reuse grace 0: any second use of a rotated
// refresh token is a reuse detection that revokes the session):
// 1. a lock holder whose attempt failed (503) after another tab gave up on the lock and rotated the token
//    under the fallback lock retried with the spent refresh token;
// 2. a login in one tab while another tab's refresh of the old session was in flight: the old session's
//    refresh result came back over the login, in every tab and in storage;
// 3. a tab opened with window.open holds a copy of its opener's sessionStorage: after the opener rotated,
//    the copy sent the spent refresh token and got the session revoked for both.

// without Chromium these skip; browser.test.ts says so, in one line for the whole browser suite

failWithoutChromiumInCI('multi-tab regression tests')

const TEST_TIMEOUT = 20_000

/** What `getAccessToken()` settled with in the page: the token (or null), or the error's kind/code. */
type Outcome = { token: string | null } | { error: string }

describe.skipIf(!hasChromium)('multi-tab regressions in Chromium', () => {
  const env = useChromium()
  const { profile } = env

  /** `getAccessToken()`, settled in the page so that a rejection is a value the test can look at */
  const accessToken = (tab: Tab): Promise<Outcome> =>
    tab.page.evaluate(() =>
      window.tf.getAccessToken().then(
        (token) => ({ token }),
        (error: { kind?: string; code?: string; name?: string }) => ({
          error: String(error?.kind ?? error?.code ?? error?.name),
        }),
      ),
    )
  const sidOf = (outcome: Outcome) =>
    'token' in outcome && outcome.token ? claimsOf(outcome.token).sid : outcome
  const storedToken = async (tab: Tab, storage: 'local' | 'session') => {
    const raw = await tab.page.evaluate((which) => window.tf.stored(which, 'tokenflow'), storage)
    return raw === null ? null : (JSON.parse(raw) as { accessToken: string; refreshToken: string })
  }
  const waitForStatus = (tab: Tab, wanted: string) =>
    tab.page.waitForFunction((value) => window.tf.status() === value, wanted, { polling: 10, timeout: 2_000 })

  it(
    'bug 1: a lock holder whose refresh got 503 after another tab gave up on the lock and rotated does not retry with the spent refresh token',
    async () => {
      const lockTimeout = 1_000
      const setup: PageSetup = { storage: 'local', lockTimeout }
      const context = await profile()
      const a = await openTab(context, env.server.url, setup)
      const b = await openTab(context, env.server.url, setup)
      const first = await login(a)
      await waitForStatus(b, 'authenticated')
      const { sid } = claimsOf(first)
      await sleepUntil(afterExpiry(claimsOf(first).exp))
      env.server.reset()

      // A takes the lock and refreshes; the server holds that request
      const held = env.server.holdNextRefresh()
      const fromA = accessToken(a)
      await held.arrived
      // B waits lockTimeout for A's lock, gives up, and refreshes under the fallback lock with the same
      // refresh token: that one goes through, and rotates it
      const fromB = await accessToken(b)
      expect(sidOf(fromB)).toBe(sid)
      const tokenB = (fromB as { token: string }).token
      expect(env.server.counts()).toMatchObject({ refreshRequests: 2, refreshes: 1, reuseDetected: 0 })
      // only now does A's attempt fail, transiently (503, nothing rotated): A retries after its backoff
      held.release('unavailable')
      const outcomeA = await fromA

      // A must not have sent the token B rotated: it takes B's tokens instead
      expect(outcomeA).toEqual({ token: tokenB })
      expect(env.server.counts()).toEqual({ ...noTraffic(), refreshRequests: 2, refreshes: 1 })
      for (const tab of [a, b]) {
        expect(ofType(await events(tab), 'loggedOut')).toEqual([])
        expect(await status(tab)).toBe('authenticated')
        expect(tab.errors).toEqual([])
      }
      expect((await storedToken(a, 'local'))?.accessToken).toBe(tokenB)
      // and the session lives on: the next refresh, after the new token expired, rotates it once more
      await sleepUntil(afterExpiry(claimsOf(tokenB).exp))
      expect(sidOf(await accessToken(a))).toBe(sid)
      expect(env.server.counts()).toEqual({ ...noTraffic(), refreshRequests: 3, refreshes: 2 })
    },
    TEST_TIMEOUT,
  )

  it(
    "bug 2: a login in tab A while tab B's refresh of the old session is in flight: every tab and localStorage end up with the new session",
    async () => {
      const setup: PageSetup = { storage: 'local' }
      const context = await profile()
      const a = await openTab(context, env.server.url, setup)
      const b = await openTab(context, env.server.url, setup)
      const old = await login(a)
      await waitForStatus(b, 'authenticated')
      const oldSid = claimsOf(old).sid
      await sleepUntil(afterExpiry(claimsOf(old).exp))
      env.server.reset()

      // B refreshes the old session; the server holds that request
      const held = env.server.holdNextRefresh()
      const fromB = accessToken(b)
      await held.arrived
      // meanwhile the user logs in again in A: a new session
      const fresh = await login(a)
      const newSid = claimsOf(fresh).sid
      expect(newSid).not.toBe(oldSid)
      // B hears of the login
      await b.page.waitForFunction(
        (token) =>
          window.tf.events().some((event) => event.type === 'refreshed' && event.accessToken === token),
        fresh,
        { polling: 10, timeout: 2_000 },
      )
      // now the old session's refresh goes through at the server
      held.release('pass')
      const outcomeB = await fromB
      // time for whatever B does with the old session's answer to reach A and storage
      await sleep(500)

      // what waited for the old session's refresh is not handed the new session's token (another user's, maybe)
      expect(outcomeB).toEqual({ error: 'ERR_SESSION_CLEARED' })
      expect(sidOf(await accessToken(a))).toBe(newSid)
      expect(sidOf(await accessToken(b))).toBe(newSid)
      for (const tab of [a, b]) {
        await expect
          .poll(async () => {
            const stored = await storedToken(tab, 'local')
            return stored && claimsOf(stored.accessToken).sid
          })
          .toBe(newSid)
        expect(ofType(await events(tab), 'loggedOut')).toEqual([])
        expect(tab.errors).toEqual([])
      }
      expect(env.server.counts()).toMatchObject({ logins: 1, reuseDetected: 0 })
    },
    TEST_TIMEOUT,
  )

  it(
    "bug 3: webStorage(sessionStorage): a tab opened with window.open does not send the refresh token its opener rotated; it logs out, the opener's session lives on",
    async () => {
      const setup: PageSetup = { storage: 'session' }
      const context = await profile()
      const opener = await openTab(context, env.server.url, setup)
      env.server.reset()
      const first = await login(opener)
      const { sid } = claimsOf(first)

      // window.open gives the new tab a copy of the opener's sessionStorage: the same session, twice
      const [popup] = await Promise.all([
        context.waitForEvent('page'),
        opener.page.evaluate(() => void window.open('/')),
      ])
      const copy: Tab = { page: popup, errors: [] }
      popup.on('pageerror', (error) => copy.errors.push(error))
      await popup.waitForFunction(() => 'tf' in window, undefined, { polling: 10, timeout: 5_000 })
      await popup.evaluate((options) => window.tf.setup(options), setup)
      expect(await storedToken(copy, 'session')).toEqual(await storedToken(opener, 'session'))
      // (no getAccessToken() in the copy yet: a 1 s token is refreshed early, and the copy would rotate first)

      // the opener's token expires and a request rotates its refresh token
      await sleepUntil(afterExpiry(claimsOf(first).exp))
      const rotated = await accessToken(opener)
      expect(sidOf(rotated)).toBe(sid)
      const second = (rotated as { token: string }).token
      // the copy still holds the spent refresh token in its own sessionStorage, and needs a token too
      const fromCopy = await accessToken(copy)

      expect(fromCopy).toEqual({ error: 'rejected' })
      expect(env.server.counts()).toEqual({ ...noTraffic(), logins: 1, refreshRequests: 1, refreshes: 1 })
      expect(ofType(await events(copy), 'loggedOut')).toEqual([
        { type: 'loggedOut', reason: 'refreshRejected', kind: 'rejected', at: expect.any(Number) },
      ])
      expect(await status(copy)).toBe('unauthenticated')
      expect(await storedToken(copy, 'session')).toBeNull()

      // the opener stays logged in: its session was not revoked, it refreshes again after expiry
      expect(await status(opener)).toBe('authenticated')
      await sleepUntil(afterExpiry(claimsOf(second).exp))
      expect(sidOf(await accessToken(opener))).toBe(sid)
      expect(ofType(await events(opener), 'loggedOut')).toEqual([])
      expect(env.server.counts()).toEqual({ ...noTraffic(), logins: 1, refreshRequests: 2, refreshes: 2 })
      for (const tab of [opener, copy]) expect(tab.errors).toEqual([])
    },
    TEST_TIMEOUT,
  )
})
