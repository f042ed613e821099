import type { MappingLimits, RpcTarget } from '../request-mapping.js';
import { exchangeTarget, queueTarget } from '../request-mapping.js';
import type { NamedRoute, NamedRouteMatch } from '../routes/route-table.js';
import { resolveTarget as resolveNamedTarget } from '../routes/route-table.js';
import { decodeSegments, type RpcPath } from '../rpc-path.js';

/** A raw route (`/rpc/...`, `/publish/...`) or a named route of the routes file. */
export type RouteMatch = RpcPath | NamedRouteMatch;

/** What the route says before anything is read: its pattern, operation and limits. */
export interface RouteFacts {
  /** The route pattern, for metrics, logs and spans. */
  readonly pattern: string;
  readonly operation: 'rpc' | 'publish';
  /** The named route that took the request; undefined for a raw route. */
  readonly namedRoute: NamedRoute | undefined;
}

const rawFacts = (operation: 'rpc' | 'publish', pattern: string): RouteFacts =>
  Object.freeze({ pattern, operation, namedRoute: undefined });
/** The raw routes' facts, by operation and shape; their patterns are what requests are counted and logged under. */
const RAW_FACTS = {
  rpc: { queue: rawFacts('rpc', '/rpc/:queue'), exchange: rawFacts('rpc', '/rpc/:exchange/:routingKey') },
  publish: {
    queue: rawFacts('publish', '/publish/:queue'),
    exchange: rawFacts('publish', '/publish/:exchange/:routingKey'),
  },
} as const;

export function routeFacts(match: RouteMatch): RouteFacts {
  if (match.kind === 'raw') return RAW_FACTS[match.operation][match.segments.length === 1 ? 'queue' : 'exchange'];
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
