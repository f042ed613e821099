import { connect } from 'node:net';

/**
 * Vitest global setup: the integration tests need a real broker. Without one, fail at once with
 * what to do, instead of every test timing out (or, worse, being skipped).
 */
export default async function requireBroker(): Promise<void> {
  const url = new URL(process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672');
  const host = url.hostname;
  const port = Number(url.port || (url.protocol === 'amqps:' ? 5671 : 5672));
  const reachable = await new Promise<boolean>((resolve) => {
    const socket = connect({ host, port, timeout: 2_000 });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(false));
  });
  if (!reachable) {
    throw new Error(
      `No AMQP broker answers at ${host}:${port} (AMQP_URL). The tests run against a real broker: ` +
        'start RabbitMQ with `rabbitmq-server -detached` (or `docker compose up -d broker`), ' +
        'or point AMQP_URL at one.',
    );
  }
}
