import { readFileSync } from 'node:fs';
import { parse, stringify } from 'yaml';
import type { RouteDefinition, Template } from './routes/routes-file.js';
import { RPC_PATHS } from './rpc-path.js';

/**
 * The contract served at /openapi.yaml. It sits at the package root, two levels above src/http/ when run
 * from source and three above dist/src/http/ when built, so both places are tried.
 */
export function loadOpenApiYaml(): string {
  for (const relative of ['../../openapi.yaml', '../../../openapi.yaml']) {
    try {
      return readFileSync(new URL(relative, import.meta.url), 'utf8');
    } catch {
      // try the next place
    }
  }
  throw new Error('openapi.yaml not found next to the package');
}

/** The raw operations a named route's operation is modelled on (same mapping, same answers). */
const TEMPLATE_PATHS = { rpc: openApiPath('/rpc/:queue'), publish: openApiPath('/publish/:queue') } as const;
const RAW_PATHS = RPC_PATHS.map(openApiPath);
const TARGET_PARAMETERS = new Set(['#/components/parameters/Queue', '#/components/parameters/TimeoutQuery']);

type Operation = Record<string, unknown> & { parameters?: Record<string, unknown>[] };

/**
 * The served contract with the routes file's named routes added (each modelled on the raw
 * operation it behaves like) and, when the raw routes are off, those removed.
 */
export function openApiWithRoutes(baseYaml: string, routes: readonly RouteDefinition[], rawRoutes: boolean): string {
  if (routes.length === 0 && rawRoutes) return baseYaml;
  const document = parse(baseYaml) as { paths: Record<string, Record<string, Operation>> };
  const templates = {
    rpc: document.paths[TEMPLATE_PATHS.rpc]?.post,
    publish: document.paths[TEMPLATE_PATHS.publish]?.post,
  };
  if (!rawRoutes) for (const path of RAW_PATHS) delete document.paths[path];
  for (const route of routes) {
    const template = templates[route.operation];
    if (template === undefined) continue;
    const path = openApiPath(route.path);
    const params = [...route.path.matchAll(/:([A-Za-z0-9_]+)/g)].map((match) => match[1] as string);
    const operation: Operation = {
      ...structuredClone(template),
      operationId: route.name,
      summary: `${route.operation === 'rpc' ? 'Call' : 'Publish to'} ${describeTarget(route)} (named route)`,
      description: routeDescription(route),
      parameters: [
        ...params.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string', minLength: 1 } })),
        ...(structuredClone(template.parameters) ?? []).filter(
          (parameter) => typeof parameter.$ref !== 'string' || !TARGET_PARAMETERS.has(parameter.$ref),
        ),
      ],
    };
    if (route.roles.length > 0 || route.tokens.length > 0) operation.security = [{ bearer: [] }];
    document.paths[path] = { ...document.paths[path], [route.method.toLowerCase()]: operation };
  }
  return stringify(document, { lineWidth: 0 });
}

/** `/orders/:id` as OpenAPI writes it: `/orders/{id}`. */
export function openApiPath(path: string): string {
  return path.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
}

function describeTarget(route: RouteDefinition): string {
  const { target } = route;
  return 'queue' in target
    ? `queue ${show(target.queue)}`
    : `exchange ${show(target.exchange)} with routing key ${show(target.routingKey)}`;
}

function routeDescription(route: RouteDefinition): string {
  const lines = [`Route \`${route.name}\` of the routes file.`];
  if (route.timeoutMs !== undefined) lines.push(`Timeout ${route.timeoutMs} ms (a caller may ask for less).`);
  if (route.maxBodyBytes !== undefined) lines.push(`Bodies up to ${route.maxBodyBytes} bytes.`);
  if (route.roles.length > 0) lines.push(`Needs one of the roles: ${route.roles.join(', ')}.`);
  if (route.tokens.length > 0) lines.push(`Needs one of the tokens: ${route.tokens.join(', ')}.`);
  return lines.join(' ');
}

function show(template: Template): string {
  return template.map((part) => (typeof part === 'string' ? part : `{${part.param}}`)).join('');
}
