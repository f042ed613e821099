import type { IncomingMessage } from 'node:http';
import type { Caller } from '../access/access-control.js';
import { type MappingLimits, type MessageFields, messageFields, type RpcTarget } from '../request-mapping.js';
import type { NamedRoute } from '../routes/route-table.js';
import { timeoutParameter } from '../rpc-path.js';

/**
 * Stage "map the message": the properties and headers that cross to AMQP, from the contract's request
 * headers and query (request-mapping.ts), then the route's own headers, then who called as the bridge
 * verified it (`x-caller`: the one identity header a worker may trust).
 */
export function mapMessage(
  req: IncomingMessage,
  query: string,
  target: RpcTarget,
  limits: MappingLimits,
  operation: 'rpc' | 'publish',
  namedRoute: NamedRoute | undefined,
  caller: Caller,
): MessageFields {
  const fields = messageFields(req.headers, timeoutParameter(query), target, limits, operation);
  // The route's own headers win over the caller's Amqp-Header-* of the same name.
  if (namedRoute !== undefined) Object.assign(fields.headers, namedRoute.definition.headers);
  if (caller.name !== undefined) fields.headers['x-caller'] = caller.name;
  return fields;
}
