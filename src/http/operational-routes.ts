import type { IncomingMessage } from 'node:http';
import { Router } from 'express';
import type { Metrics } from '../observability/metrics.js';

export interface Readiness {
  readonly ready: boolean;
  /** Each condition readiness depends on, for the operator reading /readyz. */
  readonly checks: Readonly<Record<string, boolean>>;
}

export interface OperationalDeps {
  readonly readiness: () => Readiness;
  /** The metrics in the format the scraper asks for (OpenMetrics with exemplars, or Prometheus text). */
  readonly expose: Metrics['expose'];
  /** The contract as served now: the named routes of the routes file included. */
  readonly openApiYaml: () => string;
  /** Throws (401) when /metrics is protected and the request has no valid token. */
  readonly guardMetrics: ((req: IncomingMessage) => void) | undefined;
}

/** /healthz, /readyz, /metrics and /openapi.yaml. */
export function operationalRoutes(deps: OperationalDeps): Router {
  // Case-sensitive like the app's own routes (a router does not inherit the app's setting).
  const router = Router({ caseSensitive: true });
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  router.get('/readyz', (_req, res) => {
    const { ready, checks } = deps.readiness();
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', checks });
  });
  router.get('/metrics', async (req, res) => {
    deps.guardMetrics?.(req);
    const { contentType, text } = await deps.expose(req.headers.accept);
    res.setHeader('Content-Type', contentType);
    res.end(text);
  });
  router.get('/openapi.yaml', (_req, res) => {
    res.setHeader('Content-Type', 'application/yaml');
    res.end(deps.openApiYaml());
  });
  return router;
}
