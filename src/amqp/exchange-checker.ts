// The answer cache stays a Map in insertion order (oldest written first out, per-answer TTL): lru-cache would save ~10 lines for a 4 MB dependency on a path every exchange request takes.
import type { ChannelModel } from 'amqplib';
import { ExchangeChecksExhausted, type ExchangeGate, type ExchangeVerdict, type PublishChannel } from '../rpc/ports.js';
import type { RpcChannel } from './rpc-channel.js';

/** Bounds memory when clients name many distinct exchanges; the oldest answers go first. */
const MAX_CACHED = 10_000;
/** A missing exchange may be declared any moment; do not hold "missing" as long as "exists". */
const MISSING_TTL_CEILING_MS = 1_000;

export interface ExchangeCheckerOptions {
  /** The connection's channel model now, or undefined while disconnected. */
  readonly model: () => ChannelModel | undefined;
  /** How long an answer is kept (a missing exchange: at most 1 s). */
  readonly ttlMs: number;
  /** Probes under way at once; beyond it a check waits its turn. */
  readonly maxConcurrentChecks: number;
  /** Checks waiting for a turn at most; beyond it a request to an unchecked exchange is refused (503). */
  readonly maxQueuedChecks: number;
  /**
   * Each exchange and routing key is a question of its own: RabbitMQ's topic permissions refuse a
   * publish by its key, so an answer for one key says nothing of the next.
   */
  readonly byRoutingKey?: boolean;
  /** A reply channel of its own (role `probe`), with its reply consumer running. */
  openProbe(model: ChannelModel): Promise<RpcChannel>;
  /** Each probe's answer, for the metrics. */
  onVerdict(verdict: ExchangeVerdict): void;
}

interface QueuedCheck {
  readonly exchange: string;
  readonly question: Promise<ExchangeVerdict>;
  readonly publishFirst: (probe: PublishChannel) => boolean;
  resolve(verdict: ExchangeVerdict): void;
  reject(err: unknown): void;
}

/**
 * Answers "may the bridge publish to this exchange?" without risking a channel other callers share.
 * A publish the broker refuses closes the channel it came on: 404 for a missing exchange, 403 for an
 * internal one or one the bridge's broker user may not write to. So the first request to an
 * exchange goes on a probe channel of its own: a passive declare (missing? a name the broker
 * refuses?), then the request itself, then a second declare that returns only if the broker took
 * the publish. The answer is cached; later requests go on the shared channels.
 */
export class ExchangeChecker implements ExchangeGate {
  private readonly cache = new Map<string, { verdict: ExchangeVerdict; until: number }>();
  private readonly inFlight = new Map<string, Promise<ExchangeVerdict>>();
  /** Checks waiting for a probe to finish, in arrival order (a flood of names must not starve a real one). */
  private readonly queued = new Map<string, QueuedCheck>();

  constructor(private readonly options: ExchangeCheckerOptions) {}

  /** The cached answer, or undefined when the broker must be asked. */
  cached(exchange: string, routingKey: string, now = Date.now()): ExchangeVerdict | undefined {
    const question = this.questionOf(exchange, routingKey);
    const entry = this.cache.get(question);
    if (entry === undefined) return undefined;
    if (entry.until > now) return entry.verdict;
    this.cache.delete(question);
    return undefined;
  }

  /**
   * Asks the broker, one probe per exchange at a time. The request that starts the probe is
   * published on it by `publishFirst` (once the exchange is known to exist); requests that join a
   * probe under way wait for its verdict. Rejects with ExchangeChecksExhausted when too many probes
   * run, or with the broker's error when it cannot answer.
   */
  check(
    exchange: string,
    routingKey: string,
    publishFirst: (probe: PublishChannel) => boolean,
  ): Promise<ExchangeVerdict> {
    const question = this.questionOf(exchange, routingKey);
    const asked = this.inFlight.get(question) ?? this.queued.get(question)?.question;
    if (asked !== undefined) return asked;
    if (this.inFlight.size < this.options.maxConcurrentChecks) return this.start(question, exchange, publishFirst);
    if (this.queued.size >= this.options.maxQueuedChecks) {
      return Promise.reject(
        new ExchangeChecksExhausted(`${this.inFlight.size} exchange checks are under way and ${this.queued.size} wait`),
      );
    }
    // Waits its turn; the request's own deadline still runs, and a request that timed out meanwhile
    // publishes nothing when its turn comes (publishFirst says so).
    let resolve!: QueuedCheck['resolve'];
    let reject!: QueuedCheck['reject'];
    const waiting = new Promise<ExchangeVerdict>((onVerdict, onError) => {
      resolve = onVerdict;
      reject = onError;
    });
    this.queued.set(question, { exchange, question: waiting, publishFirst, resolve, reject });
    return waiting;
  }

  /** What a verdict is kept under: the exchange, or the exchange and the key. */
  private questionOf(exchange: string, routingKey: string): string {
    // Names hold no control characters (the edge refuses them), so a NUL cannot join two others.
    return this.options.byRoutingKey === true ? `${exchange}\u0000${routingKey}` : exchange;
  }

  private start(
    question: string,
    exchange: string,
    publishFirst: (probe: PublishChannel) => boolean,
  ): Promise<ExchangeVerdict> {
    const answer = this.probe(question, exchange, publishFirst).finally(() => {
      this.inFlight.delete(question);
      this.startNext();
    });
    this.inFlight.set(question, answer);
    return answer;
  }

  private startNext(): void {
    const next = this.queued.entries().next();
    if (next.done === true || this.inFlight.size >= this.options.maxConcurrentChecks) return;
    const [question, check] = next.value;
    this.queued.delete(question);
    this.start(question, check.exchange, check.publishFirst).then(check.resolve, check.reject);
  }

  /** A new connection may be to another node, or to a broker that restarted: nothing known holds. */
  forgetAll(): void {
    this.cache.clear();
    // Nothing waiting can be probed on a connection that is gone; the requests answer as for a failed check.
    const waiting = [...this.queued.values()];
    this.queued.clear();
    for (const check of waiting) check.reject(new Error('not connected'));
  }

  private async probe(
    question: string,
    exchange: string,
    publishFirst: (probe: PublishChannel) => boolean,
  ): Promise<ExchangeVerdict> {
    const model = this.options.model();
    if (model === undefined) throw new Error('not connected');
    const probe = await this.options.openProbe(model);
    // Held until the second declare returns: the request it carries may be answered (a publish's
    // ack comes before the declare-ok) and must not close the channel under the question.
    probe.hold();
    let verdict: ExchangeVerdict | undefined;
    let carried = false;
    try {
      verdict = await probe.checkExchange(exchange);
      if (verdict === 'exists') {
        // Only a publish the broker took proves the exchange takes the bridge's messages.
        carried = publishFirst(probe);
        if (carried) verdict = await probe.checkExchange(exchange);
      }
    } finally {
      probe.release();
    }
    if (carried || verdict !== 'exists') this.remember(question, verdict);
    this.options.onVerdict(verdict);
    return verdict;
  }

  private remember(question: string, verdict: ExchangeVerdict): void {
    if (this.cache.size >= MAX_CACHED) {
      const oldest = this.cache.keys().next();
      if (oldest.done !== true) this.cache.delete(oldest.value);
    }
    this.cache.delete(question); // re-inserted last: the oldest answers are evicted first
    const ttl = verdict === 'missing' ? Math.min(this.options.ttlMs, MISSING_TTL_CEILING_MS) : this.options.ttlMs;
    this.cache.set(question, { verdict, until: Date.now() + ttl });
  }
}
