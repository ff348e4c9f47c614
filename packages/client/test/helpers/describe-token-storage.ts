import { describe, expect, it } from 'vitest'
import type { TokenSet, TokenStorage } from '../../src/types.js'

/**
 * The contract every `TokenStorage` meets. `make` must return a storage that shares nothing with the
 * ones it returned before (a fresh backend, or the same backend under other keys).
 * What `get` returns always has `refreshToken` as a string or `null`.
 * @example
 * describeTokenStorage('memoryStorage', () => memoryStorage())
 */
export function describeTokenStorage(name: string, make: () => TokenStorage | Promise<TokenStorage>): void {
  describe(`${name} (TokenStorage contract)`, () => {
    const full: TokenSet = {
      accessToken: 'access-1',
      refreshToken: 'refresh-1',
      expiresAt: 1_700_000_000_123,
    }

    it('reads null when nothing was stored', async () => {
      const storage = await make()
      expect(await storage.get()).toBeNull()
    })

    it('reads back what was stored, expiresAt included', async () => {
      const storage = await make()
      await storage.set(full)
      expect(await storage.get()).toEqual(full)
    })

    it('reads refreshToken as null when none was ever stored', async () => {
      const storage = await make()
      await storage.set({ accessToken: 'access-1' })
      expect(await storage.get()).toEqual({ accessToken: 'access-1', refreshToken: null })
    })

    it('keeps the stored refresh token when set gets refreshToken undefined (servers that do not rotate)', async () => {
      const storage = await make()
      await storage.set(full)
      await storage.set({ accessToken: 'access-2', refreshToken: undefined, expiresAt: 1_700_000_900_000 })
      expect(await storage.get()).toEqual({
        accessToken: 'access-2',
        refreshToken: 'refresh-1',
        expiresAt: 1_700_000_900_000,
      })
    })

    it('replaces the refresh token when set gets a new one (rotation)', async () => {
      const storage = await make()
      await storage.set(full)
      await storage.set({ accessToken: 'access-2', refreshToken: 'refresh-2' })
      expect(await storage.get()).toEqual({ accessToken: 'access-2', refreshToken: 'refresh-2' })
    })

    it('removes the refresh token when set gets refreshToken null', async () => {
      const storage = await make()
      await storage.set(full)
      await storage.set({ accessToken: 'access-2', refreshToken: null })
      expect(await storage.get()).toEqual({ accessToken: 'access-2', refreshToken: null })
    })

    it('drops a stale expiresAt when the new token set has none', async () => {
      const storage = await make()
      await storage.set(full)
      await storage.set({ accessToken: 'access-2' })
      const tokens = await storage.get()
      expect(tokens).toEqual({ accessToken: 'access-2', refreshToken: 'refresh-1' })
      expect(tokens?.expiresAt).toBeUndefined()
    })

    it('reads null after clear, and can be written again', async () => {
      const storage = await make()
      await storage.set(full)
      await storage.clear()
      expect(await storage.get()).toBeNull()
      await storage.set({ accessToken: 'access-2', refreshToken: undefined })
      expect(await storage.get()).toEqual({ accessToken: 'access-2', refreshToken: null })
    })

    it('clears an empty storage without failing', async () => {
      const storage = await make()
      await storage.clear()
      expect(await storage.get()).toBeNull()
    })

    it('shares nothing between two instances', async () => {
      const first = await make()
      const second = await make()
      await first.set(full)
      expect(await second.get()).toBeNull()
      await second.set({ accessToken: 'other', refreshToken: 'other-refresh' })
      await second.clear()
      expect(await first.get()).toEqual(full)
    })

    it('hands out copies: mutating a returned token set does not change what is stored', async () => {
      const storage = await make()
      await storage.set(full)
      const read = (await storage.get())!
      read.accessToken = 'mutated'
      read.refreshToken = 'mutated'
      read.expiresAt = 1
      expect(await storage.get()).toEqual(full)
    })

    it('keeps a copy: mutating the object passed to set does not change what is stored', async () => {
      const storage = await make()
      const tokens: TokenSet = { ...full }
      await storage.set(tokens)
      tokens.accessToken = 'mutated'
      tokens.refreshToken = null
      expect(await storage.get()).toEqual(full)
    })
  })
}
