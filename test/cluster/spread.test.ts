/**
 * Replicas spread over the nodes listed in AMQP_URLS: each bridge process starts at a random one
 * (AMQP_CONNECT_ORDER=random, the default), so that a fleet does not pile onto the first node.
 */
import { describe, expect, it } from 'vitest';
import { startDrillBridges, stopDrillBridges } from '../helpers/bridge-node-loss.js';
import { connections, providedCluster } from '../helpers/cluster-drill.js';
import { type ClusterInfo, RabbitCluster } from '../helpers/rabbitmq-cluster.js';

const { info: clusterInfo, unavailable } = providedCluster();

/** All eight on one node by chance: 3 x (1/3)^8, one run in 2,187. */
const REPLICAS = 8;

describe.skipIf(unavailable !== undefined)('bridge replicas listing every node of the cluster', () => {
  it('connect to different nodes, not all to the first one listed', async () => {
    const cluster = new RabbitCluster(clusterInfo as ClusterInfo);
    const placements: string[] = [];
    // Two at a time: each one only has to connect once.
    for (let started = 0; started < REPLICAS; started += 2) {
      const bridges = await startDrillBridges(cluster, 2);
      try {
        for (const { process } of bridges)
          placements.push((connections(process, cluster)[0]?.node.label ?? '?') as string);
      } finally {
        await stopDrillBridges(bridges);
      }
    }
    const perNode = Object.fromEntries(
      cluster.nodes.map((node) => [node.label, placements.filter((label) => label === node.label).length]),
    );
    console.info(
      `${REPLICAS} bridge processes with AMQP_URLS=${cluster.urls.join(',')} connected to: ${JSON.stringify(perNode)}`,
    );
    expect(placements.filter((label) => label !== cluster.nodes[0]?.label).length).toBeGreaterThan(0);
    expect(new Set(placements).size).toBeGreaterThan(1);
  });
});
