/**
 * What a broker node and a worker cost per RPC, for the capacity table in docs/scaling.md.
 * The benchmark (npm run bench) measures the bridge's CPU per request; this measures the other two:
 * a paced AMQP client doing per request what the bridge does (a confirmed, mandatory publish with
 * direct reply-to) at 300 RPC/s for 10 s, against the sample worker running as its own process. CPU
 * comes from /proc for the worker and every node, less what each used while idle for as long.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import amqp from 'amqplib';
import { describe, expect, it } from 'vitest';
import { cpuMs, startChild } from '../../bench/lib/processes.js';
import { uniqueName } from '../helpers/broker.js';
import { providedCluster } from '../helpers/cluster-drill.js';
import { type ClusterInfo, type ClusterNode, RabbitCluster } from '../helpers/rabbitmq-cluster.js';

const { info: clusterInfo, unavailable } = providedCluster();

const RATE = 300;
const LOADED_MS = 10_000;
const IDLE_MS = 5_000;

interface Measured {
  readonly setUp: string;
  readonly rpcs: number;
  readonly seconds: number;
  /** µs of CPU per RPC, per node, idle use taken off. */
  readonly nodeMicros: ReadonlyMap<string, number>;
  readonly workerMicros: number;
}

/** Paced RPCs from `client` to `queue` for `ms`; resolves with how many were answered. */
async function pacedRpcs(client: ClusterNode, queue: string, ms: number): Promise<number> {
  const connection = await amqp.connect(client.url, { noDelay: true });
  const channel = await connection.createConfirmChannel();
  let answered = 0;
  await channel.consume('amq.rabbitmq.reply-to', () => answered++, { noAck: true });
  const body = Buffer.alloc(100, 'x');
  const started = Date.now();
  let sent = 0;
  while (Date.now() - started < ms) {
    const due = Math.floor(((Date.now() - started) * RATE) / 1_000);
    for (; sent < due; sent++) {
      channel.sendToQueue(queue, body, {
        correlationId: String(sent),
        replyTo: 'amq.rabbitmq.reply-to',
        mandatory: true,
        expiration: '5000',
      });
    }
    await sleep(10);
  }
  const deadline = Date.now() + 5_000;
  while (answered < sent && Date.now() < deadline) await sleep(20);
  await connection.close();
  expect(answered).toBe(sent);
  return answered;
}

async function measure(
  cluster: RabbitCluster,
  setUp: string,
  { client, worker, queueType }: { client: ClusterNode; worker: ClusterNode; queueType: 'classic' | 'quorum' },
): Promise<Measured> {
  const queue = uniqueName('capacity');
  const child = startChild(process.execPath, ['--import', 'tsx', 'examples/echo-worker.ts'], {
    AMQP_URL: worker.url,
    RPC_QUEUE: queue,
    QUEUE_TYPE: queueType,
  });
  try {
    await child.waitForLine(/consuming/, 30_000);
    await pacedRpcs(client, queue, 1_000);
    const nodePids = new Map(cluster.nodes.map((node) => [node.label, cluster.pidOf(node)]));
    const cpu = () => ({
      worker: cpuMs(child.pid),
      nodes: new Map([...nodePids].map(([label, pid]) => [label, cpuMs(pid)])),
      at: performance.now(),
    });
    const idleFrom = cpu();
    await sleep(IDLE_MS);
    const loadedFrom = cpu();
    const rpcs = await pacedRpcs(client, queue, LOADED_MS);
    const loadedTo = cpu();
    const scale = (loadedTo.at - loadedFrom.at) / (loadedFrom.at - idleFrom.at);
    const perRpc = (idle: number, loaded: number) => Math.max(0, ((loaded - idle * scale) * 1000) / rpcs);
    return {
      setUp,
      rpcs,
      seconds: (loadedTo.at - loadedFrom.at) / 1000,
      nodeMicros: new Map(
        [...nodePids.keys()].map((label) => {
          const idle = (loadedFrom.nodes.get(label) ?? 0) - (idleFrom.nodes.get(label) ?? 0);
          const loaded = (loadedTo.nodes.get(label) ?? 0) - (loadedFrom.nodes.get(label) ?? 0);
          return [label, perRpc(idle, loaded)];
        }),
      ),
      workerMicros: perRpc(loadedFrom.worker - idleFrom.worker, loadedTo.worker - loadedFrom.worker),
    };
  } finally {
    await child.stop();
    const connection = await amqp.connect(worker.url);
    const channel = await connection.createChannel();
    await channel.deleteQueue(queue).catch(() => undefined);
    await connection.close();
  }
}

describe.skipIf(unavailable !== undefined)('what a broker node and a worker cost per RPC', () => {
  it('measures CPU per RPC at 300 RPC/s: a classic queue on one node, and a quorum queue over three', async () => {
    const cluster = new RabbitCluster(clusterInfo as ClusterInfo);
    const [a, b] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    const results = [
      await measure(cluster, 'classic queue; client, queue and worker on one node', {
        client: a,
        worker: a,
        queueType: 'classic',
      }),
      await measure(cluster, 'quorum queue led from the worker’s node; client on another node', {
        client: a,
        worker: b,
        queueType: 'quorum',
      }),
    ];
    const lines = [
      '| set-up | RPCs | broker CPU per RPC, all nodes | per node | worker CPU per RPC |',
      '| --- | ---: | ---: | --- | ---: |',
      ...results.map((result) => {
        const total = [...result.nodeMicros.values()].reduce((sum, micros) => sum + micros, 0);
        const perNode = [...result.nodeMicros].map(([label, micros]) => `${label} ${micros.toFixed(0)} µs`).join(', ');
        return `| ${result.setUp} | ${result.rpcs} in ${result.seconds.toFixed(1)} s | ${total.toFixed(0)} µs | ${perNode} | ${result.workerMicros.toFixed(0)} µs |`;
      }),
    ];
    console.info(`CPU per RPC at ${RATE} RPC/s (idle use taken off):\n${lines.join('\n')}`);
    for (const result of results) expect(result.workerMicros).toBeGreaterThan(0);
  });
});
