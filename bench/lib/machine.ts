import { cpus, loadavg, release } from 'node:os'

/** What a bench result records about the machine it ran on. */
export interface Machine {
  cpus: number
  model: string
  node: string
  os: string
  /** the 1-minute load average before the part ran (`loadavg()[0]`, taken by the caller) and now */
  loadAverage: { before: number; after: number }
}

const round2 = (value: number) => Math.round(value * 100) / 100

/** The machine, with `loadBefore` (`loadavg()[0]` read before the measurement) and the load average now. */
export function machine(loadBefore: number): Machine {
  const cpu = cpus()
  return {
    cpus: cpu.length,
    model: cpu[0]?.model ?? 'unknown',
    node: process.version,
    os: `${process.platform} ${release()}`,
    loadAverage: { before: round2(loadBefore), after: round2(loadavg()[0]!) },
  }
}
