import { type AddressInfo, createServer, connect as netConnect, type Socket } from 'node:net'

/** A TCP proxy to a service on this machine that can stop forwarding without closing anything. */
export interface StallProxy {
  /** the port it listens on (127.0.0.1) */
  port: number
  /** from now on nothing is forwarded either way; what arrives is held, in order */
  stall(): void
  /** forwards what was held, and everything after */
  resume(): void
  close(): Promise<void>
}

/**
 * A frozen server, or a network that drops packets and keeps the connection: no reset, no answer.
 * @example
 * const proxy = await stallProxy('127.0.0.1', 6379)
 * proxy.stall()
 */
export async function stallProxy(host: string, port: number): Promise<StallProxy> {
  let stalled = false
  const held: Array<() => void> = []
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = netConnect(port, host)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => {
        sockets.delete(socket)
        for (const other of [client, upstream]) other.destroy()
      })
    }
    const pipe = (from: Socket, to: Socket) =>
      from.on('data', (chunk: Buffer) => (stalled ? held.push(() => to.write(chunk)) : to.write(chunk)))
    pipe(client, upstream)
    pipe(upstream, client)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    stall() {
      stalled = true
    },
    resume() {
      stalled = false
      for (const send of held.splice(0)) send()
    },
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}
