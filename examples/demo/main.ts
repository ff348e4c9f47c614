/**
 * `npm start`: the live demo. It builds nothing itself (`npm start` runs `npm run build` first) and
 * imports the packages by name, so it runs on their dist, as an app would.
 *
 *   npx tsx examples/demo/main.ts [--port 3000] [--access-ttl 10s]
 */
import { relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { startDemo } from './start-demo.js'

const usage = `usage: npm start -- [--port 3000] [--access-ttl 10s]
  --port N          port on 127.0.0.1 (default 3000, or $PORT; 0 picks a free one)
  --access-ttl T    access-token lifetime: seconds with "s" (10s) or milliseconds (10000); from 2s to 3600s (default 10s)`

const root = fileURLToPath(new URL('../../', import.meta.url))

/** Parses `10s`, `2.5s`, `1500ms` or `1500` (ms); NaN for anything else. */
function duration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$/.exec(text)
  if (!match) return Number.NaN
  return Math.round(Number(match[1]) * (match[2] === 's' ? 1_000 : 1))
}

function options(): { port: number; accessTokenTtl: number } {
  let values: { port?: string | undefined; 'access-ttl'?: string | undefined; help?: boolean | undefined }
  try {
    ;({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        'access-ttl': { type: 'string', default: '10s' },
        help: { type: 'boolean', short: 'h' },
      },
    }))
  } catch (error) {
    console.error(`${(error as Error).message.split('. ')[0]}\n${usage}`)
    process.exit(1)
  }
  if (values.help) {
    console.log(usage)
    process.exit(0)
  }
  // an empty PORT (exported but unset in a script) means the default, as no PORT does
  const fromEnv = values.port === undefined && Boolean(process.env.PORT)
  const portText = values.port ?? (process.env.PORT || '3000')
  // digits only: Number() reads '' as 0 (a free port), and takes '0x10' or '1e3'
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN
  const accessTokenTtl = duration(values['access-ttl'] ?? '')
  const problems = [
    Number.isInteger(port) && port >= 0 && port <= 65_535
      ? ''
      : `${fromEnv ? '$PORT' : '"--port"'} must be a whole number from 0 to 65535`,
    Number.isInteger(accessTokenTtl) && accessTokenTtl >= 2_000 && accessTokenTtl <= 3_600_000
      ? ''
      : '"--access-ttl" must be from 2s to 3600s (e.g. 10s, or 10000 for milliseconds)',
  ].filter(Boolean)
  if (problems.length > 0) {
    console.error(`${problems.join('\n')}\n${usage}`)
    process.exit(1)
  }
  return { port, accessTokenTtl }
}

const { port, accessTokenTtl } = options()
const dataDir = `${root}.tokenflow`
let demo: Awaited<ReturnType<typeof startDemo>>
try {
  demo = await startDemo({ dataDir, port, accessTokenTtl })
} catch (error) {
  const { code, message } = error as { code?: string; message?: string }
  console.error(
    code === 'EADDRINUSE'
      ? `port ${port} is in use: stop what runs there, or pick another with "npm start -- --port ${port + 1}"`
      : `the demo did not start: ${message ?? String(error)}`,
  )
  process.exit(1)
}

const colour = process.stdout.isTTY === true && !process.env.NO_COLOR
const bold = (text: string) => (colour ? `\x1b[1m${text}\x1b[0m` : text)
const dim = (text: string) => (colour ? `\x1b[2m${text}\x1b[0m` : text)
const seconds = (ms: number) => `${ms / 1_000} s`

console.log(
  [
    `${bold('tokenflow demo')} running at ${bold(demo.url)}`,
    '',
    `  user      ${bold(demo.username)}`,
    // the demo user of a local, throwaway database: printing its password is the point
    `  password  ${bold(demo.password)}${demo.createdUser ? dim('  (new: created on this start)') : ''}`,
    '',
    dim(`  @tokenflow/server on SQLite: ${relative(root, demo.database)}`),
    dim(
      `  access tokens live ${seconds(demo.accessTokenTtl)}; refresh tokens rotate, and any reuse revokes the session`,
    ),
    dim('  protected API: GET /api/items/:id, checked by @tokenflow/server/verify'),
    '',
    'Open the address, log in, and fire 50 requests. Ctrl+C stops the server.',
  ].join('\n'),
)

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  await demo.close()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
