import type { BrokerConnection } from './broker-connection.js';

const NOT_FOUND = 404;
/** A passive declare of a name the broker does not accept as an exchange name. */
const PRECONDITION_FAILED = 406;

/** Bounds memory when clients name many distinct exchanges. */
const MAX_CACHED = 10_000;
/** A missing exchange may be declared any moment; do not hold "missing" as long as "exists". */
const MISSING_TTL_CEILING_MS = 1_000;

/**
 * What the broker says of an exchange name. `invalid-name`: it refuses the name itself (LavinMQ
 * answers 406 to names RabbitMQ accepts, e.g. with characters outside its set): the caller's error.
 */
export type ExchangeVerdict = 'exists' | 'missing' | 'invalid-name';

/**
 * Answers "does this exchange exist?" without risking a reply channel: publishing to a missing
 * exchange makes the broker close the channel (404 NOT_FOUND), which would lose every request
 * pending on it. A passive declare runs on a throwaway channel instead, and the answer is cached.
 */
export class ExchangeChecker {
  private readonly cache = new Map<string, { verdict: ExchangeVerdict; until: number }>();
  private readonly inFlight = new Map<string, Promise<ExchangeVerdict>>();

  constructor(
    private readonly connection: BrokerConnection,
    private readonly ttlMs: number,
  ) {}

  /** The cached answer, or undefined when the broker must be asked. */
  cached(exchange: string, now = Date.now()): ExchangeVerdict | undefined {
    const entry = this.cache.get(exchange);
    if (entry === undefined) return undefined;
    if (entry.until > now) return entry.verdict;
    this.cache.delete(exchange);
    return undefined;
  }

  /** Asks the broker (one question per exchange at a time). Rejects when the broker cannot answer. */
  check(exchange: string): Promise<ExchangeVerdict> {
    let question = this.inFlight.get(exchange);
    if (question === undefined) {
      question = this.ask(exchange).finally(() => this.inFlight.delete(exchange));
      this.inFlight.set(exchange, question);
    }
    return question;
  }

  private async ask(exchange: string): Promise<ExchangeVerdict> {
    const model = this.connection.current;
    if (model === undefined) throw new Error('not connected');
    const channel = await model.createChannel();
    channel.on('error', () => undefined); // the 404 (or 406) close is the answer, not a fault
    let verdict: ExchangeVerdict;
    try {
      await channel.checkExchange(exchange);
      verdict = 'exists';
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === NOT_FOUND) verdict = 'missing';
      else if (code === PRECONDITION_FAILED) verdict = 'invalid-name';
      else throw err;
    } finally {
      try {
        await channel.close();
      } catch {
        // Closed already by the broker's 404.
      }
    }
    if (this.cache.size >= MAX_CACHED) this.cache.clear();
    const ttl = verdict === 'missing' ? Math.min(this.ttlMs, MISSING_TTL_CEILING_MS) : this.ttlMs;
    this.cache.set(exchange, { verdict, until: Date.now() + ttl });
    return verdict;
  }
}
