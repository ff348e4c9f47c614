/**
 * Starts and stops the server processes of the server benchmark: each target runs in its own
 * process, so the load generator (this process) and the server do not share an event loop.
 */
import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { TargetConfig, TargetReady, TargetUsage } from './target-server.js'

/** A running server process. */
export interface Target {
  url: string
  /** the verify app's access token */
  token: string | undefined
  /** the server process's CPU time so far (user + system), in µs */
  cpuTime(): Promise<number>
  stop(): Promise<void>
}

const entry = fileURLToPath(new URL('./target-server.ts', import.meta.url))
const tsx = import.meta.resolve('tsx')

/**
 * Forks a server process for `config` and resolves once it listens.
 * @example
 * const target = await startTarget({ kind: 'verify' })
 * await target.stop()
 */
export async function startTarget(config: TargetConfig, { timeout = 60_000 } = {}): Promise<Target> {
  const child = fork(entry, [], {
    execArgv: ['--import', tsx],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  try {
    const ready = await new Promise<TargetReady>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`bench server did not start within ${timeout} ms`)),
        timeout,
      )
      child.once('message', (message: TargetReady) => {
        clearTimeout(timer)
        resolve(message)
      })
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`bench server exited with code ${code} before listening`))
      })
      child.send(config)
    })
    return {
      url: `http://127.0.0.1:${ready.port}`,
      token: ready.token,
      cpuTime: () =>
        new Promise((resolve) => {
          const listener = (message: TargetUsage) => {
            if (message.type !== 'usage') return
            child.off('message', listener)
            resolve(message.cpu)
          }
          child.on('message', listener)
          child.send('usage')
        }),
      stop: () => stop(child),
    }
  } catch (error) {
    await stop(child)
    throw error
  }
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  // the server closes itself when the channel goes; SIGKILL only if that takes too long
  if (child.connected) child.disconnect()
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
  await exited
  clearTimeout(timer)
}
