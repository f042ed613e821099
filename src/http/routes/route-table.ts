import { exchangeTarget, type MappingLimits, queueTarget, type RpcTarget } from '../request-mapping.js';
import { decodeSegment } from '../rpc-path.js';
import { ROUTE_METHODS, type RouteDefinition, type Template } from './routes-file.js';

/** A named route, ready to serve: its definition plus what the edge derives from it once. */
export interface NamedRoute {
  readonly definition: RouteDefinition;
  /** The route's timeout is both its default and its ceiling: a caller may only shorten it. */
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
}

/** A request that matched a named route, with its path parameters (percent-decoded). */
export interface NamedRouteMatch {
  readonly kind: 'named';
  readonly route: NamedRoute;
  readonly params: Readonly<Record<string, string>>;
  readonly query: string;
}

export interface RouteDefaults {
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
}

interface CompiledRoute {
  readonly route: NamedRoute;
  /** A literal segment, or the name of the parameter it binds. */
  readonly segments: readonly (string | { readonly param: string })[];
}

/**
 * The named routes of the routes file, by method. Matching splits the path once and compares
 * segment by segment; routes are few (tens), so a scan beats building a trie.
 */
export class RouteTable {
  private readonly byMethod = new Map<string, CompiledRoute[]>();

  constructor(
    readonly definitions: readonly RouteDefinition[],
    defaults: RouteDefaults,
  ) {
    for (const definition of definitions) {
      const route: NamedRoute = {
        definition,
        limits:
          definition.timeoutMs === undefined
            ? defaults.limits
            : {
                defaultTimeoutMs: definition.timeoutMs,
                maxTimeoutMs: definition.timeoutMs,
                maxTimeoutSource: `route ${definition.name}`,
              },
        maxBodyBytes: definition.maxBodyBytes ?? defaults.maxBodyBytes,
      };
      const segments = definition.path
        .slice(1)
        .split('/')
        .map((segment) => (segment.startsWith(':') ? { param: segment.slice(1) } : segment));
      const list = this.byMethod.get(definition.method) ?? [];
      list.push({ route, segments });
      this.byMethod.set(definition.method, list);
    }
  }

  /**
   * The route for this method and request-target, or `undefined` when none; the methods allowed on
   * the path when it is a route's path under another method (for 405).
   */
  match(method: string, url: string): NamedRouteMatch | { kind: 'wrong-method'; allow: string } | undefined {
    const queryAt = url.indexOf('?');
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    const query = queryAt === -1 ? '' : url.slice(queryAt + 1);
    let segments = path.slice(1).split('/');
    if (segments.length > 1 && segments[segments.length - 1] === '') segments = segments.slice(0, -1);
    const found = this.find(method, segments);
    if (found !== undefined) return { kind: 'named', route: found.route, params: bind(found, segments), query };
    const allow = ROUTE_METHODS.filter((other) => other !== method && this.find(other, segments) !== undefined);
    return allow.length === 0 ? undefined : { kind: 'wrong-method', allow: allow.join(', ') };
  }

  private find(method: string, segments: readonly string[]): CompiledRoute | undefined {
    const candidates = this.byMethod.get(method);
    if (candidates === undefined) return undefined;
    return candidates.find(
      (candidate) =>
        candidate.segments.length === segments.length &&
        candidate.segments.every((expected, index) =>
          typeof expected === 'string' ? expected === segments[index] : segments[index] !== '',
        ),
    );
  }
}

function bind(route: CompiledRoute, segments: readonly string[]): Record<string, string> {
  const params: Record<string, string> = Object.create(null);
  route.segments.forEach((expected, index) => {
    if (typeof expected !== 'string') params[expected.param] = segments[index] as string;
  });
  return params;
}

/**
 * The route's target with its placeholders filled from the path. Parameters are percent-decoded
 * here, and the result is checked like a raw route's target (400 for a name the broker would refuse).
 */
export function resolveTarget(match: NamedRouteMatch): RpcTarget {
  const { target } = match.route.definition;
  const fill = (template: Template) =>
    template.map((part) => (typeof part === 'string' ? part : decodeSegment(match.params[part.param] ?? ''))).join('');
  return 'queue' in target
    ? queueTarget(fill(target.queue))
    : exchangeTarget(fill(target.exchange), fill(target.routingKey));
}
