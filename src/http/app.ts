import type { RequestListener } from 'node:http';
import express, { type Express, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import { CALLS_METHODS, type CallsRouteDeps, runCallRequest } from './calls-route.js';
import { type Cors, isPreflight } from './cors.js';
import { errorHandler } from './error-handler.js';
import { HttpExchange } from './exchange.js';
import { operationalRoutes, type Readiness } from './operational-routes.js';
import { CALLS_PREFIX } from './pipeline/defer.js';
import { type RpcPipelineDeps, runRpc } from './pipeline/rpc-pipeline.js';
import { HttpProblem } from './problems.js';
import type { RouteSet } from './routes/route-set.js';
import { parseRpcPath, RPC_PATHS } from './rpc-path.js';

/** What the RPC pipeline needs, and what the operational routes add to it. */
export interface AppDeps extends RpcPipelineDeps, CallsRouteDeps {
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly readiness: () => Readiness;
  readonly routes: { readonly current: RouteSet };
  readonly protectMetrics: boolean;
  /** CORS_ALLOWED_ORIGINS: browsers' preflights and headers on the RPC and publish routes; undefined: off. */
  readonly cors?: Cors | undefined;
}

const SLASH = 0x2f;

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
 * The HTTP edge, the one entry of every request: it gets its exchange (request id, one log line, one
 * metrics record), then its route: a named route or a raw RPC/publish path runs the RPC pipeline
 * (pipeline/rpc-pipeline.ts) on node:http directly, since express's router measured ~140 µs a request
 * here; everything else is express (operational endpoints, 404, 405). Never listens: main.ts (or a
 * test) does.
 */
export function createHttpEdge(deps: AppDeps): { app: Express; handler: RequestListener } {
  const app = createApp(deps);
  const recorders = { metrics: deps.metrics, logger: deps.logger };
  const { cors } = deps;
  const handler: RequestListener = (req, res) => {
    // Origin-form (`/...`) is what clients send; anything else is rewritten once, before routing.
    if (req.url !== undefined && req.url.charCodeAt(0) !== SLASH) req.url = originForm(req.url);
    const exchange = new HttpExchange(req, res, recorders);
    const routes = deps.routes.current;
    const { url = '/', method = 'GET' } = req;
    if (url.startsWith(CALLS_PREFIX)) {
      // A page that made an asynchronous call reads its answer here.
      if (cors !== undefined && isPreflight(req)) cors.preflight(exchange, CALLS_METHODS);
      else {
        cors?.decorate(req, res);
        runCallRequest(deps, exchange, url, routes);
      }
      return;
    }
    if (routes.table !== undefined) {
      const found = routes.table.match(method, url);
      if (found?.kind === 'named') {
        cors?.decorate(req, res);
        runRpc(deps, exchange, found, routes);
        return;
      }
      if (found !== undefined && cors !== undefined && isPreflight(req)) {
        cors.preflight(exchange, found.allow);
        return;
      }
      if (found !== undefined) {
        res.setHeader('Allow', found.allow);
        exchange.fail(
          new HttpProblem('method-not-allowed', `${method} is not allowed on ${pathOf(url)}; only ${found.allow} is`),
        );
        return;
      }
    }
    const path = routes.rawRoutes && method === 'POST' ? parseRpcPath(url) : undefined;
    if (path !== undefined) {
      cors?.decorate(req, res);
      runRpc(deps, exchange, path, routes);
    } else if (cors !== undefined && routes.rawRoutes && isPreflight(req) && parseRpcPath(url) !== undefined) {
      cors.preflight(exchange, 'POST');
    } else {
      app(req, res);
    }
  };
  return { app, handler };
}

function pathOf(url: string): string {
  const queryAt = url.indexOf('?');
  return queryAt === -1 ? url : url.slice(0, queryAt);
}

/** Any method but POST on an RPC path (named: the OpenAPI test tells it from real operations). */
export function methodNotAllowed(req: Request, res: Response): never {
  // A POST the RPC pipeline did not take (its request-target is no RPC path it accepts): no such route.
  if (req.method === 'POST') throw notFound(req);
  res.setHeader('Allow', 'POST');
  throw new HttpProblem('method-not-allowed', `${req.method} is not allowed on ${req.path}; only POST is`);
}

function notFound(req: Request): HttpProblem {
  return new HttpProblem('not-found', `No route for ${req.method} ${req.path}`);
}

/** The express app for everything but the RPC pipeline: operational routes, 404/405, errors. */
function createApp(deps: AppDeps): Express {
  const app = express();
  // Paths are case-sensitive, as the RPC pipeline's are: /RPC/q is no RPC path, and answers 404.
  app.enable('case sensitive routing');
  app.disable('x-powered-by');
  app.set('etag', false);
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
