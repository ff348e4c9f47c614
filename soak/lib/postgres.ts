/**
 * The soak's own PostgreSQL schema, the session-row check, and the real restart of the local cluster.
 * Other suites share this PostgreSQL: the soak only ever creates and drops its own `tf_soak_*` schema.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import pg from 'pg'
// straight from its module: the package index would load Fastify into the soak's own process
import { parseRefreshToken } from '../../packages/server/src/refresh-token.js'
import type { SoakClient } from './clients.js'

/** A schema of this soak run, and a pool for checking it. */
export interface SoakDatabase {
  url: string
  schema: string
  /** the current session rows (id, counter, revocation) */
  sessions(): Promise<Map<string, { counter: number; revokedReason: string | null; revoked: boolean }>>
  /** drops the schema and closes the pool; retried while PostgreSQL restarts */
  drop(): Promise<void>
}

/** What the session rows say about the clients' tokens. */
export interface SessionCheck {
  /** clients whose row is missing, revoked, or holds another counter than the client's refresh token */
  inconsistentRows: number
  /** rows of the schema revoked with reason 'reuse' */
  revokedForReuse: number
  /** clients without a refresh token: a session the client lost */
  withoutToken: number
}

/**
 * Connects, or resolves null when PostgreSQL is not reachable (a machine without a local cluster).
 * @example
 * const db = await openSoakDatabase('postgres://postgres@127.0.0.1:5432/test')
 */
export async function openSoakDatabase(url: string): Promise<SoakDatabase | null> {
  const pool = new pg.Pool({ connectionString: url, max: 2, connectionTimeoutMillis: 3_000 })
  // the soak restarts PostgreSQL: an idle connection of this pool dies then, which is no error here
  pool.on('error', () => undefined)
  try {
    await pool.query('SELECT 1')
  } catch {
    await pool.end().catch(() => undefined)
    return null
  }
  const schema = `tf_soak_${randomBytes(6).toString('hex')}`
  await pool.query(`CREATE SCHEMA "${schema}"`)
  // a connection that died with a restart fails its next query once: the pool then opens a new one
  const retried = async <T>(fn: () => Promise<T>, attempts: number): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn()
      } catch (error) {
        if (attempt >= attempts) throw error
        await new Promise((resolve) => setTimeout(resolve, 500))
      }
    }
  }
  return {
    url,
    schema,
    async sessions() {
      const { rows } = await retried(
        () =>
          pool.query<{
            id: string
            counter: string
            revoked_at: string | null
            revoked_reason: string | null
          }>(`SELECT id, counter, revoked_at, revoked_reason FROM "${schema}".sessions`),
        3,
      )
      return new Map(
        rows.map((row) => [
          row.id,
          {
            counter: Number(row.counter),
            revoked: row.revoked_at !== null,
            revokedReason: row.revoked_reason,
          },
        ]),
      )
    },
    async drop() {
      await retried(() => pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`), 10)
      await pool.end().catch(() => undefined)
    },
  }
}

/**
 * Compares every client's refresh token (session id and counter, read with `parseRefreshToken`)
 * with its session row. Run it while no request is in flight.
 * @example
 * const { inconsistentRows } = await checkSessions(db, fleet.clients)
 */
export async function checkSessions(db: SoakDatabase, clients: readonly SoakClient[]): Promise<SessionCheck> {
  const rows = await db.sessions()
  let inconsistentRows = 0
  let withoutToken = 0
  for (const client of clients) {
    const parsed = parseRefreshToken((await client.storage.get())?.refreshToken)
    if (!parsed) {
      withoutToken++
      continue
    }
    const row = rows.get(parsed.sessionId)
    if (!row || row.revoked || row.counter !== parsed.counter) inconsistentRows++
  }
  const revokedForReuse = [...rows.values()].filter((row) => row.revokedReason === 'reuse').length
  return { inconsistentRows, revokedForReuse, withoutToken }
}

/** How to restart the local cluster, or why the soak cannot. */
export type RestartCommand = { command: string; args: string[] } | { skip: string }

/**
 * The real restart command of the local PostgreSQL cluster (Debian's `pg_ctlcluster`) that serves `url`, when
 * this process may run it: the cluster whose `postgresql.conf` names the URL's port (5432 when it has none).
 * @example
 * const restart = postgresRestartCommand('postgres://postgres@127.0.0.1:5432/test')
 * if ('skip' in restart) console.log(restart.skip)
 */
export function postgresRestartCommand(url: string): RestartCommand {
  const wanted = process.env.SOAK_POSTGRES_RESTART
  if (wanted === 'skip') return { skip: 'SOAK_POSTGRES_RESTART=skip' }
  // stopping the machine's PostgreSQL is never a surprise: CI does it, anyone else says so
  if (wanted !== '1' && process.env.CI !== 'true')
    return {
      skip: 'it stops and starts the local PostgreSQL: set SOAK_POSTGRES_RESTART=1 to allow it (CI does)',
    }
  if (process.getuid?.() !== 0) return { skip: 'not root, so pg_ctlcluster cannot restart PostgreSQL' }
  const binary = ['/usr/bin/pg_ctlcluster', '/usr/sbin/pg_ctlcluster'].find((path) => existsSync(path))
  if (!binary || !existsSync('/etc/postgresql'))
    return { skip: 'no local PostgreSQL cluster (pg_ctlcluster)' }
  let host: string
  let port: string
  try {
    ;({ hostname: host, port } = new URL(url))
  } catch {
    return { skip: 'the database URL does not parse' }
  }
  // a socket directory in the URL's query, or no host at all, is local too
  if (!['', 'localhost', '127.0.0.1', '[::1]'].includes(host))
    return { skip: `the database (${host}) is not on this machine` }
  for (const version of readdirSync('/etc/postgresql'))
    for (const name of readdirSync(`/etc/postgresql/${version}`)) {
      const config = `/etc/postgresql/${version}/${name}/postgresql.conf`
      if (!existsSync(config)) continue
      const configured = /^\s*port\s*=\s*'?(\d+)/m.exec(readFileSync(config, 'utf8'))?.[1] ?? '5432'
      if (configured === (port || '5432'))
        return { command: binary, args: ['--skip-systemctl-redirect', version, name, 'restart'] }
    }
  return { skip: `no local cluster listens on port ${port || '5432'}` }
}

const run = (command: string, args: string[]) =>
  new Promise<void>((resolve, reject) => {
    execFile(command, args, { timeout: 60_000 }, (error, _stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} failed: ${stderr.trim() || error.message}`))
      else resolve()
    })
  })

/**
 * Stops the cluster, keeps it down for `downMs`, and starts it again (up to three tries); resolves when it
 * accepts connections. A plain `restart` is over in a few hundred ms, which the clients may not even meet;
 * a real outage makes sure refreshes fail meanwhile, so the retries and the recovery are what is tested.
 * @example
 * await restartPostgres({ command: 'pg_ctlcluster', args: ['--skip-systemctl-redirect', '15', 'main', 'restart'] }, 2_000)
 */
export async function restartPostgres(
  { command, args }: { command: string; args: string[] },
  downMs: number,
): Promise<void> {
  const cluster = args.slice(0, -1)
  await run(command, [...cluster, 'stop'])
  await new Promise((resolve) => setTimeout(resolve, downMs))
  for (let attempt = 1; ; attempt++) {
    try {
      return await run(command, [...cluster, 'start'])
    } catch (error) {
      if (attempt === 3) throw error
      await new Promise((resolve) => setTimeout(resolve, 1_000))
    }
  }
}

/** When PostgreSQL stopped answering and when it answered again, as seen by a probe every 100 ms. */
export interface Outage {
  /** epoch ms of the first failed probe, or null when none failed */
  from: number | null
  /** epoch ms of the first ok probe after a failure */
  to: number | null
}

/**
 * Probes PostgreSQL with `SELECT 1` until stopped (and, once it failed, until it answers again), to
 * measure the outage a restart causes.
 * @example
 * const watch = watchOutage(url)
 * await restartPostgres(command)
 * const { from, to } = await watch.stop()
 */
export function watchOutage(url: string): { stop(): Promise<Outage> } {
  const pool = new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 1_000 })
  pool.on('error', () => undefined)
  const outage: Outage = { from: null, to: null }
  let watching = true
  const loop = (async () => {
    while (watching) {
      const sent = Date.now()
      const ok = await pool.query('SELECT 1').then(
        () => true,
        () => false,
      )
      // from the start of the first failed probe to the end of the first ok one: never shorter than it was
      if (!ok) outage.from ??= sent
      else if (outage.from !== null) outage.to ??= Date.now()
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  })()
  return {
    async stop() {
      // an outage that began is watched until it ends, or for 15 s more at most
      const until = Date.now() + 15_000
      while (outage.from !== null && outage.to === null && Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      watching = false
      await loop
      await pool.end().catch(() => undefined)
      return outage
    },
  }
}
