/**
 * AMQP_IDENTITY=caller: each caller's requests go over a connection with its own broker user, so the
 * broker's permissions decide who reaches what. Two users with different write permissions call the
 * same bridge; each is stopped by the broker exactly where its permissions say, with a 403 of its
 * own, and no other caller loses a channel or a request.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ConsumeMessage } from 'amqplib';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { startTestBridge, type TestBridge, waitFor } from '../helpers/bridge.js';
import { runBridgeProcessUntilExit } from '../helpers/bridge-process.js';
import { AMQP_URL, startRawWorker, uniqueName } from '../helpers/broker.js';
import { brokerAdmin } from '../helpers/broker-admin.js';
import { useEchoBridge } from '../helpers/fixture.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

const admin = await brokerAdmin();
const prefix = uniqueName('perm');
/** The two users' own exchanges; each may write to its own only, and only alice to the default one. */
const exchanges = { alice: `${prefix}.alice`, bob: `${prefix}.bob` };
// A password with characters a URL would have to escape (the login goes to the broker apart from the URL).
const users = {
  alice: { name: `${prefix}-alice`, password: `a@:/${randomBytes(6).toString('hex')}` },
  bob: { name: `${prefix}-bob`, password: randomBytes(9).toString('hex') },
};
const BOB_TOKEN = `bob-token-${randomBytes(12).toString('hex')}`;
const dir = mkdtempSync(join(tmpdir(), 'caller-identity-'));
const routesFile = join(dir, 'routes.yaml');
writeFileSync(join(dir, 'bob-password'), `${users.bob.password}\n`);
writeFileSync(
  routesFile,
  stringify({
    tokens: [
      {
        name: 'bob-service',
        sha256: createHash('sha256').update(BOB_TOKEN).digest('hex'),
        brokerUser: users.bob.name,
        brokerPasswordFile: join(dir, 'bob-password'),
      },
    ],
    routes: [{ name: 'bob-events', path: '/bob/events', exchange: exchanges.bob, routingKey: 'k' }],
  }),
);

beforeAll(async () => {
  const literal = (name: string) => name.replace(/\./g, '\\.');
  await admin.addUser(users.alice.name, users.alice.password, {
    configure: '.*',
    // RabbitMQ checks write on `amq.default` for the default exchange; LavinMQ on the empty name.
    write: `^(amq\\.default|${literal(exchanges.alice)})?$`,
    read: '.*',
  });
  await admin.addUser(users.bob.name, users.bob.password, {
    configure: '.*',
    write: `^${literal(exchanges.bob)}$`,
    read: '.*',
  });
});
afterAll(async () => {
  await admin.deleteUser(users.alice.name).catch(() => undefined);
  await admin.deleteUser(users.bob.name).catch(() => undefined);
});

const fixture = useEchoBridge({
  AMQP_IDENTITY: 'caller',
  AMQP_CALLER_IDLE_MS: '1500',
  ROUTES_FILE: routesFile,
  ROUTES_RAW_ENABLED: 'true',
});

beforeAll(async () => {
  const { channel } = fixture.broker;
  for (const exchange of Object.values(exchanges)) {
    await channel.assertExchange(exchange, 'direct', { durable: false });
    await channel.bindQueue(fixture.echoQueue, exchange, 'k');
  }
});
afterAll(async () => {
  for (const exchange of Object.values(exchanges))
    await fixture.broker.channel.deleteExchange(exchange).catch(() => undefined);
});

const basic = (user: { name: string; password: string }) =>
  `Basic ${Buffer.from(`${user.name}:${user.password}`).toString('base64')}`;

async function call(path: string, authorization: string | undefined) {
  const req = request(fixture.bridge.baseUrl).post(path);
  if (authorization !== undefined) req.set('Authorization', authorization);
  const res = await req.send('hello');
  return { status: res.status, type: res.body?.type as string | undefined, body: res.text };
}

describe('callers with their own broker users', () => {
  it('are each stopped by the broker exactly where their permissions say, and nobody else pays for it', async () => {
    const closesBefore = await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true });
    const queue = `/rpc/${fixture.echoQueue}`;
    const drill = {
      'alice -> queue (default exchange)': await call(queue, basic(users.alice)),
      'alice -> alice.exchange': await call(`/rpc/${exchanges.alice}/k`, basic(users.alice)),
      'alice -> bob.exchange': await call(`/rpc/${exchanges.bob}/k`, basic(users.alice)),
      'bob -> queue (default exchange)': await call(queue, basic(users.bob)),
      'bob -> bob.exchange': await call(`/rpc/${exchanges.bob}/k`, basic(users.bob)),
      'bob -> alice.exchange': await call(`/rpc/${exchanges.alice}/k`, basic(users.bob)),
      'bob token -> route bob-events': await call('/bob/events', `Bearer ${BOB_TOKEN}`),
      'publish: bob -> queue': await call(`/publish/${fixture.echoQueue}`, basic(users.bob)),
    };
    console.log(
      `per-user permission drill:\n${Object.entries(drill)
        .map(([what, res]) => `  ${what}: ${res.status}${res.status === 403 ? ` (${res.type?.split('/').pop()})` : ''}`)
        .join('\n')}`,
    );
    expect(Object.fromEntries(Object.entries(drill).map(([what, res]) => [what, res.status]))).toEqual({
      'alice -> queue (default exchange)': 200,
      'alice -> alice.exchange': 200,
      'alice -> bob.exchange': 403,
      'bob -> queue (default exchange)': 403,
      'bob -> bob.exchange': 200,
      'bob -> alice.exchange': 403,
      'bob token -> route bob-events': 200,
      'publish: bob -> queue': 403,
    });
    expect(drill['bob -> alice.exchange'].type).toBe(`${PROBLEM_TYPE_PREFIX}forbidden`);
    expect(drill['alice -> queue (default exchange)'].body).toBe('hello');

    // Alice keeps calling while Bob is refused over and over: all of hers succeed.
    const [aliceCalls, bobCalls] = await Promise.all([
      Promise.all(Array.from({ length: 40 }, () => call(queue, basic(users.alice)))),
      Promise.all(
        Array.from({ length: 40 }, (_, n) => call(n % 2 ? queue : `/rpc/${exchanges.alice}/k`, basic(users.bob))),
      ),
    ]);
    expect(aliceCalls.map((res) => res.status)).toEqual(Array(40).fill(200));
    expect(bobCalls.map((res) => res.status)).toEqual(Array(40).fill(403));
    expect(await fixture.bridge.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(closesBefore);
    expect(await fixture.bridge.metric('amqp_caller_connections')).toBe(2);
  });

  it('answers 401 for a login the broker refuses, and for a request without broker credentials', async () => {
    const refusedBefore = await fixture.bridge.metric(
      'amqp_caller_logins_total',
      { result: 'refused' },
      { absentIsZero: true },
    );
    const wrong = await call(`/rpc/${fixture.echoQueue}`, basic({ name: users.alice.name, password: 'not-it' }));
    expect(wrong.status).toBe(401);
    expect(wrong.body).toContain(`The broker refused the login of \\"${users.alice.name}\\"`);
    const nobody = await call(`/rpc/${fixture.echoQueue}`, basic({ name: `${prefix}-nobody`, password: 'x' }));
    expect(nobody.status).toBe(401);
    const none = await request(fixture.bridge.baseUrl).post(`/rpc/${fixture.echoQueue}`).send('x');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toContain('Bearer');
    const bearerOnly = await call(`/rpc/${fixture.echoQueue}`, 'Bearer some-token-that-is-not-known');
    expect(bearerOnly.status).toBe(401);
    // A NUL would split SASL PLAIN's user\0user\0password where the caller chose (RabbitMQ resets the
    // socket, and the caller waited 10 s for a 503): RFC 7617 allows no control characters, so 401 at once.
    for (const forged of [
      { name: `${users.alice.name}\0x`, password: 'y' },
      { name: users.alice.name, password: 'a\nb' },
    ]) {
      const refused = await call(`/rpc/${fixture.echoQueue}`, basic(forged));
      expect([refused.status, refused.body]).toEqual([401, expect.stringContaining('control characters')]);
    }
    // Two logins the broker refused; the requests without broker credentials asked it nothing.
    expect(await fixture.bridge.metric('amqp_caller_logins_total', { result: 'refused' })).toBe(refusedBefore + 2);
    // The right password still works: a refused login is remembered per password, not per user.
    expect((await call(`/rpc/${fixture.echoQueue}`, basic(users.alice))).status).toBe(200);
  });

  it('closes a caller connection once idle', async () => {
    expect((await call(`/rpc/${fixture.echoQueue}`, basic(users.alice))).status).toBe(200);
    await waitFor(
      async () => (await fixture.bridge.metric('amqp_caller_connections')) === 0,
      8_000,
      'idle caller connections to close',
    );
    expect((await call(`/rpc/${fixture.echoQueue}`, basic(users.alice))).status).toBe(200);
  });
});

describe('what the worker hears of a caller with its own broker user', () => {
  it('is the broker user as x-caller, or the name of the token mapped to one', async () => {
    const queue = `${prefix}.heard`;
    const heard: unknown[] = [];
    await startRawWorker(fixture.broker, queue, (message, reply) => {
      heard.push(message.properties.headers?.['x-caller']);
      if (message.properties.replyTo) reply(Buffer.from('ok'), {});
    });
    await fixture.broker.channel.bindQueue(queue, exchanges.bob, 'k');
    expect((await call(`/rpc/${queue}`, basic(users.alice))).status).toBe(200);
    expect((await call('/bob/events', `Bearer ${BOB_TOKEN}`)).status).toBe(200);
    expect(heard).toEqual([users.alice.name, 'bob-service']);
  });
});

describe('a caller that leaves while its broker connection is being opened', () => {
  it('has nothing published on its behalf once the connection comes up', async () => {
    const queue = uniqueName('left-early');
    const received: ConsumeMessage[] = [];
    const { channel } = fixture.broker;
    await channel.assertQueue(queue, { durable: false, autoDelete: true });
    await channel.consume(queue, (message) => message && received.push(message), { noAck: true });
    const proxy = await startTcpProxy(Number(new URL(AMQP_URL).port || 5672));
    const bridge = await startTestBridge({ AMQP_URL: proxy.via(AMQP_URL), AMQP_IDENTITY: 'caller' });
    try {
      // New connections through the proxy hang: the caller's own connection cannot open yet.
      proxy.silence();
      const url = new URL(AMQP_URL);
      const auth = Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString(
        'base64',
      );
      await new Promise<void>((resolve) => {
        const req = httpRequest(`${bridge.baseUrl}/publish/${queue}`, {
          method: 'POST',
          headers: { Authorization: `Basic ${auth}` },
        });
        req.on('error', () => resolve());
        req.end('should never be published');
        setTimeout(() => {
          req.destroy();
          resolve();
        }, 300);
      });
      proxy.heal();
      await waitFor(
        async () => (await bridge.metric('amqp_caller_connections')) === 1,
        10_000,
        'the caller connection',
      );
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(received.map((message) => message.content.toString())).toEqual([]);
    } finally {
      await bridge.close();
      await proxy.close();
    }
  });
});

/** A broker user of the test's own (random suffix), deleted at the end of the file. */
const extraUsers: string[] = [];
async function brokerUser(name: string, password = randomBytes(9).toString('hex')) {
  await admin.addUser(name, password, { configure: '.*', write: '.*', read: '.*' });
  extraUsers.push(name);
  return { name, password };
}
afterAll(async () => {
  for (const name of extraUsers) await admin.deleteUser(name).catch(() => undefined);
});

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

/**
 * POST from a loopback address of the test's choosing (127.0.0.0/8 is all local): the bridge sees
 * each as another client. `body` is sent in two parts when `holdBody` is given: the rest only once
 * that promise resolves.
 */
function post(
  bridge: TestBridge,
  path: string,
  options: { authorization: string; from?: string; headers?: Record<string, string>; holdBody?: Promise<void> },
): Promise<Answer> {
  const body = 'hello';
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${bridge.baseUrl}${path}`, {
      method: 'POST',
      agent: false,
      localAddress: options.from ?? '127.0.0.1',
      headers: { Authorization: options.authorization, 'Content-Length': body.length, ...options.headers },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }),
      );
    });
    if (options.holdBody === undefined) {
      req.end(body);
      return;
    }
    req.flushHeaders();
    req.write(body.slice(0, 2));
    void options.holdBody.then(() => req.end(body.slice(2)));
  });
}

async function withBridge(env: Record<string, string>, test: (bridge: TestBridge) => Promise<void>): Promise<void> {
  const bridge = await startTestBridge({ AMQP_IDENTITY: 'caller', ...env });
  try {
    await test(bridge);
  } finally {
    await bridge.close();
  }
}

const logins = async (bridge: TestBridge) => ({
  accepted: await bridge.metric('amqp_caller_logins_total', { result: 'accepted' }, { absentIsZero: true }),
  refused: await bridge.metric('amqp_caller_logins_total', { result: 'refused' }, { absentIsZero: true }),
  throttled: await bridge.metric('amqp_caller_logins_total', { result: 'throttled' }, { absentIsZero: true }),
});

describe('refused logins are throttled', () => {
  it('asks the broker at most 5 times for 20 wrong passwords of one user from 20 addresses, and still serves her open connection', async () => {
    const dave = await brokerUser(`${prefix}-dave`);
    await withBridge({}, async (bridge) => {
      const queue = `/rpc/${fixture.echoQueue}`;
      expect((await post(bridge, queue, { authorization: basic(dave) })).status).toBe(200);
      const statuses: number[] = [];
      for (let n = 0; n < 20; n++) {
        const wrong = basic({ name: dave.name, password: `wrong-${n}` });
        statuses.push((await post(bridge, queue, { authorization: wrong, from: `127.0.0.${10 + n}` })).status);
      }
      expect(statuses).toEqual(Array(20).fill(401));
      expect(await logins(bridge)).toEqual({ accepted: 1, refused: 5, throttled: 15 });
      // The right password rides the connection already open: no broker login, no throttle.
      expect((await post(bridge, queue, { authorization: basic(dave), from: '127.0.0.40' })).status).toBe(200);
    });
  });

  it('asks the broker at most 5 times for 20 logins from one address, and still logs in callers from another', async () => {
    await withBridge({}, async (bridge) => {
      const queue = `/rpc/${fixture.echoQueue}`;
      const statuses: number[] = [];
      for (let n = 0; n < 20; n++) {
        const nobody = basic({ name: `${prefix}-nobody-${n}`, password: 'x' });
        statuses.push((await post(bridge, queue, { authorization: nobody, from: '127.0.0.50' })).status);
      }
      expect(statuses).toEqual(Array(20).fill(401));
      expect(await logins(bridge)).toEqual({ accepted: 0, refused: 5, throttled: 15 });
      const throttled = await post(bridge, queue, { authorization: basic(users.alice), from: '127.0.0.50' });
      expect(throttled.status).toBe(401);
      expect(throttled.headers['www-authenticate']).toContain('Basic');
      expect(throttled.headers['retry-after']).toMatch(/^\d+$/);
      expect((await post(bridge, queue, { authorization: basic(users.alice), from: '127.0.0.51' })).status).toBe(200);
    });
  });
});

describe('room for callers (AMQP_CALLER_MAX_USERS)', () => {
  it("closes nobody's connection for logins the broker refuses", async () => {
    await withBridge({ AMQP_CALLER_MAX_USERS: '1' }, async (bridge) => {
      const queue = `/rpc/${fixture.echoQueue}`;
      expect((await post(bridge, queue, { authorization: basic(users.alice) })).status).toBe(200);
      // Each from an address and as a user of its own: none of them is throttled, all reach the broker.
      const statuses: number[] = [];
      for (let n = 0; n < 20; n++) {
        const bogus = basic({ name: `${prefix}-bogus-${n}`, password: 'x' });
        statuses.push((await post(bridge, queue, { authorization: bogus, from: `127.0.1.${n + 1}` })).status);
      }
      expect(statuses).toEqual(Array(20).fill(401));
      expect((await post(bridge, queue, { authorization: basic(users.alice) })).status).toBe(200);
      // Alice logged in once: her connection was never closed to make room for a login that failed.
      expect(await logins(bridge)).toMatchObject({ accepted: 1, refused: 20 });
    });
  });

  it('keeps the connection of a request whose body is still arriving: the next user gets 503', async () => {
    await withBridge({ AMQP_CALLER_MAX_USERS: '1' }, async (bridge) => {
      const queue = `/rpc/${fixture.echoQueue}`;
      expect((await post(bridge, queue, { authorization: basic(users.alice) })).status).toBe(200);
      let sendRest = () => {};
      const holdBody = new Promise<void>((resolve) => {
        sendRest = resolve;
      });
      const alice = post(bridge, queue, { authorization: basic(users.alice), holdBody });
      // Alice's connection is found at once; her body is not complete yet.
      await new Promise((resolve) => setTimeout(resolve, 300));
      const bob = await post(bridge, `/rpc/${exchanges.bob}/k`, { authorization: basic(users.bob) });
      sendRest();
      expect({ alice: (await alice).status, bob: bob.status }).toEqual({ alice: 200, bob: 503 });
      // Counted as what it was, a bound of the bridge's, as any other refusal for want of room.
      const counted = { queue: `${exchanges.bob}:k`, outcome: 'overloaded' };
      expect(await bridge.metric('rpc_request_duration_seconds_count', counted, { absentIsZero: true })).toBe(1);
    });
  });
});

describe('connections have a maximum age (AMQP_CALLER_MAX_AGE_MS)', () => {
  it('stops a rotated password from working once the connection made with it is past its age', async () => {
    const erin = await brokerUser(`${prefix}-erin`);
    const rotated = `rotated-${randomBytes(6).toString('hex')}`;
    // Long enough for rabbitmqctl to change the password on a busy CI machine (it took over 2 s once).
    await withBridge({ AMQP_CALLER_MAX_AGE_MS: '8000' }, async (bridge) => {
      const queue = `/rpc/${fixture.echoQueue}`;
      const loggedInAt = Date.now();
      expect((await post(bridge, queue, { authorization: basic(erin) })).status).toBe(200);
      await admin.changePassword(erin.name, rotated);
      // Within its age the open connection still carries the old password's calls...
      expect((await post(bridge, queue, { authorization: basic(erin) })).status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, loggedInAt + 8_200 - Date.now())));
      // ...past it the next request logs in again, and the broker refuses the old password.
      const old = await post(bridge, queue, { authorization: basic(erin) });
      expect(old.status).toBe(401);
      expect((await post(bridge, queue, { authorization: basic({ name: erin.name, password: rotated }) })).status).toBe(
        200,
      );
    });
  });

  it('lets a call under way finish on the old connection, then closes it', async () => {
    const frank = await brokerUser(`${prefix}-frank`);
    await withBridge({ AMQP_CALLER_MAX_AGE_MS: '1500' }, async (bridge) => {
      const queue = `/rpc/${fixture.echoQueue}`;
      const slow = post(bridge, queue, { authorization: basic(frank), headers: { 'Amqp-Header-delay-ms': '2500' } });
      await new Promise((resolve) => setTimeout(resolve, 1_700));
      // Past its age: this one gets a new connection, while the slow call is still on the old one.
      expect((await post(bridge, queue, { authorization: basic(frank) })).status).toBe(200);
      expect(await logins(bridge)).toMatchObject({ accepted: 2 });
      expect(await bridge.metric('amqp_caller_connections')).toBe(2);
      expect((await slow).status).toBe(200);
      await waitFor(
        async () => (await bridge.metric('amqp_caller_connections')) === 1,
        5_000,
        'the old connection to close once its call was answered',
      );
    });
  });
});

describe('broker users and passwords outside ASCII', () => {
  it('log in as they are (UTF-8), never mangled through a URL', async () => {
    const jurgen = await brokerUser(
      `jürgen-${randomBytes(4).toString('hex')}`,
      `pässwörd-${randomBytes(4).toString('hex')}`,
    );
    const res = await post(fixture.bridge, `/rpc/${fixture.echoQueue}`, { authorization: basic(jurgen) });
    expect({ status: res.status, body: res.body }).toEqual({ status: 200, body: 'hello' });
  });
});

describe('AUTH_TOKENS with AMQP_IDENTITY=caller', () => {
  it('refuses to start (exit 78), naming both and what to use instead', async () => {
    const { code, stdout, stderr } = await runBridgeProcessUntilExit(
      { AMQP_IDENTITY: 'caller', AUTH_TOKENS: `token-${randomBytes(12).toString('hex')}` },
      10_000,
    );
    expect(code, stdout + stderr).toBe(78);
    expect(stderr).toMatch(/AUTH_TOKENS.*AMQP_IDENTITY=caller/);
    expect(stderr).toContain('brokerUser');
  });
});
