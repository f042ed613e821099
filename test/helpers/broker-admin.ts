import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, resolve } from 'node:path';
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
  /**
   * How to raise a memory alarm (the broker blocks publishers): `raise()` resolves with the function
   * that clears it again. Or why it cannot be done on this broker.
   */
  readonly memoryAlarm: { raise(): Promise<() => Promise<void>> } | { readonly unavailable: string };
  /**
   * The admin tool's command line (e.g. `[".../rabbitmq.sh", "ctl", "5772"]`), for helpers that start
   * more nodes of the same kind (second-node.ts).
   */
  readonly ctlCommand: readonly string[];
  /**
   * Resolves once the tool is known to administer the broker at AMQP_URL (every other method checks
   * that on first use): call it before timing what a method does.
   */
  checked(): Promise<void>;
}

/** The shared LavinMQ kit of this workplace, when present (a user's machine does not have it). */
export const SHARED_LAVINMQ = resolve(
  dirname(fileURLToPath(import.meta.url)),
  '../../../shared/brokers/lavinmq/lavinmq.sh',
);
/** The shared RabbitMQ 4.x kit of this workplace, when present. */
export const SHARED_RABBITMQ = resolve(
  dirname(fileURLToPath(import.meta.url)),
  '../../../shared/brokers/rabbitmq/rabbitmq.sh',
);

interface Announced {
  readonly product: BrokerProduct;
  /** As announced in connection.start, e.g. `4.3.6` or `2.9.1`. */
  readonly version: string;
}

const announcements = new Map<string, Promise<Announced>>();

/** What the broker at `url` announces in connection.start (asked once per process). */
function announced(url: string): Promise<Announced> {
  let answer = announcements.get(url);
  if (answer === undefined) {
    answer = amqp.connect(url).then(async (connection) => {
      const properties =
        (connection.connection as unknown as { serverProperties?: { product?: unknown; version?: unknown } })
          .serverProperties ?? {};
      await connection.close();
      return {
        product: /lavinmq/i.test(String(properties.product)) ? 'lavinmq' : 'rabbitmq',
        version: String(properties.version),
      } as const;
    });
    announcements.set(url, answer);
  }
  return answer;
}

/** Which broker answers at `url`, from the `product` it announces in connection.start. */
export async function brokerProduct(url = AMQP_URL): Promise<BrokerProduct> {
  return (await announced(url)).product;
}

/** The broker's version as it announces it in connection.start, e.g. `4.3.6`. */
export async function brokerVersion(url = AMQP_URL): Promise<string> {
  return (await announced(url)).version;
}

/**
 * The admin tool of the broker at `url`. Its first use checks that the tool administers that broker
 * (it must see a connection opened to `url`), so that a test never closes connections on, or adds
 * users to, another broker of the machine: the machine's rabbitmqctl drives the machine's RabbitMQ,
 * whatever AMQP_URL says.
 */
export async function brokerAdmin(url = AMQP_URL): Promise<BrokerAdmin> {
  const admin = (await brokerProduct(url)) === 'lavinmq' ? lavinmqAdmin(url) : rabbitmqAdmin();
  return checkedOnFirstUse(admin, url);
}

/** `a.b.c` compared with `x.y`: true when at least that version. */
export function versionAtLeast(version: string, atLeast: string): boolean {
  const have = version.split('.').map(Number);
  const want = atLeast.split('.').map(Number);
  for (let i = 0; i < want.length; i++) {
    const a = have[i] ?? 0;
    const b = want[i] ?? 0;
    if (a !== b) return a > b;
  }
  return true;
}

/** An admin as each broker's tool makes it, before brokerAdmin() adds the check of which broker it drives. */
type UncheckedAdmin = Omit<BrokerAdmin, 'checked'>;

function checkedOnFirstUse(admin: UncheckedAdmin, url: string): BrokerAdmin {
  let checked: Promise<void> | undefined;
  const check = (): Promise<void> => {
    checked ??= administers(admin, url);
    return checked;
  };
  const guard =
    <A extends unknown[], R>(action: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      await check();
      return action(...args);
    };
  const restart = admin.restart;
  const memoryAlarm = admin.memoryAlarm;
  return {
    ...admin,
    checked: check,
    closeConnectionsNamed: guard(admin.closeConnectionsNamed),
    closeAllConnections: guard(admin.closeAllConnections),
    addVhost: guard(admin.addVhost),
    deleteVhost: guard(admin.deleteVhost),
    addUser: guard(admin.addUser),
    deleteUser: guard(admin.deleteUser),
    restart: 'unavailable' in restart ? restart : { stop: guard(restart.stop), start: restart.start },
    memoryAlarm: 'unavailable' in memoryAlarm ? memoryAlarm : { raise: guard(memoryAlarm.raise) },
  };
}

/** Fails, saying what to set, unless the admin tool sees (and closes) a connection of ours to `url`. */
async function administers(admin: UncheckedAdmin, url: string): Promise<void> {
  const marker = `admin-check.${randomBytes(6).toString('hex')}`;
  const connection = await amqp.connect(url, { clientProperties: { connection_name: marker } });
  connection.on('error', () => undefined);
  const closed = new Promise((resolve) => connection.once('close', resolve));
  let seen = 0;
  try {
    seen = await admin.closeConnectionsNamed(marker, 'test harness: which broker does the admin tool drive');
  } finally {
    if (seen === 0) await connection.close().catch(() => undefined);
  }
  if (seen === 0) {
    const tool = admin.product === 'rabbitmq' ? 'RABBITMQCTL' : 'LAVINMQCTL';
    throw new Error(
      `\`${admin.ctlCommand.join(' ')}\` administers another broker than the one at ${redact(url)} (it does not ` +
        `see a connection opened there). Tell the tests which tool administers it: ${tool}="<command line>"` +
        (admin.product === 'rabbitmq' && existsSync(SHARED_RABBITMQ)
          ? `, e.g. ${tool}="${SHARED_RABBITMQ} ctl ${amqpPort(url)}" for the shared kit's RabbitMQ.`
          : ', e.g. "docker exec <container> rabbitmqctl".'),
    );
  }
  await closed;
}

function redact(url: string): string {
  const parsed = new URL(url);
  if (parsed.password) parsed.password = '***';
  return parsed.toString();
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

/**
 * The machine's own rabbitmqctl (on the PATH), for nodes the tests start with the machine's
 * rabbitmq-server (second-node.ts, the chaos soak): name the node with `-n`. The broker under test is
 * administered through brokerAdmin(), which honours RABBITMQCTL.
 */
export async function rabbitmqctl(...args: string[]): Promise<string> {
  const { stdout } = await run('rabbitmqctl', args, { timeout: 60_000 });
  return stdout;
}

/**
 * rabbitmqctl for the broker under test: `RABBITMQCTL` (a command line, e.g.
 * `../shared/brokers/rabbitmq/rabbitmq.sh ctl 5772` or `docker exec my-broker rabbitmqctl`), else the
 * machine's `rabbitmqctl`, which administers the machine's node whatever AMQP_URL says.
 */
export function rabbitmqctlCommand(): string[] {
  const configured = process.env.RABBITMQCTL?.trim();
  return configured ? configured.split(/\s+/) : ['rabbitmqctl'];
}

/**
 * The shared RabbitMQ kit's script when RABBITMQCTL is its `ctl PORT` (a 4.x node in a root file
 * system of its own): more nodes of the same kind are started with it.
 */
export function rabbitmqKitOf(ctlCommand: readonly string[]): string | undefined {
  const [script, verb, port] = ctlCommand;
  return script !== undefined && basename(script) === 'rabbitmq.sh' && verb === 'ctl' && /^\d+$/.test(port ?? '')
    ? script
    : undefined;
}

/** The broker's memory high watermark as configured now (a fraction of RAM), from `rabbitmqctl environment`. */
async function memoryWatermark(ctl: (...args: string[]) => Promise<string>): Promise<string> {
  const environment = await ctl('environment');
  const match = /\{vm_memory_high_watermark,([0-9.]+)\}/.exec(environment);
  if (match?.[1] === undefined) throw new Error('rabbitmqctl environment shows no relative vm_memory_high_watermark');
  return match[1];
}

function rabbitmqAdmin(): UncheckedAdmin {
  const [command = 'rabbitmqctl', ...prefix] = rabbitmqctlCommand();
  const ctl = async (...args: string[]): Promise<string> => {
    const { stdout } = await run(command, [...prefix, ...args], { timeout: 60_000 });
    return stdout;
  };
  return {
    product: 'rabbitmq',
    ctlCommand: [command, ...prefix],
    async closeConnectionsNamed(marker, reason) {
      // Tab-separated lines: the pid as close_connection takes it, then the client properties.
      const stdout = await ctl('list_connections', 'pid', 'client_properties', '--no-table-headers', '-q');
      const pids = stdout
        .split('\n')
        .filter((line) => line.includes(`"${marker}`))
        .map((line) => line.split('\t')[0] ?? '');
      for (const pid of pids) await ctl('close_connection', pid, reason);
      return pids.length;
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
    restart: {
      async stop() {
        await ctl('stop_app');
      },
      async start() {
        await ctl('start_app');
        await ctl('await_startup');
      },
    },
    memoryAlarm: {
      async raise() {
        const original = await memoryWatermark(ctl);
        await ctl('set_vm_memory_high_watermark', '0.00001');
        return async () => {
          await ctl('set_vm_memory_high_watermark', original);
        };
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

function lavinmqAdmin(url: string): UncheckedAdmin {
  const port = amqpPort(url);
  const [command = 'lavinmqctl', ...prefix] = lavinmqctlCommand(port);
  const ctl = async (...args: string[]): Promise<string> => {
    const { stdout } = await run(command, [...prefix, ...args], { timeout: 60_000 });
    return stdout;
  };
  const sharedKit = existsSync(SHARED_LAVINMQ) && process.env.LAVINMQCTL === undefined;
  return {
    product: 'lavinmq',
    ctlCommand: [command, ...prefix],
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
            // From a folder that outlives this checkout: LavinMQ needs its working directory to stay (it
            // fails add_vhost with "Error getting current directory" once a deleted clone was its cwd).
            await run(SHARED_LAVINMQ, ['start', String(port)], { timeout: 60_000, cwd: tmpdir() });
            await waitForPort(port, 30_000);
          },
        }
      : { unavailable: 'stopping LavinMQ needs the shared lavinmq.sh kit (lavinmqctl stop_app keeps serving)' },
    memoryAlarm: { unavailable: 'LavinMQ has no memory watermark to set from the command line' },
  };
}
