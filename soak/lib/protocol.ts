/**
 * What the soak and its server processes (`soak/server.ts`) say to each other. Kept apart from the
 * server entry, which starts a server when it is imported.
 */

/** What one instance runs on. `port` 0 picks a free port; a restart passes the port it had. */
export type SoakServerConfig = {
  name: string
  port: number
  /** access-token lifetime in ms */
  accessTokenTtl: number
  /** clock tolerance of the `/api/ping` verifier, in ms */
  clockTolerance: number
  /** the server's `reuseGrace` in ms; the library default when absent */
  reuseGrace?: number
} & ({ kind: 'postgres'; url: string; schema: string; poolSize: number } | { kind: 'sqlite'; file: string })

/** Messages an instance sends to the soak over IPC. */
export type SoakServerMessage =
  | { type: 'ready'; port: number }
  | { type: 'reuseDetected'; sessionId: string }
  | { type: 'poolError'; code: string }

/** The body of `GET /soak/stats`: the issuer's counters since the process started. */
export interface SoakServerStats {
  pid: number
  refreshes: number
  graceReplays: number
  reuseDetected: number
  invalidGrants: number
  logins: number
  /** answers with status 500 or more */
  serverErrors: number
}

/** Every soak user logs in with this password; a custom `authenticate` skips Argon2 (the soak measures refresh). */
export const SOAK_PASSWORD = 'soak-password'
