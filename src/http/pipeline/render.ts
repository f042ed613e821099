import type { ServerResponse } from 'node:http';
import type { RpcOutcomeLabel } from '../../observability/metrics.js';
import type { RpcOutcome } from '../../rpc/outcome.js';
import type { HttpProblem } from '../problems.js';
import { outcomeProblem, replyToHttp } from '../response-mapping.js';

/** The metrics label of each outcome. */
export const OUTCOME_LABELS: Record<RpcOutcome['kind'], RpcOutcomeLabel> = {
  reply: 'ok',
  accepted: 'ok',
  unroutable: 'unroutable',
  'exchange-not-found': 'unroutable',
  'exchange-name-refused': 'rejected',
  'exchange-forbidden': 'rejected',
  lost: 'lost',
  timeout: 'timeout',
  cancelled: 'cancelled',
  unavailable: 'unavailable',
  overloaded: 'overloaded',
  nacked: 'nacked',
};

/** What rendering an outcome decided: an answer to write, a problem to send, or nobody to answer. */
export type Rendered =
  | {
      readonly kind: 'answer';
      readonly status: number;
      readonly headers: ReadonlyArray<readonly [string, string]>;
      readonly body: Buffer | string;
    }
  | { readonly kind: 'problem'; readonly problem: HttpProblem; readonly label: RpcOutcomeLabel }
  | { readonly kind: 'nobody' };

export interface RenderInput {
  readonly operation: 'rpc' | 'publish';
  readonly targetLabel: string;
  readonly requestId: string;
  /** Milliseconds from publish to outcome, for Server-Timing. */
  readonly roundTripMs: number;
  /** The Server-Timing metric of a reply: `rpc` (publish to reply) unless the caller's wait is meant (`call`). */
  readonly timing?: 'rpc' | 'call';
}

/**
 * Stage "render": the worker's reply as the HTTP response (status, mapped headers, body byte for
 * byte), a publish's 202, or the problem an outcome maps to. Writes nothing (`write` does, once the
 * request is recorded); throws the 502 for a reply that cannot be mapped.
 */
export function render(outcome: RpcOutcome, input: RenderInput): Rendered {
  if (outcome.kind === 'cancelled') return { kind: 'nobody' };
  if (outcome.kind === 'accepted') {
    return {
      kind: 'answer',
      status: 202,
      headers: [
        ['Content-Type', 'application/json'],
        ['Server-Timing', `publish;dur=${input.roundTripMs.toFixed(2)}`],
      ],
      body: `{"status":"accepted","requestId":${JSON.stringify(input.requestId)}}`,
    };
  }
  if (outcome.kind !== 'reply') {
    return {
      kind: 'problem',
      problem: outcomeProblem(outcome, input.targetLabel, input.operation),
      label: OUTCOME_LABELS[outcome.kind],
    };
  }
  const reply = replyToHttp(outcome.reply, input.targetLabel);
  const headers: Array<readonly [string, string]> = reply.headers;
  headers.push(['Server-Timing', `${input.timing ?? 'rpc'};dur=${input.roundTripMs.toFixed(2)}`]);
  return { kind: 'answer', status: reply.status, headers, body: reply.body };
}

/** Writes a rendered answer; while draining, it tells the client to reconnect elsewhere. */
export function write(res: ServerResponse, answer: Extract<Rendered, { kind: 'answer' }>, draining: boolean): void {
  res.statusCode = answer.status;
  for (const [name, value] of answer.headers) res.setHeader(name, value);
  if (draining) res.setHeader('Connection', 'close');
  res.end(answer.body);
}
