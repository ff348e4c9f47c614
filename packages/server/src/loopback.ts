/**
 * True for a loopback host name, the one place plain http is accepted (local development): `localhost`,
 * `127.0.0.1` and `::1`, bracketed as in a URL or not.
 * @example
 * isLoopbackHost(new URL('http://[::1]:3000').hostname) // true
 */
export function isLoopbackHost(hostname: string): boolean {
  return ['localhost', '127.0.0.1', '::1', '[::1]'].includes(hostname)
}
