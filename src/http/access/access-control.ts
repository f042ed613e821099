import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { BrokerLogin } from '../../rpc/caller-pools.js';
import { HttpProblem } from '../problems.js';
import { CONTROL_CHARACTERS } from '../request-mapping.js';
import type { TokenDefinition } from '../routes/routes-file.js';

export interface AccessOptions {
  /** AUTH_TOKENS: each lets a caller in, with no roles. */
  readonly tokens: readonly string[];
  /** The routes file's tokens: by SHA-256, each with a name routes can require and roles. */
  readonly namedTokens?: readonly TokenDefinition[];
  /** JWT bearer tokens, when configured: verified, their roles claim read. */
  readonly jwt?: BearerTokenVerifier | undefined;
  /**
   * AMQP_IDENTITY=caller: HTTP Basic credentials are the caller's broker login (the broker checks
   * them), and every RPC or publish needs a broker login (Basic, or a token mapped to a broker user).
   */
  readonly brokerLogins?: boolean;
}

/** Verifies a JWT (signature, exp, nbf, iss, aud); rejects with a 401 HttpProblem. */
export interface BearerTokenVerifier {
  /** Whether the token is of the kind this verifier checks (a JWT, not an opaque token). */
  accepts(token: string): boolean;
  verify(token: string): Promise<{ readonly subject?: string | undefined; readonly roles: readonly string[] }>;
}

/** Who is calling, as far as the bridge can tell from the request's credentials. */
export interface Caller {
  /** A routes-file token's name, or a JWT's subject. */
  readonly name: string | undefined;
  /** Set when the caller presented a routes-file token: routes may require it by name. */
  readonly tokenName: string | undefined;
  readonly roles: readonly string[];
  readonly authenticated: boolean;
  /** With AMQP_IDENTITY=caller: whose broker connection carries the caller's requests. */
  readonly brokerLogin?: BrokerLogin | undefined;
}

/**
 * Who is calling (bearer tokens, JWTs, broker logins). What a caller may then reach is admission.ts's
 * decision, made once the request's target is known.
 */
export interface AccessPolicy {
  /** AUTH_TOKENS is set: every route needs a credential. */
  readonly requiresToken: boolean;
  /** Some credential is configured (tokens, JWT, broker logins): the raw routes need one. */
  readonly credentialsConfigured: boolean;
  /** Throws 401 unless the request carries one of the AUTH_TOKENS (or none are configured). */
  authenticate(headers: IncomingHttpHeaders): void;
  /**
   * The caller of an RPC or publish route: anonymous without an Authorization header, else 401
   * unless its bearer token is valid. Synchronous unless a JWT must be verified.
   */
  identify(headers: IncomingHttpHeaders): Caller | Promise<Caller>;
  /** With AMQP_IDENTITY=caller, the caller's broker login; 401 when it has none. */
  brokerLoginOf(caller: Caller): BrokerLogin | undefined;
}

/** WWW-Authenticate for a bearer token (AUTH_TOKENS, a routes-file token, a JWT) that is missing or refused. */
export const BEARER_CHALLENGE = 'Bearer realm="amqp-rpc-bridge"';
const ANONYMOUS: Caller = Object.freeze({ name: undefined, tokenName: undefined, roles: [], authenticated: false });
const TOKEN_CALLER: Caller = Object.freeze({ name: undefined, tokenName: undefined, roles: [], authenticated: true });

export function createAccessPolicy(options: AccessOptions): AccessPolicy {
  // Compare digests, not tokens: equal lengths for timingSafeEqual, and nothing about a token's
  // length or content leaks through how long a comparison takes.
  const digests = options.tokens.map(digest);
  const named = (options.namedTokens ?? []).map((token) => ({
    digest: Buffer.from(token.sha256, 'hex'),
    caller: Object.freeze({
      name: token.name,
      tokenName: token.name,
      roles: token.roles,
      authenticated: true,
      brokerLogin: token.brokerLogin,
    }),
  }));
  const { jwt } = options;
  const brokerLogins = options.brokerLogins === true;
  const anyCredential = digests.length > 0 || named.length > 0 || jwt !== undefined || brokerLogins;
  return {
    requiresToken: digests.length > 0,
    credentialsConfigured: anyCredential,
    authenticate(headers) {
      if (digests.length === 0) return;
      const offered = digest(bearerToken(headers));
      if (!matchesAny(digests, offered)) throw invalidToken();
    },
    identify(headers) {
      if (!anyCredential || headers.authorization === undefined) return ANONYMOUS;
      if (brokerLogins && BASIC.test(headers.authorization)) return basicCaller(headers.authorization);
      const token = bearerToken(headers);
      const offered = digest(token);
      if (matchesAny(digests, offered)) return TOKEN_CALLER;
      let caller: Caller | undefined;
      // Every named token is compared too, whichever matches: the time taken says nothing.
      for (const entry of named) if (timingSafeEqual(entry.digest, offered)) caller = entry.caller;
      if (caller !== undefined) return caller;
      if (jwt?.accepts(token)) {
        return jwt
          .verify(token)
          .then((claims) =>
            Object.freeze({ name: claims.subject, tokenName: undefined, roles: claims.roles, authenticated: true }),
          );
      }
      throw invalidToken();
    },
    brokerLoginOf(caller) {
      if (!brokerLogins) return undefined;
      if (caller.brokerLogin !== undefined) return caller.brokerLogin;
      throw new HttpProblem(
        'unauthorized',
        'This bridge calls the broker as its caller: give HTTP Basic credentials of a broker user (or a token mapped to one)',
        { challenge: BASIC_CHALLENGE },
      );
    },
  };
}

function bearerToken(headers: IncomingHttpHeaders): string {
  const header = headers.authorization;
  const match = typeof header === 'string' ? /^Bearer ([^\s]+)$/i.exec(header) : null;
  if (match === null) throw missingToken();
  return match[1] as string;
}

const BASIC = /^Basic /i;
/** WWW-Authenticate for a broker login (AMQP_IDENTITY=caller) that is missing or refused. */
export const BASIC_CHALLENGE = 'Basic realm="amqp-rpc-bridge", charset="UTF-8"';

/** RFC 7617: base64 of `user:password` (UTF-8); the password may itself hold ':'. */
function basicCaller(header: string): Caller {
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) {
    throw new HttpProblem('unauthorized', 'Basic credentials must be base64 of user:password', {
      challenge: BASIC_CHALLENGE,
    });
  }
  // RFC 7617 allows none, and a NUL would split SASL PLAIN's user\0user\0password where the caller chose.
  if (CONTROL_CHARACTERS.test(decoded)) {
    throw new HttpProblem('unauthorized', 'Basic credentials must not contain control characters', {
      challenge: BASIC_CHALLENGE,
    });
  }
  const brokerLogin = { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  return { name: brokerLogin.username, tokenName: undefined, roles: [], authenticated: true, brokerLogin };
}

function missingToken(): HttpProblem {
  return new HttpProblem('unauthorized', 'This bridge needs Authorization: Bearer <token>', {
    challenge: BEARER_CHALLENGE,
  });
}

function matchesAny(digests: readonly Buffer[], offered: Buffer): boolean {
  let accepted = false;
  // Every configured token is compared, whichever matches: the time taken says nothing.
  for (const known of digests) accepted = timingSafeEqual(known, offered) || accepted;
  return accepted;
}

function invalidToken(): HttpProblem {
  return new HttpProblem('unauthorized', 'The bearer token is not valid', {
    challenge: `${BEARER_CHALLENGE}, error="invalid_token"`,
  });
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

/** `*` matches any run of characters, `?` one character; everything else is literal. */
export function globToRegExp(glob: string): RegExp {
  const source = glob
    .split('')
    .map((char) => (char === '*' ? '.*' : char === '?' ? '.' : char.replace(/[\\^$.|+()[\]{}]/g, '\\$&')))
    .join('');
  return new RegExp(`^${source}$`, 's');
}
