/**
 * `tokenflow-server` misconfigured, and its logs under real traffic. Issue 3: "A bad configuration,
 * such as an unreachable database or a bad flag, gets one clear line and exit code 1, never a stack
 * trace", and "structured logs (pino, through Fastify) that never contain a token or a password".
 * The CLI is bundled once with esbuild, as in cli.test.ts (tsx would cost a second per spawn).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bundle } from './helpers/bundle.js'
import { INVALID_GRANT_BODY, postForm, postJson, refresh, send } from './helpers/http.js'
import { type Run, runProcess } from './helpers/process.js'

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
  { input = '', env = {} }: { input?: string; env?: Record<string, string> } = {},
): Promise<Run> =>
  runProcess(process.execPath, [CLI, ...args], { input, env: { ...baseEnv, ...env }, children })

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
    const [flag, user, keys] = await Promise.all([
      cli(['user', 'list', '--verbose', '--db', db]),
      cli(['user', 'frobnicate', '--db', db]),
      cli(['keys', 'list', '--db', db]),
    ])
    expectOneLine(flag, "Unknown option '--verbose' (see --help)")
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
    expectOneLine(envPort, '--port must be an integer from 0 to 65535, got "eighty"')
    expectOneLine(alg, '--alg must be one of ES256, ES384, RS256, PS256')
    expectOneLine(issuer, '"issuer" must be an https URL (http only on localhost) without query or fragment')
    expectOneLine(redis, '"redisUrl" must be a redis:// or rediss:// URL')
    expectOneLine(mysql, '--postgres must be a postgres:// URL')
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
    expectOneLine(issuer, '"issuer" must be an https URL (http only on localhost) without query or fragment')
    expectOneLine(redis, '"redisUrl" must be a redis:// or rediss:// URL')
    expect(audience.code).toBe(1)
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

    const child = spawn(process.execPath, [CLI, 'start', '--port', '0', '--db', db, '--client-id', 'web'], {
      env: baseEnv,
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

    child.kill('SIGTERM')
    expect(await exited).toBe(0)
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
