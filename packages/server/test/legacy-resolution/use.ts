// Every entry point of @tokenflow/server as a project on TypeScript's legacy moduleResolution "node" uses it.
import { createAuthServer, createSqliteStore } from '@tokenflow/server'
import { createPostgresStore } from '@tokenflow/server/postgres'
import { createVerifier, type VerifierOptions } from '@tokenflow/server/verify'

export const app = createAuthServer({
  issuer: 'https://auth.example.com',
  audience: 'https://api.example.com',
  store: createSqliteStore({ filename: ':memory:' }),
})
export const postgres: typeof createPostgresStore = createPostgresStore
const options: VerifierOptions = {
  jwks: 'https://auth.example.com/.well-known/jwks.json',
  issuer: 'https://auth.example.com',
  audience: 'https://api.example.com',
}
export const verifier = createVerifier(options)
