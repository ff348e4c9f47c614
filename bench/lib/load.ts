/**
 * Load generators of the server benchmark: autocannon (closed loop, for throughput) with every
 * connection walking its own refresh-token chains, and a paced open-loop refresh load (for latency
 * at a fixed rate). Each returns a `LoadSample`; samples of several rounds merge with `mergeSamples`.
 */
import { Agent, request } from 'node:http'
import { createRequire } from 'node:module'
import type { Chain } from './sessions.js'

/** What one load run measured. */
export interface LoadSample {
  /** answers with status 200 */
  ok: number
  /** every other answer, and requests that got none (timeouts, resets) */
  errors: number
  /** answers by status code */
  statuses: Record<string, number>
  seconds: number
  /** response times in ms, one per answer */
  latencies: number[]
}

/** Throughput and latency of a sample. */
export interface Figures {
  /** answers with status 200 per second */
  rps: number
  /** median response time, ms */
  p50: number
  /** 99th percentile response time, ms */
  p99: number
}

// autocannon ships no types: the part of its API used here
interface AutocannonRequest {
  method?: string
  path?: string
  headers?: Record<string, string>
  body?: string
  setupRequest?: (request: AutocannonRequest, context: object) => AutocannonRequest
  onResponse?: (status: number, body: string, context: object) => void
}
interface AutocannonClient {
  setRequests(requests: AutocannonRequest[]): void
  on(event: 'response', listener: (status: number, bytes: number, responseTime: number) => void): void
}
interface AutocannonOptions extends AutocannonRequest {
  url: string | string[]
  connections: number
  duration: number
  timeout?: number
  setupClient?: (client: AutocannonClient) => void
  requests?: AutocannonRequest[]
}
interface AutocannonResult {
  duration: number
  errors: number
  timeouts: number
}
type Autocannon = (
  options: AutocannonOptions,
  callback: (error: Error | null, result: AutocannonResult) => void,
) => unknown

const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon

function runAutocannon(options: AutocannonOptions): Promise<AutocannonResult> {
  return new Promise((resolve, reject) => {
    autocannon(options, (error, result) => (error ? reject(error) : resolve(result)))
  })
}

const count = (statuses: Record<string, number>, status: number | string) => {
  statuses[status] = (statuses[status] ?? 0) + 1
}

/**
 * Runs autocannon with one fixed request, counting 200s as successes.
 * @example
 * const sample = await fixedLoad({ urls: [url], path: '/jose', connections: 50, duration: 4 })
 */
export async function fixedLoad({
  urls,
  connections,
  duration,
  ...request
}: {
  urls: string[]
  connections: number
  duration: number
} & Omit<AutocannonRequest, 'setupRequest' | 'onResponse'>): Promise<LoadSample> {
  const sample: LoadSample = { ok: 0, errors: 0, statuses: {}, seconds: 0, latencies: [] }
  const result = await runAutocannon({
    url: urls,
    connections,
    duration,
    // the path is honoured only per request, not at the top level
    requests: [request],
    setupClient(client) {
      client.on('response', (status, _bytes, responseTime) => {
        count(sample.statuses, status)
        if (status === 200) sample.ok++
        else sample.errors++
        sample.latencies.push(responseTime)
      })
    },
  })
  sample.seconds = result.duration
  sample.errors += result.errors
  return sample
}

/**
 * Runs autocannon against `POST /refresh/token`. Connection i walks the chains whose index is i
 * modulo `connections`, round robin, so every request presents the current token of its session
 * and no two connections share a session. A refused refresh kills its chain and counts as an error.
 * Afterwards, the chains whose request was cut off by the end of the run are settled (see `settle`).
 * @example
 * const sample = await refreshLoad({ urls: [url], chains, connections: 50, duration: 4 })
 */
export async function refreshLoad({
  urls,
  chains,
  connections,
  duration,
}: {
  urls: string[]
  chains: Chain[]
  connections: number
  duration: number
}): Promise<LoadSample> {
  const sample: LoadSample = { ok: 0, errors: 0, statuses: {}, seconds: 0, latencies: [] }
  const inFlight: (Chain | undefined)[] = []
  const headers = { 'content-type': 'application/json' }
  const result = await runAutocannon({
    url: urls,
    connections,
    duration,
    setupClient(client) {
      const index = inFlight.length
      inFlight.push(undefined)
      const own = chains.filter((_, i) => i % connections === index)
      let cursor = 0
      const nextChain = () => {
        for (let tries = 0; tries < own.length; tries++) {
          const chain = own[cursor++ % own.length]!
          if (!chain.dead) return chain
        }
        // every chain of this connection was refused: keep sending (and counting errors) rather than stall
        return own[cursor++ % own.length]!
      }
      client.setRequests([
        {
          method: 'POST',
          path: '/refresh/token',
          headers,
          setupRequest(request) {
            const chain = nextChain()
            inFlight[index] = chain
            return { ...request, body: JSON.stringify({ refreshToken: chain.token }) }
          },
          onResponse(status, body) {
            const chain = inFlight[index]
            inFlight[index] = undefined
            count(sample.statuses, status)
            if (!chain) return
            if (status === 200) {
              chain.token = (JSON.parse(body) as { refreshToken: string }).refreshToken
              chain.counter++
              sample.ok++
            } else {
              chain.dead = true
              sample.errors++
            }
          },
        },
      ])
      client.on('response', (_status, _bytes, responseTime) => sample.latencies.push(responseTime))
    },
  })
  sample.seconds = result.duration
  sample.errors += result.errors
  await settle(
    urls[0]!,
    inFlight.filter((chain): chain is Chain => chain !== undefined),
  )
  return sample
}

/**
 * A request cut off when autocannon stops may or may not have rotated its session. Presenting the
 * same token again at once is a retry within `reuseGrace`: the server answers the current token
 * either way, so the chain is certain again instead of tripping reuse detection in the next round.
 */
async function settle(url: string, chains: Chain[]): Promise<void> {
  await Promise.all(
    chains.map(async (chain) => {
      try {
        const response = await fetch(`${url}/refresh/token`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ refreshToken: chain.token }),
          signal: AbortSignal.timeout(10_000),
        })
        if (!response.ok) throw new Error(`status ${response.status}`)
        chain.token = ((await response.json()) as { refreshToken: string }).refreshToken
        chain.counter++
      } catch {
        chain.dead = true
      }
    }),
  )
}

/**
 * Sends refreshes at a steady `rate` per second for `duration` seconds, whatever the answers take
 * (an open loop), and times each from when it was due, so a stalled server cannot hide its delay
 * (coordinated omission). A request due while every chain is busy is counted in `late` and sent
 * when one frees up.
 * @example
 * const sample = await pacedRefreshLoad({ url, chains, rate: 1000, duration: 4 })
 */
export async function pacedRefreshLoad({
  url,
  chains,
  rate,
  duration,
}: {
  url: string
  chains: Chain[]
  rate: number
  duration: number
}): Promise<LoadSample & { late: number }> {
  const { hostname, port } = new URL(url)
  const agent = new Agent({ keepAlive: true, maxSockets: 256 })
  const sample: LoadSample & { late: number } = {
    ok: 0,
    errors: 0,
    statuses: {},
    seconds: 0,
    latencies: [],
    late: 0,
  }
  const idle = chains.filter((chain) => !chain.dead)
  const waiting: number[] = []
  let pending = 0
  let drained: (() => void) | undefined

  const send = (chain: Chain, due: number) => {
    pending++
    const body = JSON.stringify({ refreshToken: chain.token })
    let finished = false
    const finish = (status: number | 'error', text: string) => {
      if (finished) return
      finished = true
      sample.latencies.push(performance.now() - due)
      count(sample.statuses, status)
      if (status === 200) {
        chain.token = (JSON.parse(text) as { refreshToken: string }).refreshToken
        chain.counter++
        sample.ok++
      } else {
        chain.dead = true
        sample.errors++
      }
      if (!chain.dead) idle.push(chain)
      const next = waiting.shift()
      const free = next === undefined ? undefined : idle.shift()
      if (next !== undefined && free) send(free, next)
      if (--pending === 0) drained?.()
    }
    const outgoing = request(
      {
        agent,
        hostname,
        port,
        method: 'POST',
        path: '/refresh/token',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (response) => {
        let text = ''
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => {
          text += chunk
        })
        response.on('end', () => finish(response.statusCode ?? 0, text))
      },
    )
    outgoing.setTimeout(10_000, () => outgoing.destroy(new Error('timed out')))
    outgoing.on('error', () => finish('error', ''))
    outgoing.end(body)
  }

  const start = performance.now()
  const total = Math.round(rate * duration)
  let sent = 0
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now()
      // every request due by now, each with the time it was due
      while (sent < total && start + (sent * 1000) / rate <= now) {
        const due = start + (sent * 1000) / rate
        sent++
        const chain = idle.shift()
        if (chain) send(chain, due)
        else {
          sample.late++
          waiting.push(due)
        }
      }
      if (sent < total) setTimeout(tick, 1)
      else resolve()
    }
    tick()
  })
  if (pending > 0) await new Promise<void>((resolve) => (drained = resolve))
  sample.seconds = (performance.now() - start) / 1000
  agent.destroy()
  return sample
}

/**
 * Concatenates the samples of several rounds.
 * @example
 * const all = mergeSamples([round1, round2])
 */
export function mergeSamples(samples: readonly LoadSample[]): LoadSample {
  const merged: LoadSample = { ok: 0, errors: 0, statuses: {}, seconds: 0, latencies: [] }
  for (const sample of samples) {
    merged.ok += sample.ok
    merged.errors += sample.errors
    merged.seconds += sample.seconds
    for (const [status, n] of Object.entries(sample.statuses)) {
      merged.statuses[status] = (merged.statuses[status] ?? 0) + n
    }
    for (const latency of sample.latencies) merged.latencies.push(latency)
  }
  return merged
}

/**
 * Throughput and latency percentiles of a sample, rounded for the result file.
 * @example
 * const { rps, p50, p99 } = figures(sample)
 */
export function figures(sample: LoadSample): Figures {
  const sorted = Float64Array.from(sample.latencies).sort()
  return {
    rps: Math.round(sample.ok / sample.seconds),
    p50: round2(percentile(sorted, 0.5)),
    p99: round2(percentile(sorted, 0.99)),
  }
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return Number.NaN
  // nearest rank
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!
}

function round2(value: number): number {
  return Math.round(value * 100) / 100
}
