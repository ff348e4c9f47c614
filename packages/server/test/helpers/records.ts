/**
 * Store records for the store tests: a live session of user 'u1' made at `RECORD_NOW`, 30 days to live,
 * with `overrides` on top.
 */
import { newSessionId, newSessionKey } from '../../src/refresh-token.js'
import type { SessionRecord } from '../../src/stores/store.js'

/** the clock the records are made at, epoch ms */
export const RECORD_NOW = 1_700_000_000_000
const DAY = 86_400_000

export function sessionRecord(overrides: Partial<SessionRecord> = {}): SessionRecord {
  return {
    id: newSessionId(),
    userId: 'u1',
    clientId: 'web',
    key: newSessionKey(),
    counter: 0,
    createdAt: RECORD_NOW,
    expiresAt: RECORD_NOW + 30 * DAY,
    lastUsedAt: RECORD_NOW,
    rotatedAt: RECORD_NOW,
    revokedAt: null,
    revokedReason: null,
    userAgent: null,
    ...overrides,
  }
}
