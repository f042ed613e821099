import type { IncomingMessage, RequestListener } from 'node:http';
import express, { type Express, type Request, type Response } from 'express';
import { pinoHttp } from 'pino-http';
import { httpLoggerOptions } from './access-log.js';
import { errorHandler } from './error-handler.js';
import { operationalRoutes, type Readiness } from './operational-routes.js';
import { HttpProblem } from './problems.js';
import type { RouteSet } from './routes/route-set.js';
import { parseRpcPath, RPC_PATHS } from './rpc-path.js';
import { createRpcRoute, type RpcRouteDeps } from './rpc-route.js';

/** What the RPC route needs, and what the operational routes add to it. */
export interface AppDeps extends RpcRouteDeps {
  readonly readiness: () => Readiness;
  readonly routes: { readonly current: RouteSet };
  readonly protectMetrics: boolean;
}

/** Set on a request whose path is a named route's under another method: the methods that route takes. */
const NAMED_ROUTE_ALLOW = Symbol('named route methods');
type RoutedRequest = IncomingMessage & { [NAMED_ROUTE_ALLOW]?: string };

const SLASH = 0x2f;

/** Any method but POST on an RPC path (named: the OpenAPI test tells it from real operations). */
export function methodNotAllowed(req: Request, res: Response): never {
  // A POST the RPC route did not take (its request-target is no RPC path it accepts): no such route.
  if (req.method === 'POST') throw notFound(req);
  res.setHeader('Allow', 'POST');
  throw new HttpProblem('method-not-allowed', `${req.method} is not allowed on ${req.path}; only POST is`);
}

function namedRouteMethodNotAllowed(req: Request, res: Response, next: () => void): void {
  const allow = (req as RoutedRequest)[NAMED_ROUTE_ALLOW];
  if (allow === undefined) {
    next();
    return;
  }
  res.setHeader('Allow', allow);
  throw new HttpProblem('method-not-allowed', `${req.method} is not allowed on ${req.path}; only ${allow} is`);
}

function notFound(req: Request): HttpProblem {
  return new HttpProblem('not-found', `No route for ${req.method} ${req.path}`);
}

/** `http://host/path?query` (absolute-form, RFC 9112 §3.2.2): the scheme and authority before the path. */
const ABSOLUTE_FORM = /^https?:\/\/[^/?#]*/i;

/**
 * A request-target in absolute-form, which servers must accept, as the origin-form every route
 * expects (`/rpc/q?timeout=5`); the authority (and any user:password in it) is dropped.
 */
function originForm(url: string): string {
  const authority = ABSOLUTE_FORM.exec(url);
  if (authority === null) return url;
  const rest = url.slice(authority[0].length);
  return rest.startsWith('/') ? rest : `/${rest}`;
}

/**
 * The HTTP edge: POST /rpc/... goes straight to the RPC route, everything else to express.
 * Never listens: main.ts (or a test) does.
 */
export function createHttpEdge(deps: AppDeps): { app: Express; handler: RequestListener } {
  const app = createApp(deps);
  const rpcRoute = createRpcRoute(deps);
  const handler: RequestListener = (req, res) => {
    // Origin-form (`/...`) is what clients send; anything else is rewritten once, before routing.
    if (req.url !== undefined && req.url.charCodeAt(0) !== SLASH) req.url = originForm(req.url);
    const routes = deps.routes.current;
    const { url = '/', method = 'GET' } = req;
    if (routes.table !== undefined) {
      const found = routes.table.match(method, url);
      if (found?.kind === 'named') {
        rpcRoute(req, res, found, routes);
        return;
      }
      if (found !== undefined) (req as RoutedRequest)[NAMED_ROUTE_ALLOW] = found.allow;
    }
    const path = routes.rawRoutes && method === 'POST' ? parseRpcPath(url) : undefined;
    if (path === undefined) app(req, res);
    else rpcRoute(req, res, path, routes);
  };
  return { app, handler };
}

/** The express app for everything but the RPC hot path: operational routes, 404/405, errors. */
function createApp(deps: AppDeps): Express {
  const app = express();
  // Paths are case-sensitive, as the RPC route's are: /RPC/q is no RPC path, and answers 404.
  app.enable('case sensitive routing');
  app.disable('x-powered-by');
  app.set('etag', false);
  // pino-http also assigns the request id (X-Request-Id), so it comes first.
  app.use(pinoHttp(httpLoggerOptions(deps.logger)));
  app.use((req, res, next) => {
    const startedAt = performance.now();
    res.once('close', () => {
      deps.metrics.observeHttp(req.method, routeOf(req), res.statusCode, (performance.now() - startedAt) / 1000);
    });
    next();
  });
  app.use(namedRouteMethodNotAllowed);
  // ROUTES_RAW_ENABLED is read once at start (a reload changes only the routes file).
  if (deps.routes.current.rawRoutes) app.all(RPC_PATHS, methodNotAllowed);
  app.use(
    operationalRoutes({
      readiness: deps.readiness,
      expose: (accept) => deps.metrics.expose(accept),
      openApiYaml: () => deps.routes.current.openApiYaml,
      guardMetrics: deps.protectMetrics ? (req) => deps.routes.current.access.authenticate(req.headers) : undefined,
    }),
  );
  app.use((req, _res) => {
    throw notFound(req);
  });
  app.use(errorHandler());
  return app;
}

/** The route pattern that served the request (never the raw path, which clients choose). */
function routeOf(req: Request): string {
  const route = (req as Request & { route?: { path: string | string[] } }).route;
  if (route === undefined) return 'unmatched';
  return req.baseUrl + (Array.isArray(route.path) ? route.path.join('|') : route.path);
}
