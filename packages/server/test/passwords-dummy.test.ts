import { describe, expect, it, vi } from 'vitest'

// the first Argon2 hash fails, as it can under memory pressure; every later one works
let failures = 1
vi.mock('@node-rs/argon2', async (importOriginal) => {
  const argon2 = await importOriginal<typeof import('@node-rs/argon2')>()
  return {
    ...argon2,
    hash: (...args: Parameters<typeof argon2.hash>) =>
      failures-- > 0 ? Promise.reject(new Error('out of memory')) : argon2.hash(...args),
  }
})

const { createPasswordHasher } = await import('../src/passwords.js')

describe('verifyDummy', () => {
  it('does not keep a failed dummy hash: the next unknown user is verified against a new one', async () => {
    const passwords = createPasswordHasher()
    await expect(passwords.verifyDummy('guess')).rejects.toThrow('out of memory')
    await expect(passwords.verifyDummy('guess')).resolves.toBe(false)
    await expect(passwords.verifyDummy('another guess')).resolves.toBe(false)
  })
})
