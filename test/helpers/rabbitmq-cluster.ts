/**
 * A real three-node RabbitMQ cluster on this machine, for the cluster drills (npm run test:cluster).
 * Its nodes have their own names, ports, data directories and Erlang cookie, so the shared broker on
 * 5672 (and its cookie file) is never touched, and nothing outside the cluster can join or stop it.
 *
 * What it runs, per node (env as in nodeEnv below):
 *   rabbitmq-server -detached
 *   rabbitmqctl --erlang-cookie <cookie> -n cluster-b@localhost stop_app
 *   rabbitmqctl --erlang-cookie <cookie> -n cluster-b@localhost join_cluster cluster-a@localhost
 *   rabbitmqctl --erlang-cookie <cookie> -n cluster-b@localhost start_app
 * A drill stops a node with SIGTERM (as a service manager would) and starts it with rabbitmq-server
 * again. At the end: `rabbitmqctl ... shutdown` on each node, then the data directory is removed.
 *
 * With RABBITMQ_KIT naming the shared kit's rabbitmq.sh, the nodes are that kit's RabbitMQ 4.x
 * instead (rabbit-5781@localhost ... on the same ports), clustered as its README says: one
 * RABBITMQ_ERLANG_COOKIE and one RABBITMQ_KIT_EPMD_PORT for every node and every `ctl`, then
 * `ctl P stop_app`, `ctl P join_cluster rabbit-5781@localhost`, `ctl P start_app`; `wipe` at the end.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { isPortOpen } from './ports.js';

const run = promisify(execFile);

/**
 * Clear of the shared broker (5672, 25672), the fault suite's second node (5673, 5674, 25673), LavinMQ
 * (5682, 5692) and the compose examples (5702).
 */
const NODES = [
  { name: 'cluster-a@localhost', port: 5781, distPort: 25781 },
  { name: 'cluster-b@localhost', port: 5782, distPort: 25782 },
  { name: 'cluster-c@localhost', port: 5783, distPort: 25783 },
] as const;

/** The shared RabbitMQ kit's rabbitmq.sh, when the cluster is to run its 4.x nodes (RABBITMQ_KIT). */
const KIT = process.env.RABBITMQ_KIT?.trim() || undefined;
/** The kit's nodes share one epmd, on the first node's derived port; the machine's (4369) is left alone. */
const KIT_EPMD_PORT = NODES[0].port + 30_000;
/** Where the kit keeps a node's state (pid file, data), seen from outside its root file system. */
const kitState = (port: number) =>
  join(process.env.RABBITMQ_ROOT ?? '/var/cache/rabbitmq-kit/root', `tmp/rabbitmq-${port}`);

/** Every run's directory starts with this, so that a later run can find what a killed one left. */
const DIR_PREFIX = 'amqp-rpc-bridge-cluster-';

export interface ClusterNode {
  readonly name: string;
  /** The short name the drills print: cluster-a, cluster-b, cluster-c. */
  readonly label: string;
  readonly port: number;
  readonly distPort: number;
  readonly url: string;
  readonly dir: string;
}

/** Plain data, so that vitest's global setup can hand it to the test files. */
export interface ClusterInfo {
  readonly base: string;
  readonly cookie: string;
  readonly nodes: readonly ClusterNode[];
  /** The kit's rabbitmq.sh whose 4.x nodes these are; undefined for the machine's rabbitmq-server. */
  readonly kit?: string;
}

/** What `rabbitmqctl list_queues` says of a quorum queue. */
export interface QuorumQueueStatus {
  readonly leader: string;
  readonly members: readonly string[];
  readonly online: readonly string[];
}

/** Why the cluster cannot be started here, or undefined when it can. */
export async function clusterUnavailable(): Promise<string | undefined> {
  if (KIT !== undefined) return existsSync(KIT) ? undefined : `RABBITMQ_KIT names ${KIT}, which does not exist`;
  try {
    await run('which', ['rabbitmq-server', 'rabbitmqctl']);
  } catch {
    return 'rabbitmq-server and rabbitmqctl are not on the PATH (the cluster drills start real RabbitMQ nodes)';
  }
  return undefined;
}

/** Starts three nodes, joins the second and third to the first, and resolves when all three run. */
export async function startRabbitCluster(): Promise<ClusterInfo> {
  await removeLeftovers();
  for (const node of NODES) {
    for (const port of [node.port, node.distPort]) {
      if (await isPortOpen(port)) throw new Error(`port ${port} is taken: the cluster drills need ${describePorts()}`);
    }
  }
  const base = await mkdtemp(join(tmpdir(), DIR_PREFIX));
  const info: ClusterInfo = {
    base,
    cookie: `cluster${randomBytes(16).toString('hex')}`,
    nodes: NODES.map((node) => ({
      ...node,
      name: KIT === undefined ? node.name : `rabbit-${node.port}@localhost`,
      label: node.name.split('@')[0] as string,
      url: `amqp://guest:guest@127.0.0.1:${node.port}`,
      dir: KIT === undefined ? join(base, node.name.split('@')[0] as string) : kitState(node.port),
    })),
    ...(KIT === undefined ? {} : { kit: KIT }),
  };
  try {
    // Kept beside the data, so that a later run can stop nodes a killed run left behind.
    await writeFile(join(base, 'cookie'), info.cookie, { mode: 0o600 });
    for (const node of KIT === undefined ? info.nodes : []) {
      await mkdir(node.dir);
      await writeFile(join(node.dir, 'rabbitmq.conf'), `listeners.tcp.local = 127.0.0.1:${node.port}\n`);
      await writeFile(join(node.dir, 'rabbitmq-env.conf'), '');
      await writeFile(join(node.dir, 'enabled_plugins'), '[].\n');
    }
    // The server runs as the rabbitmq user (when started by root), which must own what it writes.
    await run('chown', ['-R', 'rabbitmq:rabbitmq', base]).catch(() => undefined);
    const cluster = new RabbitCluster(info);
    await Promise.all(info.nodes.map((node) => cluster.launch(node)));
    const [first, ...others] = info.nodes as [ClusterNode, ...ClusterNode[]];
    for (const node of others) {
      await cluster.ctl(node, 'stop_app');
      await cluster.ctl(node, 'join_cluster', first.name);
      await cluster.ctl(node, 'start_app');
    }
    const running = await cluster.runningNodes(first);
    if (running.length !== info.nodes.length) throw new Error(`the cluster runs only ${running.join(', ')}`);
    return info;
  } catch (err) {
    await removeRabbitCluster(info);
    throw err;
  }
}

/** Stops every node of the cluster and removes its directory. Never throws. */
export async function removeRabbitCluster(info: ClusterInfo): Promise<void> {
  if (info.kit !== undefined) {
    const kit = info.kit;
    await Promise.all(info.nodes.map((node) => wipeKitNode(kit, node.port, info.cookie).catch(() => undefined)));
  }
  await Promise.all(info.nodes.map((node) => stopOrKill(node.name, node.dir, info.cookie).catch(() => undefined)));
  await rm(info.base, { recursive: true, force: true });
}

/** The cluster's nodes, driven with the broker's own tools. */
export class RabbitCluster {
  constructor(readonly info: ClusterInfo) {}

  get nodes(): readonly ClusterNode[] {
    return this.info.nodes;
  }

  get urls(): readonly string[] {
    return this.info.nodes.map((node) => node.url);
  }

  /** The node whose AMQP port a (possibly redacted) URL names. */
  nodeOfUrl(url: string): ClusterNode {
    const port = Number(new URL(url).port);
    const node = this.info.nodes.find((candidate) => candidate.port === port);
    if (node === undefined) throw new Error(`${url} is not a node of the cluster`);
    return node;
  }

  /** rabbitmqctl against one node, with the cluster's own cookie. */
  async ctl(node: ClusterNode, ...args: string[]): Promise<string> {
    const { stdout } =
      this.info.kit === undefined
        ? await run('rabbitmqctl', ['--erlang-cookie', this.info.cookie, '-n', node.name, ...args], {
            timeout: 120_000,
          })
        : await run(this.info.kit, ['ctl', String(node.port), ...args], {
            env: kitEnv(this.info.cookie),
            timeout: 120_000,
          });
    return stdout;
  }

  /**
   * Stops the node the way a service manager does (SIGTERM: RabbitMQ closes its client connections
   * at once, then shuts down), resolving when its Erlang VM has exited. No rabbitmqctl here: its own
   * start-up costs a second of CPU, which on a small machine would be part of the drill.
   */
  async stop(node: ClusterNode): Promise<void> {
    const pid = await nodePid(node.name, node.dir, this.info.cookie);
    if (pid === undefined) throw new Error(`${node.name} does not run`);
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 60_000;
    while ((await nodePid(node.name, node.dir, this.info.cookie)) !== undefined) {
      if (Date.now() > deadline) throw new Error(`${node.name} did not stop within 60 s of SIGTERM`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Starts a stopped node again: it rejoins the cluster from its data directory. */
  async start(node: ClusterNode): Promise<void> {
    await this.launch(node);
  }

  /** Starts the node's server and resolves when it accepts AMQP connections. */
  async launch(node: ClusterNode): Promise<void> {
    if (this.info.kit === undefined) {
      await run('rabbitmq-server', ['-detached'], { env: nodeEnv(this.info, node), timeout: 60_000 });
    } else {
      // The kit's start waits until the node has booted (and, when it rejoins, found its peers).
      await run(this.info.kit, ['start', String(node.port)], { env: kitEnv(this.info.cookie), timeout: 180_000 });
    }
    // -detached returns before the node has booted; its listener opens last.
    const deadline = Date.now() + 120_000;
    for (;;) {
      try {
        const connection = await amqp.connect(node.url);
        await connection.close();
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`${node.name} did not accept connections in 120 s: ${err}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  /** The nodes that run the rabbit application, as `via` sees the cluster. */
  async runningNodes(via: ClusterNode): Promise<string[]> {
    const status = JSON.parse(await this.ctl(via, 'cluster_status', '--formatter', 'json')) as {
      running_nodes?: string[];
    };
    return status.running_nodes ?? [];
  }

  /** Leader, members and online members of a quorum queue, asked of the node `via` (which must run). */
  async quorumQueue(via: ClusterNode, queue: string): Promise<QuorumQueueStatus> {
    const stdout = await this.ctl(via, 'list_queues', 'name', 'leader', 'members', 'online', '--formatter', 'json');
    const rows = JSON.parse(stdout) as Array<{ name: string; leader: string; members: string[]; online: string[] }>;
    const row = rows.find((candidate) => candidate.name === queue);
    if (row === undefined) throw new Error(`no queue ${queue} on the cluster`);
    return { leader: row.leader, members: row.members, online: row.online };
  }

  /** The OS pid of a running node's Erlang VM, from the pid file it wrote. */
  pidOf(node: ClusterNode): number {
    const pid = Number(readFileSync(join(node.dir, 'pid'), 'utf8').trim());
    if (!(pid > 0)) throw new Error(`${node.name} wrote no pid file`);
    return pid;
  }

  /** The cluster node called `name` (cluster-a@localhost). */
  node(name: string): ClusterNode {
    const node = this.info.nodes.find((candidate) => candidate.name === name);
    if (node === undefined) throw new Error(`${name} is not a node of the cluster`);
    return node;
  }
}

function nodeEnv(info: ClusterInfo, node: ClusterNode): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    RABBITMQ_NODENAME: node.name,
    RABBITMQ_NODE_PORT: String(node.port),
    RABBITMQ_DIST_PORT: String(node.distPort),
    RABBITMQ_CONFIG_FILE: join(node.dir, 'rabbitmq'),
    // Not /etc/rabbitmq/rabbitmq-env.conf: that one names the shared node.
    RABBITMQ_CONF_ENV_FILE: join(node.dir, 'rabbitmq-env.conf'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(node.dir, 'enabled_plugins'),
    RABBITMQ_MNESIA_BASE: join(node.dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(node.dir, 'log'),
    RABBITMQ_PID_FILE: join(node.dir, 'pid'),
    // The cluster's own cookie, given to the VM: the cookie file in the server's home (the shared node's)
    // is neither read nor written. Inter-node traffic stays on loopback.
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: `-setcookie ${info.cookie} -kernel inet_dist_use_interface {127,0,0,1}`,
  };
  delete env.RABBITMQ_ERLANG_COOKIE;
  return env;
}

/**
 * The OS pid of a node of ours while it runs: its environment names it, and its VM's command line has
 * our cookie (the kit's nodes read theirs from a file in their own state directory instead).
 */
async function nodePid(name: string, dir: string, cookie: string): Promise<number | undefined> {
  const pid = Number((await readFile(join(dir, 'pid'), 'utf8').catch(() => '')).trim());
  if (!(pid > 0)) return undefined;
  const commandLine = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
  const environment = (await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '')).split('\0');
  const ours = KIT !== undefined || commandLine.includes(cookie);
  return ours && environment.includes(`RABBITMQ_NODENAME=${name}`) ? pid : undefined;
}

/** What every kit command of the cluster needs: its cookie and its one epmd. */
function kitEnv(cookie: string): NodeJS.ProcessEnv {
  return { ...process.env, RABBITMQ_ERLANG_COOKIE: cookie, RABBITMQ_KIT_EPMD_PORT: String(KIT_EPMD_PORT) };
}

/** Stops a kit node and removes its data (and cluster membership). */
async function wipeKitNode(kit: string, port: number, cookie: string): Promise<void> {
  await run(kit, ['wipe', String(port)], { env: kitEnv(cookie), timeout: 90_000 });
}

/** Stops a node of ours, if it runs: politely with its cookie, else by its pid. */
async function stopOrKill(name: string, dir: string, cookie: string): Promise<void> {
  // Only our nodes take our cookie, so asking politely is safe even when the pid file is gone.
  await run('rabbitmqctl', ['--erlang-cookie', cookie, '-n', name, 'shutdown'], { timeout: 60_000 }).catch(
    () => undefined,
  );
  const pid = await nodePid(name, dir, cookie);
  if (pid !== undefined) process.kill(pid, 'SIGKILL');
}

/** Nodes and directories a run that was killed before its teardown left behind. */
async function removeLeftovers(): Promise<void> {
  if (KIT !== undefined) {
    // The kit's nodes on the cluster's ports are the drills' own: a killed run's are wiped.
    for (const node of NODES) await wipeKitNode(KIT, node.port, '').catch(() => undefined);
  }
  const entries = await readdir(tmpdir()).catch(() => [] as string[]);
  for (const entry of entries.filter((name) => name.startsWith(DIR_PREFIX))) {
    const base = join(tmpdir(), entry);
    const cookie = await readFile(join(base, 'cookie'), 'utf8').catch(() => undefined);
    if (cookie !== undefined) {
      for (const node of NODES) {
        const dir = join(base, node.name.split('@')[0] as string);
        await stopOrKill(node.name, dir, cookie.trim()).catch(() => undefined);
      }
    }
    await rm(base, { recursive: true, force: true });
  }
}

function describePorts(): string {
  return NODES.map((node) => `${node.port} and ${node.distPort}`).join(', ');
}
