import amqp from 'amqplib';
import { inject } from 'vitest';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { waitFor } from './bridge.js';
import type { BridgeProcess } from './bridge-process.js';
import type { ClusterInfo, ClusterNode, RabbitCluster } from './rabbitmq-cluster.js';
import { type Outcome, statusCounts, waitedMs } from './steady-load.js';

/** A request "waited" when it took this much longer than the delay it asked the worker for. */
export const WAITED_MS = 250;

/**
 * The drills' load per bridge: 100 requests a second (two bridges: 200), 10 s timeout, one request in
 * ten asking the worker to wait up to 3 s, so that workers hold requests when a node goes.
 */
export const DRILL_LOAD = { ratePerTarget: 100, timeoutMs: 10_000, slowEvery: 10, slowMaxDelayMs: 3_000 } as const;

/** The sample worker's default prefetch: the most requests a worker that dies can hand back. */
export const WORKER_PREFETCH = 32;

/** A sample worker on one node of the cluster, and when (if) it lost its connection. */
export interface NodeWorker {
  readonly node: ClusterNode;
  readonly worker: RunningWorker;
  /** Epoch ms when the broker took its connection away; undefined while it runs (or after close()). */
  readonly lostAt: () => number | undefined;
}

/**
 * One sample worker per node on a quorum queue, the first one declaring it. A quorum queue's leader
 * starts on the node of the client that declares it, so `nodes[0]` gets the leader (checked).
 */
export async function startNodeWorkers(
  cluster: RabbitCluster,
  queue: string,
  nodes: readonly ClusterNode[],
): Promise<NodeWorker[]> {
  const workers: NodeWorker[] = [];
  for (const node of nodes) workers.push(await startNodeWorker(node, queue));
  const leader = nodes[0];
  if (leader !== undefined) {
    const status = await cluster.quorumQueue(leader, queue);
    if (status.leader !== leader.name) throw new Error(`${queue}: leader on ${status.leader}, not ${leader.name}`);
  }
  return workers;
}

export async function startNodeWorker(node: ClusterNode, queue: string): Promise<NodeWorker> {
  const worker = await startEchoWorker({ url: node.url, queue, queueType: 'quorum', name: `worker-${node.label}` });
  let lostAt: number | undefined;
  void worker.closed.then(({ lost }) => {
    if (lost) lostAt = Date.now();
  });
  return { node, worker, lostAt: () => lostAt };
}

export async function closeWorkers(workers: readonly NodeWorker[]): Promise<void> {
  await Promise.all(workers.map(({ worker }) => worker.close()));
}

/** Deletes a drill's queues through a running node (quorum queues outlive their consumers). */
export async function deleteQueues(node: ClusterNode, ...queues: string[]): Promise<void> {
  const connection = await amqp.connect(node.url).catch(() => undefined);
  if (connection === undefined) return;
  connection.on('error', () => undefined);
  const channel = await connection.createChannel();
  channel.on('error', () => undefined);
  for (const queue of queues) await channel.deleteQueue(queue).catch(() => undefined);
  await connection.close().catch(() => undefined);
}

/** Sums of the workers' counters. */
export function workerTotals(workers: readonly NodeWorker[]) {
  const sum = (pick: (worker: RunningWorker) => number) =>
    workers.reduce((total, { worker }) => total + pick(worker), 0);
  return {
    received: sum((worker) => worker.stats.received),
    redelivered: sum((worker) => worker.stats.redelivered),
    replyConnectionsLost: sum((worker) => worker.stats.replyConnectionsLost),
    repliesDropped: sum((worker) => worker.stats.repliesDropped),
  };
}

/** One `amqp connected` line of a bridge process: when, and to which node. */
export interface Connected {
  readonly at: number;
  readonly node: ClusterNode;
}

/** Every `amqp connected` line the bridge has logged so far, in order. */
export function connections(bridge: BridgeProcess, cluster: RabbitCluster): Connected[] {
  return bridge.logs
    .filter((line) => line.msg === 'amqp connected')
    .map((line) => ({ at: Number(line.time), node: cluster.nodeOfUrl(String(line.broker)) }));
}

/** The node the bridge is connected to now (its latest `amqp connected`). */
export function currentNode(bridge: BridgeProcess, cluster: RabbitCluster): ClusterNode {
  const latest = connections(bridge, cluster).at(-1);
  if (latest === undefined) throw new Error('the bridge has not connected yet');
  return latest.node;
}

/** Epoch ms of the bridge's first `amqp disconnected` line after `since`, once it has logged it. */
export async function disconnectedAfter(bridge: BridgeProcess, since: number, timeoutMs: number): Promise<number> {
  const find = () => bridge.logs.find((line) => line.msg === 'amqp disconnected' && Number(line.time) >= since);
  // Log lines are written in batches (at least every 250 ms): wait for it to arrive.
  await waitFor(() => find() !== undefined, timeoutMs, 'the bridge to log its disconnection');
  return Number(find()?.time);
}

/** The bridge's first `amqp connected` after `since`. */
export async function reconnectedAfter(
  bridge: BridgeProcess,
  cluster: RabbitCluster,
  since: number,
  timeoutMs: number,
): Promise<Connected> {
  const find = () => connections(bridge, cluster).find((connected) => connected.at >= since);
  await waitFor(() => find() !== undefined, timeoutMs, 'the bridge to connect to another node');
  return find() as Connected;
}

/** Milliseconds from `faultAt` to the first 200 for a request sent at or after it; undefined if none. */
export function firstSuccessAfter(outcomes: readonly Outcome[], faultAt: number): number | undefined {
  let first: number | undefined;
  for (const outcome of outcomes) {
    if (outcome.status !== 200 || outcome.sentAt < faultAt) continue;
    if (first === undefined || outcome.doneAt < first) first = outcome.doneAt;
  }
  return first === undefined ? undefined : first - faultAt;
}

export interface DrillRow {
  /** What the table calls this bridge (or group of requests). */
  readonly label: string;
  readonly outcomes: readonly Outcome[];
  /** Where its fault starts, for "first 200 after the fault"; undefined when it had none. */
  readonly faultAt: number | undefined;
}

/** The per-drill table: statuses, time to first success after the fault, requests that waited, longest wait. */
export function drillTable(rows: readonly DrillRow[]): string {
  const lines = [
    `| requests | sent | statuses | first 200 after the fault | waited > ${WAITED_MS} ms | longest wait |`,
    '| --- | ---: | --- | ---: | ---: | ---: |',
  ];
  for (const { label, outcomes, faultAt } of rows) {
    const first = faultAt === undefined ? undefined : firstSuccessAfter(outcomes, faultAt);
    const waits = outcomes.map(waitedMs);
    const statuses = Object.entries(statusCounts(outcomes))
      .map(([status, count]) => `${status}: ${count}`)
      .join(', ');
    lines.push(
      `| ${label} | ${outcomes.length} | ${statuses} | ${first === undefined ? '—' : `${first} ms`} | ` +
        `${waits.filter((wait) => wait > WAITED_MS).length} | ${Math.max(0, ...waits)} ms |`,
    );
  }
  return lines.join('\n');
}

/** Seconds with one decimal, for the timing lines. */
export function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/**
 * How long requests took beyond the delay they asked for, before `faultAt` and from it on: the
 * machine's own noise, next to what the fault added.
 */
export function latencyLine(outcomes: readonly Outcome[], faultAt: number): string {
  const describe = (some: readonly Outcome[]) => {
    const waits = some.map(waitedMs).sort((a, b) => a - b);
    const at = (q: number) => waits[Math.min(waits.length - 1, Math.floor(q * waits.length))] ?? 0;
    return `p50 ${at(0.5)} ms, p99 ${at(0.99)} ms`;
  };
  return (
    `time beyond the asked delay: before the fault ${describe(outcomes.filter((one) => one.sentAt < faultAt))}; ` +
    `after it ${describe(outcomes.filter((one) => one.sentAt >= faultAt))}`
  );
}

/**
 * The cluster the project's global setup started, or why there is none: then the drills skip, and the
 * reason is printed once per file.
 */
export function providedCluster(): {
  readonly info: ClusterInfo | undefined;
  readonly unavailable: string | undefined;
} {
  const provided = inject('rabbitCluster');
  if (!('unavailable' in provided)) return { info: provided, unavailable: undefined };
  console.warn(`SKIPPED: cluster drills: ${provided.unavailable}`);
  return { info: undefined, unavailable: provided.unavailable };
}
