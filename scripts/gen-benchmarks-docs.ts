/**
 * Writes docs/benchmarks.md and its SVG bar charts (docs/bench-*.svg) from bench/results/*.json.
 * Every figure in the page is read from those files; this script only formats them.
 *
 *   npx tsx scripts/gen-benchmarks-docs.ts
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LimiterBenchResult } from '../bench/limiter.js'
import { type PeersBenchResult, peersTable } from '../bench/peers.js'
import type { PruneBenchResult } from '../bench/prune.js'
import type { ServerBenchResult, TargetFigures } from '../bench/server.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const resultsDir = join(root, 'bench', 'results')
const docsDir = join(root, 'docs')

// ---------------------------------------------------------------------------------------------
// The result files, as far as this page reads them (bench/server.ts and bench/client.ts own them)

/** bench/server.ts's result, with the two maps this page looks up by a computed key */
type ServerResult = Omit<ServerBenchResult, 'settings' | 'ratios'> & {
  settings: Record<string, number | string>
  ratios: Record<string, number | null>
}
interface ClientResult {
  machine: { cpus: number; model: string; node: string }
  date: string
  versions?: Record<string, string>
  overhead?: {
    method: string
    rounds: number
    requestsPerRound: number
    nsPerRequest: Record<string, number>
    ratio: Record<string, number>
    wallRatio?: Record<string, number>
    control?: { ratio: number; wallRatio: number }
    budget: number
    pass: boolean
  }
  size?: {
    method: string
    budget: number
    pass: boolean
    [library: string]: unknown
  }
  [section: string]: unknown
}

// ---------------------------------------------------------------------------------------------
// Formatting

const number = (value: number) => value.toLocaleString('en-US', { maximumFractionDigits: 2 })
const ratio = (value: number | null | undefined) => (value == null ? 'n/a' : `${number(value)}×`)
const verdict = (pass: boolean) => (pass ? '**PASS**' : '**FAIL**')

type Flood = ServerResult['loginFlood']
/** The flood's result: with the interval and the rounds left out, where the run recorded them. */
const floodResult = (flood: Flood) =>
  flood.verdict
    ? `${ratio(flood.ratio)} (95% interval ${ratio(flood.ratioInterval[0])} to ${ratio(flood.ratioInterval[1])}, over ${flood.cleanRounds} uncontended rounds; ${flood.contendedRounds} contended rounds left out) **${flood.verdict}**`
    : `${ratio(flood.ratio)} ${verdict(flood.pass)}`
/** One round's p99 without / with the flood; a contended round is marked with the other processes' cores. */
const floodRound = (round: Flood['rounds'][number]) =>
  `${number(round.unloaded)} / ${number(round.underLogins)}${'contended' in round && round.contended ? ` (contended: ${number(round.foreignCores ?? 0)} cores)` : ''}`

/** A setting the page quotes: missing from the result file is an error, not "undefined" in the page. */
function setting(server: ServerResult, name: string): number {
  const value = server.settings[name]
  if (typeof value !== 'number')
    throw new Error(`bench/results/server.json has no numeric "settings.${name}"`)
  return value
}

function markdownTable(header: string[], rows: (string | number)[][], align?: ('l' | 'r')[]): string {
  const cell = (value: string | number) => {
    // a field missing from the result file must not turn into an empty cell or "undefined"
    if (value === undefined || value === null)
      throw new Error(`a table row of "${header[0]}" has a missing value`)
    return (typeof value === 'number' ? number(value) : value).replace(/\|/g, '\\|')
  }
  const rule = header.map((_, i) => ((align?.[i] ?? (i === 0 ? 'l' : 'r')) === 'r' ? '---:' : '---'))
  return [
    `| ${header.join(' | ')} |`,
    `| ${rule.join(' | ')} |`,
    ...rows.map((row) => `| ${row.map(cell).join(' | ')} |`),
  ].join('\n')
}

const escapeXml = (text: string) =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')

interface Bar {
  label: string
  value: number
  /** drawn in the accent colour */
  accent?: boolean
}

/** A horizontal bar chart, hand-written SVG: one row per bar, its value printed at the end. */
function barChart({
  title,
  unit,
  bars,
  marker,
}: {
  title: string
  unit: string
  bars: Bar[]
  /** a vertical dashed line, e.g. a goal */
  marker?: { value: number; label: string }
}): string {
  const width = 760
  // about 7.5 px per character at 13 px
  const labelWidth = Math.max(120, ...bars.map((bar) => bar.label.length * 7.5 + 20))
  const valueWidth = 110
  const barHeight = 22
  const gap = 10
  const top = 40
  const plot = width - labelWidth - valueWidth
  const max = Math.max(...bars.map((bar) => bar.value), marker?.value ?? 0) || 1
  const height = top + bars.length * (barHeight + gap) + (marker ? 26 : 10)
  const x = (value: number) => labelWidth + (value / max) * plot
  const rows = bars.map((bar, i) => {
    const y = top + i * (barHeight + gap)
    const w = Math.max(1, x(bar.value) - labelWidth)
    return [
      `  <text x="${labelWidth - 8}" y="${y + barHeight / 2}" text-anchor="end" dominant-baseline="middle">${escapeXml(bar.label)}</text>`,
      `  <rect x="${labelWidth}" y="${y}" width="${w.toFixed(1)}" height="${barHeight}" rx="3" fill="${bar.accent ? '#2f6fde' : '#9aa5b1'}"/>`,
      `  <text x="${(labelWidth + w + 6).toFixed(1)}" y="${y + barHeight / 2}" dominant-baseline="middle">${escapeXml(`${number(bar.value)} ${unit}`)}</text>`,
    ].join('\n')
  })
  const markerLines = marker
    ? [
        `  <line x1="${x(marker.value).toFixed(1)}" y1="${top - 6}" x2="${x(marker.value).toFixed(1)}" y2="${height - 22}" stroke="#d64545" stroke-width="1.5" stroke-dasharray="5 4"/>`,
        `  <text x="${x(marker.value).toFixed(1)}" y="${height - 8}" text-anchor="middle" fill="#d64545">${escapeXml(marker.label)}</text>`,
      ]
    : []
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="13" fill="#1f2933">`,
    `  <title>${escapeXml(title)}</title>`,
    `  <rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `  <text x="12" y="22" font-size="15" font-weight="600">${escapeXml(title)}</text>`,
    ...rows,
    ...markerLines,
    '</svg>',
    '',
  ].join('\n')
}

// ---------------------------------------------------------------------------------------------
// Sections

const charts = new Map<string, string>()

function chart(file: string, svg: string, alt: string): string {
  charts.set(file, svg)
  return `![${alt}](./${file})`
}

function serverSection(server: ServerResult): string {
  // key, table label, chart label, figures
  const targets: [string, string, string, TargetFigures | null][] = [
    ['ceiling', 'no-op store (ceiling: HTTP, validation, signing)', 'ceiling (no-op store)', server.ceiling],
    ['sqliteFull', 'SQLite, synchronous=FULL, group commit', 'SQLite FULL, group commit', server.sqliteFull],
    [
      'sqliteFullNoGroupCommit',
      'SQLite, synchronous=FULL, one commit per refresh',
      'SQLite FULL, no group commit',
      server.sqliteFullNoGroupCommit,
    ],
    [
      'sqliteNormal',
      'SQLite, synchronous=NORMAL, group commit',
      'SQLite NORMAL, group commit',
      server.sqliteNormal,
    ],
    ['postgres1', 'PostgreSQL, 1 server instance', 'PostgreSQL, 1 instance', server.postgres1],
    ['postgres2', 'PostgreSQL, 2 server instances', 'PostgreSQL, 2 instances', server.postgres2],
  ]
  const measured = targets.filter(
    (entry): entry is [string, string, string, TargetFigures] => entry[3] !== null,
  )
  const ratioOf = (key: string) => (key === 'ceiling' ? 1 : server.ratios[key])
  const { goal, verify, login, loginFlood, loginFloodOneHasher: oneHasher } = server
  const { fsync } = server.machine
  const capped = `${number(oneHasher.maxConcurrentHashes)} ${oneHasher.maxConcurrentHashes === 1 ? 'hash' : 'hashes'} at a time`
  const goalRps = Math.round(server.ceiling.rps * goal.minRatio)

  const refreshTable = markdownTable(
    ['refresh target', 'refreshes/s', 'p50 ms', 'p99 ms', 'errors', '× ceiling', 'server CPU µs/refresh'],
    measured.map(([key, label, , value]) => [
      label,
      value.rps,
      value.p50,
      value.p99,
      value.errors,
      ratio(ratioOf(key)),
      value.serverCpuUs,
    ]),
  )
  const roundsTable = markdownTable(
    ['refresh target', ...server.ceiling.rounds.map((_, i) => `round ${i + 1}`)],
    measured.map(([, label, , value]) => [label, ...value.rounds.map((round) => round.rps)]),
  )
  const refreshChart = chart(
    'bench-refresh.svg',
    barChart({
      title: 'POST /refresh/token, refreshes per second (higher is better)',
      unit: '/s',
      bars: measured.map(([key, , label, value]) => ({
        label,
        value: value.rps,
        accent: key === 'sqliteFull',
      })),
      marker: { value: goalRps, label: `goal: ${number(goal.minRatio * 100)}% of the ceiling` },
    }),
    'Refresh throughput per store',
  )
  const latencyChart = chart(
    'bench-refresh-p99.svg',
    barChart({
      title: `POST /refresh/token, p99 latency at ${number(setting(server, 'connections'))} connections (lower is better)`,
      unit: 'ms',
      bars: measured.map(([key, , label, value]) => ({
        label,
        value: value.p99,
        accent: key === 'sqliteFull',
      })),
    }),
    'Refresh p99 latency per store',
  )
  const verifyChart = chart(
    'bench-verify.svg',
    barChart({
      title: 'Verifying an access token, requests per second (higher is better)',
      unit: '/s',
      bars: [
        { label: 'createVerifier().fastify', value: verify.rps, accent: true },
        { label: 'raw jose.jwtVerify', value: verify.joseRps },
      ],
    }),
    'Verify middleware against raw jose',
  )
  const floodChart = chart(
    'bench-login-flood.svg',
    barChart({
      title: `Refresh p99 at ${number(loginFlood.rate)}/s, with and without a login flood (lower is better)`,
      unit: 'ms',
      bars: [
        { label: 'no logins', value: loginFlood.refreshP99Unloaded },
        { label: 'login flood', value: loginFlood.refreshP99UnderLogins, accent: true },
        { label: `no logins, ${capped}`, value: oneHasher.refreshP99Unloaded },
        { label: `login flood, ${capped}`, value: oneHasher.refreshP99UnderLogins },
      ],
    }),
    'Refresh p99 under a login flood',
  )

  return [
    '## Server',
    '',
    `Measured ${server.date} on ${server.machine.cpus} × ${server.machine.model}, Node ${server.machine.node}, ${server.machine.os}.`,
    `The load generator runs on the same cores. The 1-minute load average was ${number(server.machine.loadAverage.before)} before the run and ${number(server.machine.loadAverage.after)} after it: other processes shared the machine, so compare the ratios, which were measured side by side, rather than the absolute figures.`,
    'Figures are medians over the rounds. Every ratio divides two figures of the same round and takes the median over the rounds, so it need not equal the quotient of the two medians shown next to it. The login flood is the exception: its p99s are pooled over the rounds (below).',
    `A one-row SQLite commit with synchronous=FULL (one fsync of the WAL) took p50 ${number(fsync.before.p50)} ms, p99 ${number(fsync.before.p99)} ms, max ${number(fsync.before.max)} ms before the refresh rounds and p50 ${number(fsync.after.p50)} ms, p99 ${number(fsync.after.p99)} ms, max ${number(fsync.after.max)} ms after them. better-sqlite3 is synchronous, so the event loop waits out each group commit's fsync.`,
    '',
    '### Refresh throughput',
    '',
    `Goal: a durable refresh endpoint (SQLite, synchronous=FULL) at ≥ ${number(goal.minRatio)}× the no-database ceiling of the same run. Result: ${ratio(goal.ratio)} ${verdict(goal.pass)}. Without group commit, the same store reached ${ratio(server.ratios.sqliteFullNoGroupCommit)}.`,
    '',
    refreshTable,
    '',
    refreshChart,
    '',
    latencyChart,
    '',
    'Refreshes per second in each round (the targets take turns within a round, so a round is one side-by-side comparison):',
    '',
    roundsTable,
    ...(server.postgresSkipped ? ['', `PostgreSQL was not measured: ${server.postgresSkipped}.`] : []),
    '',
    '### Verify middleware',
    '',
    `Goal: \`createVerifier\`'s Fastify preHandler at ≥ ${number(verify.budget)}× raw \`jose.jwtVerify\` in the same Fastify app with the same key. Result: ${ratio(verify.ratio)} ${verdict(verify.pass)}.`,
    '',
    markdownTable(
      ['route', 'requests/s', 'p99 ms', 'server CPU µs/request'],
      [
        ['`createVerifier().fastify` preHandler', verify.rps, verify.p99, verify.cpuUs],
        ['raw `jose.jwtVerify`', verify.joseRps, verify.joseP99, verify.joseCpuUs],
      ],
    ),
    '',
    verifyChart,
    '',
    '### Login, and refresh latency during a login flood',
    '',
    `Login (\`POST /auth/login\`, Argon2id) with ${login.connections} connections: ${number(login.rps)} logins/s, p50 ${number(login.p50)} ms, p99 ${number(login.p99)} ms (${number(login.errors)} errors).`,
    '',
    `Goal: refresh p99 while logins saturate the hasher at most ${number(loginFlood.budget)}× its unloaded value. Refreshes are sent at a steady ${number(loginFlood.rate)}/s to a server on SQLite FULL (\`floodRate\` ${number(setting(server, 'floodRate'))}/s, capped at ${number(setting(server, 'floodRateShare'))}× SQLite FULL's throughput above so that the refreshes alone never saturate the server); the logins come from ${number(login.connections)} connections. Result: ${floodResult(loginFlood)}.`,
    ...(loginFlood.verdict
      ? [
          '',
          `Here the p99 of each phase is taken over the latencies of every uncontended round pooled, and the ratio's 95% interval comes from resampling whole rounds. A round in which other processes used more than ${number(setting(server, 'floodMaxForeign'))} cores (from /proc/stat, less the bench's and the server's own CPU) is left out; with fewer than half the rounds left, or an interval that straddles the goal, the verdict is INCONCLUSIVE rather than a pass or a fail that the machine's load decided.`,
        ]
      : []),
    '',
    markdownTable(
      ['server', 'refreshes at a steady rate', 'p50 ms', 'p99 ms', 'p99 × unloaded', 'refresh errors'],
      [
        ['as shipped', 'no logins', loginFlood.refreshP50Unloaded, loginFlood.refreshP99Unloaded, '', ''],
        [
          'as shipped',
          `login flood (${number(loginFlood.loginRps)} logins/s)`,
          loginFlood.refreshP50UnderLogins,
          loginFlood.refreshP99UnderLogins,
          ratio(loginFlood.ratio),
          loginFlood.refreshErrors,
        ],
        [capped, 'no logins', oneHasher.refreshP50Unloaded, oneHasher.refreshP99Unloaded, '', ''],
        [
          capped,
          `login flood (${number(oneHasher.loginRps)} logins/s)`,
          oneHasher.refreshP50UnderLogins,
          oneHasher.refreshP99UnderLogins,
          ratio(oneHasher.ratio),
          oneHasher.refreshErrors,
        ],
      ],
      ['l', 'l', 'r', 'r', 'r', 'r'],
    ),
    '',
    `"As shipped" checks passwords with the built-in users table, whose hasher runs up to ${number(loginFlood.maxConcurrentHashes)} Argon2id ${loginFlood.maxConcurrentHashes === 1 ? 'hash' : 'hashes'} at once (one per core, less one for the event loop). "${capped}" checks the same password through the \`authenticate\` option with \`createPasswordHasher({ maxConcurrency: ${oneHasher.maxConcurrentHashes} })\`.`,
    '',
    'Refresh p99 (ms) in each round, without and with the login flood:',
    '',
    markdownTable(
      ['server', ...loginFlood.rounds.map((_, i) => `round ${i + 1}`)],
      [
        ['as shipped', ...loginFlood.rounds.map(floodRound)],
        [capped, ...oneHasher.rounds.map(floodRound)],
      ],
    ),
    '',
    floodChart,
    '',
    '### Method',
    '',
    server.method,
    '',
    markdownTable(
      ['setting', 'value'],
      Object.entries(server.settings).map(([name, value]) => [`\`${name}\``, String(value)]),
    ),
  ].join('\n')
}

const CLIENT_LABELS: Record<string, string> = {
  bare: 'bare axios',
  tokenflow: 'tokenflow',
  axiosAuthRefresh: 'axios-auth-refresh',
  axiosJwt: 'axios-jwt',
}
const clientLabel = (key: string) => CLIENT_LABELS[key] ?? key
const SIZE_LABELS: Record<string, string> = {
  tokenflow: 'tokenflow (axios app)',
  tokenflowFetch: 'tokenflow (fetch app)',
  crossTab: 'tokenflow cross-tab module alone',
}
const sizeLabel = (key: string) => SIZE_LABELS[key] ?? clientLabel(key)

function clientSection(client: ClientResult): string {
  const parts = [
    '## Client',
    '',
    `Measured ${client.date} on ${client.machine.cpus} × ${client.machine.model}, Node ${client.machine.node}.`,
  ]
  if (client.versions) {
    parts.push(
      '',
      `Versions: ${Object.entries(client.versions)
        .map(([name, version]) => `${clientLabel(name)} ${version}`)
        .join(', ')}.`,
    )
  }
  const { overhead, size } = client
  if (overhead) {
    const libraries = Object.keys(overhead.nsPerRequest)
    parts.push(
      '',
      '### Per-request overhead',
      '',
      `Budget: tokenflow ≤ ${ratio(overhead.budget)} bare axios. Result: ${ratio(overhead.ratio.tokenflow)} ${verdict(overhead.pass)}.`,
      '',
      markdownTable(
        [
          'client',
          'CPU ns/request (median)',
          'CPU vs bare axios',
          ...(overhead.wallRatio ? ['wall clock vs bare axios'] : []),
        ],
        libraries.map((key) => [
          clientLabel(key),
          overhead.nsPerRequest[key]!,
          ratio(overhead.ratio[key]),
          ...(overhead.wallRatio ? [ratio(overhead.wallRatio[key])] : []),
        ]),
      ),
      '',
      chart(
        'bench-client-overhead.svg',
        barChart({
          title: 'CPU time per request on top of axios (lower is better)',
          unit: 'ns',
          bars: libraries.map((key) => ({
            label: clientLabel(key),
            value: overhead.nsPerRequest[key]!,
            accent: key === 'tokenflow',
          })),
        }),
        'Client per-request overhead',
      ),
      ...(overhead.control
        ? [
            '',
            `Noise floor: a second bare-axios instance measured ${ratio(overhead.control.ratio)} (CPU) and ${ratio(overhead.control.wallRatio)} (wall clock) against the first.`,
          ]
        : []),
      '',
      `Method: ${overhead.method}.`,
    )
  }
  if (size) {
    const libraries = Object.entries(size).filter(
      (entry): entry is [string, number] => typeof entry[1] === 'number' && entry[0] !== 'budget',
    )
    parts.push(
      '',
      '### Bundle size',
      '',
      `Budget: tokenflow ≤ ${number(size.budget)} B min+gzip. Result: ${number(size.tokenflow as number)} B ${verdict(size.pass)}.`,
      '',
      markdownTable(
        ['library', 'app size, min+gzip (bytes)'],
        libraries.map(([key, bytes]) => [sizeLabel(key), bytes]),
      ),
      '',
      chart(
        'bench-client-size.svg',
        barChart({
          title: 'What each library adds to an app, min+gzip (lower is better)',
          unit: 'B',
          bars: libraries.map(([key, bytes]) => ({
            label: sizeLabel(key),
            value: bytes,
            accent: key === 'tokenflow',
          })),
          marker: { value: size.budget, label: `budget: ${number(size.budget)} B` },
        }),
        'Client bundle size',
      ),
      ...contributorsTable(size.tokenflowContributors),
      '',
      `Method: ${size.method}.`,
    )
  }
  // sections this script does not know yet (added to bench/client.ts later) are shown as tables of their fields
  for (const [name, value] of Object.entries(client)) {
    if (['machine', 'date', 'versions', 'overhead', 'size'].includes(name)) continue
    const table = genericTable(value)
    if (table) parts.push('', `### ${name}`, '', table)
  }
  return parts.join('\n')
}

/** Which files the tokenflow bundle is made of, when the result lists them. */
function contributorsTable(contributors: unknown): string[] {
  if (contributors === null || typeof contributors !== 'object') return []
  const rows = Object.entries(contributors as Record<string, unknown>).filter(
    (entry): entry is [string, number] => typeof entry[1] === 'number',
  )
  if (rows.length === 0) return []
  return [
    '',
    'Where the tokenflow (axios app) bundle comes from, minified before gzip:',
    '',
    markdownTable(
      ['file', 'bytes'],
      rows.map(([file, bytes]) => [`\`${file}\``, bytes]),
    ),
  ]
}

/** A table for an array of flat objects, or an object of flat objects; null for anything else. */
function genericTable(value: unknown): string | null {
  const rows: [string, Record<string, unknown>][] = Array.isArray(value)
    ? value.map((row, i) => [String(i + 1), row as Record<string, unknown>])
    : value !== null && typeof value === 'object'
      ? Object.entries(value as Record<string, unknown>).map(([key, row]) => [
          key,
          row as Record<string, unknown>,
        ])
      : []
  if (
    rows.length === 0 ||
    rows.some(([, row]) => row === null || typeof row !== 'object' || Array.isArray(row))
  ) {
    return null
  }
  const columns = [...new Set(rows.flatMap(([, row]) => Object.keys(row)))]
  const show = (cell: unknown) =>
    typeof cell === 'number'
      ? cell
      : typeof cell === 'string'
        ? cell
        : cell === undefined
          ? ''
          : JSON.stringify(cell)
  return markdownTable(
    ['', ...columns],
    rows.map(([key, row]) => [clientLabel(key), ...columns.map((column) => show(row[column]))]),
  )
}

// ---------------------------------------------------------------------------------------------
// Peer scenarios (bench/peers.ts owns the file; its table is rendered by the same function the bench prints with)

function peersSection(peers: PeersBenchResult): string {
  return [
    '## Client peer scenarios',
    '',
    `Measured ${peers.date} on ${peers.machine.cpus} × ${peers.machine.model}, Node ${peers.machine.node}.`,
    `Versions: axios ${peers.versions.axios}, axios-auth-refresh ${peers.versions.axiosAuthRefresh}, axios-jwt ${peers.versions.axiosJwt}.`,
    '',
    peersTable(peers),
    '',
    `Method: ${peers.method}.`,
  ].join('\n')
}

function pruneSection(prune: PruneBenchResult): string {
  const label = {
    single: 'one `DELETE` (before)',
    store: 'batched `deleteExpiredSessions`',
    none: 'no prune',
  }
  const rows = prune.sizes.flatMap((size) =>
    (['single', 'store', 'none'] as const).map((variant) => {
      const figures = size[variant]
      return [
        number(size.sessions),
        label[variant],
        variant === 'none' ? '—' : number(figures.deleted),
        figures.maxStallMs.toFixed(1),
        figures.p99StallMs.toFixed(1),
        variant === 'none' ? '—' : number(Math.round(figures.totalMs)),
        number(figures.rotations),
      ]
    }),
  )
  return [
    '## Session prune (SQLite)',
    '',
    `Measured ${prune.date} on ${prune.machine.cpus} × ${prune.machine.model}, Node ${prune.machine.node}; load average ${prune.machine.loadAverage.before} before, ${prune.machine.loadAverage.after} after.`,
    `Goal: the longest event-loop stall of a prune at most ${prune.goal.maxStallMs} ms at the largest size: ${prune.goal.stallMs.toFixed(1)} ms, ${prune.goal.pass ? 'met' : 'NOT met'}.`,
    '',
    markdownTable(
      ['sessions', 'prune', 'deleted', 'longest stall ms', 'p99 stall ms', 'total ms', 'rotations meanwhile'],
      rows,
      ['r', 'l', 'r', 'r', 'r', 'r', 'r'],
    ),
    '',
    `Method: ${prune.method} Medians of ${prune.settings.rounds} round${prune.settings.rounds === 1 ? '' : 's'}. The rotations run one at a time, so during a batched prune they get one per batch; "no prune" counts them over 1 s.`,
  ].join('\n')
}

function limiterSection(limiter: LimiterBenchResult): string {
  return [
    '## Login rate limiter (in memory)',
    '',
    `Measured ${limiter.date} on ${limiter.machine.cpus} × ${limiter.machine.model}, Node ${limiter.machine.node}; load average ${limiter.machine.loadAverage.before} before, ${limiter.machine.loadAverage.after} after.`,
    'What a login attempt at a name the limiter has not seen costs it when its map is full and a window has to go, next to the same attempt with room to spare. No budget: an attempt that goes on to hash a password costs tens of milliseconds.',
    '',
    markdownTable(
      ['limiter', 'ns per attempt at a new name (median)', 'vs room to spare'],
      limiter.rows.map((row) => [row.label, number(row.nsPerAttempt), `${row.ratio.toFixed(2)}×`]),
      ['l', 'r', 'r'],
    ),
    '',
    `Method: ${limiter.method}`,
  ].join('\n')
}

function read<T>(name: string): T | undefined {
  const file = join(resultsDir, `${name}.json`)
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as T) : undefined
}

const server = read<ServerResult>('server')
const client = read<ClientResult>('client')
const peers = read<PeersBenchResult>('peers')
const prune = read<PruneBenchResult>('prune')
const limiter = read<LimiterBenchResult>('limiter')
if (!server && !client && !peers) {
  console.error('no bench/results/server.json, client.json or peers.json: run "npm run bench" first')
  process.exit(1)
}

const page = [
  '# Benchmarks',
  '',
  '<!-- generated by scripts/gen-benchmarks-docs.ts from bench/results/*.json: do not edit by hand -->',
  '',
  'Every figure on this page comes from `bench/results/*.json`, written by `npm run bench`',
  '(`npx tsx bench/run.ts server`, `client`, `prune`, `peers` or `limiter` for one part, after `npm run build`).',
  'Regenerate the page with `npm run build && npx tsx scripts/gen-benchmarks-docs.ts`.',
  ...(server ? ['', serverSection(server)] : []),
  ...(client ? ['', clientSection(client)] : []),
  ...(peers ? ['', peersSection(peers)] : []),
  ...(prune ? ['', pruneSection(prune)] : []),
  ...(limiter ? ['', limiterSection(limiter)] : []),
  '',
].join('\n')

writeFileSync(join(docsDir, 'benchmarks.md'), page)
for (const [file, svg] of charts) writeFileSync(join(docsDir, file), svg)
console.log(`wrote docs/benchmarks.md and ${[...charts.keys()].map((file) => `docs/${file}`).join(', ')}`)
