import { HttpProblem } from './problems.js';

/** The parts of an RPC or publish request line the route needs: path segments and query, both undecoded. */
export interface RpcPath {
  readonly kind: 'raw';
  /** `/rpc/...`: wait for the worker's reply. `/publish/...`: wait for the broker's confirm. */
  readonly operation: 'rpc' | 'publish';
  /** One segment (queue) or two (exchange, routing key), still percent-encoded. */
  readonly segments: readonly string[];
  /** Everything after '?', undecoded; '' when absent. */
  readonly query: string;
}

/** The raw RPC and publish operations, in express path syntax (the contract and its test derive from these). */
export const RPC_PATHS = [
  '/rpc/:queue',
  '/rpc/:exchange/:routingKey',
  '/publish/:queue',
  '/publish/:exchange/:routingKey',
];

const RPC_PREFIX = '/rpc/';
const PUBLISH_PREFIX = '/publish/';

/**
 * Recognises `/rpc/{queue}`, `/rpc/{exchange}/{routingKey}` and the same under `/publish/` (one
 * trailing slash tolerated, as express does). Returns undefined for any other shape, which then
 * answers 404 like any unknown path. Cheap: decoding waits for `decodeSegments`, inside the
 * route's error handling.
 */
export function parseRpcPath(url: string): RpcPath | undefined {
  let operation: RpcPath['operation'];
  let prefix: string;
  if (url.startsWith(RPC_PREFIX)) {
    operation = 'rpc';
    prefix = RPC_PREFIX;
  } else if (url.startsWith(PUBLISH_PREFIX)) {
    operation = 'publish';
    prefix = PUBLISH_PREFIX;
  } else {
    return undefined;
  }
  const queryAt = url.indexOf('?');
  let path = queryAt === -1 ? url.slice(prefix.length) : url.slice(prefix.length, queryAt);
  if (path.endsWith('/')) path = path.slice(0, -1);
  const segments = path.split('/');
  if (segments.length > 2 || segments.some((segment) => segment === '')) return undefined;
  return { kind: 'raw', operation, segments, query: queryAt === -1 ? '' : url.slice(queryAt + 1) };
}

/** Percent-decodes the segments (`%2F` may stand for '/'); throws 400 for a malformed escape. */
export function decodeSegments(path: RpcPath): string[] {
  return path.segments.map(decodeSegment);
}

/** The `timeout` query parameter, undefined when absent; more than one is refused. */
export function timeoutParameter(query: string): string | undefined {
  if (query === '') return undefined;
  const values = new URLSearchParams(query).getAll('timeout');
  if (values.length > 1) throw new HttpProblem('invalid-request', 'Give the timeout query parameter at most once');
  return values[0];
}

export function decodeSegment(segment: string): string {
  if (!segment.includes('%')) return segment;
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new HttpProblem('invalid-request', `The path segment "${segment}" has a malformed percent-escape`);
  }
}
