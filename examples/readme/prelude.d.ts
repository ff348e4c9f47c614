// Names the README's examples use without defining them: what the surrounding app would have.
declare const navigation: { navigate(screen: string): void }
declare const issuer: string
declare const audience: string
declare const redisUrl: string
declare const accessToken: string
declare const refreshToken: string
declare const verifier: ReturnType<typeof import('@tokenflow/server/verify').createVerifier>
/** an Express-style app: `(req, res, next)` handlers */
declare const app: {
  get(path: string, ...handlers: Array<(req: any, res: any, next: (error?: unknown) => void) => void>): void
}
