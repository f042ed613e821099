import type { IncomingMessage } from 'node:http';
import type { Level, Logger } from 'pino';

/** What the RPC pipeline records about a request for its log line. */
export interface RpcLogFields {
  route?: string;
  target?: string;
  correlationId?: string;
  outcome?: string;
  bytesIn?: number;
  /** The reply's body; for a stream, the bodies of all its events. */
  bytesOut?: number;
  /** A stream's events (replies relayed). */
  events?: number;
}

/**
 * How a request appears in a log line. An allowlist: no header reaches the log unless named here,
 * so Authorization, Cookie and the like never do, whatever a client sends.
 */
export function serializeRequest(req: IncomingMessage, id: string) {
  const { headers } = req;
  return {
    id,
    method: req.method,
    url: loggableUrl(req.url),
    contentType: headers['content-type'],
    contentLength: headers['content-length'],
    userAgent: headers['user-agent'],
  };
}

const REDACTED = '[redacted]';

/**
 * The request-target as it may appear in a log line: the path as sent, and of the query only the
 * parameter names (`?access_token=[redacted]&timeout=[redacted]`): a value may be a secret that a
 * client put in the URL. A parameter without `=` may itself be a value, so it is redacted whole.
 * Without a query the URL is returned as is, at the cost of one indexOf.
 */
export function loggableUrl(url: string | undefined): string | undefined {
  const queryAt = url?.indexOf('?') ?? -1;
  if (url === undefined || queryAt === -1) return url;
  const names = url
    .slice(queryAt + 1)
    .split('&')
    .map((parameter) => {
      if (parameter === '') return parameter;
      const equals = parameter.indexOf('=');
      return equals === -1 ? REDACTED : `${parameter.slice(0, equals)}=${REDACTED}`;
    });
  return `${url.slice(0, queryAt)}?${names.join('&')}`;
}

export function levelForStatus(status: number, failed: boolean): Level {
  if (failed || status >= 500) return 'error';
  if (status >= 400) return 'warn';
  return 'info';
}

export interface RequestRecord {
  readonly id: string;
  readonly statusCode: number;
  /** The response was written to the end (not cut off by a client that went away). */
  readonly finished: boolean;
  readonly responseTimeMs: number;
  readonly rpc: RpcLogFields | undefined;
  /** A fault of the bridge's own. */
  readonly error: Error | undefined;
}

/**
 * The one access-log line of every request the bridge serves, RPC or operational, in pino-http's shape
 * (`req`, `res`, `responseTime`, `err`, "request completed"), plus the RPC's own fields. Written here
 * rather than by pino-http's middleware, which makes a child logger per request: on the RPC path it
 * measured 1.17 x the CPU a request at concurrency 64 against writing the line directly (0.93 x), in
 * `npm run bench:compare` against 3808d3f.
 */
export function logRequest(logger: Logger, req: IncomingMessage, record: RequestRecord): void {
  const level = levelForStatus(record.statusCode, record.error !== undefined);
  if (!logger.isLevelEnabled(level)) return;
  const line = {
    req: serializeRequest(req, record.id),
    res: { statusCode: record.statusCode },
    responseTime: record.responseTimeMs,
    rpc: record.rpc,
    err: record.error,
  };
  logger[level](line, record.finished ? 'request completed' : 'request aborted');
}
