import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { ConfigError } from '../../src/config/config-error.js';
import { loggableConfig, redactUrl } from '../../src/config/redact.js';
import { unknownVariables } from '../../src/config/unknown-variables.js';

describe('loadConfig', () => {
  it('has working defaults for a local broker', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      port: 8080,
      amqpUrls: ['amqp://guest:guest@127.0.0.1:5672'],
      amqpChannels: 4,
      replyTo: 'amq.rabbitmq.reply-to',
      rpcTimeoutMs: 30_000,
      rpcMaxTimeoutMs: 300_000,
      maxBodyBytes: 1_048_576,
      // With ~2 s to close, shutdown ends inside docker stop's 10 s before SIGKILL.
      shutdownGraceMs: 7_000,
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('serves the raw routes by default only without a routes file, and gives one caller half of MAX_IN_FLIGHT', () => {
    expect(loadConfig({}).routesRawEnabled).toBe(true);
    expect(loadConfig({ ROUTES_FILE: '/r.yaml' }).routesRawEnabled).toBe(false);
    expect(loadConfig({ ROUTES_FILE: '/r.yaml', ROUTES_RAW_ENABLED: 'true' }).routesRawEnabled).toBe(true);
    expect(loadConfig({}).maxInFlightPerCaller).toBe(5_000);
    expect(loadConfig({ MAX_IN_FLIGHT: '1' }).maxInFlightPerCaller).toBe(1);
  });

  it('reads every variable docs/configuration.md documents, each into its own field', () => {
    const tokens = mkdtempSync(join(tmpdir(), 'config-test-'));
    try {
      writeFileSync(join(tokens, 'tokens'), '# mounted secret\nbbbbbbbbbbbbbbbb\n');
      // A value other than the default for each variable in docs/configuration.md's table.
      const env: Record<string, string> = {
        HOST: '127.0.0.2',
        PORT: '9000',
        HTTP_BACKLOG: '128',
        HTTP_HEADERS_TIMEOUT_MS: '2000',
        HTTP_REQUEST_TIMEOUT_MS: '4000',
        // Read too, but AMQP_URLS wins when both are set (see 'broker URLs').
        AMQP_URL: 'amqp://shadowed:5672',
        AMQP_URLS: 'amqp://a:5672, amqps://b:5671/vh',
        AMQP_CONNECT_ORDER: 'listed',
        AMQP_HEARTBEAT_SECONDS: '0',
        AMQP_CHANNELS: '8',
        AMQP_REPLY_TO: 'amq.direct.reply-to',
        RPC_REPLY_MODE: 'queue',
        AMQP_PUBLISHER_CONFIRMS: 'false',
        MAX_IN_FLIGHT: '50',
        MAX_IN_FLIGHT_PER_CALLER: '20',
        AMQP_RECONNECT_MIN_MS: '200',
        AMQP_RECONNECT_MAX_MS: '4000',
        RPC_TIMEOUT_MS: '500',
        RPC_MAX_TIMEOUT_MS: '1000',
        ASYNC_MAX_TIMEOUT_MS: '120000',
        ASYNC_RESULT_TTL_MS: '60000',
        IDEMPOTENCY_TTL_MS: '90000',
        CALLS_MAX_HELD: '500',
        CALLS_MAX_HELD_PER_CALLER: '20',
        CALLS_MAX_WAITING: '64',
        MAX_BODY_BYTES: '10',
        EXCHANGE_CHECK_TTL_MS: '0',
        EXCHANGE_CHECK_BY_ROUTING_KEY: 'true',
        METRICS_MAX_QUEUES: '7',
        SHUTDOWN_GRACE_MS: '1500',
        SHUTDOWN_DELAY_MS: '250',
        LOG_LEVEL: 'debug',
        LOG_MAX_BUFFER_BYTES: '65536',
        APP_ID: 'bridge-under-test',
        AUTH_PROTECT_METRICS: 'true',
        ALLOWED_QUEUES: 'orders.*, billing',
        ALLOWED_EXCHANGES: 'amq.topic',
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json',
        OTEL_SDK_DISABLED: 'false',
        ROUTES_FILE: '/etc/bridge/routes.yaml',
        ROUTES_RAW_ENABLED: 'true',
        ROUTES_RAW_ROLES: 'ops, raw',
        AMQP_IDENTITY: 'caller',
        AMQP_CALLER_MAX_USERS: '5',
        AMQP_CALLER_IDLE_MS: '2000',
        AMQP_CALLER_MAX_AGE_MS: '30000',
        AMQP_CALLER_CHANNELS: '2',
        JWT_PUBLIC_KEY_FILE: '/keys/jwt.pem',
        JWT_ISSUER: 'https://idp.example',
        JWT_AUDIENCE: 'bridge, orders',
        JWT_ALGORITHMS: 'ES256',
        JWT_ROLES_CLAIM: 'scope',
        JWT_CLOCK_TOLERANCE_SECONDS: '5',
        JWT_MAX_LIFETIME_SECONDS: '3600',
        STREAM_MAX_BUFFER_BYTES: '4096',
        STREAM_KEEPALIVE_MS: '500',
        STREAM_MAX_OPEN: '50',
        CORS_ALLOWED_ORIGINS: 'https://app.example.com, http://localhost:3000',
      };
      // One JWT key source at a time, and JWT_ALLOW_ANY_AUDIENCE not with JWT_AUDIENCE: those are read
      // in jwt-verifier.test.ts. AUTH_TOKENS and AUTH_TOKENS_FILE cannot go with AMQP_IDENTITY=caller:
      // they are read below.
      const readApart = [
        'JWT_JWKS_FILE',
        'JWT_SECRET_FILE',
        'JWT_ALLOW_ANY_AUDIENCE',
        'AUTH_TOKENS',
        'AUTH_TOKENS_FILE',
      ];
      expect(Object.keys(env).sort()).toEqual(documentedVariables().filter((name) => !readApart.includes(name)));
      expect(loadConfig(env)).toEqual({
        host: '127.0.0.2',
        port: 9000,
        httpBacklog: 128,
        httpHeadersTimeoutMs: 2000,
        httpRequestTimeoutMs: 4000,
        amqpUrls: ['amqp://a:5672', 'amqps://b:5671/vh'],
        amqpConnectOrder: 'listed',
        amqpHeartbeatSeconds: 0,
        amqpChannels: 8,
        replyTo: 'amq.direct.reply-to',
        replyMode: 'queue',
        publisherConfirms: false,
        maxInFlight: 50,
        maxInFlightPerCaller: 20,
        reconnectMinMs: 200,
        reconnectMaxMs: 4000,
        rpcTimeoutMs: 500,
        rpcMaxTimeoutMs: 1000,
        calls: {
          asyncMaxTimeoutMs: 120_000,
          resultTtlMs: 60_000,
          keyTtlMs: 90_000,
          maxHeld: 500,
          maxHeldPerCaller: 20,
          maxWaiting: 64,
        },
        maxBodyBytes: 10,
        exchangeCheckTtlMs: 0,
        exchangeCheckByRoutingKey: true,
        metricsMaxQueues: 7,
        shutdownGraceMs: 1500,
        shutdownDelayMs: 250,
        logLevel: 'debug',
        logMaxBufferBytes: 65536,
        appId: 'bridge-under-test',
        authTokens: [],
        authProtectMetrics: true,
        allowedQueues: ['orders.*', 'billing'],
        allowedExchanges: ['amq.topic'],
        tracing: { exporter: 'otlp', protocol: 'http/json', serviceName: 'bridge-under-test' },
        routesFile: '/etc/bridge/routes.yaml',
        routesRawEnabled: true,
        routesRawRoles: ['ops', 'raw'],
        amqpIdentity: 'caller',
        callerMaxUsers: 5,
        callerIdleMs: 2000,
        callerMaxAgeMs: 30000,
        callerChannels: 2,
        jwt: {
          keyFile: '/keys/jwt.pem',
          issuer: 'https://idp.example',
          audience: ['bridge', 'orders'],
          algorithms: ['ES256'],
          rolesClaim: 'scope',
          clockToleranceSeconds: 5,
          maxLifetimeSeconds: 3600,
        },
        streamMaxBufferBytes: 4096,
        streamKeepAliveMs: 500,
        streamMaxOpen: 50,
        corsAllowedOrigins: ['https://app.example.com', 'http://localhost:3000'],
      });
      const withTokens = { AUTH_TOKENS: 'aaaaaaaaaaaaaaaa', AUTH_TOKENS_FILE: join(tokens, 'tokens') };
      expect(loadConfig(withTokens).authTokens).toEqual(['aaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbb']);
    } finally {
      rmSync(tokens, { recursive: true, force: true });
    }
  });

  it('reads no variable docs/configuration.md does not document, and warns about none it does', () => {
    const read = variablesRead();
    const documented = documentedVariables();
    // A variable added to loadConfig belongs in docs/configuration.md's table, and one taken out leaves it.
    expect({
      readButUndocumented: read.filter((name) => !documented.includes(name)),
      documentedButUnread: documented.filter((name) => !read.includes(name)),
    }).toEqual({ readButUndocumented: [], documentedButUnread: [] });
    // Start-up warns about unknown look-alikes (unknownVariables): never about a documented one.
    expect(unknownVariables(Object.fromEntries(documentedVariables().map((name) => [name, 'x'])))).toEqual([]);
  });

  it.each([
    [{ PORT: 'eighty' }, /PORT must be a whole number/],
    [{ PORT: '70000' }, /PORT must be between 0 and 65535/],
    [{ AMQP_CHANNELS: '0' }, /AMQP_CHANNELS must be between 1 and 256/],
    [{ CORS_ALLOWED_ORIGINS: 'https://app.example.com/' }, /CORS_ALLOWED_ORIGINS must list origins/],
    [{ STREAM_MAX_BUFFER_BYTES: '10' }, /STREAM_MAX_BUFFER_BYTES must be between 1024/],
    [{ AMQP_REPLY_TO: 'my-queue' }, /AMQP_REPLY_TO must be one of amq\.rabbitmq\.reply-to, amq\.direct\.reply-to/],
    [{ RPC_TIMEOUT_MS: '5000', RPC_MAX_TIMEOUT_MS: '1000' }, /RPC_TIMEOUT_MS must be between 1 and 1000/],
    [{ AMQP_URL: 'http://example' }, /AMQP_URL must start with amqp:\/\/ or amqps:\/\//],
    [{ AMQP_URL: 'amqp://u:p@host?frameMax=8192' }, /AMQP_URL asks for frameMax=8192: .* at least 40960/],
    [{ AMQP_URL: 'amqp://u:p@host?frameMax=lots' }, /AMQP_URL asks for frameMax=lots/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL must be one of/],
    [
      { HTTP_HEADERS_TIMEOUT_MS: '5000', HTTP_REQUEST_TIMEOUT_MS: '1000' },
      /HTTP_HEADERS_TIMEOUT_MS \(5000\) must not exceed HTTP_REQUEST_TIMEOUT_MS \(1000\)/,
    ],
    [{ ROUTES_RAW_ENABLED: 'false' }, /ROUTES_RAW_ENABLED=false needs ROUTES_FILE/],
    [{ ROUTES_FILE: '/r.yaml', ROUTES_RAW_ROLES: 'ops' }, /ROUTES_RAW_ROLES limits the raw routes, which are off/],
    [{ ROUTES_RAW_ROLES: 'ops' }, /ROUTES_RAW_ROLES needs callers with roles/],
    [{ MAX_IN_FLIGHT_PER_CALLER: '0' }, /MAX_IN_FLIGHT_PER_CALLER must be between 1 and 10000000/],
  ])('refuses %j with a message naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
  });

  it('refuses AUTH_TOKENS with AMQP_IDENTITY=caller, naming both and what to use instead', () => {
    const token = 'a-token-of-at-least-16-characters';
    const dir = mkdtempSync(join(tmpdir(), 'config-test-'));
    try {
      writeFileSync(join(dir, 'tokens'), `${token}\n`);
      for (const env of [
        { AMQP_IDENTITY: 'caller', AUTH_TOKENS: token },
        { AMQP_IDENTITY: 'caller', AUTH_TOKENS_FILE: join(dir, 'tokens') },
      ]) {
        expect(() => loadConfig(env)).toThrow(ConfigError);
        expect(() => loadConfig(env)).toThrow(
          "AUTH_TOKENS/AUTH_TOKENS_FILE cannot be used with AMQP_IDENTITY=caller: every call then goes over the caller's own broker user, which those tokens do not name. Give each token holder a token in ROUTES_FILE with brokerUser and brokerPasswordFile instead",
        );
        expect(() => loadConfig(env)).not.toThrow(token);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(loadConfig({ AMQP_IDENTITY: 'bridge', AUTH_TOKENS: token }).authTokens).toEqual([token]);
  });

  it('never puts the AMQP password in an error or a loggable view', () => {
    const secret = 's3cr3t-pa55';
    expect(() => loadConfig({ AMQP_URL: `amqp://user:${secret}@[bad` })).toThrow(/AMQP_URL is not a valid URL$/);
    const config = loadConfig({ AMQP_URL: `amqps://user:${secret}@broker.example:5671/vhost` });
    expect(JSON.stringify(loggableConfig(config))).not.toContain(secret);
    expect(redactUrl(config.amqpUrls[0] ?? '')).toBe('amqps://user:***@broker.example:5671/vhost');
  });
});

describe('unknownVariables', () => {
  it('names variables that look like ours but are not, with the nearest known one', () => {
    expect(
      unknownVariables({
        RPC_TIMEOUT: '500',
        rpc_timeout_ms: '500',
        AMPQ_URL: 'amqp://x',
        ALLOWED_QUEUE: 'a',
        RPC_TIMEOUT_MS: '500',
        HOME: '/root',
        APP_ENV: 'production',
      }),
    ).toEqual([
      { name: 'ALLOWED_QUEUE', nearest: 'ALLOWED_QUEUES' },
      { name: 'AMPQ_URL', nearest: 'AMQP_URL' },
      { name: 'RPC_TIMEOUT', nearest: 'RPC_TIMEOUT_MS' },
      { name: 'rpc_timeout_ms', nearest: 'RPC_TIMEOUT_MS' },
    ]);
  });

  it("leaves other programs' variables and Kubernetes service links alone", () => {
    expect(
      unknownVariables({
        HTTP_PROXY: 'http://proxy:3128',
        http_proxy: 'http://proxy:3128',
        AMQP_RPC_BRIDGE_SERVICE_HOST: '10.0.0.1',
        AMQP_RPC_BRIDGE_SERVICE_PORT: '80',
        AMQP_RPC_BRIDGE_SERVICE_PORT_HTTP: '80',
        AMQP_RPC_BRIDGE_PORT: 'tcp://10.0.0.1:80',
        AMQP_RPC_BRIDGE_PORT_80_TCP: 'tcp://10.0.0.1:80',
        AMQP_RPC_BRIDGE_PORT_80_TCP_PROTO: 'tcp',
        AMQP_RPC_BRIDGE_PORT_80_TCP_PORT: '80',
        AMQP_RPC_BRIDGE_PORT_80_TCP_ADDR: '10.0.0.1',
      }),
    ).toEqual([]);
    // Not a service link when the value is no tcp:// URL: HTTP_PORT=9000 is a typo for PORT.
    expect(unknownVariables({ HTTP_PORT: '9000' })).toEqual([{ name: 'HTTP_PORT', nearest: 'PORT' }]);
  });
});

describe('access configuration', () => {
  it('reads tokens and allowlists, and shows tokens only as a count', () => {
    const config = loadConfig({
      AUTH_TOKENS: 'aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb',
      ALLOWED_QUEUES: 'orders.*, billing',
    });
    expect(config.authTokens).toEqual(['aaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbb']);
    expect(config.allowedQueues).toEqual(['orders.*', 'billing']);
    expect(config.allowedExchanges).toBeUndefined();
    expect(JSON.stringify(loggableConfig(config))).not.toContain('aaaaaaaaaaaaaaaa');
  });

  it('refuses short tokens without echoing them, and an unreadable token file', () => {
    expect(() => loadConfig({ AUTH_TOKENS: 'short-secret' })).toThrow(/at least 16 characters/);
    expect(() => loadConfig({ AUTH_TOKENS: 'short-secret' })).not.toThrow(/short-secret/);
    expect(() => loadConfig({ AUTH_TOKENS_FILE: '/nonexistent/tokens' })).toThrow(
      /AUTH_TOKENS_FILE cannot be read: ENOENT/,
    );
  });
});

describe('broker URLs', () => {
  it('takes a comma-separated list from AMQP_URL or AMQP_URLS, and names the bad one', () => {
    expect(loadConfig({ AMQP_URL: 'amqp://a:5672, amqps://b:5671/vh' }).amqpUrls).toEqual([
      'amqp://a:5672',
      'amqps://b:5671/vh',
    ]);
    expect(loadConfig({ AMQP_URLS: 'amqp://x', AMQP_URL: 'amqp://ignored' }).amqpUrls).toEqual(['amqp://x']);
    // 0 leaves the frame size to the broker; 131072 is what amqplib asks for by default.
    expect(loadConfig({ AMQP_URL: 'amqp://x?frameMax=0,amqp://y?frameMax=131072' }).amqpUrls).toHaveLength(2);
    expect(() => loadConfig({ AMQP_URLS: 'amqp://ok, http://secret@bad' })).toThrow(
      'AMQP_URLS (URL 2) must start with amqp://',
    );
    const logged = JSON.stringify(loggableConfig(loadConfig({ AMQP_URL: 'amqp://u:pw1@a,amqp://u:pw2@b' })));
    expect(logged).not.toMatch(/pw1|pw2/);
  });
});

/** Every `NAME` in the first column of the table in docs/configuration.md (the README links to it), sorted. */
function documentedVariables(): string[] {
  const page = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
  const rows = page.split('\n').filter((line) => line.startsWith('| `'));
  const names = rows.flatMap((row) =>
    [...(row.split('|')[1] ?? '').matchAll(/`([A-Z][A-Z0-9_]*)`/g)].map(([, n]) => n),
  );
  return [...new Set(names as string[])].sort();
}

/** The names loadConfig looks up, watched through a proxy over an empty environment, sorted. */
function variablesRead(): string[] {
  const names = new Set<string>();
  loadConfig(
    new Proxy<Record<string, string | undefined>>(
      {},
      {
        get(_target, name) {
          if (typeof name === 'string') names.add(name);
          return undefined;
        },
      },
    ),
  );
  return [...names].sort();
}
