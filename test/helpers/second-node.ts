import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { type BrokerAdmin, rabbitmqctl, rabbitmqKitOf, SHARED_LAVINMQ } from './broker-admin.js';

const run = promisify(execFile);

/** Where a RabbitMQ node of its own runs: its name, AMQP port, Erlang distribution port and, if any, TLS port. */
export interface RabbitNodeSpec {
  readonly name: string;
  readonly port: number;
  readonly distPort: number;
  /** A TLS listener (with a throwaway CA, see secondNodeCaFile); none when left out. */
  readonly tlsPort?: number;
}

/** The machine's second RabbitMQ node, beside the broker at AMQP_URL, for failover and TLS. */
export const SECOND_NODE = { name: 'bridge-test-2@localhost', port: 5673, tlsPort: 5674, distPort: 25673 };
/** LavinMQ's second node: clear of RabbitMQ's second node and of LavinMQ's own derived ports. */
export const SECOND_LAVINMQ_PORT = 5692;
/** The RabbitMQ kit's second node (Erlang distribution on 25773, its epmd on 35773). */
export const SECOND_KIT_PORT = 5773;

/** A second, independent node of the broker under test (same product and kind), for failover. */
export interface SecondNode {
  readonly url: string;
  /**
   * A TLS listener (amqps `url`; `plainUrl` reaches the same node without TLS), with the CA file to
   * trust (valid once started), or why there is none.
   */
  readonly tls:
    | { readonly url: string; readonly plainUrl: string; caFile(): string }
    | { readonly unavailable: string };
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The second node for the broker `admin` drives, or why none can be started here: another LavinMQ
 * from the shared kit; another RabbitMQ from the kit when RABBITMQCTL is the kit's (4.x), or from
 * the machine's rabbitmq-server when the machine's rabbitmqctl administers the broker under test.
 */
export function secondNodeOf(admin: BrokerAdmin): SecondNode | { readonly unavailable: string } {
  if (admin.product === 'lavinmq') {
    if (!existsSync(SHARED_LAVINMQ)) return { unavailable: 'a second LavinMQ needs the shared lavinmq.sh kit' };
    return {
      url: `amqp://guest:guest@127.0.0.1:${SECOND_LAVINMQ_PORT}`,
      tls: { unavailable: 'the TLS drill configures a RabbitMQ node with its own test CA' },
      async start() {
        // From a folder that outlives this checkout (LavinMQ needs its working directory to stay).
        await run(SHARED_LAVINMQ, ['start', String(SECOND_LAVINMQ_PORT)], { timeout: 60_000, cwd: tmpdir() });
      },
      async stop() {
        await run(SHARED_LAVINMQ, ['stop', String(SECOND_LAVINMQ_PORT)]).catch(() => undefined);
      },
    };
  }
  const kit = rabbitmqKitOf(admin.ctlCommand);
  if (kit !== undefined) {
    // The kit's nodes take no TLS listener (rabbitmq.sh writes their rabbitmq.conf): the TLS drill, which
    // checks the bridge's side of TLS, uses the machine's second node when there is a rabbitmq-server.
    const machineTls = onPath('rabbitmq-server');
    return {
      url: `amqp://guest:guest@127.0.0.1:${SECOND_KIT_PORT}`,
      tls: machineTls
        ? {
            url: `amqps://guest:guest@localhost:${SECOND_NODE.tlsPort}`,
            plainUrl: `amqp://guest:guest@127.0.0.1:${SECOND_NODE.port}`,
            caFile: () => secondNodeCaFile,
          }
        : { unavailable: "the RabbitMQ kit's nodes take no TLS listener, and there is no rabbitmq-server here" },
      async start() {
        // A fresh node each time: nothing left from an earlier run.
        await run(kit, ['wipe', String(SECOND_KIT_PORT)], { timeout: 60_000 });
        await run(kit, ['start', String(SECOND_KIT_PORT)], { timeout: 180_000 });
        if (machineTls) await startSecondNode();
      },
      async stop() {
        await run(kit, ['wipe', String(SECOND_KIT_PORT)], { timeout: 60_000 }).catch(() => undefined);
        if (machineTls) await stopSecondNode();
      },
    };
  }
  if (admin.ctlCommand.join(' ') !== 'rabbitmqctl') {
    return {
      unavailable:
        "a second RabbitMQ node is started from the machine's rabbitmq-server or the shared kit, and " +
        `RABBITMQCTL (${admin.ctlCommand.join(' ')}) names neither`,
    };
  }
  return {
    url: `amqp://guest:guest@127.0.0.1:${SECOND_NODE.port}`,
    tls: {
      url: `amqps://guest:guest@localhost:${SECOND_NODE.tlsPort}`,
      plainUrl: `amqp://guest:guest@127.0.0.1:${SECOND_NODE.port}`,
      caFile: () => secondNodeCaFile,
    },
    async start() {
      await startSecondNode();
    },
    async stop() {
      await stopSecondNode();
    },
  };
}

function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, command)));
}

/** Where startSecondNode left the CA that signed its TLS certificate (for NODE_EXTRA_CA_CERTS). */
export let secondNodeCaFile = '';

/**
 * Starts a second, independent RabbitMQ node on this machine (its own name, ports and data dir),
 * for failover tests; `node` names another one (the chaos soak runs its own). Resolves with its data
 * dir (the caller's to remove once the node is stopped) when it accepts AMQP connections.
 */
export async function startSecondNode(node: RabbitNodeSpec = SECOND_NODE): Promise<string> {
  const base = await mkdtemp(join(tmpdir(), node === SECOND_NODE ? 'rabbit2-' : `rabbit-${node.name.split('@')[0]}-`));
  const tls: string[] = [];
  if (node.tlsPort !== undefined) {
    await makeCertificates(base);
    secondNodeCaFile = join(base, 'ca.pem');
    tls.push(
      `listeners.ssl.default = 127.0.0.1:${node.tlsPort}`,
      `ssl_options.cacertfile = ${join(base, 'ca.pem')}`,
      `ssl_options.certfile = ${join(base, 'server.pem')}`,
      `ssl_options.keyfile = ${join(base, 'server.key')}`,
      'ssl_options.verify = verify_none',
      'ssl_options.fail_if_no_peer_cert = false',
    );
  }
  await writeFile(join(base, 'rabbitmq.conf'), [`listeners.tcp.local = 127.0.0.1:${node.port}`, ...tls, ''].join('\n'));
  await writeFile(join(base, 'rabbitmq-env.conf'), '');
  await writeFile(join(base, 'enabled_plugins'), '[].\n');
  // The server runs as the rabbitmq user, which must own what it writes.
  await run('chown', ['-R', 'rabbitmq:rabbitmq', base]).catch(() => undefined);
  await run('rabbitmq-server', ['-detached'], {
    env: {
      ...process.env,
      RABBITMQ_NODENAME: node.name,
      RABBITMQ_NODE_PORT: String(node.port),
      RABBITMQ_DIST_PORT: String(node.distPort),
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
      await rabbitmqctl('-n', node.name, 'await_startup', '--timeout', '30');
      return base;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
  }
}

export async function stopSecondNode(node: RabbitNodeSpec = SECOND_NODE): Promise<void> {
  await rabbitmqctl('-n', node.name, 'stop').catch(() => undefined);
}

/** A throwaway CA and a server certificate for localhost / 127.0.0.1, made with openssl. */
async function makeCertificates(dir: string): Promise<void> {
  const at = (file: string) => join(dir, file);
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=bridge-test-ca',
    '-keyout',
    at('ca.key'),
    '-out',
    at('ca.pem'),
  ]);
  await run('openssl', [
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    '/CN=localhost',
    '-keyout',
    at('server.key'),
    '-out',
    at('server.csr'),
  ]);
  await writeFile(at('san.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    at('server.csr'),
    '-CA',
    at('ca.pem'),
    '-CAkey',
    at('ca.key'),
    '-CAcreateserial',
    '-days',
    '1',
    '-extfile',
    at('san.ext'),
    '-out',
    at('server.pem'),
  ]);
}
