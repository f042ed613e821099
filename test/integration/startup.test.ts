/** The real process at start-up: what it refuses (exit 78) and what it warns about. */
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { runBridgeProcessUntilExit, startBridgeProcess } from '../helpers/bridge-process.js';

/** EX_CONFIG: the operator must fix the environment. */
const EXIT_CONFIG = 78;

describe('start-up configuration', () => {
  it('refuses a headers timeout above the request timeout with exit 78, naming both variables', async () => {
    const { code, stdout, stderr } = await runBridgeProcessUntilExit({
      HTTP_HEADERS_TIMEOUT_MS: '5000',
      HTTP_REQUEST_TIMEOUT_MS: '1000',
    });
    expect(code, stdout + stderr).toBe(EXIT_CONFIG);
    expect(stderr).toContain('invalid configuration');
    expect(stderr).toContain('HTTP_HEADERS_TIMEOUT_MS (5000) must not exceed HTTP_REQUEST_TIMEOUT_MS (1000)');
  });

  it('warns once per unknown variable that looks like its own, naming the nearest, never the value', async () => {
    const secret = 'mistyped-secret-token-0123456789';
    const env: Record<string, string> = {
      RPC_TIMEOUT: '500',
      AUTH_TOKEN: secret,
      AMPQ_URL: `amqp://user:${secret}@elsewhere:5672`,
      // Kubernetes' service links for the bridge's own Service are not the operator's typos.
      AMQP_RPC_BRIDGE_SERVICE_HOST: '10.0.0.1',
      AMQP_RPC_BRIDGE_PORT: 'tcp://10.0.0.1:80',
      AMQP_RPC_BRIDGE_PORT_80_TCP_ADDR: '10.0.0.1',
    };
    const bridge = await startBridgeProcess(env);
    try {
      // (The process also gets this test run's own environment: only the variables set here count.)
      const warnings = bridge.logs
        .filter((line) => line.level === 40 && typeof line.variable === 'string' && line.variable in env)
        .map((line) => [line.variable, line.nearest]);
      expect(warnings).toEqual([
        ['AMPQ_URL', 'AMQP_URL'],
        ['AUTH_TOKEN', 'AUTH_TOKENS'],
        ['RPC_TIMEOUT', 'RPC_TIMEOUT_MS'],
      ]);
      expect(JSON.stringify(bridge.logs)).not.toContain(secret);
      // A warning, not a refusal: the bridge runs (and without the token it was not given).
      expect((await request(bridge.baseUrl).get('/readyz')).status).toBe(200);
    } finally {
      bridge.child.kill('SIGTERM');
      await bridge.exited;
    }
  });

  it('warns when it listens beyond loopback with no credential configured, and only then', async () => {
    const warning = (logs: ReadonlyArray<Record<string, unknown>>) =>
      logs.some((line) => line.level === 40 && String(line.msg).startsWith('listening beyond loopback'));
    const cases = [
      { env: { HOST: '0.0.0.0' }, warns: true },
      { env: { HOST: '0.0.0.0', AUTH_TOKENS: 'a-token-of-sixteen-characters' }, warns: false },
      { env: { HOST: '127.0.0.1' }, warns: false },
    ];
    for (const { env, warns } of cases) {
      const bridge = await startBridgeProcess(env);
      try {
        // The line follows 'listening', which startBridgeProcess waited for; give it a moment.
        await new Promise((resolve) => setTimeout(resolve, 200));
        expect(warning(bridge.logs), JSON.stringify(env)).toBe(warns);
      } finally {
        bridge.child.kill('SIGTERM');
        await bridge.exited;
      }
    }
  });
});
