/**
 * The in-memory rate limiter against a reference model of its documented policy (first written by a code
 * review of the eviction by bands): random attempts at eight names, with the clock moving forward (and, in
 * the second property, back as well), on limiters of every size from 1 to 5 windows.
 *
 * The model: a window per name; when full, the oldest window goes if it has expired, else the first to
 * enter the lowest band of attempts: floor(log2(count)) below the limit, then "at its limit", then "refused
 * at least once". Invariants: every answer equals the model's, and a window that was refused is never
 * evicted while a window in a lower band exists. (A 20,000-run soak found that with a clock set back, an
 * expired window behind a live one is not dropped first: it waits for its band, and the model says so.)
 */
import fc from 'fast-check'
import { expect, it } from 'vitest'
import { createRateLimiter, type RateLimitResult } from '../src/rate-limit.js'

/** 1000 sequences per property by default; TOKENFLOW_PROPERTY_RUNS raises it */
const RUNS = Math.max(1000, Number(process.env.TOKENFLOW_PROPERTY_RUNS) || 0)
const WINDOW = 60_000
const USED_UP = 63
const LOCKED = 64

type Op = { kind: 'consume'; key: number } | { kind: 'advance'; ms: number }

interface ModelWindow {
  count: number
  resetAt: number
  band: number
  /** when it entered its band, in steps */
  entered: number
  created: number
}

function model(limit: number, maxKeys: number) {
  let step = 0
  const windows = new Map<string, ModelWindow>()
  const bandOf = (count: number) =>
    count > limit ? LOCKED : count === limit ? USED_UP : Math.floor(Math.log2(count))
  return {
    consume(key: string, time: number): RateLimitResult {
      let entry = windows.get(key)
      if (!entry || entry.resetAt <= time) {
        windows.delete(key)
        if (windows.size >= maxKeys) {
          const all = [...windows.entries()]
          // the oldest window, if it has expired (with a clock that never goes back, the oldest expire first;
          // set back, an expired window behind a live one waits for its band)
          const [oldest] = [...all].sort((a, b) => a[1].created - b[1].created)
          const expired = oldest && oldest[1].resetAt <= time ? oldest : undefined
          const [victim] = expired
            ? [expired]
            : all.sort((a, b) => a[1].band - b[1].band || a[1].entered - b[1].entered)
          if (!expired && victim![1].band === LOCKED && all.some(([, w]) => w.band < LOCKED)) {
            throw new Error(`a lockout was evicted while a lower band had windows: ${victim![0]}`)
          }
          windows.delete(victim![0])
        }
        entry = { count: 0, resetAt: time + WINDOW, band: -1, entered: 0, created: step++ }
        windows.set(key, entry)
      }
      entry.count++
      const band = bandOf(entry.count)
      if (band !== entry.band) {
        entry.band = band
        entry.entered = step++
      }
      return entry.count <= limit
        ? { ok: true, retryAfter: 0 }
        : { ok: false, retryAfter: Math.max(1, Math.ceil((entry.resetAt - time) / 1000)) }
    },
  }
}

const check = (backwards: boolean) =>
  fc.assert(
    fc.asyncProperty(
      fc.constantFrom(1, 2, 3, 5, 8, 1e6, 2 ** 31 + 5),
      fc.integer({ min: 1, max: 5 }),
      fc.array(
        fc.oneof(
          {
            weight: 5,
            arbitrary: fc.record({
              kind: fc.constant('consume' as const),
              key: fc.integer({ min: 0, max: 7 }),
            }),
          },
          {
            weight: 1,
            arbitrary: fc.record({
              kind: fc.constant('advance' as const),
              ms: backwards ? fc.integer({ min: -90_000, max: 90_000 }) : fc.integer({ min: 0, max: 70_000 }),
            }),
          },
        ),
        { maxLength: 120 },
      ),
      async (limit, maxKeys, ops: Op[]) => {
        let time = 1_000_000
        const limiter = createRateLimiter({ limit, window: WINDOW, maxKeys, now: () => time })
        const reference = model(limit, maxKeys)
        for (const op of ops) {
          if (op.kind === 'advance') time += op.ms
          else expect(await limiter.consume(`k${op.key}`)).toEqual(reference.consume(`k${op.key}`, time))
        }
        await limiter.close()
        // closed, it starts afresh
        expect(await limiter.consume('k0')).toEqual({ ok: true, retryAfter: 0 })
      },
    ),
    { numRuns: RUNS },
  )

it(`the in-memory limiter answers as its model does, the clock moving forward (${RUNS} sequences)`, async () => {
  await check(false)
}, 120_000)

it(`the in-memory limiter answers as its model does, the clock also set back (${RUNS} sequences)`, async () => {
  await check(true)
}, 120_000)
