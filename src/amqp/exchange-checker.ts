import type { BrokerConnection } from './broker-connection.js';

/** Bounds memory when clients name many distinct exchanges. */
const MAX_CACHED = 10_000;
/** A missing exchange may be declared any moment; do not hold "missing" as long as "exists". */
const MISSING_TTL_CEILING_MS = 1_000;

/**
 * Answers "does this exchange exist?" without risking a reply channel: publishing to a missing
 * exchange makes the broker close the channel (404 NOT_FOUND), which would lose every request
 * pending on it. A passive declare runs on a throwaway channel instead, and the answer is cached.
 */
export class ExchangeChecker {
  private readonly cache = new Map<string, { exists: boolean; until: number }>();
  private readonly inFlight = new Map<string, Promise<boolean>>();

  constructor(
    private readonly connection: BrokerConnection,
    private readonly ttlMs: number,
  ) {}

  /** The cached answer, or undefined when the broker must be asked. */
  cached(exchange: string, now = Date.now()): boolean | undefined {
    const entry = this.cache.get(exchange);
    if (entry === undefined) return undefined;
    if (entry.until > now) return entry.exists;
    this.cache.delete(exchange);
    return undefined;
  }

  /** Asks the broker (one question per exchange at a time). Rejects when the broker cannot answer. */
  check(exchange: string): Promise<boolean> {
    let question = this.inFlight.get(exchange);
    if (question === undefined) {
      question = this.ask(exchange).finally(() => this.inFlight.delete(exchange));
      this.inFlight.set(exchange, question);
    }
    return question;
  }

  private async ask(exchange: string): Promise<boolean> {
    const model = this.connection.current;
    if (model === undefined) throw new Error('not connected');
    const channel = await model.createChannel();
    channel.on('error', () => undefined); // the 404 close is the answer, not a fault
    let exists: boolean;
    try {
      await channel.checkExchange(exchange);
      exists = true;
    } catch (err) {
      if ((err as { code?: unknown }).code !== 404) throw err;
      exists = false;
    } finally {
      try {
        await channel.close();
      } catch {
        // Closed already by the broker's 404.
      }
    }
    if (this.cache.size >= MAX_CACHED) this.cache.clear();
    const ttl = exists ? this.ttlMs : Math.min(this.ttlMs, MISSING_TTL_CEILING_MS);
    this.cache.set(exchange, { exists, until: Date.now() + ttl });
    return exists;
  }
}
