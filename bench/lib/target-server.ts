/**
 * One server process of the server benchmark, started by `startTarget` (target.ts) with an IPC
 * channel: it gets a `TargetConfig`, listens on 127.0.0.1 (a random port) and answers
 * `TargetReady`. It closes when the parent disconnects, so an aborted bench leaves no process behind.
 */
import { randomUUID } from 'node:crypto'
import {
  type AuthenticateFunction,
  createAuthServer,
  createPasswordHasher,
  createSqliteStore,
  type TokenStore,
} from '@tokenflow/server'
import { createVerifier } from '@tokenflow/server/verify'
import Fastify, { type FastifyInstance } from 'fastify'
import { exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT } from 'jose'
import { createNoopStore } from './noop-store.js'
import { deserializeSession, type SerializedSession } from './sessions.js'

/** Where a bench auth server keeps its data. */
export type TargetStore =
  | { type: 'noop'; sessions: SerializedSession[] }
  | { type: 'sqlite'; filename: string; synchronous: 'FULL' | 'NORMAL'; groupCommit: boolean }
  | { type: 'postgres'; url: string; schema: string; poolSize: number }

/** What a server process runs: the tokenflow auth server on a store, or the verify comparison app. */
export type TargetConfig =
  | {
      kind: 'auth'
      store: TargetStore
      /** a user to add, for the login bench */
      user?: { username: string; password: string }
      /**
       * Check the user's password through `authenticate` with a hasher capped at this many
       * concurrent Argon2id hashes, instead of the built-in users table (capped at the core count)
       */
      hasherConcurrency?: number
    }
  | { kind: 'verify' }

/** The process's CPU time so far, in µs, answered to a `'usage'` message. */
export interface TargetUsage {
  type: 'usage'
  cpu: number
}

/** The process's answer once it listens. */
export interface TargetReady {
  type: 'ready'
  port: number
  /** the verify app: the access token both of its routes accept */
  token?: string
}

const ISSUER = 'http://127.0.0.1'
const AUDIENCE = 'https://api.example.com'

async function openStore(config: TargetStore): Promise<{ store: TokenStore; close: () => Promise<void> }> {
  if (config.type === 'noop') {
    const store = createNoopStore(config.sessions.map(deserializeSession))
    return { store, close: () => store.close() }
  }
  if (config.type === 'sqlite') {
    const { filename, synchronous, groupCommit } = config
    const store = createSqliteStore({ filename, synchronous, groupCommit })
    return { store, close: () => store.close() }
  }
  // loaded only here: the other targets need neither pg nor the postgres store
  const { default: pg } = await import('pg')
  const { createPostgresStore } = await import('@tokenflow/server/postgres')
  const pool = new pg.Pool({ connectionString: config.url, max: config.poolSize })
  // a connection dropped while idle (a server restart) is replaced by the pool; it must not crash the process
  pool.on('error', () => {})
  const store = createPostgresStore({ client: pool, schema: config.schema })
  return {
    store,
    close: async () => {
      await store.close()
      await pool.end()
    },
  }
}

async function startAuth(
  config: Extract<TargetConfig, { kind: 'auth' }>,
): Promise<{ app: FastifyInstance; ready: Omit<TargetReady, 'port'>; close: () => Promise<void> }> {
  const { store, close } = await openStore(config.store)
  const authenticate =
    config.user && config.hasherConcurrency
      ? await cappedAuthenticate(config.user, config.hasherConcurrency)
      : undefined
  const app = createAuthServer({
    issuer: ISSUER,
    audience: AUDIENCE,
    store,
    // the login bench measures Argon2id, not the limiter: one client IP would be refused after 50 tries
    rateLimit: false,
    pruneInterval: 0,
    ...(authenticate ? { authenticate } : {}),
  })
  await app.ready()
  if (config.user && !authenticate)
    await app.tokenflow.issuer.addUser(config.user.username, config.user.password)
  return { app, ready: { type: 'ready' }, close }
}

/** The built-in password check, done by a hasher that runs at most `maxConcurrency` hashes at once. */
async function cappedAuthenticate(
  user: { username: string; password: string },
  maxConcurrency: number,
): Promise<AuthenticateFunction> {
  const hasher = createPasswordHasher({ maxConcurrency })
  const hash = await hasher.hash(user.password)
  return async ({ username, password }) => {
    if (username !== user.username) {
      await hasher.verifyDummy(password)
      return null
    }
    return (await hasher.verify(hash, password)) ? { userId: 'bench-login' } : null
  }
}

async function startVerify(): Promise<{ app: FastifyInstance; ready: Omit<TargetReady, 'port'> }> {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true })
  const jwk = { ...(await exportJWK(publicKey)), kid: 'bench', alg: 'ES256', use: 'sig' }
  // both routes start from the same published JWK
  const key = await importJWK(jwk, 'ES256')
  const token = await new SignJWT({ client_id: 'tokenflow', sid: 'bench-session' })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'bench' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setSubject('bench-user')
    .setIssuedAt()
    .setExpirationTime('2h')
    .setJti(randomUUID())
    .sign(privateKey)
  const verifier = createVerifier({ jwks: { keys: [jwk] }, issuer: ISSUER, audience: AUDIENCE })

  // one bare Fastify app for both, so the only difference between the routes is the verification
  const app = Fastify()
  app.get('/verifier', { preHandler: verifier.fastify }, async (request) => ({ sub: request.auth?.sub }))
  app.get('/jose', async (request, reply) => {
    const authorization = request.headers.authorization ?? ''
    try {
      const { payload } = await jwtVerify(authorization.slice('Bearer '.length), key, {
        issuer: ISSUER,
        audience: AUDIENCE,
        algorithms: ['ES256'],
      })
      return { sub: payload.sub }
    } catch {
      return reply.code(401).send({ error: 'invalid_token' })
    }
  })
  await app.ready()
  return { app, ready: { type: 'ready', token } }
}

process.once('message', async (config: TargetConfig) => {
  const started =
    config.kind === 'verify' ? { ...(await startVerify()), close: async () => {} } : await startAuth(config)
  await started.app.listen({ host: '127.0.0.1', port: 0 })
  const address = started.app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  // with a callback, a send after the bench went away is ignored instead of crashing this process
  const ignore = () => {}
  process.send?.({ ...started.ready, port } satisfies TargetReady, ignore)
  process.on('message', (message) => {
    if (message !== 'usage') return
    const { user, system } = process.cpuUsage()
    process.send?.({ type: 'usage', cpu: user + system } satisfies TargetUsage, ignore)
  })
  process.once('disconnect', async () => {
    await started.app.close()
    await started.close()
    process.exit(0)
  })
})
