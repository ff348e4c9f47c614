import type { AccessTokenClaims, VerifierOptions } from '@tokenflow/server/verify'
import type { FastifyRequest } from 'fastify'
import { describe, expectTypeOf, it } from 'vitest'

describe('@tokenflow/server/verify types', () => {
  it('types the claims the middlewares set on the request, for Fastify and for Express', () => {
    expectTypeOf<FastifyRequest['auth']>().toEqualTypeOf<AccessTokenClaims | undefined>()
    // Express's Request merges with this global interface (@types/express-serve-static-core)
    expectTypeOf<Express.Request['auth']>().toEqualTypeOf<AccessTokenClaims | undefined>()
  })

  it('types client_id as required, as RFC 9068 section 2.2 makes it and the verifier checks it', () => {
    expectTypeOf<AccessTokenClaims['client_id']>().toEqualTypeOf<string>()
    expectTypeOf<AccessTokenClaims['sid']>().toEqualTypeOf<string | undefined>()
  })

  it('types staleIfError as an optional duration in ms, like the other remote JWKS durations', () => {
    expectTypeOf<VerifierOptions['staleIfError']>().toEqualTypeOf<number | undefined>()
    expectTypeOf<VerifierOptions['staleIfError']>().toEqualTypeOf<VerifierOptions['cacheMaxAge']>()
  })

  it('takes an optional option given as undefined (an unset environment variable) under exactOptionalPropertyTypes', () => {
    const env: Record<string, string | undefined> = {}
    const options: VerifierOptions = {
      jwks: 'https://auth.example.com/.well-known/jwks.json',
      issuer: 'https://auth.example.com',
      audience: 'https://api.example.com',
      algorithms: undefined,
      clockTolerance: undefined,
      typ: env.TYP,
      timeoutDuration: undefined,
      cooldownDuration: undefined,
      cacheMaxAge: undefined,
      staleIfError: undefined,
      fetch: undefined,
      now: undefined,
      realm: env.REALM,
    }
    expectTypeOf(options).toMatchTypeOf<VerifierOptions>()
  })
})
