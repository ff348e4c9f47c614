/**
 * `npm run soak` (about 4-5 minutes) and `npm run soak:ci` (under 60 s, run by `npm test` after vitest):
 * simulated clients against real server processes, with faults injected on purpose.
 *
 * 1. Steady load: clients (each a real token manager with the axios adapter) use 1-second access
 *    tokens against 2 instances sharing one PostgreSQL schema.
 * 2. An instance dies: one is killed with SIGKILL mid-run; the clients fail over to the other.
 * 3. PostgreSQL restarts mid-run (the real `pg_ctlcluster … restart` of the local cluster on the URL's port;
 *    skipped where it cannot run).
 * 4. SQLite loses its process during a refresh storm, and is started again on the same file.
 *
 * Each phase ends in checks; one line per check, then `N passed, M failed` as the last line, and a
 * non-zero exit code when any failed. The figures go to bench/results/soak.json (soak-ci.json for
 * the CI variant); `npm run soak` also writes docs/reliability.md from that file (soak/report.ts).
 *
 * Environment: SOAK_DATABASE_URL (else DATABASE_URL): without either, phases 1-3 are skipped.
 * Phase 3 stops and starts the machine's PostgreSQL cluster, so it runs only with SOAK_POSTGRES_RESTART=1
 * or CI=true (as root, with pg_ctlcluster); SOAK_POSTGRES_RESTART=skip leaves PostgreSQL alone even in CI.
 * Under CI=true a skipped phase fails the run (apart from that explicit skip): a skip would hide breakage.
 * PostgreSQL is shared with other suites: the soak works in its own `tf_soak_*` schema and drops it.
 */
import { spawn } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { cpus, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { createFleet, type Fleet, isTransient, type PhaseCounters } from './lib/clients.js'
import { createInstanceEvents, type Instance, type InstanceEvents, startInstance } from './lib/instances.js'
import {
  checkSessions,
  openSoakDatabase,
  postgresRestartCommand,
  type RestartCommand,
  restartPostgres,
  type SoakDatabase,
  watchOutage,
} from './lib/postgres.js'
import {
  prepareSqliteKill,
  SQLITE_REUSE_GRACE,
  type SqliteKill,
  type SqliteKillResult,
} from './lib/sqlite-kill.js'
import { writeReport } from './report.js'

const ci = process.argv.includes('--ci')

/** Every duration is in seconds unless its name says ms. */
const profile = ci
  ? {
      name: 'ci',
      clients: 50,
      requestInterval: [300, 500] as const,
      steadySeconds: 15,
      kill: { seconds: 6, killAfter: 2, restartAfter: 4 },
      postgres: { before: 2, downMs: 1_500, recoveryDeadline: 15, after: 1 },
      sqlite: { sessions: 50, rounds: 2, stormMs: [600, 1200] as const },
      budgetSeconds: 100,
      output: 'bench/results/soak-ci.json',
    }
  : {
      name: 'full',
      clients: 200,
      requestInterval: [300, 500] as const,
      steadySeconds: 60,
      kill: { seconds: 60, killAfter: 20, restartAfter: 40 },
      postgres: { before: 20, downMs: 3_000, recoveryDeadline: 20, after: 30 },
      sqlite: { sessions: 200, rounds: 15, stormMs: [1000, 2500] as const },
      budgetSeconds: 9 * 60,
      output: 'bench/results/soak.json',
    }

const accessTokenTtl = 1000
/**
 * Clock tolerance of the API's verifier, in ms: 1 s rather than the default 30 s, so that 1-second tokens
 * really expire. Not 0: `exp` has 1-second resolution and the issuer sets exp = floor(iat) + 1, so a token
 * issued late in a second has only milliseconds before its `exp`, less than a loaded machine needs to
 * deliver it; the tolerance gives every token at least 1 s to reach the API.
 */
const clockTolerance = 1000
/** pg connections per instance */
const poolSize = 10
/** the refresh count must be within this ratio of clients × seconds / TTL */
const refreshRatioRange = [0.75, 1.25] as const
const databaseUrl = process.env.SOAK_DATABASE_URL || process.env.DATABASE_URL || undefined
const inCI = process.env.CI === 'true'
const root = fileURLToPath(new URL('..', import.meta.url))

interface Check {
  phase: string
  name: string
  ok: boolean
  /** what was measured, as shown in the output */
  value: string
}

const checks: Check[] = []
const check = (phase: string, name: string, ok: boolean, value: string | number) => {
  checks.push({ phase, name, ok, value: String(value) })
  console.log(`${ok ? 'PASS' : 'FAIL'} ${phase}: ${name} (${value})`)
}
const soakStarted = Date.now()
const log = (line: string) => console.log(`  ${line} [${((Date.now() - soakStarted) / 1000).toFixed(1)} s]`)
const sleep = (seconds: number) => new Promise((resolve) => setTimeout(resolve, seconds * 1000))

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

const countBy = (kinds: string[]) =>
  kinds.reduce<Record<string, number>>((counts, kind) => {
    counts[kind] = (counts[kind] ?? 0) + 1
    return counts
  }, {})

/** The first ok request of each client at or after `at`; undefined for a client that had none. */
const firstOkAfter = (fleet: Fleet, at: number) =>
  fleet.clients.map((client) => client.okTimes.find((time) => time >= at))

/** Everything a run started, so that a failure or the time budget can still clean up. */
const running: {
  instances: Instance[]
  database?: SoakDatabase | undefined
  canary?: ReturnType<typeof spawn> | undefined
  sqlite?: Promise<SqliteKill> | undefined
} = { instances: [] }

async function cleanUp() {
  running.canary?.kill('SIGKILL')
  await Promise.all([
    ...running.instances.map((instance) => instance.stop().catch(() => undefined)),
    running.sqlite?.then((phase) => phase.close()).catch(() => undefined),
  ])
  await running.database
    ?.drop()
    .catch((error: unknown) => console.error(`could not drop the soak schema: ${error}`))
}

export interface SteadyResult {
  clients: number
  seconds: number
  requests: number
  failed: number
  falseLogouts: number
  reuseDetections: number
  refreshes: number
  expectedRefreshes: number
  refreshRatio: number
  /** rotations the two servers counted, grace replays included */
  serverRefreshes: number
  requestsPerSecond: number
  latencyMs: { p50: number; p99: number; max: number }
  failures: Record<string, number>
  refreshFailures: Record<string, number>
  inconsistentRows: number
}

async function steadyLoad(fleet: Fleet, db: SoakDatabase, instances: Instance[], events: InstanceEvents) {
  const phase = 'steady'
  console.log(
    `phase 1 (steady load): ${profile.clients} clients for ${profile.steadySeconds} s on 2 instances`,
  )
  const reuseBefore = events.reuseDetected
  const counters = fleet.beginPhase()
  fleet.start()
  await sleep(profile.steadySeconds)
  await fleet.stop()
  const seconds = (Date.now() - counters.startedAt) / 1000
  const stats = await Promise.all(instances.map((instance) => instance.stats()))
  const rows = await checkSessions(db, fleet.clients)
  const expectedRefreshes = (profile.clients * seconds * 1000) / accessTokenTtl
  const result: SteadyResult = {
    clients: profile.clients,
    seconds: round(seconds, 1),
    requests: counters.requests,
    failed: counters.failed + counters.wrongUser,
    falseLogouts: counters.logouts,
    // the servers' events and the rows count the same revocations: either one seeing any is enough
    reuseDetections: Math.max(events.reuseDetected - reuseBefore, rows.revokedForReuse),
    refreshes: counters.refreshes,
    expectedRefreshes: Math.round(expectedRefreshes),
    refreshRatio: round(counters.refreshes / expectedRefreshes, 3),
    serverRefreshes: stats.reduce((sum, s) => sum + s.refreshes + s.graceReplays, 0),
    requestsPerSecond: Math.round(counters.requests / seconds),
    latencyMs: latency(counters),
    failures: countBy(counters.failures.map((failure) => failure.kind)),
    refreshFailures: counters.refreshFailures,
    inconsistentRows: rows.inconsistentRows + rows.withoutToken,
  }
  log(
    `${result.requests} requests (${result.requestsPerSecond}/s, p50 ${result.latencyMs.p50} ms, p99 ${result.latencyMs.p99} ms), ` +
      `${result.refreshes} refreshes (${result.serverRefreshes} on the servers)`,
  )
  check(
    phase,
    'no failed request',
    result.failed === 0,
    `${result.failed} of ${result.requests}${result.failed ? ` ${JSON.stringify(result.failures)}` : ''}`,
  )
  check(phase, 'no false logout', result.falseLogouts === 0, result.falseLogouts)
  check(phase, 'no reuse detection', result.reuseDetections === 0, result.reuseDetections)
  check(
    phase,
    `refreshes within ${refreshRatioRange.join('-')} x clients x seconds / TTL`,
    result.refreshRatio >= refreshRatioRange[0] && result.refreshRatio <= refreshRatioRange[1],
    `${result.refreshes} / ${result.expectedRefreshes} = ${result.refreshRatio}`,
  )
  check(phase, 'every session row matches its client', result.inconsistentRows === 0, result.inconsistentRows)
  return result
}

export interface InstanceKillResult {
  lostSessions: number
  inconsistentRows: number
  revokedForReuse: number
  seconds: number
  killedAfterSeconds: number
  requests: number
  failed: number
  failures: Record<string, number>
  failovers: number
  logouts: number
  /** slowest client: ms from the kill to its first ok request with a token issued after the kill */
  slowestClientMs: number
  restartedAfterSeconds: number
  /** ms the killed instance took to listen again */
  restartMs: number
  /** ok answers of each instance during the phase */
  answersByInstance: Record<string, number>
}

async function instanceKill(fleet: Fleet, db: SoakDatabase, victim: Instance, events: InstanceEvents) {
  const phase = 'instanceKill'
  const { seconds, killAfter, restartAfter } = profile.kill
  console.log(
    `phase 2 (an instance dies): kill -9 instance "${victim.name}" after ${killAfter} s of ${seconds} s, ` +
      `start it again after ${restartAfter} s`,
  )
  const reuseBefore = events.reuseDetected
  const counters = fleet.beginPhase()
  fleet.start()
  await sleep(killAfter)
  const killedAt = Date.now()
  await victim.kill()
  await sleep(restartAfter - killAfter)
  // it comes back while the clients run, as under a supervisor, and takes its share again
  const restartStarted = Date.now()
  let restartMs = 0
  const back = victim.restart().then(() => {
    restartMs = Date.now() - restartStarted
  })
  await sleep(seconds - restartAfter)
  await fleet.stop()
  await back
  // an ok answer one TTL after the kill was sent with a token issued after it: the session lives on
  const firstOk = firstOkAfter(fleet, killedAt + accessTokenTtl)
  const probes = await Promise.all(fleet.clients.map((client) => fleet.probe(client)))
  const rows = await checkSessions(db, fleet.clients)
  // lost: logged out, or never ok again after the kill, neither during the phase nor in a last request
  const lost = fleet.clients.filter(
    (client, i) => client.logouts > 0 || (firstOk[i] === undefined && probes[i] !== undefined),
  )
  const result: InstanceKillResult = {
    lostSessions: lost.length + rows.withoutToken,
    inconsistentRows: rows.inconsistentRows,
    revokedForReuse: Math.max(rows.revokedForReuse, events.reuseDetected - reuseBefore),
    seconds,
    killedAfterSeconds: killAfter,
    restartedAfterSeconds: restartAfter,
    requests: counters.requests,
    failed: counters.failed + counters.wrongUser,
    failures: countBy(counters.failures.map((failure) => failure.kind)),
    failovers: counters.failovers,
    logouts: counters.logouts,
    slowestClientMs: Math.max(0, ...firstOk.map((time) => (time ?? killedAt) - killedAt)),
    restartMs,
    answersByInstance: counters.answersByInstance,
  }
  log(
    `${result.requests} requests, ${result.failovers} failovers, slowest client ok again ${result.slowestClientMs} ms ` +
      `after the kill; instance "${victim.name}" restarted in ${result.restartMs} ms; ok answers by instance ` +
      JSON.stringify(result.answersByInstance),
  )
  check(phase, 'no session lost', result.lostSessions === 0, result.lostSessions)
  check(phase, 'no inconsistent session row', result.inconsistentRows === 0, result.inconsistentRows)
  check(phase, 'no session revoked for reuse', result.revokedForReuse === 0, result.revokedForReuse)
  check(
    phase,
    'no failed request (failover)',
    result.failed === 0,
    `${result.failed} of ${result.requests}${result.failed ? ` ${JSON.stringify(result.failures)}` : ''}`,
  )
  return result
}

export interface PostgresRestartResult {
  skipped: string | null
  logouts: number
  recovered: boolean
  requests: number
  /** failed requests, all during the outage */
  failed: number
  failures: Record<string, number>
  /** failures that are not transient (a 401, a rejected refresh, …) */
  nonTransient: number
  /** failures after every client had recovered */
  failedAfterRecovery: number
  /** ms the restart command took */
  restartMs: number
  /** ms PostgreSQL did not answer a `SELECT 1` (probed every 100 ms) */
  outageMs: number | null
  /** 5xx answers of the two instances during the phase: refreshes that met the outage (the manager retries them) */
  serverErrors: number
  /** refreshes that failed after the manager's retries, by kind: transient ones keep the session */
  refreshFailures: Record<string, number>
  /** ms from PostgreSQL answering again until the last client had an ok request with a token issued after that */
  recoveryMs: number | null
  /** idle pg clients that died with the restart; each one was an 'error' event on a Pool */
  poolErrors: number
  inconsistentRows: number
  revokedForReuse: number
  /** server processes that exited on their own */
  crashes: number
  /** the CLI (`tokenflow-server start --postgres`) survived the restart and answered again */
  cli: { survived: boolean; failedProbes: number; okAfterRestart: boolean }
}

/** 5xx answers the instances sent since they started. */
async function serverErrors(instances: Instance[]): Promise<number> {
  // an instance that crashed answers nothing: the crash check reports it, this count goes on without it
  const stats = await Promise.all(
    instances.map((instance) => instance.stats().catch(() => ({ serverErrors: 0 }))),
  )
  return stats.reduce((sum, s) => sum + s.serverErrors, 0)
}

/** Starts the CLI on the soak's schema (through `search_path`) and resolves its URL once it listens. */
async function startCli(db: SoakDatabase): Promise<string> {
  const url = new URL(db.url)
  url.searchParams.set('options', `-c search_path=${db.schema}`)
  const child = spawn(
    process.execPath,
    [
      '--conditions=@tokenflow/source',
      '--import',
      import.meta.resolve('tsx'),
      `${root}packages/server/src/cli.ts`,
      'start',
      '--port',
      '0',
      '--postgres',
      url.href,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], cwd: root },
  )
  running.canary = child
  return new Promise((resolve, reject) => {
    let output = ''
    let listening = false
    const timer = setTimeout(() => reject(new Error('the CLI did not listen within 30 s')), 30_000)
    const onData = (chunk: Buffer) => {
      // the pipes are drained all along (a full pipe would block the CLI's logger), kept only until it listens
      if (listening) return
      output += chunk.toString('utf8')
      // Fastify's pino line: "Server listening at http://127.0.0.1:PORT"
      const match = /listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(output)
      if (match) {
        listening = true
        clearTimeout(timer)
        resolve(match[1]!)
      }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`the CLI exited with code ${code}: ${output.trim().slice(-500)}`))
    })
  })
}

async function postgresRestart(
  fleet: Fleet,
  db: SoakDatabase,
  instances: Instance[],
  events: InstanceEvents,
  command: RestartCommand,
  cliUrl: string | undefined,
): Promise<PostgresRestartResult> {
  const phase = 'postgresRestart'
  const result: PostgresRestartResult = {
    skipped: null,
    logouts: 0,
    recovered: false,
    requests: 0,
    failed: 0,
    failures: {},
    nonTransient: 0,
    failedAfterRecovery: 0,
    restartMs: 0,
    outageMs: null,
    serverErrors: 0,
    refreshFailures: {},
    recoveryMs: null,
    poolErrors: 0,
    inconsistentRows: 0,
    revokedForReuse: 0,
    crashes: 0,
    cli: { survived: false, failedProbes: 0, okAfterRestart: false },
  }
  if ('skip' in command || cliUrl === undefined) {
    result.skipped = 'skip' in command ? command.skip : 'the CLI did not start'
    console.log(`skip phase 3 (PostgreSQL restarts): ${result.skipped}`)
    if (inCI && process.env.SOAK_POSTGRES_RESTART !== 'skip')
      check('postgres restart', 'runs under CI', false, result.skipped)
    return result
  }
  const { before, downMs, recoveryDeadline, after } = profile.postgres
  console.log(
    `phase 3 (PostgreSQL restarts): ${command.command} ${command.args.slice(0, -1).join(' ')} stop, ${downMs} ms down, start; after ${before} s`,
  )
  const reuseBefore = events.reuseDetected
  const poolErrorsBefore = events.poolErrors
  const crashesBefore = events.crashes.length
  // the CLI is probed all along, so its pool holds idle connections when PostgreSQL goes away
  let probing = true
  let lastCliOk = 0
  const cliProbes = (async () => {
    while (probing) {
      try {
        const response = await fetch(`${cliUrl}/.well-known/jwks.json`, {
          signal: AbortSignal.timeout(5_000),
        })
        await response.arrayBuffer()
        if (response.ok) lastCliOk = Date.now()
        else result.cli.failedProbes++
      } catch {
        result.cli.failedProbes++
      }
      await sleep(0.25)
    }
  })()

  const serverErrorsBefore = await serverErrors(instances)
  const counters = fleet.beginPhase()
  fleet.start()
  await sleep(before)
  const outage = watchOutage(db.url)
  const restartStarted = Date.now()
  let restartError: unknown
  await restartPostgres(command, downMs).catch((error: unknown) => {
    restartError = error
  })
  const restarted = Date.now()
  result.restartMs = restarted - restartStarted
  const { from, to } = await outage.stop()
  result.outageMs = from === null ? 0 : to === null ? null : to - from
  if (restartError) log(`the restart failed: ${restartError}`)
  // PostgreSQL is back when it answers again (the command may return a little later)
  const back = to ?? restarted
  // recovered: every client had an ok request sent with a token issued after PostgreSQL came back
  const deadline = back + recoveryDeadline * 1000
  let recoveredAt: number | undefined
  while (Date.now() < deadline) {
    const firstOk = firstOkAfter(fleet, back + accessTokenTtl)
    if (firstOk.every((time) => time !== undefined)) {
      recoveredAt = Math.max(...(firstOk as number[]))
      break
    }
    await sleep(0.1)
  }
  await sleep(after)
  await fleet.stop()
  probing = false
  await cliProbes
  result.cli.okAfterRestart = lastCliOk > back
  result.cli.survived = running.canary?.exitCode === null && running.canary.signalCode === null
  running.canary?.kill('SIGTERM')

  const rows = await checkSessions(db, fleet.clients)
  result.serverErrors = (await serverErrors(instances)) - serverErrorsBefore
  result.logouts = counters.logouts
  result.refreshFailures = counters.refreshFailures
  result.requests = counters.requests
  result.failed = counters.failed + counters.wrongUser
  result.failures = countBy(counters.failures.map((failure) => failure.kind))
  result.nonTransient =
    counters.failures.filter((failure) => !isTransient(failure.kind)).length + counters.wrongUser
  result.recovered = recoveredAt !== undefined && restartError === undefined
  result.recoveryMs = recoveredAt === undefined ? null : recoveredAt - back
  result.failedAfterRecovery = counters.failures.filter(
    (failure) => failure.at > (recoveredAt ?? deadline),
  ).length
  result.poolErrors = events.poolErrors - poolErrorsBefore
  result.inconsistentRows = rows.inconsistentRows + rows.withoutToken
  result.revokedForReuse = Math.max(rows.revokedForReuse, events.reuseDetected - reuseBefore)
  result.crashes =
    events.crashes.length - crashesBefore + instances.filter((instance) => !instance.alive).length
  log(
    `restart took ${result.restartMs} ms (PostgreSQL did not answer for ${result.outageMs ?? '-'} ms); ` +
      `${result.serverErrors} refreshes answered 5xx, ${JSON.stringify(result.refreshFailures)} failed after retries; ` +
      `${result.failed} of ${result.requests} requests failed ${JSON.stringify(result.failures)}; all clients ok again ${result.recoveryMs ?? '-'} ms ` +
      `after it; ${result.poolErrors} idle pool clients died`,
  )
  // without this the checks below could pass on an outage that no refresh met
  check(
    phase,
    'refreshes met the outage (5xx answers, which the clients retried)',
    result.serverErrors > 0,
    `${result.serverErrors} 5xx, ${result.poolErrors} pool errors`,
  )
  check(phase, 'no logout', result.logouts === 0, result.logouts)
  check(
    phase,
    'every failure is transient',
    result.nonTransient === 0,
    `${result.nonTransient} of ${result.failed}`,
  )
  check(
    phase,
    `every client ok again within ${recoveryDeadline} s`,
    result.recovered,
    result.recoveryMs === null ? 'not recovered' : `${result.recoveryMs} ms`,
  )
  check(phase, 'no failure after recovery', result.failedAfterRecovery === 0, result.failedAfterRecovery)
  check(phase, 'server instances survived', result.crashes === 0, `${result.crashes} crashed`)
  check(
    phase,
    'the CLI survived and answers again',
    result.cli.survived && result.cli.okAfterRestart,
    result.cli.survived ? (result.cli.okAfterRestart ? 'ok' : 'no answer after the restart') : 'exited',
  )
  check(
    phase,
    'no inconsistent session row or reuse',
    result.inconsistentRows + result.revokedForReuse === 0,
    `${result.inconsistentRows} inconsistent, ${result.revokedForReuse} reuse`,
  )
  return result
}

async function sqliteKill(prepared: Promise<SqliteKill>): Promise<SqliteKillResult> {
  const phase = 'sqliteKill'
  const { sessions, rounds } = profile.sqlite
  console.log(
    `phase 4 (SQLite loses its process): ${sessions} sessions, ${rounds} storms each ended by kill -9`,
  )
  const kill = await prepared
  let result: SqliteKillResult
  try {
    result = await kill.run()
  } finally {
    await kill.close()
  }
  log(
    `${result.answeredRefreshes} refreshes answered (${result.stormRefreshesPerSecond}/s), ${result.inFlightAtKill} in flight at the kills, ` +
      `${result.graceReplays} committed but unanswered; restart within ${result.restartMs} ms`,
  )
  check(
    phase,
    'every answered session still works',
    result.answered === result.stillValid,
    `${result.stillValid} of ${result.answered}`,
  )
  check(
    phase,
    'the storms were answered and cut mid-flight',
    result.answered > 0 && result.inFlightAtKill > 0 && result.refusedDuringStorm === 0,
    `${result.answered} answered, ${result.inFlightAtKill} in flight, ${result.refusedDuringStorm} refused`,
  )
  check(
    phase,
    'sessions without an answer still work too',
    result.unanswered.stillValid === result.unanswered.checked,
    // every session usually gets an answer before the kill; then there is nothing to check, and it says so
    result.unanswered.checked === 0
      ? 'none this run: every session had an answer'
      : `${result.unanswered.stillValid} of ${result.unanswered.checked}`,
  )
  return result
}

function latency(counters: PhaseCounters) {
  return {
    p50: percentile(counters.latencies, 50),
    p99: percentile(counters.latencies, 99),
    // reduce, not Math.max(...): a long run has more latencies than a call takes arguments
    max: counters.latencies.reduce((max, value) => Math.max(max, value), 0),
  }
}

function round(value: number, digits: number) {
  return Number(value.toFixed(digits))
}

async function main(): Promise<number> {
  const started = Date.now()
  const loadBefore = loadavg()[0]!
  console.log(
    `tokenflow soak (${profile.name}), ${cpus().length} cores, node ${process.version}, load average ${loadBefore.toFixed(1)}`,
  )
  const events = createInstanceEvents()
  // the SQLite instance of phase 4 starts now, so that its start overlaps phases 1-3
  const { sessions, rounds, stormMs } = profile.sqlite
  const sqlitePrepared = prepareSqliteKill({
    sessions,
    rounds,
    storm: stormMs,
    accessTokenTtl,
    clockTolerance,
    events,
  })
  // settled by sqliteKill(); until then an early failure must not leave it unhandled
  sqlitePrepared.catch(() => undefined)
  running.sqlite = sqlitePrepared
  const db = databaseUrl ? await openSoakDatabase(databaseUrl) : null
  let steady: SteadyResult | null = null
  let kill: InstanceKillResult | null = null
  let restart: PostgresRestartResult | null = null
  let skipped: string | null = null
  if (!db) {
    skipped = databaseUrl
      ? `PostgreSQL is not reachable at ${new URL(databaseUrl).host}`
      : 'no DATABASE_URL (or SOAK_DATABASE_URL) is set'
    console.log(`skip phases 1-3 (they need PostgreSQL): ${skipped}`)
    if (inCI) check('postgres', 'is there under CI', false, skipped)
  } else {
    running.database = db
    const base = {
      kind: 'postgres' as const,
      url: db.url,
      schema: db.schema,
      poolSize,
      port: 0,
      accessTokenTtl,
      clockTolerance,
    }
    const start = async (name: string) => {
      const instance = await startInstance({ ...base, name }, events)
      running.instances.push(instance)
      return instance
    }
    // "a" first: it stores the signing key, which "b" and the CLI then find. Started together, two
    // instances could each store a key and, for up to the keyring's cache time, sign with different
    // ones, which the fixed JWKS of each instance's API verifier (soak/server.ts) would not all hold.
    const a = await start('a')
    const restartCommand = postgresRestartCommand(db.url)
    const [b, cliUrl] = await Promise.all([start('b'), 'skip' in restartCommand ? undefined : startCli(db)])
    const fleet = createFleet({
      bases: [a.url, b.url],
      count: profile.clients,
      interval: profile.requestInterval,
      userPrefix: 'pg',
    })
    await fleet.login()
    log(`instances "a" and "b" listen on one schema, ${profile.clients} clients logged in`)
    steady = await steadyLoad(fleet, db, [a, b], events)
    kill = await instanceKill(fleet, db, b, events)
    restart = await postgresRestart(fleet, db, [a, b], events, restartCommand, cliUrl)
    await Promise.all([a.stop(), b.stop()])
    running.instances = []
  }
  const sqlite = await sqliteKill(sqlitePrepared)
  running.sqlite = undefined
  const crashes = events.crashes
  check('all', 'no server process crashed', crashes.length === 0, crashes.length)
  for (const crash of crashes) {
    log(`instance "${crash.name}" exited (${crash.signal ?? crash.code}): ${crash.stderr.trim().slice(-400)}`)
  }

  const passed = checks.filter((c) => c.ok).length
  const result = {
    profile: profile.name,
    date: new Date().toISOString(),
    machine: {
      cpus: cpus().length,
      model: cpus()[0]?.model ?? 'unknown',
      node: process.version,
      // 1-minute load average before and after: other processes on the machine slow every figure down
      loadAverage: { before: round(loadBefore, 1), after: round(loadavg()[0]!, 1) },
    },
    settings: {
      accessTokenTtl,
      leeway: 0,
      clockTolerance,
      sqliteReuseGrace: SQLITE_REUSE_GRACE,
      requestIntervalMs: profile.requestInterval,
      instances: 2,
      poolSize,
      kill: profile.kill,
      postgres: profile.postgres,
      sqlite: profile.sqlite,
    },
    skipped,
    clients: steady?.clients ?? 0,
    seconds: steady?.seconds ?? 0,
    requests: steady?.requests ?? 0,
    failed: steady?.failed ?? 0,
    falseLogouts: steady?.falseLogouts ?? 0,
    reuseDetections: steady?.reuseDetections ?? 0,
    refreshes: steady?.refreshes ?? 0,
    steady,
    instanceKill: kill,
    postgresRestart: restart,
    sqliteKill: sqlite,
    totals: { reuseDetections: events.reuseDetected, crashes: crashes.length },
    wallSeconds: round((Date.now() - started) / 1000, 1),
    checks,
    checksPassed: passed,
    checksFailed: checks.length - passed,
  }
  await mkdir(`${root}bench/results`, { recursive: true })
  await writeFile(`${root}${profile.output}`, `${JSON.stringify(result, null, 2)}\n`)
  console.log(`wrote ${profile.output} (${result.wallSeconds} s)`)
  if (!ci) {
    await writeReport(`${root}${profile.output}`, `${root}docs/reliability.md`)
    console.log('wrote docs/reliability.md')
  }
  return result.checksFailed
}

// the soak is bounded: past its budget it cleans up and fails instead of hanging CI
const watchdog = setTimeout(() => {
  check('all', `finished within ${profile.budgetSeconds} s`, false, 'time budget exceeded')
  void cleanUp().finally(() => {
    console.log(`${checks.filter((c) => c.ok).length} passed, ${checks.filter((c) => !c.ok).length} failed`)
    process.exit(1)
  })
}, profile.budgetSeconds * 1000)
watchdog.unref()
process.once('SIGINT', () => {
  void cleanUp().finally(() => process.exit(130))
})

main()
  .catch((error: unknown) => {
    check('all', 'the soak ran to the end', false, error instanceof Error ? error.message : String(error))
    return 1
  })
  .then(async () => {
    await cleanUp()
    clearTimeout(watchdog)
    const failed = checks.filter((c) => !c.ok).length
    console.log(`${checks.length - failed} passed, ${failed} failed`)
    process.exit(failed === 0 ? 0 : 1)
  })
