/**
 * Starts, kills and restarts the soak's server processes (`soak/server.ts`), and keeps what they
 * report: reuse detections and pg Pool errors arrive over IPC, so a kill -9 loses none of them.
 */
import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { SoakServerConfig, SoakServerMessage, SoakServerStats } from './protocol.js'

/** Counters shared by every instance of one soak, across restarts. */
export interface InstanceEvents {
  /** sessions revoked for refresh-token reuse, by any instance */
  reuseDetected: number
  /** idle-client errors the pg Pools reported (a PostgreSQL restart causes them) */
  poolErrors: number
  /** instances that exited without being told to: a crash */
  crashes: { name: string; code: number | null; signal: string | null; stderr: string }[]
}

/** A running (or killed) server process. */
export interface Instance {
  readonly name: string
  /** `http://127.0.0.1:PORT`; a restart keeps it */
  readonly url: string
  readonly alive: boolean
  /** `kill -9` */
  kill(): Promise<void>
  /** starts the process again on the same port and store */
  restart(): Promise<void>
  /** closes the server cleanly */
  stop(): Promise<void>
  stats(): Promise<SoakServerStats>
}

const entry = fileURLToPath(new URL('../server.ts', import.meta.url))
const tsx = import.meta.resolve('tsx')
// the servers run on the TypeScript sources, like the tests: the soak checks this tree, not a build
const execArgv = ['--conditions=@tokenflow/source', '--import', tsx]

/**
 * Creates the shared counters of a soak's instances.
 * @example
 * const events = createInstanceEvents()
 */
export function createInstanceEvents(): InstanceEvents {
  return { reuseDetected: 0, poolErrors: 0, crashes: [] }
}

/**
 * Forks a server process and resolves once it listens.
 * @example
 * const a = await startInstance({ name: 'a', kind: 'sqlite', file, port: 0, accessTokenTtl: 1000 }, events)
 * await a.kill()
 * await a.restart()
 */
export async function startInstance(
  initial: SoakServerConfig,
  events: InstanceEvents,
  { startTimeout = 30_000 } = {},
): Promise<Instance> {
  let config = initial
  let child: ChildProcess | undefined
  let url = ''
  // per process, not per instance: a killed process may report its end after its successor started
  const toldToExit = new WeakSet<ChildProcess>()

  const spawn = async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      throw new Error(`instance "${config.name}" is still running`)
    }
    const proc = fork(entry, [JSON.stringify(config)], {
      execArgv,
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    })
    child = proc
    let stderr = ''
    proc.stderr?.setEncoding('utf8')
    proc.stderr?.on('data', (chunk: string) => {
      // the tail is enough to say why a process died
      stderr = (stderr + chunk).slice(-4000)
    })
    proc.on('message', (message: SoakServerMessage) => {
      if (message.type === 'reuseDetected') events.reuseDetected++
      if (message.type === 'poolError') events.poolErrors++
    })
    // 'close' comes after the stderr pipe drained, so the tail holds the last words
    proc.on('close', (code, signal) => {
      if (!toldToExit.has(proc)) events.crashes.push({ name: config.name, code, signal, stderr })
    })
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`instance "${config.name}" did not listen within ${startTimeout} ms`)),
        startTimeout,
      )
      const onMessage = (message: SoakServerMessage) => {
        if (message.type !== 'ready') return
        clearTimeout(timer)
        proc.off('message', onMessage)
        resolve(message.port)
      }
      proc.on('message', onMessage)
      proc.once('exit', (code) => {
        clearTimeout(timer)
        reject(
          new Error(`instance "${config.name}" exited with code ${code} before listening: ${stderr.trim()}`),
        )
      })
    })
    // a restart comes back on the same port, so the clients' list of base URLs stays right
    config = { ...config, port }
    url = `http://127.0.0.1:${port}`
  }

  const exited = (target: ChildProcess) =>
    target.exitCode !== null || target.signalCode !== null
      ? Promise.resolve()
      : new Promise<void>((resolve) => target.once('exit', () => resolve()))

  await spawn()
  return {
    name: config.name,
    get url() {
      return url
    },
    get alive() {
      return child !== undefined && child.exitCode === null && child.signalCode === null
    },
    async kill() {
      if (!child) return
      toldToExit.add(child)
      child.kill('SIGKILL')
      await exited(child)
    },
    restart: spawn,
    async stop() {
      if (!child) return
      toldToExit.add(child)
      const target = child
      const done = exited(target)
      // the server closes itself when its IPC channel goes; SIGKILL only if that hangs
      if (target.connected) target.disconnect()
      const timer = setTimeout(() => target.kill('SIGKILL'), 5_000)
      await done
      clearTimeout(timer)
    },
    async stats() {
      const response = await fetch(`${url}/soak/stats`)
      if (!response.ok) throw new Error(`instance "${config.name}" stats answered ${response.status}`)
      return (await response.json()) as SoakServerStats
    },
  }
}
