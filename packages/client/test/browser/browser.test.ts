import type { BrowserContext } from 'playwright-core'
import { describe, expect, it } from 'vitest'
import {
  afterExpiry,
  burst,
  CHROMIUM_PATH,
  claimsOf,
  events,
  expectOneRefreshPerBurst,
  failWithoutChromiumInCI,
  hasChromium,
  login,
  noTraffic,
  ofType,
  openTab,
  reloadTab,
  sleep,
  sleepUntil,
  status,
  type Tab,
  useChromium,
} from './harness.js'
import type { PageSetup, RequestResult } from './page.js'

// Real tabs of one Chromium profile share localStorage, navigator.locks and BroadcastChannel. They talk to
// the real @tokenflow/server with 1 s access tokens and rotating refresh tokens with no reuse grace, so a
// second refresh with the same refresh token shows up as a reuse detection (and a revoked session).

const inCI = process.env.CI === 'true'
if (!hasChromium && !inCI) {
  console.log(
    `browser tests skipped: no Chromium at ${CHROMIUM_PATH}; on Debian/Ubuntu: apt-get install -y chromium`,
  )
}

failWithoutChromiumInCI('browser tests')

const LOCK = 'tokenflow:refresh'

const allOk = (count: number, jti: string | undefined) =>
  Array.from({ length: count }, () => ({ status: 200, jti, doneAt: expect.any(Number) }))

describe.skipIf(!hasChromium)('in Chromium', () => {
  const env = useChromium()
  const { profile } = env

  const tabs = (context: BrowserContext, count: number, setup: PageSetup) =>
    Promise.all(Array.from({ length: count }, () => openTab(context, env.server.url, setup)))
  /** the events of each tab after the first `seen[i]` */
  const eventsSince = (list: Tab[], seen: number[]) =>
    Promise.all(list.map(async (tab, i) => (await events(tab)).slice(seen[i])))
  const counted = (list: Tab[]) => Promise.all(list.map(async (tab) => (await events(tab)).length))
  const getAccessToken = (tab: Tab) => tab.page.evaluate(() => window.tf.getAccessToken())
  const stored = (tab: Tab, storage: 'local' | 'session', key: string) =>
    tab.page.evaluate(([which, name]) => window.tf.stored(which, name), [storage, key] as const)
  const storedSet = async (tab: Tab, storage: 'local' | 'session', key: string) =>
    JSON.parse((await stored(tab, storage, key)) ?? 'null') as {
      accessToken: string
      refreshToken: string
    } | null
  // Chromium copies a localStorage write to the other tabs' processes asynchronously: their view catches up
  const waitForStored = (tab: Tab, storage: 'local' | 'session', key: string, accessToken: string | null) =>
    tab.page.waitForFunction(
      ([which, name, token]) => {
        const raw = window.tf.stored(which, name)
        return (raw === null ? null : (JSON.parse(raw) as { accessToken: string }).accessToken) === token
      },
      [storage, key, accessToken] as const,
      { polling: 10, timeout: 2_000 },
    )
  const waitForStatus = (tab: Tab, wanted: string) =>
    tab.page.waitForFunction((value) => window.tf.status() === value, wanted, { polling: 10, timeout: 2_000 })
  /** logs in in the first tab and waits until the others have the session */
  async function loginEverywhere(list: Tab[]): Promise<string> {
    const accessToken = await login(list[0]!)
    for (const tab of list.slice(1)) await waitForStatus(tab, 'authenticated')
    return accessToken
  }

  it('5 tabs, 20 requests each after expiry: 1 refresh reaches the server, 100 ok, 0 reuse (3 rounds)', async () => {
    const context = await profile()
    // four tabs are open at login and hear of it by broadcast; the fifth opens later and reads localStorage
    const open = await tabs(context, 4, { storage: 'local' })
    let accessToken = await loginEverywhere(open)
    const all = [...open, await openTab(context, env.server.url, { storage: 'local' })]

    for (let round = 1; round <= 3; round++) {
      // every tab fires at the same wall-clock time, once the token has certainly expired; the other tabs
      // adopt the new token by broadcast and again from storage under the lock
      const outcome = await expectOneRefreshPerBurst(env.server, all, 20, accessToken, `round ${round}`)
      accessToken = outcome.accessToken
      const { fresh } = outcome
      fresh.forEach((list, i) => {
        const where = `tab ${i + 1}, round ${round}`
        expect(ofType(list, 'refreshed').length, where).toBeGreaterThan(0)
        // one refresh at a time per manager, shared by its 20 requests; none at all in a tab whose timer
        // fired late enough to hear of the new token first
        expect(ofType(list, 'refreshStarted').length, where).toBeLessThanOrEqual(1)
        expect(list.length, where).toBe(
          ofType(list, 'refreshed').length + ofType(list, 'refreshStarted').length,
        )
      })
    }

    for (const tab of all) await waitForStored(tab, 'local', 'tokenflow', accessToken)
    for (const tab of all) expect(tab.errors).toEqual([])
  })

  it('one tab logs out: every tab emits loggedOut within 1 s', async () => {
    const context = await profile()
    const all = await tabs(context, 5, { storage: 'local' })
    await loginEverywhere(all)
    env.server.reset()

    const clearedAt = await all[0]!.page.evaluate(() => window.tf.clear())
    for (const tab of all) await waitForStatus(tab, 'unauthenticated')

    const loggedOut = await Promise.all(all.map(async (tab) => ofType(await events(tab), 'loggedOut')))
    expect(loggedOut.map((list) => list.map((event) => event.reason))).toEqual([
      ['cleared'],
      ['otherTab'],
      ['otherTab'],
      ['otherTab'],
      ['otherTab'],
    ])
    for (const [event] of loggedOut) {
      expect(event!.at - clearedAt).toBeGreaterThanOrEqual(0)
      expect(event!.at - clearedAt).toBeLessThan(1_000)
    }
    for (const tab of all) {
      expect(await getAccessToken(tab)).toBeNull()
      await waitForStored(tab, 'local', 'tokenflow', null)
      expect(tab.errors).toEqual([])
    }
    // a local logout: nothing refreshed, nothing reused
    expect(env.server.counts()).toEqual(noTraffic())
  })

  it('a tab closed while it holds the lock does not block the others: they carry on within lockTimeout', async () => {
    const lockTimeout = 1_500
    const context = await profile()
    const [a, b, c] = (await tabs(context, 3, { storage: 'local', lockTimeout })) as [Tab, Tab, Tab]
    const accessToken = await loginEverywhere([a, b, c])
    await sleepUntil(afterExpiry(claimsOf(accessToken).exp))
    env.server.reset()
    const seen = await counted([b, c])

    // tab A starts the refresh and the server holds it, so A keeps the lock until the tab closes
    const held = env.server.holdNextRefresh()
    const lost = burst(a, 5).catch(() => 'tab closed')
    await held.arrived
    const locks = () => b.page.evaluate(() => navigator.locks.query())
    expect((await locks()).held?.map((lock) => lock.name)).toEqual([LOCK])

    // B and C need a token too: they queue behind A's lock
    const waiting = [burst(b, 10), burst(c, 10)]
    await b.page.waitForFunction(
      async (name) =>
        (await navigator.locks.query()).pending?.filter((lock) => lock.name === name).length === 2,
      LOCK,
      { polling: 10, timeout: 2_000 },
    )

    const closedAt = Date.now()
    await a.page.close()
    const results: RequestResult[] = (await Promise.all(waiting)).flat()
    held.release()

    const [jti, ...others] = new Set(env.server.apiTokens())
    expect(others).toEqual([])
    expect(results).toEqual(allOk(20, jti))
    expect(await lost).toBe('tab closed')
    // A's refresh arrived and was never answered; B or C refreshed once, and the other adopted its tokens
    expect(env.server.counts()).toEqual({ ...noTraffic(), refreshRequests: 2, refreshes: 1, apiOk: 20 })
    const after = await eventsSince([b, c], seen)
    expect(
      after.flatMap((list) => ofType(list, 'refreshed')).filter((e) => e.source === 'local'),
    ).toHaveLength(1)
    for (const list of after) {
      // Chromium frees a closed tab's locks at once: each tab had its token well within lockTimeout
      expect(ofType(list, 'refreshed')[0]!.at - closedAt).toBeLessThan(lockTimeout)
      expect(new Set(list.map((event) => event.type))).toEqual(new Set(['refreshStarted', 'refreshed']))
    }
    expect((await locks()).held?.map((lock) => lock.name)).not.toContain(LOCK)
    for (const tab of [b, c]) expect(tab.errors).toEqual([])
  })

  // Bug found by this suite: when the lock wait timed out, every waiting tab refreshed at once with the same
  // refresh token and the server revoked the session for reuse. The tabs that give up now take turns under a
  // second lock.
  it('a tab whose refresh hangs past lockTimeout: the tabs that stop waiting still refresh one at a time', async () => {
    const lockTimeout = 1_500
    const context = await profile()
    const [a, b, c] = (await tabs(context, 3, { storage: 'local', lockTimeout })) as [Tab, Tab, Tab]
    const accessToken = await loginEverywhere([a, b, c])
    await sleepUntil(afterExpiry(claimsOf(accessToken).exp))
    env.server.reset()

    // A holds the lock, its refresh stuck on the network
    const stuck = env.server.holdNextRefresh()
    void burst(a, 1).catch(() => {})
    await stuck.arrived
    const waiting = [burst(b, 5), burst(c, 5)]
    // the first tab to give up waiting refreshes; that answer is slow too, so any other refresh that is not
    // serialised behind it arrives meanwhile, with the same refresh token
    const first = env.server.holdNextRefresh()
    await first.arrived
    for (let waited = 0; waited < 1_000 && env.server.counts().refreshRequests < 3; waited += 10)
      await sleep(10)
    first.release('pass')
    const results = (await Promise.all(waiting)).flat()
    await a.page.close()
    stuck.release()

    expect(env.server.counts()).toEqual({ ...noTraffic(), refreshRequests: 2, refreshes: 1, apiOk: 10 })
    expect(results.map((result) => result.status)).toEqual(Array(10).fill(200))
  })

  describe('webStorage', () => {
    it('over localStorage: the tokens are kept under the key, shared by the tabs and read back after a reload', async () => {
      const key = 'tf-local'
      const setup: PageSetup = { storage: 'local', key }
      const context = await profile()
      const a = await openTab(context, env.server.url, setup)
      env.server.reset()
      const accessToken = await login(a)
      const { sid } = claimsOf(accessToken)
      const first = await storedSet(a, 'local', key)
      expect(first).toEqual({ accessToken, refreshToken: expect.any(String) })
      expect(await stored(a, 'local', 'tokenflow')).toBeNull()
      expect(await stored(a, 'session', key)).toBeNull()

      // a tab opened later has only localStorage to go by: its refresh uses the stored refresh token
      const b = await openTab(context, env.server.url, setup)
      await sleepUntil(afterExpiry(claimsOf(accessToken).exp))
      const fromB = (await getAccessToken(b))!
      expect(claimsOf(fromB).sid).toBe(sid)
      const second = (await storedSet(b, 'local', key))!
      expect(second.accessToken).toBe(fromB)
      expect(second.refreshToken).not.toBe(first!.refreshToken)

      // after a reload A reads B's rotated tokens back; refreshing with its own spent one would be reuse
      await reloadTab(a, setup)
      await waitForStored(a, 'local', key, fromB)
      expect(await storedSet(a, 'local', key)).toEqual(second)
      await sleepUntil(afterExpiry(claimsOf(fromB).exp))
      const fromA = (await getAccessToken(a))!
      expect(claimsOf(fromA).sid).toBe(sid)
      expect(await events(a)).toEqual([
        { type: 'refreshStarted', at: expect.any(Number) },
        { type: 'refreshed', source: 'local', accessToken: fromA, at: expect.any(Number) },
      ])
      expect(env.server.counts()).toEqual({ ...noTraffic(), logins: 1, refreshRequests: 2, refreshes: 2 })
      expect(env.server.refreshedSessions()).toEqual([sid, sid])
      await waitForStored(b, 'local', key, fromA)
      expect(a.errors).toEqual([])
      expect(b.errors).toEqual([])
    })

    it('over sessionStorage: each tab is its own session, kept under the key and read back after a reload', async () => {
      const key = 'tf-session'
      // per-tab sessions: the tabs must not adopt each other's logins and refreshes by broadcast either
      const setup: PageSetup = { storage: 'session', key, channel: false }
      const context = await profile()
      const [a, b] = (await tabs(context, 2, setup)) as [Tab, Tab]
      env.server.reset()
      const tokenA = await login(a)
      const tokenB = await login(b)
      const sids = [claimsOf(tokenA).sid, claimsOf(tokenB).sid]
      expect(sids[0]).not.toBe(sids[1])
      const keptA = await storedSet(a, 'session', key)
      expect(keptA).toEqual({ accessToken: tokenA, refreshToken: expect.any(String) })
      expect(await storedSet(b, 'session', key)).toEqual({
        accessToken: tokenB,
        refreshToken: expect.any(String),
      })
      for (const tab of [a, b]) {
        expect(await stored(tab, 'local', key)).toBeNull()
        expect(await stored(tab, 'local', 'tokenflow')).toBeNull()
        expect(await status(tab)).toBe('authenticated')
      }

      await reloadTab(a, setup)
      expect(await storedSet(a, 'session', key)).toEqual(keptA)

      // both sessions expire; each tab refreshes its own, with the refresh token its sessionStorage holds
      await sleepUntil(afterExpiry(Math.max(claimsOf(tokenA).exp, claimsOf(tokenB).exp)))
      const [nextA, nextB] = (await Promise.all([getAccessToken(a), getAccessToken(b)])) as [string, string]
      expect([claimsOf(nextA).sid, claimsOf(nextB).sid]).toEqual(sids)
      expect(env.server.counts()).toEqual({ ...noTraffic(), logins: 2, refreshRequests: 2, refreshes: 2 })
      expect([...env.server.refreshedSessions()].sort()).toEqual([...sids].sort())
      expect((await storedSet(a, 'session', key))!.accessToken).toBe(nextA)
      expect((await storedSet(b, 'session', key))!.accessToken).toBe(nextB)
      for (const [tab, next] of [
        [a, nextA],
        [b, nextB],
      ] as const) {
        expect(await events(tab)).toEqual([
          { type: 'refreshStarted', at: expect.any(Number) },
          { type: 'refreshed', source: 'local', accessToken: next, at: expect.any(Number) },
        ])
        expect(tab.errors).toEqual([])
      }
    })
  })
})
