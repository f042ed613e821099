import type { IncomingMessage, ServerResponse } from 'node:http';
import type { HttpExchange } from './exchange.js';
import { HttpProblem } from './problems.js';

/** Comma-separated header names (RFC 9110 tokens), as a browser lists them in a preflight. */
const HEADER_LIST = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$/;
/** What the access log and metrics call a preflight: not a route of its own, and never the raw path. */
const PREFLIGHT_ROUTE = 'OPTIONS (CORS preflight)';
/** How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours). */
const MAX_AGE_SECONDS = '600';

/** A preflight: OPTIONS with Access-Control-Request-Method (a plain OPTIONS is no CORS business). */
export function isPreflight(req: IncomingMessage): boolean {
  return req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined;
}

/**
 * CORS_ALLOWED_ORIGINS: which browser pages may call the RPC and publish routes (and /calls, where an
 * asynchronous call's answer is read). Only those routes get
 * the headers; credentials are an `Authorization` header the page sets, never cookies, so
 * Access-Control-Allow-Credentials is never sent (and `*` may be used for exposing headers).
 */
export class Cors {
  private readonly anyOrigin: boolean;
  private readonly origins: ReadonlySet<string>;

  constructor(origins: readonly string[]) {
    this.anyOrigin = origins.includes('*');
    this.origins = new Set(origins);
  }

  /** Sets the CORS headers of an RPC or publish response (problems included) for an allowed origin. */
  decorate(req: IncomingMessage, res: ServerResponse): void {
    const { origin } = req.headers;
    if (origin === undefined) return;
    if (!this.anyOrigin) res.setHeader('Vary', 'Origin');
    if (!this.allows(origin)) return;
    res.setHeader('Access-Control-Allow-Origin', this.anyOrigin ? '*' : origin);
    // X-Request-Id, Amqp-Header-*, Retry-After...: a page may read whatever a server-side caller can.
    res.setHeader('Access-Control-Expose-Headers', '*');
  }

  /**
   * Answers a preflight on an RPC or publish route (or /calls): 204 for an allowed origin, 403 for any
   * other. `methods`: what the path takes (a named route's methods, POST for a raw one).
   */
  preflight(exchange: HttpExchange, methods: string): void {
    exchange.route = PREFLIGHT_ROUTE;
    const { req, res } = exchange;
    const { origin } = req.headers;
    if (origin === undefined || !this.allows(origin)) {
      exchange.fail(
        new HttpProblem(
          'forbidden',
          `The origin ${origin ?? '(none)'} may not call this bridge (CORS_ALLOWED_ORIGINS)`,
        ),
      );
      return;
    }
    this.decorate(req, res);
    res.statusCode = 204;
    res.setHeader('Access-Control-Allow-Methods', methods);
    const requested = req.headers['access-control-request-headers'];
    // Echoed, since `*` would not cover Authorization; only a well-formed list is.
    if (requested !== undefined && HEADER_LIST.test(requested))
      res.setHeader('Access-Control-Allow-Headers', requested);
    res.setHeader('Access-Control-Max-Age', MAX_AGE_SECONDS);
    if (!this.anyOrigin) res.setHeader('Vary', 'Origin, Access-Control-Request-Headers');
    res.end();
  }

  private allows(origin: string): boolean {
    return this.anyOrigin || this.origins.has(origin);
  }
}
