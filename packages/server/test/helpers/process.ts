import { type ChildProcess, spawn } from 'node:child_process'

/** How a child process ended, and what it wrote. */
export interface Run {
  code: number | null
  stdout: string
  stderr: string
}

/**
 * Runs `command` to its end with `input` on a pipe as its stdin. `children` tracks it while it runs, so a
 * test file can kill what is left; after `timeout` ms it is killed (SIGKILL), and its code is then null.
 * @example
 * const { code, stdout } = await runProcess(process.execPath, [cli, '--help'], { env: process.env })
 */
export function runProcess(
  command: string,
  args: string[],
  {
    input = '',
    env,
    timeout,
    children,
  }: { input?: string; env: NodeJS.ProcessEnv; timeout?: number; children?: Set<ChildProcess> },
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env })
    children?.add(child)
    const timer = timeout === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), timeout)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk
    })
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk
    })
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      children?.delete(child)
      resolve({ code, stdout, stderr })
    })
    child.stdin.end(input)
  })
}
