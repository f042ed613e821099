/**
 * A reply to a direct reply-to address whose requester was on a node that has stopped. On RabbitMQ
 * 3.10.8 publishing it crashes the publishing channel ({case_clause,error} in
 * rabbit_channel:deliver_reply) and the broker closes that whole connection (541): a worker that
 * replies on its consuming connection loses it, and its unacked requests go to the next worker, which
 * crashes the same way. The sample worker replies on a connection of its own and survives. RabbitMQ
 * 4.2 reimplemented direct reply-to: on 4.3 (RABBITMQ_KIT) the reply is dropped and both workers keep
 * their connections.
 */
import amqp, { type ChannelModel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/bridge.js';
import { uniqueName } from '../helpers/broker.js';
import { brokerVersion, versionAtLeast } from '../helpers/broker-admin.js';
import {
  closeWorkers,
  type NodeWorker,
  providedCluster,
  startNodeWorker,
  startNodeWorkers,
} from '../helpers/cluster-drill.js';
import { type ClusterInfo, type ClusterNode, RabbitCluster } from '../helpers/rabbitmq-cluster.js';

const { info: clusterInfo, unavailable } = providedCluster();

/** A client that sends requests with direct reply-to from one node and collects the replies' correlation ids. */
async function requester(node: ClusterNode) {
  const connection = await amqp.connect(node.url);
  connection.on('error', () => undefined);
  const channel = await connection.createChannel();
  channel.on('error', () => undefined);
  const replies: string[] = [];
  await channel.consume(
    'amq.rabbitmq.reply-to',
    (message) => message && replies.push(message.properties.correlationId),
    {
      noAck: true,
    },
  );
  return {
    replies,
    send(queue: string, id: string) {
      channel.sendToQueue(queue, Buffer.from(id), {
        correlationId: id,
        replyTo: 'amq.rabbitmq.reply-to',
        expiration: '60000',
      });
    },
    close: () => connection.close().catch(() => undefined),
  };
}

/** A worker as a first draft would write it: the reply on the consuming channel, then the ack. */
async function replyOnConsumingChannel(
  node: ClusterNode,
  queue: string,
): Promise<{ lostWith: Promise<string>; close(): Promise<void> }> {
  const connection: ChannelModel = await amqp.connect(node.url);
  connection.on('error', () => undefined);
  const lostWith = new Promise<string>((resolve) =>
    connection.once('close', (err?: Error) => resolve(err?.message ?? 'closed')),
  );
  const channel = await connection.createChannel();
  channel.on('error', () => undefined);
  await channel.consume(queue, (message) => {
    if (message === null) return;
    try {
      channel.sendToQueue(String(message.properties.replyTo), message.content, {
        correlationId: message.properties.correlationId,
      });
      channel.ack(message);
    } catch {
      // the channel is already gone
    }
  });
  return { lostWith, close: () => connection.close().catch(() => undefined) };
}

describe.skipIf(unavailable !== undefined)('replies to a requester whose node has stopped', () => {
  let cluster: RabbitCluster;
  let requesterNode: ClusterNode;
  let stopped = false;

  beforeAll(() => {
    cluster = new RabbitCluster(clusterInfo as ClusterInfo);
    requesterNode = cluster.nodes[0] as ClusterNode;
  });

  afterAll(async () => {
    if (stopped) await cluster.start(requesterNode);
  });

  it('take down a worker that replies on its consuming connection on RabbitMQ 3.10 (not on 4.2+), never the sample worker, which answers everyone else', async () => {
    const [, workerNode, liveNode] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    const version = await brokerVersion(workerNode.url);
    // Before 4.2 the reply crashes the channel that publishes it; from 4.2 on it is dropped.
    const crashes = !versionAtLeast(version, '4.2');
    const queue = uniqueName('dead-reply');
    const rawQueue = uniqueName('dead-reply-raw');
    // Declared with leaders away from the node that will stop; nobody consumes yet.
    const declaring = await startNodeWorkers(cluster, queue, [workerNode]);
    await closeWorkers(declaring);
    const admin = await amqp.connect(workerNode.url);
    admin.on('error', () => undefined);
    const adminChannel = await admin.createChannel();
    await adminChannel.assertQueue(rawQueue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });

    const doomed = await requester(requesterNode);
    const live = await requester(liveNode);
    for (let i = 1; i <= 3; i++) {
      doomed.send(queue, `doomed-${i}`);
      live.send(queue, `live-${i}`);
      doomed.send(rawQueue, `doomed-raw-${i}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    await cluster.stop(requesterNode);
    stopped = true;
    await doomed.close();

    const workers: NodeWorker[] = [];
    try {
      // Both workers get requests from the stopped node, in among the live ones.
      workers.push(await startNodeWorker(workerNode, queue), await startNodeWorker(liveNode, queue));
      await waitFor(() => live.replies.length === 3, 10_000, 'the live requester to get its three replies');
      const total = (stat: 'received' | 'repliesDropped') =>
        workers.reduce((sum, { worker }) => sum + worker.stats[stat], 0);
      if (crashes) await waitFor(() => total('repliesDropped') === 3, 10_000, 'the three dead replies to be dropped');
      else await waitFor(() => total('received') === 6, 10_000, 'the workers to take all six requests');
      await waitFor(
        async () => (await adminChannel.checkQueue(queue)).messageCount === 0,
        10_000,
        'every request acked',
      );
      expect(total('repliesDropped')).toBe(crashes ? 3 : 0);
      expect(live.replies.sort()).toEqual(['live-1', 'live-2', 'live-3']);
      for (const { worker, lostAt } of workers) {
        expect(lostAt()).toBeUndefined();
        expect(worker.stats.redelivered).toBe(0);
      }
      const lost = workers.reduce((sum, { worker }) => sum + worker.stats.replyConnectionsLost, 0);
      await closeWorkers(workers);
      // Every request was acked: none went back to the queue when the workers closed.
      expect((await adminChannel.checkQueue(queue)).messageCount).toBe(0);

      if (!crashes) expect(lost).toBe(0);
      const raw = await replyOnConsumingChannel(workerNode, rawQueue);
      let reason: string;
      if (crashes) {
        reason = await raw.lostWith;
        expect(reason).toMatch(/541/);
      } else {
        // All three replies published and their requests acked, and the connection still up a second later.
        await waitFor(async () => (await adminChannel.checkQueue(rawQueue)).messageCount === 0, 10_000, 'the raw acks');
        reason = await Promise.race([
          raw.lostWith,
          new Promise<string>((resolve) => setTimeout(() => resolve('kept'), 1_000)),
        ]);
        expect(reason).toBe('kept');
        await raw.close();
      }
      console.info(
        `dead reply addresses on RabbitMQ ${version}: the sample workers dropped ${total('repliesDropped')} replies, ` +
          `reopened their reply connection ${lost} time(s), answered all 3 live requests and kept consuming; ` +
          `a worker replying on its consuming connection: ${crashes ? `lost it: ${reason}` : 'kept it'}`,
      );
    } finally {
      await closeWorkers(workers);
      await live.close();
      await adminChannel.deleteQueue(queue).catch(() => undefined);
      await adminChannel.deleteQueue(rawQueue).catch(() => undefined);
      await admin.close().catch(() => undefined);
    }
  });
});
