import type { TestProject } from 'vitest/node';
import { type ClusterInfo, clusterUnavailable, removeRabbitCluster, startRabbitCluster } from './rabbitmq-cluster.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The cluster the `cluster` project's files share, or why there is none. */
    rabbitCluster: ClusterInfo | { readonly unavailable: string };
  }
}

/**
 * Vitest global setup of the `cluster` project: one three-node cluster for all its files (they run
 * one after another and leave every node running), removed at the end, pass or fail.
 */
export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const unavailable = await clusterUnavailable();
  if (unavailable !== undefined) {
    project.provide('rabbitCluster', { unavailable });
    return undefined;
  }
  const started = performance.now();
  const info = await startRabbitCluster();
  console.info(
    `three-node RabbitMQ cluster (${info.nodes.map((node) => `${node.name} on :${node.port}`).join(', ')}) ` +
      `started and joined in ${((performance.now() - started) / 1000).toFixed(1)} s, data in ${info.base}`,
  );
  project.provide('rabbitCluster', info);
  return async () => {
    await removeRabbitCluster(info);
  };
}
