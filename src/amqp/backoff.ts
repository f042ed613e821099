/**
 * Capped exponential backoff with jitter. The delay for attempt n (1-based) is drawn from
 * [cap/2, cap] where cap = min(max, min * 2^(n-1)): never above `maxMs`, and spread so that many
 * bridges that lost the same broker do not all come back in the same millisecond.
 */
export function reconnectDelay(
  attempt: number,
  minMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const exponent = Math.min(Math.max(attempt, 1) - 1, 30);
  const cap = Math.min(maxMs, minMs * 2 ** exponent);
  return Math.round(cap / 2 + (random() * cap) / 2);
}
