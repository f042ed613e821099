/**
 * The JWT_* variables, read and checked with the rest of the configuration. Kept apart from the
 * verifier so that reading the configuration never loads jose: only a bridge that accepts JWTs does.
 */

import { ConfigError } from './config-error.js';
import { type Env, EnvReader } from './env-reader.js';

/** What a public key may sign with. `none` is never accepted; neither is HS* with a public key. */
export const PUBLIC_KEY_ALGORITHMS = [
  ...['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'],
  ...['ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'],
] as const;
/** What a shared secret (JWT_SECRET_FILE) may sign with, and the fewest bytes each needs (RFC 7518 §3.2). */
export const SECRET_BYTES = { HS256: 32, HS384: 48, HS512: 64 } as const;
export const SECRET_ALGORITHMS = Object.keys(SECRET_BYTES) as (keyof typeof SECRET_BYTES)[];
export type JwtAlgorithm = (typeof PUBLIC_KEY_ALGORITHMS)[number] | keyof typeof SECRET_BYTES;

const DEFAULT_PUBLIC_KEY_ALGORITHMS: readonly JwtAlgorithm[] = ['RS256', 'PS256', 'ES256', 'EdDSA', 'Ed25519'];

export interface JwtSettings {
  /** A PEM public key (SPKI, or an X.509 certificate), or a JSON file holding a JWK or a JWKS. */
  readonly keyFile?: string;
  /** A JSON Web Key Set; a token's `kid` picks its key. */
  readonly jwksFile?: string;
  /** A shared secret for HS256/384/512: the file's bytes, less one trailing newline. */
  readonly secretFile?: string;
  /** The `iss` every token must carry; unset, any issuer passes. */
  readonly issuer?: string;
  /** The `aud` a token must carry (one of them, for a list). Required unless `allowAnyAudience`. */
  readonly audience?: string | readonly string[];
  /**
   * JWT_ALLOW_ANY_AUDIENCE=true: no `aud` check, so a token the key signed for any other application
   * passes too. Only in so many words: without it, a missing audience stops the start.
   */
  readonly allowAnyAudience?: boolean;
  /** Tokens living longer than this (`exp - iat`, or `exp - now` without `iat`) are refused; unset: any. */
  readonly maxLifetimeSeconds?: number;
  readonly algorithms: readonly JwtAlgorithm[];
  /** The claim holding the caller's roles: an array of strings, or a space-separated string for `scope`/`scp`. */
  readonly rolesClaim: string;
  /** Leeway for `exp` and `nbf` against clocks that disagree. */
  readonly clockToleranceSeconds: number;
}

export const KEY_VARIABLES = {
  keyFile: 'JWT_PUBLIC_KEY_FILE',
  jwksFile: 'JWT_JWKS_FILE',
  secretFile: 'JWT_SECRET_FILE',
} as const;
const KEY_VARIABLE_LIST = 'JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE or JWT_SECRET_FILE';

/**
 * JWT verification from the environment: undefined when none of JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE
 * and JWT_SECRET_FILE is set. Throws ConfigError naming the variable. The files are read by
 * `JwtVerifier.load`, not here.
 */
export function jwtSettingsFromEnv(env: Env): JwtSettings | undefined {
  const reader = new EnvReader(env);
  const read = (name: string) => reader.optionalString(name);
  // Every variable is read, set or not: config.ts learns the names it knows by watching what is read.
  const files = {
    keyFile: read('JWT_PUBLIC_KEY_FILE'),
    jwksFile: read('JWT_JWKS_FILE'),
    secretFile: read('JWT_SECRET_FILE'),
  };
  const others = {
    JWT_ISSUER: read('JWT_ISSUER'),
    JWT_AUDIENCE: read('JWT_AUDIENCE'),
    JWT_ALGORITHMS: read('JWT_ALGORITHMS'),
    JWT_ROLES_CLAIM: read('JWT_ROLES_CLAIM'),
    JWT_CLOCK_TOLERANCE_SECONDS: read('JWT_CLOCK_TOLERANCE_SECONDS'),
    JWT_ALLOW_ANY_AUDIENCE: read('JWT_ALLOW_ANY_AUDIENCE'),
    JWT_MAX_LIFETIME_SECONDS: read('JWT_MAX_LIFETIME_SECONDS'),
  };
  const keyNames = keyVariablesSet(files);
  if (keyNames.length === 0) {
    // Half a JWT set-up would otherwise leave the bridge without the checks its operator asked for.
    const stray = Object.entries(others).find(([, value]) => value !== undefined);
    if (stray !== undefined) throw new ConfigError(`${stray[0]} is set, but no key is: set ${KEY_VARIABLE_LIST}`);
    return undefined;
  }
  const settings: Mutable<JwtSettings> = {
    algorithms: algorithmsFrom(reader.list('JWT_ALGORITHMS'), files.secretFile !== undefined),
    rolesClaim: others.JWT_ROLES_CLAIM ?? 'roles',
    clockToleranceSeconds: reader.integer('JWT_CLOCK_TOLERANCE_SECONDS', 30, 0, 600),
  };
  for (const field of ['keyFile', 'jwksFile', 'secretFile'] as const) {
    const path = files[field];
    if (path !== undefined) settings[field] = path;
  }
  if (others.JWT_ISSUER !== undefined) settings.issuer = others.JWT_ISSUER;
  const audience = reader.list('JWT_AUDIENCE');
  if (audience !== undefined) settings.audience = audience.length === 1 ? (audience[0] as string) : audience;
  if (reader.boolean('JWT_ALLOW_ANY_AUDIENCE', false)) {
    if (audience !== undefined) {
      throw new ConfigError('JWT_AUDIENCE and JWT_ALLOW_ANY_AUDIENCE=true contradict each other: set one of them');
    }
    settings.allowAnyAudience = true;
  }
  if (others.JWT_MAX_LIFETIME_SECONDS !== undefined) {
    settings.maxLifetimeSeconds = reader.integer('JWT_MAX_LIFETIME_SECONDS', 0, 60, 31_536_000);
  }
  checkOneKey(settings);
  checkAudience(settings);
  return Object.freeze(settings);
}

/**
 * Without an audience, a token the identity provider signed for any other application (its `aud`
 * another service's) would open this bridge: it takes JWT_AUDIENCE, or an explicit opt-out.
 */
export function checkAudience(settings: JwtSettings): void {
  if (settings.audience === undefined && settings.allowAnyAudience !== true) {
    throw new ConfigError(
      'JWT_AUDIENCE is required with JWT verification (a token for any other application would pass); set it, or JWT_ALLOW_ANY_AUDIENCE=true to accept any audience',
    );
  }
}

/** What the JWT settings leave open that an operator should hear about at start (one line each). */
export function jwtWarnings(settings: JwtSettings): string[] {
  const warnings: string[] = [];
  if (settings.issuer === undefined) {
    warnings.push(
      "JWT_ISSUER is unset: tokens from any issuer the key verifies are accepted; set it to your identity provider's issuer",
    );
  }
  if (settings.allowAnyAudience === true) {
    warnings.push(
      "JWT_ALLOW_ANY_AUDIENCE=true: tokens meant for any application are accepted; set JWT_AUDIENCE to this bridge's",
    );
  }
  return warnings;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function keyVariablesSet(settings: { readonly [K in keyof typeof KEY_VARIABLES]?: string | undefined }): string[] {
  return (['keyFile', 'jwksFile', 'secretFile'] as const)
    .filter((field) => settings[field] !== undefined)
    .map((field) => KEY_VARIABLES[field]);
}

export function checkOneKey(settings: JwtSettings): void {
  const names = keyVariablesSet(settings);
  if (names.length !== 1) {
    throw new ConfigError(
      `Set exactly one of ${KEY_VARIABLE_LIST}; ${names.length === 0 ? 'none' : names.join(' and ')} set`,
    );
  }
}

function algorithmsFrom(listed: readonly string[] | undefined, secret: boolean): readonly JwtAlgorithm[] {
  const allowed: readonly JwtAlgorithm[] = secret ? SECRET_ALGORITHMS : PUBLIC_KEY_ALGORITHMS;
  if (listed === undefined) return secret ? ['HS256'] : DEFAULT_PUBLIC_KEY_ALGORITHMS;
  return Object.freeze(
    listed.map((name) => {
      const match = allowed.find((algorithm) => algorithm === name);
      if (match !== undefined) return match;
      const why = (SECRET_ALGORITHMS as readonly string[]).includes(name)
        ? `${name} needs a shared secret (JWT_SECRET_FILE), not a public key`
        : (PUBLIC_KEY_ALGORITHMS as readonly string[]).includes(name)
          ? `${name} needs a public key, and JWT_SECRET_FILE holds a shared secret`
          : `it must list only ${allowed.join(', ')}, got ${JSON.stringify(name)}`;
      throw new ConfigError(`JWT_ALGORITHMS: ${why}`);
    }),
  );
}
