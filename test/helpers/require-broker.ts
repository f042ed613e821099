import { execFile } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { freePort, isPortOpen } from './ports.js';

const run = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** The compose project the tests' own broker runs under, apart from a user's `docker compose up`. */
const PROJECT = 'amqp-rpc-bridge-tests';
const STARTED_BY_US = 'AMQP_RPC_BRIDGE_TEST_BROKER';

/**
 * Vitest global setup: the integration tests need a real broker. When nothing answers at AMQP_URL
 * and Docker is there, start the compose file's broker on that port for this run and remove it
 * afterwards; with neither, fail at once with what to do instead of every test timing out.
 */
export default async function requireBroker(): Promise<(() => Promise<void>) | undefined> {
  const url = new URL(process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672');
  const host = url.hostname;
  const port = Number(url.port || (url.protocol === 'amqps:' ? 5671 : 5672));
  if (await isPortOpen(port, host)) return undefined;

  const compose = await composeCommand();
  const local = host === '127.0.0.1' || host === 'localhost';
  if (compose === undefined || !local || url.protocol !== 'amqp:') {
    throw new Error(
      `No AMQP broker answers at ${host}:${port} (AMQP_URL). The tests run against a real broker: ` +
        'start RabbitMQ with `rabbitmq-server -detached`, or LavinMQ, or point AMQP_URL at one. ' +
        "(With Docker installed, the tests would start the compose file's broker themselves.)",
    );
  }
  // Several projects share this setup; the first one starts the broker, the others find it.
  if (process.env[STARTED_BY_US] === undefined) {
    // The management port is of no use to the tests: any free one, so that a busy 15672 cannot stop the run.
    const env = { ...process.env, BROKER_AMQP_PORT: String(port), BROKER_HTTP_PORT: String(await freePort()) };
    const [command, ...prefix] = compose;
    const composeRun = (...args: string[]) =>
      run(command as string, [...prefix, '-p', PROJECT, '-f', resolve(root, 'docker-compose.yml'), ...args], {
        env,
        cwd: root,
        timeout: 300_000,
      });
    console.info(
      `No broker answered at ${host}:${port}: starting the compose file's broker there for this run (removed afterwards).`,
    );
    try {
      await composeRun('up', '-d', 'broker');
      process.env[STARTED_BY_US] = '1';
      const { stdout } = await composeRun('ps', '-q', 'broker');
      // Tests that need the broker's admin tool reach it inside the container.
      process.env.LAVINMQCTL = `docker exec ${stdout.trim()} lavinmqctl`;
      await waitUntilAmqp(url, 120_000);
    } catch (err) {
      await composeRun('down', '-v').catch(() => undefined);
      throw err;
    }
    return async () => {
      await composeRun('down', '-v');
    };
  }
  await waitUntilAmqp(url, 120_000);
  return undefined;
}

/** `docker compose` (v2), else `docker-compose` (v1), when a Docker engine answers; else undefined. */
async function composeCommand(): Promise<string[] | undefined> {
  try {
    await run('docker', ['info'], { timeout: 15_000 });
  } catch {
    return undefined;
  }
  for (const candidate of [['docker', 'compose'], ['docker-compose']]) {
    const [command, ...args] = candidate;
    try {
      await run(command as string, [...args, 'version'], { timeout: 15_000 });
      return candidate;
    } catch {
      // try the next one
    }
  }
  return undefined;
}

/** Until an AMQP handshake succeeds: Docker's proxy opens the port before the broker listens behind it. */
async function waitUntilAmqp(url: URL, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const connection = await amqp.connect(url.toString());
      await connection.close();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`the compose broker did not answer at ${url.host} in time: ${err}`);
      await new Promise((done) => setTimeout(done, 500));
    }
  }
}
