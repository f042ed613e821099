// Hand-written on purpose: find-my-way matches literal-first after decoding but binds an empty segment (/orders//events) and reads '*' in a literal as a wildcard; path-to-regexp lets file order decide and refuses literal '*', '(', '+', '!': either needs the guards this scan already is.
import { HttpProblem } from '../problems.js';
import { exchangeTarget, type MappingLimits, queueTarget, type RpcTarget } from '../request-mapping.js';
import { ROUTE_METHODS, type RouteDefinition, type Template } from './routes-file.js';

/** A named route, ready to serve: its definition plus what the edge derives from it once. */
export interface NamedRoute {
  readonly definition: RouteDefinition;
  /** The route's timeout is both its default and its ceiling: a caller may only shorten it. */
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
  /** Whether a path parameter fills its target: the caller then picks the target, within the patterns. */
  readonly templated: boolean;
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
 * The named routes of the routes file, by method. Matching splits the path once, decodes each segment
 * and compares segment by segment; routes are few (tens), so a scan beats building a trie. A literal
 * segment wins over a parameter whatever the file order: `/orders/admin` is never taken by
 * `/orders/:id`, however it is spelt (`/orders/%61dmin` is the same path).
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
        templated: templates(definition).some((template) => template.some((part) => typeof part !== 'string')),
      };
      const segments = definition.path
        .slice(1)
        .split('/')
        .map((segment) => (segment.startsWith(':') ? { param: segment.slice(1) } : segment));
      const list = this.byMethod.get(definition.method) ?? [];
      list.push({ route, segments });
      this.byMethod.set(definition.method, list);
    }
    // Most literal first: of two routes that take a request, the one with a literal where the other has
    // a parameter (at the first place they differ) comes first. Same shapes are refused at load.
    for (const list of this.byMethod.values()) list.sort(literalFirst);
  }

  /**
   * The route for this method and request-target, or `undefined` when none; the methods allowed on
   * the path when it is a route's path under another method (for 405).
   */
  match(method: string, url: string): NamedRouteMatch | { kind: 'wrong-method'; allow: string } | undefined {
    const queryAt = url.indexOf('?');
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    const query = queryAt === -1 ? '' : url.slice(queryAt + 1);
    let raw = path.slice(1).split('/');
    if (raw.length > 1 && raw[raw.length - 1] === '') raw = raw.slice(0, -1);
    const segments = decodeAll(raw);
    // A malformed escape is no path any route has.
    if (segments === undefined) return undefined;
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

function literalFirst(a: CompiledRoute, b: CompiledRoute): number {
  const length = Math.min(a.segments.length, b.segments.length);
  for (let index = 0; index < length; index++) {
    const aLiteral = typeof a.segments[index] === 'string';
    const bLiteral = typeof b.segments[index] === 'string';
    if (aLiteral !== bLiteral) return aLiteral ? -1 : 1;
  }
  return 0;
}

function decodeAll(segments: readonly string[]): string[] | undefined {
  const decoded: string[] = [];
  for (const segment of segments) {
    if (!segment.includes('%')) {
      decoded.push(segment);
      continue;
    }
    try {
      decoded.push(decodeURIComponent(segment));
    } catch {
      return undefined;
    }
  }
  return decoded;
}

function bind(route: CompiledRoute, segments: readonly string[]): Record<string, string> {
  const params: Record<string, string> = Object.create(null);
  route.segments.forEach((expected, index) => {
    if (typeof expected !== 'string') params[expected.param] = segments[index] as string;
  });
  return params;
}

function templates(definition: RouteDefinition): Template[] {
  const { target } = definition;
  return 'queue' in target ? [target.queue] : [target.exchange, target.routingKey];
}

/**
 * The route's target with its placeholders filled from the path. Each (decoded) parameter must match
 * its pattern whole (400 naming the parameter otherwise), and the result is checked like a raw
 * route's target (400 for a name the broker would refuse).
 */
export function resolveTarget(match: NamedRouteMatch): RpcTarget {
  const { definition } = match.route;
  for (const [name, pattern] of Object.entries(definition.params)) {
    const value = match.params[name] ?? '';
    if (!pattern.regExp.test(value)) {
      throw new HttpProblem(
        'invalid-request',
        `The path parameter ${name} must match ${pattern.source} (route ${definition.name})`,
      );
    }
  }
  const { target } = definition;
  const fill = (template: Template) =>
    template.map((part) => (typeof part === 'string' ? part : (match.params[part.param] ?? ''))).join('');
  return 'queue' in target
    ? queueTarget(fill(target.queue))
    : exchangeTarget(fill(target.exchange), fill(target.routingKey));
}
