import type { IncomingMessage } from 'node:http'

/**
 * The `Authorization` header of a request as its client sent it. Node keeps the first of two such
 * headers and drops the other, so a proxy in front that reads the last one would judge another
 * credential than this server does. Sent more than once, the field lines are joined with ", " as
 * RFC 9110 section 5.3 combines them, a value no Bearer token or Basic credential parses as: the
 * request is refused as malformed, as Hono's Node adapter (which joins them) refuses it too.
 * @example
 * authorizationOf(request.raw) // 'Bearer eyJ…', or 'Bearer a, Bearer b' when sent twice
 */
export function authorizationOf(
  request: Pick<IncomingMessage, 'headers'> & { rawHeaders?: string[] | undefined },
): string | undefined {
  const first = request.headers.authorization
  const raw = request.rawHeaders
  if (first === undefined || !raw) return first
  const values: string[] = []
  for (let i = 0; i + 1 < raw.length; i += 2)
    if (raw[i]!.length === 13 && raw[i]!.toLowerCase() === 'authorization') values.push(raw[i + 1]!)
  return values.length > 1 ? values.join(', ') : first
}
