/**
 * JWT bearer tokens through real HTTP: verified (signature, exp, nbf, iss, aud), their roles checked
 * against what a named route requires; refused with 401 and a reason, never with the token echoed.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportSPKI, generateKeyPair, SignJWT } from 'jose';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runBridgeProcessUntilExit, startBridgeProcess } from '../helpers/bridge-process.js';
import { startRawWorker, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

const ISSUER = 'https://idp.test';
const AUDIENCE = 'amqp-rpc-bridge';
const { publicKey, privateKey } = await generateKeyPair('ES256');
const other = await generateKeyPair('ES256');
const dir = mkdtempSync(join(tmpdir(), 'jwt-callers-'));
const keyFile = join(dir, 'jwt.pem');
writeFileSync(keyFile, await exportSPKI(publicKey));
const routesFile = join(dir, 'routes.yaml');

const fixture = useEchoBridge({
  JWT_PUBLIC_KEY_FILE: keyFile,
  JWT_ISSUER: ISSUER,
  JWT_AUDIENCE: AUDIENCE,
  JWT_MAX_LIFETIME_SECONDS: '3600',
  ROUTES_FILE: routesFile,
  ROUTES_RAW_ENABLED: 'true',
});
writeFileSync(
  routesFile,
  stringify({
    routes: [{ name: 'orders', path: '/orders', queue: fixture.echoQueue, requires: { roles: ['orders.write'] } }],
  }),
);

async function token(
  claims: Record<string, unknown>,
  options: { expiresIn?: string; key?: typeof privateKey; aud?: string } = {},
) {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256' })
    .setIssuer(ISSUER)
    .setAudience(options.aud ?? AUDIENCE)
    .setSubject('svc-checkout')
    .setIssuedAt()
    .setExpirationTime(options.expiresIn ?? '5m')
    .sign(options.key ?? privateKey);
}

async function post(path: string, jwt: string | undefined) {
  const req = request(fixture.bridge.baseUrl).post(path);
  if (jwt !== undefined) req.set('Authorization', `Bearer ${jwt}`);
  return req.send('order');
}

describe('JWT callers', () => {
  it('reach a route their roles allow, and get 403 where they do not', async () => {
    const writer = await post('/orders', await token({ roles: ['orders.write'] }));
    expect(writer.status).toBe(200);
    expect(writer.text).toBe('order');
    const reader = await post('/orders', await token({ roles: ['orders.read'] }));
    expect(reader.status).toBe(403);
    expect(reader.body.detail).toBe('The route orders needs one of the roles orders.write');
    // Any valid token opens the raw routes, but not to a queue a named route guards; none leaves them shut.
    const anyToken = await post(`/rpc/${fixture.echoQueue}`, await token({}));
    expect(anyToken.status).toBe(403);
    expect(anyToken.body.detail).toBe(
      `The queue ${fixture.echoQueue} is guarded by the route orders, which needs one of the roles orders.write`,
    );
    expect((await post(`/rpc/${fixture.echoQueue}`, await token({ roles: ['orders.write'] }))).status).toBe(200);
    expect((await post(`/rpc/${fixture.echoQueue}`, undefined)).status).toBe(401);
  });

  it.each([
    ['expired', () => token({ roles: ['orders.write'] }, { expiresIn: '-2m' }), 'expired'],
    ['for another audience', () => token({ roles: ['orders.write'] }, { aud: 'someone-else' }), 'audience'],
    ['signed by another key', () => token({ roles: ['orders.write'] }, { key: other.privateKey }), 'signature'],
    [
      'living ten years (JWT_MAX_LIFETIME_SECONDS)',
      () => token({ roles: ['orders.write'] }, { expiresIn: '3650d' }),
      'lifetime',
    ],
  ])('refuses a token %s with 401, saying why and never echoing it', async (_case, make, reason) => {
    const jwt = await make();
    const res = await post('/orders', jwt);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
    expect(`${res.headers['www-authenticate']} ${res.body.detail}`.toLowerCase()).toContain(reason);
    expect(res.text).not.toContain(jwt.split('.')[2]);
  });
});

describe('what the worker hears of a JWT caller', () => {
  it("is the token's subject as x-caller", async () => {
    const queue = uniqueName('jwt-caller');
    const heard: unknown[] = [];
    await startRawWorker(fixture.broker, queue, (message, reply) => {
      heard.push(message.properties.headers?.['x-caller']);
      reply(Buffer.from('ok'), {});
    });
    expect((await post(`/rpc/${queue}`, await token({}))).status).toBe(200);
    expect(heard).toEqual(['svc-checkout']);
  });
});

describe('JWT set-up at start', () => {
  it('refuses to start without JWT_AUDIENCE (exit 78), naming it and the opt-out', async () => {
    const { code, stdout, stderr } = await runBridgeProcessUntilExit(
      { JWT_PUBLIC_KEY_FILE: keyFile, JWT_ISSUER: ISSUER },
      10_000,
    );
    expect(code, stdout + stderr).toBe(78);
    expect(stderr).toContain('JWT_AUDIENCE');
    expect(stderr).toContain('JWT_ALLOW_ANY_AUDIENCE=true');
  });

  it('warns when JWT_ISSUER is unset or any audience is allowed, and then accepts a token for another application', async () => {
    const bridge = await startBridgeProcess({
      JWT_PUBLIC_KEY_FILE: keyFile,
      JWT_ALLOW_ANY_AUDIENCE: 'true',
      ROUTES_FILE: routesFile,
    });
    try {
      const warnings = bridge.logs.filter((line) => line.level === 40).map((line) => String(line.msg));
      expect(warnings).toEqual(
        expect.arrayContaining([
          expect.stringContaining('JWT_ISSUER'),
          expect.stringContaining('JWT_ALLOW_ANY_AUDIENCE'),
        ]),
      );
      const res = await request(bridge.baseUrl)
        .post('/orders')
        .set('Authorization', `Bearer ${await token({ roles: ['orders.write'] }, { aud: 'some-other-app' })}`)
        .send('order');
      expect(res.status).toBe(200);
    } finally {
      await bridge.stop();
    }
  });
});
