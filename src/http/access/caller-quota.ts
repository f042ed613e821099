import type { Caller } from './access-control.js';

/**
 * Whom a request counts against in a CallerQuota: the verified identity where there is one (a token's
 * name, a JWT's subject, a broker user), else the client address (an anonymous caller, or one holding a
 * shared AUTH_TOKENS token).
 */
export function quotaKey(caller: Caller, clientAddress: string | undefined): string {
  if (caller.tokenName !== undefined) return `token:${caller.tokenName}`;
  if (caller.brokerLogin !== undefined) return `broker:${caller.brokerLogin.username}`;
  if (caller.name !== undefined) return `jwt:${caller.name}`;
  return `address:${clientAddress ?? 'unknown'}`;
}
