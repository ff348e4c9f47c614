/**
 * The `Authorization` header of a request as its client sent it. Node keeps the first of two such
 * headers and drops the other, so a proxy in front that reads the last one would judge another
 * credential than this server does. Sent more than once, the field lines are joined with ", " as
 * RFC 9110 section 5.3 combines them, a value no Bearer token or Basic credential parses as: the
 * request is refused as malformed, as Hono's Node adapter (which joins them) refuses it too.
 * `value` is the header as the framework has it: when a hook has set its own (it is no longer the
 * first line the client sent), that one is kept.
 * @example
 * authorizationOf(request.headers.authorization, request.raw.rawHeaders) // 'Bearer a, Bearer b' when sent twice
 */
export function authorizationOf(
  value: string | undefined,
  rawHeaders: readonly string[] | undefined,
): string | undefined {
  if (value === undefined || !rawHeaders) return value
  const lines: string[] = []
  for (let i = 0; i + 1 < rawHeaders.length; i += 2)
    if (rawHeaders[i]!.length === 13 && rawHeaders[i]!.toLowerCase() === 'authorization')
      lines.push(rawHeaders[i + 1]!)
  return lines.length > 1 && lines[0] === value ? lines.join(', ') : value
}
