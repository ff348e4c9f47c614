/**
 * The limiter part of `npm run bench` (`tsx bench/run.ts limiter`): what one login attempt at a new name costs
 * the in-memory rate limiter (`createRateLimiter`, as the server's per-account budget uses it) when its map is
 * full and a window has to be evicted, next to the same attempt on a limiter with room (the baseline), in
 * the same rounds.
 *
 * Full maps are filled three ways: every name tried once (ordinary traffic: typos, one login each), every
 * name tried twice, and every name at its limit (a flood made to push a locked-out account's window out). The
 * eviction takes the first window of the lowest band of attempts in a few steps; a pass over the whole map
 * for each eviction (commit 3318fb4) cost 113 to 140 µs per attempt in the last two (commit a9a5d02).
 *
 * It has no budget: for scale, a login attempt that goes on to hash a password costs tens of milliseconds.
 * Run on the BUILT packages (`npm run build` first), or on the sources with
 * `tsx --conditions=@tokenflow/source bench/run.ts limiter`.
 *
 * Settings (environment):
 * - BENCH_LIMITER_KEYS: the limiter's maxKeys (10000, the default)
 * - BENCH_LIMITER_ATTEMPTS: new names timed per round and scenario (5000)
 * - BENCH_LIMITER_ROUNDS: rounds, the scenarios interleaved in rotating order (7)
 */
import { loadavg } from 'node:os'
import { createRateLimiter, type RateLimiter } from '@tokenflow/server'
import { type Machine, machine } from './lib/machine.js'
import type { BenchPartResult } from './run.js'

const LIMIT = 10

const setting = (name: string, fallback: number) => {
  const value = Number(process.env[name])
  return Number.isSafeInteger(value) && value > 0 ? value : fallback
}

const scenarios = {
  room: 'room to spare (baseline)',
  once: 'full: every name tried once',
  twice: 'full: every name tried twice',
  locked: 'full: every name at its limit',
} as const
type Scenario = keyof typeof scenarios

export interface LimiterBenchResult {
  date: string
  machine: Machine
  settings: { maxKeys: number; limit: number; attempts: number; rounds: number }
  rows: Array<{ scenario: Scenario; label: string; nsPerAttempt: number; ratio: number }>
  method: string
}

async function filled(scenario: Scenario, maxKeys: number): Promise<RateLimiter> {
  const limiter = createRateLimiter({ limit: LIMIT, window: 3_600_000, maxKeys })
  const names = scenario === 'room' ? 0 : maxKeys
  const times = scenario === 'twice' ? 2 : scenario === 'locked' ? LIMIT : 1
  for (let i = 0; i < names; i++) for (let j = 0; j < times; j++) await limiter.consume(`user:name${i}`)
  return limiter
}

/** ns per consume of `attempts` names never seen before */
async function time(limiter: RateLimiter, attempts: number, round: number): Promise<number> {
  const started = process.hrtime.bigint()
  for (let i = 0; i < attempts; i++) await limiter.consume(`user:new${round}-${i}`)
  return Number(process.hrtime.bigint() - started) / attempts
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

export async function run(): Promise<BenchPartResult<LimiterBenchResult>> {
  const maxKeys = setting('BENCH_LIMITER_KEYS', 10_000)
  const attempts = setting('BENCH_LIMITER_ATTEMPTS', 5_000)
  const rounds = setting('BENCH_LIMITER_ROUNDS', 7)
  const before = loadavg()[0]!
  const order = Object.keys(scenarios) as Scenario[]
  const ns: Record<Scenario, number[]> = { room: [], once: [], twice: [], locked: [] }
  const ratios: Record<Scenario, number[]> = { room: [], once: [], twice: [], locked: [] }
  // one warm-up round, not counted
  for (let round = -1; round < rounds; round++) {
    const measured = {} as Record<Scenario, number>
    for (let k = 0; k < order.length; k++) {
      const scenario = order[(k + Math.max(0, round)) % order.length]!
      const limiter = await filled(scenario, maxKeys)
      measured[scenario] = await time(limiter, attempts, round)
      await limiter.close()
    }
    if (round < 0) continue
    for (const scenario of order) {
      ns[scenario].push(measured[scenario])
      ratios[scenario].push(measured[scenario] / measured.room)
    }
  }
  const rows = order.map((scenario) => ({
    scenario,
    label: scenarios[scenario],
    nsPerAttempt: Math.round(median(ns[scenario])),
    ratio: Number(median(ratios[scenario]).toFixed(2)),
  }))
  const result: LimiterBenchResult = {
    date: new Date().toISOString(),
    machine: machine(before),
    settings: { maxKeys, limit: LIMIT, attempts, rounds },
    rows,
    method: `createRateLimiter({ limit: ${LIMIT}, maxKeys: ${maxKeys} }) in memory, filled as the row says, then ${attempts} consumes of names it has not seen, timed with process.hrtime; ${rounds} rounds after a warm-up, the scenarios in rotating order; ns per attempt and the ratio to the baseline of the same round are medians over the rounds.`,
  }
  const table = [
    '| limiter | ns per attempt at a new name (median) | vs room to spare |',
    '| --- | ---: | ---: |',
    ...rows.map(
      (row) => `| ${row.label} | ${row.nsPerAttempt.toLocaleString('en-US')} | ${row.ratio.toFixed(2)}× |`,
    ),
  ].join('\n')
  return { result, table }
}
