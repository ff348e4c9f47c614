/**
 * The prune part of `npm run bench` (`tsx bench/run.ts prune`): what the periodic session prune
 * (`deleteExpiredSessions`, run by the server every `pruneInterval`) costs the event loop on a big
 * SQLite file. better-sqlite3 is synchronous, so while a statement runs, nothing else in the
 * process does: no request is parsed and no rotation commits.
 *
 * For each table size, a file-backed store is filled with sessions, a share of them dead (expired,
 * revoked, or idle past the idle timeout, in equal parts, spread over the table), and pruned twice
 * on two copies of the file:
 * - `single`: the prune as it was before batching, one `DELETE … WHERE expires_at < ? OR revoked_at < ?
 *   OR last_used_at < ?` over the whole table (run on a second connection to the same file: it
 *   blocks the event loop exactly as the store's own statement did)
 * - `store`: the store's `deleteExpiredSessions`, as shipped
 * - `none`: no prune at all, the rotations alone for a second: the stalls that SQLite's own WAL
 *   checkpoints and fsyncs cause anyway, the floor the prune is measured against
 *
 * Each reports the longest event-loop stall (the longest gap between ticks of a 1 ms interval), the total time, and the
 * rotations that ran through the store meanwhile (one at a time, on live sessions) with the slowest.
 *
 * Benchmarks are not tests: the budget is reported as PASS or FAIL and never fails the process.
 * Run on the BUILT packages (`npm run build` first), or on the sources with
 * `tsx --conditions=@tokenflow/source bench/run.ts prune`.
 *
 * Settings (environment):
 * - BENCH_PRUNE_SIZES: table sizes, comma-separated (200000,1000000)
 * - BENCH_PRUNE_DEAD: the share of dead sessions (0.1)
 * - BENCH_PRUNE_ROUNDS: prunes of each variant per size, each on a fresh copy (1)
 * - BENCH_PRUNE_BATCH: the store's `pruneBatchSize` (its default)
 */
import { randomBytes } from 'node:crypto'
import { copyFile, mkdtemp, rm, stat } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createSqliteStore, type TokenStore } from '@tokenflow/server'
import Database from 'better-sqlite3'
import { type Machine, machine } from './lib/machine.js'
import type { BenchPartResult } from './run.js'

/** the longest event-loop stall of the store's prune at the largest size, in ms */
const stallBudget = 20

const DAY = 86_400_000
/** the server's default `refreshIdleTimeout` is not what matters here: any window will do */
const IDLE_TIMEOUT = 14 * DAY
/** how long the `none` variant runs the rotation probe without a prune */
const NO_PRUNE_MS = 1_000
/** live sessions the rotation probe walks */
const PROBE_SESSIONS = 2_000

const settings = {
  sizes: envList('BENCH_PRUNE_SIZES', [200_000, 1_000_000]),
  deadShare: envNumber('BENCH_PRUNE_DEAD', 0.1),
  rounds: envNumber('BENCH_PRUNE_ROUNDS', 1),
  /** the store's `pruneBatchSize`; undefined: its default */
  batchSize: process.env.BENCH_PRUNE_BATCH ? envNumber('BENCH_PRUNE_BATCH', 1) : undefined,
}

type Variant = 'single' | 'store' | 'none'

/** One prune. */
export interface PruneFigures {
  deleted: number
  /** the longest the event loop was blocked while the prune ran, ms */
  maxStallMs: number
  /** the 99th percentile of the gaps between ticks of a 1 ms interval while the prune ran, ms */
  p99StallMs: number
  /** from the call to its promise settling, ms */
  totalMs: number
  /** rotations through the store that completed while the prune ran, and the slowest of them, ms */
  rotations: number
  maxRotationMs: number
}

/** The figures of one table size: medians over the rounds. */
export interface PruneSize {
  sessions: number
  dead: number
  fileMb: number
  single: PruneFigures
  store: PruneFigures
  /** no prune, for `NO_PRUNE_MS`: the stalls the rotations alone make (commits, WAL checkpoints) */
  none: PruneFigures
  rounds: Record<Variant, PruneFigures>[]
}

export interface PruneBenchResult {
  machine: Machine
  date: string
  method: string
  settings: typeof settings & { databaseDir: string }
  sizes: PruneSize[]
  goal: { maxStallMs: number; stallMs: number; pass: boolean }
}

const method = [
  'A file-backed SQLite store (WAL, synchronous=FULL, group commit: the defaults) filled through one bulk INSERT',
  'transaction with sessions of one user, the dead ones (expired, revoked, idle) in equal parts at random places;',
  'each variant prunes its own copy of the file, in alternating order, with the page cache warm from the copy.',
  'The stall is the longest gap (and the 99th percentile of the gaps) between two ticks of a 1 ms setInterval during',
  'the prune; meanwhile one rotation at a',
  'time runs through the store on live sessions.',
].join(' ')

/** Runs the prune benchmark. */
export async function run(): Promise<BenchPartResult<PruneBenchResult>> {
  const loadBefore = loadavg()[0]!
  const dir = await mkdtemp(join(tmpdir(), 'tokenflow-bench-prune-'))
  try {
    const sizes: PruneSize[] = []
    for (const size of settings.sizes) {
      const now = Date.now()
      const seed = join(dir, `seed-${size}.db`)
      const started = performance.now()
      const { dead, probe } = await seedFile(seed, size, settings.deadShare, now)
      log(`seeded ${size} sessions (${dead} dead) in ${Math.round(performance.now() - started)} ms`)
      const rounds: PruneSize['rounds'] = []
      for (let round = 1; round <= settings.rounds; round++) {
        const order: Variant[] = round % 2 === 1 ? ['single', 'store', 'none'] : ['none', 'store', 'single']
        const taken: Partial<Record<Variant, PruneFigures>> = {}
        for (const variant of order) {
          const filename = join(dir, `${variant}.db`)
          await copyFile(seed, filename)
          taken[variant] = await measurePrune(variant, filename, probe, now)
          await rm(filename, { force: true })
          await rm(`${filename}-wal`, { force: true })
          await rm(`${filename}-shm`, { force: true })
          log(`${size} round ${round} ${variant}: ${JSON.stringify(taken[variant])}`)
        }
        const { single, store, none } = taken as Record<Variant, PruneFigures>
        if (single.deleted !== dead || store.deleted !== dead) {
          throw new Error(
            `expected ${dead} deleted, got ${single.deleted} (single), ${store.deleted} (store)`,
          )
        }
        rounds.push({ single, store, none })
      }
      sizes.push({
        sessions: size,
        dead,
        fileMb: Math.round((await stat(seed)).size / 2 ** 20),
        single: medianFigures(rounds.map((r) => r.single)),
        store: medianFigures(rounds.map((r) => r.store)),
        none: medianFigures(rounds.map((r) => r.none)),
        rounds,
      })
      await rm(seed, { force: true })
    }
    const largest = sizes.at(-1)!
    const result: PruneBenchResult = {
      machine: machine(loadBefore),
      date: new Date().toISOString(),
      method,
      settings: { ...settings, databaseDir: tmpdir() },
      sizes,
      goal: {
        maxStallMs: stallBudget,
        stallMs: largest.store.maxStallMs,
        pass: largest.store.maxStallMs <= stallBudget,
      },
    }
    return { result, table: table(result) }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/**
 * Creates a migrated store file holding `count` sessions, `deadShare` of them dead at `now`.
 * Resolves to how many are dead, and the ids of live sessions for the rotation probe.
 */
async function seedFile(
  filename: string,
  count: number,
  deadShare: number,
  now: number,
): Promise<{ dead: number; probe: string[] }> {
  const store = createSqliteStore({ filename, synchronous: 'NORMAL' })
  await store.migrate()
  await store.createUser({
    id: 'bench-user',
    username: 'bench',
    passwordHash: '$argon2id$v=19$m=19456,t=2,p=1$bm9uZQ$bm9uZQ',
    createdAt: now,
    passwordChangedAt: now,
  })
  await store.close()
  const db = new Database(filename)
  let dead = 0
  const probe: string[] = []
  try {
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = OFF')
    // the columns of migration 1 in packages/server/src/stores/sqlite.ts, which is never edited
    const insert = db.prepare(
      `INSERT INTO sessions (id, user_id, client_id, key, counter, created_at, expires_at, last_used_at,
        rotated_at, revoked_at, revoked_reason, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    )
    // random bytes in bulk: one call per row would take longer than the inserts
    const chunk = 10_000
    db.transaction(() => {
      for (let start = 0; start < count; start += chunk) {
        const n = Math.min(chunk, count - start)
        const ids = randomBytes(16 * n)
        const keys = randomBytes(32 * n)
        for (let i = 0; i < n; i++) {
          const id = ids.subarray(16 * i, 16 * (i + 1)).toString('hex')
          let createdAt = now - 20 * DAY + Math.floor(Math.random() * 20 * DAY)
          let expiresAt = createdAt + 30 * DAY
          let lastUsedAt = now - Math.floor(Math.random() * (IDLE_TIMEOUT - DAY))
          let revokedAt: number | null = null
          if (Math.random() < deadShare) {
            // expired, revoked, or idle: a third each
            const kind = dead++ % 3
            if (kind === 0) expiresAt = now - 1 - Math.floor(Math.random() * DAY)
            else if (kind === 1) revokedAt = now - 1 - Math.floor(Math.random() * DAY)
            else lastUsedAt = now - IDLE_TIMEOUT - 1 - Math.floor(Math.random() * DAY)
          } else if (probe.length < PROBE_SESSIONS) {
            probe.push(id)
          }
          createdAt = Math.min(createdAt, lastUsedAt)
          insert.run(
            id,
            'bench-user',
            'tokenflow',
            keys.subarray(32 * i, 32 * (i + 1)),
            0,
            createdAt,
            expiresAt,
            lastUsedAt,
            createdAt,
            revokedAt,
            revokedAt === null ? null : 'logout',
            'bench',
          )
        }
      }
    })()
    db.pragma('wal_checkpoint(TRUNCATE)')
  } finally {
    db.close()
  }
  return { dead, probe }
}

/** Prunes `filename` once with `variant`, while a probe rotates live sessions through the store. */
async function measurePrune(
  variant: Variant,
  filename: string,
  probe: readonly string[],
  now: number,
): Promise<PruneFigures> {
  const { batchSize } = settings
  const store = createSqliteStore({
    filename,
    ...(batchSize === undefined ? {} : { pruneBatchSize: batchSize }),
  })
  await store.migrate()
  // the prune before batching: one statement, on a connection of its own (the store's is private)
  const raw = variant === 'single' ? new Database(filename, { timeout: 5000 }) : undefined
  raw?.pragma('journal_mode = WAL')
  raw?.pragma('synchronous = FULL')
  const prunes: Record<Variant, (store: TokenStore) => Promise<number>> = {
    single: async () =>
      raw!
        .prepare('DELETE FROM sessions WHERE expires_at < ? OR revoked_at < ? OR last_used_at < ?')
        .run(now, now, now - IDLE_TIMEOUT).changes,
    store: (on) => on.deleteExpiredSessions(now, now - IDLE_TIMEOUT),
    none: () => new Promise((resolve) => setTimeout(() => resolve(0), NO_PRUNE_MS)),
  }
  const prune = prunes[variant]
  try {
    // one rotation first: the statements are prepared and the store is warm before the clock starts
    const counters = new Map(probe.map((id) => [id, 0]))
    const rotate = async (id: string) => {
      const counter = counters.get(id)!
      const rotated = await store.rotateSession(id, counter, Date.now())
      if (!rotated) throw new Error(`rotation of live session ${id} refused during the prune`)
      counters.set(id, counter + 1)
    }
    await rotate(probe[0]!)

    // every rotation that started before the prune ended counts, the one the prune held up included
    let done = false
    let rotations = 0
    let maxRotationMs = 0
    const rotating = (async () => {
      for (let i = 1; !done; i++) {
        const started = performance.now()
        await rotate(probe[i % probe.length]!)
        rotations++
        maxRotationMs = Math.max(maxRotationMs, performance.now() - started)
      }
    })()

    // let the probe's first rotation get queued, then start the prune from a fresh turn
    await new Promise(setImmediate)
    const stalls = stallProbe()
    const started = performance.now()
    const deleted = await prune(store).finally(() => {
      done = true
    })
    const totalMs = performance.now() - started
    const gaps = stalls.stop()
    await rotating
    return {
      deleted,
      maxStallMs: round2(gaps.at(-1)!),
      p99StallMs: round2(gaps[Math.ceil(0.99 * gaps.length) - 1]!),
      totalMs: round2(totalMs),
      rotations,
      maxRotationMs: round2(maxRotationMs),
    }
  } finally {
    raw?.close()
    await store.close()
  }
}

/**
 * The gaps between two ticks of a 1 ms interval up to `stop()`, sorted: the longest is how long
 * the event loop was blocked at most. The last gap ends at `stop()`, so a block just before it
 * counts too; `monitorEventLoopDelay` would miss it, as it records a delay only once its timer fires.
 */
function stallProbe(): { stop(): number[] } {
  let last = performance.now()
  const gaps: number[] = []
  const timer = setInterval(() => {
    const now = performance.now()
    gaps.push(now - last)
    last = now
  }, 1)
  return {
    stop() {
      clearInterval(timer)
      gaps.push(performance.now() - last)
      return gaps.sort((a, b) => a - b)
    },
  }
}

function medianFigures(rounds: readonly PruneFigures[]): PruneFigures {
  const pick = (key: keyof PruneFigures) => round2(median(rounds.map((round) => round[key])))
  return {
    deleted: pick('deleted'),
    maxStallMs: pick('maxStallMs'),
    p99StallMs: pick('p99StallMs'),
    totalMs: pick('totalMs'),
    rotations: pick('rotations'),
    maxRotationMs: pick('maxRotationMs'),
  }
}

function table(result: PruneBenchResult): string {
  const rows = result.sizes.flatMap((size) =>
    (['single', 'store', 'none'] as const).map((variant) => {
      const value = size[variant]
      const label = {
        single: 'one DELETE (before)',
        store: 'deleteExpiredSessions',
        none: `none (rotations alone, ${NO_PRUNE_MS} ms)`,
      }[variant]
      return `| ${size.sessions} | ${label} | ${value.deleted} | ${value.maxStallMs} | ${value.p99StallMs} | ${value.totalMs} | ${value.rotations} | ${value.maxRotationMs} |`
    }),
  )
  const { goal } = result
  return [
    '| sessions | prune | deleted | max event-loop stall ms | p99 stall ms | total ms | rotations meanwhile | slowest rotation ms |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    `longest stall of deleteExpiredSessions at ${result.sizes.at(-1)!.sessions} sessions: ${goal.stallMs} ms (goal ≤ ${goal.maxStallMs}: ${goal.pass ? 'PASS' : 'FAIL'})`,
  ].join('\n')
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = sorted.length / 2
  return sorted.length % 2 === 1 ? sorted[Math.floor(middle)]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

function envNumber(name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`"${name}" must be a positive number`)
  return value
}

function envList(name: string, fallback: number[]): number[] {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const values = raw.split(',').map(Number)
  if (values.some((value) => !Number.isSafeInteger(value) || value <= 0)) {
    throw new Error(`"${name}" must be positive integers, comma-separated`)
  }
  return values
}

const startedAt = performance.now()

function log(message: string): void {
  console.error(`[prune bench +${((performance.now() - startedAt) / 1000).toFixed(0)} s] ${message}`)
}

function round2(value: number): number {
  return Math.round(value * 100) / 100
}
