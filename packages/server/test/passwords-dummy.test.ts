import { describe, expect, it, vi } from 'vitest'

// the first Argon2 hash fails, as it can under memory pressure; every later one works
let failures = 1
/** the PHC strings Argon2 verified against, in order */
const verified: string[] = []
vi.mock('@node-rs/argon2', async (importOriginal) => {
  const argon2 = await importOriginal<typeof import('@node-rs/argon2')>()
  return {
    ...argon2,
    hash: (...args: Parameters<typeof argon2.hash>) =>
      failures-- > 0 ? Promise.reject(new Error('out of memory')) : argon2.hash(...args),
    verify: (...args: Parameters<typeof argon2.verify>) => {
      verified.push(String(args[0]))
      return argon2.verify(...args)
    },
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

describe('a stored hash that is not Argon2', () => {
  it('bug: was refused at once, about 50 times faster than a real check, telling such a row exists; now it costs one real verification', async () => {
    const passwords = createPasswordHasher()
    // an imported hash, or the unusable one of a row made for a custom `authenticate`
    for (const stored of ['!', '$2b$10$abcdefghijklmnopqrstuu5Zy1CUpgJ6sbaSw1R6bTzF2P6bF6Qq']) {
      verified.length = 0
      await expect(passwords.verify(stored, 'guess')).resolves.toBe(false)
      // one verification, against the dummy Argon2id hash: it costs what a real check costs, in one turn of
      // the line (a second turn took twice as long under load)
      expect(verified).toHaveLength(1)
      expect(verified[0]).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/)
    }
    // a real hash: one verification, no dummy
    const real = await passwords.hash('secret')
    verified.length = 0
    await expect(passwords.verify(real, 'guess')).resolves.toBe(false)
    expect(verified).toEqual([real])
  })
})
