/** A request as `authorizationOf` reads it: Node's `IncomingMessage`, or what a framework hands over of it. */
export interface RawRequest {
  rawHeaders?: readonly string[] | undefined
  socket?: unknown
}

/**
 * How many raw header entries (names and values) Node's HTTP/1 parser keeps before it drops the rest, from
 * `rawHeaders` too: twice its server's `maxHeadersCount` (1,000 fields by default; 0 or less keeps them all). It
 * stops a few entries past that, as it hands them over in batches. Node reads the limit when a connection opens:
 * set it before `listen()`.
 */
function keptEntries(request: RawRequest): number {
  const server = (request.socket as { server?: { maxHeadersCount?: unknown } } | null | undefined)?.server
  const max = server?.maxHeadersCount
  // as Node reads it: a number only (anything else keeps the default), as an int32, doubled; 0 or less: no limit
  const entries = typeof max === 'number' ? max << 1 : 2_000
  return entries > 0 ? entries : Number.POSITIVE_INFINITY
}

/**
 * The `Authorization` header of a request as its client sent it. Node keeps the first of two such
 * headers and drops the other, so a proxy in front that reads the last one would judge another
 * credential than this server does. Sent more than once, the field lines are joined with ", " as
 * RFC 9110 section 5.3 combines them, a value no Bearer token or Basic credential parses as: the
 * request is refused as malformed, as Hono's Node adapter (which joins them) refuses it too. So is one
 * whose header list reached the count Node keeps, which may have had a second line past the cut.
 * `value` is the header as the framework has it: one that a hook of the app set (it is none of the lines
 * the client sent) is kept.
 * @example
 * authorizationOf(request.headers.authorization, request.raw) // 'Bearer a, Bearer b' when sent twice
 */
export function authorizationOf(value: string | undefined, request: RawRequest): string | undefined {
  const rawHeaders = request.rawHeaders
  if (value === undefined || !rawHeaders) return value
  const lines: string[] = []
  for (let i = 0; i + 1 < rawHeaders.length; i += 2)
    if (rawHeaders[i]!.length === 13 && rawHeaders[i]!.toLowerCase() === 'authorization')
      lines.push(rawHeaders[i + 1]!)
  if (!lines.includes(value)) return value
  // cut short: a line past the cut stands for the one that may have been there
  if (rawHeaders.length >= keptEntries(request)) lines.push('')
  return lines.length > 1 ? lines.join(', ') : value
}
