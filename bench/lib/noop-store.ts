/**
 * The store of the ceiling: a `TokenStore` that keeps everything in process memory and does no
 * I/O, so a refresh against it costs only HTTP, validation and signing.
 */
import type { KeyRecord, SessionRecord, TokenStore, UserRecord } from '@tokenflow/server'

/**
 * Creates an in-memory store with the rotation compare-and-swap of the real ones and no I/O.
 * @example
 * const store = createNoopStore(sessions)
 * const app = createAuthServer({ issuer, audience, store })
 */
export function createNoopStore(sessions: Iterable<SessionRecord> = []): TokenStore {
  const rows = new Map<string, SessionRecord>()
  for (const session of sessions) rows.set(session.id, session)
  const users = new Map<string, UserRecord>()
  const keys: KeyRecord[] = []

  return {
    async migrate() {},
    async close() {},

    async createSession(session) {
      rows.set(session.id, session)
    },
    async getSession(id) {
      return rows.get(id) ?? null
    },
    async rotateSession(id, expectedCounter, now) {
      const row = rows.get(id)
      // the same conditions as the SQL compare-and-swap, so the ceiling validates what the stores validate
      if (!row || row.counter !== expectedCounter || row.revokedAt !== null || row.expiresAt <= now)
        return null
      const rotated = { ...row, counter: row.counter + 1, rotatedAt: now, lastUsedAt: now }
      rows.set(id, rotated)
      return rotated
    },
    async revokeSession(id, now, reason, expectedLastUsedAt) {
      const row = rows.get(id)
      if (!row || row.revokedAt !== null) return false
      if (expectedLastUsedAt !== undefined && row.lastUsedAt !== expectedLastUsedAt) return false
      rows.set(id, { ...row, revokedAt: now, revokedReason: reason })
      return true
    },
    async revokeUserSessions(userId, now, reason, exceptId) {
      let count = 0
      for (const row of rows.values()) {
        if (row.userId === userId && row.id !== exceptId && row.revokedAt === null && row.expiresAt > now) {
          rows.set(row.id, { ...row, revokedAt: now, revokedReason: reason })
          count++
        }
      }
      return count
    },
    async listSessions(userId, now) {
      return [...rows.values()]
        .filter((row) => row.userId === userId && row.revokedAt === null && row.expiresAt > now)
        .sort((a, b) => b.createdAt - a.createdAt)
    },
    async deleteExpiredSessions(before) {
      let count = 0
      for (const row of rows.values()) {
        if (row.expiresAt < before || (row.revokedAt !== null && row.revokedAt < before)) {
          rows.delete(row.id)
          count++
        }
      }
      return count
    },

    async createUser(user) {
      users.set(user.id, user)
    },
    async getUserByName(username) {
      return [...users.values()].find((user) => user.username === username) ?? null
    },
    async getUser(id) {
      return users.get(id) ?? null
    },
    async listUsers() {
      return [...users.values()]
    },
    async setPasswordHash(userId, passwordHash, changedAt) {
      const user = users.get(userId)
      if (user) users.set(userId, { ...user, passwordHash, passwordChangedAt: changedAt })
    },
    async deleteUser(username) {
      const user = [...users.values()].find((candidate) => candidate.username === username)
      if (!user) return false
      users.delete(user.id)
      return true
    },

    async listKeys() {
      return [...keys].sort((a, b) => b.createdAt - a.createdAt)
    },
    async insertKey(key) {
      keys.push(key)
    },
    async insertFirstKey(key) {
      if (keys.some((candidate) => candidate.retiredAt === null)) return false
      keys.push(key)
      return true
    },
    async retireKey(kid, retiredAt) {
      const key = keys.find((candidate) => candidate.kid === kid)
      if (key) key.retiredAt ??= retiredAt
    },
  }
}
