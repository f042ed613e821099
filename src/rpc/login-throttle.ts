// Hand-written on purpose: a sliding window of refusals per key plus logins under way; lru-cache would bound only the keys, the window stays, and its clock cannot be injected without faking one (tried: a clock at 0 never expires).
/**
 * How many broker logins a key (a broker user, or a client address) may still try: the logins the
 * broker refused within a sliding window, and those still under way, count against one limit. So
 * however fast a client sends new passwords, and however many at once, the broker sees at most
 * `limit` refused logins per key and window; after that the bridge answers from memory.
 */

export interface LoginThrottleOptions {
  /** Refused logins, plus logins under way, allowed per key within `windowMs`. */
  readonly limit: number;
  readonly windowMs: number;
  /** Keys with refusals remembered at most (callers choose them freely): the stalest are forgotten first. */
  readonly maxKeys: number;
}

export type ThrottleVerdict =
  | { readonly verdict: 'allowed' }
  /** `limit` refusals within the window: answer from memory until the oldest leaves it. */
  | { readonly verdict: 'throttled'; readonly retryAfterMs: number }
  /** Not refused that often, but enough logins are under way to reach the limit if all of them fail. */
  | { readonly verdict: 'busy' };

const ALLOWED: ThrottleVerdict = Object.freeze({ verdict: 'allowed' });
const BUSY: ThrottleVerdict = Object.freeze({ verdict: 'busy' });

export class LoginThrottle {
  /** Per key, the times of its latest refusals, oldest first, at most `limit`; the map's order is staleness. */
  private readonly refusals = new Map<string, number[]>();
  private readonly pending = new Map<string, number>();

  constructor(private readonly options: LoginThrottleOptions) {}

  /** Keys with refusals remembered (at most `maxKeys`). */
  get rememberedKeys(): number {
    return this.refusals.size;
  }

  check(key: string, now: number): ThrottleVerdict {
    const { limit, windowMs } = this.options;
    const times = this.recent(key, now);
    if (times.length >= limit) {
      const oldest = times[times.length - limit] as number;
      return { verdict: 'throttled', retryAfterMs: oldest + windowMs - now };
    }
    return times.length + (this.pending.get(key) ?? 0) >= limit ? BUSY : ALLOWED;
  }

  /** A login for `key` is under way: `settled` must follow, once, whatever its end. */
  started(key: string): void {
    this.pending.set(key, (this.pending.get(key) ?? 0) + 1);
  }

  settled(key: string): void {
    const left = (this.pending.get(key) ?? 0) - 1;
    if (left > 0) this.pending.set(key, left);
    else this.pending.delete(key);
  }

  refused(key: string, now: number): void {
    const times = this.recent(key, now);
    times.push(now);
    if (times.length > this.options.limit) times.shift();
    // Re-inserted last: the first key in the map is always the one refused longest ago.
    this.refusals.delete(key);
    if (this.refusals.size >= this.options.maxKeys) {
      const stalest = this.refusals.keys().next();
      if (stalest.done !== true) this.refusals.delete(stalest.value);
    }
    this.refusals.set(key, times);
  }

  /** Forgets keys whose latest refusal has left the window. */
  sweep(now: number): void {
    for (const [key, times] of this.refusals) {
      if ((times.at(-1) ?? 0) > now - this.options.windowMs) break;
      this.refusals.delete(key);
    }
  }

  private recent(key: string, now: number): number[] {
    const times = this.refusals.get(key);
    if (times === undefined) return [];
    const from = now - this.options.windowMs;
    while (times.length > 0 && (times[0] as number) <= from) times.shift();
    return times;
  }
}

/**
 * The key a client address is throttled under: an IPv4 address as it is (also when IPv4-mapped,
 * `::ffff:10.0.0.1`), an IPv6 address by its /64, since one host is commonly given a whole /64 and
 * could otherwise try new passwords from a new address each time.
 */
export function addressKey(address: string | undefined): string {
  if (address === undefined) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped !== null) return mapped[1] as string;
  if (!address.includes(':')) return address;
  const [head = '', tail = ''] = address.toLowerCase().split('%')[0]?.split('::') ?? [];
  const front = head === '' ? [] : head.split(':');
  const back = address.includes('::') ? (tail === '' ? [] : tail.split(':')) : [];
  const groups = [...front, ...Array<string>(Math.max(0, 8 - front.length - back.length)).fill('0'), ...back];
  return `${groups
    .slice(0, 4)
    .map((group) => group.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
