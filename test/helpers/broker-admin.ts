import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { it } from 'vitest';
import { AMQP_URL } from './broker.js';
import { waitForPort } from './ports.js';

const run = promisify(execFile);

export type BrokerProduct = 'rabbitmq' | 'lavinmq';

/** Regular expressions over resource names, as both brokers take them. */
export interface Permissions {
  readonly configure: string;
  readonly write: string;
  readonly read: string;
}

/**
 * The broker's own admin tool, for what only the broker can do in a test: close connections from
 * its side, make a vhost, stop and start it. Each test asks for it and, where the broker at
 * AMQP_URL cannot stage a drill, skips that drill with the reason printed.
 */
export interface BrokerAdmin {
  readonly product: BrokerProduct;
  /** Closes, from the broker's side, every connection whose client properties contain `marker`. */
  closeConnectionsNamed(marker: string, reason: string): Promise<number>;
  closeAllConnections(reason: string): Promise<void>;
  /** A vhost that guest may use fully. */
  addVhost(name: string): Promise<void>;
  deleteVhost(name: string): Promise<void>;
  /** A user with these permission regular expressions on the default vhost. */
  addUser(name: string, password: string, permissions: Permissions): Promise<void>;
  deleteUser(name: string): Promise<void>;
  /** Sets a user's password (a rotation): connections already open stay open, new logins need it. */
  changePassword(name: string, password: string): Promise<void>;
  /** How to stop and start the broker, or why it cannot be done from here. */
  readonly restart: { stop(): Promise<void>; start(): Promise<void> } | { readonly unavailable: string };
}

/** The shared LavinMQ kit of this workplace, when present (a user's machine does not have it). */
export const SHARED_LAVINMQ = resolve(
  dirname(fileURLToPath(import.meta.url)),
  '../../../shared/brokers/lavinmq/lavinmq.sh',
);

const products = new Map<string, Promise<BrokerProduct>>();

/** Which broker answers at `url`, from the `product` it announces in connection.start. */
export function brokerProduct(url = AMQP_URL): Promise<BrokerProduct> {
  let product = products.get(url);
  if (product === undefined) {
    product = amqp.connect(url).then(async (connection) => {
      const announced = String(
        (connection.connection as unknown as { serverProperties?: { product?: unknown } }).serverProperties?.product,
      );
      await connection.close();
      return /lavinmq/i.test(announced) ? 'lavinmq' : 'rabbitmq';
    });
    products.set(url, product);
  }
  return product;
}

export async function brokerAdmin(url = AMQP_URL): Promise<BrokerAdmin> {
  return (await brokerProduct(url)) === 'lavinmq' ? lavinmqAdmin(url) : rabbitmqAdmin();
}

/**
 * `it` for a drill this broker can stage; otherwise `it.skip`, with the reason printed, so that the
 * run reports the drill as skipped (never as passed) and says why.
 */
export function drillIt(
  admin: BrokerAdmin,
  drill: string,
  unavailable: string | undefined,
): (name: string, body: () => Promise<void>) => void {
  if (unavailable === undefined) return (name, body) => it(name, body);
  console.warn(`SKIPPED on ${admin.product}: ${drill}: ${unavailable}`);
  return (name, body) => it.skip(name, body);
}

export async function rabbitmqctl(...args: string[]): Promise<string> {
  const { stdout } = await run('rabbitmqctl', args, { timeout: 60_000 });
  return stdout;
}

function rabbitmqAdmin(): BrokerAdmin {
  return {
    product: 'rabbitmq',
    async closeConnectionsNamed(marker, reason) {
      // Tab-separated lines: the pid as close_connection takes it, then the client properties.
      const stdout = await rabbitmqctl('list_connections', 'pid', 'client_properties', '--no-table-headers', '-q');
      const pids = stdout
        .split('\n')
        .filter((line) => line.includes(`"${marker}`))
        .map((line) => line.split('\t')[0] ?? '');
      for (const pid of pids) await rabbitmqctl('close_connection', pid, reason);
      return pids.length;
    },
    async closeAllConnections(reason) {
      await rabbitmqctl('close_all_connections', reason);
    },
    async addVhost(name) {
      await rabbitmqctl('add_vhost', name);
      await rabbitmqctl('set_permissions', '-p', name, 'guest', '.*', '.*', '.*');
    },
    async deleteVhost(name) {
      await rabbitmqctl('delete_vhost', name);
    },
    async addUser(name, password, { configure, write, read }) {
      await rabbitmqctl('add_user', name, password);
      await rabbitmqctl('set_permissions', '-p', '/', name, configure, write, read);
    },
    async deleteUser(name) {
      await rabbitmqctl('delete_user', name);
    },
    async changePassword(name, password) {
      await rabbitmqctl('change_password', name, password);
    },
    restart: {
      async stop() {
        await rabbitmqctl('stop_app');
      },
      async start() {
        await rabbitmqctl('start_app');
        await rabbitmqctl('await_startup');
      },
    },
  };
}

/**
 * lavinmqctl, reached the way this machine offers it: `LAVINMQCTL` (a command line, e.g.
 * `docker exec my-broker lavinmqctl`), else the shared kit's `lavinmq.sh ctl <port>`, else
 * `lavinmqctl` on the PATH with its default control socket.
 */
function lavinmqctlCommand(port: number): string[] {
  const configured = process.env.LAVINMQCTL?.trim();
  if (configured) return configured.split(/\s+/);
  if (existsSync(SHARED_LAVINMQ)) return [SHARED_LAVINMQ, 'ctl', String(port)];
  return ['lavinmqctl'];
}

export function amqpPort(url = AMQP_URL): number {
  const parsed = new URL(url);
  return Number(parsed.port || (parsed.protocol === 'amqps:' ? 5671 : 5672));
}

function lavinmqAdmin(url: string): BrokerAdmin {
  const port = amqpPort(url);
  const [command = 'lavinmqctl', ...prefix] = lavinmqctlCommand(port);
  const ctl = async (...args: string[]): Promise<string> => {
    const { stdout } = await run(command, [...prefix, ...args], { timeout: 60_000 });
    return stdout;
  };
  const sharedKit = existsSync(SHARED_LAVINMQ) && process.env.LAVINMQCTL === undefined;
  return {
    product: 'lavinmq',
    async closeConnectionsNamed(marker, reason) {
      const listed = JSON.parse(await ctl('list_connections', 'name', 'client_properties', '-f', 'json')) as Array<{
        name: string;
        client_properties?: unknown;
      }>;
      const names = listed
        .filter((connection) => JSON.stringify(connection.client_properties ?? {}).includes(`"${marker}`))
        .map((connection) => connection.name);
      for (const name of names) await ctl('close_connection', name, reason);
      return names.length;
    },
    async closeAllConnections(reason) {
      await ctl('close_all_connections', reason);
    },
    async addVhost(name) {
      await ctl('add_vhost', name);
      await ctl('set_permissions', '-p', name, 'guest', '.*', '.*', '.*');
    },
    async deleteVhost(name) {
      await ctl('delete_vhost', name);
    },
    async addUser(name, password, { configure, write, read }) {
      await ctl('add_user', name, password);
      await ctl('set_permissions', '-p', '/', name, configure, write, read);
    },
    async deleteUser(name) {
      await ctl('delete_user', name);
    },
    async changePassword(name, password) {
      await ctl('change_password', name, password);
    },
    // lavinmqctl stop_app keeps accepting connections, so a real stop is the process's: the shared kit's.
    restart: sharedKit
      ? {
          async stop() {
            await run(SHARED_LAVINMQ, ['stop', String(port)], { timeout: 60_000 });
          },
          async start() {
            await run(SHARED_LAVINMQ, ['start', String(port)], { timeout: 60_000 });
            await waitForPort(port, 30_000);
          },
        }
      : { unavailable: 'stopping LavinMQ needs the shared lavinmq.sh kit (lavinmqctl stop_app keeps serving)' },
  };
}
