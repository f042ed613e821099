import { type BearerTokenVerifier, createAccessPolicy } from '../access/access-control.js';
import type { RouteSet } from '../app.js';
import { openApiWithRoutes } from '../openapi.js';
import type { MappingLimits } from '../request-mapping.js';
import { RouteTable } from './route-table.js';
import { type RoutesFile, RoutesFileError } from './routes-file.js';

export interface RouteSetOptions {
  /** The parsed routes file; undefined without ROUTES_FILE. */
  readonly file: RoutesFile | undefined;
  readonly fileName: string | undefined;
  readonly rawRoutes: boolean;
  readonly authTokens: readonly string[];
  readonly jwt: BearerTokenVerifier | undefined;
  readonly allowedQueues: readonly string[] | undefined;
  readonly allowedExchanges: readonly string[] | undefined;
  /** AMQP_IDENTITY=caller: HTTP Basic is a broker login, and every call needs one. */
  readonly brokerLogins: boolean;
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
  readonly baseOpenApiYaml: string;
}

/** Paths the bridge serves itself; no named route may take them. */
export const OPERATIONAL_PATHS = ['/healthz', '/readyz', '/metrics', '/openapi.yaml'] as const;
export const RAW_ROUTE_PREFIXES = ['/rpc/', '/publish/'] as const;

/**
 * Everything that changes when the routes file does, built in one go so that a reload swaps it
 * whole: the named routes, the access policy that knows the file's tokens, the served contract.
 */
export function buildRouteSet(options: RouteSetOptions): RouteSet {
  const { file } = options;
  if (file !== undefined) checkRolesCanBeGranted(file, options);
  const routes = file?.routes ?? [];
  return {
    access: createAccessPolicy({
      tokens: options.authTokens,
      namedTokens: file?.tokens ?? [],
      jwt: options.jwt,
      allowedQueues: options.allowedQueues,
      allowedExchanges: options.allowedExchanges,
      brokerLogins: options.brokerLogins,
    }),
    table: file === undefined ? undefined : new RouteTable(routes, options),
    rawRoutes: options.rawRoutes,
    openApiYaml: openApiWithRoutes(options.baseOpenApiYaml, routes, options.rawRoutes),
  };
}

/** A role only JWTs could carry while JWT is off would lock the route for good: say so at load. */
function checkRolesCanBeGranted(file: RoutesFile, options: RouteSetOptions): void {
  if (options.jwt !== undefined) return;
  const granted = new Set(file.tokens.flatMap((token) => token.roles));
  for (const route of file.routes) {
    const missing = route.roles.filter((role) => !granted.has(role));
    if (missing.length > 0 && route.tokens.length === 0 && missing.length === route.roles.length) {
      throw new RoutesFileError(
        `${options.fileName}: route "${route.name}": requires.roles ${missing.join(', ')}: no token grants them and JWT is not configured (JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE)`,
      );
    }
  }
}
