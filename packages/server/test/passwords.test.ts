import { createAuthServer, createSqliteStore } from '@tokenflow/server'
import { describe, expect, it } from 'vitest'
import { createPasswordHasher, createSemaphore } from '../src/passwords.js'

describe('createPasswordHasher', () => {
  const passwords = createPasswordHasher()

  it('hashes with Argon2id m=19456 t=2 p=1 into a PHC string and verifies', async () => {
    const phc = await passwords.hash('correct horse battery staple')
    expect(phc).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/)
    expect(await passwords.verify(phc, 'correct horse battery staple')).toBe(true)
    expect(await passwords.verify(phc, 'correct horse battery stapler')).toBe(false)
    // a fresh salt every time
    expect(await passwords.hash('correct horse battery staple')).not.toBe(phc)
  })

  it('answers false, never throws, for a malformed stored hash', async () => {
    for (const phc of ['', '!', '$argon2id$v=19$m=19456,t=2,p=1$broken', 'plaintext']) {
      expect(await passwords.verify(phc, 'anything')).toBe(false)
    }
  })

  it('needsRehash is true only when the parameters or the algorithm differ', async () => {
    expect(passwords.needsRehash(await passwords.hash('pw'))).toBe(false)
    expect(passwords.needsRehash(await createPasswordHasher({ timeCost: 1 }).hash('pw'))).toBe(true)
    expect(passwords.needsRehash(await createPasswordHasher({ memoryCost: 8192 }).hash('pw'))).toBe(true)
    expect(
      passwords.needsRehash('$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA'),
    ).toBe(true)
    expect(passwords.needsRehash('garbage')).toBe(true)
  })

  it('verifyDummy resolves false for any password', async () => {
    expect(await passwords.verifyDummy('tokenflow-dummy-password')).toBe(false)
    expect(await passwords.verifyDummy('')).toBe(false)
  })

  it('takes maxQueue 0 (no line) and Infinity (no bound), and refuses -1 and 1.5', () => {
    expect(() => createPasswordHasher({ maxQueue: 0 })).not.toThrow()
    expect(() => createPasswordHasher({ maxQueue: 1 / 0 })).not.toThrow()
    for (const maxQueue of [-1, 1.5, Number.NaN]) {
      expect(() => createPasswordHasher({ maxQueue })).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG', message: expect.stringContaining('"maxQueue"') }),
      )
    }
  })

  it('rejects bad options with ERR_CONFIG', () => {
    for (const bad of [{ memoryCost: 0 }, { timeCost: 1.5 }, { maxConcurrency: 0 }]) {
      expect(() => createPasswordHasher(bad)).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }))
    }
  })
})

describe('createSemaphore', () => {
  it('runs at most `max` tasks at once and starts the waiters first come first served', async () => {
    const limit = createSemaphore(2)
    const releases: Array<() => void> = []
    const started: number[] = []
    let running = 0
    let peak = 0
    const task = (id: number) =>
      limit(async () => {
        started.push(id)
        running++
        peak = Math.max(peak, running)
        await new Promise<void>((resolve) => releases.push(resolve))
        running--
        return id
      })
    const results = Promise.all([1, 2, 3, 4, 5].map(task))
    const settle = () => new Promise((resolve) => setImmediate(resolve))
    await settle()
    expect(started).toEqual([1, 2])
    releases.shift()!()
    await settle()
    expect(started).toEqual([1, 2, 3])
    while (releases.length > 0) {
      releases.shift()!()
      await settle()
    }
    expect(await results).toEqual([1, 2, 3, 4, 5])
    expect(started).toEqual([1, 2, 3, 4, 5])
    expect(peak).toBe(2)
  })

  it('refuses a task at once with ERR_UNAVAILABLE (retry after 1 s) when maxQueue tasks wait already', async () => {
    const limit = createSemaphore(1, 2)
    let open!: () => void
    const gate = new Promise<void>((resolve) => {
      open = resolve
    })
    const ran: number[] = []
    const tasks = [1, 2, 3].map((n) =>
      limit(async () => {
        ran.push(n)
        await gate
        return n
      }),
    )
    await expect(limit(async () => 4)).rejects.toMatchObject({
      name: 'AuthError',
      code: 'ERR_UNAVAILABLE',
      retryAfter: 1,
    })
    open()
    expect(await Promise.all(tasks)).toEqual([1, 2, 3])
    expect(ran).toEqual([1, 2, 3])
    // the line is free again
    await expect(limit(async () => 5)).resolves.toBe(5)
  })

  it('makes a login flood beyond the line answer 503 with Retry-After, not wait for seconds', async () => {
    const store = createSqliteStore({ filename: ':memory:' })
    const app = createAuthServer({
      issuer: 'https://auth.tokenflow.test',
      audience: 'https://api.tokenflow.test',
      store,
      rateLimit: false,
    })
    try {
      await app.ready()
      // the server's hasher lets 100 wait: 120 logins at once overflow the line on a machine of any size
      // up to 20 cores
      const statuses = await Promise.all(
        Array.from({ length: 120 }, (_, i) =>
          app
            .inject({
              method: 'POST',
              url: '/auth/login',
              payload: { username: `nobody-${i}`, password: 'x' },
            })
            .then((reply) => [reply.statusCode, reply.headers['retry-after']] as const),
        ),
      )
      const refused = statuses.filter(([status]) => status === 503)
      expect(refused.length).toBeGreaterThan(0)
      expect(refused.every(([, retryAfter]) => retryAfter === '1')).toBe(true)
      expect(statuses.every(([status]) => status === 400 || status === 503)).toBe(true)
    } finally {
      await app.close()
      await store.close()
    }
  })

  it('frees the slot when a task throws', async () => {
    const limit = createSemaphore(1)
    await expect(limit(async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom')
    await expect(limit(async () => 'next')).resolves.toBe('next')
  })
})
