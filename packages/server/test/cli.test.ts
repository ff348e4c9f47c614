/**
 * The `tokenflow-server` bin, run as a real process. The sources are bundled once with esbuild
 * (dependencies stay external, as in the published package): loading them through tsx costs
 * over a second per spawn, which made this file take 20 s.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bundle } from './helpers/bundle.js'
import { type Run, runProcess } from './helpers/process.js'

let CLI = ''
let removeBundle = () => {}
const dir = mkdtempSync(join(tmpdir(), 'tokenflow-cli-'))
const children = new Set<ChildProcess>()

beforeAll(async () => {
  const bundled = await bundle(resolve(import.meta.dirname, '../src/cli.ts'), 'tokenflow-cli-test')
  CLI = bundled.path
  removeBundle = bundled.remove
})

// no configuration leaks in from the machine (CI sets DATABASE_URL for the store tests)
const { DATABASE_URL: _db, TOKENFLOW_DB: _file, PORT: _port, ...baseEnv } = process.env

afterAll(() => {
  for (const child of children) child.kill('SIGKILL')
  rmSync(dir, { recursive: true, force: true })
  removeBundle()
})

const cli = (args: string[], { input }: { input?: string } = {}): Promise<Run> =>
  runProcess(process.execPath, [CLI, ...args], { input: input ?? '', env: baseEnv, children })

/** One line on stderr, prefixed, without a stack trace. */
function expectOneLineError(run: Run, pattern: RegExp) {
  expect(run.code).toBe(1)
  const lines = run.stderr.split('\n').filter((line) => line !== '')
  expect(lines).toHaveLength(1)
  expect(lines[0]).toMatch(/^tokenflow-server: /)
  expect(lines[0]).toMatch(pattern)
  expect(run.stderr).not.toMatch(/\n\s+at |node_modules|Error:/)
}

// spawning processes is slow on a loaded machine: these get more time than the default
describe.concurrent('tokenflow-server', { timeout: 60_000 }, () => {
  it('prints the usage for --help and exits 0', async () => {
    const run = await cli(['--help'])
    expect(run.code).toBe(0)
    expect(run.stdout).toContain('usage: tokenflow-server <command> [options]')
    expect(run.stdout).toContain('user add <name>')
    expect(run.stderr).toBe('')
  })

  it('bug: with no command the usage went to stdout, exit 1: a failure printed where output goes', async () => {
    const run = await cli([])
    expect(run.code).toBe(1)
    expect(run.stdout).toBe('')
    expect(run.stderr).toContain('usage: tokenflow-server <command> [options]')
  })

  it('answers a bad flag, an unknown command, a bad port and --db with --postgres with one line each', async () => {
    const [flag, unknown, port, both] = await Promise.all([
      cli(['start', '--nope']),
      cli(['launch', '--db', join(dir, 'x.db')]),
      cli(['start', '--port', '99999', '--db', join(dir, 'x.db')]),
      cli(['start', '--db', join(dir, 'x.db'), '--postgres', 'postgres://127.0.0.1/x']),
    ])
    expectOneLineError(flag, /Unknown option '--nope'/)
    expectOneLineError(unknown, /unknown command "launch"/)
    expectOneLineError(port, /--port must be an integer from 0 to 65535/)
    expectOneLineError(both, /either --db or --postgres/)
  })

  it('bug: an empty --postgres (an unset variable in a script) started on a new ./tokenflow.db; a statement_timeout with a unit was read as ms', async () => {
    const empty = await cli(['user', 'list', '--postgres', ''])
    expectOneLineError(empty, /--postgres needs a value, got ""/)
    // nor does an empty --host listen on every interface, nor --db make a store error of it
    const [host, db] = await Promise.all([
      cli([
        'start',
        '--port',
        '0',
        '--host',
        '',
        '--issuer',
        'https://auth.example.com',
        '--db',
        join(dir, 'h.db'),
      ]),
      cli(['user', 'list', '--db', '']),
    ])
    expectOneLineError(host, /--host needs a value, got ""/)
    expectOneLineError(db, /--db needs a value, got ""/)
    const unit = await cli(['start', '--postgres', 'postgres://127.0.0.1:1/x?statement_timeout=2s'])
    expectOneLineError(unit, /statement_timeout must be whole milliseconds \(pg would read "2s" as 2 ms\)/)
    // what pg reads as meant passes that check (and then meets the closed port)
    // an empty one would send none, and take the CLI's 5 s bound off with it
    const none = await cli(['user', 'list', '--postgres', 'postgres://127.0.0.1:1/x?statement_timeout='])
    expectOneLineError(none, /statement_timeout must be whole milliseconds/)
    for (const given of ['5000', '5000ms', '0']) {
      const run = await cli([
        'user',
        'list',
        '--postgres',
        `postgres://127.0.0.1:1/x?statement_timeout=${given}`,
      ])
      expectOneLineError(run, /cannot use the PostgreSQL database/)
    }
    const userinfo = await cli([
      'start',
      '--port',
      '0',
      '--db',
      join(dir, 'issuer.db'),
      '--issuer',
      'https://ops:pw@auth.example.com',
    ])
    expectOneLineError(userinfo, /--issuer must be an https URL .*without query, fragment or user info/)
    expect(`${empty.stderr}${unit.stderr}${userinfo.stderr}`).not.toContain(':pw@')
  })

  it('bug: "user foo" and "user list extra" made and migrated ./tokenflow.db before refusing the usage', async () => {
    const file = join(dir, 'never-made.db')
    const [foo, extra, remove] = await Promise.all([
      cli(['user', 'foo', '--db', file]),
      cli(['user', 'list', 'extra', '--db', file]),
      cli(['user', 'remove', '--db', file]),
    ])
    expectOneLineError(foo, /unknown command "user foo"/)
    expectOneLineError(extra, /usage: tokenflow-server user list/)
    expectOneLineError(remove, /usage: tokenflow-server user remove <name>/)
    expect(existsSync(file)).toBe(false)
  })

  it('answers an unreachable PostgreSQL with one line, without a stack or the password', async () => {
    const run = await cli(['start', '--postgres', 'postgres://tokenflow:s3cret-pw@127.0.0.1:1/tokenflow'])
    expectOneLineError(run, /cannot use the PostgreSQL database: .*ECONNREFUSED/)
    expect(run.stderr).not.toContain('s3cret-pw')
  })

  it('answers a host that is not loopback without --issuer, an unreachable Redis and a plain-http public issuer with one line each', async () => {
    const db = join(dir, 'config.db')
    const [wildcard, redis, http] = await Promise.all([
      cli(['start', '--host', '0.0.0.0', '--port', '0', '--db', db]),
      cli(['start', '--port', '0', '--db', db, '--redis', 'redis://127.0.0.1:1']),
      cli(['start', '--port', '0', '--db', db, '--issuer', 'http://auth.example.com']),
    ])
    expectOneLineError(wildcard, /--host 0\.0\.0\.0 needs --issuer/)
    expectOneLineError(redis, /cannot reach Redis: .*ECONNREFUSED/)
    expectOneLineError(http, /--issuer must be an https URL \(http only on localhost\)/)
  })

  it('answers an unusable SQLite path with one line', async () => {
    expectOneLineError(
      await cli(['user', 'list', '--db', join(dir, 'missing-dir', 'x.db')]),
      /cannot open sqlite database/,
    )
  })

  it('adds a user with the password from stdin, lists and removes it', async () => {
    const db = join(dir, 'users.db')
    const password = 'stdin-password-123'
    const added = await cli(['user', 'add', 'ada', '--db', db], { input: `${password}\n` })
    expect(added).toMatchObject({ code: 0, stdout: 'added user "ada"\n', stderr: '' })
    const [again, list, fromArgument, emptyStdin] = await Promise.all([
      cli(['user', 'add', 'ada', '--db', db], { input: `${password}\n` }),
      cli(['user', 'list', '--db', db]),
      // a password is never taken from the command line
      cli(['user', 'add', 'bob', password, '--db', db]),
      cli(['user', 'add', 'bob', '--db', db], { input: '' }),
    ])
    expectOneLineError(again, /user "ada" already exists/)
    expect(list).toMatchObject({ code: 0, stdout: 'ada\n' })
    expectOneLineError(fromArgument, /usage: tokenflow-server user add <name>/)
    expectOneLineError(emptyStdin, /no password on stdin/)
    expect(await cli(['user', 'remove', 'ada', '--db', db])).toMatchObject({
      code: 0,
      stdout: 'removed user "ada"\n',
    })
    expectOneLineError(await cli(['user', 'remove', 'ada', '--db', db]), /no user "ada"/)
  })

  it('starts on a free port, serves the JWKS with the key from `keys rotate`, and logs no password', async () => {
    const db = join(dir, 'start.db')
    const password = 'start-password-456'
    expect((await cli(['user', 'add', 'ada', '--db', db], { input: password })).code).toBe(0)
    const rotated = await cli(['keys', 'rotate', '--db', db])
    expect(rotated.code).toBe(0)
    const kid = /new signing key "([^"]+)"/.exec(rotated.stdout)?.[1]
    expect(kid).toBeTruthy()

    const child = spawn(process.execPath, [CLI, 'start', '--port', '0', '--db', db], {
      env: baseEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    children.add(child)
    let stdout = ''
    const exited = new Promise<number | null>((resolveExit) => child.on('close', resolveExit))
    const url = await new Promise<string>((resolveUrl, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk
        const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(stdout)
        if (match) resolveUrl(match[1]!)
      })
      child.on('close', () => reject(new Error(`the server exited before listening: ${stdout}`)))
    })
    // the default issuer is the address really bound, not port 0
    const metadata = (await (await fetch(`${url}/.well-known/oauth-authorization-server`)).json()) as {
      issuer: string
    }
    expect(metadata.issuer).toBe(url)
    const jwks = await fetch(`${url}/.well-known/jwks.json`)
    expect(jwks.status).toBe(200)
    expect(((await jwks.json()) as { keys: Array<{ kid: string }> }).keys.map((key) => key.kid)).toContain(
      kid,
    )
    const login = await fetch(`${url}/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'ada', password }),
    })
    expect(login.status).toBe(200)
    const { accessToken, refreshToken } = (await login.json()) as {
      accessToken: string
      refreshToken: string
    }
    expect(accessToken.split('.')[0]).toBe(
      Buffer.from(JSON.stringify({ alg: 'ES256', kid, typ: 'at+jwt' })).toString('base64url'),
    )

    child.kill('SIGTERM')
    expect(await exited).toBe(0)
    expect(stdout).toContain('"msg":"request completed"')
    for (const secret of [password, accessToken, refreshToken]) expect(stdout).not.toContain(secret)
  })
})
