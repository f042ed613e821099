import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';

/** A caller's id is kept when it is short and plain enough to log and echo safely. */
const SANE_REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

/**
 * Gives every request an id (req.id, typed by pino-http): the caller's X-Request-Id if sane, else a
 * fresh UUID. It is echoed on every response and logged with every line about the request.
 */
export function requestId(req: Request, res: Response, next: NextFunction): void {
  const offered = req.headers['x-request-id'];
  const id = typeof offered === 'string' && SANE_REQUEST_ID.test(offered) ? offered : randomUUID();
  req.id = id;
  res.setHeader('X-Request-Id', id);
  next();
}

export function idOf(req: Request): string {
  return typeof req.id === 'string' ? req.id : '';
}
