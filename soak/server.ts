/**
 * One token-server instance of the soak, in its own process so that `kill -9` is real: the
 * library's `createAuthServer` with 1-second access tokens, plus two soak-only routes.
 *
 * - `GET /api/ping` is the protected API: `createVerifier` from "@tokenflow/server/verify", with the
 *   clock tolerance the soak chose (1 s rather than the default 30 s, so 1-second tokens really expire).
 * - `GET /soak/stats` answers the issuer's counters and how many 5xx this process sent.
 *
 * The parent passes a `SoakServerConfig` as JSON in argv[2] and gets `SoakServerMessage`s over IPC:
 * `ready` once it listens, `reuseDetected` for every session the issuer revoked for reuse (sent at
 * once, so a later kill -9 cannot lose the count), `poolError` for every idle-client error of the pg Pool.
 */
import { createAuthServer, createSqliteStore, type TokenStore } from '@tokenflow/server'
import { createPostgresStore } from '@tokenflow/server/postgres'
import { createVerifier, type Verifier } from '@tokenflow/server/verify'
import pg from 'pg'
import {
  SOAK_PASSWORD,
  type SoakServerConfig,
  type SoakServerMessage,
  type SoakServerStats,
} from './lib/protocol.js'

const config = JSON.parse(process.argv[2] ?? 'null') as SoakServerConfig
const send = (message: SoakServerMessage) => process.send?.(message)

let pool: pg.Pool | undefined
let store: TokenStore
if (config.kind === 'postgres') {
  pool = new pg.Pool({ connectionString: config.url, max: config.poolSize, connectionTimeoutMillis: 3_000 })
  // a PostgreSQL restart terminates the idle connections: pg then emits 'error' on the Pool, and an
  // unhandled 'error' event would crash the process. The pool drops the dead client by itself.
  pool.on('error', (error: Error & { code?: string }) =>
    send({ type: 'poolError', code: error.code ?? 'unknown' }),
  )
  store = createPostgresStore({ client: pool, schema: config.schema })
} else {
  // the library defaults: WAL, synchronous FULL, group commit
  store = createSqliteStore({ filename: config.file })
}

const issuerUrl = 'https://soak.tokenflow.test'
let serverErrors = 0
const app = createAuthServer({
  issuer: issuerUrl,
  audience: 'soak-api',
  store,
  accessTokenTtl: config.accessTokenTtl,
  ...(config.reuseGrace === undefined ? {} : { reuseGrace: config.reuseGrace }),
  rateLimit: false,
  // pruning would delete nothing here (no session expires during a soak) and only add load
  pruneInterval: 0,
  authenticate: async ({ username, password }) => (password === SOAK_PASSWORD ? { userId: username } : null),
  onEvent(event) {
    if (event.type === 'reuseDetected') send({ type: 'reuseDetected', sessionId: event.sessionId })
  },
})

let verifier: Verifier | undefined
app.get('/api/ping', { preHandler: (request, reply) => verifier!.fastify(request, reply) }, (request) => ({
  sub: request.auth?.sub,
  instance: config.name,
}))
app.get(
  '/soak/stats',
  (): SoakServerStats => ({ pid: process.pid, serverErrors, ...app.tokenflow.issuer.stats }),
)
app.addHook('onResponse', async (_request, reply) => {
  if (reply.statusCode >= 500) serverErrors++
})

await app.ready()
// The JWKS is read once, when the signing key is loaded: the soak starts its first instance alone, so
// that every instance signs with the one key it stored, and no key is rotated during a soak.
verifier = createVerifier({
  jwks: await app.tokenflow.keyring.jwks(),
  issuer: issuerUrl,
  audience: 'soak-api',
  clockTolerance: config.clockTolerance,
})
await app.listen({ port: config.port, host: '127.0.0.1' })
const address = app.server.address()
send({ type: 'ready', port: typeof address === 'object' && address ? address.port : config.port })

let closing = false
const close = async () => {
  if (closing) return
  closing = true
  await app.close().catch(() => undefined)
  if (config.kind === 'sqlite') await store.close().catch(() => undefined)
  await pool?.end().catch(() => undefined)
  process.exit(0)
}
// the soak closes the IPC channel to stop an instance; a parent that died closes it too
process.on('disconnect', close)
process.on('SIGTERM', close)
