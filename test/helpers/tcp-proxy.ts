import { createServer, type Socket, connect as tcpConnect } from 'node:net';

/**
 * A TCP proxy between the bridge and the broker that can go silent the way a network partition or
 * a dead host does: nothing is closed, nothing more arrives, and what the bridge writes piles up
 * (both sides stop reading, so the kernel's buffers fill and the sender's writes back up).
 */
export interface TcpProxy {
  readonly port: number;
  /** `url` with its host and port replaced by the proxy's. */
  via(url: string): string;
  /** Stops forwarding in both directions without closing anything; new connections hang. */
  silence(): void;
  /** Forwards again: connections still open carry on, new ones reach the broker. */
  heal(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
  let silent = false;
  const sockets = new Set<Socket>();
  const waiting: Array<() => void> = [];

  const forward = (from: Socket, to: Socket) => {
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => {
      if (!silent) from.resume();
    });
    from.on('close', () => to.destroy());
    from.on('error', () => to.destroy());
  };

  const server = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    const join = () => {
      const upstream = tcpConnect(targetPort, targetHost);
      sockets.add(upstream);
      upstream.on('close', () => sockets.delete(upstream));
      upstream.on('error', () => undefined);
      forward(client, upstream);
      forward(upstream, client);
    };
    if (silent) {
      client.pause();
      waiting.push(join);
    } else {
      join();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;

  return {
    port,
    via(url) {
      const parsed = new URL(url);
      parsed.hostname = '127.0.0.1';
      parsed.port = String(port);
      return parsed.toString();
    },
    silence() {
      silent = true;
      for (const socket of sockets) socket.pause();
    },
    heal() {
      silent = false;
      for (const socket of sockets) socket.resume();
      for (const join of waiting.splice(0)) join();
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
