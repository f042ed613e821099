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

interface RpcSeries {
  readonly label: string;
  readonly byOutcome: Map<RpcOutcomeLabel, { observe(seconds: number): void }>;
  readonly unroutable: { inc(): void };
  readonly timeouts: { inc(): void };
}

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

  // Label lookups hash their values on every call; the hot path keeps the children it made.
  const makeSeries = (label: string): RpcSeries => ({
    label,
    byOutcome: new Map(),
    unroutable: unroutable.labels(label),
    timeouts: timeouts.labels(label),
  });
  const series = new Map<string, RpcSeries>();
  let overflow: RpcSeries | undefined;
  const seriesFor = (target: string): RpcSeries => {
    const known = series.get(target);
    if (known !== undefined) return known;
    if (series.size >= maxTargets) {
      overflow ??= makeSeries(OVERFLOW_LABEL);
      return overflow;
    }
    const created = makeSeries(target);
    series.set(target, created);
    return created;
  };

  return {
    registry,
    observeRpc(target, outcome, seconds) {
      const { label, byOutcome, unroutable, timeouts } = seriesFor(target);
      let observer = byOutcome.get(outcome);
      if (observer === undefined) {
        observer = duration.labels(label, outcome);
        byOutcome.set(outcome, observer);
      }
      observer.observe(seconds);
      if (outcome === 'unroutable') unroutable.inc();
      else if (outcome === 'timeout') timeouts.inc();
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
