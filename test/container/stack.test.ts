/**
 * What the README's first command does — `docker compose up --build` — checked the way a user
 * would: the image builds, every service turns healthy, an RPC answers through the published port,
 * the bridge runs unprivileged under tini, and both ways of stopping it (`docker compose stop` and a
 * plain `docker stop` with its 10 s kill timeout) answer the request in flight and exit 0.
 *
 * It runs its own compose project on free host ports, so it works beside a broker on 5672, and
 * removes everything it started, pass or fail. Without a Docker engine it fails, saying what to run.
 */
import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMetric } from '../helpers/metric-text.js';

const PROJECT = 'bridge-container-test';
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const IMAGE = 'amqp-rpc-bridge:local';
const SERVICES = ['broker', 'bridge', 'worker'] as const;
type Service = (typeof SERVICES)[number];
/** docker stop's default: SIGKILL this long after SIGTERM. */
const DOCKER_STOP_KILL_MS = 10_000;
const SETUP_HINT =
  'The container test needs a Docker engine with Compose and the base images. ' +
  "On this project's machines run, as root from the repository root: " +
  '`bash ../shared/container/engine.sh && bash ../shared/container/stand-in-images.sh` ' +
  '(elsewhere: start Docker), then `npm run test:container` again.';

interface Answer {
  /** Undefined when no HTTP answer came (empty reply, reset): what this test exists to catch. */
  readonly status: number | undefined;
  readonly body: string;
  readonly error?: string;
  /** Milliseconds from the start of the request. */
  readonly ms: number;
}

interface Summary {
  buildSeconds?: number;
  buildCache?: string;
  imageMb?: number;
  health?: Record<string, string>;
  echo?: string;
  processes?: string;
  dockerStop?: string;
  composeStop?: string;
}

const summary: Summary = {};
const ports = { bridge: 0, amqp: 0, http: 0 };
let compose: readonly string[] = [];
const containers = new Map<Service, string>();
const started = Date.now();

interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command; rejects with its exit status and the tail of its output. */
function run(command: string, args: readonly string[], timeoutMs = 120_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { cwd: ROOT, env: composeEnv(), timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err === null) {
          resolve({ stdout, stderr });
          return;
        }
        const output = `${stdout}\n${stderr}`.trim().split('\n').slice(-25).join('\n');
        reject(new Error(`\`${command} ${args.join(' ')}\` failed (${err.message.split('\n')[0]}):\n${output}`));
      },
    );
  });
}

/**
 * The environment compose sees: the free host ports, and none of the variables a developer may
 * have exported for running the bridge outside Docker (AMQP_URL=127.0.0.1 would break the stack).
 */
function composeEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of [
    'AMQP_URL',
    'AMQP_URLS',
    'LOG_LEVEL',
    'COMPOSE_FILE',
    'COMPOSE_PROJECT_NAME',
    'COMPOSE_PROFILES',
  ]) {
    delete env[name];
  }
  env.BRIDGE_PORT = String(ports.bridge);
  env.BROKER_AMQP_PORT = String(ports.amqp);
  env.BROKER_HTTP_PORT = String(ports.http);
  return env;
}

function composeRun(args: readonly string[], timeoutMs?: number): Promise<RunResult> {
  const [command = 'docker', ...prefix] = compose;
  return run(command, [...prefix, '-p', PROJECT, '-f', 'docker-compose.yml', ...args], timeoutMs);
}

async function docker(args: readonly string[], timeoutMs?: number): Promise<string> {
  return (await run('docker', args, timeoutMs)).stdout.trim();
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function container(service: Service): string {
  const id = containers.get(service);
  if (id === undefined) throw new Error(`no container for ${service}: the stack did not come up`);
  return id;
}

async function state(service: Service): Promise<{ status: string; health: string; exitCode: number }> {
  const format =
    '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}';
  const [status = '', health = '', exitCode = ''] = (await docker(['inspect', '-f', format, container(service)])).split(
    ' ',
  );
  return { status, health, exitCode: Number(exitCode) };
}

async function waitUntilHealthy(timeoutMs: number): Promise<Record<Service, string>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const health = {} as Record<Service, string>;
    for (const service of SERVICES) health[service] = (await state(service)).health;
    if (SERVICES.every((service) => health[service] === 'healthy')) return health;
    if (Date.now() > deadline) {
      const details: string[] = [];
      for (const service of SERVICES.filter((name) => health[name] !== 'healthy')) {
        const probe = await docker(['inspect', '-f', '{{json .State.Health}}', container(service)]).catch(String);
        const logs = await run('docker', ['logs', '--tail', '10', container(service)]).then(
          ({ stdout, stderr }) => stdout + stderr,
          String,
        );
        details.push(`${service}: health ${probe}\n${logs}`);
      }
      const what = `not every service turned healthy within ${timeoutMs / 1000} s: ${JSON.stringify(health)}`;
      throw new Error([what, ...details].join('\n'));
    }
    await sleep(1_000);
  }
}

function bridgeUrl(path: string): string {
  return `http://127.0.0.1:${ports.bridge}${path}`;
}

async function waitUntilReady(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const response = await fetch(bridgeUrl('/readyz'));
      last = `${response.status} ${await response.text()}`;
      if (response.ok) return;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await sleep(500);
  }
  throw new Error(`the bridge did not turn ready within ${timeoutMs / 1000} s: ${last}`);
}

/** POST /rpc/echo as curl would; never rejects, so that an empty reply is a result, not a crash. */
async function echo(body: string, headers: Record<string, string> = {}): Promise<Answer> {
  const start = performance.now();
  try {
    const response = await fetch(bridgeUrl('/rpc/echo'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body,
    });
    return { status: response.status, body: await response.text(), ms: performance.now() - start };
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : '';
    const message = err instanceof Error ? err.message : String(err);
    return { status: undefined, body: '', error: `${message}${cause}`, ms: performance.now() - start };
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function describeAnswer(answer: Answer): string {
  return answer.status === undefined ? `no answer (${answer.error})` : `HTTP ${answer.status}`;
}

/** Waits until the worker has taken the request (it shows as in flight on the bridge). */
async function waitUntilInFlight(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const metrics = await (await fetch(bridgeUrl('/metrics'))).text();
    const inFlight = readMetric(metrics, 'rpc_in_flight');
    if (inFlight > 0) {
      // In flight on the bridge; give the broker a moment to deliver it to the worker.
      await sleep(500);
      return;
    }
    await sleep(100);
  }
  throw new Error('the request never showed as in flight');
}

interface ProcessInfo {
  readonly pid: number;
  readonly ppid: number;
  readonly uid: number;
  readonly comm: string;
}

/** Every process in the bridge's container, read from /proc by a node started there for the purpose. */
async function bridgeProcesses(): Promise<ProcessInfo[]> {
  const script = `
    const fs = require('node:fs');
    const out = [];
    for (const pid of fs.readdirSync('/proc')) {
      if (!/^\\d+$/.test(pid) || Number(pid) === process.pid) continue;
      try {
        const status = fs.readFileSync('/proc/' + pid + '/status', 'utf8');
        const field = (name) => Number(new RegExp('^' + name + ':\\\\s+(\\\\d+)', 'm').exec(status)[1]);
        const comm = fs.readFileSync('/proc/' + pid + '/comm', 'utf8').trim();
        out.push({ pid: Number(pid), ppid: field('PPid'), uid: field('Uid'), comm });
      } catch {}
    }
    console.log(JSON.stringify(out));`;
  return JSON.parse(await docker(['exec', container('bridge'), 'node', '-e', script])) as ProcessInfo[];
}

/**
 * Set when there is no Docker engine (or Compose). Every test then fails with it: a failed hook
 * alone would leave the tests counted as skipped, and CI counts failed tests.
 */
let setupError: Error | undefined;

/** A test that fails at once, saying what to run, when the setup found no Docker engine. */
function step(name: string, body: () => Promise<void>): void {
  it(name, async () => {
    if (setupError !== undefined) throw setupError;
    await body();
  });
}

function lastLine(err: unknown): string | undefined {
  return (err instanceof Error ? err.message : String(err)).split('\n').filter(Boolean).at(-1);
}

beforeAll(async () => {
  try {
    await run('docker', ['info', '--format', '{{.ServerVersion}}'], 30_000);
  } catch (err) {
    setupError = new Error(`No Docker engine answers (\`docker info\`: ${lastLine(err)}). ${SETUP_HINT}`);
    return;
  }
  try {
    compose = await run('docker', ['compose', 'version'], 30_000).then(
      () => ['docker', 'compose'],
      () => ['docker-compose'],
    );
    ports.bridge = await freePort();
    ports.amqp = await freePort();
    ports.http = await freePort();
    // A run that was killed may have left its stack behind.
    await composeRun(['down', '-v', '--remove-orphans', '-t', '1']);
  } catch (err) {
    setupError = new Error(`Docker Compose does not work (${lastLine(err)}). ${SETUP_HINT}`);
  }
});

afterAll(async () => {
  try {
    if (compose.length > 0) await composeRun(['down', '-v', '--remove-orphans', '-t', '5']);
  } finally {
    const cache = summary.buildCache === undefined ? '' : ` (${summary.buildCache})`;
    const health = Object.entries(summary.health ?? {}).map(([service, status]) => `${service}=${status}`);
    console.info(
      [
        'container test summary',
        `  build (docker compose build): ${summary.buildSeconds?.toFixed(1) ?? '-'} s${cache}`,
        `  image ${IMAGE}: ${summary.imageMb?.toFixed(1) ?? '-'} MB`,
        `  health: ${health.join(', ') || '-'}`,
        `  POST /rpc/echo on :${ports.bridge}: ${summary.echo ?? '-'}`,
        `  bridge processes: ${summary.processes ?? '-'}`,
        `  docker stop bridge (10 s): ${summary.dockerStop ?? '-'}`,
        `  docker compose stop: ${summary.composeStop ?? '-'}`,
        `  total: ${((Date.now() - started) / 1000).toFixed(1)} s`,
      ].join('\n'),
    );
  }
});

describe('docker compose up --build', () => {
  step('builds the image from the Dockerfile', async () => {
    const start = performance.now();
    let output: string;
    try {
      const { stdout, stderr } = await composeRun(['build'], 600_000);
      output = stdout + stderr;
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${SETUP_HINT}`);
    }
    summary.buildSeconds = (performance.now() - start) / 1000;
    // The classic builder's "Step n/m" lines: how much of the build the layer cache saved.
    const steps = output.match(/^Step \d+\/\d+ :/gm)?.length ?? 0;
    const cached = output.match(/^ ---> Using cache$/gm)?.length ?? 0;
    if (steps > 0) summary.buildCache = `${cached} of ${steps} steps from the layer cache`;
    summary.imageMb = Number(await docker(['image', 'inspect', '-f', '{{.Size}}', IMAGE])) / 1e6;
    expect(summary.imageMb).toBeGreaterThan(0);
  });

  step('brings up the broker, the bridge and the worker, every one healthy', async () => {
    await composeRun(['up', '-d'], 300_000);
    for (const service of SERVICES) {
      const id = (await composeRun(['ps', '-q', service])).stdout.trim();
      expect(id, `container of ${service}`).not.toBe('');
      containers.set(service, id);
    }
    summary.health = await waitUntilHealthy(120_000);
    expect(summary.health).toEqual({ broker: 'healthy', bridge: 'healthy', worker: 'healthy' });
  });

  step('answers POST /rpc/echo on the published port with the body', async () => {
    await waitUntilReady(60_000);
    const answer = await echo('{"hi":1}');
    summary.echo = `${describeAnswer(answer)} ${answer.body} in ${answer.ms.toFixed(0)} ms`;
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('{"hi":1}');
  });

  step('runs the bridge as a non-root user under tini, not as PID 1', async () => {
    const processes = await bridgeProcesses();
    const init = processes.find((proc) => proc.pid === 1);
    const bridge = processes.find((proc) => proc.comm === 'node' && proc.ppid === 1);
    summary.processes = processes.map((proc) => `pid ${proc.pid} ${proc.comm} uid ${proc.uid}`).join(', ');
    expect(init?.comm).toBe('tini');
    expect(bridge?.pid).toBeGreaterThan(1);
    for (const proc of processes) expect(proc.uid, `uid of ${proc.comm}`).not.toBe(0);
  });

  step('answers 502 before the kill when a plain docker stop (10 s) ends a request longer than the grace', async () => {
    // The worker would answer after 15 s: longer than SHUTDOWN_GRACE_MS and than docker stop's 10 s.
    const requestStart = performance.now();
    const pending = echo('"slow"', { 'Amqp-Header-Delay-Ms': '15000', 'Amqp-Timeout': '30000' });
    await waitUntilInFlight(10_000);
    const stopStart = performance.now();
    try {
      await docker(['stop', container('bridge')], 60_000);
      const stopMs = performance.now() - stopStart;
      const answer = await pending;
      const answeredAfterStopMs = requestStart + answer.ms - stopStart;
      const { exitCode } = await state('bridge');
      summary.dockerStop = [
        `${describeAnswer(answer)}${answer.body.includes('request-lost') ? ' (request-lost)' : ''}`,
        `${seconds(answeredAfterStopMs)} after SIGTERM`,
        `docker stop took ${seconds(stopMs)}`,
        `bridge exit code ${exitCode}`,
      ].join(', ');
      expect(answer.status, answer.error).toBe(502);
      expect(answer.body).toContain('request-lost');
      expect(answeredAfterStopMs).toBeLessThan(DOCKER_STOP_KILL_MS);
      expect(stopMs).toBeLessThan(DOCKER_STOP_KILL_MS);
      expect(exitCode).toBe(0);
    } finally {
      // Bring it back for the next drill (docker stop keeps `restart: unless-stopped` from doing so).
      await docker(['start', container('bridge')]);
      await waitUntilReady(60_000);
    }
  });

  step('answers the request in flight during docker compose stop, and every container exits 0', async () => {
    const requestStart = performance.now();
    const pending = echo('{"during":"stop"}', { 'Amqp-Header-Delay-Ms': '2000', 'Amqp-Timeout': '30000' });
    await waitUntilInFlight(10_000);
    const stopStart = performance.now();
    await composeRun(['stop'], 120_000);
    const stopMs = performance.now() - stopStart;
    const answer = await pending;
    const answeredAfterStopMs = requestStart + answer.ms - stopStart;
    const exits = {} as Record<Service, number>;
    for (const service of SERVICES) exits[service] = (await state(service)).exitCode;
    const codes = SERVICES.map((service) => `${service}=${exits[service]}`).join(', ');
    summary.composeStop = [
      describeAnswer(answer),
      `${seconds(answeredAfterStopMs)} after the stop began`,
      `docker compose stop took ${seconds(stopMs)}`,
      `exit codes ${codes}`,
    ].join(', ');
    expect(answer.status === 200 || answer.status === 502, describeAnswer(answer)).toBe(true);
    expect(exits).toEqual({ broker: 0, bridge: 0, worker: 0 });
  });

  step('stops the worker with exit code 0, not as if it had lost the broker', async () => {
    // Normally stopped by the drill above; stopped here if that drill failed early.
    if ((await state('worker')).status === 'running') await docker(['stop', container('worker')], 60_000);
    const { status, exitCode } = await state('worker');
    const { stdout, stderr } = await run('docker', ['logs', container('worker')]);
    expect(status).toBe('exited');
    expect(exitCode).toBe(0);
    expect(stdout + stderr).not.toContain('lost its broker connection');
  });
});
