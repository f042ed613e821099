/**
 * Places held per caller, at most `limit` each, so that one caller's flood leaves room for the others:
 * requests in flight (MAX_IN_FLIGHT_PER_CALLER), deferred requests under way and calls kept (CALLS_MAX_*).
 * Only callers holding places are kept: memory follows what is held, never who has called.
 */
export class CallerQuota {
  private readonly inFlight = new Map<string, number>();

  constructor(readonly limit: number) {}

  /** Takes one place for the caller; false (nothing taken) when it already holds `limit`. */
  tryAcquire(key: string): boolean {
    const held = this.inFlight.get(key) ?? 0;
    if (held >= this.limit) return false;
    this.inFlight.set(key, held + 1);
    return true;
  }

  release(key: string): void {
    const held = this.inFlight.get(key);
    if (held === undefined) return;
    if (held <= 1) this.inFlight.delete(key);
    else this.inFlight.set(key, held - 1);
  }

  /** Callers holding at least one place. */
  get callers(): number {
    return this.inFlight.size;
  }
}
