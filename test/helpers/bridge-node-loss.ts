import { expect } from 'vitest';
import { waitFor } from './bridge.js';
import { type BridgeProcess, startBridgeProcess } from './bridge-process.js';
import { uniqueName } from './broker.js';
import {
  type Connected,
  closeWorkers,
  connections,
  currentNode,
  DRILL_LOAD,
  deleteQueues,
  disconnectedAfter,
  drillTable,
  firstSuccessAfter,
  latencyLine,
  reconnectedAfter,
  seconds,
  startNodeWorkers,
  WORKER_PREFETCH,
  workerTotals,
} from './cluster-drill.js';
import type { ClusterNode, RabbitCluster } from './rabbitmq-cluster.js';
import { type Outcome, startSteadyLoad } from './steady-load.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A bridge process of a drill, under the name its tables print. */
export interface DrillBridge {
  readonly name: string;
  readonly process: BridgeProcess;
}

/** Bridge processes as replicas run them: every node of the cluster in AMQP_URLS, in the same order. */
export async function startDrillBridges(cluster: RabbitCluster, count: number): Promise<DrillBridge[]> {
  const bridges: DrillBridge[] = [];
  for (let index = 1; index <= count; index++) {
    const process = await startBridgeProcess({ AMQP_URLS: cluster.urls.join(','), APP_ID: `cluster-bridge-${index}` });
    bridges.push({ name: `bridge-${index}`, process });
    // Ready means connected, but log lines are written in batches: wait for the one that says where.
    await waitFor(() => connections(process, cluster).length > 0, 5_000, 'the bridge to log its connection');
  }
  return bridges;
}

export async function stopDrillBridges(bridges: readonly DrillBridge[]): Promise<void> {
  for (const { process } of bridges) {
    process.child.kill('SIGKILL');
    await process.exited;
  }
}

/** What one bridge on the stopped node went through. */
export interface HitBridge {
  readonly name: string;
  /** Its `amqp disconnected` log line, epoch ms: the fault, as the bridge saw it. */
  readonly faultAt: number;
  readonly reconnected: Connected;
  readonly outcomes: readonly Outcome[];
  /** From the fault to the first 200 for a request sent after it; undefined if none came. */
  readonly firstSuccessMs: number | undefined;
}

export interface BridgeNodeLoss {
  readonly target: ClusterNode;
  /** The node holding the request queue's leader (one no bridge used, where there was one). */
  readonly leader: ClusterNode;
  /** Where each bridge was before the fault. */
  readonly placement: ReadonlyMap<string, ClusterNode>;
  readonly hit: readonly HitBridge[];
  /** Requests through bridges on other nodes. */
  readonly spared: ReadonlyMap<string, readonly Outcome[]>;
  readonly outcomes: readonly Outcome[];
  readonly workers: ReturnType<typeof workerTotals> & {
    /** Workers on nodes that kept running which lost their connection anyway (a crash loop would show here). */
    readonly lostOnRunningNodes: number;
  };
  readonly stopMs: number;
  readonly restartMs: number;
  readonly tookMs: number;
}

/**
 * The drill "the node a bridge is connected to is stopped": a fresh quorum queue led from a node no
 * bridge uses, a sample worker on every node, steady load through every bridge; then the first
 * bridge's node is stopped (SIGTERM) and, once the load has run on for `afterMs` past that bridge's
 * reconnection, started again. Resolves with everything the tables and assertions need.
 */
export async function loseBridgeNode(
  cluster: RabbitCluster,
  bridges: readonly DrillBridge[],
  { beforeMs = 2_000, afterMs = 2_000 }: { beforeMs?: number; afterMs?: number } = {},
): Promise<BridgeNodeLoss> {
  const drillStarted = Date.now();
  const placement = new Map(bridges.map(({ name, process }) => [name, currentNode(process, cluster)]));
  const target = placement.get((bridges[0] as DrillBridge).name) as ClusterNode;
  const used = [...placement.values()];
  const leader = (cluster.nodes.find((node) => !used.includes(node)) ??
    cluster.nodes.find((node) => node !== target)) as ClusterNode;
  const queue = uniqueName('bridge-node-loss');
  const workers = await startNodeWorkers(cluster, queue, [leader, ...cluster.nodes.filter((node) => node !== leader)]);
  const onTarget = bridges.filter(({ name }) => placement.get(name) === target);
  const load = startSteadyLoad({
    targets: bridges.map(({ name, process }) => ({ name, baseUrl: process.baseUrl })),
    queue,
    ...DRILL_LOAD,
  });
  const faults = new Map<string, { faultAt: number; reconnected: Connected }>();
  let outcomes: readonly Outcome[] = [];
  let totals = workerTotals(workers);
  let lostOnRunningNodes = 0;
  let stopMs = 0;
  let restartMs = 0;
  let stopping: Promise<void> | undefined;
  try {
    await sleep(beforeMs);
    const stopAt = Date.now();
    stopping = cluster.stop(target).then(() => {
      stopMs = Date.now() - stopAt;
    });
    for (const { name, process } of onTarget) {
      const faultAt = await disconnectedAfter(process, stopAt, 30_000);
      faults.set(name, { faultAt, reconnected: await reconnectedAfter(process, cluster, faultAt, 10_000) });
    }
    await sleep(afterMs);
    await stopping;
  } finally {
    outcomes = await load.stop();
    totals = workerTotals(workers);
    lostOnRunningNodes = workers.filter(({ node, lostAt }) => node !== target && lostAt() !== undefined).length;
    await closeWorkers(workers);
    await deleteQueues(leader, queue);
    // Whatever happened, the next drill finds all three nodes running.
    if (stopping !== undefined) {
      await stopping.catch(() => undefined);
      const restartAt = Date.now();
      await cluster.start(target);
      restartMs = Date.now() - restartAt;
    }
  }
  const of = (name: string) => outcomes.filter((outcome) => outcome.target === name);
  return {
    target,
    leader,
    placement,
    hit: onTarget.map(({ name }) => {
      const fault = faults.get(name) as { faultAt: number; reconnected: Connected };
      return { name, ...fault, outcomes: of(name), firstSuccessMs: firstSuccessAfter(of(name), fault.faultAt) };
    }),
    spared: new Map(bridges.filter((bridge) => !onTarget.includes(bridge)).map(({ name }) => [name, of(name)])),
    outcomes,
    workers: { ...totals, lostOnRunningNodes },
    stopMs,
    restartMs,
    tookMs: Date.now() - drillStarted,
  };
}

/** The drill's table (per bridge) and what happened around it, as the test prints it. */
export function describeBridgeNodeLoss(result: BridgeNodeLoss, title: string): string {
  const placement = [...result.placement].map(([name, node]) => `${name} on ${node.label}`).join(', ');
  const rows = [
    ...result.hit.map((hit) => ({
      label: `${hit.name}, ${result.target.label} (stopped) → ${hit.reconnected.node.label}`,
      outcomes: hit.outcomes,
      faultAt: hit.faultAt,
    })),
    ...[...result.spared].map(([name, outcomes]) => ({
      label: `${name}, ${result.placement.get(name)?.label}`,
      outcomes,
      faultAt: undefined,
    })),
  ];
  const { workers } = result;
  return [
    `${title}: stop ${result.target.name}, the node of ${result.hit.map((hit) => hit.name).join(' and ')} ` +
      `(${placement}; queue leader on ${result.leader.label}); took ${seconds(result.tookMs)} ` +
      `(node stop ${seconds(result.stopMs)}, its restart ${seconds(result.restartMs)})`,
    drillTable(rows),
    latencyLine(result.outcomes, Math.min(...result.hit.map((hit) => hit.faultAt))),
    ...result.hit.map(
      (hit) =>
        `${hit.name}: connected to ${hit.reconnected.node.label} ${hit.reconnected.at - hit.faultAt} ms after its disconnection`,
    ),
    `workers: ${workers.received} requests, ${workers.redelivered} redelivered (held by the worker on ` +
      `${result.target.label}), ${workers.repliesDropped} replies to dead addresses dropped, reply connection ` +
      `reopened ${workers.replyConnectionsLost} times; workers on running nodes that lost their connection: ` +
      `${workers.lostOnRunningNodes}`,
  ].join('\n');
}

/**
 * What the issue asks of this drill: every request answered over HTTP and every 200 with its own
 * body; a bridge on the stopped node answers its in-flight calls 502 at once (503 while it
 * reconnects, nothing else), is on another node and has its first 200 within `firstSuccessWithinMs`;
 * every request through another bridge is 200; no worker on a running node loses its connection,
 * so nothing is redelivered beyond what the stopped node's worker held.
 */
export function expectBridgeNodeLoss(
  result: BridgeNodeLoss,
  { firstSuccessWithinMs }: { firstSuccessWithinMs: number },
) {
  expect(result.outcomes.filter((outcome) => outcome.status === 'error')).toEqual([]);
  expect(result.outcomes.filter((outcome) => outcome.status === 200 && !outcome.echoed)).toEqual([]);
  expect(result.hit.length).toBeGreaterThan(0);
  for (const hit of result.hit) {
    expect(hit.reconnected.node).not.toBe(result.target);
    for (const outcome of hit.outcomes) expect([200, 502, 503]).toContain(outcome.status);
    for (const lost of hit.outcomes.filter((outcome) => outcome.status === 502)) {
      expect(lost.doneAt - hit.faultAt).toBeLessThan(1_000);
    }
    expect(hit.firstSuccessMs).toBeLessThan(firstSuccessWithinMs);
  }
  for (const outcomes of result.spared.values()) {
    expect(outcomes.filter((outcome) => outcome.status !== 200)).toEqual([]);
  }
  expect(result.workers.lostOnRunningNodes).toBe(0);
  expect(result.workers.redelivered).toBeLessThanOrEqual(WORKER_PREFETCH);
}
