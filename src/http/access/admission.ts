import { HttpProblem } from '../problems.js';
import type { RpcTarget } from '../request-mapping.js';
import type { NamedRoute } from '../routes/route-table.js';
import type { RouteDefinition, Template } from '../routes/routes-file.js';
import { BEARER_CHALLENGE, type Caller, globToRegExp } from './access-control.js';

/**
 * The one admission decision every RPC and publish request passes, raw or named, once its target is
 * resolved (parameters filled in). It decides on what the request reaches, not on the way it came:
 *
 * 1. the route's requirement: a named route's `requires`; for the raw routes, a credential whenever any
 *    is configured, and one of ROUTES_RAW_ROLES when set;
 * 2. the target's guards: a target that a named route with requirements addresses (its fixed target,
 *    or any its parameters' patterns can produce) demands those requirements of every request that
 *    reaches it by a target the caller chose (a raw route, or a parameter), so no open route or raw
 *    path is a way around them;
 * 3. the allowlists (ALLOWED_QUEUES, ALLOWED_EXCHANGES), on the resolved target of every route.
 */
export interface Admission {
  /** Throws the HttpProblem to answer (401, 403) unless the caller may reach this target this way. */
  admit(request: AdmissionRequest): void;
}

export interface AdmissionRequest {
  readonly caller: Caller;
  /** The named route that took the request; undefined for the raw /rpc/... and /publish/... routes. */
  readonly route: NamedRoute | undefined;
  readonly target: RpcTarget;
}

export interface AdmissionOptions {
  /** The routes file's routes: their requirements guard their targets. */
  readonly routes: readonly RouteDefinition[];
  /** ROUTES_RAW_ROLES: the raw routes need one of these roles; undefined, any authenticated caller. */
  readonly rawRoles: readonly string[] | undefined;
  readonly allowedQueues: readonly string[] | undefined;
  readonly allowedExchanges: readonly string[] | undefined;
  /** AUTH_TOKENS is set: even a route that requires nothing needs a credential. */
  readonly tokensRequired: boolean;
  /** Some credential is configured (tokens, JWT, broker logins): the raw routes need one. */
  readonly credentialsConfigured: boolean;
}

/** What a named route demands of its caller: any one of the roles, or any one of the tokens. */
export interface RouteRequirement {
  readonly name: string;
  readonly roles: readonly string[];
  readonly tokens: readonly string[];
}

/** The raw routes as a requirement, for the messages a refusal gives. */
const RAW_ROUTES = 'the raw routes (/rpc/..., /publish/...)';

interface Guard {
  readonly route: RouteDefinition;
  readonly exchange: RegExp;
  readonly routingKey: RegExp;
}

export function createAdmission(options: AdmissionOptions): Admission {
  const allowlists = createAllowlists(options.allowedQueues, options.allowedExchanges);
  const guards: Guard[] = options.routes
    .filter((route) => route.roles.length > 0 || route.tokens.length > 0)
    .map(guardOf);
  const rawRequirement: RouteRequirement | undefined =
    options.rawRoles === undefined ? undefined : { name: RAW_ROUTES, roles: options.rawRoles, tokens: [] };

  /** Why the caller does not meet the requirement (401 anonymous, 403 otherwise), or undefined when it does. */
  const unmet = (caller: Caller, requirement: RouteRequirement, guarded?: RpcTarget): HttpProblem | undefined => {
    if (requirement.roles.length === 0 && requirement.tokens.length === 0) {
      return options.tokensRequired && !caller.authenticated ? missingCredential() : undefined;
    }
    if (caller.tokenName !== undefined && requirement.tokens.includes(caller.tokenName)) return undefined;
    if (caller.roles.some((role) => requirement.roles.includes(role))) return undefined;
    const what = guarded === undefined ? capitalised(describe(requirement)) : `The ${kind(guarded)} ${guarded.label}`;
    const via = guarded === undefined ? '' : ` is guarded by ${describe(requirement)}, which`;
    const target = guarded === undefined ? {} : { target: guarded.label };
    if (!caller.authenticated) {
      return new HttpProblem('unauthorized', `${what}${via} needs Authorization: Bearer <token>`, {
        challenge: BEARER_CHALLENGE,
        ...target,
      });
    }
    return new HttpProblem('forbidden', `${what}${via} needs ${needs(requirement)}`, {
      challenge: `${BEARER_CHALLENGE}, error="insufficient_scope"`,
      ...target,
    });
  };

  return {
    admit({ caller, route, target }) {
      let problem: HttpProblem | undefined;
      if (route === undefined) {
        if (options.credentialsConfigured && !caller.authenticated) throw missingCredential();
        if (rawRequirement !== undefined) problem = unmet(caller, rawRequirement);
      } else {
        problem = unmet(caller, route.definition);
      }
      if (problem !== undefined) throw problem;
      // A fixed target is the operator's own choice for that route; a chosen one must pass every guard.
      if (route === undefined || route.templated) {
        for (const guard of guards) {
          if (guard.route === route?.definition) continue;
          if (!guard.exchange.test(target.exchange) || !guard.routingKey.test(target.routingKey)) continue;
          problem = unmet(caller, guard.route, target);
          if (problem !== undefined) throw problem;
        }
      }
      allowlists.check(target);
    },
  };
}

/** The targets a route's template can produce, as anchored expressions over exchange and routing key. */
function guardOf(route: RouteDefinition): Guard {
  const source = (template: Template) =>
    template
      .map((part) =>
        typeof part === 'string'
          ? part.replace(/[\\^$.|?*+()[\]{}]/g, '\\$&')
          : `(?:${route.params[part.param]?.source ?? '.*'})`,
      )
      .join('');
  const anchored = (text: string) => new RegExp(`^${text}$`, 'su');
  const { target } = route;
  return 'queue' in target
    ? { route, exchange: /^$/, routingKey: anchored(source(target.queue)) }
    : { route, exchange: anchored(source(target.exchange)), routingKey: anchored(source(target.routingKey)) };
}

interface Allowlists {
  /** Throws 403 unless the target is on its allowlist (or neither list is set). */
  check(target: RpcTarget): void;
  /** The refusal for this target, or undefined when it is allowed: for checking fixed targets at load. */
  refusal(target: RpcTarget): string | undefined;
}

/**
 * With neither list set, anything goes; once one is set, the other kind of target is closed unless its
 * own list is set too: an exchange can route to any queue, and the default exchange reaches every
 * queue, so either kind left open would step around the other's list.
 */
export function createAllowlists(
  allowedQueues: readonly string[] | undefined,
  allowedExchanges: readonly string[] | undefined,
): Allowlists {
  const queues = allowedQueues?.map(globToRegExp);
  const exchanges = allowedExchanges?.map(globToRegExp);
  const refusal = (target: RpcTarget): string | undefined => {
    if (queues === undefined && exchanges === undefined) return undefined;
    const byQueue = target.exchange === '';
    const patterns = byQueue ? queues : exchanges;
    if (patterns === undefined) {
      const [setting, unset] = byQueue
        ? ['ALLOWED_EXCHANGES', 'ALLOWED_QUEUES']
        : ['ALLOWED_QUEUES', 'ALLOWED_EXCHANGES'];
      return `This bridge allows only the targets on ${setting}; ${byQueue ? 'queues are' : 'exchanges are'} closed while ${unset} is unset`;
    }
    const name = byQueue ? target.routingKey : target.exchange;
    if (patterns.some((pattern) => pattern.test(name))) return undefined;
    return `This bridge does not allow calls to ${byQueue ? 'queue' : 'exchange'} "${name}"`;
  };
  return {
    refusal,
    check(target) {
      const detail = refusal(target);
      if (detail !== undefined) throw new HttpProblem('forbidden', detail, { target: target.label });
    },
  };
}

function describe(requirement: RouteRequirement): string {
  return requirement.name === RAW_ROUTES ? RAW_ROUTES : `the route ${requirement.name}`;
}

function needs(requirement: RouteRequirement): string {
  if (requirement.roles.length === 0 && requirement.tokens.length === 0) return 'a credential';
  return [
    ...(requirement.roles.length > 0 ? [`one of the roles ${requirement.roles.join(', ')}`] : []),
    ...(requirement.tokens.length > 0 ? [`one of the tokens ${requirement.tokens.join(', ')}`] : []),
  ].join(' or ');
}

function kind(target: RpcTarget): string {
  return target.exchange === '' ? 'queue' : 'target';
}

function capitalised(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function missingCredential(): HttpProblem {
  return new HttpProblem('unauthorized', 'This bridge needs Authorization: Bearer <token>', {
    challenge: BEARER_CHALLENGE,
  });
}
