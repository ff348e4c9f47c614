/**
 * The demo page: log in, fire bursts of requests through tokenflow (axios or fetch) and, side by side,
 * through the recipe's interceptor, and watch each request on a timeline. Bundled by esbuild at startup
 * from the built packages (see ../start-demo.ts).
 */
import { createTokenManager, isTokenflowError, jsonRefresh, webStorage } from '@tokenflow/client'
import { idOf, itemUrl, recipeAxios, recipeStorage, tokenflowAxios, tokenflowFetch } from './clients.js'
import { Column } from './timeline.js'

/** ms before expiry at which tokenflow refreshes on the next request (the default 30 s suits 15-minute tokens) */
const LEEWAY = 1_000
/** how long a "slow link" request is on its way: sent before the refresh window, it lands after the expiry */
const SLOW_LATENCY = LEEWAY + 300
const USER_KEY = 'tokenflow-demo:user'
const SWITCH_KEY = 'tokenflow-demo:recipe'

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T

const storage = webStorage(localStorage, { key: 'tokenflow-demo' })
const manager = createTokenManager({
  refresh: jsonRefresh('/refresh/token'),
  storage,
  leeway: LEEWAY,
  channel: 'tokenflow-demo',
})

const tokenflow = new Column($('col-tokenflow'), () => manager.status === 'refreshing')
// the recipe sends every request at once with whatever token it has: nothing of it waits before a 401
const recipe = new Column($('col-recipe'), () => false)

const hooksOf = (column: Column) => ({
  queued: (id: number) => column.queued(id),
  sent: (id: number) => column.sent(id),
  answered: (id: number, status: number) => column.answered(id, status),
})
/**
 * A request marked slow spends SLOW_LATENCY on its first trip: it carries the token it was given before
 * the expiry to the server after it. Retries and replays travel at normal speed, so what decides their
 * fate is the token they carry, not the link.
 */
const linkOf =
  (column: Column, prefix: string) =>
  (url: string): number => {
    const id = idOf(url, prefix)
    return url.includes('link=slow') && id !== undefined && column.sends(id) <= 1 ? SLOW_LATENCY : 0
  }
const tfAxios = tokenflowAxios(manager, {
  prefix: 'tf',
  hooks: hooksOf(tokenflow),
  link: linkOf(tokenflow, 'tf'),
})
const tfFetch = tokenflowFetch(manager, {
  prefix: 'tf',
  hooks: hooksOf(tokenflow),
  link: linkOf(tokenflow, 'tf'),
})
const rcAxios = recipeAxios({
  prefix: 'rc',
  hooks: hooksOf(recipe),
  link: linkOf(recipe, 'rc'),
  refresh: {
    started: () => recipe.refreshStarted(),
    ended: (ok) => recipe.refreshEnded(ok ? 'ok' : 'failed'),
  },
})

// -- session ----------------------------------------------------------------------------------------

interface Claims {
  exp?: number
  iat?: number
  sid?: string
}

/** The payload of a JWT, read without verifying it: only for the countdown and the session id. */
function claimsOf(token: string | null | undefined): Claims | undefined {
  try {
    const payload = token?.split('.')[1]
    if (!payload) return undefined
    return JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as Claims
  } catch {
    return undefined
  }
}

let tfAccess: string | null = null
let tfSid: string | undefined
let rcSid: string | undefined
let loggedOutReason = ''

function useTokenflowToken(token: string | null): void {
  tfAccess = token
  const sid = claimsOf(token)?.sid
  // another tab logged in again: a new session, so new counts
  if (sid && tfSid && sid !== tfSid) tokenflow.reset()
  if (sid) tfSid = sid
}

manager.subscribe((event) => {
  if (event.type === 'refreshStarted') tokenflow.refreshStarted()
  else if (event.type === 'refreshed') {
    tokenflow.refreshEnded(event.source === 'local' ? 'ok' : 'otherTab')
    useTokenflowToken(event.tokens.accessToken)
    loggedOutReason = ''
  } else if (event.type === 'refreshFailed') tokenflow.refreshEnded('failed')
  else if (event.type === 'loggedOut') {
    tfAccess = null
    loggedOutReason =
      event.reason === 'refreshRejected'
        ? 'The server refused the refresh token (the session was revoked), so tokenflow logged out, once.'
        : event.reason === 'otherTab'
          ? 'Logged out in another tab.'
          : ''
  }
})

const loginForm = $<HTMLFormElement>('login')
const signedIn = $('signed-in')
const loginError = $('login-error')
const fireButtons = [$<HTMLButtonElement>('fire-axios'), $<HTMLButtonElement>('fire-fetch')]

async function logIn(
  username: string,
  password: string,
): Promise<{ accessToken: string; refreshToken: string }> {
  const response = await fetch('/auth/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  })
  const body = (await response.json().catch(() => ({}))) as {
    accessToken?: string
    refreshToken?: string
    code?: string
  }
  if (response.ok && body.accessToken && body.refreshToken) {
    return { accessToken: body.accessToken, refreshToken: body.refreshToken }
  }
  throw new Error(
    // the server answers a wrong password 400 invalid_grant (RFC 6749 section 5.2), with its own code
    body.code === 'ERR_INVALID_CREDENTIALS' || response.status === 401
      ? 'Wrong user or password. The password is printed in the terminal that runs npm start.'
      : response.status === 429
        ? 'Too many login attempts: wait a minute, then try again.'
        : `The login failed (HTTP ${response.status}).`,
  )
}

loginForm.addEventListener('submit', async (event) => {
  event.preventDefault()
  const data = new FormData(loginForm)
  const username = String(data.get('username') ?? '')
  const password = String(data.get('password') ?? '')
  const submit = loginForm.querySelector<HTMLButtonElement>('button[type=submit]')!
  submit.disabled = true
  loginError.textContent = ''
  try {
    // two sessions: tokenflow's and the recipe's, so neither one's refresh spends the other's token
    const [mine, theirs] = await Promise.all([logIn(username, password), logIn(username, password)])
    tokenflow.reset()
    recipe.reset()
    localStorage.setItem(USER_KEY, username)
    await recipeStorage.multiSet([
      ['accessToken', theirs.accessToken],
      ['refreshToken', theirs.refreshToken],
    ])
    await manager.setTokens(mine)
    tfSid = undefined
    useTokenflowToken(mine.accessToken)
    loggedOutReason = ''
    loginForm.reset()
    renderSession()
    fireButtons[0]!.focus()
  } catch (error) {
    loginError.textContent = (error as Error).message
  } finally {
    submit.disabled = false
  }
})

$('logout').addEventListener('click', async () => {
  const tokens = await storage.get()
  const theirs = localStorage.getItem('refreshToken')
  const revoke = (refreshToken: string | null | undefined) =>
    refreshToken
      ? fetch('/auth/logout', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ refreshToken }),
        }).catch(() => undefined)
      : undefined
  await Promise.all([revoke(tokens?.refreshToken), revoke(theirs)])
  localStorage.removeItem('accessToken')
  localStorage.removeItem('refreshToken')
  localStorage.removeItem(USER_KEY)
  await manager.clear()
  renderSession()
  $<HTMLInputElement>('password').focus()
})

$('open-tab').addEventListener('click', () => {
  window.open(location.href, '_blank', 'noopener')
})

let shownSignedIn: boolean | undefined
function renderSession(): void {
  const isIn = tfAccess !== null
  if (isIn === shownSignedIn) return
  shownSignedIn = isIn
  loginForm.hidden = isIn
  signedIn.hidden = !isIn
  for (const button of fireButtons) button.disabled = !isIn
  $('who').textContent = localStorage.getItem(USER_KEY) ?? 'demo'
  if (!isIn && loggedOutReason) loginError.textContent = loggedOutReason
}

// -- the recipe switch ------------------------------------------------------------------------------

const recipeSwitch = $<HTMLButtonElement>('recipe-switch')
let recipeOn = localStorage.getItem(SWITCH_KEY) === 'on'
function applySwitch(): void {
  recipeSwitch.setAttribute('aria-checked', String(recipeOn))
  recipe.root.hidden = !recipeOn
  $('columns').classList.toggle('split', recipeOn)
  localStorage.setItem(SWITCH_KEY, recipeOn ? 'on' : 'off')
}
recipeSwitch.addEventListener('click', () => {
  recipeOn = !recipeOn
  applySwitch()
})
applySwitch()

// -- bursts -----------------------------------------------------------------------------------------

const countInput = $<HTMLInputElement>('count')
const atExpiry = $<HTMLInputElement>('at-expiry')

/**
 * When each request leaves. Across an expiry T, as the terminal demo does: a tenth over a slow link just
 * before tokenflow's refresh window (they land after T, with the old token), three tenths inside the window
 * (the first one starts the refresh), the rest just after T.
 */
function plan(count: number, expiry: number | undefined, now: number): Array<{ at: number; slow: boolean }> {
  if (expiry === undefined) return Array.from({ length: count }, () => ({ at: now, slow: false }))
  const slow = Math.floor(count / 10)
  const before = Math.floor((count * 3) / 10)
  return Array.from({ length: count }, (_, index) =>
    index < slow
      ? { at: Math.max(now, expiry - LEEWAY - 100), slow: true }
      : index < slow + before
        ? { at: Math.max(now, expiry - LEEWAY / 2), slow: false }
        : { at: Math.max(now, expiry + 100), slow: false },
  )
}

function reasonOf(error: unknown): string {
  if (isTokenflowError(error)) return error.code
  const { response, status, code, name } = (error ?? {}) as {
    response?: { status?: number }
    status?: number
    code?: string
    name?: string
  }
  const answered = response?.status ?? status
  if (answered) return `HTTP ${answered}`
  return code ?? name ?? 'error'
}

function burst(
  column: Column,
  prefix: string,
  via: 'axios' | 'fetch',
  plans: Array<{ at: number; slow: boolean }>,
  expiry: number | undefined,
): void {
  const ids = column.startBurst(
    plans.map(({ at }) => ({ at, via })),
    expiry,
  )
  // one timer per departure time, so each group leaves together
  const groups = new Map<number, Array<{ id: number; slow: boolean }>>()
  plans.forEach(({ at, slow }, index) => {
    const group = groups.get(at) ?? []
    group.push({ id: ids[index]!, slow })
    groups.set(at, group)
  })
  for (const [at, group] of groups) {
    setTimeout(
      () => {
        for (const { id, slow } of group) {
          const url = itemUrl(prefix, id, slow)
          const request =
            prefix === 'rc' ? rcAxios.get(url) : via === 'axios' ? tfAxios.get(url) : tfFetch(url)
          request.then(
            () => column.settle(id, true),
            (error: unknown) => column.settle(id, false, reasonOf(error)),
          )
        }
      },
      Math.max(0, at - Date.now()),
    )
  }
}

async function fire(via: 'axios' | 'fetch'): Promise<void> {
  if (!tfAccess) return
  // an empty or unreadable field means the default; anything else is clamped to 1..500 (0 and -3 alike: 1)
  const typed = Math.round(countInput.valueAsNumber)
  const count = Number.isNaN(typed) ? 50 : Math.min(500, Math.max(1, typed))
  countInput.value = String(count)
  // a page left idle holds an expired token (nothing refreshes one before a request needs it), which has no
  // next expiry to send across: it is refreshed first, and the burst goes across the new token's expiry
  let token: string | null = tfAccess
  const held = claimsOf(token)?.exp
  if (atExpiry.checked && held !== undefined && held * 1_000 <= Date.now()) {
    // a failed refresh shows in the column (and logs out if the server refused it)
    token = await manager.getAccessToken().catch(() => null)
    if (!token) return
  }
  const exp = claimsOf(token)?.exp
  const now = Date.now()
  const expiry = atExpiry.checked && exp !== undefined && exp * 1_000 > now ? exp * 1_000 : undefined
  const plans = plan(count, expiry, now)
  burst(tokenflow, 'tf', via, plans, expiry)
  const theirs = localStorage.getItem('accessToken')
  if (!recipeOn || !theirs) return
  // the same burst: across the recipe's own expiry while its token is valid (the two logins' tokens may
  // expire a second apart); once it has expired (nothing refreshes it before a 401, so after a pause it has
  // long expired), at the same moments as tokenflow's requests, with that expired token
  const theirExp = claimsOf(theirs)?.exp
  const theirExpiry =
    atExpiry.checked && theirExp !== undefined && theirExp * 1_000 > now ? theirExp * 1_000 : undefined
  if (theirExpiry === undefined) burst(recipe, 'rc', 'axios', plans, expiry)
  else burst(recipe, 'rc', 'axios', plan(count, theirExpiry, now), theirExpiry)
}
fireButtons[0]!.addEventListener('click', () => void fire('axios'))
fireButtons[1]!.addEventListener('click', () => void fire('fetch'))

// -- countdowns, server counts, drawing -------------------------------------------------------------

function renderExpiry(column: Column, token: string | null, isRecipe: boolean, now: number): void {
  const text = column.root.querySelector<HTMLElement>('[data-expiry-text]')!
  const fill = column.root.querySelector<HTMLElement>('[data-expiry-fill]')!
  const claims = claimsOf(token)
  let message: string
  let share = 0
  let state = 'none'
  if (claims?.exp && column.counters.reuseDetected > 0) {
    // the server saw a rotated refresh token again and revoked the whole session (RFC 9700 section 4.14.2)
    message =
      'Session revoked: a rotated refresh token was used again. Every refresh fails now; log out and in again.'
    state = 'revoked'
  } else if (!claims?.exp) {
    message =
      isRecipe && tfAccess ? 'No session: log out and in again to give the recipe one.' : 'Not logged in.'
  } else {
    const remaining = claims.exp * 1_000 - now
    const lifetime = (claims.exp - (claims.iat ?? claims.exp - 10)) * 1_000
    share = Math.max(0, Math.min(1, remaining / lifetime))
    if (remaining > LEEWAY || (isRecipe && remaining > 0)) {
      message = `Access token expires in ${(remaining / 1_000).toFixed(1)} s`
      state = 'fresh'
    } else if (remaining > 0) {
      message = `Access token expires in ${(remaining / 1_000).toFixed(1)} s: the next request refreshes it first`
      state = 'soon'
    } else {
      message = `Access token expired ${(-remaining / 1_000).toFixed(1)} s ago: ${
        isRecipe ? 'the next request gets a 401' : 'the next request refreshes it first'
      }`
      state = 'expired'
    }
  }
  if (text.textContent !== message) text.textContent = message
  fill.style.width = `${(state === 'revoked' ? 0 : share * 100).toFixed(1)}%`
  fill.dataset.state = state
  text.dataset.state = state
}

function frame(): void {
  const now = Date.now()
  const theirs = localStorage.getItem('accessToken')
  const theirSid = claimsOf(theirs)?.sid
  // a new recipe session (a login here or in another tab) starts new counts; after a logout the counts
  // stay those of the session it ended, as tokenflow's do
  if (theirSid && theirSid !== rcSid) {
    if (rcSid) recipe.reset()
    rcSid = theirSid
  }
  renderSession()
  renderExpiry(tokenflow, tfAccess, false, now)
  renderExpiry(recipe, theirs, true, now)
  tokenflow.render(now)
  recipe.render(now)
  requestAnimationFrame(frame)
}

interface StatsAnswer {
  server: {
    refreshes: number
    reuseDetected: number
    logins: number
    apiRequests: number
    apiUnauthorized: number
  }
  sessions: Record<string, { refreshes: number; reuseDetected: number }>
}

let config = { username: 'demo', accessTokenTtl: 10_000, reuseGrace: 0 }
/** The server's settings; on failure the ones the page has are kept. */
async function loadConfig(): Promise<void> {
  try {
    const response = await fetch('/demo/config')
    if (response.ok) config = { ...config, ...((await response.json()) as typeof config) }
  } catch {
    // keep them
  }
}
/** polls in a row the server did not answer: each one waits twice as long, up to 10 s */
let unanswered = 0
async function pollStats(): Promise<void> {
  try {
    const sids = [tfSid, rcSid].filter((sid): sid is string => sid !== undefined)
    const response = await fetch(`/demo/stats?sid=${sids.join(',')}`)
    // back after it was gone: it may have been started again with other settings (--access-ttl)
    if (unanswered > 0) await loadConfig()
    unanswered = 0
    if (!response.ok) {
      $('server-line').textContent = `The server answered ${response.status} to the page's poll.`
      return
    }
    const { server, sessions } = (await response.json()) as StatsAnswer
    const mine = (tfSid && sessions[tfSid]) || { refreshes: 0, reuseDetected: 0 }
    const theirs = (rcSid && sessions[rcSid]) || { refreshes: 0, reuseDetected: 0 }
    // after a logout, as the recipe's column does, the counts stay those of the session it ended
    tokenflow.serverCounts(tfSid ? mine.refreshes : 0, mine.reuseDetected)
    recipe.serverCounts(rcSid ? theirs.refreshes : 0, theirs.reuseDetected)
    const count = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`
    $('server-line').textContent =
      `Server, all sessions since it started: ${count(server.apiRequests, 'API request', 'API requests')}, ` +
      `${server.apiUnauthorized} answered 401, ${count(server.refreshes, 'refresh', 'refreshes')}, ` +
      `${count(server.reuseDetected, 'reuse detection', 'reuse detections')}. Access tokens live ` +
      `${config.accessTokenTtl / 1_000} s; refresh tokens rotate with a reuse grace of ${config.reuseGrace} ms, ` +
      'so any second use of a refresh token revokes its session.'
  } catch {
    // the server is gone (Ctrl+C): the page keeps what it has, and asks less often (each failed fetch is a
    // line in the browser's console)
    unanswered++
    $('server-line').textContent = 'The server does not answer: is npm start still running?'
  } finally {
    setTimeout(pollStats, Math.min(10_000, 500 * 2 ** unanswered))
  }
}

async function start(): Promise<void> {
  await loadConfig()
  // the default value, so that the form keeps it after a logout (which resets the form)
  const username = $<HTMLInputElement>('username')
  if (!username.value) username.defaultValue = config.username
  // a session another tab (or an earlier visit) left in storage; unreadable storage means none
  const stored = await Promise.resolve()
    .then(() => storage.get())
    .catch(() => null)
  if (stored) useTokenflowToken(stored.accessToken)
  document.body.dataset.ready = 'true'
  requestAnimationFrame(frame)
  void pollStats()
}

void start()
