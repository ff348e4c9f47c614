/**
 * One column of the page: a client's counters and its live timeline, one row per request. The clients
 * report what happens to each request (queued, sent, answered, settled) through the interceptors and the
 * wrapping fetch in clients.ts; this file only keeps the record and draws it.
 *
 * Drawing is cheap on purpose: a busy page would delay the very requests it shows. Every bar is placed
 * by CSS from its start and duration in ms (`--s`, `--d`) over the column's time scale (`--scale`), so a
 * new scale is one style change, a row is rebuilt only when something happened to it, and a frame only
 * stretches the bars still growing.
 */

/** A request counts as hung when it has had no answer this long (ms) after it was first sent. */
export const HUNG_AFTER = 5_000

type SegmentKind = 'queued' | 'waiting' | 'flight' | 'retry' | 'replay'

interface Segment {
  kind: SegmentKind
  start: number
  end?: number
  /** a wait after a 401: the index of its "waiting" step, dropped when no refresh ran meanwhile */
  step?: number
}

interface Row {
  id: number
  via: 'axios' | 'fetch'
  plannedAt: number
  segments: Segment[]
  /** 401 answers, at their time */
  unauthorizedAt: number[]
  /** sends beyond the first try and one retry, or after the request had its answer */
  replayedAt: number[]
  /** what happened, in words, in order */
  steps: string[]
  sends: number
  firstSentAt?: number
  outcome?: 'ok' | 'failed'
  reason?: string
  settledAt?: number
  hung: boolean
  /** bumped by every change; the row is rebuilt when it differs from what was drawn */
  version: number
  drawn?: {
    version: number
    item: HTMLLIElement
    track: HTMLElement
    outcome: HTMLElement
    path: HTMLElement
    /** the bar of the open segment, or of the hung stretch: stretched every frame */
    growing?: { element: HTMLElement; from: number } | undefined
  }
}

/** A refresh this tab saw: tokenflow's events, or the recipe's POST /refresh/token going by. */
interface RefreshBand {
  start: number
  end?: number
  result?: 'ok' | 'failed' | 'otherTab'
}

/**
 * The counters of one client, for this tab since the last login; `refreshes` and `reuseDetected` come from
 * the server and count the whole session (every tab).
 * @example
 * const { ok, failed }: Counters = column.counters
 */
export interface Counters {
  requests: number
  ok: number
  unauthorized: number
  refreshes: number
  reuseDetected: number
  failed: number
  hung: number
  replayed: number
}

const COUNTER_LABELS: Array<[keyof Counters, string, string?]> = [
  ['requests', 'requests'],
  ['ok', 'ok'],
  ['unauthorized', '401s'],
  [
    'refreshes',
    'refreshes',
    'counted by the server for this session, in every tab, since the server started',
  ],
  [
    'reuseDetected',
    'reuse detections',
    'counted by the server for this session, in every tab, since the server started',
  ],
  ['failed', 'failures'],
  ['hung', 'hung'],
  ['replayed', 'replayed'],
]

const zero = (): Counters => ({
  requests: 0,
  ok: 0,
  unauthorized: 0,
  refreshes: 0,
  reuseDetected: 0,
  failed: 0,
  hung: 0,
  replayed: 0,
})

const STEP_LABEL: Record<SegmentKind, string> = {
  queued: 'queued',
  waiting: 'waiting',
  flight: 'sent',
  retry: 'retried',
  replay: 'replayed',
}

const seconds = (ms: number) => `${(ms / 1_000).toFixed(1)} s`

/** A timeline label relative to the expiry T: "T−1 s", "T", "T+0.5 s". */
function relative(ms: number): string {
  if (Math.abs(ms) < 1) return 'T'
  return `T${ms < 0 ? '−' : '+'}${+(Math.abs(ms) / 1_000).toFixed(2)} s`
}

/** A bar, mark or label placed by CSS at `from` (ms after the scale's start), `duration` ms wide. */
function place(className: string, from: number, duration?: number): HTMLElement {
  const element = document.createElement('span')
  element.className = className
  element.style.setProperty('--s', String(Math.round(from)))
  if (duration !== undefined) element.style.setProperty('--d', String(Math.max(0, Math.round(duration))))
  return element
}

/**
 * One client's column: counters, verdict and timeline, fed by the client's reports.
 * @example
 * const column = new Column(document.getElementById('col-tokenflow')!, () => manager.status === 'refreshing')
 * const [id] = column.startBurst([{ at: Date.now(), via: 'axios' }], undefined)
 */
export class Column {
  readonly counters: Counters = zero()
  private rows = new Map<number, Row>()
  private shown: Row[] = []
  private bands: RefreshBand[] = []
  private nextId = 1
  private burst: { start: number; expiry: number | undefined } | undefined
  private dirty = true
  private scale = 0
  private readonly counterValues = new Map<keyof Counters, HTMLElement>()
  private readonly timeline: HTMLElement
  private readonly list: HTMLOListElement
  private readonly axis: HTMLElement
  private readonly empty: HTMLElement
  private readonly verdict: HTMLElement
  private readonly caption: HTMLElement
  private readonly overlay: HTMLElement

  constructor(
    readonly root: HTMLElement,
    /** whether a request queued now will wait for a refresh before it is sent */
    private readonly refreshing: () => boolean,
  ) {
    const counters = root.querySelector<HTMLElement>('[data-counters]')!
    for (const [key, label, note] of COUNTER_LABELS) {
      const item = document.createElement('div')
      item.className = 'counter'
      item.dataset.counter = key
      const term = document.createElement('dt')
      term.textContent = label
      if (note) term.title = note
      const value = document.createElement('dd')
      value.textContent = '0'
      item.append(term, value)
      counters.append(item)
      this.counterValues.set(key, value)
    }
    this.timeline = root.querySelector('[data-timeline]')!
    this.list = root.querySelector('[data-rows]')!
    this.axis = root.querySelector('[data-axis]')!
    this.empty = root.querySelector('[data-empty]')!
    this.verdict = root.querySelector('[data-verdict]')!
    this.caption = root.querySelector('[data-caption]')!
    this.overlay = document.createElement('div')
    this.overlay.className = 'overlay'
    this.overlay.setAttribute('aria-hidden', 'true')
    this.timeline.append(this.overlay)
  }

  /** A new session: forget every count and row. */
  reset(): void {
    Object.assign(this.counters, zero())
    this.rows.clear()
    this.shown = []
    this.bands = []
    this.burst = undefined
    this.caption.textContent = ''
    this.list.replaceChildren()
    this.dirty = true
  }

  /** Adds a burst of rows, replacing the ones on screen. Returns the ids, in order. */
  startBurst(plans: Array<{ at: number; via: 'axios' | 'fetch' }>, expiry: number | undefined): number[] {
    const start = Math.min(...plans.map((plan) => plan.at)) - 100
    this.burst = { start, expiry }
    this.shown = plans.map(({ at, via }) => {
      const row: Row = {
        id: this.nextId++,
        via,
        plannedAt: at,
        segments: [],
        unauthorizedAt: [],
        replayedAt: [],
        steps: [],
        sends: 0,
        hung: false,
        version: 0,
      }
      this.rows.set(row.id, row)
      return row
    })
    this.counters.requests += plans.length
    const vias = [...new Set(plans.map((plan) => plan.via))].join(' and ')
    this.caption.textContent = `${plans.length} ${plans.length === 1 ? 'request' : 'requests'} through ${vias}, ${
      expiry === undefined ? 'all sent at once' : 'sent across the expiry T of the access token'
    }`
    this.list.replaceChildren(...this.shown.map((row) => this.rowElement(row)))
    this.dirty = true
    return this.shown.map((row) => row.id)
  }

  /** How many times request `id` has been sent, this one included. */
  sends(id: number): number {
    const row = this.rows.get(id)
    return row ? row.sends + row.replayedAt.length : 0
  }

  // -- what the clients report --------------------------------------------------------------------

  /** The request entered the client (before any token is attached). */
  queued(id: number, now = Date.now()): void {
    const row = this.rows.get(id)
    // a replay of an answered request, or the retry after a 401 (it is still waiting for the refresh)
    if (!row || row.outcome || open(row)) return
    if (row.sends === 0 && row.steps.length === 0) row.steps.push('queued')
    const kind: SegmentKind = this.refreshing() ? 'waiting' : 'queued'
    if (kind === 'waiting') row.steps.push(STEP_LABEL.waiting)
    row.segments.push({ kind, start: now })
    this.changed(row)
  }

  /** The request leaves for the server. */
  sent(id: number, now = Date.now()): void {
    const row = this.rows.get(id)
    if (!row) return
    const waited = open(row)
    close(row, now)
    if (waited?.step !== undefined && !this.refreshedDuring(waited.start, now)) {
      // the 401 was for a token already replaced: retried with the current one, no refresh to wait for
      row.steps.splice(waited.step, 1)
      waited.kind = 'queued'
    }
    if (row.outcome || row.sends >= 2) {
      // a send beyond the one retry, or after the caller has its answer: a replay (the recipe calls every
      // subscriber again at each refresh, whether its request was retried already or not)
      if (row.replayedAt.length === 0) this.counters.replayed++
      row.replayedAt.push(now)
      row.segments.push({ kind: 'replay', start: now })
    } else {
      row.sends++
      const kind: SegmentKind = row.sends === 1 ? 'flight' : 'retry'
      row.firstSentAt ??= now
      row.steps.push(STEP_LABEL[kind])
      row.segments.push({ kind, start: now })
    }
    this.changed(row)
  }

  /** An answer came back (status 0: no response). */
  answered(id: number, status: number, now = Date.now()): void {
    const row = this.rows.get(id)
    if (!row) return
    close(row, now)
    if (status === 401) {
      this.counters.unauthorized++
      row.unauthorizedAt.push(now)
      if (!row.outcome) {
        row.steps.push('401', STEP_LABEL.waiting)
        row.segments.push({ kind: 'waiting', start: now, step: row.steps.length - 1 })
      }
    }
    this.changed(row)
  }

  /** The caller got its result. */
  settle(id: number, ok: boolean, reason?: string, now = Date.now()): void {
    const row = this.rows.get(id)
    if (!row || row.outcome) return
    close(row, now)
    row.outcome = ok ? 'ok' : 'failed'
    if (reason !== undefined) row.reason = reason
    row.settledAt = now
    row.steps.push(ok ? 'ok' : 'failed')
    if (ok) this.counters.ok++
    else this.counters.failed++
    if (row.hung) {
      row.hung = false
      this.counters.hung--
    }
    this.changed(row)
  }

  /** A refresh began (tokenflow's event, or the recipe's refresh call leaving). */
  refreshStarted(now = Date.now()): void {
    this.bands.push({ start: now })
    // requests queued before it began wait for it now
    for (const row of this.rows.values()) {
      const last = open(row)
      if (last?.kind === 'queued') {
        last.end = now
        row.segments.push({ kind: 'waiting', start: now })
        row.steps.push(STEP_LABEL.waiting)
        this.changed(row)
      }
    }
    this.dirty = true
  }

  refreshEnded(result: 'ok' | 'failed' | 'otherTab', now = Date.now()): void {
    const band = this.bands.findLast((entry) => entry.end === undefined)
    if (!band) return
    band.end = now
    band.result = result
    this.dirty = true
  }

  /** The server's counts for this session. */
  serverCounts(refreshes: number, reuseDetected: number): void {
    if (this.counters.refreshes === refreshes && this.counters.reuseDetected === reuseDetected) return
    this.counters.refreshes = refreshes
    this.counters.reuseDetected = reuseDetected
    this.dirty = true
  }

  private changed(row: Row): void {
    row.version++
    this.dirty = true
  }

  private refreshedDuring(from: number, to: number): boolean {
    return this.bands.some((band) => band.start <= to && (band.end ?? to) >= from)
  }

  // -- drawing ------------------------------------------------------------------------------------

  /** Redraws what changed; cheap when nothing did. */
  render(now = Date.now()): void {
    for (const row of this.rows.values()) {
      if (!row.outcome && !row.hung && row.firstSentAt !== undefined && now - row.firstSentAt >= HUNG_AFTER) {
        row.hung = true
        row.steps.push('hung')
        this.counters.hung++
        this.changed(row)
      }
    }
    // rows on their way grow; scheduled ones count down in the verdict
    const moving = this.shown.some((row) => !row.outcome && !row.hung)
    if (!this.dirty && !moving) return
    this.dirty = false

    for (const [key, element] of this.counterValues) {
      const value = String(this.counters[key])
      if (element.textContent !== value) element.textContent = value
      element.parentElement!.toggleAttribute('data-zero', value === '0')
    }
    this.empty.hidden = this.shown.length > 0
    this.renderVerdict(now)
    if (!this.burst || this.shown.length === 0) {
      this.axis.replaceChildren()
      this.overlay.replaceChildren()
      return
    }

    const { start, expiry } = this.burst
    const scale = Math.max(2_500, this.latest(now) - start) + 150
    if (scale !== this.scale) {
      this.scale = scale
      this.timeline.style.setProperty('--scale', String(Math.round(scale)))
    }
    for (const row of this.shown) this.renderRow(row, start, now)

    // the expiry, the refreshes and the ticks, on the same scale as the tracks
    const marks: HTMLElement[] = []
    const labels: HTMLElement[] = []
    const origin = expiry ?? start + 100
    // at least ~70 px between labels, whatever the width of the track
    const pixels = this.shown[0]?.drawn?.track.clientWidth || 300
    const step =
      [250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000].find(
        (candidate) => (candidate / scale) * pixels >= 70,
      ) ?? 120_000
    for (let at = origin + Math.ceil((start - origin) / step) * step; at <= start + scale; at += step) {
      const tick = place('tick', at - start)
      tick.textContent =
        expiry === undefined ? `${+((at - origin) / 1_000).toFixed(2)} s` : relative(at - origin)
      labels.push(tick)
    }
    if (expiry !== undefined && expiry >= start) marks.push(place('expiry-line', expiry - start))
    // one label per cluster of refreshes closer than ~90 px: "refresh ×3" instead of three on top of each other,
    // and "refresh ×2, 1 failed" when only some of them failed
    let cluster: { at: number; count: number; failed: number; result: string; label: HTMLElement } | undefined
    for (const band of this.bands) {
      const to = band.end ?? now
      if (to < start) continue
      const from = Math.max(band.start, start)
      const result = band.result ?? 'running'
      marks.push(place(`band ${result}`, from - start, to - from))
      if (cluster && ((from - cluster.at) / scale) * pixels < 90) {
        cluster.count++
        if (result === 'failed') cluster.result = 'failed'
      } else {
        cluster = { at: from, count: 1, failed: 0, result, label: place('band-label', from - start) }
        labels.push(cluster.label)
      }
      if (result === 'failed') cluster.failed++
      const name =
        cluster.result === 'otherTab'
          ? 'refresh (other tab)'
          : cluster.result === 'failed' && cluster.failed === cluster.count
            ? 'refresh failed'
            : 'refresh'
      const some = cluster.failed > 0 && cluster.failed < cluster.count ? `, ${cluster.failed} failed` : ''
      cluster.label.textContent = cluster.count > 1 ? `${name} ×${cluster.count}${some}` : name
      cluster.label.className = `band-label ${cluster.result}`
    }
    this.axis.replaceChildren(...labels)
    this.overlay.replaceChildren(...marks)
  }

  private rowElement(row: Row): HTMLLIElement {
    const item = document.createElement('li')
    item.className = 'row'
    item.dataset.id = String(row.id)
    const label = document.createElement('span')
    label.className = 'rid'
    label.textContent = `#${row.id}`
    const track = document.createElement('span')
    track.className = 'track'
    const outcome = document.createElement('span')
    outcome.className = 'outcome'
    const path = document.createElement('span')
    path.className = 'path'
    item.append(label, track, path, outcome)
    row.drawn = { version: -1, item, track, outcome, path }
    return item
  }

  private renderRow(row: Row, start: number, now: number): void {
    const drawn = row.drawn!
    const end = start + this.scale
    if (drawn.version === row.version) {
      // nothing happened to it: only the open bar (or the hung stretch) grows
      if (drawn.growing) {
        const to = row.hung ? end : this.openEnd(row, now)
        drawn.growing.element.style.setProperty('--d', String(Math.round(to - drawn.growing.from)))
      }
      return
    }
    drawn.version = row.version
    drawn.growing = undefined
    const parts: HTMLElement[] = []
    for (const segment of row.segments) {
      const to = segment.end ?? this.openEnd(row, now)
      const element = place(`seg ${segment.kind}`, segment.start - start, to - segment.start)
      if (segment.end === undefined && !row.hung) drawn.growing = { element, from: segment.start }
      parts.push(element)
    }
    if (row.hung && row.firstSentAt !== undefined) {
      const from = row.firstSentAt + HUNG_AFTER
      const element = place('seg hung', from - start, end - from)
      drawn.growing = { element, from }
      parts.push(element)
    }
    for (const at of row.unauthorizedAt) parts.push(place('mark unauthorized', at - start))
    for (const at of row.replayedAt) parts.push(place('mark replay', at - start))
    if (row.settledAt !== undefined) parts.push(place(`end ${row.outcome}`, row.settledAt - start))
    drawn.track.replaceChildren(...parts)

    const state = row.hung
      ? 'hung'
      : (row.outcome ?? (row.segments.length === 0 ? 'scheduled' : (open(row)?.kind ?? 'pending')))
    drawn.item.dataset.state = state
    drawn.item.dataset.replayed = String(row.replayedAt.length)
    // the outcome ends the row in a column of its own, so a narrow screen cuts the path, never the result
    const verdict = row.hung ? 'hung' : (row.outcome ?? (row.segments.length === 0 ? 'scheduled' : '…'))
    const result = row.replayedAt.length > 0 ? `${verdict}, replayed ×${row.replayedAt.length}` : verdict
    drawn.outcome.textContent = result
    const expiry = this.burst?.expiry
    const text =
      row.steps.length === 0
        ? `leaves at ${expiry === undefined ? 'once' : relative(row.plannedAt - expiry)}`
        : row.steps.filter((step) => !['hung', 'ok', 'failed'].includes(step)).join(' → ')
    const extra = [
      row.outcome === 'failed' && row.reason ? row.reason : '',
      row.outcome && row.firstSentAt !== undefined && row.settledAt! - row.firstSentAt >= HUNG_AFTER
        ? `answered after ${seconds(row.settledAt! - row.firstSentAt)}`
        : '',
    ]
      .filter(Boolean)
      .join(', ')
    const full = extra ? `${text} (${extra})` : text
    drawn.path.textContent = full
    drawn.item.title = `request #${row.id} through ${row.via}: ${result}; ${full}`
  }

  /** The right edge of the scale: the last thing that happened, or now while something is on its way. */
  private latest(now: number): number {
    let latest = 0
    for (const row of this.shown) {
      for (const segment of row.segments) latest = Math.max(latest, segment.end ?? this.openEnd(row, now))
      for (const at of [...row.unauthorizedAt, ...row.replayedAt]) latest = Math.max(latest, at)
      if (row.settledAt !== undefined) latest = Math.max(latest, row.settledAt)
    }
    for (const band of this.bands) latest = Math.max(latest, band.end ?? now)
    if (this.burst?.expiry !== undefined) latest = Math.max(latest, this.burst.expiry + 500)
    // room for the hatched stretch of a hung request, so it reads as "still nothing"
    for (const row of this.shown) {
      if (row.hung && row.firstSentAt !== undefined)
        latest = Math.max(latest, row.firstSentAt + HUNG_AFTER + 1_000)
    }
    return latest
  }

  /** Where an open segment ends on screen: now, but a hung request stops growing once it is called hung. */
  private openEnd(row: Row, now: number): number {
    if (row.firstSentAt !== undefined && !row.outcome) return Math.min(now, row.firstSentAt + HUNG_AFTER)
    return now
  }

  private renderVerdict(now: number): void {
    const rows = this.shown
    let text = ''
    let tone = ''
    if (rows.length > 0) {
      const firstSend = Math.min(...rows.map((row) => row.plannedAt))
      const ok = rows.filter((row) => row.outcome === 'ok').length
      const failed = rows.filter((row) => row.outcome === 'failed').length
      const hung = rows.filter((row) => row.hung).length
      const replayed = rows.filter((row) => row.replayedAt.length > 0).length
      const waiting = rows.length - ok - failed - hung
      const parts = [`${ok} of ${rows.length} ok`]
      if (failed) parts.push(`${failed} failed`)
      if (hung) parts.push(`${hung} hung`)
      if (replayed) parts.push(`${replayed} replayed`)
      // requests of earlier bursts that the recipe sent again during this one, not every replay ever
      const since = this.burst?.start ?? firstSend
      const earlier = [...this.rows.values()].filter(
        (row) => !rows.includes(row) && row.replayedAt.some((at) => at >= since),
      ).length
      if (earlier) parts.push(`${earlier} from earlier bursts replayed`)
      if (firstSend > now) {
        text = `Burst scheduled: the first requests leave in ${seconds(firstSend - now)}.`
      } else {
        text = `${parts.join(', ')}${waiting ? `, ${waiting} on their way` : ''}.`
        tone = failed || hung || replayed || earlier ? 'bad' : waiting ? '' : 'good'
      }
    }
    if (this.verdict.textContent !== text) this.verdict.textContent = text
    this.verdict.dataset.tone = tone
  }
}

function open(row: Row): Segment | undefined {
  const last = row.segments.at(-1)
  return last && last.end === undefined ? last : undefined
}

function close(row: Row, now: number): void {
  const last = open(row)
  if (last) last.end = now
}
