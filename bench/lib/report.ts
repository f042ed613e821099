/**
 * Turns a saved run (bench/results/*.json) into the terminal table and the benchmark block of
 * docs/performance.md.
 * Everything shown is computed from the JSON alone, so that `npm run bench:render` can redo that
 * block from any saved run without measuring again.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { HostInfo } from './host-info.js';
import type { InFlightResult } from './in-flight.js';
import type { RunResult } from './stats.js';

/** What one `npm run bench` saves. */
export interface BenchRun {
  readonly date: string;
  readonly quick: boolean;
  readonly host: HostInfo;
  /** 1-minute load average when the run ended. */
  readonly loadAverageAtEnd: number;
  readonly seconds: number;
  readonly rounds: number;
  readonly warmupSeconds: number;
  /** Load on each target just started, before its rows (runs before it had none). */
  readonly jitWarmupSeconds?: number;
  /** Where the bridges' log lines went during the run. */
  readonly logging: string;
  readonly tookSeconds: number;
  /** Targets in the order they are listed, with what each is. */
  readonly targets: ReadonlyArray<{ readonly name: string; readonly description: string }>;
  /** How `results` combine the rounds; runs before medians were introduced took the mean. */
  readonly aggregate?: 'median' | 'mean';
  readonly results: readonly RunResult[];
  /** Every round of every row, as measured. */
  readonly roundResults?: readonly RunResult[];
  readonly inFlight?: InFlightResult;
}

export interface Ratio {
  readonly value: number;
  readonly goal: string;
  readonly met: boolean;
  /** The figures the ratio is made of, for a reader to check. */
  readonly from: string;
}

const README_START = '<!-- bench:start -->';
const README_END = '<!-- bench:end -->';
const CHART_TARGETS = ['express-echo', 'bridge', 'raw-amqp', 'minimal'];

export function computeRatios(run: BenchRun): Record<string, Ratio> {
  const find = (target: string, concurrency: number, bodyBytes = 100) =>
    run.results.find((r) => r.target === target && r.concurrency === concurrency && r.bodyBytes === bodyBytes);
  const ratios: Record<string, Ratio> = {};
  const bridge1 = find('bridge', 1);
  const minimal1 = find('minimal', 1);
  if (bridge1 && minimal1) {
    const p50 = bridge1.p50 / minimal1.p50;
    const p99 = bridge1.p99 / minimal1.p99;
    ratios.p50AtConcurrency1VsMinimal = {
      value: p50,
      goal: '<= 1.1',
      met: p50 <= 1.1,
      from: `bridge ${ms(bridge1.p50)} / minimal ${ms(minimal1.p50)}`,
    };
    ratios.p99AtConcurrency1VsMinimal = {
      value: p99,
      goal: '<= 1.25',
      met: p99 <= 1.25,
      from: `bridge ${ms(bridge1.p99)} / minimal ${ms(minimal1.p99)}`,
    };
  }
  const bridge64 = find('bridge', 64);
  const echo64 = find('express-echo', 64);
  const raw64 = find('raw-amqp', 64);
  if (bridge64 && echo64) {
    const throughput = bridge64.rps / echo64.rps;
    ratios.throughputAtConcurrency64VsEcho = {
      value: throughput,
      goal: '>= 0.85',
      met: throughput >= 0.85,
      from: `bridge ${bridge64.rps.toFixed(0)} / express-echo ${echo64.rps.toFixed(0)} req/s`,
    };
  }
  if (bridge64 && echo64 && raw64) {
    const halves = echo64.cpuMsPerRequest + raw64.cpuMsPerRequest;
    const cpu = bridge64.cpuMsPerRequest / halves;
    ratios.cpuAtConcurrency64VsHalves = {
      value: cpu,
      goal: '<= 1.0',
      met: cpu <= 1.0,
      from: `bridge ${us(bridge64.cpuMsPerRequest)} / (express-echo + raw-amqp) ${us(halves)} µs`,
    };
  }
  const inFlight = run.inFlight;
  if (inFlight) {
    ratios.inFlightAllAnswered = {
      value: inFlight.ok,
      goal: `${inFlight.requests}`,
      met: inFlight.ok === inFlight.requests,
      from: `answered correctly of ${inFlight.requests}`,
    };
    ratios.inFlightPeakRssMb = {
      value: inFlight.peakRssMb,
      goal: '<= 200',
      met: inFlight.peakRssMb <= 200,
      from: 'bridge peak RSS, MB',
    };
    ratios.inFlightPendingAfter = {
      value: inFlight.inFlightAfter,
      goal: '0',
      met: inFlight.inFlightAfter === 0,
      from: 'rpc_in_flight after',
    };
  }
  // Big bodies: the bridge's CPU per request over the express echo's, and the floor's (minimal) beside it.
  for (const [name, bodyBytes, goal] of [
    ['cpuAt10KiBVsEcho', 10 * 1024, 1.2],
    ['cpuAt1MiBVsEcho', 1024 * 1024, 1.5],
  ] as const) {
    const bridge = find('bridge', 16, bodyBytes);
    const echo = find('express-echo', 16, bodyBytes);
    if (bridge === undefined || echo === undefined || echo.cpuMsPerRequest === 0) continue;
    const value = bridge.cpuMsPerRequest / echo.cpuMsPerRequest;
    const minimal = find('minimal', 16, bodyBytes);
    const floor =
      minimal === undefined
        ? ''
        : `; the floor: minimal ${us(minimal.cpuMsPerRequest)} µs, ${(minimal.cpuMsPerRequest / echo.cpuMsPerRequest).toFixed(2)} ×`;
    ratios[name] = {
      value,
      goal: `<= ${goal}`,
      met: value <= goal,
      from: `bridge ${us(bridge.cpuMsPerRequest)} / express-echo ${us(echo.cpuMsPerRequest)} µs, c=16${floor}`,
    };
  }
  const bridgeMiB = find('bridge', 16, 1024 * 1024);
  if (bridgeMiB) {
    const failed = bridgeMiB.errors + bridgeMiB.non2xx;
    ratios.oneMiBErrors = { value: failed, goal: '0', met: failed === 0, from: 'errors + non-2xx, 1 MiB bodies' };
  }
  return ratios;
}

export function buildReport(run: BenchRun): { table: string; markdown: string } {
  const order = run.targets.map((target) => target.name);
  const rows = [...run.results].sort(
    (a, b) =>
      Number(a.bodyBytes !== 100) - Number(b.bodyBytes !== 100) ||
      a.bodyBytes - b.bodyBytes ||
      a.concurrency - b.concurrency ||
      order.indexOf(a.target) - order.indexOf(b.target),
  );
  const table = markdownTable(
    [
      'target',
      'client',
      'concurrency',
      'body',
      'req/s',
      'p50 ms',
      'p99 ms',
      'max ms',
      'errors',
      'non-2xx',
      'CPU µs/req',
      'peak RSS MB (rise)',
    ],
    rows.map((r) => [
      r.target,
      clientLabel(r),
      String(r.concurrency),
      formatBytes(r.bodyBytes),
      r.rps.toFixed(0),
      r.p50.toFixed(2),
      r.p99.toFixed(2),
      r.max.toFixed(1),
      String(r.errors),
      String(r.non2xx),
      us(r.cpuMsPerRequest),
      r.peakRssMb === undefined ? '' : `${r.peakRssMb.toFixed(0)} (+${(r.rssRiseMb ?? 0).toFixed(0)})`,
    ]),
    (column) => column >= 2,
  );
  const ratioTable = markdownTable(
    ['target ratio', 'value', 'goal', '', 'from'],
    Object.entries(computeRatios(run)).map(([name, ratio]) => [
      name,
      String(Number(ratio.value.toFixed(3))),
      ratio.goal,
      ratio.met ? 'met' : '**missed**',
      ratio.from,
    ]),
    (column) => column === 1 || column === 2,
  );
  const inFlight = run.inFlight;
  const inFlightLine = !inFlight
    ? ''
    : `${inFlight.requests} requests in flight at once (worker answers after ${inFlight.delayMs / 1000} s): ${inFlight.ok} answered correctly, ` +
      `statuses ${JSON.stringify(inFlight.byStatus)}, all done in ${inFlight.seconds.toFixed(1)} s, ` +
      `peak rpc_in_flight ${inFlight.peakInFlight}, bridge peak RSS ${inFlight.peakRssMb.toFixed(0)} MB, ` +
      `peak heap ${inFlight.peakHeapMb.toFixed(0)} MB, rpc_in_flight after: ${inFlight.inFlightAfter}.`;
  const markdown = [
    measuredLine(run),
    '',
    run.targets.map((target) => `- \`${target.name}\`: ${target.description}`).join('\n'),
    '',
    table,
    '',
    ratioTable,
    ...(inFlightLine ? ['', inFlightLine] : []),
    '',
    chart(run),
  ].join('\n');
  return { table: [measuredLine(run), '', table, '', ratioTable, '', inFlightLine].join('\n'), markdown };
}

function measuredLine(run: BenchRun): string {
  const { host } = run;
  const brokers = Object.entries(host.brokers)
    .map(([name, version]) => (name === 'lavinmq-nodelay' ? `${version} (the one with tcp_nodelay on)` : version))
    .join(', ');
  const busy =
    Math.max(host.loadAverageAtStart, run.loadAverageAtEnd) > host.cores
      ? " — above the core count (a one-minute average: the build just before the run and the bench's own processes count in it, as would any other work), so the figures may be noisy"
      : '';
  return (
    `Measured ${run.date.slice(0, 16).replace('T', ' ')} UTC${run.quick ? ' (a --quick smoke run)' : ''} on ` +
    `${host.cpuModel}, ${host.cores} cores, Linux ${host.kernel}, Node ${host.node}, ${brokers}. ` +
    `${run.rounds} interleaved round${run.rounds === 1 ? '' : 's'} of ${run.seconds} s per row (figures: the ` +
    `${run.aggregate ?? 'mean'} of the rounds), each after ` +
    `${run.warmupSeconds} s of warm-up; every target started for its rows and stopped after them` +
    (run.jitWarmupSeconds
      ? `, and loaded for ${run.jitWarmupSeconds} s at concurrency 32 before its first row (V8 compiles its hot paths meanwhile); `
      : '; ') +
    `100-byte bodies unless stated; whole run ${Math.round(run.tookSeconds)} s. Load average ` +
    `${host.loadAverageAtStart.toFixed(1)} at the start, ${run.loadAverageAtEnd.toFixed(1)} at the end${busy}. ` +
    `Client: \`serial\` is one keep-alive connection, one request after another, from a process of its own ` +
    '(as a sidecar calls); `autocannon` runs in a process of its own; `self` is the raw amqplib client ' +
    `measuring itself. CPU is the process under test's (the bridge's, micromq's gateway's; raw-amqp's own). ` +
    `Bridge logs: ${run.logging}.`
  );
}

function chart(run: BenchRun): string {
  const concurrencies = [...new Set(run.results.filter((r) => r.bodyBytes === 100).map((r) => r.concurrency))].sort(
    (a, b) => a - b,
  );
  const shown = CHART_TARGETS.filter((target) => run.results.some((r) => r.target === target));
  const p50 = (target: string, concurrency: number) =>
    run.results.find((r) => r.target === target && r.concurrency === concurrency && r.bodyBytes === 100)?.p50 ?? 0;
  return [
    '```mermaid',
    'xychart-beta',
    `  title "p50 latency (ms) by concurrency: ${shown.join(', ')} (lines in that order)"`,
    `  x-axis "concurrency" [${concurrencies.join(', ')}]`,
    '  y-axis "p50 ms"',
    ...shown.map((target) => `  line [${concurrencies.map((c) => p50(target, c).toFixed(2)).join(', ')}]`),
    '```',
  ].join('\n');
}

function clientLabel(result: RunResult): string {
  const client = result.client ?? 'autocannon (in the harness)';
  if (result.connections === undefined || result.connections === 1) return client;
  return `${client} (${result.connections} connections)`;
}

/** A Markdown table padded so that it also reads in a terminal. */
function markdownTable(header: string[], rows: string[][], rightAligned: (column: number) => boolean): string {
  const widths = header.map((cell, column) =>
    Math.max(3, cell.length, ...rows.map((row) => (row[column] ?? '').length)),
  );
  const line = (cells: string[]) =>
    `| ${cells.map((cell, column) => (rightAligned(column) ? cell.padStart(widths[column] ?? 0) : cell.padEnd(widths[column] ?? 0))).join(' | ')} |`;
  const rule = `| ${widths.map((width, column) => (rightAligned(column) ? `${'-'.repeat(width - 1)}:` : '-'.repeat(width))).join(' | ')} |`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

function ms(value: number): string {
  return `${value.toFixed(2)} ms`;
}

function us(msPerRequest: number): string {
  return (msPerRequest * 1000).toFixed(0);
}

function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024) return `${bytes / 1024 / 1024} MiB`;
  if (bytes >= 1024) return `${bytes / 1024} KiB`;
  return `${bytes} B`;
}

/** Rewrites docs/performance.md (or `path`) between the bench markers; false if the markers are missing. */
export function updateReadme(markdown: string, path = 'docs/performance.md'): boolean {
  const readme = readFileSync(path, 'utf8');
  const from = readme.indexOf(README_START);
  const to = readme.indexOf(README_END);
  if (from === -1 || to === -1) return false;
  writeFileSync(path, `${readme.slice(0, from + README_START.length)}\n${markdown}\n${readme.slice(to)}`);
  return true;
}
