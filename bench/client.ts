/**
 * The client part of `npm run bench`: the per-request cost of each token library on top of axios,
 * and the min+gzip size of an app that uses it. Peers are measured side by side in one run.
 *
 * Benchmarks are not tests: the budgets are reported as PASS or FAIL and never fail the process.
 * Run on the BUILT packages (`npm run build` first): that is what an app installs.
 */
import { readFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { gzipSync } from 'node:zlib'
import { createTokenManager, jsonRefresh } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'
import axios, { type AxiosAdapter, type AxiosInstance } from 'axios'
import { createAuthRefresh } from 'axios-auth-refresh'
import { applyAuthTokenInterceptor, type StorageType, setAuthTokens } from 'axios-jwt'
import { build, type Metafile } from 'esbuild'
import type { BenchPartResult } from './run.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

/** tokenflow's per-request cost may be at most this many times bare axios's */
const overheadBudget = 1.1
/** min+gzip bytes of the tokenflow app; the same 2.5 KB that `.size-limit.json` enforces in `npm test` */
const sizeBudget = 2560
const warmupRounds = 3
const rounds = 20
const requestsPerRound = 2_000

type Library = 'bare' | 'tokenflow' | 'axiosAuthRefresh' | 'axiosJwt'
const libraries: readonly Library[] = ['bare', 'tokenflow', 'axiosAuthRefresh', 'axiosJwt']
const labels: Record<Library, string> = {
  bare: 'bare axios',
  tokenflow: 'tokenflow',
  axiosAuthRefresh: 'axios-auth-refresh',
  axiosJwt: 'axios-jwt',
}

export interface ClientBenchResult {
  machine: { cpus: number; model: string; node: string }
  date: string
  versions: { axios: string; axiosAuthRefresh: string; axiosJwt: string }
  overhead: {
    method: string
    rounds: number
    requestsPerRound: number
    /** CPU time of this process per request, median over the rounds */
    nsPerRequest: Record<Library, number>
    /** the 25th and 75th percentile of `nsPerRequest` over the rounds, to show the noise */
    spread: Record<Library, [number, number]>
    /** the median over the rounds of (the library's CPU time / bare axios's in the same round) */
    ratio: Record<Library, number>
    /** wall-clock time per request, median over the same rounds: noisier when other processes share the cores */
    wallNsPerRequest: Record<Library, number>
    wallRatio: Record<Library, number>
    /** a second bare-axios instance against the first (an A/A test): the noise floor of `ratio` */
    control: { ratio: number; wallRatio: number }
    budget: number
    pass: boolean
  }
  size: {
    method: string
    tokenflow: number
    axiosAuthRefresh: number
    axiosJwt: number
    /** the same app on fetch: createTokenManager + jsonRefresh + webStorage + createAuthFetch */
    tokenflowFetch: number
    /** the cross-tab module alone (BroadcastChannel, storage event, rotation signal), part of createTokenManager */
    crossTab: number
    /** bytes in the minified (not gzipped) tokenflow bundle per source file, largest first */
    tokenflowContributors: Record<string, number>
    budget: number
    pass: boolean
  }
}

// ---------------------------------------------------------------------------------------------
// Overhead

/** A JWT-shaped access token of a realistic size (ES256) that expires in an hour: no refresh runs. */
function accessToken(): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const iat = Math.floor(Date.now() / 1000)
  const claims = {
    iss: 'https://auth.example.com',
    sub: 'user-1234567890',
    aud: 'https://api.example.com',
    exp: iat + 3600,
    iat,
    jti: 'b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d',
    client_id: 'web',
    sid: 'f4c2a1b0e9d8c7b6',
  }
  return `${part({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' })}.${part(claims)}.${'s'.repeat(86)}`
}

/** What the in-process "server" saw last, to check every setup really sends the token. */
const seen = { authorization: undefined as unknown }

/** Answers every request at once with a 200: no socket, no timer, so only the client side is measured. */
const adapter: AxiosAdapter = (config) => {
  seen.authorization = config.headers.Authorization
  return Promise.resolve({
    data: { ok: true },
    status: 200,
    statusText: 'OK',
    headers: {},
    config,
    request: {},
  })
}

/**
 * Both peers ship CommonJS typings, which see axios's CommonJS declaration file: the same runtime
 * instance, but a type TypeScript cannot match with the ESM one.
 */
const asCommonJs = (instance: AxiosInstance) => instance as unknown as Parameters<typeof createAuthRefresh>[0]

const neverRefresh = () => Promise.reject(new Error('the benchmark token never expires'))

async function setUp(token: string): Promise<Record<Library | 'bareControl', AxiosInstance>> {
  const create = () => axios.create({ baseURL: 'https://api.example.com', adapter })

  // the baseline: what every app does anyway, a static bearer header
  const createBare = () => {
    const instance = create()
    instance.interceptors.request.use((config) => {
      config.headers.Authorization = `Bearer ${token}`
      return config
    })
    return instance
  }
  const bare = createBare()
  const bareControl = createBare()

  const tokenflow = create()
  const manager = createTokenManager({ refresh: jsonRefresh('https://api.example.com/refresh/token') })
  await manager.setTokens({ accessToken: token, refreshToken: 'rt' })
  attachTokenRefresh(tokenflow, manager)

  // axios-auth-refresh 5 with its default settings, plus the request interceptor its README shows
  const axiosAuthRefresh = create()
  createAuthRefresh(asCommonJs(axiosAuthRefresh), neverRefresh)
  axiosAuthRefresh.interceptors.request.use((request) => {
    request.headers.Authorization = `Bearer ${token}`
    return request
  })

  // axios-jwt 4 takes any storage through `getStorage`: an in-memory one, like tokenflow's default
  const axiosJwt = create()
  const memory = new Map<string, string>()
  const storage: StorageType = {
    get: async (key) => memory.get(key) ?? null,
    set: async (key, value) => void memory.set(key, value),
    remove: async (key) => void memory.delete(key),
  }
  applyAuthTokenInterceptor(asCommonJs(axiosJwt), { requestRefresh: neverRefresh, getStorage: () => storage })
  await setAuthTokens({ accessToken: token, refreshToken: 'rt' })

  const instances = { bare, bareControl, tokenflow, axiosAuthRefresh, axiosJwt }
  // a setup that forgot the token would look fast for the wrong reason
  for (const [name, instance] of Object.entries(instances)) {
    seen.authorization = undefined
    await instance.get('/me')
    if (seen.authorization !== `Bearer ${token}`) throw new Error(`"${name}" did not send the access token`)
  }
  return instances
}

/**
 * CPU and wall-clock ns per request over `count` sequential requests.
 * CPU time is the process's (every thread), so there is no forced GC between rounds: V8's helper threads
 * go on sweeping after one and bill it to the next round (it doubled bare axios's figure when tried).
 */
async function timeRound(instance: AxiosInstance, count: number): Promise<{ cpu: number; wall: number }> {
  const cpuStart = process.cpuUsage()
  const start = process.hrtime.bigint()
  for (let i = 0; i < count; i++) await instance.get('/me')
  const wall = Number(process.hrtime.bigint() - start)
  const { user, system } = process.cpuUsage(cpuStart)
  return { cpu: ((user + system) * 1_000) / count, wall: wall / count }
}

const quantile = (values: number[], q: number): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const position = (sorted.length - 1) * q
  const low = Math.floor(position)
  const high = Math.ceil(position)
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (position - low)
}

async function measureOverhead(): Promise<ClientBenchResult['overhead']> {
  const instances = await setUp(accessToken())
  type Measured = Library | 'control'
  // a second bare instance, measured like the others: how far apart two identical setups land is the noise floor
  const measured: readonly Measured[] = [...libraries, 'control']
  const run: Record<Measured, AxiosInstance> = { ...instances, control: instances.bareControl }
  const cpu = Object.fromEntries(measured.map((l) => [l, [] as number[]])) as Record<Measured, number[]>
  const wall = Object.fromEntries(measured.map((l) => [l, [] as number[]])) as Record<Measured, number[]>
  for (let round = -warmupRounds; round < rounds; round++) {
    // interleaved, and the order rotates each round so no library always runs first or after the same one
    const offset = ((round % measured.length) + measured.length) % measured.length
    for (let i = 0; i < measured.length; i++) {
      const library = measured[(i + offset) % measured.length]!
      const sample = await timeRound(run[library], requestsPerRound)
      if (round >= 0) {
        cpu[library].push(sample.cpu)
        wall[library].push(sample.wall)
      }
    }
  }
  const perLibrary = <T>(fn: (library: Library) => T) =>
    Object.fromEntries(libraries.map((l) => [l, fn(l)])) as Record<Library, T>
  // each round's time against bare axios's in the same round: the load other processes put on the
  // cores drifts over seconds and cancels out of a pair, where it would not out of two medians
  const pairedRatio = (samples: Record<Measured, number[]>, library: Measured) =>
    Number(
      quantile(
        samples[library].map((ns, r) => ns / samples.bare[r]!),
        0.5,
      ).toFixed(3),
    )
  const ratio = perLibrary((l) => pairedRatio(cpu, l))
  return {
    method: `in-process axios adapter answering 200 at once (no network); ${warmupRounds} warm-up rounds, then ${rounds} rounds of ${requestsPerRound} sequential GETs per library, interleaved in rotating order; ns/request is this process's CPU time (process.cpuUsage), median over the rounds; ratio is the median over the rounds of (library / bare axios in the same round); wall clock alongside`,
    rounds,
    requestsPerRound,
    nsPerRequest: perLibrary((l) => Math.round(quantile(cpu[l], 0.5))),
    spread: perLibrary((l) => [Math.round(quantile(cpu[l], 0.25)), Math.round(quantile(cpu[l], 0.75))]),
    ratio,
    wallNsPerRequest: perLibrary((l) => Math.round(quantile(wall[l], 0.5))),
    wallRatio: perLibrary((l) => pairedRatio(wall, l)),
    control: { ratio: pairedRatio(cpu, 'control'), wallRatio: pairedRatio(wall, 'control') },
    budget: overheadBudget,
    pass: ratio.tokenflow <= overheadBudget,
  }
}

// ---------------------------------------------------------------------------------------------
// Bundle size

/** Each app does what the library's README shows: set it up on an instance, log in, log out. */
const apps = {
  tokenflow: `
import axios from 'axios'
import { createTokenManager, jsonRefresh, webStorage } from '@tokenflow/client'
import { attachTokenRefresh } from '@tokenflow/client/axios'

export const api = axios.create({ baseURL: 'https://api.example.com' })
export const manager = createTokenManager({
  refresh: jsonRefresh('https://api.example.com/refresh/token'),
  storage: webStorage(),
})
attachTokenRefresh(api, manager)
export const login = (tokens) => manager.setTokens(tokens)
export const logout = () => manager.clear()
`,
  tokenflowFetch: `
import { createTokenManager, jsonRefresh, webStorage } from '@tokenflow/client'
import { createAuthFetch } from '@tokenflow/client/fetch'

export const manager = createTokenManager({
  refresh: jsonRefresh('https://api.example.com/refresh/token'),
  storage: webStorage(),
})
export const api = createAuthFetch(manager)
export const login = (tokens) => manager.setTokens(tokens)
export const logout = () => manager.clear()
`,
  crossTab: `export { createCrossTab } from './packages/client/dist/cross-tab.js'`,
  axiosAuthRefresh: `
import axios from 'axios'
import { createAuthRefresh } from 'axios-auth-refresh'

export const api = axios.create({ baseURL: 'https://api.example.com' })
const refreshAuthLogic = (failedRequest) =>
  axios
    .post('https://api.example.com/refresh/token', { refreshToken: localStorage.getItem('refreshToken') })
    .then((response) => {
      localStorage.setItem('accessToken', response.data.accessToken)
      localStorage.setItem('refreshToken', response.data.refreshToken)
      failedRequest.response.config.headers['Authorization'] = 'Bearer ' + response.data.accessToken
      return Promise.resolve()
    })
createAuthRefresh(api, refreshAuthLogic)
api.interceptors.request.use((request) => {
  request.headers['Authorization'] = 'Bearer ' + localStorage.getItem('accessToken')
  return request
})
export const login = (tokens) => {
  localStorage.setItem('accessToken', tokens.accessToken)
  localStorage.setItem('refreshToken', tokens.refreshToken)
}
export const logout = () => {
  localStorage.removeItem('accessToken')
  localStorage.removeItem('refreshToken')
}
`,
  axiosJwt: `
import axios from 'axios'
import { applyAuthTokenInterceptor, clearAuthTokens, getBrowserLocalStorage, setAuthTokens } from 'axios-jwt'

export const api = axios.create({ baseURL: 'https://api.example.com' })
const requestRefresh = async (refreshToken) => {
  const response = await axios.post('https://api.example.com/refresh/token', { refreshToken })
  return { accessToken: response.data.accessToken, refreshToken: response.data.refreshToken }
}
applyAuthTokenInterceptor(api, { requestRefresh, getStorage: getBrowserLocalStorage })
export const login = (tokens) => setAuthTokens(tokens)
export const logout = () => clearAuthTokens()
`,
} as const

async function bundle(name: keyof typeof apps): Promise<{ gzip: number; metafile: Metafile }> {
  const result = await build({
    stdin: { contents: apps[name], resolveDir: root, sourcefile: `${name}-app.js`, loader: 'js' },
    bundle: true,
    minify: true,
    platform: 'browser',
    format: 'esm',
    // every app ships axios anyway: only what the library adds is counted
    external: ['axios'],
    // axios-jwt reads process.env.NODE_ENV; an app's bundler replaces it
    define: { 'process.env.NODE_ENV': '"production"' },
    write: false,
    metafile: true,
    logLevel: 'silent',
  })
  const code = result.outputFiles[0]!.contents
  return { gzip: gzipSync(code, { level: 9 }).length, metafile: result.metafile }
}

async function measureSize(): Promise<ClientBenchResult['size']> {
  const [tokenflow, tokenflowFetch, crossTab, axiosAuthRefresh, axiosJwt] = await Promise.all([
    bundle('tokenflow'),
    bundle('tokenflowFetch'),
    bundle('crossTab'),
    bundle('axiosAuthRefresh'),
    bundle('axiosJwt'),
  ])
  const inputs = Object.values(tokenflow.metafile.outputs)[0]?.inputs ?? {}
  const tokenflowContributors = Object.fromEntries(
    Object.entries(inputs)
      .map(([file, { bytesInOutput }]) => [file, bytesInOutput] as const)
      .filter(([, bytes]) => bytes > 0)
      .sort((a, b) => b[1] - a[1]),
  )
  return {
    method:
      'esbuild bundle of the app (minify, platform browser, format esm, axios external; @tokenflow/* from dist), then gzip level 9',
    tokenflow: tokenflow.gzip,
    tokenflowFetch: tokenflowFetch.gzip,
    crossTab: crossTab.gzip,
    axiosAuthRefresh: axiosAuthRefresh.gzip,
    axiosJwt: axiosJwt.gzip,
    tokenflowContributors,
    budget: sizeBudget,
    pass: tokenflow.gzip <= sizeBudget,
  }
}

// ---------------------------------------------------------------------------------------------

const version = (name: string): string =>
  (JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string })
    .version

const number = (value: number) => value.toLocaleString('en-US')

function table(result: ClientBenchResult): string {
  const { overhead, size, versions } = result
  const names: Record<Library, string> = {
    bare: `bare axios ${versions.axios}`,
    tokenflow: labels.tokenflow,
    axiosAuthRefresh: `${labels.axiosAuthRefresh} ${versions.axiosAuthRefresh}`,
    axiosJwt: `${labels.axiosJwt} ${versions.axiosJwt}`,
  }
  const sizes: Record<Library, string> = {
    bare: '—',
    tokenflow: `${number(size.tokenflow)} B`,
    axiosAuthRefresh: `${number(size.axiosAuthRefresh)} B`,
    axiosJwt: `${number(size.axiosJwt)} B`,
  }
  const rows = libraries.map(
    (l) =>
      `| ${names[l]} | ${number(overhead.nsPerRequest[l])} | ${overhead.ratio[l].toFixed(2)}× | ${overhead.wallRatio[l].toFixed(2)}× | ${sizes[l]} |`,
  )
  const verdict = (pass: boolean) => (pass ? 'PASS' : 'FAIL')
  return [
    '| client | CPU ns/request (median) | vs bare axios | wall clock vs bare | app size, min+gzip |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    'Ratios pair each round with bare axios in the same round, so they need not equal the quotient of the medians when the load on the machine changes during the run.',
    `Noise floor: a second bare-axios instance measured ${overhead.control.ratio.toFixed(2)}× (CPU), ${overhead.control.wallRatio.toFixed(2)}× (wall clock) against the first`,
    `Overhead budget: tokenflow ≤ ${overhead.budget.toFixed(2)}× bare axios: ${overhead.ratio.tokenflow.toFixed(2)}× ${verdict(overhead.pass)}`,
    `Size budget: tokenflow ≤ ${number(size.budget)} B min+gzip: ${number(size.tokenflow)} B ${verdict(size.pass)}`,
    `Also: the same app on fetch (createAuthFetch) ${number(size.tokenflowFetch)} B; the cross-tab module alone ${number(size.crossTab)} B`,
  ].join('\n')
}

/** Runs the client benchmarks. */
export async function run(): Promise<BenchPartResult<ClientBenchResult>> {
  const size = await measureSize()
  const overhead = await measureOverhead()
  const cpu = cpus()
  const result: ClientBenchResult = {
    machine: { cpus: cpu.length, model: cpu[0]?.model ?? 'unknown', node: process.version },
    date: new Date().toISOString(),
    versions: {
      axios: version('axios'),
      axiosAuthRefresh: version('axios-auth-refresh'),
      axiosJwt: version('axios-jwt'),
    },
    overhead,
    size,
  }
  return { result, table: table(result) }
}
