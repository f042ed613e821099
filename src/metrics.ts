import { Counter, collectDefaultMetrics, Gauge, Histogram, type Registry } from 'prom-client';

/** The label every RPC metric carries for where it was sent, and the outcome it ended with. */
export const RPC_OUTCOMES = [
  'ok',
  'timeout',
  'unroutable',
  'lost',
  'bad_reply',
  'rejected',
  'unavailable',
  'cancelled',
] as const;
export type RpcOutcomeLabel = (typeof RPC_OUTCOMES)[number];

/** Resolves both a sub-millisecond loopback RPC and a 30 s slow worker. */
const RPC_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export const OVERFLOW_LABEL = 'other';

export interface Metrics {
  readonly registry: Registry;
  /** Records one finished RPC request; `target` is capped to a bounded set of label values. */
  observeRpc(target: string, outcome: RpcOutcomeLabel, seconds: number): void;
  readonly rpcInFlight: Gauge;
  readonly lateReplies: Counter;
  readonly amqpConnected: Gauge;
  readonly amqpReconnects: Counter;
  readonly channelCloses: Counter<'reason'>;
}

/**
 * Every metric in one place, on the registry the caller owns. Any client can invent queue names,
 * so the `queue` label takes at most `maxTargets` distinct values; later ones become "other".
 */
export function createMetrics(registry: Registry, maxTargets: number): Metrics {
  const registers = [registry];
  collectDefaultMetrics({ register: registry });

  const duration = new Histogram({
    name: 'rpc_request_duration_seconds',
    help: 'Time from receiving an RPC request to answering it, by target queue and outcome',
    labelNames: ['queue', 'outcome'] as const,
    buckets: RPC_BUCKETS,
    registers,
  });
  const unroutable = new Counter({
    name: 'rpc_unroutable_total',
    help: 'Mandatory publishes the broker returned unroutable (basic.return) or sent to a missing exchange',
    labelNames: ['queue'] as const,
    registers,
  });
  const timeouts = new Counter({
    name: 'rpc_timeouts_total',
    help: 'RPC requests that got no reply within their timeout',
    labelNames: ['queue'] as const,
    registers,
  });

  const knownTargets = new Set<string>();
  const capTarget = (target: string): string => {
    if (knownTargets.has(target)) return target;
    if (knownTargets.size >= maxTargets) return OVERFLOW_LABEL;
    knownTargets.add(target);
    return target;
  };

  return {
    registry,
    observeRpc(target, outcome, seconds) {
      const queue = capTarget(target);
      duration.labels(queue, outcome).observe(seconds);
      if (outcome === 'unroutable') unroutable.labels(queue).inc();
      else if (outcome === 'timeout') timeouts.labels(queue).inc();
    },
    rpcInFlight: new Gauge({ name: 'rpc_in_flight', help: 'RPC requests published and not yet answered', registers }),
    lateReplies: new Counter({
      name: 'rpc_late_replies_total',
      help: 'Replies dropped because no request waits for their correlation id (late, duplicate or stray)',
      registers,
    }),
    amqpConnected: new Gauge({ name: 'amqp_connected', help: '1 while connected to the broker, else 0', registers }),
    amqpReconnects: new Counter({
      name: 'amqp_reconnects_total',
      help: 'Connections to the broker established after the first',
      registers,
    }),
    channelCloses: new Counter({
      name: 'amqp_channel_closes_total',
      help: 'Reply channels the broker closed while the connection stayed up, by AMQP reply code',
      labelNames: ['reason'] as const,
      registers,
    }),
  };
}
