/**
 * Bearer JWTs: settings from the JWT_* variables, a key loaded once at start-up, and a verifier that
 * turns a token into a caller (subject, roles) or into a 401 that says why. Keys are local files (a
 * PEM or JWK public key, a JWKS, or a shared secret); nothing is fetched over the network.
 */

import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createLocalJWKSet, errors, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import { ConfigError } from '../../config/config-error.js';
import {
  checkAudience,
  checkOneKey,
  type JwtAlgorithm,
  type JwtSettings,
  KEY_VARIABLES,
  SECRET_ALGORITHMS,
  SECRET_BYTES,
} from '../../config/jwt-settings.js';
import { HttpProblem } from '../problems.js';
import { BEARER_CHALLENGE } from './access-control.js';

/** Who a verified token speaks for. */
export interface JwtCaller {
  readonly subject: string | undefined;
  readonly roles: readonly string[];
  /** The token's `exp`, in seconds since the epoch. */
  readonly expiresAt?: number;
}

export interface JwtVerifierOptions {
  /** The clock `exp` and `nbf` are checked against. */
  readonly now?: () => Date;
}

type VerificationKey = KeyObject | Uint8Array | JWTVerifyGetKey;

/** Verifies bearer JWTs against the key of one JwtSettings. Build it with `load`. */
export class JwtVerifier {
  private constructor(
    private readonly key: VerificationKey,
    /** The configured algorithms that the key can verify. */
    private readonly algorithms: readonly JwtAlgorithm[],
    private readonly settings: JwtSettings,
    private readonly now: (() => Date) | undefined,
  ) {}

  /**
   * Reads and checks the key file once. Throws ConfigError naming the variable and the path (never
   * the key) when the file cannot be read or parsed, holds a private key, or fits none of the
   * configured algorithms.
   */
  static async load(settings: JwtSettings, options: JwtVerifierOptions = {}): Promise<JwtVerifier> {
    checkOneKey(settings);
    checkAudience(settings);
    const { key, algorithms } = await loadKey(settings);
    return new JwtVerifier(key, algorithms, settings, options.now);
  }

  /**
   * The caller a token speaks for. Throws a 401 HttpProblem (with its challenge) for any token it
   * refuses; any other error is a fault of the bridge's and is rethrown as it is.
   */
  /** A JWT in compact form, as opposed to an opaque bearer token. */
  accepts(token: string): boolean {
    return looksLikeJwt(token);
  }

  async verify(token: string): Promise<JwtCaller> {
    const { issuer, audience, clockToleranceSeconds, rolesClaim, maxLifetimeSeconds } = this.settings;
    const now = this.now?.();
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.key, {
        algorithms: [...this.algorithms],
        requiredClaims: ['exp'],
        clockTolerance: clockToleranceSeconds,
        ...(issuer === undefined ? {} : { issuer }),
        ...(audience === undefined ? {} : { audience: typeof audience === 'string' ? audience : [...audience] }),
        ...(now === undefined ? {} : { currentDate: now }),
      }));
    } catch (err) {
      throw refusal(reasonFor(err));
    }
    if (maxLifetimeSeconds !== undefined) {
      const tooLong = lifetimeExceeded(payload, maxLifetimeSeconds, clockToleranceSeconds, now ?? new Date());
      if (tooLong !== undefined) throw refusal(tooLong);
    }
    const caller = {
      subject: typeof payload.sub === 'string' ? payload.sub : undefined,
      roles: rolesOf(payload, rolesClaim),
    };
    return Object.freeze(payload.exp === undefined ? caller : { ...caller, expiresAt: payload.exp });
  }
}

/**
 * Whether a bearer token has a JWT's shape: three base64url segments (the last may be empty), the
 * first a JSON header naming an `alg`. Nothing is verified; it tells JWTs from opaque tokens.
 */
export function looksLikeJwt(token: string): boolean {
  const [header, payload, signature, ...rest] = token.split('.');
  if (header === undefined || payload === undefined || signature === undefined || rest.length > 0) return false;
  const segments = BASE64URL.test(header) && BASE64URL.test(payload) && (signature === '' || BASE64URL.test(signature));
  if (!segments) return false;
  try {
    const decoded: unknown = JSON.parse(Buffer.from(header, 'base64url').toString('utf8'));
    return typeof decoded === 'object' && decoded !== null && typeof (decoded as { alg?: unknown }).alg === 'string';
  } catch {
    return false;
  }
}

const BASE64URL = /^[A-Za-z0-9_-]+$/;

/** Claims that hold space-separated strings (RFC 8693 `scope`; Microsoft's `scp`), not arrays. */
const SPACE_SEPARATED_CLAIMS = new Set(['scope', 'scp']);
const NO_ROLES: readonly string[] = Object.freeze([]);

/** A claim of any other shape gives no roles: the caller is authenticated, and authorized for nothing role-bound. */
function rolesOf(payload: JWTPayload, claim: string): readonly string[] {
  const value = payload[claim];
  if (typeof value === 'string' && SPACE_SEPARATED_CLAIMS.has(claim)) {
    return Object.freeze(value.split(' ').filter((role) => role !== ''));
  }
  if (Array.isArray(value) && value.every((role): role is string => typeof role === 'string')) {
    return Object.freeze([...value]);
  }
  return NO_ROLES;
}

/**
 * Why a verified token lives too long, or undefined. Its lifetime is `exp - iat`: a token issued long
 * ago counts as long-lived however little of it is left. Without `iat` all that can be measured is
 * what is left, `exp - now` (with the clock tolerance, for a clock that is behind).
 */
function lifetimeExceeded(payload: JWTPayload, maxSeconds: number, toleranceSeconds: number, now: Date) {
  const exp = payload.exp as number; // required (requiredClaims), and a number: jose has checked both
  if (typeof payload.iat === 'number') {
    return exp - payload.iat > maxSeconds ? `has too long a lifetime (exp - iat above ${maxSeconds} s)` : undefined;
  }
  const left = exp - Math.floor(now.getTime() / 1000);
  return left > maxSeconds + toleranceSeconds
    ? `has too long a lifetime (exp - now above ${maxSeconds} s, no iat)`
    : undefined;
}

/** The 401 for a refused token. The reasons are fixed texts: nothing of the token is echoed. */
function refusal(reason: string): HttpProblem {
  const detail = `The bearer token ${reason}`;
  return new HttpProblem('unauthorized', detail, {
    challenge: `${BEARER_CHALLENGE}, error="invalid_token", error_description="${detail}"`,
  });
}

function reasonFor(err: unknown): string {
  if (err instanceof errors.JWTExpired) return 'has expired (exp)';
  if (err instanceof errors.JWTClaimValidationFailed) {
    // `claim` is one of the names jose checks, never text from the token.
    if (err.reason === 'missing') return `lacks the ${err.claim} claim`;
    if (err.reason === 'invalid') return `has an invalid ${err.claim} claim`;
    if (err.claim === 'nbf') return 'is not valid yet (nbf)';
    if (err.claim === 'iss') return 'comes from another issuer (iss)';
    if (err.claim === 'aud') return 'is meant for another audience (aud)';
    return `fails the ${err.claim} check`;
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'has a signature that does not verify';
  if (err instanceof errors.JOSEAlgNotAllowed || err instanceof errors.JOSENotSupported) {
    return 'is signed with an algorithm this bridge does not accept (alg)';
  }
  if (err instanceof errors.JWKSNoMatchingKey) return 'matches none of the configured keys (kid, alg)';
  if (err instanceof errors.JWKSMultipleMatchingKeys) return 'matches several configured keys and names none (kid)';
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) return 'is not a well-formed signed JWT';
  // jose reports a key that does not suit the token's algorithm (a JWK's alg or use) as a TypeError.
  if (err instanceof errors.JOSEError || err instanceof TypeError) return 'cannot be verified with the configured key';
  throw err;
}

/** Reads the one key file of `settings` and works out which configured algorithms it can verify. */
async function loadKey(settings: JwtSettings): Promise<{ key: VerificationKey; algorithms: readonly JwtAlgorithm[] }> {
  const field =
    settings.keyFile !== undefined ? 'keyFile' : settings.jwksFile !== undefined ? 'jwksFile' : 'secretFile';
  const path = settings[field] as string;
  const where = `${KEY_VARIABLES[field]} (${path})`;
  const fail = (why: string): never => {
    throw new ConfigError(`${where} ${why}`);
  };
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    return fail(`cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const fitting = (fits: Iterable<JwtAlgorithm>, what: string): readonly JwtAlgorithm[] => {
    const usable = new Set(fits);
    const algorithms = settings.algorithms.filter((algorithm) => usable.has(algorithm));
    if (algorithms.length === 0)
      fail(`holds ${what}, which none of JWT_ALGORITHMS (${settings.algorithms.join(', ')}) fits`);
    return algorithms;
  };

  if (field === 'secretFile') {
    const secret = new Uint8Array(stripNewline(bytes));
    if (secret.length < SECRET_BYTES.HS256) fail(`holds fewer than ${SECRET_BYTES.HS256} bytes: too short a secret`);
    const fits = SECRET_ALGORITHMS.filter((algorithm) => secret.length >= SECRET_BYTES[algorithm]);
    return { key: secret, algorithms: fitting(fits, `a ${secret.length}-byte secret`) };
  }
  const text = bytes.toString('utf8').trim();
  if (field === 'keyFile' && text.startsWith('-----BEGIN')) {
    // createPublicKey would derive the public half of a private key; the bridge must not hold one.
    if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text))
      fail('holds a private key; give the bridge the public key only');
    let key: KeyObject;
    try {
      key = createPublicKey(text);
    } catch {
      return fail('is not a PEM public key or certificate');
    }
    return { key, algorithms: fitting(algorithmsFor(key), describe(key)) };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    // JSON.parse's message quotes the text, which may be key material.
    return fail(field === 'keyFile' ? 'is neither a PEM key nor JSON' : 'is not JSON');
  }
  const keys = (json as { keys?: unknown } | null)?.keys;
  if (field === 'keyFile' && !Array.isArray(keys) && isObject(json) && 'kty' in json) {
    const key = publicKeyOf(json, fail, 'holds');
    return { key, algorithms: fitting(jwkAlgorithms(json, key), describe(key)) };
  }
  if (!Array.isArray(keys) || !keys.every(isObject)) return fail('is not a JSON Web Key Set ({"keys": [...]})');
  const fits = new Set<JwtAlgorithm>();
  keys.forEach((jwk, index) => {
    // Sets published by identity providers may hold key types Node does not know (encryption keys are
    // known, and fit no signature algorithm: see jwkAlgorithms).
    if (!['RSA', 'EC', 'OKP', 'oct'].includes(String(jwk.kty))) return;
    for (const algorithm of jwkAlgorithms(jwk, publicKeyOf(jwk, fail, `key ${index + 1} is`))) fits.add(algorithm);
  });
  const algorithms = fitting(fits, `${keys.length} key(s)`);
  let key: JWTVerifyGetKey;
  try {
    key = createLocalJWKSet(json as JSONWebKeySet);
  } catch {
    return fail('is not a valid JSON Web Key Set');
  }
  return { key, algorithms };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A JWK's public key; a private or symmetric one is refused: this file is for public keys. */
function publicKeyOf(jwk: Record<string, unknown>, fail: (why: string) => never, subject: string): KeyObject {
  if (jwk.kty === 'oct') fail(`${subject} a symmetric (oct) key; use JWT_SECRET_FILE for a shared secret`);
  if (['d', 'p', 'q', 'dp', 'dq', 'qi'].some((member) => member in jwk)) {
    fail(`${subject} a private key; give the bridge the public key only`);
  }
  try {
    return createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
  } catch {
    return fail(`${subject} not a valid public JWK`);
  }
}

/** A JWK's algorithms: its key type's, narrowed to its `alg` when it names one, none unless its `use` is `sig`. */
function jwkAlgorithms(jwk: Record<string, unknown>, key: KeyObject): readonly JwtAlgorithm[] {
  if (jwk.use !== undefined && jwk.use !== 'sig') return [];
  const fits = algorithmsFor(key);
  return jwk.alg === undefined ? fits : fits.filter((algorithm) => algorithm === jwk.alg);
}

const CURVE_ALGORITHMS: Readonly<Record<string, JwtAlgorithm>> = {
  prime256v1: 'ES256',
  secp384r1: 'ES384',
  secp521r1: 'ES512',
};

function algorithmsFor(key: KeyObject): readonly JwtAlgorithm[] {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      // jose refuses shorter RSA keys; say so at start-up rather than at every request.
      return (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048
        ? ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']
        : [];
    case 'ec': {
      const algorithm = CURVE_ALGORITHMS[key.asymmetricKeyDetails?.namedCurve ?? ''];
      return algorithm === undefined ? [] : [algorithm];
    }
    case 'ed25519':
      return ['EdDSA', 'Ed25519'];
    default:
      return [];
  }
}

function describe(key: KeyObject): string {
  const { modulusLength, namedCurve } = key.asymmetricKeyDetails ?? {};
  const details =
    modulusLength !== undefined ? ` (${modulusLength} bits)` : namedCurve !== undefined ? ` (${namedCurve})` : '';
  return `a key of type ${key.asymmetricKeyType ?? 'unknown'}${details}`;
}

/** One trailing newline is the file's, not the secret's (echo and editors add it). */
function stripNewline(bytes: Buffer): Buffer {
  if (bytes.at(-1) !== 0x0a) return bytes;
  return bytes.subarray(0, bytes.at(-2) === 0x0d ? -2 : -1);
}
