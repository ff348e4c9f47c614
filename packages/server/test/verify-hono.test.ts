/**
 * The README's Hono middleware over `verify()` and `verifyErrorResponse()`: it must answer as the Fastify and
 * Express middlewares do. The code between the readme markers is the README's block after its imports, line for
 * line (checked below), so the sample cannot drift from what this file runs.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Hono } from 'hono'
import { createMiddleware } from 'hono/factory'
import { describe, expect, it } from 'vitest'
// the README imports these from '@tokenflow/server/verify'
import { type AccessTokenClaims, isVerifyError, VerifyError, verifyErrorResponse } from '../src/verify.js'
import { localVerifier } from './helpers/verify.js'

const { verifier, sign, now: NOW } = await localVerifier()

// readme:start
const auth = createMiddleware<{ Variables: { auth: AccessTokenClaims } }>(async (c, next) => {
  const token = /^bearer +([^ ].*)$/i.exec(c.req.header('authorization') ?? '')?.[1]
  try {
    if (!token) throw new VerifyError('ERR_TOKEN_MISSING', 'the access token is missing')
    c.set('auth', await verifier.verify(token))
  } catch (error) {
    if (!isVerifyError(error)) throw error
    const { status, headers, body } = verifyErrorResponse(error)
    return c.json(body, status, headers)
  }
  await next()
})
export const api = new Hono().get('/me', auth, (c) => c.json({ user: c.get('auth').sub }))
// readme:end

const me = (authorization?: string) =>
  api.request('/me', authorization === undefined ? {} : { headers: { authorization } })

describe("the README's Hono middleware", () => {
  it('is the block the README shows, line for line', () => {
    const own = readFileSync(import.meta.filename, 'utf8')
    const code = own.slice(own.indexOf('// readme:start\n') + 16, own.indexOf('// readme:end'))
    const readme = readFileSync(join(import.meta.dirname, '../../../README.md'), 'utf8')
    expect(readme).toContain(code)
  })

  it('hands the claims to the route for a valid token', async () => {
    const response = await me(`Bearer ${await sign()}`)
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({ user: 'user-1' })
  })

  it('answers a missing, malformed or expired token as the other middlewares do', async () => {
    const cases: Array<[string | undefined, string]> = [
      [undefined, 'ERR_TOKEN_MISSING'],
      ['Basic abc', 'ERR_TOKEN_MISSING'],
      ['Bearer not-a-jwt', 'ERR_JWS_INVALID'],
      [`Bearer ${await sign(NOW / 1000 - 3600)}`, 'ERR_JWT_EXPIRED'],
    ]
    for (const [authorization, code] of cases) {
      const response = await me(authorization)
      expect(response.status, code).toBe(401)
      expect(response.headers.get('www-authenticate')).toMatch(/^Bearer error="invalid_token"/)
      expect(response.headers.get('cache-control')).toBe('no-store')
      expect(await response.json()).toMatchObject({ error: 'invalid_token', code })
    }
  })

  it('gives every shape of header the code the Fastify middleware gives it', async () => {
    const fastify = Fastify()
    fastify.get('/me', { preHandler: verifier.fastify }, async (request) => ({ user: request.auth?.sub }))
    const token = await sign()
    const headers = [
      '',
      'Bearer',
      'Bearer ',
      'Bearer   ',
      'bearer\tabc',
      'Basic abc',
      `Bearer ${token}`,
      `BEARER  ${token}`,
      `Bearer ${token} extra`,
      `Bearer ${token} ${token}`,
      `Bearer ${token}, Bearer ${token}`,
      `Bearer  ${token} `,
      'Bearer a b',
    ]
    // over real HTTP, whose parser trims a value's surrounding spaces as Hono's Request does
    const origin = await fastify.listen({ port: 0, host: '127.0.0.1' })
    try {
      for (const authorization of headers) {
        const hono = await me(authorization)
        const reference = await fetch(`${origin}/me`, { headers: { authorization } })
        const label = JSON.stringify(authorization.replace(token, '<token>'))
        expect(hono.status, label).toBe(reference.status)
        expect(await hono.json(), label).toEqual(await reference.json())
      }
    } finally {
      await fastify.close()
    }
  })
})
