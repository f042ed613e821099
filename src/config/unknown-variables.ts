import { loadConfig } from './config.js';
import type { Env } from './env-reader.js';

/** A variable that looks like one of the bridge's but is not one, and the known one closest to it. */
export interface UnknownVariable {
  readonly name: string;
  readonly nearest: string;
}

/** Prefixes of the bridge's variables (not APP_ of APP_ID: too many other programs use it). */
const OUR_PREFIXES = [
  'AMQP_',
  'RPC_',
  'HTTP_',
  'MAX_',
  'AUTH_',
  'ALLOWED_',
  'METRICS_',
  'SHUTDOWN_',
  'EXCHANGE_',
  'LOG_',
  'ROUTES_',
  'JWT_',
  'STREAM_',
  'CORS_',
  'ASYNC_',
  'CALLS_',
  'IDEMPOTENCY_',
];
/** Other programs' variables that share a prefix with ours. */
const FOREIGN_VARIABLES = new Set(['HTTP_PROXY']);
/** Kubernetes sets these for every Service in the namespace (the bridge's own is AMQP_RPC_BRIDGE_...). */
const SERVICE_LINK = /_SERVICE_(HOST|PORT)(_|$)|_PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$/;
const SERVICE_LINK_URL = /^(tcp|udp|sctp):\/\//;

/**
 * Variables that look like the bridge's but that it does not read: one of its prefixes (in any
 * case), or one edit away from a longer name of its (AMPQ_URL). Most likely typos (RPC_TIMEOUT for
 * RPC_TIMEOUT_MS), which would otherwise be ignored in silence. Only names are returned, never a
 * value: a value may be a secret.
 */
export function unknownVariables(env: Env): UnknownVariable[] {
  const known = knownVariables();
  const unknown: UnknownVariable[] = [];
  for (const name of Object.keys(env).sort()) {
    if (known.has(name) || isForeign(name, env[name])) continue;
    const upper = name.toUpperCase();
    const nearest = nearestName(upper, known);
    const typo = nearest.distance <= 1 && nearest.name.length >= 6;
    if (typo || OUR_PREFIXES.some((prefix) => upper.startsWith(prefix))) unknown.push({ name, nearest: nearest.name });
  }
  return unknown;
}

/** Every variable loadConfig reads, found by watching it read an empty environment: no list to keep in step. */
function knownVariables(): ReadonlySet<string> {
  const names = new Set<string>();
  const recorder = new Proxy<Env>(
    {},
    {
      get(_target, name) {
        if (typeof name === 'string') names.add(name);
        return undefined;
      },
    },
  );
  loadConfig(recorder);
  return names;
}

/** Another program's variable, or one Kubernetes sets for a Service, that merely looks like ours. */
function isForeign(name: string, value: string | undefined): boolean {
  const upper = name.toUpperCase();
  if (FOREIGN_VARIABLES.has(upper) || SERVICE_LINK.test(upper)) return true;
  // <SERVICE>_PORT=tcp://10.0.0.1:80 is a service link too; the value is only looked at, never shown.
  return upper.endsWith('_PORT') && SERVICE_LINK_URL.test(value ?? '');
}

function nearestName(name: string, candidates: ReadonlySet<string>): { name: string; distance: number } {
  let nearest = { name: '', distance: Number.POSITIVE_INFINITY };
  for (const candidate of candidates) {
    const distance = editDistance(name, candidate);
    if (distance < nearest.distance) nearest = { name: candidate, distance };
  }
  return nearest;
}

/** Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  const width = b.length + 1;
  const table = new Array<number>((a.length + 1) * width).fill(0);
  const at = (i: number, j: number): number => table[i * width + j] ?? 0;
  for (let i = 0; i <= a.length; i++) {
    for (let j = 0; j <= b.length; j++) {
      let distance = i + j;
      if (i > 0 && j > 0) {
        distance = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + (a[i - 1] === b[j - 1] ? 0 : 1));
        if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
          distance = Math.min(distance, at(i - 2, j - 2) + 1);
        }
      }
      table[i * width + j] = distance;
    }
  }
  return at(a.length, b.length);
}
