import { randomUUID } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { connectRedis, createRateLimiter } from '../src/rate-limit.js'

describe('createRateLimiter (memory)', () => {
  it('allows `limit` attempts per window, then answers Retry-After seconds until the window resets', async () => {
    const clock = { now: 1_000_000 }
    const limiter = createRateLimiter({ limit: 3, window: 60_000, now: () => clock.now })
    for (let i = 0; i < 3; i++) expect(await limiter.consume('ada')).toEqual({ ok: true, retryAfter: 0 })
    expect(await limiter.consume('ada')).toEqual({ ok: false, retryAfter: 60 })
    clock.now += 59_001
    expect(await limiter.consume('ada')).toEqual({ ok: false, retryAfter: 1 })
    // another key has its own budget
    expect(await limiter.consume('bob')).toEqual({ ok: true, retryAfter: 0 })
    clock.now += 999
    expect(await limiter.consume('ada')).toEqual({ ok: true, retryAfter: 0 })
  })

  it('keeps at most maxKeys windows, dropping the expired and then the oldest', async () => {
    const clock = { now: 0 }
    const limiter = createRateLimiter({ limit: 1, window: 10_000, maxKeys: 2, now: () => clock.now })
    await limiter.consume('a')
    await limiter.consume('b')
    expect((await limiter.consume('a')).ok).toBe(false)
    // a third key evicts the oldest window ("a"), so "a" starts over
    await limiter.consume('c')
    expect((await limiter.consume('a')).ok).toBe(true)
    expect((await limiter.consume('c')).ok).toBe(false)
  })

  it('rejects bad options with ERR_CONFIG', () => {
    for (const bad of [
      { limit: 0 },
      { limit: 1, window: 10 },
      { limit: 1, maxKeys: 0 },
      { limit: 1, redisUrl: 'http://x' },
    ]) {
      expect(() => createRateLimiter(bad)).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }))
    }
  })
})

// .ci/run sets REDIS_URL to the machine's server
describe.skipIf(!process.env.REDIS_URL)('createRateLimiter (redis)', () => {
  const redisUrl = process.env.REDIS_URL!

  it('counts in Redis, shared by two limiters as by two server instances', async () => {
    const prefix = `tokenflow:test:${randomUUID()}:`
    const one = createRateLimiter({ limit: 2, window: 60_000, redisUrl, prefix })
    const two = createRateLimiter({ limit: 2, window: 60_000, redisUrl, prefix })
    try {
      expect(await one.consume('ada')).toEqual({ ok: true, retryAfter: 0 })
      expect(await two.consume('ada')).toEqual({ ok: true, retryAfter: 0 })
      const third = await one.consume('ada')
      expect(third.ok).toBe(false)
      expect(third.retryAfter).toBeGreaterThanOrEqual(59)
      expect(third.retryAfter).toBeLessThanOrEqual(60)
      expect(await two.consume('bob')).toEqual({ ok: true, retryAfter: 0 })
    } finally {
      await one.close()
      await two.close()
    }
  })

  it('keeps a fixed window: attempts do not push the expiry back', async () => {
    const prefix = `tokenflow:test:${randomUUID()}:`
    const redis = await connectRedis(redisUrl)
    const limiter = createRateLimiter({ limit: 1, window: 1000, redis, prefix })
    try {
      expect((await limiter.consume('ada')).ok).toBe(true)
      await new Promise((resolve) => setTimeout(resolve, 600))
      expect((await limiter.consume('ada')).ok).toBe(false)
      await new Promise((resolve) => setTimeout(resolve, 600))
      // 1.2 s after the first attempt the window of 1 s is over, although the last attempt was 0.6 s ago
      expect((await limiter.consume('ada')).ok).toBe(true)
    } finally {
      await limiter.close()
      await redis.quit()
    }
  })
})
