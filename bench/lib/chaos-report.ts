import { emptyTally, type WindowTally } from './chaos-load.js';

/** Rows of the main table, in this order; windows with other labels follow. */
export const WINDOW_ORDER = [
  'warm-up',
  'steady',
  'connections closed',
  'worker killed',
  'broker stopped',
  'silent partition',
  'recovery',
] as const;

/** Columns always shown, so that tables of different runs line up; others seen are added after. */
const STATUS_COLUMNS = ['200', '201', '422', '404', '502', '503', '504'];

export interface MemorySample {
  /** Seconds since the start of the load. */
  readonly tS: number;
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  readonly inFlight: number;
  /** Longest event-loop stall since the last sample, in the bridge and in the soak (which measures). */
  readonly bridgeLoopMaxMs: number;
  readonly soakLoopMaxMs: number;
  /** The machine's 1-minute load average (2 cores: above 2, processes wait for a CPU). */
  readonly loadAverage: number;
}

export interface MemoryVerdict {
  readonly judged: boolean;
  readonly why?: string;
  readonly baseline?: { fromS: number; toS: number; rssMb: number; heapMb: number; samples: number };
  readonly last?: { fromS: number; toS: number; rssMb: number; heapMb: number; samples: number };
  readonly rssGrowth?: number;
  readonly heapGrowth?: number;
  readonly peakRssMb: number;
  readonly peakHeapMb: number;
}

/** Sums the windows that share a label. */
export function byLabel(windows: readonly WindowTally[]): WindowTally[] {
  const rows = new Map<string, WindowTally>();
  for (const window of windows) {
    const row = rows.get(window.label) ?? emptyTally(window.label, 0, window.startS, window.endS);
    row.index += 1;
    row.endS = window.endS;
    row.requests += window.requests;
    row.unhealthy += window.unhealthy;
    row.failures += window.failures;
    row.longestMs = Math.max(row.longestMs, window.longestMs);
    row.worstOverrunMs = Math.max(row.worstOverrunMs, window.worstOverrunMs);
    for (const [status, count] of Object.entries(window.statuses))
      row.statuses[status] = (row.statuses[status] ?? 0) + count;
    for (const [problem, count] of Object.entries(window.problems))
      row.problems[problem] = (row.problems[problem] ?? 0) + count;
    for (const [kind, statuses] of Object.entries(window.byKind)) {
      const ofKind = row.byKind[kind] ?? {};
      for (const [status, count] of Object.entries(statuses)) ofKind[status] = (ofKind[status] ?? 0) + count;
      row.byKind[kind] = ofKind;
    }
    rows.set(window.label, row);
  }
  const rank = (label: string) => {
    const at = (WINDOW_ORDER as readonly string[]).indexOf(label);
    return at === -1 ? WINDOW_ORDER.length : at;
  };
  return [...rows.values()].sort((a, b) => rank(a.label) - rank(b.label));
}

/** A table in Markdown, its columns padded so that it also reads in a terminal. */
export function markdownTable(header: string[], rows: string[][], rightAligned: (column: number) => boolean): string {
  const widths = header.map((cell, column) => Math.max(cell.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]) =>
    `| ${cells
      .map((cell, column) =>
        rightAligned(column) ? cell.padStart(widths[column] ?? 0) : cell.padEnd(widths[column] ?? 0),
      )
      .join(' | ')} |`;
  const rule = `| ${widths.map((width, column) => (rightAligned(column) ? `${'-'.repeat(width - 1)}:` : '-'.repeat(width))).join(' | ')} |`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/** Statuses per window: one row per kind of window (all its occurrences summed), then the total. */
export function statusTable(windows: readonly WindowTally[]): string {
  const rows = byLabel(windows);
  const seen = new Set(rows.flatMap((row) => Object.keys(row.statuses)));
  const columns = [...STATUS_COLUMNS, ...[...seen].filter((status) => !STATUS_COLUMNS.includes(status)).sort()];
  const total = byLabel(windows.map((window) => ({ ...window, label: 'total' })))[0];
  const cells = (row: WindowTally, name: string) => [
    name,
    String(row.index),
    String(row.requests),
    ...columns.map((status) => String(row.statuses[status] ?? 0)),
    String(row.failures),
    row.longestMs.toFixed(0),
    row.worstOverrunMs > 0 ? `+${row.worstOverrunMs.toFixed(0)}` : 'none',
  ];
  return markdownTable(
    ['window', 'times', 'requests', ...columns, 'failed', 'longest ms', 'most past timeout ms'],
    [...rows.map((row) => cells(row, row.label)), ...(total ? [cells(total, '**total**')] : [])],
    (column) => column > 0,
  );
}

/** "503 broker-unavailable 812, 504 timeout 95" over all windows. */
export function problemSummary(windows: readonly WindowTally[]): string {
  const counts: Record<string, number> = {};
  for (const window of windows) {
    for (const [problem, count] of Object.entries(window.problems)) counts[problem] = (counts[problem] ?? 0) + count;
  }
  return Object.entries(counts)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([problem, count]) => `${problem} ${count}`)
    .join(', ');
}

/** Answers in a window as "200:1412 503:80" (statuses in numeric order). */
export function compactStatuses(statuses: Record<string, number>): string {
  return Object.entries(statuses)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([status, count]) => `${status}:${count}`)
    .join(' ');
}

/**
 * Growth from the minute after warm-up to the last minute, each the mean of its samples (one sample of
 * a garbage-collected heap is noise).
 */
export function judgeMemory(
  samples: readonly MemorySample[],
  baseline: { fromS: number; toS: number } | undefined,
  endS: number,
): MemoryVerdict {
  const peakRssMb = Math.max(0, ...samples.map((sample) => sample.rssBytes)) / 1e6;
  const peakHeapMb = Math.max(0, ...samples.map((sample) => sample.heapUsedBytes)) / 1e6;
  if (baseline === undefined) {
    return {
      judged: false,
      why: 'too short to judge: memory is judged on runs of 5 minutes or more',
      peakRssMb,
      peakHeapMb,
    };
  }
  const mean = (fromS: number, toS: number) => {
    const inside = samples.filter((sample) => sample.tS >= fromS && sample.tS <= toS);
    const average = (pick: (sample: MemorySample) => number) =>
      inside.reduce((sum, sample) => sum + pick(sample), 0) / Math.max(1, inside.length) / 1e6;
    return {
      fromS: Math.round(fromS),
      toS: Math.round(toS),
      rssMb: average((sample) => sample.rssBytes),
      heapMb: average((sample) => sample.heapUsedBytes),
      samples: inside.length,
    };
  };
  const first = mean(baseline.fromS, baseline.toS);
  const last = mean(endS - 60, endS);
  return {
    judged: true,
    baseline: first,
    last,
    rssGrowth: last.rssMb / first.rssMb - 1,
    heapGrowth: last.heapMb / first.heapMb - 1,
    peakRssMb,
    peakHeapMb,
  };
}

export function memoryLine(memory: MemoryVerdict, limit: number): string {
  const peaks = `peak RSS ${memory.peakRssMb.toFixed(1)} MB, peak heap used ${memory.peakHeapMb.toFixed(1)} MB`;
  if (!memory.judged || memory.baseline === undefined || memory.last === undefined) return `${peaks}; ${memory.why}`;
  const pct = (value: number | undefined) => `${(value ?? 0) >= 0 ? '+' : ''}${((value ?? 0) * 100).toFixed(1)} %`;
  const { baseline: first, last } = memory;
  return [
    `after warm-up (t=${first.fromS}-${first.toS} s, ${first.samples} samples): RSS ${first.rssMb.toFixed(1)} MB, heap used ${first.heapMb.toFixed(1)} MB`,
    `last minute   (t=${last.fromS}-${last.toS} s, ${last.samples} samples): RSS ${last.rssMb.toFixed(1)} MB, heap used ${last.heapMb.toFixed(1)} MB`,
    `growth: RSS ${pct(memory.rssGrowth)}, heap ${pct(memory.heapGrowth)} (limit +${limit * 100} %); ${peaks}`,
  ].join('\n');
}

/** Longest stalls and the busiest the machine was, so that a late answer can be told from a starved machine. */
export function stallLine(samples: readonly MemorySample[]): string {
  const max = (pick: (sample: MemorySample) => number) =>
    Math.max(0, ...samples.map(pick).filter((value) => Number.isFinite(value)));
  const busiest = max((sample) => sample.loadAverage);
  return (
    `longest event-loop stall: bridge ${max((sample) => sample.bridgeLoopMaxMs).toFixed(0)} ms, ` +
    `soak ${max((sample) => sample.soakLoopMaxMs).toFixed(0)} ms; machine load average up to ${busiest.toFixed(1)} on 2 cores`
  );
}
