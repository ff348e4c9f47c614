/**
 * `tokenflow-server` misconfigured, and its logs under real traffic. Issue 3: "A bad configuration,
 * such as an unreachable database or a bad flag, gets one clear line and exit code 1, never a stack
 * trace", and "structured logs (pino, through Fastify) that never contain a token or a password".
 * The CLI is bundled once with esbuild, as in cli.test.ts (tsx would cost a second per spawn).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createSqliteStore } from '../src/stores/sqlite.js'
import { bundle } from './helpers/bundle.js'
import { INVALID_GRANT_BODY, postForm, postJson, refresh, send } from './helpers/http.js'
import { type Run, runProcess } from './helpers/process.js'
import { stallProxy } from './helpers/stall-proxy.js'

let CLI = ''
let removeBundle = () => {}
const dir = mkdtempSync(join(tmpdir(), 'tokenflow-cli-config-'))
const children = new Set<ChildProcess>()
let busy: Server | undefined

beforeAll(async () => {
  const bundled = await bundle(resolve(import.meta.dirname, '../src/cli.ts'), 'tokenflow-cli-config-test')
  CLI = bundled.path
  removeBundle = bundled.remove
})

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL')
  await new Promise((done) => (busy ? busy.close(done) : done(undefined)))
  rmSync(dir, { recursive: true, force: true })
  removeBundle()
})

// no configuration leaks in from the machine (CI sets DATABASE_URL for the store tests)
const { DATABASE_URL: _db, TOKENFLOW_DB: _file, PORT: _port, ...baseEnv } = process.env

const cli = (
  args: string[],
  { input = '', env = {}, timeout }: { input?: string; env?: Record<string, string>; timeout?: number } = {},
): Promise<Run> =>
  runProcess(process.execPath, [CLI, ...args], {
    input,
    env: { ...baseEnv, ...env },
    children,
    ...(timeout === undefined ? {} : { timeout }),
  })

/**
 * `tokenflow-server start --port 0 …` running: its origin, what it has logged so far, and a stop (SIGTERM)
 * that gives its exit code.
 */
async function startCli(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [CLI, 'start', '--port', '0', ...args], {
    env: { ...baseEnv, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.add(child)
  let output = ''
  const exited = new Promise<number | null>((done) => child.on('close', done))
  const origin = await new Promise<string>((found, reject) => {
    const read = (chunk: Buffer) => {
      output += chunk
      const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(output)
      if (match) found(match[1]!)
    }
    child.stdout.on('data', read)
    child.stderr.on('data', read)
    child.on('close', () => reject(new Error(`the server exited before listening: ${output}`)))
  })
  return {
    origin,
    output: () => output,
    async stop() {
      child.kill('SIGTERM')
      const code = await exited
      children.delete(child)
      return code
    },
  }
}

/** Exit code 1 and exactly one line on stderr, prefixed, with no stack trace; nothing on stdout. */
function expectOneLine(run: Run, line: string | RegExp) {
  const lines = run.stderr.split('\n').filter((text) => text !== '')
  expect({ code: run.code, lines: lines.length, stdout: run.stdout }).toEqual({
    code: 1,
    lines: 1,
    stdout: '',
  })
  if (typeof line === 'string') expect(lines[0]).toBe(`tokenflow-server: ${line}`)
  else expect(lines[0]).toMatch(line)
  expect(run.stderr).not.toMatch(/\n\s+at |node_modules|Error:|\.ts:\d/)
}

describe.concurrent('tokenflow-server with a bad configuration', { timeout: 60_000 }, () => {
  // cli.test.ts covers `start --nope`, `launch`, `--port 99999`, --db with --postgres and a missing directory
  it('a bad flag or an unknown subcommand of `user` and `keys`', async () => {
    const db = join(dir, 'commands.db')
    const [flag, user, keys, dash] = await Promise.all([
      cli(['user', 'list', '--verbose', '--db', db]),
      cli(['user', 'frobnicate', '--db', db]),
      cli(['keys', 'list', '--db', db]),
      cli(['start', '--port', '-1', '--db', db]),
    ])
    expectOneLine(flag, "Unknown option '--verbose' (see --help)")
    // bug: this said only "Option '--port' argument is ambiguous"
    expectOneLine(
      dash,
      "Option '--port' argument is ambiguous: to specify an option argument starting with a dash use '--port=-XYZ' (see --help)",
    )
    expectOneLine(user, 'unknown command "user frobnicate" (see --help)')
    expectOneLine(keys, 'usage: tokenflow-server keys rotate')
  })

  it('bug: `user` and `keys` took the flags only `start` reads (--issuer, --port, …) and ignored them', async () => {
    const db = join(dir, 'scoped-flags.db')
    const [userIssuer, keysPort, userAlg, keysRedis] = await Promise.all([
      cli(['user', 'list', '--issuer', 'https://auth.example.com', '--db', db]),
      cli(['keys', 'rotate', '--port', '3000', '--db', db]),
      cli(['user', 'list', '--alg', 'ES384', '--db', db]),
      cli(['keys', 'rotate', '--redis=redis://127.0.0.1:6379', '--db', db]),
    ])
    expectOneLine(userIssuer, '--issuer is not an option of "user" (see --help)')
    expectOneLine(keysPort, '--port is not an option of "keys" (see --help)')
    expectOneLine(userAlg, '--alg is not an option of "user" (see --help)')
    expectOneLine(keysRedis, '--redis is not an option of "keys" (see --help)')
    // refused before the database is opened: nothing was created
    expect(existsSync(db)).toBe(false)
    // what each command does read still works
    const rotated = await cli(['keys', 'rotate', '--alg', 'ES384', '--db', db])
    expect({ code: rotated.code, stderr: rotated.stderr }).toEqual({ code: 0, stderr: '' })
    expect(rotated.stdout).toMatch(/^new signing key "/)
  })

  it('bug: `keys rotate` without --alg made an ES256 key on a deployment that signs with RS256', async () => {
    // a back-end review: a verifier pinned to algorithms ['RS256'] would refuse every token once it signed
    const db = join(dir, 'rotate-alg.db')
    const first = await cli(['keys', 'rotate', '--alg', 'RS256', '--db', db])
    expect({ code: first.code, stderr: first.stderr }).toEqual({ code: 0, stderr: '' })
    const second = await cli(['keys', 'rotate', '--db', db])
    expect({ code: second.code, stderr: second.stderr }).toEqual({ code: 0, stderr: '' })
    // TOKENFLOW_KEY_ALG, or --alg, still says which algorithm the new key has
    const third = await cli(['keys', 'rotate', '--db', db], { env: { TOKENFLOW_KEY_ALG: 'ES384' } })
    expect({ code: third.code, stderr: third.stderr }).toEqual({ code: 0, stderr: '' })
    const store = createSqliteStore({ filename: db })
    try {
      const keys = (await store.listKeys()).sort((a, b) => a.createdAt - b.createdAt)
      const kidOf = (run: Run) => /^new signing key "([^"]+)"/.exec(run.stdout)?.[1]
      const algOf = (run: Run) => keys.find((key) => key.kid === kidOf(run))?.alg
      expect([algOf(first), algOf(second), algOf(third)]).toEqual(['RS256', 'RS256', 'ES384'])
    } finally {
      await store.close()
    }
  })

  it('bad values, from flags and from the environment', async () => {
    const db = join(dir, 'values.db')
    const [port, envPort, alg, issuer, redis, mysql] = await Promise.all([
      cli(['start', '--port=-1', '--db', db]),
      cli(['start', '--db', db], { env: { PORT: 'eighty' } }),
      cli(['start', '--alg', 'HS256', '--db', db]),
      cli(['start', '--port', '0', '--issuer', 'not a url', '--db', db]),
      cli(['start', '--port', '0', '--redis', 'http://127.0.0.1:6379', '--db', db]),
      cli(['user', 'list'], { env: { DATABASE_URL: 'mysql://root@127.0.0.1/app' } }),
    ])
    expectOneLine(port, '--port must be an integer from 0 to 65535, got "-1"')
    expectOneLine(envPort, 'PORT must be an integer from 0 to 65535, got "eighty"')
    expectOneLine(alg, '--alg must be one of ES256, ES384, RS256, PS256, got "HS256"')
    expectOneLine(
      issuer,
      '--issuer must be an https URL (http only on localhost) without query, fragment or user info',
    )
    expectOneLine(redis, '--redis must be a redis:// or rediss:// URL')
    expectOneLine(mysql, 'DATABASE_URL must be a postgres:// URL')
  })

  it('a refused value set by its env variable is named by that variable, and by its flag when both are set', async () => {
    const db = join(dir, 'env-names.db')
    // a server that took the value would run until killed: the kill (code null) fails the test sooner
    const timeout = 20_000
    const [issuer, redis, trustProxy, both, mysql, host] = await Promise.all([
      cli(['start', '--port', '0', '--db', db], {
        env: { TOKENFLOW_ISSUER: 'ftp://auth.example.com' },
        timeout,
      }),
      cli(['start', '--port', '0', '--db', db], {
        env: { TOKENFLOW_REDIS_URL: 'http://127.0.0.1:6379' },
        timeout,
      }),
      cli(['start', '--port', '0', '--db', db], { env: { TOKENFLOW_TRUST_PROXY: '2' }, timeout }),
      cli(['start', '--port', '0', '--issuer', 'ftp://flag.example.com', '--db', db], {
        env: { TOKENFLOW_ISSUER: 'https://auth.example.com' },
        timeout,
      }),
      cli(['user', 'list', '--postgres', 'mysql://root@127.0.0.1/app'], { timeout }),
      cli(['start', '--port', '0', '--db', db], { env: { TOKENFLOW_HOST: '0.0.0.0' }, timeout }),
    ])
    const https = 'must be an https URL (http only on localhost) without query, fragment or user info'
    expectOneLine(issuer, `TOKENFLOW_ISSUER ${https}`)
    expectOneLine(redis, 'TOKENFLOW_REDIS_URL must be a redis:// or rediss:// URL')
    expectOneLine(
      trustProxy,
      'TOKENFLOW_TRUST_PROXY takes the proxies\' addresses or CIDRs (e.g. 10.0.0.0/8), not a hop count: got "2"',
    )
    expectOneLine(both, `--issuer ${https}`)
    expectOneLine(mysql, '--postgres must be a postgres:// URL')
    expectOneLine(
      host,
      'TOKENFLOW_HOST 0.0.0.0 needs --issuer: the https URL clients and verifiers reach this server at',
    )
  })

  it('bug: a bad TOKENFLOW_KEY_ALG also failed the `user` commands, which make no key; `start` and `keys` name the variable', async () => {
    const db = join(dir, 'key-alg-env.db')
    const env = { TOKENFLOW_KEY_ALG: 'HS256' }
    const added = await cli(['user', 'add', 'ada', '--db', db], {
      env,
      input: 'correct horse battery staple\n',
    })
    // was: "--alg must be one of ES256, ES384, RS256, PS256", exit 1, no user
    expect({ code: added.code, stderr: added.stderr }).toEqual({ code: 0, stderr: '' })
    const listed = await cli(['user', 'list', '--db', db], { env })
    expect({ code: listed.code, stdout: listed.stdout }).toMatchObject({
      code: 0,
      stdout: expect.stringContaining('ada'),
    })
    const [start, rotate] = await Promise.all([
      cli(['start', '--port', '0', '--db', db], { env }),
      cli(['keys', 'rotate', '--db', db], { env }),
    ])
    const refused = 'TOKENFLOW_KEY_ALG must be one of ES256, ES384, RS256, PS256, got "HS256"'
    expectOneLine(start, refused)
    expectOneLine(rotate, refused)
  })

  it('bug: `start` with an option the server refuses made and migrated its database before it said so', async () => {
    const [issuerDb, redisDb, audienceDb] = ['issuer', 'redis', 'audience'].map((name) =>
      join(dir, `${name}-refused.db`),
    )
    const [issuer, redis, audience] = await Promise.all([
      cli(['start', '--port', '0', '--issuer', 'ftp://auth.example.com', '--db', issuerDb!]),
      cli(['start', '--port', '0', '--redis', 'http://127.0.0.1:6379', '--db', redisDb!]),
      cli(['start', '--port', '0', '--audience', '', '--db', audienceDb!]),
    ])
    expectOneLine(
      issuer,
      '--issuer must be an https URL (http only on localhost) without query, fragment or user info',
    )
    expectOneLine(redis, '--redis must be a redis:// or rediss:// URL')
    expectOneLine(audience, '--audience needs a value, got ""')
    for (const file of [issuerDb!, redisDb!, audienceDb!]) expect(existsSync(file)).toBe(false)
  })

  it('bug: an environment variable set to the empty string was taken as a value, not as unset', async () => {
    const db = join(dir, 'empty-env.db')
    const url = 'postgres://tokenflow:pw-do-not-print@127.0.0.1:1/tokenflow'
    const [alg, database] = await Promise.all([
      // was: "--alg must be one of …"; now the default ES256
      cli(['keys', 'rotate', '--db', db], { env: { TOKENFLOW_KEY_ALG: '' } }),
      // was: '"filename" must be a non-empty string' (an empty TOKENFLOW_DB also hid DATABASE_URL)
      cli(['user', 'list'], { env: { TOKENFLOW_DB: '', DATABASE_URL: url } }),
    ])
    expect({ code: alg.code, stderr: alg.stderr }).toEqual({ code: 0, stderr: '' })
    expect(alg.stdout).toMatch(/^new signing key "[^"]+", published in the JWKS now/)
    expectOneLine(database, 'cannot use the PostgreSQL database: connect ECONNREFUSED 127.0.0.1:1')
  })

  it('an unreachable PostgreSQL, from --postgres and from DATABASE_URL, without the password', async () => {
    const url = 'postgres://tokenflow:pw-do-not-print@127.0.0.1:1/tokenflow'
    const [flag, env] = await Promise.all([
      cli(['start', '--port', '0', '--postgres', url]),
      cli(['user', 'list'], { env: { DATABASE_URL: url } }),
    ])
    for (const run of [flag, env]) {
      expectOneLine(run, 'cannot use the PostgreSQL database: connect ECONNREFUSED 127.0.0.1:1')
      expect(run.stderr).not.toContain('pw-do-not-print')
    }
  })

  it('bug: a missing peer named the flag even when its env variable set the value', async () => {
    // a back-end review: DATABASE_URL without pg said "--postgres needs …", TOKENFLOW_REDIS_URL without
    // ioredis said '"redisUrl" needs …'. The peers are hidden by a resolve hook
    const hook = `export async function resolve(specifier, context, next) {
      if (specifier === 'pg' || specifier === 'ioredis')
        throw Object.assign(new Error('Cannot find package ' + specifier), { code: 'ERR_MODULE_NOT_FOUND' })
      return next(specifier, context)
    }`
    const hide = `import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hook)}`)})`
    const withoutPeers = (args: string[], env: Record<string, string>) =>
      runProcess(
        process.execPath,
        ['--import', `data:text/javascript,${encodeURIComponent(hide)}`, CLI, ...args],
        {
          input: '',
          env: { ...baseEnv, ...env },
          children,
        },
      )
    const url = 'postgres://postgres@127.0.0.1:1/tokenflow'
    const [fromEnv, fromFlag, redisFromEnv, redisFromFlag] = await Promise.all([
      withoutPeers(['user', 'list'], { DATABASE_URL: url }),
      withoutPeers(['user', 'list', '--postgres', url], {}),
      // a file each: two processes that open one new SQLite file at the same moment can meet its WAL switch
      // (SQLite answers one of them "database is locked" without waiting), which is not what this test is about
      withoutPeers(['start', '--port', '0', '--db', join(dir, 'peers-env.db')], {
        TOKENFLOW_REDIS_URL: 'redis://127.0.0.1:1',
      }),
      withoutPeers(
        ['start', '--port', '0', '--db', join(dir, 'peers-flag.db'), '--redis', 'redis://127.0.0.1:1'],
        {},
      ),
    ])
    expectOneLine(fromEnv, /^tokenflow-server: DATABASE_URL needs the "pg" package: /)
    expectOneLine(fromFlag, /^tokenflow-server: --postgres needs the "pg" package: /)
    expectOneLine(redisFromEnv, 'TOKENFLOW_REDIS_URL needs the optional peer dependency "ioredis"')
    expectOneLine(redisFromFlag, '--redis needs the optional peer dependency "ioredis"')
  })

  it('a --db path that cannot be written or is not a database', async () => {
    const file = join(dir, 'a-file')
    writeFileSync(file, '')
    const notes = join(dir, 'notes.txt')
    writeFileSync(notes, 'my notes, not a database\n'.repeat(300))
    const cases: Array<[string[], Record<string, string>, string]> = [
      // under a regular file, and in /proc (where even root cannot create a file)
      [['start', '--port', '0', '--db', join(file, 'x.db')], {}, join(file, 'x.db')],
      [['keys', 'rotate', '--db', '/proc/tokenflow.db'], {}, '/proc/tokenflow.db'],
      // a directory, named by TOKENFLOW_DB
      [['start', '--port', '0'], { TOKENFLOW_DB: dir }, dir],
    ]
    const runs = await Promise.all(cases.map(([args, env]) => cli(args, { env })))
    for (const [i, run] of runs.entries()) {
      expectOneLine(run, `cannot open sqlite database "${cases[i]![2]}": unable to open database file`)
    }
    expectOneLine(
      await cli(['start', '--port', '0', '--db', notes]),
      `cannot open sqlite database "${notes}": file is not a database`,
    )
  })

  it('a port that is already taken', async () => {
    busy = createServer()
    await new Promise<void>((listening) => busy!.listen(0, '127.0.0.1', listening))
    const port = (busy.address() as { port: number }).port
    expectOneLine(
      await cli(['start', '--port', String(port), '--db', join(dir, 'port.db')]),
      `listen EADDRINUSE: address already in use 127.0.0.1:${port}`,
    )
  })
})

describe('tokenflow-server logs', { timeout: 60_000 }, () => {
  it('never contain a token or a password, through login, refresh, OAuth, reuse, revocation and logout', async () => {
    const db = join(dir, 'logs.db')
    const password = 'log-test-password-8c1f'
    const typo = 'log-test-typo-77aa'
    expect(await cli(['user', 'add', 'ada', '--db', db], { input: `${password}\n` })).toMatchObject({
      code: 0,
      stderr: '',
    })

    const running = await startCli(['--db', db, '--client-id', 'web'])
    const { origin } = running

    const secrets: string[] = [password, typo]
    const keep = (...values: string[]) => {
      for (const value of values) {
        expect(typeof value === 'string' && value.length > 16).toBe(true)
        secrets.push(value)
      }
    }
    expect((await postJson(origin, '/auth/login', { username: 'ada', password: typo })).status).toBe(400)
    // a body that does not parse still carries the password
    expect((await postJson(origin, '/auth/login', `{"username":"ada","password":"${password}"`)).status).toBe(
      400,
    )
    const first = (await postJson(origin, '/auth/login', { username: 'ada', password })).json()
    keep(first.accessToken, first.refreshToken)
    const second = (await refresh(origin, first.refreshToken)).json()
    keep(second.accessToken, second.refreshToken)
    const oauth = (
      await postForm(origin, '/oauth/token', {
        grant_type: 'refresh_token',
        refresh_token: second.refreshToken,
        client_id: 'web',
      })
    ).json()
    keep(oauth.access_token, oauth.refresh_token)
    // tokens in places a logger might look: the query string, the Authorization header, a cookie
    const sessions = await send(`${origin}/auth/sessions?access_token=${oauth.access_token}`, {
      headers: { authorization: `Bearer ${oauth.access_token}`, cookie: `rt=${oauth.refresh_token}` },
    })
    expect(sessions.status).toBe(200)
    // the login's token, two rotations old: reuse, which is logged as a warning by session id only
    expect((await refresh(origin, first.refreshToken)).text).toBe(INVALID_GRANT_BODY)
    const other = (await postJson(origin, '/auth/login', { username: 'ada', password })).json()
    keep(other.accessToken, other.refreshToken)
    expect(
      (await postForm(origin, '/oauth/revoke', { token: other.refreshToken, client_id: 'web' })).status,
    ).toBe(200)
    const last = (await postJson(origin, '/auth/login', { username: 'ada', password })).json()
    keep(last.accessToken, last.refreshToken)
    expect((await postJson(origin, '/auth/logout', { refreshToken: last.refreshToken })).status).toBe(200)

    expect(await running.stop()).toBe(0)
    const output = running.output()
    // the logs did record the traffic, so their silence about secrets means something
    for (const url of [
      '/auth/login',
      '/refresh/token',
      '/oauth/token',
      '/auth/sessions',
      '/oauth/revoke',
      '/auth/logout',
    ]) {
      expect(output).toContain(`"url":"${url}"`)
    }
    expect(output).toContain('refresh token reuse: session revoked')
    expect(output).toContain('"msg":"request completed"')
    for (const secret of secrets) expect(output).not.toContain(secret)
  })
})

describe('tokenflow-server start --trust-proxy', { timeout: 60_000 }, () => {
  const password = 'trust-proxy-password-3b7d'
  const loginFrom = (origin: string, forwardedFor: string, username: string, secret = 'a-wrong-password') =>
    postJson(origin, '/auth/login', { username, password: secret }, { 'x-forwarded-for': forwardedFor })
  /** spends the default per-IP budget (50 a minute) from one forwarded address: 50 failed logins, each of another unknown user, so no account's budget is touched */
  const spendIpBudget = async (origin: string, forwardedFor: string) => {
    const replies = await Promise.all(
      Array.from({ length: 50 }, (_, i) => loginFrom(origin, forwardedFor, `nobody-${i}`)),
    )
    expect(replies.map((reply) => reply.status)).toEqual(Array(50).fill(400))
  }

  it('bug: `start` could not name the proxy in front, so every client behind it shared one per-IP login budget', async () => {
    const [trustingDb, plainDb] = [join(dir, 'trust-proxy.db'), join(dir, 'no-trust-proxy.db')]
    for (const run of await Promise.all(
      [trustingDb, plainDb].map((db) => cli(['user', 'add', 'ada', '--db', db], { input: `${password}\n` })),
    )) {
      expect(run).toMatchObject({ code: 0, stderr: '' })
    }
    const [trusting, plain] = await Promise.all([
      startCli(['--db', trustingDb, '--trust-proxy', '127.0.0.1']),
      startCli(['--db', plainDb]),
    ])

    // behind the named proxy, the budget is the forwarded client's: one spent address is refused, another
    // client (with the right password) logs in
    await spendIpBudget(trusting.origin, '198.51.100.1')
    expect((await loginFrom(trusting.origin, '198.51.100.1', 'ada', password)).status).toBe(429)
    expect((await loginFrom(trusting.origin, '198.51.100.2', 'ada', password)).status).toBe(200)
    expect(trusting.output()).toContain('"remoteAddress":"198.51.100.2"')

    // without the flag the header is ignored: every client shares the proxy's (here 127.0.0.1) budget
    await spendIpBudget(plain.origin, '198.51.100.1')
    expect((await loginFrom(plain.origin, '198.51.100.2', 'ada', password)).status).toBe(429)
    expect(plain.output()).not.toContain('"remoteAddress":"198.51.100.')

    expect(await Promise.all([trusting.stop(), plain.stop()])).toEqual([0, 0])
  })

  it('TOKENFLOW_TRUST_PROXY names the proxies too; the flag beats it, and set to the empty string it is unset', async () => {
    /** the address the server takes a request from 127.0.0.1 with X-Forwarded-For 203.0.113.7 to come from */
    const clientAddress = async (args: string[], env: Record<string, string>) => {
      const server = await startCli(['--db', join(dir, 'trust-proxy-env.db'), ...args], env)
      const reply = await send(`${server.origin}/.well-known/jwks.json`, {
        headers: { 'x-forwarded-for': '203.0.113.7' },
      })
      expect(reply.status).toBe(200)
      expect(await server.stop()).toBe(0)
      return /"url":"\/\.well-known\/jwks\.json","remoteAddress":"([^"]+)"/.exec(server.output())?.[1]
    }
    // one at a time: the servers share a database file
    expect(await clientAddress([], { TOKENFLOW_TRUST_PROXY: '10.0.0.0/8, 127.0.0.1' })).toBe('203.0.113.7')
    expect(await clientAddress(['--trust-proxy', '10.0.0.0/8'], { TOKENFLOW_TRUST_PROXY: '127.0.0.1' })).toBe(
      '127.0.0.1',
    )
    expect(await clientAddress([], { TOKENFLOW_TRUST_PROXY: '' })).toBe('127.0.0.1')
  })

  it('a hop count, a bad address or no address is refused in one line, before any database is made; only `start` takes it', async () => {
    const db = join(dir, 'trust-proxy-refused.db')
    const [hops, envHops, name, range, empty, user, keys, help] = await Promise.all([
      cli(['start', '--port', '0', '--trust-proxy', '1', '--db', db]),
      // a server that took the value would run until killed: the kill (code null) fails the test sooner
      cli(['start', '--port', '0', '--db', db], { env: { TOKENFLOW_TRUST_PROXY: '2' }, timeout: 20_000 }),
      cli(['start', '--port', '0', '--trust-proxy', '127.0.0.1,proxy.internal', '--db', db]),
      cli(['start', '--port', '0', '--trust-proxy', '10.0.0.0/33', '--db', db]),
      cli(['start', '--port', '0', '--trust-proxy', ' , ', '--db', db]),
      cli(['user', 'list', '--trust-proxy', '127.0.0.1', '--db', db]),
      cli(['keys', 'rotate', '--trust-proxy', '127.0.0.1', '--db', db]),
      cli(['--help']),
    ])
    const hopCount = (value: string) =>
      `--trust-proxy takes the proxies' addresses or CIDRs (e.g. 10.0.0.0/8), not a hop count: got "${value}"`
    expectOneLine(hops, hopCount('1'))
    expectOneLine(envHops, hopCount('2').replace('--trust-proxy', 'TOKENFLOW_TRUST_PROXY'))
    expectOneLine(name, '--trust-proxy: invalid IP address: proxy.internal')
    expectOneLine(range, '--trust-proxy: invalid range on address: 10.0.0.0/33')
    expectOneLine(empty, '--trust-proxy needs the addresses or CIDRs of the proxies, comma-separated')
    expectOneLine(user, '--trust-proxy is not an option of "user" (see --help)')
    expectOneLine(keys, '--trust-proxy is not an option of "keys" (see --help)')
    expect(existsSync(db)).toBe(false)
    expect(help.stdout).toMatch(
      /\n {2}--trust-proxy ADDRS +the reverse proxies in front[\s\S]*TOKENFLOW_TRUST_PROXY/,
    )
  })
})

describe('tokenflow-server start --reuse-grace', { timeout: 60_000 }, () => {
  it('sets the grace of the previous refresh token, from the flag or TOKENFLOW_REUSE_GRACE; the flag beats it', async () => {
    const password = 'reuse-grace-password-5c1e'
    const db = join(dir, 'reuse-grace.db')
    expect(await cli(['user', 'add', 'ada', '--db', db], { input: `${password}\n` })).toMatchObject({
      code: 0,
      stderr: '',
    })
    /** the status of the previous refresh token sent again right after its rotation */
    const replayStatus = async (args: string[], env: Record<string, string> = {}) => {
      const server = await startCli(['--db', db, ...args], env)
      const login = await postJson(server.origin, '/auth/login', { username: 'ada', password })
      expect(login.status).toBe(200)
      const { refreshToken } = login.json() as { refreshToken: string }
      expect((await refresh(server.origin, refreshToken)).status).toBe(200)
      const replay = await refresh(server.origin, refreshToken)
      expect(await server.stop()).toBe(0)
      return replay.status
    }
    // one at a time: the servers share a database file. Within the default grace a replay gets the current
    // token; with a grace of 0 it is reuse
    expect(await replayStatus([])).toBe(200)
    expect(await replayStatus(['--reuse-grace', '0'])).toBe(400)
    expect(await replayStatus([], { TOKENFLOW_REUSE_GRACE: '0' })).toBe(400)
    expect(await replayStatus(['--reuse-grace', '30000'], { TOKENFLOW_REUSE_GRACE: '0' })).toBe(200)
  })

  it('a value that is not a whole number of ms is refused in one line, before any database is made; only `start` takes it', async () => {
    const db = join(dir, 'reuse-grace-refused.db')
    const timeout = 20_000
    const [word, exponent, fraction, fromEnv, user, help] = await Promise.all([
      cli(['start', '--port', '0', '--reuse-grace', 'ten', '--db', db], { timeout }),
      cli(['start', '--port', '0', '--reuse-grace', '1e4', '--db', db], { timeout }),
      cli(['start', '--port', '0', '--reuse-grace', '1.5', '--db', db], { timeout }),
      cli(['start', '--port', '0', '--db', db], { env: { TOKENFLOW_REUSE_GRACE: '-1' }, timeout }),
      cli(['user', 'list', '--reuse-grace', '1', '--db', db]),
      cli(['--help']),
    ])
    const refused = 'must be an integer of at least 0 (ms)'
    expectOneLine(word, `--reuse-grace ${refused}`)
    expectOneLine(exponent, `--reuse-grace ${refused}`)
    expectOneLine(fraction, `--reuse-grace ${refused}`)
    expectOneLine(fromEnv, `TOKENFLOW_REUSE_GRACE ${refused}`)
    expectOneLine(user, '--reuse-grace is not an option of "user" (see --help)')
    expect(existsSync(db)).toBe(false)
    expect(help.stdout).toMatch(
      /\n {2}--reuse-grace MS +how long the previous refresh token[\s\S]*TOKENFLOW_REUSE_GRACE/,
    )
  })
})

describe('tokenflow-server start on PostgreSQL', () => {
  const url = _db
  it.runIf(process.env.CI === 'true')('has DATABASE_URL set', () => {
    expect(url).toBeTruthy()
  })

  /**
   * Runs `test` on a database of its own on the machine's PostgreSQL, given as its URL (nothing else is locked
   * or stalled), and drops it after, whatever happened.
   */
  async function onOwnDatabase(name: string, test: (target: URL) => Promise<void>): Promise<void> {
    const admin = new pg.Client({ connectionString: url })
    await admin.connect()
    const database = `tf_cli_${name}_${randomBytes(6).toString('hex')}`
    await admin.query(`CREATE DATABASE ${database}`)
    try {
      const target = new URL(url!)
      target.pathname = `/${database}`
      await test(target)
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
      await admin.end()
    }
  }

  /** `user add ada` and `start` on `postgres`, and ada's login: the server (stopped by the caller) and her refresh token. */
  async function loggedIn(postgres: string) {
    const password = `pg-password-${randomBytes(4).toString('hex')}`
    expect(
      await cli(['user', 'add', 'ada', '--postgres', postgres], { input: `${password}\n` }),
    ).toMatchObject({
      code: 0,
      stderr: '',
    })
    const server = await startCli(['--postgres', postgres])
    const login = await postJson(server.origin, '/auth/login', { username: 'ada', password })
    expect(login.status).toBe(200)
    return { server, refreshToken: login.json().refreshToken as string }
  }

  /** A refresh bounded within the test's own timeout, so that what holds it is let go even when it never answers. */
  const boundedRefresh = (origin: string, refreshToken: string) =>
    send(`${origin}/refresh/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ refreshToken }),
      signal: AbortSignal.timeout(40_000),
    })

  /** nothing was half done: the same token refreshes, and its successor too */
  async function expectRefreshesAgain(origin: string, refreshToken: string) {
    const after = await refresh(origin, refreshToken)
    expect(after.status).toBe(200)
    expect((await refresh(origin, after.json().refreshToken)).status).toBe(200)
  }

  const unavailable = (reply: Awaited<ReturnType<typeof send>>) =>
    expect({ status: reply.status, body: reply.json() }).toMatchObject({
      status: 503,
      body: { error: 'temporarily_unavailable', code: 'ERR_UNAVAILABLE' },
    })

  it.skipIf(!url)(
    'bug: a refresh behind a held table lock waited as long as the lock (the pool had no statement_timeout); now 503 ERR_UNAVAILABLE with Retry-After, and the same token refreshes once the lock is gone',
    () =>
      onOwnDatabase('lock', async (target) => {
        const locker = new pg.Client({ connectionString: target.href })
        const { server, refreshToken } = await loggedIn(target.href)
        try {
          await locker.connect()
          await locker.query('BEGIN')
          await locker.query('LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE')
          let held: Awaited<ReturnType<typeof send>>
          try {
            held = await boundedRefresh(server.origin, refreshToken)
          } finally {
            await locker.query('ROLLBACK')
          }
          unavailable(held)
          expect(held.headers.get('retry-after')).toMatch(/^\d+$/)
          await expectRefreshesAgain(server.origin, refreshToken)
        } finally {
          await locker.end().catch(() => undefined)
          expect(await server.stop()).toBe(0)
        }
      }),
    60_000,
  )

  it.skipIf(!url || !existsSync('/var/run/postgresql'))(
    "a URL of the Unix socket with a user and no host (postgres://user@/db?host=/var/run/postgresql), which pg takes and WHATWG URL does not: the pool's query_timeout once refused it ('Invalid URL')",
    () =>
      onOwnDatabase('socket', async (target) => {
        const user = target.username || 'postgres'
        const socketUrl = `postgres://${user}@${target.pathname}?host=/var/run/postgresql`
        expect(
          await cli(['user', 'add', 'ada', '--postgres', socketUrl], { input: 'pg-socket-password-2f8a\n' }),
        ).toMatchObject({ code: 0, stderr: '' })
        expect(await cli(['user', 'list', '--postgres', socketUrl])).toMatchObject({
          code: 0,
          stdout: expect.stringContaining('ada'),
        })
      }),
    60_000,
  )

  it.skipIf(!url)(
    "bug: the pool's query_timeout (8 s) cut a refresh that the URL's statement_timeout allows; it follows the value pg sends now (of ?statement_timeout=1000&statement_timeout=20000, the last)",
    () =>
      onOwnDatabase('override', async (target) => {
        const locker = new pg.Client({ connectionString: target.href })
        // repeated: pg takes the last one (a first version read the first, and cut the refresh at 4 s). The
        // encoded name in a URL with a space is not read by pg (it encodes such a URL again), nor now by the
        // CLI (a raw space, which URL's own setters would encode)
        const given = `${target.href}?statement_timeout=1000&statement_timeout=20000&application_name=a b&statement%5Ftimeout=1000`
        const { server, refreshToken } = await loggedIn(given)
        try {
          // a row lock held for 9 s: past the default bounds, within the URL's 20 s
          await locker.connect()
          await locker.query('BEGIN')
          await locker.query('SELECT * FROM sessions FOR UPDATE')
          const release = setTimeout(() => void locker.query('COMMIT'), 9_000)
          const started = Date.now()
          const answer = await refresh(server.origin, refreshToken)
          clearTimeout(release)
          expect({ status: answer.status, waited: Date.now() - started >= 8_500 }).toEqual({
            status: 200,
            waited: true,
          })
        } finally {
          await locker.end().catch(() => undefined)
          expect(await server.stop()).toBe(0)
        }
      }),
    60_000,
  )

  it.skipIf(!url)(
    'bug: a PostgreSQL that stopped answering (the connection kept open) held each refresh for as long as it lasted; now 503 after the pool query_timeout (8 s: the statement_timeout and 3 s)',
    () =>
      onOwnDatabase('stall', async (target) => {
        // a frozen database, or a network dropping packets: no reset, no answer, so statement_timeout (which
        // the database enforces) cannot help
        const proxy = await stallProxy(target.hostname, Number(target.port || 5432))
        const proxied = new URL(target.href)
        proxied.host = `127.0.0.1:${proxy.port}`
        try {
          const { server, refreshToken } = await loggedIn(proxied.href)
          try {
            proxy.stall()
            const started = Date.now()
            let stalled: Awaited<ReturnType<typeof send>>
            try {
              stalled = await boundedRefresh(server.origin, refreshToken)
            } finally {
              proxy.resume()
            }
            const waited = Date.now() - started
            unavailable(stalled)
            expect(waited).toBeGreaterThanOrEqual(7_500)
            expect(waited).toBeLessThan(20_000)
            // the stall is over: the rotation, if it committed, is answered by the grace
            await expectRefreshesAgain(server.origin, refreshToken)
          } finally {
            expect(await server.stop()).toBe(0)
          }
        } finally {
          await proxy.close()
        }
      }),
    60_000,
  )
})
