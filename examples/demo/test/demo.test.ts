/**
 * The demo in Debian's Chromium (playwright-core; it never downloads a browser): start it as `npm start`
 * does (startDemo, on a free port, a temporary SQLite directory and 8 s access tokens), log in, fire 50
 * requests through tokenflow next to the recipe, share one refresh between two tabs, and take a screenshot.
 * `npm run demo:screenshot` writes it to docs/demo.png, the picture the README shows; a plain `npm test`
 * writes it to the temporary directory, so the working tree stays clean.
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Demo, startDemo } from '../start-demo.js'

/** Where Debian puts Chromium; `TOKENFLOW_CHROMIUM` points elsewhere (or nowhere, to try the skip path). */
const CHROMIUM_PATH = process.env.TOKENFLOW_CHROMIUM ?? '/usr/bin/chromium'
const hasChromium = existsSync(CHROMIUM_PATH)
const inCI = process.env.CI === 'true'
const root = fileURLToPath(new URL('../../../', import.meta.url))

if (!hasChromium && !inCI) {
  console.log(
    `demo test skipped: no Chromium at ${CHROMIUM_PATH}; on Debian/Ubuntu: apt-get install -y chromium`,
  )
}

describe.runIf(!hasChromium && inCI)('the demo', () => {
  it('has Chromium to run on', () => {
    throw new Error('Chromium is required in CI: apt-get install -y chromium')
  })
})

/** What a column's counter shows. */
const counter = (page: Page, client: 'tokenflow' | 'recipe', name: string) =>
  page.locator(`#col-${client} [data-counter="${name}"] dd`).textContent()

/** The `sid` (session) of the access token tokenflow keeps in the page's localStorage. */
const tokenflowSession = (page: Page) =>
  page.evaluate(() => {
    const { accessToken } = JSON.parse(localStorage.getItem('tokenflow-demo') ?? '{}') as {
      accessToken?: string
    }
    const payload = accessToken?.split('.')[1] ?? ''
    return (JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as { sid: string }).sid
  })

/** When the access token tokenflow keeps in the page's localStorage expires, epoch ms. */
const accessExpiry = (page: Page) =>
  page.evaluate(() => {
    const { accessToken } = JSON.parse(localStorage.getItem('tokenflow-demo') ?? '{}') as {
      accessToken?: string
    }
    const payload = accessToken?.split('.')[1] ?? ''
    return (JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as { exp: number }).exp * 1000
  })

/** Resolves once every row of the column's burst has its final state: ok, failed, or hung. */
const settled = (page: Page, client: 'tokenflow' | 'recipe', timeout: number) =>
  page.waitForFunction(
    (id) => {
      const rows = [...document.querySelectorAll(`#${id} li.row`)]
      return (
        rows.length > 0 &&
        rows.every((row) => ['ok', 'failed', 'hung'].includes(row.getAttribute('data-state')!))
      )
    },
    `col-${client}`,
    { timeout, polling: 100 },
  )

describe.skipIf(!hasChromium)('the demo in Chromium', () => {
  let demo: Demo
  let browser: Browser
  let context: BrowserContext
  let dataDir: string

  beforeAll(async () => {
    // the page is bundled from the packages' dist, as `npm start` does after `npm run build`
    await promisify(execFile)('npm', ['run', 'build'], { cwd: root })
    dataDir = await mkdtemp(join(tmpdir(), 'tokenflow-demo-'))
    ;[demo, browser] = await Promise.all([
      // long enough that a burst slowed down by a loaded machine (CI runs every suite at once) still ends
      // before the token its refresh brought needs refreshing again (at its expiry less the 1 s leeway)
      startDemo({ dataDir, port: 0, accessTokenTtl: 8_000 }),
      chromium.launch({
        executablePath: CHROMIUM_PATH,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-background-networking',
          '--disable-component-update',
          '--no-first-run',
          '--disable-sync',
        ],
      }),
    ])
    context = await browser.newContext({ viewport: { width: 1440, height: 900 } })
  }, 120_000)

  afterAll(async () => {
    // a Chromium that does not close in 10 s must not fail a run whose tests passed
    await Promise.race([
      browser?.close().catch(() => {}),
      new Promise((resolve) => setTimeout(resolve, 10_000)),
    ])
    await demo?.close()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  }, 60_000)

  it('bug: after the server was started again with another --access-ttl, the page kept showing the old lifetime', async () => {
    const ownDir = await mkdtemp(join(tmpdir(), 'tokenflow-demo-restart-'))
    let other = await startDemo({ dataDir: ownDir, port: 0, accessTokenTtl: 8_000 })
    const page = await context.newPage()
    try {
      await page.goto(other.url)
      await page.waitForSelector('body[data-ready]')
      const line = page.locator('#server-line')
      await page.waitForFunction(() =>
        document.getElementById('server-line')?.textContent?.includes('live 8 s'),
      )
      await other.close()
      await page.waitForFunction(() =>
        document.getElementById('server-line')?.textContent?.includes('does not answer'),
      )
      other = await startDemo({
        dataDir: ownDir,
        port: Number(new URL(other.url).port),
        accessTokenTtl: 30_000,
      })
      await page.waitForFunction(
        () => document.getElementById('server-line')?.textContent?.includes('Access tokens live 30 s'),
        undefined,
        { timeout: 15_000 },
      )
      await expect(line.textContent()).resolves.not.toContain('live 8 s')
    } finally {
      await page.close()
      await other.close().catch(() => {})
      await rm(ownDir, { recursive: true, force: true })
    }
  }, 40_000)

  it('serves the page, its script and the API on one origin, and refuses the API without a token', async () => {
    expect(demo.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect(demo.createdUser).toBe(true)
    const page = await fetch(demo.url)
    expect(page.status).toBe(200)
    expect(page.headers.get('content-type')).toMatch(/^text\/html/)
    expect(await page.text()).toContain('<script type="module" src="/demo.js"></script>')
    const script = await fetch(`${demo.url}/demo.js`)
    expect(script.status).toBe(200)
    expect(script.headers.get('content-type')).toMatch(/^text\/javascript/)
    const api = await fetch(`${demo.url}/api/items/1`)
    expect(api.status).toBe(401)
    expect(api.headers.get('www-authenticate')).toMatch(/^Bearer /)
    expect(await api.json()).toMatchObject({ error: 'invalid_token', code: 'ERR_TOKEN_MISSING' })
  })

  it('fires 50 requests: tokenflow makes 1 refresh and gets 50 ok; the recipe hangs or replays', async () => {
    const page = await context.newPage()
    const errors: Error[] = []
    page.on('pageerror', (error) => errors.push(error))
    await page.goto(demo.url)
    await page.waitForSelector('body[data-ready]')

    await expect(page.getByLabel('User').inputValue()).resolves.toBe(demo.username)
    // a wrong password first: the server answers 400 ERR_INVALID_CREDENTIALS, and the page says what it means
    await page.getByLabel('Password').fill(`${demo.password}-wrong`)
    await page.getByRole('button', { name: 'Log in' }).click()
    await page.getByText('Wrong user or password.', { exact: false }).waitFor()
    await page.getByLabel('Password').fill(demo.password)
    await page.getByRole('button', { name: 'Log in' }).click()
    await page.getByRole('button', { name: 'Log out' }).waitFor()
    await page.getByRole('switch', { name: 'Run the original recipe side by side' }).check()
    await expect(page.getByRole('spinbutton', { name: 'Requests' }).inputValue()).resolves.toBe('50')
    await expect(page.getByLabel('Send across the next expiry').isChecked()).resolves.toBe(true)
    await page.getByRole('button', { name: 'Fire through axios' }).click()

    // tokenflow: every row ends ok, after one rotation of its session's refresh token
    await settled(page, 'tokenflow', 15_000)
    await expect(page.locator('#col-tokenflow li.row').count()).resolves.toBe(50)
    await expect(page.locator('#col-tokenflow li.row[data-state="ok"]').count()).resolves.toBe(50)
    await expect(page.locator('#col-tokenflow li.row:not([data-replayed="0"])').count()).resolves.toBe(0)
    const sid = await tokenflowSession(page)
    expect(demo.session(sid)).toEqual({ refreshes: 1, reuseDetected: 0 })
    // the page polls the server's counts twice a second
    await page.waitForFunction(
      () => document.querySelector('#col-tokenflow [data-counter="refreshes"] dd')?.textContent !== '0',
      undefined,
      { timeout: 5_000 },
    )
    const counts = Object.fromEntries(
      await Promise.all(
        ['requests', 'ok', 'refreshes', 'reuseDetected', 'failed', 'hung', 'replayed'].map(
          async (name) => [name, await counter(page, 'tokenflow', name)] as const,
        ),
      ),
    )
    expect(counts).toEqual({
      requests: '50',
      ok: '50',
      refreshes: '1',
      reuseDetected: '0',
      failed: '0',
      hung: '0',
      replayed: '0',
    })
    await expect(page.locator('#col-tokenflow [data-verdict]').textContent()).resolves.toBe('50 of 50 ok.')

    // the recipe, same burst, same server: its first 401 starts a refresh it never retries (hung), and
    // each late 401 starts another refresh that sends every earlier request again (replayed)
    await settled(page, 'recipe', 15_000)
    const hung = await page.locator('#col-recipe li.row[data-state="hung"]').count()
    const replayed = await page.locator('#col-recipe li.row:not([data-replayed="0"])').count()
    expect(hung + replayed).toBeGreaterThan(0)
    await expect(counter(page, 'recipe', 'hung')).resolves.toBe(String(hung))
    expect(Number(await counter(page, 'recipe', 'replayed'))).toBeGreaterThanOrEqual(replayed)
    await expect(page.locator('#col-recipe [data-verdict]').getAttribute('data-tone')).resolves.toBe('bad')
    expect(errors).toEqual([])

    // the picture the README shows: both columns after the same burst
    await page.evaluate(() => (document.activeElement as HTMLElement | null)?.blur())
    await page.mouse.move(0, 0)
    const shots = process.env.TOKENFLOW_UPDATE_SCREENSHOT === '1' ? join(root, 'docs') : tmpdir()
    await mkdir(shots, { recursive: true })
    const shot = await page.screenshot({ path: join(shots, 'demo.png'), fullPage: true })
    // a PNG of the page, not an empty capture
    expect(shot.subarray(1, 4).toString('latin1')).toBe('PNG')
    expect(shot.length).toBeGreaterThan(20_000)

    // logging out keeps the columns as the burst left them: the refresh it made still counts (it read 0
    // once the page polled the server again, beside 50 requests and 5 401s). The recipe's column too (its
    // refreshes read 0 after a logout, beside the requests and 401s it kept)
    const recipeRefreshes = await counter(page, 'recipe', 'refreshes')
    expect(Number(recipeRefreshes)).toBeGreaterThan(0)
    await page.getByRole('button', { name: 'Log out' }).click()
    await page.getByRole('button', { name: 'Log in' }).waitFor()
    // the page polls the server twice a second: three polls later
    await page.waitForTimeout(1_500)
    await expect(counter(page, 'tokenflow', 'refreshes')).resolves.toBe('1')
    await expect(counter(page, 'tokenflow', 'requests')).resolves.toBe('50')
    await expect(counter(page, 'recipe', 'refreshes')).resolves.toBe(recipeRefreshes)
    await expect(counter(page, 'recipe', 'requests')).resolves.toBe('50')
    // logged out, the recipe's column says so, rather than "log out and in again"
    await expect(page.locator('#col-recipe [data-expiry-text]').textContent()).resolves.toBe('Not logged in.')
    // logged in again for the next test, which shares this browser profile: the form still names the user
    await expect(page.getByLabel('User').inputValue()).resolves.toBe(demo.username)
    await page.getByLabel('Password').fill(demo.password)
    await page.getByRole('button', { name: 'Log in' }).click()
    await page.getByRole('button', { name: 'Log out' }).waitFor()
    await page.close()
  }, 40_000)

  it('two tabs share one refresh: both bursts across the same expiry, one rotation, no reuse', async () => {
    const first = await context.newPage()
    await first.goto(demo.url)
    await first.waitForSelector('body[data-ready]')
    // the session of the previous test is in this profile's localStorage
    await first.getByRole('button', { name: 'Log out' }).waitFor()
    await first.getByRole('switch', { name: 'Run the original recipe side by side' }).uncheck()

    const opened = context.waitForEvent('page')
    await first.getByRole('button', { name: 'Open another tab' }).click()
    const second = await opened
    await second.waitForSelector('body[data-ready]')
    await second.getByRole('button', { name: 'Log out' }).waitFor()
    const sid = await tokenflowSession(first)
    expect(await tokenflowSession(second)).toBe(sid)
    const before = demo.session(sid)

    // once the previous test's token has expired, one request refreshes it: both bursts then start from a
    // token with a whole lifetime left, so both tabs send across its expiry, not one across an expiry that
    // is almost there and the other across the next one
    await first.waitForFunction((expiry) => Date.now() >= expiry, await accessExpiry(first), {
      timeout: 10_000,
    })
    await first.getByLabel('Send across the next expiry').uncheck()
    await first.getByRole('spinbutton', { name: 'Requests' }).fill('1')
    await first.getByRole('button', { name: 'Fire through fetch' }).click()
    await settled(first, 'tokenflow', 10_000)
    await expect(first.locator('#col-tokenflow li.row[data-state="ok"]').count()).resolves.toBe(1)
    const ready = demo.session(sid)
    expect(ready.refreshes - before.refreshes).toBe(1)

    await first.getByLabel('Send across the next expiry').check()
    await first.getByRole('spinbutton', { name: 'Requests' }).fill('50')
    await Promise.all([
      first.getByRole('button', { name: 'Fire through fetch' }).click(),
      second.getByRole('button', { name: 'Fire through axios' }).click(),
    ])
    await Promise.all([settled(first, 'tokenflow', 15_000), settled(second, 'tokenflow', 15_000)])
    for (const tab of [first, second]) {
      await expect(tab.locator('#col-tokenflow li.row[data-state="ok"]').count()).resolves.toBe(50)
    }
    expect(demo.session(sid)).toEqual({ refreshes: ready.refreshes + 1, reuseDetected: 0 })
    expect(demo.stats().reuseDetected).toBe(0)
    await second.close()
    await first.close()
  }, 40_000)

  it("the recipe switched on later runs the same burst: its requests leave with tokenflow's, though its own token expired long ago", async () => {
    const page = await context.newPage()
    await page.goto(demo.url)
    await page.waitForSelector('body[data-ready]')
    await page.getByRole('button', { name: 'Log out' }).waitFor()
    // nothing has refreshed the recipe's token since the login of the first test: it expired long ago
    const recipeExpiry = await page.evaluate(() => {
      const payload = localStorage.getItem('accessToken')?.split('.')[1] ?? ''
      return (JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as { exp: number }).exp * 1000
    })
    expect(recipeExpiry).toBeLessThan(Date.now())
    await page.getByRole('switch', { name: 'Run the original recipe side by side' }).check()
    await page.getByLabel('Send across the next expiry').check()
    await page.getByRole('spinbutton', { name: 'Requests' }).fill('10')
    await page.getByRole('button', { name: 'Fire through axios' }).click()

    // was: the recipe's 10 went at once ("all sent at once"), seconds before tokenflow's first one left
    const caption = 'requests through axios, sent across the expiry T of the access token'
    await expect(page.locator('#col-tokenflow [data-caption]').textContent()).resolves.toBe(`10 ${caption}`)
    await expect(page.locator('#col-recipe [data-caption]').textContent()).resolves.toBe(`10 ${caption}`)
    await expect(page.locator('#col-recipe [data-verdict]').textContent()).resolves.toMatch(
      /^Burst scheduled: the first requests leave in /,
    )
    await Promise.all([settled(page, 'tokenflow', 15_000), settled(page, 'recipe', 15_000)])
    await expect(page.locator('#col-tokenflow li.row[data-state="ok"]').count()).resolves.toBe(10)
    await page.close()
  }, 40_000)

  it('bug: after a pause, "Send across the next expiry" sent all at once: the expired token is refreshed first, and the burst goes across the new one\'s expiry', async () => {
    const page = await context.newPage()
    await page.goto(demo.url)
    await page.waitForSelector('body[data-ready]')
    await page.getByRole('button', { name: 'Log out' }).waitFor()
    await page.getByRole('switch', { name: 'Run the original recipe side by side' }).uncheck()
    // the page left idle until its token has expired: nothing refreshes it before a request needs it
    await page.waitForFunction((expiry) => Date.now() >= expiry, await accessExpiry(page), {
      timeout: 10_000,
    })
    const sid = await tokenflowSession(page)
    const before = demo.session(sid)
    await page.getByLabel('Send across the next expiry').check()
    await page.getByRole('spinbutton', { name: 'Requests' }).fill('10')
    await page.getByRole('button', { name: 'Fire through axios' }).click()
    // was: "10 requests through axios, all sent at once", with no 401 and no retry to show
    await page.waitForFunction(
      () => document.querySelector('#col-tokenflow [data-caption]')?.textContent?.startsWith('10 requests'),
      undefined,
      { timeout: 5_000 },
    )
    await expect(page.locator('#col-tokenflow [data-caption]').textContent()).resolves.toBe(
      '10 requests through axios, sent across the expiry T of the access token',
    )
    await settled(page, 'tokenflow', 15_000)
    await expect(page.locator('#col-tokenflow li.row[data-state="ok"]').count()).resolves.toBe(10)
    // the refresh before the burst, and the one at its expiry
    expect(demo.session(sid)).toEqual({ refreshes: before.refreshes + 2, reuseDetected: 0 })
    await page.close()
  }, 40_000)
})
