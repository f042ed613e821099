/**
 * Everything the bench measures, each started on demand with what it needs (its echo worker, its
 * bridge...) and stopped after its rows, so that only the target under test runs while it is
 * measured: no idle bridge with timers of its own, no second worker on the same cores.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import amqp from 'amqplib';
import { type BodyKind, LARGEST_BODY_BYTES } from './bodies.js';
import { runLoad } from './load.js';
import { type Child, freePort, npmStartFlags, startChild } from './processes.js';
import type { RunResult } from './stats.js';

export interface TargetContext {
  readonly rabbitmqUrl: string;
  readonly lavinmqUrl: string;
  /** A second LavinMQ with `tcp_nodelay = true` in its lavinmq.ini, if one is given (LAVINMQ_NODELAY_URL). */
  readonly lavinmqNodelayUrl?: string;
  /** Unique to this run: queue names, so that two runs (or a run and the tests) never share a queue. */
  readonly runId: string;
  /** Where bridges write their logs (one file per target). */
  readonly logDir: string;
  readonly warmupSeconds: number;
  /** Extra node flags for the bridge (tuning experiments); default as `npm start` runs it. */
  readonly bridgeNodeFlags: readonly string[];
}

/** One broker (AMQP_URL, else the machine's RabbitMQ), logs in a new directory under the system's tmp. */
export function singleBrokerContext(
  logDirPrefix: string,
  warmupSeconds: number,
  bridgeNodeFlags: readonly string[] = npmStartFlags('.'),
): TargetContext {
  return {
    rabbitmqUrl: process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672',
    lavinmqUrl: '',
    runId: randomBytes(4).toString('hex'),
    logDir: mkdtempSync(join(tmpdir(), logDirPrefix)),
    warmupSeconds,
    bridgeNodeFlags,
  };
}

export interface RunningTarget {
  /** One measured load at this concurrency and body size; `memory`: record the target's peak RSS too. */
  measure(concurrency: number, bodyBytes: number, seconds: number, memory?: boolean): Promise<RunResult>;
  stop(): Promise<void>;
}

export type BrokerName = 'rabbitmq' | 'lavinmq' | 'lavinmq-nodelay';

export interface Target {
  readonly name: string;
  readonly description: string;
  /** The broker it needs, if any. */
  readonly broker?: BrokerName;
  start(context: TargetContext): Promise<RunningTarget>;
}

const TSX = ['--import', 'tsx'];

export const TARGETS: readonly Target[] = [
  {
    name: 'express-echo',
    description: 'a plain express 5 echo server: the HTTP half alone',
    async start(context) {
      const port = await freePort();
      const echo = startChild('node', [...TSX, 'bench/targets/express-echo.ts'], {
        PORT: String(port),
        BODY_LIMIT: String(LARGEST_BODY_BYTES),
      });
      await echo.waitForLine(/"port"/);
      return httpTarget('express-echo', `http://127.0.0.1:${port}/echo`, echo, 'bytes', context, [echo]);
    },
  },
  bridgeTarget(
    'bridge',
    'the built bridge, default configuration (but MAX_BODY_BYTES, raised for the 16 MiB row), logging on (to a file)',
    'rabbitmq',
    { MAX_BODY_BYTES: String(LARGEST_BODY_BYTES) },
  ),
  bridgeTarget(
    'bridge-lavinmq',
    'the same bridge and worker on LavinMQ (its default tcp_nodelay = false)',
    'lavinmq',
    {},
  ),
  bridgeTarget('bridge-lavinmq-nodelay', 'the same on a LavinMQ with tcp_nodelay = true', 'lavinmq-nodelay', {}),
  {
    name: 'minimal',
    broker: 'rabbitmq',
    description: 'the floor: node:http + amqplib and nothing else (no validation, logs, metrics)',
    async start(context) {
      const worker = await startWorker(context.rabbitmqUrl, echoQueue(context));
      const port = await freePort();
      const minimal = startChild('node', [...TSX, 'bench/targets/minimal-bridge.ts'], {
        AMQP_URL: context.rabbitmqUrl,
        QUEUE: echoQueue(context),
        PORT: String(port),
      });
      await minimal.waitForLine(/"port"/);
      return httpTarget('minimal', `http://127.0.0.1:${port}/rpc`, minimal, 'bytes', context, [minimal, worker]);
    },
  },
  {
    name: 'raw-amqp',
    broker: 'rabbitmq',
    description: 'a raw amqplib direct reply-to client, no HTTP: the AMQP half alone',
    async start(context) {
      const worker = await startWorker(context.rabbitmqUrl, echoQueue(context));
      return {
        measure: (concurrency, bodyBytes, seconds, memory) =>
          runRawAmqp(context, concurrency, bodyBytes, seconds, memory === true),
        stop: () => worker.stop(),
      };
    },
  },
  {
    name: 'micromq',
    broker: 'rabbitmq',
    description: 'peer: micromq 3 Gateway + MicroService (npm), JSON bodies, on RabbitMQ',
    async start(context) {
      // micromq declares durable queues named after the service; removed again in stop().
      const name = `bench-micromq-${context.runId}`;
      const env = { RABBIT_URL: context.rabbitmqUrl, NAME: name };
      const service = startChild('node', [...TSX, 'bench/targets/micromq-service.ts'], env);
      await service.waitForLine(/"ready"/);
      const port = await freePort();
      const gateway = startChild('node', [...TSX, 'bench/targets/micromq-gateway.ts'], { ...env, PORT: String(port) });
      await gateway.waitForLine(/"port"/);
      const running = httpTarget('micromq', `http://127.0.0.1:${port}/echo`, gateway, 'json', context, [
        gateway,
        service,
      ]);
      return {
        measure: running.measure,
        async stop() {
          await running.stop();
          await deleteQueues(context.rabbitmqUrl, [`${name}:requests`, `${name}:responses`]);
        },
      };
    },
  },
  {
    name: 'bridge-traced',
    broker: 'rabbitmq',
    description: 'the bridge with tracing on, every request sampled, OTLP/protobuf to a local sink',
    async start(context) {
      const port = await freePort();
      const sink = startChild('node', [...TSX, 'bench/targets/otlp-sink.ts'], { PORT: String(port) });
      await sink.waitForLine(/"port"/);
      const running = await bridgeTarget('bridge-traced', '', 'rabbitmq', {
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${port}/v1/traces`,
        OTEL_TRACES_SAMPLER: 'always_on',
      }).start(context);
      return {
        measure: running.measure,
        async stop() {
          await running.stop();
          await sink.stop();
        },
      };
    },
  },
  bridgeTarget('bridge-queue-mode', 'the bridge with RPC_REPLY_MODE=queue', 'rabbitmq', { RPC_REPLY_MODE: 'queue' }),
  bridgeTarget('bridge-no-confirms', 'the bridge with AMQP_PUBLISHER_CONFIRMS=false', 'rabbitmq', {
    AMQP_PUBLISHER_CONFIRMS: 'false',
  }),
];

export function echoQueue(context: TargetContext): string {
  return `bench.echo.${context.runId}`;
}

function bridgeTarget(name: string, description: string, broker: BrokerName, env: Record<string, string>): Target {
  return {
    name,
    description,
    broker,
    async start(context) {
      const urls = {
        rabbitmq: context.rabbitmqUrl,
        lavinmq: context.lavinmqUrl,
        'lavinmq-nodelay': context.lavinmqNodelayUrl,
      };
      const url = urls[broker];
      if (url === undefined) throw new Error(`${name} needs LAVINMQ_NODELAY_URL`);
      const worker = await startWorker(url, echoQueue(context));
      const bridge = await startBridge(context, url, join(context.logDir, `${name}.log`), env);
      const rpcUrl = `http://127.0.0.1:${bridge.port}/rpc/${echoQueue(context)}`;
      return httpTarget(name, rpcUrl, bridge.child, 'bytes', context, [bridge.child, worker]);
    },
  };
}

/** The sample worker (examples/echo-worker.ts, built), on a queue that goes when it goes. */
export async function startWorker(url: string, queue: string, prefetch = 512): Promise<Child> {
  const worker = startChild('node', ['dist/examples/echo-worker.js'], {
    AMQP_URL: url,
    RPC_QUEUE: queue,
    QUEUE_DURABLE: 'false',
    PREFETCH: String(prefetch),
  });
  await worker.waitForLine(/consuming/);
  return worker;
}

/**
 * The built bridge as `npm start` runs it. Its log goes to `logFile` through a file descriptor of its
 * own, as a deployment writing to a file would: were it piped to us, this process would have to read
 * every line while it also waits for the load client, and a pipe nobody drains blocks the bridge.
 */
export async function startBridge(
  context: TargetContext,
  url: string,
  logFile: string,
  env: Record<string, string>,
): Promise<{ child: Child; port: number }> {
  const port = await freePort();
  const child = startChild(
    'node',
    [...context.bridgeNodeFlags, 'dist/src/main.js'],
    { AMQP_URL: url, PORT: String(port), HOST: '127.0.0.1', ...env },
    { stdoutFile: logFile },
  );
  await waitReady(`http://127.0.0.1:${port}/readyz`);
  return { child, port };
}

function httpTarget(
  name: string,
  url: string,
  cpuOf: Child,
  bodyKind: BodyKind,
  context: TargetContext,
  processes: readonly Child[],
): RunningTarget {
  return {
    measure: (concurrency, bodyBytes, seconds, memory) =>
      runLoad({
        target: name,
        url,
        cpuPid: cpuOf.pid,
        concurrency,
        bodyBytes,
        bodyKind,
        warmupSeconds: context.warmupSeconds,
        seconds,
        memory: memory === true,
      }),
    // In the order given: the HTTP side first, so that no request is left without its worker.
    async stop() {
      for (const child of processes) await child.stop();
    },
  };
}

async function runRawAmqp(
  context: TargetContext,
  concurrency: number,
  bodyBytes: number,
  seconds: number,
  memory: boolean,
): Promise<RunResult> {
  const child = startChild('node', [...TSX, 'bench/targets/raw-amqp-rpc.ts'], {
    MEMORY: memory ? '1' : '0',
    AMQP_URL: context.rabbitmqUrl,
    QUEUE: echoQueue(context),
    CONCURRENCY: String(concurrency),
    WARMUP_SECONDS: String(context.warmupSeconds),
    SECONDS: String(seconds),
    BODY_BYTES: String(bodyBytes),
  });
  const line = await child.waitForLine(/"requests"/, (context.warmupSeconds + seconds + 20) * 1000);
  await child.stop();
  const raw = JSON.parse(line) as Pick<RunResult, 'requests' | 'seconds' | 'rps' | 'p50' | 'p99' | 'max'> &
    Pick<RunResult, 'cpuMsPerRequest' | 'peakRssMb' | 'rssRiseMb'>;
  return { ...raw, target: 'raw-amqp', concurrency, bodyBytes, errors: 0, non2xx: 0, client: 'self' };
}

async function deleteQueues(url: string, queues: readonly string[]): Promise<void> {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createChannel();
    for (const queue of queues) await channel.deleteQueue(queue);
  } finally {
    await connection.close();
  }
}

export async function waitReady(url: string, timeoutMs = 15_000): Promise<void> {
  for (let attempt = 0; attempt < timeoutMs / 100; attempt++) {
    const ready = await fetch(url).then(
      (res) => res.ok,
      () => false,
    );
    if (ready) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${url} never became ready`);
}
