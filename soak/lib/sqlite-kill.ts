/**
 * Phase 4 of the soak: SQLite loses its process. One instance on a SQLite file (the library
 * defaults: WAL, synchronous FULL, group commit) takes a refresh storm, is killed with SIGKILL in
 * the middle of it, and is started again on the same file. Every refresh token a client received in
 * a 200 answer must still be accepted afterwards: an answer sent before its rotation was durable
 * would show up here as `invalid_grant`.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Instance, type InstanceEvents, startInstance } from './instances.js'
import { SOAK_PASSWORD } from './protocol.js'

/** Options of `prepareSqliteKill`. */
export interface SqliteKillOptions {
  /** sessions refreshing in the storm, one loop each */
  sessions: number
  /** storms, each ended by a kill and followed by a restart and the check */
  rounds: number
  /** how long the storm runs before the kill: uniform in [min, max] ms */
  storm: readonly [number, number]
  accessTokenTtl: number
  clockTolerance: number
  events: InstanceEvents
}

/** What the SQLite kill phase measured, summed over its rounds. */
export interface SqliteKillResult {
  rounds: number
  sessions: number
  /** (round, session) pairs where the session got at least one 200 to a refresh during the storm */
  answered: number
  /** of those, how many refreshed with 200 using the last token received, after the restart */
  stillValid: number
  /** 200 answers during the storms */
  answeredRefreshes: number
  /** refreshes per second the storms got answered, before the kill */
  stormRefreshesPerSecond: number
  /** requests that were waiting for their answer when the process was killed */
  inFlightAtKill: number
  /** refresh answers other than 200 during a storm (every token sent was the current one) */
  refusedDuringStorm: number
  /** refreshes of the check answered from `reuseGrace`: rotations that committed but whose answer the kill lost */
  graceReplays: number
  /** sessions without a 200 in a round: their older token was checked the same way */
  unanswered: { checked: number; stillValid: number }
  /** ms from the kill to the restarted instance listening, slowest round */
  restartMs: number
}

/**
 * `reuseGrace` of the SQLite instance, in ms. A rotation that committed but whose answer the kill lost
 * leaves the client one token behind; the check after the restart is then its retry, which must land
 * within the grace. A minute keeps a slow restart on a loaded machine from turning that into reuse.
 * It cannot hide a lost rotation: a token ahead of the stored counter is refused whatever the grace.
 */
export const SQLITE_REUSE_GRACE = 60_000

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

async function refresh(
  url: string,
  refreshToken: string,
): Promise<{ status: number; refreshToken?: string }> {
  const response = await fetch(`${url}/refresh/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ refreshToken }),
  })
  // the client has the new token only once the whole body arrived
  const body = (await response.json()) as { refreshToken?: string }
  return response.status === 200 && body.refreshToken
    ? { status: 200, refreshToken: body.refreshToken }
    : { status: response.status }
}

/** A SQLite instance started ahead of its phase, so that its start overlaps the other phases. */
export interface SqliteKill {
  /** storms, kills, restarts and checks */
  run(): Promise<SqliteKillResult>
  /** stops the instance and removes its database directory */
  close(): Promise<void>
}

/**
 * Starts the SQLite instance of the kill phase on a new file in a temporary directory.
 * @example
 * const phase = await prepareSqliteKill({ sessions: 50, rounds: 2, storm: [500, 1000], accessTokenTtl: 1000, clockTolerance: 1000, events })
 * const result = await phase.run()
 * await phase.close()
 * result.answered === result.stillValid
 */
export async function prepareSqliteKill({
  sessions,
  rounds,
  storm,
  accessTokenTtl,
  clockTolerance,
  events,
}: SqliteKillOptions): Promise<SqliteKill> {
  const dir = await mkdtemp(join(tmpdir(), 'tf-soak-sqlite-'))
  const close = async () => {
    await instance?.stop()
    await rm(dir, { recursive: true, force: true })
  }
  let instance: Instance | undefined
  try {
    instance = await startInstance(
      {
        name: 'sqlite',
        kind: 'sqlite',
        file: join(dir, 'tokenflow.db'),
        port: 0,
        accessTokenTtl,
        clockTolerance,
        reuseGrace: SQLITE_REUSE_GRACE,
      },
      events,
    )
  } catch (error) {
    await close()
    throw error
  }
  const server = instance
  return { run: () => run(server), close }

  async function run(instance: Instance): Promise<SqliteKillResult> {
    const result: SqliteKillResult = {
      rounds,
      sessions,
      answered: 0,
      stillValid: 0,
      answeredRefreshes: 0,
      stormRefreshesPerSecond: 0,
      inFlightAtKill: 0,
      refusedDuringStorm: 0,
      graceReplays: 0,
      unanswered: { checked: 0, stillValid: 0 },
      restartMs: 0,
    }
    const tokens: string[] = []
    for (let i = 0; i < sessions; i += 20) {
      const batch = Array.from({ length: Math.min(20, sessions - i) }, async (_, j) => {
        const response = await fetch(`${instance.url}/auth/login`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ username: `sqlite-${i + j}`, password: SOAK_PASSWORD }),
        })
        const body = (await response.json()) as { refreshToken?: string }
        if (!response.ok || !body.refreshToken) throw new Error(`sqlite login answered ${response.status}`)
        tokens[i + j] = body.refreshToken
      })
      await Promise.all(batch)
    }

    let stormMs = 0
    for (let round = 0; round < rounds; round++) {
      let stopped = false
      let inFlight = 0
      const answered = new Set<number>()
      const worker = async (index: number) => {
        while (!stopped) {
          inFlight++
          let answer: Awaited<ReturnType<typeof refresh>>
          try {
            answer = await refresh(instance.url, tokens[index]!)
          } catch {
            // no (whole) answer: the process is gone
            return
          } finally {
            inFlight--
          }
          if (answer.refreshToken === undefined) {
            result.refusedDuringStorm++
            return
          }
          tokens[index] = answer.refreshToken
          answered.add(index)
          result.answeredRefreshes++
        }
      }
      const started = Date.now()
      const workers = tokens.map((_, index) => worker(index))
      await sleep(storm[0] + Math.random() * (storm[1] - storm[0]))
      result.inFlightAtKill += inFlight
      const killedAt = Date.now()
      stormMs += killedAt - started
      await instance.kill()
      stopped = true
      await Promise.all(workers)

      await instance.restart()
      result.restartMs = Math.max(result.restartMs, Date.now() - killedAt)
      // the check refreshes too: its answer is the token of the next round
      await Promise.all(
        tokens.map(async (token, index) => {
          const answer = await refresh(instance.url, token)
          const ok = answer.refreshToken !== undefined
          if (ok) tokens[index] = answer.refreshToken!
          if (answered.has(index)) {
            result.answered++
            if (ok) result.stillValid++
          } else {
            result.unanswered.checked++
            if (ok) result.unanswered.stillValid++
          }
        }),
      )
      result.graceReplays += (await instance.stats()).graceReplays
    }
    result.stormRefreshesPerSecond = Math.round((result.answeredRefreshes / Math.max(stormMs, 1)) * 1000)
    return result
  }
}
