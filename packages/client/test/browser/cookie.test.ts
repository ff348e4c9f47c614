import { describe, expect, it } from 'vitest'
import {
  claimsOf,
  events,
  expectOneRefreshPerBurst,
  failWithoutChromiumInCI,
  hasChromium,
  login,
  OTHER_USERNAME,
  ofType,
  openTab,
  sleepUntil,
  status,
  type Tab,
  USERNAME,
  useChromium,
} from './harness.js'
import type { PageSetup } from './page.js'

// The README's cookie-mode recipe in real tabs of one Chromium profile, against the real @tokenflow/server
// with `cookie: true`: the refresh token lives in an HttpOnly cookie the tabs share, each tab keeps its
// access token in its own memory (memoryStorage with the placeholder refresh token 'cookie'), and the tabs
// talk over the BroadcastChannel 'tokenflow'.
//
// Each tab here gets its channel's messages 300 ms late (PageSetup.messageDelay). That makes certain two
// orders Chromium produces only now and then: the refresh lock reaching the next tab before the message of
// the tab that just refreshed (a black-box review saw it in 5 of 60 bursts), and two tabs' logins or
// logouts both happening before either hears of the other.

failWithoutChromiumInCI('cookie-mode browser tests')

const MESSAGE_DELAY = 300
const COOKIE_TAB: PageSetup = { storage: 'cookie', messageDelay: MESSAGE_DELAY }

const getAccessToken = (tab: Tab) => tab.page.evaluate(() => window.tf.getAccessToken())
const clear = (tab: Tab, at?: number) => tab.page.evaluate((time) => window.tf.clear(time), at)
const waitForStatus = (tab: Tab, wanted: string) =>
  tab.page.waitForFunction((value) => window.tf.status() === value, wanted, { polling: 10, timeout: 3_000 })

describe.skipIf(!hasChromium)('cookie mode in Chromium', () => {
  describe('with 1 s access tokens', () => {
    const env = useChromium({ cookie: true })

    it('3 tabs, 10 requests each after expiry, messages 300 ms behind the lock: 1 refresh, 30 ok, 0 reuse (3 rounds)', async () => {
      const context = await env.profile()
      const tabs = await Promise.all([1, 2, 3].map(() => openTab(context, env.server.url, COOKIE_TAB)))
      let accessToken = await login(tabs[0]!)
      for (const tab of tabs.slice(1)) await waitForStatus(tab, 'authenticated')

      for (let round = 1; round <= 3; round++) {
        // a tab that took the lock before the refreshing tab's message came, and refreshed again from the
        // cookie, would show as a second refresh request
        const outcome = await expectOneRefreshPerBurst(env.server, tabs, 10, accessToken, `round ${round}`)
        accessToken = outcome.accessToken
        const { fresh } = outcome
        for (const list of fresh) expect(ofType(list, 'loggedOut')).toEqual([])
      }
      for (const tab of tabs) expect(tab.errors).toEqual([])
    })
  })

  describe('with 60 s access tokens (no refresh during a test)', () => {
    const env = useChromium({ cookie: true, accessTokenTtl: 60_000 })
    /** a moment far enough ahead for both tabs' logins (Argon2id) to have answered */
    const soon = () => Date.now() + 1_500
    /** waits until every message sent at `at` or before has reached both tabs */
    const settled = (at: number) => sleepUntil(at + MESSAGE_DELAY + 500)

    /** two tabs of one profile; with `loggedIn`, a has logged in (ada) and b has heard of it */
    async function twoTabs(loggedIn = false): Promise<[Tab, Tab]> {
      const context = await env.profile()
      const a = await openTab(context, env.server.url, COOKIE_TAB)
      const b = await openTab(context, env.server.url, COOKIE_TAB)
      if (loggedIn) {
        await login(a)
        await waitForStatus(b, 'authenticated')
      }
      return [a, b]
    }
    /** the session (`sid`) of the access token each tab hands out */
    const sessionsOf = async (...tabs: Tab[]) => {
      const sessions: string[] = []
      for (const tab of tabs) sessions.push(claimsOf((await getAccessToken(tab))!).sid)
      return sessions
    }

    it('two tabs log in as different users 50 ms apart: both tabs hold the later login', async () => {
      const [a, b] = await twoTabs()
      const at = soon()
      const [, tokenB] = await Promise.all([login(a, USERNAME, at), login(b, OTHER_USERNAME, at + 50)])
      await settled(at + 50)

      // before tabs dated their messages, each tab took the other's login: a held b's, and b held a's
      expect(await sessionsOf(a, b)).toEqual([claimsOf(tokenB).sid, claimsOf(tokenB).sid])
      expect([await status(a), await status(b)]).toEqual(['authenticated', 'authenticated'])
      expect([...a.errors, ...b.errors]).toEqual([])
    })

    it('a logout 50 ms after a login in another tab: both tabs are logged out', async () => {
      const [a, b] = await twoTabs(true)
      const at = soon()
      await Promise.all([login(b, OTHER_USERNAME, at), clear(a, at + 50)])
      await settled(at + 50)

      // before, a took b's login after its own logout, and b logged out: a stayed logged in as the other user
      expect([await getAccessToken(a), await getAccessToken(b)]).toEqual([null, null])
      expect([await status(a), await status(b)]).toEqual(['unauthenticated', 'unauthenticated'])
      expect(ofType(await events(b), 'loggedOut').map((event) => event.reason)).toEqual(['otherTab'])
      expect([...a.errors, ...b.errors]).toEqual([])
    })

    it('a login 50 ms after a logout in another tab: both tabs hold the login', async () => {
      const [a, b] = await twoTabs(true)
      const at = soon()
      const [, tokenB] = await Promise.all([clear(a, at), login(b, OTHER_USERNAME, at + 50)])
      await settled(at + 50)

      // before, b took a's logout after its own login: b was logged out, and a held b's login
      expect(await sessionsOf(a, b)).toEqual([claimsOf(tokenB).sid, claimsOf(tokenB).sid])
      expect(ofType(await events(b), 'loggedOut')).toEqual([])
      expect([...a.errors, ...b.errors]).toEqual([])
    })
  })
})
