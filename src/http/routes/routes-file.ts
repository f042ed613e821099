// Hand-written on purpose: re-expressed with valibot it came to 374 lines against these 391, needed a 25-line issue-path-to-message formatter, and still changed 14 of 67 sampled error messages (missing or empty values, lists given for mappings, which of several errors a file reports).
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { BRIDGE_HEADERS } from '../request-mapping.js';

/**
 * The routes file (ROUTES_FILE): named HTTP routes an operator exposes instead of, or beside, the raw
 * /rpc/... and /publish/... routes, each bound to a fixed target, and the callers' tokens that may
 * use them. Parsed and validated as a whole; every error names the file, the route and the field.
 */

export const ROUTE_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE', 'GET'] as const;
export type RouteMethod = (typeof ROUTE_METHODS)[number];

/** A target string: literal parts and `{parameter}` placeholders filled from the path. */
export type Template = readonly (string | { readonly param: string })[];

export interface RouteDefinition {
  readonly name: string;
  readonly method: RouteMethod;
  /** `/orders/:orderId/events`: literal segments and `:name` parameters, one segment each. */
  readonly path: string;
  readonly operation: 'rpc' | 'publish';
  /** The default exchange with the queue as routing key, or an exchange and a routing key. */
  readonly target: { readonly queue: Template } | { readonly exchange: Template; readonly routingKey: Template };
  /** The route's timeout; a caller may ask for less (Amqp-Timeout), never for more. */
  readonly timeoutMs: number | undefined;
  readonly maxBodyBytes: number | undefined;
  /** Any one of these roles, or any one of these named tokens, lets a caller in; both empty: any caller. */
  readonly roles: readonly string[];
  readonly tokens: readonly string[];
  /** Message headers the route adds; they win over a caller's Amqp-Header-* of the same name. */
  readonly headers: Readonly<Record<string, string>>;
  /** Every path parameter's pattern (the route's own, or DEFAULT_PARAM_PATTERN), matched whole against the decoded value. */
  readonly params: Readonly<Record<string, ParamPattern>>;
}

/** What a path parameter may hold, checked after percent-decoding. */
export interface ParamPattern {
  /** As written in the file (or the default), for messages and the contract. */
  readonly source: string;
  /** Anchored: the whole value must match. */
  readonly regExp: RegExp;
}

/**
 * A parameter's default: no '.', '/', '#', '*' (topic and path separators, wildcards), no control, bidi
 * or other non-ASCII characters, never empty. A value can then be a name, never a piece of another route's
 * target or a pattern over several.
 */
export const DEFAULT_PARAM_PATTERN = '[A-Za-z0-9_-]+';

export interface TokenDefinition {
  readonly name: string;
  /** SHA-256 of the token, hex: the file never holds the secret itself. */
  readonly sha256: string;
  readonly roles: readonly string[];
  /** AMQP_IDENTITY=caller: the broker user this token's holder calls as (password from a file). */
  readonly brokerLogin?: { readonly username: string; readonly password: string } | undefined;
}

export interface RoutesFile {
  readonly routes: readonly RouteDefinition[];
  readonly tokens: readonly TokenDefinition[];
}

export interface RouteLimits {
  readonly maxTimeoutMs: number;
  readonly maxBodyBytes: number;
  /** Paths the bridge serves itself, which no route may take. */
  readonly reservedPaths: readonly string[];
  /** Path prefixes the bridge serves (the raw routes while they are on, /calls/), each with what serves it. */
  readonly reservedPrefixes: readonly ReservedPrefix[];
}

export interface ReservedPrefix {
  readonly prefix: string;
  /** Completes "lies under <prefix>, …" in the refusal. */
  readonly servedBy: string;
}

/** Says which file, route and field are wrong; never echoes a token digest. */
export class RoutesFileError extends Error {
  override name = 'RoutesFileError';
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const PARAM_SEGMENT = /^:([A-Za-z_][A-Za-z0-9_]*)$/;
const LITERAL_SEGMENT = /^[A-Za-z0-9._~!$&'()*+,;=@-]+$/;
const PLACEHOLDER = /\{([^{}]*)\}/g;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const HEADER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Message headers only the bridge sets (its own, and the trace context it carries): a route may not set them either. */
const ROUTE_FORBIDDEN_HEADERS = new Set(['traceparent', 'tracestate', ...BRIDGE_HEADERS]);
const DEFAULT_PATTERN = paramPattern(DEFAULT_PARAM_PATTERN, 'the default parameter pattern');
const ROUTE_FIELDS = new Set([
  'name',
  'method',
  'path',
  'operation',
  'queue',
  'exchange',
  'routingKey',
  'timeoutMs',
  'maxBodyBytes',
  'requires',
  'headers',
  'params',
]);

export function loadRoutesFile(file: string, limits: RouteLimits): RoutesFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new RoutesFileError(`${file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  return parseRoutesFile(text, file, limits);
}

export function parseRoutesFile(text: string, file: string, limits: RouteLimits): RoutesFile {
  let document: unknown;
  try {
    document = parse(text);
  } catch (err) {
    throw new RoutesFileError(`${file} is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const top = object(document, `${file}`, 'the file');
  unknownFields(top, new Set(['routes', 'tokens']), file, 'the file');
  const tokens = list(top.tokens ?? [], file, 'tokens').map((entry, index) => tokenDefinition(entry, file, index));
  const tokenNames = new Set<string>();
  for (const token of tokens) {
    if (tokenNames.has(token.name)) throw new RoutesFileError(`${file}: token "${token.name}" is defined twice`);
    tokenNames.add(token.name);
  }
  const rawRoutes = list(top.routes, file, 'routes');
  if (rawRoutes.length === 0) throw new RoutesFileError(`${file}: routes lists no route`);
  const routes = rawRoutes.map((entry, index) => routeDefinition(entry, { file, index, limits, tokenNames }));
  const seen = new Map<string, string>();
  const names = new Set<string>();
  for (const route of routes) {
    if (names.has(route.name)) throw new RoutesFileError(`${file}: route "${route.name}" is defined twice`);
    names.add(route.name);
    // `/a/:x` and `/a/:y` take the same requests: the shape decides, not the parameter names (nor their
    // patterns, whose overlap cannot be decided in general). Where shapes differ, a literal segment wins
    // over a parameter (RouteTable), so those pairs are never ambiguous.
    const shape = `${route.method} ${route.path.replace(/:[A-Za-z0-9_]+/g, ':')}`;
    const other = seen.get(shape);
    if (other !== undefined) {
      throw new RoutesFileError(
        `${file}: routes "${other}" and "${route.name}" both take ${route.method} ${route.path} (whatever their parameters' patterns): give them paths that differ in a literal segment`,
      );
    }
    seen.set(shape, route.name);
  }
  return { routes, tokens };
}

interface RouteContext {
  readonly file: string;
  readonly index: number;
  readonly limits: RouteLimits;
  readonly tokenNames: ReadonlySet<string>;
}

function routeDefinition(entry: unknown, context: RouteContext): RouteDefinition {
  const { file, index, limits } = context;
  const at = (field: string, name?: string) =>
    `${file}: route ${name === undefined ? `routes[${index}]` : `"${name}" (routes[${index}])`}: ${field}`;
  const raw = object(entry, file, `routes[${index}]`);
  const name = raw.name;
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new RoutesFileError(`${at('name')} is required: letters, digits, '.', '_' or '-', at most 64 characters`);
  }
  const where = (field: string) => at(field, name);
  for (const field of Object.keys(raw)) {
    if (!ROUTE_FIELDS.has(field)) throw new RoutesFileError(`${where(field)} is not a route field`);
  }
  const method = (raw.method ?? 'POST') as RouteMethod;
  if (!ROUTE_METHODS.includes(method)) {
    throw new RoutesFileError(`${where('method')} must be one of ${ROUTE_METHODS.join(', ')}`);
  }
  const path = routePath(raw.path, where('path'), limits);
  const params = new Set(
    path
      .split('/')
      .map((segment) => PARAM_SEGMENT.exec(segment)?.[1])
      .filter((param): param is string => param !== undefined),
  );
  const operation = raw.operation ?? 'rpc';
  if (operation !== 'rpc' && operation !== 'publish') {
    throw new RoutesFileError(`${where('operation')} must be rpc or publish`);
  }
  let target: RouteDefinition['target'];
  if (raw.queue !== undefined) {
    if (raw.exchange !== undefined || raw.routingKey !== undefined) {
      throw new RoutesFileError(`${where('queue')} and exchange/routingKey exclude each other: give one target`);
    }
    target = { queue: template(raw.queue, where('queue'), params) };
  } else if (raw.exchange !== undefined) {
    if (raw.routingKey === undefined) throw new RoutesFileError(`${where('routingKey')} is required with exchange`);
    target = {
      exchange: template(raw.exchange, where('exchange'), params),
      routingKey: template(raw.routingKey, where('routingKey'), params),
    };
  } else {
    throw new RoutesFileError(`${where('queue')} or exchange and routingKey is required`);
  }
  const requires = raw.requires === undefined ? {} : object(raw.requires, file, where('requires'));
  unknownFields(requires, new Set(['roles', 'tokens']), file, where('requires'));
  const tokens = names(requires.tokens, where('requires.tokens'));
  for (const token of tokens) {
    if (!context.tokenNames.has(token)) {
      throw new RoutesFileError(`${where('requires.tokens')} names token "${token}", which tokens does not define`);
    }
  }
  return {
    name,
    method,
    path,
    operation,
    target,
    timeoutMs: optionalInteger(raw.timeoutMs, where('timeoutMs'), 1, limits.maxTimeoutMs, 'RPC_MAX_TIMEOUT_MS'),
    maxBodyBytes: optionalInteger(raw.maxBodyBytes, where('maxBodyBytes'), 0, limits.maxBodyBytes, 'MAX_BODY_BYTES'),
    roles: names(requires.roles, where('requires.roles')),
    tokens,
    headers: fixedHeaders(raw.headers, file, where('headers')),
    params: paramPatterns(raw.params, params, file, where('params')),
  };
}

/** Each parameter's pattern: the route's own where it declares one, else the default. */
function paramPatterns(
  value: unknown,
  params: ReadonlySet<string>,
  file: string,
  where: string,
): Readonly<Record<string, ParamPattern>> {
  const declared = value === undefined ? {} : object(value, file, where);
  const patterns: Record<string, ParamPattern> = Object.create(null);
  for (const [name, source] of Object.entries(declared)) {
    if (!params.has(name)) throw new RoutesFileError(`${where}: ${name} is no parameter of the route's path`);
    if (typeof source !== 'string' || source === '') {
      throw new RoutesFileError(`${where}: ${name} must be a regular expression, as a non-empty string`);
    }
    patterns[name] = paramPattern(source, `${where}: ${name}`);
  }
  for (const name of params) patterns[name] ??= DEFAULT_PATTERN;
  return Object.freeze(patterns);
}

function paramPattern(source: string, where: string): ParamPattern {
  let regExp: RegExp;
  try {
    regExp = new RegExp(`^(?:${source})$`, 'u');
  } catch (err) {
    throw new RoutesFileError(`${where} is not a valid regular expression: ${(err as Error).message}`);
  }
  // An empty value would leave a target with a hole in it ("orders." for "orders.{id}").
  if (regExp.test('')) throw new RoutesFileError(`${where} must not match the empty string`);
  return { source, regExp };
}

function routePath(value: unknown, where: string, limits: RouteLimits): string {
  if (typeof value !== 'string' || !value.startsWith('/') || value === '/') {
    throw new RoutesFileError(`${where} is required and must start with '/' (for example /orders/:orderId)`);
  }
  const segments = value.slice(1).split('/');
  const params = new Set<string>();
  for (const segment of segments) {
    const param = PARAM_SEGMENT.exec(segment)?.[1];
    if (param !== undefined) {
      if (params.has(param)) throw new RoutesFileError(`${where} uses the parameter :${param} twice`);
      params.add(param);
    } else if (!LITERAL_SEGMENT.test(segment)) {
      throw new RoutesFileError(
        `${where} has the segment "${segment}": use literal text (no spaces, '?', '#' or '%') or :name`,
      );
    }
  }
  if (limits.reservedPaths.includes(value))
    throw new RoutesFileError(`${where} ${value} is served by the bridge itself`);
  const reserved = limits.reservedPrefixes.find(({ prefix }) => `${value}/`.startsWith(prefix));
  if (reserved !== undefined) {
    throw new RoutesFileError(`${where} ${value} lies under ${reserved.prefix}, ${reserved.servedBy}`);
  }
  return value;
}

/** `orders.{region}`: `{region}` must be one of the path's parameters. */
function template(value: unknown, where: string, params: ReadonlySet<string>): Template {
  if (typeof value !== 'string' || value === '') throw new RoutesFileError(`${where} must be a non-empty string`);
  const parts: (string | { param: string })[] = [];
  let last = 0;
  for (const match of value.matchAll(PLACEHOLDER)) {
    const param = match[1] as string;
    if (!params.has(param)) {
      throw new RoutesFileError(`${where} uses {${param}}, which is no parameter of the route's path`);
    }
    if (match.index > last) parts.push(value.slice(last, match.index));
    parts.push({ param });
    last = match.index + match[0].length;
  }
  if (last < value.length) parts.push(value.slice(last));
  const literal = parts.filter((part): part is string => typeof part === 'string').join('');
  if (literal.includes('{') || literal.includes('}')) throw new RoutesFileError(`${where} has an unmatched brace`);
  return parts;
}

function tokenDefinition(entry: unknown, file: string, index: number): TokenDefinition {
  const raw = object(entry, file, `tokens[${index}]`);
  const name = raw.name;
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new RoutesFileError(`${file}: tokens[${index}]: name is required: letters, digits, '.', '_' or '-'`);
  }
  const where = `${file}: token "${name}" (tokens[${index}])`;
  unknownFields(raw, new Set(['name', 'sha256', 'roles', 'brokerUser', 'brokerPasswordFile']), file, where);
  if (typeof raw.sha256 !== 'string' || !SHA256_HEX.test(raw.sha256)) {
    throw new RoutesFileError(
      `${where}: sha256 must be the token's SHA-256 as 64 lowercase hex digits (printf %s "$TOKEN" | sha256sum)`,
    );
  }
  return { name, sha256: raw.sha256, roles: names(raw.roles, `${where}: roles`), brokerLogin: brokerLogin(raw, where) };
}

/** `brokerUser` with `brokerPasswordFile` (a mounted secret): the password never sits in this file. */
function brokerLogin(raw: Record<string, unknown>, where: string): TokenDefinition['brokerLogin'] {
  const { brokerUser, brokerPasswordFile } = raw;
  if (brokerUser === undefined && brokerPasswordFile === undefined) return undefined;
  if (typeof brokerUser !== 'string' || brokerUser === '' || typeof brokerPasswordFile !== 'string') {
    throw new RoutesFileError(`${where}: brokerUser and brokerPasswordFile go together, both non-empty strings`);
  }
  let password: string;
  try {
    password = readFileSync(brokerPasswordFile, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new RoutesFileError(
      `${where}: brokerPasswordFile ${brokerPasswordFile} cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
  return { username: brokerUser, password };
}

function fixedHeaders(value: unknown, file: string, where: string): Readonly<Record<string, string>> {
  if (value === undefined) return {};
  const raw = object(value, file, where);
  const headers: Record<string, string> = Object.create(null);
  for (const [name, text] of Object.entries(raw)) {
    if (!HEADER_NAME.test(name)) throw new RoutesFileError(`${where}: "${name}" is not a usable header name`);
    if (ROUTE_FORBIDDEN_HEADERS.has(name.toLowerCase())) {
      throw new RoutesFileError(`${where}: ${name} is set by the bridge itself`);
    }
    if (typeof text !== 'string' && typeof text !== 'number' && typeof text !== 'boolean') {
      throw new RoutesFileError(`${where}: ${name} must be a string, number or boolean`);
    }
    headers[name] = String(text);
  }
  return Object.freeze(headers);
}

function names(value: unknown, where: string): readonly string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((item) => typeof item !== 'string' || item === '')) {
    throw new RoutesFileError(`${where} must be a list of non-empty strings`);
  }
  return Object.freeze([...(value as string[])]);
}

function optionalInteger(value: unknown, where: string, min: number, max: number, ceiling: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new RoutesFileError(`${where} must be a whole number from ${min} to ${max} (${ceiling})`);
  }
  return value;
}

function object(value: unknown, file: string, where: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new RoutesFileError(`${where.startsWith(file) ? where : `${file}: ${where}`} must be a mapping`);
  }
  return value as Record<string, unknown>;
}

function list(value: unknown, file: string, where: string): unknown[] {
  if (!Array.isArray(value)) throw new RoutesFileError(`${file}: ${where} must be a list`);
  return value;
}

function unknownFields(raw: Record<string, unknown>, known: ReadonlySet<string>, file: string, where: string): void {
  for (const field of Object.keys(raw)) {
    if (!known.has(field)) {
      throw new RoutesFileError(
        `${where.startsWith(file) ? where : `${file}: ${where}`}: ${field} is not a known field`,
      );
    }
  }
}
