/**
 * Node loss under steady load: two bridge processes listing all three nodes in AMQP_URLS, a quorum
 * request queue with a sample worker on every node, and an open-loop load through both bridges
 * (every request accounted for). The drills run in order: (1) the node a bridge is connected to
 * stops, and comes back; (2) the node holding the queue's leader stops; (3) it comes back under load.
 */
import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/bridge.js';
import {
  type DrillBridge,
  describeBridgeNodeLoss,
  expectBridgeNodeLoss,
  loseBridgeNode,
  startDrillBridges,
  stopDrillBridges,
} from '../helpers/bridge-node-loss.js';
import { uniqueName } from '../helpers/broker.js';
import {
  closeWorkers,
  currentNode,
  DRILL_LOAD,
  deleteQueues,
  drillTable,
  latencyLine,
  type NodeWorker,
  providedCluster,
  seconds,
  startNodeWorker,
  startNodeWorkers,
  WORKER_PREFETCH,
  workerTotals,
} from '../helpers/cluster-drill.js';
import { type ClusterInfo, type ClusterNode, RabbitCluster } from '../helpers/rabbitmq-cluster.js';
import { type Outcome, rpcCall, startSteadyLoad } from '../helpers/steady-load.js';

const { info: clusterInfo, unavailable } = providedCluster();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(unavailable !== undefined)('a three-node RabbitMQ cluster under steady load', () => {
  let cluster: RabbitCluster;
  let bridges: DrillBridge[] = [];
  /** Nodes a drill left stopped, for the next drill (or afterAll) to start again. */
  const stopped = new Set<ClusterNode>();
  /** The queue and workers of drill 2, which drill 3 brings back to full strength. */
  let leaderDrill: { queue: string; workers: NodeWorker[]; stoppedLeader: ClusterNode } | undefined;
  const queues: string[] = [];

  const targets = () => bridges.map(({ name, process }) => ({ name, baseUrl: process.baseUrl }));
  const bridgeNodes = () => bridges.map(({ process }) => currentNode(process, cluster));

  beforeAll(async () => {
    cluster = new RabbitCluster(clusterInfo as ClusterInfo);
    bridges = await startDrillBridges(cluster, 2);
  });

  afterAll(async () => {
    await stopDrillBridges(bridges);
    if (leaderDrill !== undefined) await closeWorkers(leaderDrill.workers);
    for (const node of stopped) await cluster.start(node);
    await deleteQueues(cluster.nodes[0] as ClusterNode, ...queues);
  });

  it('1. loses the node a bridge is connected to: its in-flight calls get 502 at once, it serves from another node within 1 s, every other request 200', async () => {
    const result = await loseBridgeNode(cluster, bridges);
    console.info(describeBridgeNodeLoss(result, 'drill 1'));
    expectBridgeNodeLoss(result, { firstSuccessWithinMs: 1_000 });
  });

  it('2. loses the node holding the queue leader: a new leader is elected, requests queued before the loss are answered, nobody waits past the timeout', async () => {
    const drillStarted = Date.now();
    // The leader on a node no bridge uses: this drill is about the queue alone.
    const leader = cluster.nodes.find((node) => !bridgeNodes().includes(node)) as ClusterNode;
    const survivors = cluster.nodes.filter((node) => node !== leader);
    const queue = uniqueName('drill-leader');
    const backlog = uniqueName('drill-backlog');
    queues.push(queue, backlog);
    const workers = await startNodeWorkers(cluster, queue, [leader, ...survivors]);
    leaderDrill = { queue, workers, stoppedLeader: leader };
    // A second queue, led from the same node, that nobody consumes until after the loss.
    const admin = await amqp.connect(leader.url);
    admin.on('error', () => undefined);
    const adminChannel = await admin.createChannel();
    adminChannel.on('error', () => undefined);
    await adminChannel.assertQueue(backlog, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    expect((await cluster.quorumQueue(leader, backlog)).leader).toBe(leader.name);
    await admin.close();

    const load = startSteadyLoad({ targets: targets(), queue, ...DRILL_LOAD });
    let outcomes: readonly Outcome[] = [];
    let queued: Outcome[] = [];
    let faultAt = 0;
    let newLeader = '';
    let stopMs = 0;
    try {
      await sleep(2_000);
      const queuedCalls = Array.from({ length: 50 }, (_, index) =>
        rpcCall(targets()[index % 2] as { name: string; baseUrl: string }, backlog, `queued-${index}`, {
          timeoutMs: 30_000,
        }),
      );
      const observer = await amqp.connect((survivors[0] as ClusterNode).url);
      observer.on('error', () => undefined);
      const observing = await observer.createChannel();
      const queuedBy = Date.now() + 10_000;
      while ((await observing.checkQueue(backlog)).messageCount < 50) {
        if (Date.now() > queuedBy) throw new Error('the 50 requests did not reach the backlog queue');
        await sleep(50);
      }
      await observer.close();

      const stopAt = Date.now();
      const stopping = cluster.stop(leader);
      stopped.add(leader);
      const leaderWorker = workers.find(({ node }) => node === leader) as NodeWorker;
      await waitFor(
        () => leaderWorker.lostAt() !== undefined,
        30_000,
        "the leader node's worker to lose its connection",
      );
      faultAt = leaderWorker.lostAt() as number;
      // Workers for the backlog at once, on the nodes that are left: it is theirs once a new leader is elected.
      const backlogWorkers = await Promise.all(survivors.map((node) => startNodeWorker(node, backlog)));
      queued = await Promise.all(queuedCalls);
      await closeWorkers(backlogWorkers);
      await stopping;
      stopMs = Date.now() - stopAt;
      const deadline = Date.now() + 30_000;
      while (newLeader === '' && Date.now() < deadline) {
        const status = await cluster.quorumQueue(survivors[0] as ClusterNode, queue).catch(() => undefined);
        if (status !== undefined && status.leader !== leader.name && status.online.includes(status.leader)) {
          newLeader = status.leader;
        }
      }
      await sleep(1_000);
    } finally {
      outcomes = await load.stop();
    }
    const totals = workerTotals(workers);
    const rows = [
      ...bridges.map(({ name, process }) => ({
        label: `${name} on ${currentNode(process, cluster).label}`,
        outcomes: outcomes.filter((outcome) => outcome.target === name),
        faultAt,
      })),
      { label: 'queued before the loss (backlog queue)', outcomes: queued, faultAt: undefined },
    ];
    console.info(
      [
        `drill 2: stop ${leader.name}, the node holding the leader of the request queue (bridges on ${bridgeNodes()
          .map((node) => node.label)
          .join(' and ')}); drill took ${seconds(Date.now() - drillStarted)} (node stop ${seconds(stopMs)})`,
        drillTable(rows),
        latencyLine(outcomes, faultAt),
        `new leader ${newLeader}; the 50 queued requests were answered ` +
          `${Math.min(...queued.map((one) => one.doneAt - faultAt))}–${Math.max(...queued.map((one) => one.doneAt - faultAt))} ms ` +
          'after the fault, by workers that began consuming the backlog queue right after it',
        `workers: ${totals.received} requests, ${totals.redelivered} redelivered (held by the worker on ${leader.label}), ` +
          `${totals.repliesDropped} replies to dead addresses dropped`,
      ].join('\n'),
    );

    expect(survivors.map((node) => node.name)).toContain(newLeader);
    expect(queued.filter((outcome) => outcome.status !== 200 || !outcome.echoed)).toEqual([]);
    expect(outcomes.filter((outcome) => outcome.status === 'error')).toEqual([]);
    expect(outcomes.filter((outcome) => outcome.status === 200 && !outcome.echoed)).toEqual([]);
    for (const outcome of outcomes) {
      expect([200, 504]).toContain(outcome.status);
      expect(outcome.doneAt - outcome.sentAt).toBeLessThanOrEqual(DRILL_LOAD.timeoutMs + 1_000);
    }
    for (const { node, lostAt } of workers) if (node !== leader) expect(lostAt()).toBeUndefined();
    expect(totals.redelivered).toBeLessThanOrEqual(WORKER_PREFETCH);
  });

  it('3. brings the stopped node back under load: it rejoins, its worker takes its share, every request 200', async () => {
    const drillStarted = Date.now();
    if (leaderDrill === undefined) throw new Error('drill 2 did not run');
    const { queue, workers, stoppedLeader } = leaderDrill;
    const running = workers.filter(({ lostAt }) => lostAt() === undefined);
    const load = startSteadyLoad({ targets: targets(), queue, ...DRILL_LOAD });
    let outcomes: readonly Outcome[] = [];
    let backAt = 0;
    let startMs = 0;
    let windowStart = 0;
    const returned: NodeWorker[] = [];
    try {
      await sleep(1_000);
      const startAt = Date.now();
      if (stopped.has(stoppedLeader)) {
        await cluster.start(stoppedLeader);
        stopped.delete(stoppedLeader);
      }
      startMs = Date.now() - startAt;
      // As a supervisor would: the worker on the returned node starts again.
      returned.push(await startNodeWorker(stoppedLeader, queue));
      backAt = Date.now();
      await sleep(1_000);
      windowStart = Date.now();
      await sleep(3_000);
    } finally {
      outcomes = await load.stop();
    }
    const status = await cluster.quorumQueue(stoppedLeader, queue);
    await closeWorkers([...running, ...returned]);
    leaderDrill = undefined;
    const window = outcomes.filter((outcome) => outcome.sentAt >= windowStart && outcome.status === 200);
    const shares = cluster.nodes.map((node) => ({
      node,
      share: window.filter((outcome) => outcome.worker === `worker-${node.label}`).length / Math.max(1, window.length),
    }));
    const firstByReturned = outcomes
      .filter((outcome) => outcome.worker === `worker-${stoppedLeader.label}`)
      .reduce((first, outcome) => Math.min(first, outcome.doneAt), Number.POSITIVE_INFINITY);
    console.info(
      [
        `drill 3: start ${stoppedLeader.name} again under load (back in ${seconds(startMs)}), restart its worker; ` +
          `drill took ${seconds(Date.now() - drillStarted)}`,
        drillTable(
          bridges.map(({ name, process }) => ({
            label: `${name} on ${currentNode(process, cluster).label}`,
            outcomes: outcomes.filter((outcome) => outcome.target === name),
            faultAt: backAt,
          })),
        ),
        latencyLine(outcomes, backAt),
        `first request answered by the worker on ${stoppedLeader.label} ${firstByReturned - backAt} ms after it started; ` +
          `share of the last 3 s by worker: ${shares.map(({ node, share }) => `${node.label} ${(share * 100).toFixed(0)} %`).join(', ')}; ` +
          `queue members online: ${status.online.length}/${status.members.length}, leader ${status.leader}`,
      ].join('\n'),
    );

    expect(outcomes.filter((outcome) => outcome.status !== 200 || !outcome.echoed)).toEqual([]);
    expect(status.online).toHaveLength(3);
    for (const { share } of shares) expect(share).toBeGreaterThan(0.15);
  });
});
