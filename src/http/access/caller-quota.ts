import type { Caller } from './access-control.js';

/**
 * Requests in flight per caller (MAX_IN_FLIGHT_PER_CALLER), so that one caller's flood leaves room for
 * the others under MAX_IN_FLIGHT. A caller is its token's name, its JWT's subject or its broker user;
 * an anonymous caller (or one holding a shared AUTH_TOKENS token) is its client address. Only callers
 * with requests in flight are held: memory follows what is in flight, never who has called.
 */
export class CallerQuota {
  private readonly inFlight = new Map<string, number>();

  constructor(readonly limit: number) {}

  /** Takes one place for the caller; false (nothing taken) when it already has `limit` requests in flight. */
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

  /** Callers with at least one request in flight. */
  get callers(): number {
    return this.inFlight.size;
  }
}

/** Whom a request counts against: the verified identity where there is one, else the client address. */
export function quotaKey(caller: Caller, clientAddress: string | undefined): string {
  if (caller.tokenName !== undefined) return `token:${caller.tokenName}`;
  if (caller.brokerLogin !== undefined) return `broker:${caller.brokerLogin.username}`;
  if (caller.name !== undefined) return `jwt:${caller.name}`;
  return `address:${clientAddress ?? 'unknown'}`;
}
