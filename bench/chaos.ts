/**
 * The chaos soak (`npm run soak -- --chaos`): the built bridge under a steady mixed load while faults
 * are injected on a schedule, on a broker the soak starts for itself and removes afterwards (never
 * the shared one). The bridge reaches the broker through a TCP proxy (so that its path alone can go
 * silent) and runs with its default settings; the echo worker talks to the broker directly and is
 * restarted, like a supervisor would, whenever it exits.
 *
 * Faults, in turn: the broker closes every connection; the worker is killed (SIGKILL) and restarted
 * 8 s later; the broker is stopped for 15 s and started; the proxy goes silent for 20 s (a network
 * partition: nothing is closed) and heals. Every request is judged (see ChaosLoad); the run fails on an
 * undocumented answer, a request that hangs, an answer the bridge gave more than the margin (1 s) after
 * the request's timeout (its own time, from its access log) or that reached the caller more than twice
 * the margin after it (the caller's side adds connecting and waiting for a CPU on a busy machine), a
 * steady window answered otherwise than a healthy bridge answers, a fault the bridge does not recover
 * from within 90 s, a silent partition not noticed within 15 s, anything in flight at the end, or heap or
 * RSS growing more than 10 % from the minute after warm-up to the last.
 *
 * npm run soak -- --chaos [--broker rabbitmq|lavinmq] [--minutes 10] [--rps 100] [--margin-ms 1000]
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { startTcpProxy } from '../test/helpers/tcp-proxy.js';
import { type ChaosBroker, type ChaosBrokerProduct, startChaosBroker } from './lib/chaos-broker.js';
import { ChaosLoad, requestMix } from './lib/chaos-load.js';
import { startLogged, WorkerSupervisor } from './lib/chaos-processes.js';
import {
  byLabel,
  compactStatuses,
  judgeMemory,
  type MemorySample,
  markdownTable,
  memoryLine,
  problemSummary,
  stallLine,
  statusTable,
} from './lib/chaos-report.js';
import { freePort, npmStartFlags } from './lib/processes.js';

export interface ChaosOptions {
  readonly broker: ChaosBrokerProduct;
  readonly minutes: number;
  /** Requests a second, whatever the answers (an open loop). */
  readonly rps: number;
  /** How far past its timeout the bridge may answer (the caller: twice this) before the soak fails. */
  readonly marginMs: number;
  /** The soak broker's AMQP port (default: 5675 for RabbitMQ, 5722 for LavinMQ). */
  readonly port?: number;
}

type FaultKind = 'connections closed' | 'worker killed' | 'broker stopped' | 'silent partition';
const FAULTS: readonly FaultKind[] = ['connections closed', 'worker killed', 'broker stopped', 'silent partition'];
/** How long each fault lasts (for connections closed: how long its window is watched). */
const HOLD_S: Record<FaultKind, number> = {
  'connections closed': 3,
  'worker killed': 8,
  'broker stopped': 15,
  'silent partition': 20,
};
/** One round of the four faults wants about this long, recoveries included. */
const ROUND_S = 150;
const RECOVERY_MIN_S = 5;
/** The load rises to its rate over the first seconds of the warm-up. */
const RAMP_S = 10;
const RECOVERY_MAX_S = 90;
/** The bound docs/configuration.md gives (AMQP_HEARTBEAT_SECONDS) for noticing a silent broker with the default AMQP_HEARTBEAT_SECONDS (5). */
const SILENT_DETECTION_LIMIT_S = 15;
const GROWTH_LIMIT = 0.1;
const SAMPLE_EVERY_MS = 2_000;
/** Bridge log lines kept for the timeline: everything but the access log (one line per request). */
const ACCESS_LOG_LINE = /"msg":"request completed"/;

export function parseChaosOptions(argv: readonly string[]): ChaosOptions {
  const known = ['chaos', 'broker', 'minutes', 'rps', 'margin-ms', 'port'];
  for (const arg of argv) {
    const name = /^--([^=]+)/.exec(arg)?.[1];
    if (name !== undefined && !known.includes(name))
      throw new Error(`unknown option ${arg} (known: --${known.join(', --')})`);
  }
  const value = (name: string): string | undefined => {
    const at = argv.indexOf(`--${name}`);
    if (at !== -1) return argv[at + 1];
    return argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3);
  };
  const number = (name: string, fallback: number, min: number, max: number): number => {
    const text = value(name);
    const parsed = text === undefined ? fallback : Number(text);
    if (!Number.isFinite(parsed) || parsed < min || parsed > max) {
      throw new Error(`--${name} must be a number from ${min} to ${max}, got ${JSON.stringify(text)}`);
    }
    return parsed;
  };
  const broker = value('broker') ?? 'rabbitmq';
  if (broker !== 'rabbitmq' && broker !== 'lavinmq')
    throw new Error(`--broker must be rabbitmq or lavinmq, got ${broker}`);
  const port = value('port');
  return {
    broker,
    minutes: number('minutes', 10, 2, 120),
    rps: number('rps', 100, 1, 500),
    marginMs: number('margin-ms', 1_000, 0, 60_000),
    ...(port === undefined ? {} : { port: number('port', 0, 1, 65_535) }),
  };
}

interface Plan {
  readonly totalS: number;
  readonly warmUpS: number;
  /** The minute after warm-up whose memory the last minute is compared with; none on short runs. */
  readonly baseline: { fromS: number; toS: number } | undefined;
  readonly finalS: number;
  readonly faults: ReadonlyArray<{ kind: FaultKind; atS: number }>;
}

/** Warm-up, a steady minute, faults spread evenly (whole rounds of the four), a steady end. */
export function planRun(minutes: number): Plan {
  const totalS = minutes * 60;
  const long = totalS >= 300;
  const warmUpS = long ? 60 : 15;
  const baseline = long ? { fromS: warmUpS, toS: warmUpS + 60 } : undefined;
  const finalS = long ? 90 : 15;
  const firstS = baseline?.toS ?? warmUpS;
  const region = totalS - firstS - finalS;
  const count = FAULTS.length * Math.max(1, Math.floor(region / ROUND_S));
  const faults = Array.from({ length: count }, (_, i) => ({
    kind: FAULTS[i % FAULTS.length] as FaultKind,
    atS: Math.round(firstS + (i * region) / count),
  }));
  return { totalS, warmUpS, baseline, finalS, faults };
}

interface BridgeEvent {
  readonly tS: number;
  readonly msg: string;
  readonly detail?: string;
}

interface FaultRecord {
  readonly n: number;
  readonly kind: FaultKind;
  readonly plannedS: number;
  readonly atS: number;
  readonly liftedS: number;
  /** From the fault's lifting until the bridge is ready and the worker consumes; undefined: never. */
  readonly readyAfterS: number | undefined;
  /** Silent partition only: from silence until the bridge logged `amqp disconnected`. */
  readonly detectedAfterS?: number | undefined;
  readonly bridgeDisconnects: number;
  readonly workerRestarts: number;
  readonly faultAnswers: Record<string, number>;
  readonly recoveryAnswers: Record<string, number>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));

export async function runChaosSoak(options: ChaosOptions): Promise<number> {
  const plan = planRun(options.minutes);
  const id = randomBytes(4).toString('hex');
  const logDir = await mkdtemp(join(tmpdir(), 'chaos-soak-'));
  const queues = { echo: `chaos.echo.${id}`, noConsumer: `chaos.no-consumer.${id}`, unroutable: `chaos.nobody.${id}` };
  const started = new Date();
  const failures: string[] = [];
  const cleanups: Array<() => Promise<unknown>> = [];
  const cleanUp = async () => {
    for (const step of cleanups.splice(0).reverse()) await step().catch(() => undefined);
  };
  const interrupted = () => {
    console.log('interrupted: stopping the bridge, the worker and the soak broker');
    void cleanUp().then(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);

  try {
    const broker: ChaosBroker = await startChaosBroker(options.broker, options.port);
    cleanups.push(() => broker.remove());
    const brokerPort = Number(new URL(broker.url).port);
    // Durable: the queue nobody consumes outlives a broker restart, as the worker's own queue does.
    const setup = await amqp.connect(broker.url);
    await (await setup.createChannel()).assertQueue(queues.noConsumer, { durable: true });
    await setup.close();

    const proxy = await startTcpProxy(brokerPort);
    cleanups.push(() => proxy.close());
    const worker = WorkerSupervisor.withLogFile(
      { AMQP_URL: broker.url, RPC_QUEUE: queues.echo },
      join(logDir, 'worker.log'),
    );
    cleanups.push(() => worker.stop());
    await worker.start();

    const port = await freePort();
    const events: BridgeEvent[] = [];
    const accessLogTime = new RegExp(`"id":"chaos-${id}-(\\d+)".*"responseTime":([\\d.]+)`);
    const eventLog = createWriteStream(join(logDir, 'bridge-events.log'));
    let load: ChaosLoad | undefined;
    const bridge = startLogged(
      'node',
      [...npmStartFlags('.'), 'dist/src/main.js'],
      { AMQP_URL: proxy.via(broker.url), PORT: String(port), HOST: '127.0.0.1' },
      (line, stream) => {
        if (stream === 'stdout' && ACCESS_LOG_LINE.test(line)) {
          const timed = load !== undefined ? accessLogTime.exec(line) : null;
          if (timed !== null) load?.noteBridgeTime(Number(timed[1]), Number(timed[2]));
          return;
        }
        eventLog.write(`${line}\n`);
        try {
          const parsed = JSON.parse(line) as { msg?: string; reason?: string; err?: string; time?: number };
          // The line's own time: log lines are written in batches, up to 250 ms after the event.
          const at =
            load === undefined || load.startedAtEpochMs === 0 || parsed.time === undefined
              ? undefined
              : parsed.time - load.startedAtEpochMs;
          events.push({
            tS: at === undefined ? (load?.nowS ?? 0) : at / 1000,
            msg: String(parsed.msg),
            ...((parsed.reason ?? parsed.err) ? { detail: String(parsed.reason ?? parsed.err) } : {}),
          });
        } catch {
          events.push({ tS: load?.nowS ?? 0, msg: `${stream}: ${line}` });
        }
      },
    );
    cleanups.push(() => bridge.stop());
    await bridge.waitForLine(/"msg":"listening"/);
    const base = `http://127.0.0.1:${port}`;
    const ready = async () =>
      (await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(1_000) }).catch(() => undefined))?.status === 200;
    for (const deadline = Date.now() + 30_000; !(await ready()); await sleep(200)) {
      if (Date.now() > deadline) throw new Error('the bridge did not become ready within 30 s');
    }

    console.log(
      `chaos soak on ${broker.version} at ${broker.url.replace(/\/\/.*@/, '//')} (the soak's own broker), ` +
        `bridge ${base} via a TCP proxy on ${proxy.port}; ${options.rps} req/s for ${options.minutes} min, ` +
        `the bridge may answer ${options.marginMs} ms past a timeout (the caller sees it within twice that); logs in ${logDir}`,
    );
    console.log(`faults at: ${plan.faults.map((fault) => `${fault.atS} s ${fault.kind}`).join(', ')}`);

    load = new ChaosLoad(port, requestMix(queues), options.rps, options.marginMs, id);
    const samples: MemorySample[] = [];
    const soakLoop = monitorEventLoopDelay({ resolution: 10 });
    soakLoop.enable();
    const sampler = setInterval(() => {
      const tS = load?.nowS ?? 0;
      const soakLoopMaxMs = soakLoop.max / 1e6;
      soakLoop.reset();
      void Promise.all([
        readFile(`/proc/${bridge.pid}/status`, 'utf8'),
        fetch(`${base}/metrics`, { signal: AbortSignal.timeout(2_000) }).then((res) => res.text()),
      ]).then(
        ([status, metrics]) => {
          const metric = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1] ?? Number.NaN);
          samples.push({
            tS,
            rssBytes: Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024,
            heapUsedBytes: metric('nodejs_heap_size_used_bytes'),
            inFlight: metric('rpc_in_flight'),
            // prom-client resets it at every scrape: the longest stall since the last sample.
            bridgeLoopMaxMs: metric('nodejs_eventloop_lag_max_seconds') * 1000,
            soakLoopMaxMs,
            loadAverage: loadavg()[0] ?? 0,
          });
        },
        () => undefined,
      );
    }, SAMPLE_EVERY_MS);
    cleanups.push(async () => {
      clearInterval(sampler);
      soakLoop.disable();
    });

    let progressAt = 0;
    const progress = (what: string) => {
      const last = samples[samples.length - 1];
      console.log(
        `t=${load?.nowS.toFixed(0).padStart(4)} s  ${what.padEnd(34)} sent ${load?.sent}, in flight ${load?.outstanding}, ` +
          `failed ${load?.failureCount}` +
          (last
            ? `; bridge RSS ${(last.rssBytes / 1e6).toFixed(1)} MB, heap ${(last.heapUsedBytes / 1e6).toFixed(1)} MB`
            : ''),
      );
    };
    /** Steady load until `untilS`, with a progress line every 30 s. */
    const steadyUntil = async (untilS: number) => {
      while (load !== undefined && load.nowS < untilS) {
        await sleep(Math.min(1_000, (untilS - load.nowS) * 1000));
        if (load.nowS - progressAt >= 30) {
          progressAt = load.nowS;
          progress(load.windowLabel);
        }
      }
    };

    load.start(RAMP_S);
    progress('warm-up');
    await steadyUntil(plan.warmUpS);
    load.enter('steady');
    progress('steady');

    const faults: FaultRecord[] = [];
    for (const [i, planned] of plan.faults.entries()) {
      await steadyUntil(planned.atS);
      const disconnectsBefore = events.filter((event) => event.msg === 'amqp disconnected').length;
      const restartsBefore = worker.restarts;
      load.enter(planned.kind);
      const faultWindow = load.windows[load.windows.length - 1];
      const atS = load.nowS;
      progress(`${planned.kind} #${i + 1}`);
      switch (planned.kind) {
        case 'connections closed':
          await broker.closeAllConnections('chaos soak: connections closed');
          await sleep(HOLD_S[planned.kind] * 1000);
          break;
        case 'worker killed':
          await worker.kill();
          await sleep(HOLD_S[planned.kind] * 1000);
          worker.resume();
          break;
        case 'broker stopped':
          await broker.stop();
          await sleep(HOLD_S[planned.kind] * 1000);
          await broker.start();
          break;
        case 'silent partition':
          proxy.silence();
          await sleep(HOLD_S[planned.kind] * 1000);
          proxy.heal();
          break;
      }
      const liftedS = load.nowS;
      load.enter('recovery');
      const recoveryWindow = load.windows[load.windows.length - 1];
      progress(`recovery after ${planned.kind}`);
      let readyAfterS: number | undefined;
      while (load.nowS - liftedS < RECOVERY_MAX_S) {
        if (readyAfterS === undefined && worker.consuming && (await ready())) readyAfterS = load.nowS - liftedS;
        if (readyAfterS !== undefined && load.nowS - liftedS >= RECOVERY_MIN_S) break;
        await sleep(250);
      }
      if (readyAfterS === undefined)
        failures.push(`not ready again within ${RECOVERY_MAX_S} s after ${planned.kind} #${i + 1}`);
      const detection = events.find((event) => event.msg === 'amqp disconnected' && event.tS >= atS);
      const record: FaultRecord = {
        n: i + 1,
        kind: planned.kind,
        plannedS: planned.atS,
        atS,
        liftedS,
        readyAfterS,
        ...(planned.kind === 'silent partition' ? { detectedAfterS: detection ? detection.tS - atS : undefined } : {}),
        bridgeDisconnects: events.filter((event) => event.msg === 'amqp disconnected').length - disconnectsBefore,
        workerRestarts: worker.restarts - restartsBefore,
        faultAnswers: faultWindow?.statuses ?? {},
        recoveryAnswers: recoveryWindow?.statuses ?? {},
      };
      faults.push(record);
      if (planned.kind === 'silent partition') {
        const detected = record.detectedAfterS;
        if (detected === undefined || detected > SILENT_DETECTION_LIMIT_S + 1) {
          failures.push(
            `silent partition #${i + 1} ${detected === undefined ? 'never noticed' : `noticed after ${detected.toFixed(1)} s`} (documented: within ${SILENT_DETECTION_LIMIT_S} s)`,
          );
        }
      }
      load.enter('steady');
      progress('steady');
    }
    const endS = Math.max(plan.totalS, load.nowS + plan.finalS);
    await steadyUntil(endS);
    progress('load stopped; waiting for the last answers');
    await load.stop();
    const loadEndS = load.nowS;
    clearInterval(sampler);

    const metrics = await (await fetch(`${base}/metrics`)).text();
    const inFlightAtEnd = Number(/^rpc_in_flight (\S+)$/m.exec(metrics)?.[1] ?? Number.NaN);
    const lateReplies = Number(/^rpc_late_replies_total (\S+)$/m.exec(metrics)?.[1] ?? Number.NaN);
    const readyAtEnd = await ready();
    const bridgeExit = await bridge.stop();

    // Judging.
    if (load.failureCount > 0) failures.push(`${load.failureCount} requests failed (the first are listed below)`);
    if (load.answered < load.sent) failures.push(`${load.sent - load.answered} requests got no HTTP status`);
    if (inFlightAtEnd !== 0) failures.push(`rpc_in_flight is ${inFlightAtEnd} at the end, not 0`);
    if (!readyAtEnd) failures.push('the bridge was not ready at the end');
    // In a steady window a healthy bridge answers every kind as it should, except requests still in
    // flight when the next fault began (they belong to the window they were sent in).
    const windowEnd = new Map(load.windows.map((window) => [`${window.label} #${window.index}`, window.endS]));
    const unhealthyAnswers = load
      .withBridgeTimes(load.unhealthySteady)
      .filter(
        (answer) =>
          answer.sentAtS + (answer.timeoutMs + 2 * options.marginMs) / 1000 < (windowEnd.get(answer.window) ?? 0),
      );
    if (unhealthyAnswers.length > 0) {
      const where = [...new Set(unhealthyAnswers.map((answer) => answer.window))].join(', ');
      failures.push(`${unhealthyAnswers.length} answers in steady windows other than a healthy bridge's (${where})`);
    }
    const bridgeTiming = load.bridgeLate();
    if (bridgeTiming.late.length > 0) {
      failures.push(
        `the bridge answered ${bridgeTiming.late.length} requests more than ${options.marginMs} ms after their timeout (its own time)`,
      );
    }
    const memory = judgeMemory(samples, plan.baseline, loadEndS);
    if (memory.judged && ((memory.rssGrowth ?? 0) > GROWTH_LIMIT || (memory.heapGrowth ?? 0) > GROWTH_LIMIT)) {
      failures.push(`memory grew more than ${GROWTH_LIMIT * 100} % after warm-up`);
    }
    const verdict = failures.length === 0 ? 'PASS' : 'FAIL';

    // The report.
    const faultRows = faults.map((fault) => [
      String(fault.n),
      fault.kind,
      fault.atS.toFixed(0),
      (fault.liftedS - fault.atS).toFixed(1),
      fault.readyAfterS === undefined ? 'never' : fault.readyAfterS.toFixed(1),
      fault.detectedAfterS === undefined ? '' : fault.detectedAfterS.toFixed(1),
      String(fault.bridgeDisconnects),
      String(fault.workerRestarts),
      compactStatuses(fault.faultAnswers),
      compactStatuses(fault.recoveryAnswers),
    ]);
    const report = [
      '',
      `Chaos soak, ${broker.version}, ${options.rps} req/s, ${(loadEndS / 60).toFixed(1)} min, ${load.sent} requests ` +
        `(${started.toISOString()}): statuses by the window each request was sent in`,
      '',
      statusTable(load.windows),
      '',
      `problem answers: ${problemSummary(load.windows)}`,
      '',
      markdownTable(
        [
          '#',
          'fault',
          'at s',
          'held s',
          'ready after s',
          'noticed after s',
          'bridge disconnects',
          'worker restarts',
          'answers during',
          'answers in recovery',
        ],
        faultRows,
        (column) => column !== 1 && column < 8,
      ),
      '',
      `memory (bridge, means of ${SAMPLE_EVERY_MS / 1000}-s samples):`,
      memoryLine(memory, GROWTH_LIMIT),
      stallLine(samples),
      `timing: the bridge's own time (access log) known for ${bridgeTiming.logged} requests, ${bridgeTiming.late.length} ` +
        `of them over timeout + ${options.marginMs} ms; at the caller, the most past a timeout was ` +
        `${Math.max(...load.windows.map((window) => window.worstOverrunMs)).toFixed(0)} ms (limit ${2 * options.marginMs} ms)`,
      `at the end: rpc_in_flight ${inFlightAtEnd}, ${load.answered} of ${load.sent} requests answered with a status, ` +
        `late replies dropped ${lateReplies}, bridge ready ${readyAtEnd}, bridge exit on SIGTERM: ${bridgeExit}; ` +
        `worker restarts ${worker.restarts}`,
      '',
      `${verdict}${failures.length > 0 ? `: ${failures.join('; ')}` : ''}`,
    ];
    const failedRequests = load.withBridgeTimes(load.failures);
    if (bridgeTiming.late.length > 0) {
      report.push(
        '',
        'first requests the bridge answered late (its own time):',
        ...bridgeTiming.late.slice(0, 10).map((late) => `  ${JSON.stringify(late)}`),
      );
    }
    if (unhealthyAnswers.length > 0) {
      report.push(
        '',
        'first answers in steady windows other than a healthy bridge gives:',
        ...unhealthyAnswers.slice(0, 10).map((answer) => `  ${JSON.stringify(answer)}`),
      );
    }
    if (failedRequests.length > 0) {
      report.push(
        '',
        'first failed requests:',
        ...failedRequests.slice(0, 20).map((failure) => `  ${JSON.stringify(failure)}`),
      );
    }
    console.log(report.join('\n'));

    const resultsDir = join(dirname(fileURLToPath(import.meta.url)), 'results');
    await mkdir(resultsDir, { recursive: true });
    const file = join(resultsDir, `chaos-${options.broker}-${started.toISOString().replace(/[:.]/g, '-')}.json`);
    await writeFile(
      file,
      `${JSON.stringify(
        {
          verdict,
          failures,
          started: started.toISOString(),
          broker: { product: options.broker, version: broker.version, url: broker.url.replace(/\/\/.*@/, '//') },
          node: process.version,
          source: sourceState(),
          options,
          plan,
          requestMix: requestMix(queues).map(({ name, timeoutMs, healthy }) => ({ name, timeoutMs, healthy })),
          totals: { sent: load.sent, answered: load.answered, failed: load.failureCount, loadSeconds: loadEndS },
          end: { inFlight: inFlightAtEnd, lateReplies, ready: readyAtEnd, bridgeExit, workerRestarts: worker.restarts },
          table: statusTable(load.windows),
          windowsByLabel: byLabel(load.windows),
          windows: load.windows,
          faults,
          memory,
          memorySamples: samples,
          bridgeEvents: events,
          failedRequests,
          bridgeLate: bridgeTiming.late.slice(0, 100),
          bridgeTimesLogged: bridgeTiming.logged,
          unhealthyInSteadyWindows: unhealthyAnswers,
        },
        null,
        2,
      )}\n`,
    );
    console.log(`results: ${relative(process.cwd(), file)}`);
    return verdict === 'PASS' ? 0 : 1;
  } finally {
    await cleanUp();
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
  }
}

/** The commit the bridge was built from, and the files of src/ and examples/ changed since (a run is only citable with them). */
function sourceState(): { commit: string; changed: string[] } {
  const git = (...args: string[]) => execFileSync('git', args, { encoding: 'utf8' }).trim();
  try {
    return {
      commit: git('rev-parse', 'HEAD'),
      changed: git('status', '--porcelain', '--', 'src', 'examples').split('\n').filter(Boolean),
    };
  } catch {
    return { commit: 'unknown', changed: [] };
  }
}
