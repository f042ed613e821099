import { type CallId, requestFingerprint } from '../../rpc/call-ids.js';
import type { DeferredRefusal } from '../../rpc/deferred-calls.js';
import { HttpProblem } from '../problems.js';
import type { MessageFields, RpcTarget } from '../request-mapping.js';
import type { Rendered } from './render.js';

/** Says a retried request was answered with the first request's answer (the name Stripe and others use). */
export const REPLAYED_HEADER = 'Idempotent-Replayed';

/** Where a call's status and reply are read: `/calls/{id}`. */
export const CALLS_PREFIX = '/calls/';

/**
 * 202 for a call not answered yet: where to ask (`Location`), when to ask again (`Retry-After`), and a
 * small status document. `preferenceApplied`: the answer to a `Prefer: respond-async` request (RFC 7240 §3).
 */
export function pendingAnswer(call: CallId, preferenceApplied: boolean): Extract<Rendered, { kind: 'answer' }> {
  const location = `${CALLS_PREFIX}${call.id}`;
  const headers: Array<readonly [string, string]> = [
    ['Content-Type', 'application/json'],
    ['Location', location],
    ['Retry-After', '1'],
  ];
  if (preferenceApplied) headers.push(['Preference-Applied', 'respond-async']);
  const body = JSON.stringify({
    status: 'pending',
    id: call.id,
    location,
    deadline: new Date(call.deadline).toISOString(),
    keptUntil: new Date(call.keptUntil).toISOString(),
  });
  return { kind: 'answer', status: 202, headers, body };
}

/** Headers that differ between a request and its retry by design: each attempt has its own trace context. */
const PER_ATTEMPT_HEADERS = new Set(['traceparent', 'tracestate']);

/**
 * What an idempotency key's request is made of: operation, target, every message property the caller
 * chose, its headers and its body. A retry with the same key must match it, or is refused (422).
 */
export function fingerprintOf(
  operation: 'rpc' | 'publish',
  target: RpcTarget,
  fields: MessageFields,
  body: Buffer,
): string {
  const headers = Object.entries(fields.headers)
    .filter(([name]) => !PER_ATTEMPT_HEADERS.has(name))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return requestFingerprint(
    [
      operation,
      target.exchange,
      target.routingKey,
      fields.contentType ?? '',
      fields.contentEncoding ?? '',
      String(fields.deliveryMode),
      String(fields.priority ?? ''),
      fields.type ?? '',
      JSON.stringify(headers),
    ],
    body,
  );
}

/** The problem for a deferred request the bridge would not take. */
export function refusalProblem(refusal: DeferredRefusal, target: string | undefined): HttpProblem {
  const options = target === undefined ? {} : { target };
  switch (refusal.kind) {
    case 'key-reused':
      return new HttpProblem(
        'idempotency-key-reused',
        'This Idempotency-Key was used for a request with another target or body; use a new key for a new request',
        options,
      );
    case 'key-unsettled':
      return new HttpProblem(
        'idempotency-key-busy',
        'The first request with this Idempotency-Key left no call to join: it failed before reaching a worker, or its call was given up; retry (a failed one is sent again), or use a new key',
        { ...options, retryAfterSeconds: 1 },
      );
    case 'caller-held-limit':
      return new HttpProblem(
        'too-many-requests',
        `This caller already has ${refusal.limit} asynchronous calls and idempotency keys kept (CALLS_MAX_HELD_PER_CALLER); retry when some have expired`,
        { ...options, retryAfterSeconds: 1 },
      );
    case 'held-limit':
      return new HttpProblem(
        'overloaded',
        `This bridge already keeps ${refusal.limit} asynchronous calls and idempotency keys (CALLS_MAX_HELD)`,
        { ...options, retryAfterSeconds: 1 },
      );
    case 'waiting-limit':
      return new HttpProblem(
        'overloaded',
        `${refusal.limit} asynchronous and keyed requests are already under way (CALLS_MAX_WAITING)`,
        { ...options, retryAfterSeconds: 1 },
      );
    case 'caller-waiting-limit':
      return new HttpProblem(
        'too-many-requests',
        `This caller already has ${refusal.limit} asynchronous and keyed requests under way (half of CALLS_MAX_WAITING)`,
        { ...options, retryAfterSeconds: 1 },
      );
  }
}
