import type { MappingLimits, RpcTarget } from '../request-mapping.js';
import { exchangeTarget, queueTarget } from '../request-mapping.js';
import type { NamedRoute, NamedRouteMatch } from '../routes/route-table.js';
import { resolveTarget as resolveNamedTarget } from '../routes/route-table.js';
import { decodeSegments, type RpcPath } from '../rpc-path.js';

/** A raw route (`/rpc/...`, `/publish/...`) or a named route of the routes file. */
export type RouteMatch = RpcPath | NamedRouteMatch;

/** The route patterns raw requests are counted and logged under (never the raw path). */
const RAW_ROUTES = {
  rpc: { queue: '/rpc/:queue', exchange: '/rpc/:exchange/:routingKey' },
  publish: { queue: '/publish/:queue', exchange: '/publish/:exchange/:routingKey' },
} as const;

/** What the route says before anything is read: its pattern, operation and limits. */
export interface RouteFacts {
  /** The route pattern, for metrics, logs and spans. */
  readonly pattern: string;
  readonly operation: 'rpc' | 'publish';
  /** The named route that took the request; undefined for a raw route. */
  readonly namedRoute: NamedRoute | undefined;
}

export function routeFacts(match: RouteMatch): RouteFacts {
  if (match.kind === 'raw') {
    return {
      pattern: RAW_ROUTES[match.operation][match.segments.length === 1 ? 'queue' : 'exchange'],
      operation: match.operation,
      namedRoute: undefined,
    };
  }
  const { definition } = match.route;
  return { pattern: definition.path, operation: definition.operation, namedRoute: match.route };
}

/**
 * Stage "resolve target": where the request goes, with the path's parameters decoded and filled in
 * and the names checked (400 for one the broker would refuse, or a parameter off its pattern).
 */
export function resolveTarget(match: RouteMatch): RpcTarget {
  if (match.kind === 'named') return resolveNamedTarget(match);
  const [first, second] = decodeSegments(match);
  return second === undefined ? queueTarget(first) : exchangeTarget(first, second);
}

/** The timeout limits and body limit of the route. */
export function routeLimits(
  match: RouteMatch,
  defaults: { readonly limits: MappingLimits; readonly maxBodyBytes: number },
): { readonly limits: MappingLimits; readonly maxBodyBytes: number } {
  return match.kind === 'raw' ? defaults : match.route;
}
