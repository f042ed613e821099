import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { rabbitmqctl, SHARED_LAVINMQ } from '../../test/helpers/broker-admin.js';
import { isPortOpen, waitForPort } from '../../test/helpers/ports.js';
import { type RabbitNodeSpec, startSecondNode, stopSecondNode } from '../../test/helpers/second-node.js';

const run = promisify(execFile);

export type ChaosBrokerProduct = 'rabbitmq' | 'lavinmq';

/**
 * A broker the chaos soak owns from start to finish: started for it, on its own ports and data
 * directory, and removed afterwards. Nothing here touches a broker that others use.
 */
export interface ChaosBroker {
  readonly product: ChaosBrokerProduct;
  readonly url: string;
  /** What it announces in connection.start, e.g. "RabbitMQ 3.10.8". */
  readonly version: string;
  /** Closes every client connection from the broker's side. */
  closeAllConnections(reason: string): Promise<void>;
  /** Stops the broker (its AMQP listener goes away, connections are closed). */
  stop(): Promise<void>;
  /** Starts it again; resolves once it accepts AMQP connections. */
  start(): Promise<void>;
  /** Stops it for good and deletes its data directory. Never throws. */
  remove(): Promise<void>;
}

/** The soak's own RabbitMQ node: clear of the shared node (5672), the fault suite's and the cluster drills'. */
export const SOAK_RABBIT_NODE: RabbitNodeSpec = { name: 'soak@localhost', port: 5675, distPort: 25675 };
/**
 * The soak's own LavinMQ. Not 5702: the kit derives a broker's Prometheus port as AMQP + 10020, so the
 * test LavinMQ on 5682 holds 15702, which a LavinMQ on 5702 needs for its HTTP API (AMQP + 10000).
 */
export const SOAK_LAVINMQ_PORT = 5722;

export async function startChaosBroker(product: ChaosBrokerProduct, port?: number): Promise<ChaosBroker> {
  return product === 'rabbitmq'
    ? startRabbit(port === undefined ? SOAK_RABBIT_NODE : { ...SOAK_RABBIT_NODE, port })
    : startLavin(port ?? SOAK_LAVINMQ_PORT);
}

async function refuseTakenPorts(ports: number[], what: string): Promise<void> {
  for (const port of ports) {
    if (await isPortOpen(port)) throw new Error(`port ${port} is taken: ${what} needs ${ports.join(', ')} free`);
  }
}

async function announced(url: string): Promise<string> {
  const connection = await amqp.connect(url);
  const properties = (connection.connection as unknown as { serverProperties?: Record<string, unknown> })
    .serverProperties;
  await connection.close();
  return `${String(properties?.product)} ${String(properties?.version)}`;
}

async function startRabbit(node: RabbitNodeSpec): Promise<ChaosBroker> {
  await refuseTakenPorts([node.port, node.distPort], `the soak's RabbitMQ node ${node.name}`);
  const ctl = (...args: string[]) => rabbitmqctl('-n', node.name, ...args);
  let base: string | undefined;
  const remove = async () => {
    await stopSecondNode(node);
    // `rabbitmqctl stop` returns as the node goes down; its files are let go when the VM is gone.
    const deadline = Date.now() + 30_000;
    while ((await isPortOpen(node.distPort)) && Date.now() < deadline) await sleep(250);
    if (base !== undefined) await rm(base, { recursive: true, force: true }).catch(() => undefined);
  };
  try {
    base = await startSecondNode(node);
  } catch (err) {
    await remove();
    throw err;
  }
  const url = `amqp://guest:guest@127.0.0.1:${node.port}`;
  return {
    product: 'rabbitmq',
    url,
    version: await announced(url),
    async closeAllConnections(reason) {
      await ctl('close_all_connections', reason);
    },
    async stop() {
      await ctl('stop_app');
    },
    async start() {
      await ctl('start_app');
      await ctl('await_startup');
    },
    remove,
  };
}

async function startLavin(port: number): Promise<ChaosBroker> {
  // The kit's derived ports: HTTP API, MQTT, Prometheus, clustering.
  await refuseTakenPorts(
    [port, port + 10_000, port + 6210, port + 10_020, port + 10_006],
    `the soak's LavinMQ on ${port}`,
  );
  // Its own state directory (data, pid, log, control socket), removed afterwards.
  const state = await mkdtemp(join(tmpdir(), 'chaos-lavinmq-'));
  const kit = (...args: string[]) =>
    run(SHARED_LAVINMQ, args, { timeout: 60_000, env: { ...process.env, LAVINMQ_STATE: state } });
  const remove = async () => {
    await kit('stop', String(port)).catch(() => undefined);
    await rm(state, { recursive: true, force: true }).catch(() => undefined);
  };
  try {
    await kit('start', String(port));
  } catch (err) {
    await remove();
    throw err;
  }
  const url = `amqp://guest:guest@127.0.0.1:${port}`;
  return {
    product: 'lavinmq',
    url,
    version: await announced(url),
    async closeAllConnections(reason) {
      await kit('ctl', String(port), 'close_all_connections', reason);
    },
    async stop() {
      await kit('stop', String(port));
    },
    async start() {
      await kit('start', String(port));
      await waitForPort(port, 30_000);
    },
    remove,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
