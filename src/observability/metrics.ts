import { Counter, collectDefaultMetrics, Gauge, Registry, type RegistryContentType } from 'prom-client';
import { bucketIndex, type HistogramSeries, SeriesHistogram } from './series-histogram.js';

/** How an RPC request ended, as the `outcome` label says it. */
export const RPC_OUTCOMES = [
  'ok',
  'timeout',
  'unroutable',
  'lost',
  'bad_reply',
  'rejected',
  'unavailable',
  'overloaded',
  'nacked',
  'cancelled',
  // An asynchronous call answered 202: its reply is to be asked for at /calls/{id}.
  'deferred',
] as const;
export type RpcOutcomeLabel = (typeof RPC_OUTCOMES)[number];

/** Resolves both a sub-millisecond loopback RPC and a 30 s slow worker. */
const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
/** From a tiny JSON command to the largest body MAX_BODY_BYTES allows. */
const SIZE_BUCKETS = [64, 256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216, 134_217_728];

/** Where queues past METRICS_MAX_QUEUES are counted. */
export const OVERFLOW_LABEL = 'other';

interface Observer {
  observe(value: number): void;
}
interface Incrementer {
  inc(): void;
}

/**
 * A bucket's exemplar is replaced at most this often. A scrape shows one exemplar per bucket, so at
 * thousands of sampled requests a second, replacing it on every request (a clock read and an object
 * each time) costs CPU that nobody sees; a rare bucket, the slow one, still gets every one.
 */
export const EXEMPLAR_INTERVAL_MS = 1000;

/** One (queue, outcome) series of a duration histogram, and when each of its buckets last got an exemplar. */
interface DurationSeries {
  readonly observer: HistogramSeries;
  readonly exemplarAt: Float64Array;
}

/** The children of one `queue` label value, made once and kept: label lookups hash on every call. */
interface QueueSeries {
  readonly label: string;
  readonly byOutcome: Map<RpcOutcomeLabel, DurationSeries>;
  readonly publishByOutcome: Map<RpcOutcomeLabel, DurationSeries>;
  readonly unroutable: Incrementer;
  readonly timeouts: Incrementer;
  readonly requestBytes: Observer;
  readonly responseBytes: Observer;
}

/** One finished RPC request, as the metrics see it. */
export interface RpcObservation {
  readonly target: string;
  readonly outcome: RpcOutcomeLabel;
  readonly seconds: number;
  /** Bytes of the request body, when it was read. */
  readonly requestBytes: number | undefined;
  /** Bytes of the reply body, when there was one. */
  readonly responseBytes: number | undefined;
  /** The request's trace id when it was sampled: kept as the bucket's exemplar (`trace_id`). */
  readonly traceId?: string | undefined;
}

/** A /metrics answer in the format the scraper asked for. */
export interface Exposition {
  readonly contentType: string;
  readonly text: string;
}

export interface Metrics {
  readonly registry: Registry<RegistryContentType>;
  /**
   * The metrics as text: OpenMetrics, with exemplars, when the registry keeps them and `accept` asks
   * for `application/openmetrics-text` (Prometheus does, by default); else the Prometheus text format.
   */
  expose(accept: string | undefined): Promise<Exposition>;
  /** Records one finished RPC request; its target is capped to a bounded set of label values. */
  observeRpc(observation: RpcObservation): void;
  /** Records one finished publish (POST /publish/...), by target and outcome like an RPC. */
  observePublish(observation: Omit<RpcObservation, 'responseBytes'>): void;
  /** Records one HTTP request by its route pattern (never the raw path). */
  observeHttp(method: string, route: string, statusCode: number, seconds: number): void;
  readonly lateReplies: Counter;
  readonly amqpReconnects: Counter;
  readonly publishBackpressure: Counter;
  readonly channelCloses: Counter<'reason'>;
  readonly exchangeChecks: Counter<'verdict'>;
  /** Broker logins with a caller's own credentials (AMQP_IDENTITY=caller), by result. */
  readonly callerLogins: Counter<'result'>;
  readonly callerLimited: Counter;
  /** `Prefer: respond-async` requests, by how they were answered (answered within the wait, or deferred). */
  readonly asyncCalls: Counter<'result'>;
  /** GET /calls/{id}, by what the caller learned. */
  readonly callLookups: Counter<'result'>;
  /** Requests with an Idempotency-Key, by whether they sent the call or took an earlier request's answer. */
  readonly idempotentRequests: Counter<'result'>;
  /** Streams (`Accept: text/event-stream`) by how they ended. */
  readonly streams: Counter<'ended'>;
  /** Replies relayed to streaming callers as events. */
  readonly streamEvents: Counter;
  /** Partial replies (`x-stream: more`) dropped because their caller asked for one answer. */
  readonly streamPartsSkipped: Counter;
}

/**
 * How a stream ended: `final` (the worker's last reply), `overflow` (its caller read too slowly), or the
 * outcome label of whatever else ended it (timeout, lost, cancelled: the caller left, ...).
 */
export type StreamEndLabel = 'final' | 'overflow' | RpcOutcomeLabel;

/** State the gauges report as it is when scraped, rather than mirroring it on every change. */
export interface MetricSources {
  inFlight(): number;
  connected(): boolean;
  blocked(): boolean;
  /** A running total kept elsewhere (the log destination's), reported as a counter. */
  logBytesDropped(): number;
  /** Open broker connections made with callers' own credentials (AMQP_IDENTITY=caller). */
  callerConnections(): number;
  /** Asynchronous calls and idempotency keys this replica made that the broker may still keep. */
  callsHeld(): number;
  /** Requests waiting on a result queue (each on a channel of its own). */
  callsWaiting(): number;
}

/**
 * Every metric in one place, on the registry the caller owns. An OpenMetrics registry (tracing on)
 * keeps exemplars on the request-duration histograms; a Prometheus one (the default) keeps none and
 * costs nothing for them. Any client can invent queue names,
 * so the `queue` label takes at most `maxQueues` distinct values; later ones are counted as "other".
 */
export function createMetrics(
  registry: Registry<RegistryContentType>,
  maxQueues: number,
  now: () => number = Date.now,
): Metrics {
  const registers = [registry];
  const enableExemplars = registry.contentType === Registry.OPENMETRICS_CONTENT_TYPE;
  collectDefaultMetrics({ register: registry });
  // The histograms of the request path are the bridge's own (series-histogram.ts), exposed as prom-client's.
  const duration = new SeriesHistogram(
    'rpc_request_duration_seconds',
    'Time from receiving an RPC request to answering it, by target queue and outcome',
    ['queue', 'outcome'],
    DURATION_BUCKETS,
    registry,
  );
  const publishDuration = new SeriesHistogram(
    'publish_request_duration_seconds',
    'Time from receiving a publish request to answering it (the broker confirmed, returned or refused it), by target queue and outcome',
    ['queue', 'outcome'],
    DURATION_BUCKETS,
    registry,
  );
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
  const sizeHistogram = (name: string, help: string) =>
    new SeriesHistogram(name, help, ['queue'], SIZE_BUCKETS, registry);
  const requestBytes = sizeHistogram('rpc_request_bytes', 'Size of RPC request bodies');
  const responseBytes = sizeHistogram('rpc_response_bytes', 'Size of reply bodies returned to HTTP callers');
  const httpDuration = new SeriesHistogram(
    'http_request_duration_seconds',
    'HTTP requests by method, route pattern and status code',
    ['method', 'route', 'status_code'],
    DURATION_BUCKETS,
    registry,
  );

  const makeSeries = (label: string): QueueSeries => ({
    label,
    byOutcome: new Map(),
    publishByOutcome: new Map(),
    unroutable: unroutable.labels(label),
    timeouts: timeouts.labels(label),
    requestBytes: requestBytes.series(label),
    responseBytes: responseBytes.series(label),
  });
  /**
   * One request's duration: with the trace id of a sampled request as the bucket's exemplar when the
   * bucket has had none for EXEMPLAR_INTERVAL_MS.
   */
  const observeDuration = (
    histogram: SeriesHistogram<'queue' | 'outcome'>,
    byOutcome: Map<RpcOutcomeLabel, DurationSeries>,
    queue: string,
    outcome: RpcOutcomeLabel,
    seconds: number,
    traceId: string | undefined,
  ): void => {
    let series = byOutcome.get(outcome);
    if (series === undefined) {
      series = {
        observer: histogram.series(queue, outcome),
        exemplarAt: new Float64Array(DURATION_BUCKETS.length + 1),
      };
      byOutcome.set(outcome, series);
    }
    const bucket = bucketIndex(DURATION_BUCKETS, seconds);
    if (traceId !== undefined && enableExemplars) {
      const at = now();
      const last = series.exemplarAt[bucket] as number;
      // A clock set back (at < last) must not silence the bucket until it catches up.
      if (at - last >= EXEMPLAR_INTERVAL_MS || at < last) {
        series.exemplarAt[bucket] = at;
        series.observer.observeIn(bucket, seconds, { trace_id: traceId });
        return;
      }
    }
    series.observer.observeIn(bucket, seconds);
  };
  const series = new Map<string, QueueSeries>();
  let overflow: QueueSeries | undefined;
  const seriesFor = (target: string): QueueSeries => {
    const known = series.get(target);
    if (known !== undefined) return known;
    if (series.size >= maxQueues) {
      overflow ??= makeSeries(OVERFLOW_LABEL);
      return overflow;
    }
    const created = makeSeries(target);
    series.set(target, created);
    return created;
  };

  // Rendering switches the registry's format for one scrape: one at a time.
  let rendering: Promise<unknown> = Promise.resolve();
  const renderAs = async (contentType: RegistryContentType): Promise<Exposition> => {
    // prom-client renames counters for OpenMetrics (drops `_total` from the family name) and keeps the
    // new name: put the names back, or the next Prometheus-format scrape loses its `_total`s.
    const names = registry.getMetricsAsArray().map((metric) => [metric, metric.name] as const);
    registry.setContentType(contentType);
    try {
      return { contentType, text: await registry.metrics() };
    } finally {
      registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
      for (const [metric, name] of names) (metric as { name: string }).name = name;
    }
  };

  return {
    registry,
    async expose(accept) {
      if (!enableExemplars) return { contentType: registry.contentType, text: await registry.metrics() };
      const wanted = accept?.includes('application/openmetrics-text')
        ? Registry.OPENMETRICS_CONTENT_TYPE
        : Registry.PROMETHEUS_CONTENT_TYPE;
      const next = rendering.then(() => renderAs(wanted));
      rendering = next.catch(() => undefined);
      return next;
    },
    observeRpc({ target, outcome, seconds, requestBytes: sent, responseBytes: received, traceId }) {
      const queue = seriesFor(target);
      observeDuration(duration, queue.byOutcome, queue.label, outcome, seconds, traceId);
      if (outcome === 'unroutable') queue.unroutable.inc();
      else if (outcome === 'timeout') queue.timeouts.inc();
      if (sent !== undefined) queue.requestBytes.observe(sent);
      if (received !== undefined) queue.responseBytes.observe(received);
    },
    observePublish({ target, outcome, seconds, traceId }) {
      const queue = seriesFor(target);
      observeDuration(publishDuration, queue.publishByOutcome, queue.label, outcome, seconds, traceId);
    },
    observeHttp(method, route, statusCode, seconds) {
      // The series are kept by the histogram; methods, routes (patterns) and statuses are few and fixed.
      httpDuration.series(method, route, String(statusCode)).observe(seconds);
    },
    lateReplies: new Counter({
      name: 'rpc_late_replies_total',
      help: 'Replies dropped because no request waits for their correlation id (late, duplicate or stray)',
      registers,
    }),
    amqpReconnects: new Counter({
      name: 'amqp_reconnects_total',
      help: 'Connections to the broker established after the first',
      registers,
    }),
    publishBackpressure: new Counter({
      name: 'amqp_publish_backpressure_total',
      help: 'Publishes after which a channel buffer was full (later requests on it wait for drain)',
      registers,
    }),
    channelCloses: new Counter({
      name: 'amqp_channel_closes_total',
      help: 'Reply channels the broker closed while the connection stayed up, by AMQP reply code',
      labelNames: ['reason'] as const,
      registers,
    }),
    exchangeChecks: new Counter({
      name: 'amqp_exchange_checks_total',
      help: 'Exchanges probed on a channel of their own before the shared channels publish to them, by verdict',
      labelNames: ['verdict'] as const,
      registers,
    }),
    callerLogins: new Counter({
      name: 'amqp_caller_logins_total',
      help: "Broker logins with callers' own credentials (AMQP_IDENTITY=caller), by result (accepted, refused; throttled: answered 401 from memory, the broker not asked)",
      labelNames: ['result'] as const,
      registers,
    }),
    callerLimited: new Counter({
      name: 'rpc_caller_limited_total',
      help: 'Requests refused (429) because their caller already had MAX_IN_FLIGHT_PER_CALLER requests in flight',
      registers,
    }),
    asyncCalls: new Counter({
      name: 'rpc_async_calls_total',
      help: 'Prefer: respond-async requests by result: answered (the reply came within the wait), deferred (202 and a call id), failed (an error answer)',
      labelNames: ['result'] as const,
      registers,
    }),
    callLookups: new Counter({
      name: 'rpc_call_lookups_total',
      help: 'GET /calls/{id} by what it answered: reply, pending, timeout, unknown (404), refused, failed',
      labelNames: ['result'] as const,
      registers,
    }),
    idempotentRequests: new Counter({
      name: 'rpc_idempotent_requests_total',
      help: "Requests with an Idempotency-Key: first (sent the call), replayed (answered with the first request's answer), conflict (422: the key was used for another request), refused",
      labelNames: ['result'] as const,
      registers,
    }),
    streams: new Counter({
      name: 'rpc_streams_total',
      help: 'Streamed calls (Accept: text/event-stream) by how they ended: final, overflow (the caller read too slowly), or the outcome that ended them (timeout, lost, cancelled, ...)',
      labelNames: ['ended'] as const,
      registers,
    }),
    streamEvents: new Counter({
      name: 'rpc_stream_events_total',
      help: 'Worker replies relayed to streaming callers, one event each',
      registers,
    }),
    streamPartsSkipped: new Counter({
      name: 'rpc_stream_parts_skipped_total',
      help: 'Partial replies (x-stream: more) dropped because their caller asked for one answer (the final reply answers it)',
      registers,
    }),
  };
}

/**
 * The gauges, which read the bridge's state when scraped rather than mirroring it on every change:
 * registered once the parts they read exist.
 */
export function registerGauges(registry: Registry<RegistryContentType>, sources: MetricSources): void {
  const registers = [registry];
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read());
      },
    });
  gauge('rpc_in_flight', 'RPC requests published and not yet answered', sources.inFlight);
  gauge('amqp_connected', '1 while connected to the broker, else 0', () => (sources.connected() ? 1 : 0));
  gauge('amqp_connection_blocked', '1 while the broker blocks publishers (resource alarm), else 0', () =>
    sources.blocked() ? 1 : 0,
  );
  gauge(
    'amqp_caller_connections',
    "Broker connections open with callers' own credentials (AMQP_IDENTITY=caller)",
    sources.callerConnections,
  );
  gauge(
    'rpc_calls_held',
    'Asynchronous calls and idempotency keys this replica made whose queues the broker may still keep (CALLS_MAX_HELD)',
    sources.callsHeld,
  );
  gauge('rpc_calls_waiting', 'Requests waiting on a result queue now (CALLS_MAX_WAITING)', sources.callsWaiting);
  let droppedReported = 0;
  new Counter({
    name: 'log_bytes_dropped_total',
    help: 'Log bytes dropped because stdout did not keep up (LOG_MAX_BUFFER_BYTES were already waiting)',
    registers,
    collect() {
      const dropped = sources.logBytesDropped();
      if (dropped > droppedReported) this.inc(dropped - droppedReported);
      droppedReported = dropped;
    },
  });
}
