/**
 * The server part of `npm run bench`: refresh throughput and latency of the token server on each
 * store next to the no-database ceiling, the verify middleware next to raw `jose.jwtVerify`, and
 * login throughput with the refresh latency it leaves. Every figure is measured side by side in one
 * run: the targets take turns within each round, so a load spike from another process on the
 * machine hits one round of each, and every figure is the median over the rounds.
 *
 * Benchmarks are not tests: the goals are reported as PASS or FAIL and never fail the process.
 * Run on the BUILT packages (`npm run build` first): that is what an app installs.
 *
 * Settings (environment):
 * - BENCH_DURATION: seconds per target per round (1.5); BENCH_WARMUP: seconds (1.5); BENCH_ROUNDS (5)
 * - BENCH_CONNECTIONS: autocannon connections (50); BENCH_SESSIONS: pre-created sessions (10000)
 * - BENCH_FLOOD_RATE: refreshes/s during the login flood (1000, at most a fifth of SQLite FULL's
 *   throughput in this run, so that the refreshes alone never saturate the server)
 * - BENCH_LOGIN_CONNECTIONS (8); BENCH_PG_POOL: connections per server instance (10)
 * - BENCH_FLOOD_ROUNDS (12) × BENCH_FLOOD_DURATION s per phase (5): the flood's p99 rests on the
 *   latencies of every round pooled (60 s, about 60,000 refreshes per phase at 1000/s), not on 1.5 s windows
 * - BENCH_FLOOD_MAX_FOREIGN: cores (0.25) that other processes may use during a flood
 *   round before the round is left out of the verdict as contended (Linux only)
 * - BENCH_DATABASE_URL (else DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test)
 */
import { randomBytes } from 'node:crypto'
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises'
import { availableParallelism, cpus, loadavg, release, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import type { SessionRecord } from '@tokenflow/server'
import Database from 'better-sqlite3'
import {
  type Figures,
  figures,
  fixedLoad,
  type LoadSample,
  mergeSamples,
  pacedRefreshLoad,
  refreshLoad,
} from './lib/load.js'
import {
  type Chain,
  createChains,
  createSessions,
  seedSqliteFile,
  seedStore,
  serializeSession,
} from './lib/sessions.js'
import { startTarget, type Target } from './lib/target.js'
import type { BenchPartResult } from './run.js'

/** SQLite FULL must reach this share of the ceiling */
const throughputGoal = 0.8
/** the verify middleware must reach this share of raw jose */
const verifyBudget = 0.8
/** refresh p99 under a login flood may be at most this many times its unloaded value */
const floodBudget = 2
/** the hasher cap of the `loginFloodOneHasher` variant */
const oneHasherConcurrency = 1

const settings = {
  duration: envNumber('BENCH_DURATION', 1.5),
  warmup: envNumber('BENCH_WARMUP', 1.5),
  rounds: envNumber('BENCH_ROUNDS', 5),
  connections: envNumber('BENCH_CONNECTIONS', 50),
  sessions: envNumber('BENCH_SESSIONS', 10_000),
  floodRounds: envNumber('BENCH_FLOOD_ROUNDS', 12),
  floodDuration: envNumber('BENCH_FLOOD_DURATION', 5),
  floodMaxForeign: envNumber('BENCH_FLOOD_MAX_FOREIGN', 0.25),
  floodRate: envNumber('BENCH_FLOOD_RATE', 1000),
  /** the flood's refresh rate is capped at this share of SQLite FULL's throughput in the run */
  floodRateShare: 0.2,
  loginConnections: envNumber('BENCH_LOGIN_CONNECTIONS', 8),
  pgPool: envNumber('BENCH_PG_POOL', 10),
}
const databaseUrl =
  process.env.BENCH_DATABASE_URL ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test'

/** Throughput and latency of one target: medians over the rounds. */
export interface TargetFigures extends Figures {
  /** answers with status 200, over every round */
  requests: number
  /** answers other than 200 (a refused refresh is one), plus requests without an answer */
  errors: number
  seconds: number
  /**
   * CPU time (user + system) of the server process(es) per answered request, in µs: less sensitive
   * than rps to other processes on the machine, but blind to time spent waiting (fsync, the network)
   */
  serverCpuUs: number
  /** the figures of each round, in order */
  rounds: Figures[]
}

type RefreshTarget =
  | 'ceiling'
  | 'sqliteFull'
  | 'sqliteFullNoGroupCommit'
  | 'sqliteNormal'
  | 'postgres1'
  | 'postgres2'

export interface ServerBenchResult {
  machine: {
    cpus: number
    model: string
    node: string
    os: string
    memoryMb: number
    /** 1-minute load average before and after the run: other processes on the machine */
    loadAverage: { before: number; after: number }
    /**
     * Latency of a one-row SQLite commit with synchronous=FULL (an fsync of the WAL), in ms, probed
     * in the bench's temp directory before and after the refresh rounds: what a group commit waits for
     */
    fsync: { before: FsyncProbe; after: FsyncProbe }
  }
  date: string
  method: string
  settings: typeof settings & { databaseDir: string; postgres: string }
  /** the same refresh endpoint on a store without I/O: HTTP, validation and signing only */
  ceiling: TargetFigures
  /** SQLite, WAL, synchronous=FULL, group commit (the default) */
  sqliteFull: TargetFigures
  /** SQLite FULL with one commit per rotation: before group commit */
  sqliteFullNoGroupCommit: TargetFigures
  sqliteNormal: TargetFigures
  /** null when PostgreSQL was unreachable (see `postgresSkipped`) */
  postgres1: TargetFigures | null
  postgres2: TargetFigures | null
  postgresSkipped?: string
  /** each target's rps over the ceiling's in the same round, median over the rounds */
  ratios: Record<Exclude<RefreshTarget, 'ceiling'>, number | null>
  goal: { minRatio: number; ratio: number; pass: boolean }
  verify: {
    rps: number
    joseRps: number
    /** rps over raw jose's in the same round, median over the rounds */
    ratio: number
    p99: number
    joseP99: number
    /** server CPU time per request, µs: the verifier's route, and raw jose's */
    cpuUs: number
    joseCpuUs: number
    /** answers other than 200 on either route */
    errors: number
    budget: number
    pass: boolean
  }
  login: Figures & { connections: number; errors: number }
  /** the server as shipped: the built-in users table, Argon2id hashes capped at cores - 1 (at least 1) */
  loginFlood: LoginFlood
  /** the same, with logins checked through `authenticate` by a hasher capped at `oneHasherConcurrency` */
  loginFloodOneHasher: LoginFlood
}

/** Commit latency percentiles, ms. */
export interface FsyncProbe {
  p50: number
  p99: number
  max: number
}

/** Refresh latency at a steady rate, without and with logins saturating the hasher. */
export interface LoginFlood {
  /** p99 over the latencies of every uncontended round pooled, ms */
  refreshP99Unloaded: number
  refreshP99UnderLogins: number
  /** pooled p99 under logins over pooled p99 unloaded, uncontended rounds only */
  ratio: number
  /** 95% bootstrap interval of `ratio`, resampling whole rounds (both phases of a round together) */
  ratioInterval: [number, number]
  /** rounds in the verdict, and rounds left out because other processes used the CPU (see `rounds`) */
  cleanRounds: number
  contendedRounds: number
  /** refreshes per second sent in both phases: `floodRate`, at most `floodRateShare` × SQLite FULL's rps */
  rate: number
  refreshP50Unloaded: number
  refreshP50UnderLogins: number
  refreshErrors: number
  /** logins per second during the flood */
  loginRps: number
  /**
   * refresh p99 of each round, ms, and the CPU that processes other than the bench and this server
   * used meanwhile, in cores (null where /proc/stat is missing)
   */
  rounds: { unloaded: number; underLogins: number; foreignCores: number | null; contended: boolean }[]
  /** how many Argon2id hashes the server ran at once, at most */
  maxConcurrentHashes: number
  budget: number
  /** PASS: the whole interval is within the budget; FAIL: the whole interval is over it; else INCONCLUSIVE */
  verdict: 'PASS' | 'FAIL' | 'INCONCLUSIVE'
  pass: boolean
}

const method = [
  'autocannon on 127.0.0.1 from the bench process; each server in its own process (Fastify, ES256 access tokens, login',
  'rate limits off, SQLite files in the OS temp directory). Refresh: every autocannon connection walks its own share of',
  'the pre-created sessions round robin and always presents the current refresh token (a refused refresh counts as an',
  'error); rps counts 200 answers. The targets take turns within a round after a warm-up, each round starting one target',
  'later than the one before; rps, p50 and p99 are medians',
  'over the rounds, and each ratio is the median over the rounds of the ratio within the round. Verify: one bare',
  'Fastify app with both routes, taking turns, GET with the same ES256 token. Login: POST /auth/login, Argon2id (m=19456, t=2, p=1).',
  'Login flood: refreshes sent at a steady rate (open loop, each timed from when it was due) on SQLite FULL, alone and',
  'while logins saturate the hasher, in rounds of both phases; p99 over the latencies of the uncontended rounds',
  'pooled, with a 95% bootstrap interval over rounds; a round in which other processes used more than',
  'BENCH_FLOOD_MAX_FOREIGN cores is left out.',
].join(' ')

/** Runs the server benchmarks. */
export async function run(): Promise<BenchPartResult<ServerBenchResult>> {
  const loadBefore = loadavg()[0]!
  const dir = await mkdtemp(join(tmpdir(), 'tokenflow-bench-'))
  const targets: Target[] = []
  const start = async (config: Parameters<typeof startTarget>[0]) => {
    const target = await startTarget(config)
    targets.push(target)
    return target
  }
  let dropSchema: (() => Promise<void>) | undefined
  try {
    const sessions = createSessions(settings.sessions)
    log(`seeding ${sessions.length} sessions, starting the servers`)
    const seeded = join(dir, 'seed.db')
    await seedSqliteFile(seeded, sessions)
    // each server opens its own copy of the file, with its own synchronous setting
    const sqlite = async (name: string, synchronous: 'FULL' | 'NORMAL', groupCommit: boolean) => {
      const filename = join(dir, `${name}.db`)
      await copyFile(seeded, filename)
      return { type: 'sqlite', filename, synchronous, groupCommit } as const
    }
    const user = { username: 'bench-login', password: randomBytes(12).toString('base64url') }
    // every server starts at once: starting them one by one would take longer than measuring them
    const [
      ceiling,
      sqliteFull,
      sqliteFullNoGroupCommit,
      sqliteNormal,
      verifyApp,
      floodBuiltIn,
      floodOneHasher,
      postgres,
    ] = await Promise.all([
      start({ kind: 'auth', store: { type: 'noop', sessions: sessions.map(serializeSession) } }),
      start({ kind: 'auth', store: await sqlite('full', 'FULL', true) }),
      start({ kind: 'auth', store: await sqlite('full-no-group-commit', 'FULL', false) }),
      start({ kind: 'auth', store: await sqlite('normal', 'NORMAL', true) }),
      start({ kind: 'verify' }),
      start({ kind: 'auth', store: await sqlite('flood', 'FULL', true), user }),
      start({
        kind: 'auth',
        store: await sqlite('flood-one-hasher', 'FULL', true),
        user,
        hasherConcurrency: oneHasherConcurrency,
      }),
      startPostgres(start, sessions).then(
        (started) => {
          dropSchema = started.drop
          return started
        },
        (error: unknown) => {
          const reason = `PostgreSQL at ${redact(databaseUrl)} unavailable: ${(error as Error).message}`
          log(reason)
          return reason
        },
      ),
    ])

    const refreshTargets: { name: RefreshTarget; servers: Target[]; chains: Chain[] }[] = [
      { name: 'ceiling', servers: [ceiling], chains: createChains(sessions) },
      { name: 'sqliteFull', servers: [sqliteFull], chains: createChains(sessions) },
      { name: 'sqliteFullNoGroupCommit', servers: [sqliteFullNoGroupCommit], chains: createChains(sessions) },
      { name: 'sqliteNormal', servers: [sqliteNormal], chains: createChains(sessions) },
    ]
    if (typeof postgres !== 'string') {
      // one database, so one set of chains: postgres2 goes on where postgres1 stopped
      const chains = createChains(sessions)
      refreshTargets.push({ name: 'postgres1', servers: [postgres.first], chains })
      refreshTargets.push({ name: 'postgres2', servers: [postgres.first, postgres.second], chains })
    }
    const fsyncBefore = probeFsync(join(dir, 'probe-before.db'))
    const refresh = await measureRefresh(refreshTargets)
    const fsyncAfter = probeFsync(join(dir, 'probe-after.db'))
    const verify = await measureVerify(verifyApp)
    const floodRate = Math.max(
      1,
      Math.min(settings.floodRate, Math.round(refresh.get('sqliteFull')!.rps * settings.floodRateShare)),
    )
    const logins = await measureLogins(
      { builtIn: floodBuiltIn, oneHasher: floodOneHasher },
      user,
      sessions,
      floodRate,
    )

    const ratio = (name: Exclude<RefreshTarget, 'ceiling'>) => {
      const target = refresh.get(name)
      return target ? pairedRatio(target.rounds, refresh.get('ceiling')!.rounds, (round) => round.rps) : null
    }
    const ratios = {
      sqliteFull: ratio('sqliteFull'),
      sqliteFullNoGroupCommit: ratio('sqliteFullNoGroupCommit'),
      sqliteNormal: ratio('sqliteNormal'),
      postgres1: ratio('postgres1'),
      postgres2: ratio('postgres2'),
    }
    const cpu = cpus()
    const result: ServerBenchResult = {
      machine: {
        cpus: cpu.length,
        model: cpu[0]?.model ?? 'unknown',
        node: process.version,
        os: `${process.platform} ${release()}`,
        memoryMb: Math.round(totalmem() / 2 ** 20),
        loadAverage: { before: round2(loadBefore), after: round2(loadavg()[0]!) },
        fsync: { before: fsyncBefore, after: fsyncAfter },
      },
      date: new Date().toISOString(),
      method,
      settings: { ...settings, databaseDir: tmpdir(), postgres: redact(databaseUrl) },
      ceiling: refresh.get('ceiling')!,
      sqliteFull: refresh.get('sqliteFull')!,
      sqliteFullNoGroupCommit: refresh.get('sqliteFullNoGroupCommit')!,
      sqliteNormal: refresh.get('sqliteNormal')!,
      postgres1: refresh.get('postgres1') ?? null,
      postgres2: refresh.get('postgres2') ?? null,
      ...(typeof postgres === 'string' ? { postgresSkipped: postgres } : {}),
      ratios,
      goal: {
        minRatio: throughputGoal,
        ratio: ratios.sqliteFull!,
        pass: ratios.sqliteFull! >= throughputGoal,
      },
      verify,
      ...logins,
    }
    return { result, table: table(result) }
  } finally {
    await Promise.all(targets.splice(0).map((target) => target.stop()))
    await dropSchema?.().catch(() => undefined)
    await rm(dir, { recursive: true, force: true })
  }
}

type Start = (config: Parameters<typeof startTarget>[0]) => Promise<Target>

/** Refresh throughput: a warm-up per target, then the targets take turns, round after round. */
async function measureRefresh(
  targets: { name: RefreshTarget; servers: Target[]; chains: Chain[] }[],
): Promise<Map<RefreshTarget, TargetFigures>> {
  const samples = new Map<RefreshTarget, ServerSample[]>()
  const load = ({ servers, chains }: (typeof targets)[number], duration: number) =>
    withServerCpu(servers, () =>
      refreshLoad({
        urls: servers.map((server) => server.url),
        chains,
        connections: settings.connections,
        duration,
      }),
    )
  for (const target of targets) {
    log(`warm-up ${target.name}`)
    await load(target, settings.warmup)
    samples.set(target.name, [])
  }
  for (let round = 1; round <= settings.rounds; round++) {
    // each round starts one target later, so no target always runs first or after the same one
    const order = [
      ...targets.slice((round - 1) % targets.length),
      ...targets.slice(0, (round - 1) % targets.length),
    ]
    for (const target of order) {
      const sample = await load(target, settings.duration)
      samples.get(target.name)!.push(sample)
      log(`round ${round} ${target.name}: ${JSON.stringify(figures(sample))}, errors ${sample.errors}`)
    }
  }
  return new Map([...samples].map(([name, taken]) => [name, summarizeServer(taken)]))
}

async function measureVerify(target: Target): Promise<ServerBenchResult['verify']> {
  const load = (path: string, duration: number) =>
    withServerCpu([target], () =>
      fixedLoad({
        urls: [target.url],
        path,
        headers: { authorization: `Bearer ${target.token}` },
        connections: settings.connections,
        duration,
      }),
    )
  log('warm-up verify')
  await load('/verifier', settings.warmup / 2)
  await load('/jose', settings.warmup / 2)
  const verifier: ServerSample[] = []
  const jose: ServerSample[] = []
  for (let round = 1; round <= settings.rounds; round++) {
    // the order alternates, so neither route always runs first
    if (round % 2 === 1) {
      verifier.push(await load('/verifier', settings.duration))
      jose.push(await load('/jose', settings.duration))
    } else {
      jose.push(await load('/jose', settings.duration))
      verifier.push(await load('/verifier', settings.duration))
    }
    log(`round ${round} verify: ${figures(verifier.at(-1)!).rps} vs jose ${figures(jose.at(-1)!).rps}`)
  }
  const ours = summarizeServer(verifier)
  const theirs = summarizeServer(jose)
  const ratio = pairedRatio(ours.rounds, theirs.rounds, (round) => round.rps)
  return {
    rps: ours.rps,
    joseRps: theirs.rps,
    ratio,
    p99: ours.p99,
    joseP99: theirs.p99,
    cpuUs: ours.serverCpuUs,
    joseCpuUs: theirs.serverCpuUs,
    errors: ours.errors + theirs.errors,
    budget: verifyBudget,
    pass: ratio >= verifyBudget,
  }
}

async function measureLogins(
  servers: { builtIn: Target; oneHasher: Target },
  user: { username: string; password: string },
  sessions: readonly SessionRecord[],
  rate: number,
): Promise<Pick<ServerBenchResult, 'login' | 'loginFlood' | 'loginFloodOneHasher'>> {
  type Variant = keyof typeof servers
  const variants = ['builtIn', 'oneHasher'] as const
  const chains = { builtIn: createChains(sessions), oneHasher: createChains(sessions) }
  const logins = async (variant: Variant, duration: number) => {
    const sample = await fixedLoad({
      urls: [servers[variant].url],
      method: 'POST',
      path: '/auth/login',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(user),
      connections: settings.loginConnections,
      duration,
    })
    // autocannon leaves the logins it cut off still hashing on the server: let them finish
    await sleep(1_000)
    return sample
  }
  const refreshes = (variant: Variant, duration: number) =>
    pacedRefreshLoad({ url: servers[variant].url, chains: chains[variant], rate, duration })

  log('warm-up login')
  // a whole round per variant, thrown away: the first unloaded phase after a short warm-up was the
  // slowest of its run in most runs
  for (const variant of variants) {
    await refreshes(variant, settings.floodDuration)
    await Promise.all([refreshes(variant, settings.floodDuration), logins(variant, settings.floodDuration)])
  }
  const login = await logins('builtIn', settings.duration)
  log(`login: ${JSON.stringify(figures(login))}`)

  type Round = { unloaded: LoadSample; loaded: LoadSample; logins: LoadSample; foreignCores: number | null }
  const samples: Record<Variant, Round[]> = { builtIn: [], oneHasher: [] }
  for (let round = 1; round <= settings.floodRounds; round++) {
    for (const variant of round % 2 === 1 ? variants : [...variants].reverse()) {
      const foreign = foreignCpu(servers[variant])
      await foreign.start()
      const unloaded = await refreshes(variant, settings.floodDuration)
      const [loaded, loginSample] = await Promise.all([
        refreshes(variant, settings.floodDuration),
        logins(variant, settings.floodDuration),
      ])
      const foreignCores = await foreign.stop()
      samples[variant].push({ unloaded, loaded, logins: loginSample, foreignCores })
      log(
        `round ${round} flood ${variant}: p99 ${figures(unloaded).p99} vs ${figures(loaded).p99} under logins, other processes ${foreignCores ?? '?'} cores`,
      )
    }
  }
  const flood = (variant: Variant, maxConcurrentHashes: number): LoginFlood => {
    const contended = (round: Round) =>
      round.foreignCores !== null && round.foreignCores > settings.floodMaxForeign
    const clean = samples[variant].filter((round) => !contended(round))
    const pooled = (rounds: Round[]) => {
      const quiet = figures(mergeSamples(rounds.map((round) => round.unloaded)))
      const busy = figures(mergeSamples(rounds.map((round) => round.loaded)))
      return { quiet, busy, ratio: busy.p99 / quiet.p99 }
    }
    const { quiet, busy, ratio } =
      clean.length > 0 ? pooled(clean) : { quiet: null, busy: null, ratio: Number.NaN }
    const interval = bootstrap(clean, (rounds) => pooled(rounds).ratio)
    // fewer than half the rounds clean: the machine was too busy to tell
    const verdict =
      clean.length < settings.floodRounds / 2 || !(interval[1] >= interval[0])
        ? 'INCONCLUSIVE'
        : interval[1] <= floodBudget
          ? 'PASS'
          : interval[0] > floodBudget
            ? 'FAIL'
            : 'INCONCLUSIVE'
    const all = summarize(samples[variant].flatMap((round) => [round.unloaded, round.loaded]))
    return {
      refreshP99Unloaded: quiet?.p99 ?? Number.NaN,
      refreshP99UnderLogins: busy?.p99 ?? Number.NaN,
      ratio: round3(ratio),
      ratioInterval: [round3(interval[0]), round3(interval[1])],
      cleanRounds: clean.length,
      contendedRounds: samples[variant].length - clean.length,
      rate,
      refreshP50Unloaded: quiet?.p50 ?? Number.NaN,
      refreshP50UnderLogins: busy?.p50 ?? Number.NaN,
      refreshErrors: all.errors,
      loginRps: summarize(samples[variant].map((round) => round.logins)).rps,
      rounds: samples[variant].map((round) => ({
        unloaded: figures(round.unloaded).p99,
        underLogins: figures(round.loaded).p99,
        foreignCores: round.foreignCores,
        contended: contended(round),
      })),
      maxConcurrentHashes,
      budget: floodBudget,
      verdict,
      pass: verdict === 'PASS',
    }
  }
  return {
    login: { ...figures(login), connections: settings.loginConnections, errors: login.errors },
    // the built-in default of createPasswordHasher: one core stays free for the event loop
    loginFlood: flood('builtIn', Math.max(1, availableParallelism() - 1)),
    loginFloodOneHasher: flood('oneHasher', oneHasherConcurrency),
  }
}

/**
 * Seeds a fresh schema on the PostgreSQL server and starts two server instances on it, one after
 * the other (the first creates the signing key, the second reads it).
 */
async function startPostgres(
  start: Start,
  sessions: readonly SessionRecord[],
): Promise<{ first: Target; second: Target; drop: () => Promise<void> }> {
  const { default: pg } = await import('pg')
  const { createPostgresStore } = await import('@tokenflow/server/postgres')
  // the seed needs no durable commits
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: 16,
    connectionTimeoutMillis: 3_000,
    options: '-c synchronous_commit=off',
  })
  // an idle connection that the server drops (a restart) must not crash the bench
  pool.on('error', () => {})
  const schema = `tf_bench_${randomBytes(6).toString('hex')}`
  const drop = async () => {
    const admin = new pg.Client({ connectionString: databaseUrl })
    await admin.connect()
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
    await admin.end()
  }
  try {
    await pool.query(`CREATE SCHEMA ${schema}`)
    const store = createPostgresStore({ client: pool, schema })
    await store.migrate()
    await seedStore(store, sessions, { concurrency: 16 })
    await pool.query(`ANALYZE ${schema}.sessions`)
  } catch (error) {
    await drop().catch(() => undefined)
    throw error
  } finally {
    await pool.end()
  }
  const config = { type: 'postgres', url: databaseUrl, schema, poolSize: settings.pgPool } as const
  const first = await start({ kind: 'auth', store: config })
  const second = await start({ kind: 'auth', store: config })
  return { first, second, drop }
}

/** Times `count` one-row commits with synchronous=FULL in a fresh WAL database. */
function probeFsync(filename: string, count = 200): FsyncProbe {
  const db = new Database(filename)
  try {
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = FULL')
    db.exec('CREATE TABLE probe (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)')
    db.exec('INSERT INTO probe VALUES (1, 0)')
    const update = db.prepare('UPDATE probe SET n = n + 1 WHERE id = 1')
    const times: number[] = []
    for (let i = 0; i < count; i++) {
      const start = performance.now()
      update.run()
      times.push(performance.now() - start)
    }
    times.sort((a, b) => a - b)
    const at = (q: number) => round2(times[Math.min(times.length - 1, Math.ceil(q * times.length) - 1)]!)
    return { p50: at(0.5), p99: at(0.99), max: round2(times.at(-1)!) }
  } finally {
    db.close()
  }
}

/** A load sample with the CPU time its server processes spent on it. */
type ServerSample = LoadSample & { serverCpuUs: number }

async function withServerCpu(servers: Target[], run: () => Promise<LoadSample>): Promise<ServerSample> {
  const cpu = async () =>
    (await Promise.all(servers.map((server) => server.cpuTime()))).reduce((a, b) => a + b, 0)
  const before = await cpu()
  const sample = await run()
  return { ...sample, serverCpuUs: (await cpu()) - before }
}

/**
 * The CPU, in cores, that processes other than this one and `server` used between `start` and
 * `stop`: the machine's busy time in /proc/stat less theirs. null where /proc/stat is missing.
 */
function foreignCpu(server: Target): { start(): Promise<void>; stop(): Promise<number | null> } {
  const machineBusyUs = async () => {
    try {
      const cpu = (await readFile('/proc/stat', 'utf8'))
        .split('\n', 1)[0]!
        .trim()
        .split(/\s+/)
        .slice(1)
        .map(Number)
      // user, nice, system in clock ticks (USER_HZ, 100 on Linux); not softirq, where the bench's own
      // loopback traffic is counted
      return (cpu[0]! + cpu[1]! + cpu[2]!) * 10_000
    } catch {
      return null
    }
  }
  let before: { machine: number | null; server: number; self: NodeJS.CpuUsage; at: number } | undefined
  return {
    async start() {
      before = {
        machine: await machineBusyUs(),
        server: await server.cpuTime(),
        self: process.cpuUsage(),
        at: performance.now(),
      }
    },
    async stop() {
      const machine = await machineBusyUs()
      if (!before || machine === null || before.machine === null) return null
      const self = process.cpuUsage(before.self)
      const ours = (await server.cpuTime()) - before.server + self.user + self.system
      return round2((machine - before.machine - ours) / 1000 / (performance.now() - before.at))
    },
  }
}

/** 95% bootstrap interval of `statistic` over `rounds` resampled with replacement (1000 draws). */
function bootstrap<T>(rounds: readonly T[], statistic: (rounds: T[]) => number): [number, number] {
  if (rounds.length < 2) return [Number.NaN, Number.NaN]
  const draws = Array.from({ length: 1000 }, () =>
    statistic(
      Array.from({ length: rounds.length }, () => rounds[Math.floor(Math.random() * rounds.length)]!),
    ),
  ).sort((a, b) => a - b)
  return [draws[24]!, draws[974]!]
}

/** Medians over the rounds, and the totals. */
function summarize(samples: readonly LoadSample[]): Omit<TargetFigures, 'serverCpuUs'> {
  const rounds = samples.map(figures)
  const all = mergeSamples(samples)
  return {
    rps: Math.round(median(rounds.map((round) => round.rps))),
    p50: round2(median(rounds.map((round) => round.p50))),
    p99: round2(median(rounds.map((round) => round.p99))),
    requests: all.ok,
    errors: all.errors,
    seconds: round2(all.seconds),
    rounds,
  }
}

function summarizeServer(samples: readonly ServerSample[]): TargetFigures {
  const summary = summarize(samples)
  const cpu = samples.reduce((total, sample) => total + sample.serverCpuUs, 0)
  return { ...summary, serverCpuUs: Math.round(cpu / Math.max(1, summary.requests)) }
}

/** The median over the rounds of `ours / theirs` in the same round. */
function pairedRatio(ours: Figures[], theirs: Figures[], pick: (figures: Figures) => number): number {
  return round3(median(ours.map((round, i) => pick(round) / pick(theirs[i]!))))
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = sorted.length / 2
  return sorted.length % 2 === 1 ? sorted[Math.floor(middle)]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

function table(result: ServerBenchResult): string {
  const rows: [string, TargetFigures | null, number | null][] = [
    ['no-op store (ceiling)', result.ceiling, 1],
    ['SQLite FULL, group commit', result.sqliteFull, result.ratios.sqliteFull],
    [
      'SQLite FULL, one commit per refresh',
      result.sqliteFullNoGroupCommit,
      result.ratios.sqliteFullNoGroupCommit,
    ],
    ['SQLite NORMAL, group commit', result.sqliteNormal, result.ratios.sqliteNormal],
    ['PostgreSQL, 1 instance', result.postgres1, result.ratios.postgres1],
    ['PostgreSQL, 2 instances', result.postgres2, result.ratios.postgres2],
  ]
  const pass = (ok: boolean) => (ok ? 'PASS' : 'FAIL')
  const { verify, login, loginFlood, loginFloodOneHasher: oneHasher, goal } = result
  return [
    '| refresh target | rps | p50 ms | p99 ms | errors | × ceiling | server CPU µs/refresh |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map(([label, value, ratio]) =>
      value
        ? `| ${label} | ${value.rps} | ${value.p50} | ${value.p99} | ${value.errors} | ${ratio} | ${value.serverCpuUs} |`
        : `| ${label} | n/a | | | | | |`,
    ),
    '',
    `SQLite FULL / ceiling: ${goal.ratio} (goal ≥ ${goal.minRatio}: ${pass(goal.pass)})`,
    `verify middleware ${verify.rps} rps vs jose.jwtVerify ${verify.joseRps} rps: ${verify.ratio}× (goal ≥ ${verify.budget}: ${pass(verify.pass)})`,
    `login (Argon2id, ${login.connections} connections): ${login.rps}/s, p50 ${login.p50} ms, p99 ${login.p99} ms`,
    `refresh p99 at ${loginFlood.rate}/s: ${loginFlood.refreshP99Unloaded} ms unloaded, ${loginFlood.refreshP99UnderLogins} ms under logins: ${loginFlood.ratio}× (95% ${loginFlood.ratioInterval.join('–')}, ${loginFlood.cleanRounds} rounds, ${loginFlood.contendedRounds} contended left out; goal ≤ ${loginFlood.budget}: ${loginFlood.verdict})`,
    `  hasher capped at ${oneHasher.maxConcurrentHashes}: ${oneHasher.refreshP99Unloaded} ms unloaded, ${oneHasher.refreshP99UnderLogins} ms under logins: ${oneHasher.ratio}× (95% ${oneHasher.ratioInterval.join('–')}; ${oneHasher.loginRps} logins/s, vs ${loginFlood.loginRps})`,
  ].join('\n')
}

function envNumber(name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`"${name}" must be a positive number`)
  return value
}

function redact(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@')
}

const startedAt = performance.now()

function log(message: string): void {
  console.error(`[server bench +${((performance.now() - startedAt) / 1000).toFixed(0)} s] ${message}`)
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function round2(value: number): number {
  return Math.round(value * 100) / 100
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000
}
