import express, { type Express, type Request, type Response } from 'express';
import type { Logger } from 'pino';
import { pinoHttp } from 'pino-http';
import { HttpProblem } from './errors.js';
import { errorHandler } from './http/error-handler.js';
import { operationalRoutes, type Readiness } from './http/health-routes.js';
import { requestId } from './http/request-id.js';
import type { MappingLimits } from './http/request-mapping.js';
import { rpcHandler } from './http/rpc-route.js';
import { httpLoggerOptions } from './logger.js';
import type { Metrics } from './metrics.js';
import type { RpcClient } from './rpc/rpc-client.js';

export interface AppDeps {
  readonly rpc: RpcClient;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly limits: MappingLimits;
  readonly maxBodyBytes: number;
  readonly readiness: () => Readiness;
  readonly isShuttingDown: () => boolean;
  readonly openApiYaml: string;
}

export const RPC_PATHS = ['/rpc/:queue', '/rpc/:exchange/:routingKey'];

/** Any other method on an RPC path (named: the OpenAPI test tells it from real operations). */
export function methodNotAllowed(req: Request, res: Response): never {
  res.setHeader('Allow', 'POST');
  throw new HttpProblem('method-not-allowed', `${req.method} is not allowed here; use POST`);
}

/** Builds the HTTP edge. Never listens: main.ts (or a test) does. */
export function createApp(deps: AppDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  // An ETag would hash every reply body for nothing: RPC answers are not cacheable.
  app.set('etag', false);

  app.use(requestId);
  app.use(pinoHttp(httpLoggerOptions(deps.logger)));
  app.use(
    operationalRoutes({ readiness: deps.readiness, registry: deps.metrics.registry, openApiYaml: deps.openApiYaml }),
  );

  const rpc = rpcHandler(deps);
  app.post(RPC_PATHS, rpc);
  app.all(RPC_PATHS, methodNotAllowed);
  app.use((req, _res) => {
    throw new HttpProblem('not-found', `No route for ${req.method} ${req.path}`);
  });
  app.use(errorHandler(deps.metrics));
  return app;
}
