#!/usr/bin/env node
/**
 * The `tokenflow-server` command: run the server, manage users, rotate keys.
 * Every failure is one line on stderr and exit code 1, never a stack trace.
 */
import { readSync } from 'node:fs'
import { StringDecoder } from 'node:string_decoder'
import { isatty } from 'node:tty'
import { parseArgs } from 'node:util'
import { isAuthError } from './errors.js'
import { createIssuer } from './issuer.js'
import { createKeyring, type SigningAlgorithm } from './keys.js'
import { isLoopbackHost } from './loopback.js'
import { createPostgresStore } from './stores/postgres.js'
import { createSqliteStore } from './stores/sqlite.js'
import type { TokenStore } from './stores/store.js'

const USAGE = `usage: tokenflow-server <command> [options]

commands:
  start [--port 3000] [--host 127.0.0.1] [--db ./tokenflow.db | --postgres URL]
                        port from env PORT, host from env TOKENFLOW_HOST; a host that is not loopback
                        (0.0.0.0 to take outside traffic) needs --issuer
  user add <name>       the password is read from a prompt, or from the first line of stdin when it
                        is not a terminal (the rest of stdin is left unread)
  user list
  user remove <name>
  keys rotate [--alg ES256|ES384|RS256|PS256]  (default: the algorithm of the current key)

options of every command:
  --db FILE             SQLite database file (env TOKENFLOW_DB; default ./tokenflow.db)
  --postgres URL        PostgreSQL connection URL (env DATABASE_URL), needs the "pg" package
  -h, --help            show this help

options of start (--alg also of keys rotate):
  --issuer URL          "iss" of access tokens (env TOKENFLOW_ISSUER; default http://HOST:PORT,
                        with the port actually bound for --port 0)
  --audience AUD        "aud" of access tokens (env TOKENFLOW_AUDIENCE; default the issuer)
  --client-id ID        OAuth client id (env TOKENFLOW_CLIENT_ID; default tokenflow)
  --redis URL           keep login rate limits in Redis (env TOKENFLOW_REDIS_URL)
  --alg ALG             algorithm of generated signing keys (env TOKENFLOW_KEY_ALG; default ES256)
  --trust-proxy ADDRS   the reverse proxies in front, comma-separated addresses or CIDRs (env
                        TOKENFLOW_TRUST_PROXY; e.g. 10.0.0.0/8): the client their X-Forwarded-For names
                        gets its own per-IP login budget (default: no proxy trusted)
  --reuse-grace MS      how long the previous refresh token still gets the current one back, in ms
                        (env TOKENFLOW_REUSE_GRACE; default 10000; with @tokenflow/client's default
                        timeout and retries, 30000: a retry after a lost answer is not then a reuse)
`

/** The flags each command reads besides --db, --postgres and --help: any other is refused, never ignored. */
const COMMAND_FLAGS: Record<string, readonly string[]> = {
  start: ['port', 'host', 'issuer', 'audience', 'client-id', 'redis', 'alg', 'trust-proxy', 'reuse-grace'],
  user: [],
  keys: ['alg'],
}

/** A user-facing failure: printed as one line, exit code 1. */
class CliError extends Error {
  override name = 'CliError'
}

interface Database {
  store: TokenStore
  close(): Promise<void>
}

const ALGORITHMS = ['ES256', 'ES384', 'RS256', 'PS256']

/** The flag and the env variable that set each of the server's options, for the server's own error messages. */
const OPTION_SOURCES: Record<string, [flag: string, variable: string]> = {
  issuer: ['issuer', 'TOKENFLOW_ISSUER'],
  audience: ['audience', 'TOKENFLOW_AUDIENCE'],
  clientId: ['client-id', 'TOKENFLOW_CLIENT_ID'],
  redisUrl: ['redis', 'TOKENFLOW_REDIS_URL'],
  trustProxy: ['trust-proxy', 'TOKENFLOW_TRUST_PROXY'],
  reuseGrace: ['reuse-grace', 'TOKENFLOW_REUSE_GRACE'],
}

async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>
  try {
    parsed = parse(argv)
  } catch (error) {
    // parseArgs's first sentence says it ("Unknown option '--nope'"); the rest is advice about "--", except
    // for a value that starts with a dash (`--port -1`), where its last line says how to give one
    const message = messageOf(error)
    const dash = /specify an option argument starting with a dash use '[^']*'/.exec(message)?.[0]
    throw new CliError(`${message.split(/\.\s/)[0]}${dash ? `: to ${dash}` : ''} (see --help)`)
  }
  const { values, positionals } = parsed
  if (values.help) {
    process.stdout.write(USAGE)
    return 0
  }
  // no command is a failure: the usage goes where failures go, so `tokenflow-server > out` shows it
  if (positionals.length === 0) {
    process.stderr.write(USAGE)
    return 1
  }
  const [command, sub, ...rest] = positionals
  const env = environment()
  /** how the user set a value that is refused: its flag, or its env variable when no flag was given */
  const named = (flag: string, variable: string) =>
    (values as Record<string, unknown>)[flag] === undefined && env[variable] !== undefined
      ? variable
      : `--${flag}`
  /** The server names an option; the CLI user knows it as the flag (or its env variable). */
  const asFlag = (error: unknown): unknown => {
    const option =
      isAuthError(error) && /^"(issuer|audience|clientId|redisUrl|trustProxy|reuseGrace)"/.exec(error.message)
    if (!option) return error
    const [flag, variable] = OPTION_SOURCES[option[1]!]!
    return new CliError(`${named(flag, variable)}${(error as Error).message.slice(option[0].length)}`)
  }
  const flags = command === undefined ? undefined : COMMAND_FLAGS[command]
  const ignored =
    flags &&
    Object.keys(values).find((name) => !['db', 'postgres', 'help'].includes(name) && !flags.includes(name))
  // `keys rotate --issuer …` would look meaningful and do nothing
  if (ignored) throw new CliError(`--${ignored} is not an option of "${command}" (see --help)`)
  // an empty flag is a script's unset variable: `--host ""` would listen on every interface, `--postgres ""`
  // start on a new SQLite file. (An empty env variable counts as unset instead)
  const empty = Object.entries(values).find(([, value]) => value === '')
  if (empty) throw new CliError(`--${empty[0]} needs a value, got ""`)

  if (values.db !== undefined && values.postgres !== undefined) {
    throw new CliError('use either --db or --postgres, not both')
  }
  const alg = values.alg ?? env.TOKENFLOW_KEY_ALG ?? 'ES256'
  // only the commands that make keys read it: a bad TOKENFLOW_KEY_ALG in the environment must not stop `user add`
  if (flags?.includes('alg') && !ALGORITHMS.includes(alg)) {
    throw new CliError(
      `${named('alg', 'TOKENFLOW_KEY_ALG')} must be one of ${ALGORITHMS.join(', ')}, got "${alg.slice(0, 32)}"`,
    )
  }

  switch (command) {
    case 'start': {
      if (sub !== undefined) throw new CliError(`unexpected argument "${sub}" (see --help)`)
      let port = parsePort(values.port ?? env.PORT ?? '3000', named('port', 'PORT'))
      const host = values.host ?? env.TOKENFLOW_HOST ?? '127.0.0.1'
      let issuer = values.issuer ?? env.TOKENFLOW_ISSUER
      if (issuer === undefined) {
        // tokens carry the issuer, and clients and verifiers must reach it: 0.0.0.0 or a port of 0 is no
        // address. On loopback the default is this server's own address, with the port it will really bind
        if (!isLoopbackHost(host)) {
          throw new CliError(
            `${named('host', 'TOKENFLOW_HOST')} ${host} needs --issuer: the https URL clients and verifiers reach this server at`,
          )
        }
        if (port === 0) port = await freePort(host)
        issuer = `http://${host.includes(':') ? `[${host}]` : host}:${port}`
      }
      const redisUrl = values.redis ?? env.TOKENFLOW_REDIS_URL
      const trustProxy = parseTrustProxy(
        values['trust-proxy'] ?? env.TOKENFLOW_TRUST_PROXY,
        named('trust-proxy', 'TOKENFLOW_TRUST_PROXY'),
      )
      const grace = values['reuse-grace'] ?? env.TOKENFLOW_REUSE_GRACE
      // digits only: Number() would take '', '1e4' or '0x10'; the server checks the range
      const reuseGrace =
        grace === undefined ? undefined : /^\d{1,15}$/.test(grace) ? Number(grace) : Number.NaN
      // Fastify loads only for `start`: the user and key commands answer faster without it
      const { createAuthServer } = await import('./index.js')
      // the server checks its options when it is created, and uses its store only once it starts: created
      // first, over a store that is opened after, a refused option leaves no database behind (no file made,
      // nothing migrated)
      let database: Database | undefined
      const store = new Proxy({} as TokenStore, {
        get: (_target, name) =>
          // not a thenable: nothing may mistake the store for a promise
          name === 'then'
            ? undefined
            : (...args: unknown[]) =>
                (database!.store[name as keyof TokenStore] as (...a: unknown[]) => unknown)(...args),
      })
      let app: ReturnType<typeof createAuthServer>
      try {
        app = createAuthServer({
          issuer,
          audience: values.audience ?? env.TOKENFLOW_AUDIENCE ?? issuer,
          clientId: values['client-id'] ?? env.TOKENFLOW_CLIENT_ID ?? 'tokenflow',
          store,
          keys: { alg: alg as SigningAlgorithm },
          logger: true,
          ...(redisUrl === undefined ? {} : { redisUrl }),
          ...(trustProxy === undefined ? {} : { trustProxy }),
          ...(reuseGrace === undefined ? {} : { reuseGrace }),
        })
      } catch (error) {
        throw asFlag(error)
      }
      database = await openDatabase(values)
      let stopping = false
      try {
        await app.listen({ port, host })
      } catch (error) {
        await database.close().catch(() => undefined)
        // (the Redis client, and so "redisUrl" needing ioredis, comes while the server gets ready)
        throw asFlag(error)
      }
      const stop = async () => {
        // one stop: a second signal (SIGTERM then SIGINT, or the same one again) neither closes the
        // database under the requests in flight nor kills them; the 10 s bound still holds
        if (stopping) return
        stopping = true
        // a client that stalls mid-request must not hold the stop forever (Fastify waits for open requests)
        setTimeout(() => {
          // the exit code alone would not say why
          app.log.warn('stop: requests still open after 10 s were cut; exiting with code 1')
          app.server.closeAllConnections()
          process.exit(1)
        }, 10_000).unref()
        await app.close()
        await database.close()
        process.exit(0)
      }
      process.on('SIGINT', stop)
      process.on('SIGTERM', stop)
      // keep running until a signal arrives
      return new Promise<number>(() => {})
    }

    case 'user': {
      // the password is read before the database opens: the read blocks the event loop, and a pool connection
      // dropped meanwhile (idle_session_timeout, a proxy's idle timeout, a restart) would fail the insert
      // the usage is checked before the database opens, which would make (and migrate) a new file
      if (sub !== 'add' && sub !== 'list' && sub !== 'remove')
        throw new CliError(`unknown command "user ${sub ?? ''}" (see --help)`)
      if (sub === 'list' && rest.length > 0) throw new CliError('usage: tokenflow-server user list')
      const removing = sub === 'remove' ? single(rest, 'user remove <name>') : undefined
      const adding =
        sub === 'add' ? { name: single(rest, 'user add <name>'), password: await readPassword() } : undefined
      const database = await openDatabase(values)
      try {
        const issuer = createIssuer({
          store: database.store,
          // user commands never sign: the keyring only loads a key when asked to
          keyring: createKeyring({ store: database.store }),
          issuer: 'tokenflow-cli',
          audience: 'tokenflow-cli',
          clientId: 'tokenflow-cli',
        })
        if (adding) {
          const user = await issuer.addUser(adding.name, adding.password)
          process.stdout.write(`added user "${user.username}"\n`)
          return 0
        }
        if (removing !== undefined) {
          if (!(await issuer.removeUser(removing))) throw new CliError(`no user "${removing}"`)
          process.stdout.write(`removed user "${removing}"\n`)
          return 0
        }
        for (const user of await issuer.listUsers()) process.stdout.write(`${user.username}\n`)
        return 0
      } finally {
        await database.close()
      }
    }

    case 'keys': {
      if (sub !== 'rotate' || rest.length > 0) throw new CliError('usage: tokenflow-server keys rotate')
      const database = await openDatabase(values)
      try {
        // without --alg or TOKENFLOW_KEY_ALG, the new key keeps the algorithm of the newest live one: a
        // deployment started with --alg RS256 must not rotate to ES256, which a verifier pinned to RS256 refuses
        const newest = (await database.store.listKeys())
          .filter((record) => record.retiredAt === null)
          .sort((a, b) => a.createdAt - b.createdAt)
          .at(-1)
        const { kid, activatesAt } = await createKeyring({
          store: database.store,
          alg: (values.alg ?? env.TOKENFLOW_KEY_ALG ?? newest?.alg ?? alg) as SigningAlgorithm,
        }).rotateKeys()
        process.stdout.write(
          `new signing key "${kid}", published in the JWKS now; servers sign with it from ${new Date(activatesAt).toISOString()}\n`,
        )
        return 0
      } finally {
        await database.close()
      }
    }

    default:
      throw new CliError(`unknown command "${command}" (see --help)`)
  }
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      db: { type: 'string' },
      postgres: { type: 'string' },
      issuer: { type: 'string' },
      audience: { type: 'string' },
      'client-id': { type: 'string' },
      redis: { type: 'string' },
      alg: { type: 'string' },
      'trust-proxy': { type: 'string' },
      'reuse-grace': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
}

async function openDatabase(values: {
  db?: string | undefined
  postgres?: string | undefined
}): Promise<Database> {
  const env = environment()
  // a flag beats the environment; TOKENFLOW_DB (ours) beats DATABASE_URL (often set for other tools)
  const postgres =
    values.postgres ??
    (values.db === undefined && env.TOKENFLOW_DB === undefined ? env.DATABASE_URL : undefined)
  if (postgres === undefined || postgres === '') {
    const store = createSqliteStore({ filename: values.db ?? env.TOKENFLOW_DB ?? './tokenflow.db' })
    await store.migrate()
    return { store, close: () => store.close() }
  }
  if (!/^postgres(ql)?:\/\//.test(postgres)) {
    throw new CliError(
      `${values.postgres === undefined ? 'DATABASE_URL' : '--postgres'} must be a postgres:// URL`,
    )
  }
  // pg sends parseInt() of it: a unit other than ms ('2s') is dropped, and the database would cut every
  // statement at 2 ms. Whole ms and '5000ms' mean what they say; '' would send none, and take the CLI's 5 s off
  const timeout = statementTimeoutOf(postgres)
  if (typeof timeout === 'string' && !/^\d+(ms)?$/.test(timeout)) {
    throw new CliError(
      `${values.postgres === undefined ? 'DATABASE_URL' : '--postgres'}: statement_timeout must be whole milliseconds (pg would read "${timeout.slice(0, 16)}" as ${Number.parseInt(timeout, 10) || 0} ms)`,
    )
  }
  let pg: { Pool: new (config: object) => PgPool }
  try {
    // an optional peer dependency, loaded only for PostgreSQL
    const name = 'pg'
    pg = ((await import(name)) as { default: typeof pg }).default
  } catch (error) {
    throw new CliError(
      `${values.postgres === undefined ? 'DATABASE_URL' : '--postgres'} needs the "pg" package: ${messageOf(error)}`,
    )
  }
  // bounded waits, as the README's own pool: a held lock or a stuck statement answers 503 with Retry-After
  // after 5 s instead of holding the request (and a pool connection) for as long as the lock is held. The
  // server enforces statement_timeout; query_timeout is the client's own bound, for a database that stopped
  // answering (frozen, or a network dropping packets) and so cannot cancel anything: 3 s after it
  const settings = { connectionString: postgres, connectionTimeoutMillis: 5000, statement_timeout: 5000 }
  // migrations wait for another instance's (README), which query_timeout would cut: they get a connection of
  // their own without it
  const migrating = new pg.Pool({ ...settings, max: 1 })
  // an idle client's error (server restart) must not crash the process with an unhandled "error" event
  migrating.on('error', () => undefined)
  try {
    await createPostgresStore({ client: migrating }).migrate()
  } catch (error) {
    throw new CliError(`cannot use the PostgreSQL database: ${messageOf(error)}`)
  } finally {
    await migrating.end().catch(() => undefined)
  }
  const pool = new pg.Pool({ ...settings, ...queryTimeout(postgres), max: 10 })
  pool.on('error', () => undefined)
  const store = createPostgresStore({ client: pool })
  return {
    store,
    async close() {
      await store.close()
      await pool.end()
    },
  }
}

/**
 * The pool's own bound on an answer: 3 s past the statement_timeout the database enforces (5 s, or what the
 * URL's `?statement_timeout=` says, which pg then sends), so that it never cuts a statement the database
 * still allows. None when the URL turns the database's bound off (0) or gives one this cannot read.
 */
function queryTimeout(url: string): { query_timeout?: number } {
  const given = statementTimeoutOf(url)
  if (given === null) return {}
  // pg sends parseInt() of it: whole ms (a unit is refused before this)
  const ms = Number.parseInt(given ?? '5000', 10)
  return ms > 0 && ms < 2 ** 31 - 3000 ? { query_timeout: ms + 3000 } : {}
}

/**
 * The URL's `statement_timeout` as pg reads it: undefined when it has none, null for a URL that pg takes and
 * URL does not parse (not known).
 */
function statementTimeoutOf(url: string): string | undefined | null {
  try {
    // read as pg-connection-string reads it: a URL with a space or a stray % is encoded first (so an encoded
    // name, 'statement%5Ftimeout', is read by neither), one without a host (`postgres://user@/db?host=…`, the
    // Unix socket) gets a stand-in host, and of a repeated parameter the last one counts
    const text = / |%[^a-f0-9]|%[a-f0-9][^a-f0-9]/i.test(url)
      ? encodeURI(url).replace(/%25(\d\d)/g, '%$1')
      : url
    return new URL(text.replace('@/', '@localhost/')).searchParams.getAll('statement_timeout').at(-1)
  } catch {
    return null
  }
}

interface PgPool {
  on(event: 'error', listener: (error: Error) => void): unknown
  end(): Promise<void>
  query(text: string, params?: unknown[]): Promise<{ rows: any[] }>
}

/** A port that is free on `host` now (the server binds it a moment later; fine for local development). */
async function freePort(host: string): Promise<number> {
  const { createServer } = await import('node:net')
  return new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once('error', reject)
    probe.listen(0, host, () => {
      const { port } = probe.address() as { port: number }
      probe.close(() => resolve(port))
    })
  })
}

/**
 * The proxies `--trust-proxy` names: comma-separated addresses or CIDRs, each checked by the server. A bare
 * number is refused as the hop count it looks like (as `createAuthServer` refuses one): Fastify 5 would
 * trust no hop for it, and every client would share the proxy's per-IP login budget.
 */
function parseTrustProxy(text: string | undefined, name: string): string[] | undefined {
  if (text === undefined) return undefined
  if (/^\s*\d+\s*$/.test(text)) {
    throw new CliError(
      `${name} takes the proxies' addresses or CIDRs (e.g. 10.0.0.0/8), not a hop count: got "${text.trim().slice(0, 32)}"`,
    )
  }
  const addresses = text
    .split(',')
    .map((address) => address.trim())
    .filter((address) => address !== '')
  if (addresses.length === 0) {
    throw new CliError(`${name} needs the addresses or CIDRs of the proxies, comma-separated`)
  }
  return addresses
}

function parsePort(text: string, name: string): number {
  const port = Number(text)
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(port) || port > 65535) {
    throw new CliError(`${name} must be an integer from 0 to 65535, got "${text.slice(0, 32)}"`)
  }
  return port
}

function single(rest: string[], usage: string): string {
  if (rest.length !== 1 || rest[0] === '') throw new CliError(`usage: tokenflow-server ${usage}`)
  return rest[0]!
}

/**
 * The password: from a prompt with echo off on a terminal, else the first line of stdin. Never argv.
 * Input is read one byte at a time, so that nothing past the password's line is consumed: the
 * confirmation pasted along with the password, keys typed ahead, or the next lines a script feeds to
 * its next command (`while read -r name; do tokenflow-server user add "$name"; done < users`) stay
 * where they were.
 */
async function readPassword(): Promise<string> {
  if (isatty(0)) {
    // echo off before the prompt shows: a password typed or sent the moment it appears must not echo
    process.stdin.setRawMode(true)
    try {
      const password = promptLine('password: ')
      if (promptLine('again: ') !== password) throw new CliError('the passwords do not match')
      if (password === '') throw new CliError('the password is empty')
      return password
    } finally {
      process.stdin.setRawMode(false)
    }
  }
  const password = readLine(false)
  if (password === null || password === '') {
    throw new CliError('no password on stdin (pipe it in, e.g. `printf %s "$PW" | ...`)')
  }
  return password
}

/** One answer from the terminal (in raw mode: no echo, no line editing but what is done here). */
function promptLine(question: string): string {
  process.stderr.write(question)
  try {
    const answer = readLine(true)
    if (answer === null) throw new CliError('cancelled')
    return answer
  } finally {
    process.stderr.write('\n')
  }
}

const PASSWORD_LIMIT = 4096
// a terminal in raw mode ends a line with \r; a paste of "a\r\nb\r\n" must not read as a, "", b
let afterCarriageReturn = false

/**
 * One line of fd 0 without its line ending, or null at the end of input before any of it. Read one
 * byte at a time: every byte after the line's end is left unread, for the next prompt or the next reader.
 */
function readLine(terminal: boolean): string | null {
  const decoder = new StringDecoder('utf8')
  let line = ''
  let sawInput = false
  for (;;) {
    const byte = readByte()
    if (byte === null) {
      line += decoder.end()
      return sawInput ? stripCarriageReturn(line, terminal) : null
    }
    const skip = afterCarriageReturn && byte === 0x0a && !sawInput
    afterCarriageReturn = false
    if (skip) continue
    sawInput = true
    if (byte === 0x0a) return stripCarriageReturn(line + decoder.end(), terminal)
    if (terminal) {
      if (byte === 0x0d) {
        afterCarriageReturn = true
        return line + decoder.end()
      }
      if (byte === 0x03) throw new CliError('cancelled') // Ctrl-C: raw mode sends no SIGINT
      if (byte === 0x04) {
        if (line === '') return null // Ctrl-D on an empty line: the end of input
        continue
      }
      if (byte === 0x7f || byte === 0x08) {
        line = Array.from(line).slice(0, -1).join('')
        continue
      }
      if (byte === 0x15) {
        line = '' // Ctrl-U
        continue
      }
    }
    line += decoder.write(Buffer.of(byte))
    if (line.length > PASSWORD_LIMIT) {
      throw new CliError(
        `the password${terminal ? '' : ' on stdin'} is longer than ${PASSWORD_LIMIT} characters`,
      )
    }
  }
}

function stripCarriageReturn(line: string, terminal: boolean): string {
  return !terminal && line.endsWith('\r') ? line.slice(0, -1) : line
}

const oneByte = Buffer.alloc(1)
const pause = new Int32Array(new SharedArrayBuffer(4))

/** The next byte of fd 0, or null at its end. Blocks: `user add` has nothing else to do meanwhile. */
function readByte(): number | null {
  for (;;) {
    try {
      return readSync(0, oneByte, 0, 1, null) === 0 ? null : oneByte[0]!
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      // a pipe on Windows reports its end as an error
      if (code === 'EOF') return null
      // a non-blocking descriptor (Node reopens a terminal so): wait for the next key without spinning
      if (code === 'EAGAIN') Atomics.wait(pause, 0, 0, 20)
      else throw error
    }
  }
}

/**
 * The environment, a variable set to the empty string counted as unset, as shells and container specs
 * leave them (`TOKENFLOW_DB= tokenflow-server start`): the default applies, not an error about an empty value.
 */
function environment(): Record<string, string | undefined> {
  return Object.fromEntries(Object.entries(process.env).filter(([, value]) => value !== ''))
}

function messageOf(error: unknown): string {
  // pg reports a refused localhost connection as an AggregateError with an empty message
  if (error instanceof AggregateError && error.message === '' && error.errors.length > 0) {
    return messageOf(error.errors[0])
  }
  const message = error instanceof Error ? error.message : String(error)
  return (message || (error as { code?: string })?.code || 'unknown error').replace(/\s*\n\s*/g, ' ')
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    process.stderr.write(`tokenflow-server: ${messageOf(error)}\n`)
    // exit now: a half-open database or Redis connection would otherwise keep the process alive
    process.exit(1)
  },
)
