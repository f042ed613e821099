import type { Metrics } from '../../observability/metrics.js';
import type { CallerQuota } from '../../rpc/caller-quota.js';
import type { Caller } from '../access/access-control.js';
import type { Admission } from '../access/admission.js';
import { quotaKey } from '../access/caller-quota.js';
import { HttpProblem } from '../problems.js';
import type { RpcTarget } from '../request-mapping.js';
import type { NamedRoute } from '../routes/route-table.js';

export interface AdmitInput {
  readonly caller: Caller;
  readonly clientAddress: string | undefined;
  readonly namedRoute: NamedRoute | undefined;
  readonly target: RpcTarget;
}

export interface AdmitDeps {
  readonly callerQuota: CallerQuota;
  readonly isShuttingDown: () => boolean;
  /** `callerLimited` counts a request refused for its caller's share. */
  readonly metrics: Pick<Metrics, 'callerLimited'>;
}

/**
 * Stage "admit": may this caller reach this target now? Throws the problem to answer: 401/403 from the
 * one admission decision (access/admission.ts), 429 when the caller already has its share of requests
 * in flight, 503 while shutting down. Returns the key the request counts against in its caller's share
 * (released when the response closes).
 */
export function admit(input: AdmitInput, admission: Admission, deps: AdmitDeps): string {
  const { caller, target } = input;
  admission.admit({ caller, route: input.namedRoute, target });
  if (deps.isShuttingDown()) {
    throw new HttpProblem('shutting-down', 'The bridge is shutting down; retry on another instance', {
      target: target.label,
      retryAfterSeconds: 1,
    });
  }
  const key = quotaKey(caller, input.clientAddress);
  if (!deps.callerQuota.tryAcquire(key)) {
    deps.metrics.callerLimited.inc();
    throw new HttpProblem(
      'too-many-requests',
      `This caller already has ${deps.callerQuota.limit} requests in flight (MAX_IN_FLIGHT_PER_CALLER); retry when one has been answered`,
      { target: target.label, retryAfterSeconds: 1 },
    );
  }
  return key;
}
