import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Closes, from the broker's side, every connection whose client properties contain `marker`
 * (the bridge's connection_name carries its APP_ID). Returns how many it closed.
 */
export async function closeConnectionsNamed(marker: string, reason: string): Promise<number> {
  // Tab-separated lines: the pid as close_connection takes it, then the client properties.
  const { stdout } = await run('rabbitmqctl', [
    'list_connections',
    'pid',
    'client_properties',
    '--no-table-headers',
    '-q',
  ]);
  const pids = stdout
    .split('\n')
    .filter((line) => line.includes(`"${marker}`))
    .map((line) => line.split('\t')[0] ?? '');
  for (const pid of pids) await run('rabbitmqctl', ['close_connection', pid, reason]);
  return pids.length;
}

export async function rabbitmqctl(...args: string[]): Promise<string> {
  const { stdout } = await run('rabbitmqctl', args, { timeout: 60_000 });
  return stdout;
}

/** The broker's memory high watermark as configured now (a fraction of RAM). */
export async function memoryWatermark(): Promise<string> {
  const environment = await rabbitmqctl('environment');
  const match = /\{vm_memory_high_watermark,([0-9.]+)\}/.exec(environment);
  return match?.[1] ?? '0.4';
}

export const SECOND_NODE = { name: 'bridge-test-2@localhost', port: 5673, distPort: 25673 };

/**
 * Starts a second, independent RabbitMQ node on this machine (its own name, ports and data dir),
 * for failover tests. Resolves when it accepts AMQP connections.
 */
export async function startSecondNode(): Promise<void> {
  const base = await mkdtemp(join(tmpdir(), 'rabbit2-'));
  await writeFile(join(base, 'rabbitmq.conf'), `listeners.tcp.local = 127.0.0.1:${SECOND_NODE.port}\n`);
  await writeFile(join(base, 'rabbitmq-env.conf'), '');
  await writeFile(join(base, 'enabled_plugins'), '[].\n');
  // The server runs as the rabbitmq user, which must own what it writes.
  await run('chown', ['-R', 'rabbitmq:rabbitmq', base]).catch(() => undefined);
  await run('rabbitmq-server', ['-detached'], {
    env: {
      ...process.env,
      RABBITMQ_NODENAME: SECOND_NODE.name,
      RABBITMQ_NODE_PORT: String(SECOND_NODE.port),
      RABBITMQ_DIST_PORT: String(SECOND_NODE.distPort),
      RABBITMQ_CONFIG_FILE: join(base, 'rabbitmq'),
      RABBITMQ_CONF_ENV_FILE: join(base, 'rabbitmq-env.conf'),
      RABBITMQ_ENABLED_PLUGINS_FILE: join(base, 'enabled_plugins'),
      RABBITMQ_MNESIA_BASE: join(base, 'mnesia'),
      RABBITMQ_LOG_BASE: join(base, 'log'),
      RABBITMQ_PID_FILE: join(base, 'pid'),
    },
  });
  // -detached returns before the node is reachable, and await_startup fails until it is: retry.
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await rabbitmqctl('-n', SECOND_NODE.name, 'await_startup', '--timeout', '30');
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
  }
}

export async function stopSecondNode(): Promise<void> {
  await rabbitmqctl('-n', SECOND_NODE.name, 'stop').catch(() => undefined);
}
