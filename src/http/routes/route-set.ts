import { type AccessPolicy, type BearerTokenVerifier, createAccessPolicy } from '../access/access-control.js';
import { type Admission, createAdmission, createAllowlists } from '../access/admission.js';
import { openApiWithRoutes } from '../openapi.js';
import { exchangeTarget, type MappingLimits, queueTarget } from '../request-mapping.js';
import { RouteTable } from './route-table.js';
import { type RouteDefinition, type RoutesFile, RoutesFileError } from './routes-file.js';

/**
 * The routes in force and the access policy that goes with them. A routes-file reload replaces the
 * whole set at once; each request reads it once, on arrival, and keeps what it read.
 */
export interface RouteSet {
  readonly access: AccessPolicy;
  /** What each caller may reach: the one decision every RPC and publish request passes. */
  readonly admission: Admission;
  /** The routes file's named routes; undefined without ROUTES_FILE. */
  readonly table: RouteTable | undefined;
  /** Whether POST /rpc/... and /publish/... are served (ROUTES_RAW_ENABLED). */
  readonly rawRoutes: boolean;
  readonly openApiYaml: string;
}

export interface RouteSetOptions {
  /** The parsed routes file; undefined without ROUTES_FILE. */
  readonly file: RoutesFile | undefined;
  readonly fileName: string | undefined;
  readonly rawRoutes: boolean;
  /** ROUTES_RAW_ROLES: the raw routes need one of these roles; undefined, any authenticated caller. */
  readonly rawRoles: readonly string[] | undefined;
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
  if (file !== undefined) {
    checkRolesCanBeGranted(file, options);
    checkFixedTargetsAllowed(file.routes, options);
  }
  const routes = file?.routes ?? [];
  const access = createAccessPolicy({
    tokens: options.authTokens,
    namedTokens: file?.tokens ?? [],
    jwt: options.jwt,
    brokerLogins: options.brokerLogins,
  });
  return {
    access,
    admission: createAdmission({
      routes,
      rawRoles: options.rawRoutes ? options.rawRoles : undefined,
      allowedQueues: options.allowedQueues,
      allowedExchanges: options.allowedExchanges,
      tokensRequired: access.requiresToken,
      credentialsConfigured: access.credentialsConfigured,
    }),
    table: file === undefined ? undefined : new RouteTable(routes, options),
    rawRoutes: options.rawRoutes,
    openApiYaml: openApiWithRoutes(options.baseOpenApiYaml, routes, options.rawRoutes),
  };
}

/** A route whose fixed target the allowlists refuse could never be called: say so at load. */
function checkFixedTargetsAllowed(routes: readonly RouteDefinition[], options: RouteSetOptions): void {
  const allowlists = createAllowlists(options.allowedQueues, options.allowedExchanges);
  for (const route of routes) {
    const { target } = route;
    const fixed = (template: readonly unknown[]) => template.every((part) => typeof part === 'string');
    let refusal: string | undefined;
    if ('queue' in target) {
      if (fixed(target.queue)) refusal = allowlists.refusal(queueTarget(target.queue.join('')));
    } else if (fixed(target.exchange)) {
      refusal = allowlists.refusal(exchangeTarget(target.exchange.join(''), 'any'));
    }
    if (refusal !== undefined) {
      throw new RoutesFileError(`${options.fileName}: route "${route.name}" could never be called: ${refusal}`);
    }
  }
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
