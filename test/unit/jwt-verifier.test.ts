import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CompactSign,
  type CryptoKey,
  exportJWK,
  exportPKCS8,
  exportSPKI,
  generateKeyPair,
  type JWTPayload,
  SignJWT,
  UnsecuredJWT,
} from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/config-error.js';
import { type JwtSettings, jwtSettingsFromEnv } from '../../src/config/jwt-settings.js';
import { JwtVerifier, looksLikeJwt } from '../../src/http/access/jwt-verifier.js';
import { HttpProblem } from '../../src/http/problems.js';

const ISSUER = 'https://idp.example.test/';
const AUDIENCE = 'amqp-rpc-bridge';

interface Pair {
  readonly publicKey: CryptoKey;
  readonly privateKey: CryptoKey;
}

let dir: string;
let rsa: Pair;
let ec: Pair;
let otherRsa: Pair;
/** PEM (SPKI) of `rsa`'s public key, and a JWKS holding `rsa` (kid "rsa-1") and `ec` (kid "ec-1"). */
let rsaPemFile: string;
let jwksFile: string;
let rsaPem: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'jwt-verifier-test-'));
  [rsa, ec, otherRsa] = await Promise.all([
    generateKeyPair('RS256', { extractable: true }),
    generateKeyPair('ES256', { extractable: true }),
    generateKeyPair('RS256'),
  ]);
  rsaPem = await exportSPKI(rsa.publicKey);
  rsaPemFile = write('rsa.pem', rsaPem);
  jwksFile = write(
    'jwks.json',
    JSON.stringify({
      keys: [
        { ...(await exportJWK(rsa.publicKey)), kid: 'rsa-1', use: 'sig' },
        { ...(await exportJWK(ec.publicKey)), kid: 'ec-1', alg: 'ES256' },
      ],
    }),
  );
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, content: string | Uint8Array): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

/** Settings for the RSA PEM key; an override of undefined removes the setting. */
function settings(overrides: { [K in keyof JwtSettings]?: JwtSettings[K] | undefined } = {}): JwtSettings {
  const merged: Record<string, unknown> = {
    keyFile: rsaPemFile,
    issuer: ISSUER,
    audience: AUDIENCE,
    algorithms: ['RS256', 'ES256'],
    rolesClaim: 'roles',
    clockToleranceSeconds: 30,
    ...overrides,
  };
  for (const [name, value] of Object.entries(merged)) if (value === undefined) delete merged[name];
  return merged as unknown as JwtSettings;
}

const now = (): number => Math.floor(Date.now() / 1000);

/** A token with sensible claims (valid for five minutes), any of which `claims` overrides or removes (undefined). */
async function sign(
  key: CryptoKey | Uint8Array,
  claims: Record<string, unknown> = {},
  header: { alg: string; kid?: string } = { alg: 'RS256' },
): Promise<string> {
  const payload: Record<string, unknown> = {
    sub: 'caller-1',
    iss: ISSUER,
    aud: AUDIENCE,
    iat: now(),
    exp: now() + 300,
    roles: ['orders:write'],
    ...claims,
  };
  for (const [name, value] of Object.entries(payload)) if (value === undefined) delete payload[name];
  return new SignJWT(payload as JWTPayload).setProtectedHeader(header).sign(key);
}

/** The 401 a verifier answers `token` with; fails the test unless it is one, with a challenge that echoes nothing. */
async function refusal(verifier: JwtVerifier, token: string): Promise<HttpProblem> {
  const problem = await verifier.verify(token).then(
    () => expect.fail('the token was accepted'),
    (err: unknown) => err,
  );
  expect(problem).toBeInstanceOf(HttpProblem);
  const { status, code, detail, options } = problem as HttpProblem;
  expect({ status, code }).toEqual({ status: 401, code: 'unauthorized' });
  expect(options.challenge).toBe(
    `Bearer realm="amqp-rpc-bridge", error="invalid_token", error_description="${detail}"`,
  );
  // Neither the token nor any of its segments comes back.
  for (const segment of token.split('.').filter((part) => part.length > 8)) {
    expect(`${detail} ${options.challenge}`).not.toContain(segment);
  }
  return problem as HttpProblem;
}

async function configError(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => expect.fail('no ConfigError'),
    (error: unknown) => error,
  );
  expect(err).toBeInstanceOf(ConfigError);
  return (err as ConfigError).message;
}

describe('JwtVerifier.verify', () => {
  it('accepts an RS256 token against a PEM public key and returns its subject, roles and expiry', async () => {
    const verifier = await JwtVerifier.load(settings());
    const exp = now() + 120;
    const caller = await verifier.verify(await sign(rsa.privateKey, { exp, roles: ['orders:write', 'admin'] }));
    expect(caller).toEqual({ subject: 'caller-1', roles: ['orders:write', 'admin'], expiresAt: exp });
  });

  it('accepts ES256 and RS256 tokens against a JWKS, picking the key by kid', async () => {
    const verifier = await JwtVerifier.load(settings({ keyFile: undefined, jwksFile }));
    const byEc = await sign(ec.privateKey, { sub: 'ec-caller' }, { alg: 'ES256', kid: 'ec-1' });
    const byRsa = await sign(rsa.privateKey, { sub: 'rsa-caller' }, { alg: 'RS256', kid: 'rsa-1' });
    expect((await verifier.verify(byEc)).subject).toBe('ec-caller');
    expect((await verifier.verify(byRsa)).subject).toBe('rsa-caller');
    const unknownKid = await sign(rsa.privateKey, {}, { alg: 'RS256', kid: 'rotated-away' });
    expect((await refusal(verifier, unknownKid)).detail).toBe(
      'The bearer token matches none of the configured keys (kid, alg)',
    );
  });

  it('accepts an ES256 token against a JWK file holding one key, whatever kid the token names', async () => {
    const jwkFile = write('ec.jwk.json', JSON.stringify(await exportJWK(ec.publicKey)));
    const verifier = await JwtVerifier.load(settings({ keyFile: jwkFile }));
    const token = await sign(ec.privateKey, {}, { alg: 'ES256', kid: 'anything' });
    expect((await verifier.verify(token)).roles).toEqual(['orders:write']);
  });

  it('accepts an EdDSA token against a PEM Ed25519 key', async () => {
    const ed = await generateKeyPair('Ed25519');
    const edPem = write('ed25519.pem', await exportSPKI(ed.publicKey));
    const verifier = await JwtVerifier.load(settings({ keyFile: edPem, algorithms: ['EdDSA', 'Ed25519'] }));
    expect((await verifier.verify(await sign(ed.privateKey, {}, { alg: 'EdDSA' }))).subject).toBe('caller-1');
    expect((await verifier.verify(await sign(ed.privateKey, {}, { alg: 'Ed25519' }))).subject).toBe('caller-1');
    const rsaSigned = await sign(rsa.privateKey);
    expect((await refusal(verifier, rsaSigned)).detail).toMatch(/algorithm this bridge does not accept/);
  });

  it('reads roles from a space-separated scope claim when the roles claim is scope', async () => {
    const verifier = await JwtVerifier.load(settings({ rolesClaim: 'scope' }));
    const caller = await verifier.verify(await sign(rsa.privateKey, { scope: 'rpc:call  orders:read' }));
    expect(caller.roles).toEqual(['rpc:call', 'orders:read']);
  });

  it('gives no roles (and no crash) for a roles claim that is not an array of strings', async () => {
    const verifier = await JwtVerifier.load(settings());
    for (const roles of ['admin', ['admin', 7], { admin: true }, null]) {
      expect((await verifier.verify(await sign(rsa.privateKey, { roles }))).roles).toEqual([]);
    }
    // Only scope (and scp) are space-separated: a string elsewhere is not split into roles.
    const scope = await JwtVerifier.load(settings({ rolesClaim: 'scope' }));
    expect((await scope.verify(await sign(rsa.privateKey, { scope: ['a', 'b'] }))).roles).toEqual(['a', 'b']);
  });

  it('accepts a token whose audience list includes the configured one, or one of several configured', async () => {
    const one = await JwtVerifier.load(settings());
    expect((await one.verify(await sign(rsa.privateKey, { aud: ['other', AUDIENCE] }))).subject).toBe('caller-1');
    const several = await JwtVerifier.load(settings({ audience: ['first', 'second'] }));
    expect((await several.verify(await sign(rsa.privateKey, { aud: 'second' }))).subject).toBe('caller-1');
  });

  it('refuses an expired token, allowing the clock tolerance', async () => {
    const verifier = await JwtVerifier.load(settings({ clockToleranceSeconds: 30 }));
    expect((await verifier.verify(await sign(rsa.privateKey, { exp: now() - 10 }))).subject).toBe('caller-1');
    const expired = await sign(rsa.privateKey, { exp: now() - 60 });
    expect((await refusal(verifier, expired)).detail).toBe('The bearer token has expired (exp)');
  });

  it('checks exp and nbf against the clock it is given', async () => {
    const token = await sign(rsa.privateKey, { exp: 2_000_000_000 });
    const before = await JwtVerifier.load(settings(), { now: () => new Date(1_999_999_000_000) });
    const after = await JwtVerifier.load(settings(), { now: () => new Date(2_000_000_100_000) });
    expect((await before.verify(token)).expiresAt).toBe(2_000_000_000);
    expect((await refusal(after, token)).detail).toMatch(/expired/);
  });

  it('refuses a token that is not valid yet', async () => {
    const verifier = await JwtVerifier.load(settings());
    const early = await sign(rsa.privateKey, { nbf: now() + 120 });
    expect((await refusal(verifier, early)).detail).toBe('The bearer token is not valid yet (nbf)');
  });

  it('refuses a token from another issuer, and one that names none', async () => {
    const verifier = await JwtVerifier.load(settings());
    const foreign = await sign(rsa.privateKey, { iss: 'https://evil.example.test/' });
    expect((await refusal(verifier, foreign)).detail).toBe('The bearer token comes from another issuer (iss)');
    const anonymous = await sign(rsa.privateKey, { iss: undefined });
    expect((await refusal(verifier, anonymous)).detail).toBe('The bearer token lacks the iss claim');
  });

  it('refuses a token meant for another audience', async () => {
    const verifier = await JwtVerifier.load(settings());
    const elsewhere = await sign(rsa.privateKey, { aud: 'billing-api' });
    expect((await refusal(verifier, elsewhere)).detail).toBe('The bearer token is meant for another audience (aud)');
  });

  it('refuses a token signed by another key', async () => {
    const verifier = await JwtVerifier.load(settings());
    const forged = await sign(otherRsa.privateKey);
    expect((await refusal(verifier, forged)).detail).toBe('The bearer token has a signature that does not verify');
  });

  it('refuses a token with a payload changed after signing', async () => {
    const verifier = await JwtVerifier.load(settings());
    const [header, , signature] = (await sign(rsa.privateKey)).split('.');
    const payload = Buffer.from(JSON.stringify({ sub: 'root', exp: now() + 60, iss: ISSUER, aud: AUDIENCE }));
    const tampered = `${header}.${payload.toString('base64url')}.${signature}`;
    expect((await refusal(verifier, tampered)).detail).toBe('The bearer token has a signature that does not verify');
  });

  it('refuses an unsigned token (alg none)', async () => {
    const verifier = await JwtVerifier.load(settings());
    const unsigned = new UnsecuredJWT({ sub: 'root', roles: ['admin'], iss: ISSUER, aud: AUDIENCE })
      .setExpirationTime('5m')
      .encode();
    expect(unsigned.endsWith('.')).toBe(true);
    expect((await refusal(verifier, unsigned)).detail).toMatch(
      /^The bearer token (is signed with an algorithm|is not)/,
    );
  });

  it('refuses an HS256 token keyed with the RSA public key (algorithm confusion)', async () => {
    const verifier = await JwtVerifier.load(settings());
    // The classic attack: HMAC with the PEM text the bridge verifies with as the shared secret.
    const confused = await sign(new TextEncoder().encode(rsaPem), {}, { alg: 'HS256' });
    expect((await refusal(verifier, confused)).detail).toBe(
      'The bearer token is signed with an algorithm this bridge does not accept (alg)',
    );
    // Even if HS256 were listed next to a public key, load keeps only what the key can verify.
    const listed = await JwtVerifier.load(settings({ algorithms: ['RS256', 'HS256'] }));
    expect((await refusal(listed, confused)).detail).toMatch(/algorithm this bridge does not accept/);
  });

  it('refuses an ES256 token against an RSA key with a clear reason', async () => {
    const verifier = await JwtVerifier.load(settings());
    const token = await sign(ec.privateKey, {}, { alg: 'ES256' });
    expect((await refusal(verifier, token)).detail).toBe(
      'The bearer token is signed with an algorithm this bridge does not accept (alg)',
    );
  });

  it('refuses malformed tokens', async () => {
    const verifier = await JwtVerifier.load(settings());
    const [header, payload] = (await sign(rsa.privateKey)).split('.');
    const notJson = Buffer.from('not json').toString('base64url');
    const noAlg = Buffer.from('{}').toString('base64url');
    // Signed properly, but what is signed is not a claims set.
    const signedText = await new CompactSign(new TextEncoder().encode('hello'))
      .setProtectedHeader({ alg: 'RS256' })
      .sign(rsa.privateKey);
    const tokens = [
      'opaque-token-1234567890',
      'a.b.c',
      `${header}.${payload}`,
      `${notJson}.${payload}.c2lnbmF0dXJl`,
      `${noAlg}.${payload}.c2lnbmF0dXJl`,
      signedText,
    ];
    for (const token of tokens) {
      expect((await refusal(verifier, token)).detail).toBe('The bearer token is not a well-formed signed JWT');
    }
  });

  it('refuses a token without exp', async () => {
    const verifier = await JwtVerifier.load(
      settings({ issuer: undefined, audience: undefined, allowAnyAudience: true }),
    );
    const forever = await sign(rsa.privateKey, { exp: undefined });
    expect((await refusal(verifier, forever)).detail).toBe('The bearer token lacks the exp claim');
  });

  it('refuses a token that lives longer than the maximum lifetime: exp - iat, or exp - now without iat', async () => {
    const verifier = await JwtVerifier.load(settings({ maxLifetimeSeconds: 3600 }));
    expect((await verifier.verify(await sign(rsa.privateKey, { exp: now() + 3600 }))).subject).toBe('caller-1');
    const tenYears = await sign(rsa.privateKey, { exp: now() + 10 * 365 * 86_400 });
    expect((await refusal(verifier, tenYears)).detail).toBe(
      'The bearer token has too long a lifetime (exp - iat above 3600 s)',
    );
    // Issued long ago, still valid for a minute: its lifetime is what counts, not what is left of it.
    const oldLongLived = await sign(rsa.privateKey, { iat: now() - 86_400, exp: now() + 60 });
    expect((await refusal(verifier, oldLongLived)).detail).toMatch(/too long a lifetime/);
    const noIat = await sign(rsa.privateKey, { iat: undefined, exp: now() + 7200 });
    expect((await refusal(verifier, noIat)).detail).toBe(
      'The bearer token has too long a lifetime (exp - now above 3600 s, no iat)',
    );
    expect((await verifier.verify(await sign(rsa.privateKey, { iat: undefined, exp: now() + 600 }))).subject).toBe(
      'caller-1',
    );
    // Without a maximum, a long-lived token is the identity provider's business.
    expect((await (await JwtVerifier.load(settings())).verify(tenYears)).subject).toBe('caller-1');
  });

  it('verifies HS256 tokens with a shared secret file, and refuses other secrets', async () => {
    const secret = new TextEncoder().encode('a-shared-secret-of-at-least-32-bytes!');
    const secretFile = write('secret', Buffer.concat([secret, Buffer.from('\n')]));
    const verifier = await JwtVerifier.load(settings({ keyFile: undefined, secretFile, algorithms: ['HS256'] }));
    expect((await verifier.verify(await sign(secret, {}, { alg: 'HS256' }))).subject).toBe('caller-1');
    const wrong = await sign(new TextEncoder().encode('another-shared-secret-of-32-bytes!!'), {}, { alg: 'HS256' });
    expect((await refusal(verifier, wrong)).detail).toBe('The bearer token has a signature that does not verify');
    const rsaSigned = await sign(rsa.privateKey);
    expect((await refusal(verifier, rsaSigned)).detail).toMatch(/algorithm this bridge does not accept/);
  });
});

describe('JwtVerifier.load', () => {
  it('names the variable and the path of a file it cannot read', async () => {
    const missing = join(dir, 'no-such.pem');
    expect(await configError(JwtVerifier.load(settings({ keyFile: missing })))).toBe(
      `JWT_PUBLIC_KEY_FILE (${missing}) cannot be read: ENOENT`,
    );
    const jwksMissing = join(dir, 'no-such.json');
    expect(await configError(JwtVerifier.load(settings({ keyFile: undefined, jwksFile: jwksMissing })))).toBe(
      `JWT_JWKS_FILE (${jwksMissing}) cannot be read: ENOENT`,
    );
  });

  it('loads a JWKS that also holds encryption keys and key types it does not know', async () => {
    const encryption = { ...(await exportJWK(otherRsa.publicKey)), kid: 'enc-1', use: 'enc' };
    const postQuantum = { kty: 'AKP', alg: 'ML-DSA-44', kid: 'pq-1', pub: 'AAAA' };
    const signing = { ...(await exportJWK(ec.publicKey)), kid: 'ec-1' };
    const mixed = write('mixed-jwks.json', JSON.stringify({ keys: [encryption, postQuantum, signing] }));
    const verifier = await JwtVerifier.load(settings({ keyFile: undefined, jwksFile: mixed }));
    const token = await sign(ec.privateKey, {}, { alg: 'ES256', kid: 'ec-1' });
    expect((await verifier.verify(token)).subject).toBe('caller-1');
    // An encryption key alone verifies nothing.
    const encOnly = write('enc-jwks.json', JSON.stringify({ keys: [encryption] }));
    expect(await configError(JwtVerifier.load(settings({ keyFile: undefined, jwksFile: encOnly })))).toBe(
      `JWT_JWKS_FILE (${encOnly}) holds 1 key(s), which none of JWT_ALGORITHMS (RS256, ES256) fits`,
    );
  });

  it('refuses a private key without printing it', async () => {
    const { privateKey } = await generateKeyPair('RS256', { extractable: true });
    const pem = await exportPKCS8(privateKey);
    const pemFile = write('private.pem', pem);
    const message = await configError(JwtVerifier.load(settings({ keyFile: pemFile })));
    expect(message).toBe(`JWT_PUBLIC_KEY_FILE (${pemFile}) holds a private key; give the bridge the public key only`);
    const jwk = await exportJWK(privateKey);
    const jwksWithPrivate = write('private-jwks.json', JSON.stringify({ keys: [jwk] }));
    const jwksMessage = await configError(
      JwtVerifier.load(settings({ keyFile: undefined, jwksFile: jwksWithPrivate })),
    );
    expect(jwksMessage).toBe(
      `JWT_JWKS_FILE (${jwksWithPrivate}) key 1 is a private key; give the bridge the public key only`,
    );
    expect(jwksMessage).not.toContain(String(jwk.d).slice(0, 16));
  });

  it('refuses files that are not keys, without quoting them', async () => {
    const garbage = write('garbage.pem', 'secret-looking-garbage');
    expect(await configError(JwtVerifier.load(settings({ keyFile: garbage })))).toBe(
      `JWT_PUBLIC_KEY_FILE (${garbage}) is neither a PEM key nor JSON`,
    );
    const brokenPem = write('broken.pem', '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n');
    expect(await configError(JwtVerifier.load(settings({ keyFile: brokenPem })))).toBe(
      `JWT_PUBLIC_KEY_FILE (${brokenPem}) is not a PEM public key or certificate`,
    );
    const notJwks = write('not-jwks.json', '{"issuer": "x"}');
    expect(await configError(JwtVerifier.load(settings({ keyFile: undefined, jwksFile: notJwks })))).toMatch(
      /^JWT_JWKS_FILE \(.*not-jwks\.json\) is not a JSON Web Key Set/,
    );
  });

  it('refuses a key that none of the configured algorithms fits', async () => {
    const message = await configError(JwtVerifier.load(settings({ algorithms: ['ES256'] })));
    expect(message).toBe(
      `JWT_PUBLIC_KEY_FILE (${rsaPemFile}) holds a key of type rsa (2048 bits), which none of JWT_ALGORITHMS (ES256) fits`,
    );
  });

  it('refuses a shared secret shorter than HS256 needs', async () => {
    const short = write('short-secret', 'too-short\n');
    expect(
      await configError(JwtVerifier.load(settings({ keyFile: undefined, secretFile: short, algorithms: ['HS256'] }))),
    ).toBe(`JWT_SECRET_FILE (${short}) holds fewer than 32 bytes: too short a secret`);
  });

  it('refuses settings without an audience unless any audience is allowed in so many words', async () => {
    expect(await configError(JwtVerifier.load(settings({ audience: undefined })))).toBe(
      'JWT_AUDIENCE is required with JWT verification (a token for any other application would pass); set it, or JWT_ALLOW_ANY_AUDIENCE=true to accept any audience',
    );
    const any = await JwtVerifier.load(settings({ audience: undefined, allowAnyAudience: true }));
    expect((await any.verify(await sign(rsa.privateKey, { aud: 'some-other-app' }))).subject).toBe('caller-1');
  });

  it('refuses settings with two key sources, or none', async () => {
    expect(await configError(JwtVerifier.load(settings({ jwksFile })))).toMatch(
      /JWT_PUBLIC_KEY_FILE and JWT_JWKS_FILE set$/,
    );
    expect(await configError(JwtVerifier.load(settings({ keyFile: undefined })))).toMatch(/; none set$/);
  });

  it('refuses a shared secret where a public key belongs', async () => {
    const oct = { kty: 'oct', k: Buffer.from('a-shared-secret-of-at-least-32-bytes!').toString('base64url') };
    const jwkFile = write('oct.jwk.json', JSON.stringify(oct));
    expect(await configError(JwtVerifier.load(settings({ keyFile: jwkFile })))).toBe(
      `JWT_PUBLIC_KEY_FILE (${jwkFile}) holds a symmetric (oct) key; use JWT_SECRET_FILE for a shared secret`,
    );
    const jwks = write('oct-jwks.json', JSON.stringify({ keys: [oct] }));
    expect(await configError(JwtVerifier.load(settings({ keyFile: undefined, jwksFile: jwks })))).toBe(
      `JWT_JWKS_FILE (${jwks}) key 1 is a symmetric (oct) key; use JWT_SECRET_FILE for a shared secret`,
    );
  });

  it('refuses an RSA key shorter than 2048 bits, which jose would refuse at every request', async () => {
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const weak = write('weak.pem', publicKey.export({ format: 'pem', type: 'spki' }));
    expect(await configError(JwtVerifier.load(settings({ keyFile: weak })))).toBe(
      `JWT_PUBLIC_KEY_FILE (${weak}) holds a key of type rsa (1024 bits), which none of JWT_ALGORITHMS (RS256, ES256) fits`,
    );
  });
});

describe('jwtSettingsFromEnv', () => {
  function thrown(env: Record<string, string>): string {
    try {
      jwtSettingsFromEnv(env);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    return expect.fail('no ConfigError');
  }

  it('is undefined when no key variable is set', () => {
    expect(jwtSettingsFromEnv({ AUTH_TOKENS: 'x', JWT_PUBLIC_KEY_FILE: '  ' })).toBeUndefined();
  });

  it('reads every JWT_ variable, with defaults for the rest', () => {
    expect(
      jwtSettingsFromEnv({
        JWT_JWKS_FILE: '/keys/jwks.json',
        JWT_ISSUER: ISSUER,
        JWT_AUDIENCE: 'bridge, bridge-staging',
        JWT_ALGORITHMS: 'ES256,EdDSA',
        JWT_ROLES_CLAIM: 'scope',
        JWT_CLOCK_TOLERANCE_SECONDS: '5',
        JWT_MAX_LIFETIME_SECONDS: '3600',
      }),
    ).toEqual({
      jwksFile: '/keys/jwks.json',
      issuer: ISSUER,
      audience: ['bridge', 'bridge-staging'],
      algorithms: ['ES256', 'EdDSA'],
      rolesClaim: 'scope',
      clockToleranceSeconds: 5,
      maxLifetimeSeconds: 3600,
    });
    expect(jwtSettingsFromEnv({ JWT_PUBLIC_KEY_FILE: '/keys/key.pem', JWT_AUDIENCE: 'bridge' })).toEqual({
      keyFile: '/keys/key.pem',
      audience: 'bridge',
      algorithms: ['RS256', 'PS256', 'ES256', 'EdDSA', 'Ed25519'],
      rolesClaim: 'roles',
      clockToleranceSeconds: 30,
    });
    expect(jwtSettingsFromEnv({ JWT_SECRET_FILE: '/keys/secret', JWT_AUDIENCE: 'bridge' })?.algorithms).toEqual([
      'HS256',
    ]);
    expect(jwtSettingsFromEnv({ JWT_SECRET_FILE: '/keys/secret', JWT_ALLOW_ANY_AUDIENCE: 'true' })).toEqual({
      secretFile: '/keys/secret',
      allowAnyAudience: true,
      algorithms: ['HS256'],
      rolesClaim: 'roles',
      clockToleranceSeconds: 30,
    });
  });

  it('needs JWT_AUDIENCE, or JWT_ALLOW_ANY_AUDIENCE=true, never both', () => {
    expect(thrown({ JWT_PUBLIC_KEY_FILE: '/a.pem' })).toBe(
      'JWT_AUDIENCE is required with JWT verification (a token for any other application would pass); set it, or JWT_ALLOW_ANY_AUDIENCE=true to accept any audience',
    );
    expect(thrown({ JWT_PUBLIC_KEY_FILE: '/a.pem', JWT_ALLOW_ANY_AUDIENCE: 'false' })).toMatch(
      /^JWT_AUDIENCE is required/,
    );
    expect(thrown({ JWT_PUBLIC_KEY_FILE: '/a.pem', JWT_AUDIENCE: 'bridge', JWT_ALLOW_ANY_AUDIENCE: 'true' })).toBe(
      'JWT_AUDIENCE and JWT_ALLOW_ANY_AUDIENCE=true contradict each other: set one of them',
    );
  });

  it('refuses a maximum lifetime that is not a whole number of seconds from 60 to 31536000', () => {
    const key = { JWT_PUBLIC_KEY_FILE: '/a.pem', JWT_AUDIENCE: 'bridge' };
    expect(thrown({ ...key, JWT_MAX_LIFETIME_SECONDS: '1h' })).toBe(
      'JWT_MAX_LIFETIME_SECONDS must be a whole number, got "1h"',
    );
    expect(thrown({ ...key, JWT_MAX_LIFETIME_SECONDS: '59' })).toBe(
      'JWT_MAX_LIFETIME_SECONDS must be between 60 and 31536000, got 59',
    );
  });

  it('names both variables when the public key and the JWKS are both set', () => {
    expect(thrown({ JWT_PUBLIC_KEY_FILE: '/a.pem', JWT_JWKS_FILE: '/b.json', JWT_AUDIENCE: 'bridge' })).toBe(
      'Set exactly one of JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE or JWT_SECRET_FILE; JWT_PUBLIC_KEY_FILE and JWT_JWKS_FILE set',
    );
  });

  it('refuses algorithms off the allow-list, none and HS* without a secret among them', () => {
    const key = { JWT_PUBLIC_KEY_FILE: '/a.pem', JWT_AUDIENCE: 'bridge' };
    expect(thrown({ ...key, JWT_ALGORITHMS: 'RS256,none' })).toMatch(
      /^JWT_ALGORITHMS: it must list only RS256, .*got "none"$/,
    );
    expect(thrown({ ...key, JWT_ALGORITHMS: 'rs256' })).toMatch(/^JWT_ALGORITHMS: .*got "rs256"$/);
    expect(thrown({ ...key, JWT_ALGORITHMS: 'HS256' })).toBe(
      'JWT_ALGORITHMS: HS256 needs a shared secret (JWT_SECRET_FILE), not a public key',
    );
    expect(thrown({ JWT_SECRET_FILE: '/s', JWT_AUDIENCE: 'bridge', JWT_ALGORITHMS: 'RS256' })).toBe(
      'JWT_ALGORITHMS: RS256 needs a public key, and JWT_SECRET_FILE holds a shared secret',
    );
    expect(thrown({ ...key, JWT_ALGORITHMS: ' , ' })).toBe('JWT_ALGORITHMS lists nothing');
  });

  it('refuses a clock tolerance that is not a whole number of seconds up to 600', () => {
    const key = { JWT_PUBLIC_KEY_FILE: '/a.pem', JWT_AUDIENCE: 'bridge' };
    for (const value of ['-1', '1.5', '30s']) {
      expect(thrown({ ...key, JWT_CLOCK_TOLERANCE_SECONDS: value })).toBe(
        `JWT_CLOCK_TOLERANCE_SECONDS must be a whole number, got ${JSON.stringify(value)}`,
      );
    }
    expect(thrown({ ...key, JWT_CLOCK_TOLERANCE_SECONDS: '601' })).toBe(
      'JWT_CLOCK_TOLERANCE_SECONDS must be between 0 and 600, got 601',
    );
  });

  it('refuses JWT settings without a key rather than ignoring them', () => {
    expect(thrown({ JWT_AUDIENCE: 'bridge' })).toBe(
      'JWT_AUDIENCE is set, but no key is: set JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE or JWT_SECRET_FILE',
    );
  });

  it('reads every variable even when none is set (config.ts learns its variables that way)', () => {
    const read = new Set<string>();
    const recorder = new Proxy<Record<string, string | undefined>>(
      {},
      {
        get(_target, name) {
          if (typeof name === 'string') read.add(name);
          return undefined;
        },
      },
    );
    expect(jwtSettingsFromEnv(recorder)).toBeUndefined();
    expect([...read].sort()).toEqual([
      'JWT_ALGORITHMS',
      'JWT_ALLOW_ANY_AUDIENCE',
      'JWT_AUDIENCE',
      'JWT_CLOCK_TOLERANCE_SECONDS',
      'JWT_ISSUER',
      'JWT_JWKS_FILE',
      'JWT_MAX_LIFETIME_SECONDS',
      'JWT_PUBLIC_KEY_FILE',
      'JWT_ROLES_CLAIM',
      'JWT_SECRET_FILE',
    ]);
  });
});

describe('looksLikeJwt', () => {
  it('tells JWTs (signed or not) from opaque bearer tokens', async () => {
    expect(looksLikeJwt(await sign(rsa.privateKey))).toBe(true);
    expect(looksLikeJwt(new UnsecuredJWT({ sub: 'x' }).encode())).toBe(true);
    expect(looksLikeJwt('s3cr3t-opaque-token-0123456789')).toBe(false);
    expect(looksLikeJwt('abc.def.ghi')).toBe(false);
    const [header, payload, signature] = (await sign(rsa.privateKey)).split('.');
    expect(looksLikeJwt(`${header}.${payload}`)).toBe(false);
    expect(looksLikeJwt(`${header}.${payload}.${signature}.extra`)).toBe(false);
    expect(looksLikeJwt(`${header}.pay+load.${signature}`)).toBe(false);
    // Three segments whose first is not a JOSE header naming an alg.
    for (const notHeader of ['{"typ":"JWT"}', '"RS256"', 'null']) {
      expect(looksLikeJwt(`${Buffer.from(notHeader).toString('base64url')}.${payload}.${signature}`)).toBe(false);
    }
  });
});
