import type { Metrics, RpcOutcomeLabel } from '../../observability/metrics.js';
import type { RpcLogFields } from '../access-log.js';

/**
 * Stage "record": the request's RPC or publish metrics, once, by target and outcome (the HTTP-level
 * record and the log line are the exchange's, for every request).
 */
export function recordOutcome(
  metrics: Metrics,
  operation: 'rpc' | 'publish',
  log: RpcLogFields,
  seconds: number,
  traceId: string | undefined,
): void {
  const target = log.target ?? '(invalid)';
  const outcome = log.outcome as RpcOutcomeLabel;
  if (operation === 'publish') {
    metrics.observePublish({ target, outcome, seconds, requestBytes: log.bytesIn, traceId });
    return;
  }
  metrics.observeRpc({
    target,
    outcome,
    seconds,
    requestBytes: log.bytesIn,
    responseBytes: log.bytesOut,
    traceId,
  });
}
