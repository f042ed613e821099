import type { ServerResponse } from 'node:http';
import pino, { type DestinationStream, type Logger } from 'pino';
import type { Options } from 'pino-http';
import type { LogLevel } from './config.js';

/** Header values that must never reach a log line, whatever a serializer does. */
const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
  'res.headers["set-cookie"]',
];

export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  const options = {
    level,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    base: { service: 'amqp-rpc-bridge' },
  };
  return destination ? pino(options, destination) : pino(options);
}

/** What the RPC route records about a request for its log line (kept on res.locals.rpc). */
export interface RpcLogFields {
  target?: string;
  correlationId?: string;
  outcome?: string;
  bytesIn?: number;
  bytesOut?: number;
}

/**
 * pino-http: one line per request, with the bridge's request id and what happened to the RPC.
 * Request serialisation is an allowlist: no header reaches the log unless named here.
 */
export function httpLoggerOptions(logger: Logger): Options {
  return {
    logger,
    // requestId() runs first and has set it.
    genReqId: (req) => req.id,
    customLogLevel: (_req, res, err) => {
      if (err || res.statusCode >= 500) return 'error';
      if (res.statusCode >= 400) return 'warn';
      return 'info';
    },
    // pino-http invents an Error (with a stack) for every 5xx; only a real one (res.err) is worth logging.
    customErrorObject: (_req, res, _err, value) => {
      if ((res as ServerResponse & { err?: unknown }).err !== undefined) return value;
      const { err: _synthetic, ...rest } = value as Record<string, unknown>;
      return rest;
    },
    customErrorMessage: () => 'request completed',
    customProps: (_req, res) => {
      const locals = (res as ServerResponse & { locals?: { rpc?: RpcLogFields } }).locals;
      return locals?.rpc ? { rpc: locals.rpc } : {};
    },
    serializers: {
      req: (req: { id: string; method: string; url: string; headers: Record<string, string | undefined> }) => ({
        id: req.id,
        method: req.method,
        url: req.url,
        contentType: req.headers['content-type'],
        contentLength: req.headers['content-length'],
        userAgent: req.headers['user-agent'],
      }),
      res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
    },
  };
}
