/** One measured run of one target at one concurrency. Latencies in milliseconds. */
export interface RunResult {
  readonly target: string;
  readonly concurrency: number;
  readonly bodyBytes: number;
  readonly requests: number;
  readonly seconds: number;
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly errors: number;
  readonly non2xx: number;
  /** CPU time of the process under test per request, in milliseconds. */
  readonly cpuMsPerRequest: number;
  /** What generated the load: the serial client, autocannon (each in its own process), or the target itself. */
  readonly client?: 'serial' | 'autocannon' | 'self';
  /** Serial client: TCP connections used while measuring (1: keep-alive held throughout). */
  readonly connections?: number;
  /** Rows measured for memory (16 MiB bodies): the process's peak RSS during the row, MB. */
  readonly peakRssMb?: number;
  /** ... and how far that peak rose above its RSS just before the row, MB (per request in flight at c=1). */
  readonly rssRiseMb?: number;
}

export function percentile(sorted: Float64Array, fraction: number): number {
  if (sorted.length === 0) return 0;
  const index = Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1);
  return sorted[Math.max(0, index)] ?? 0;
}

/** Collects latencies cheaply during a run (a growable typed array, sorted once at the end). */
export class LatencyRecorder {
  private values = new Float64Array(1 << 16);
  private count = 0;

  record(ms: number): void {
    if (this.count === this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.count++] = ms;
  }

  summary(): { count: number; p50: number; p90: number; p99: number; max: number } {
    const sorted = this.values.slice(0, this.count).sort();
    return {
      count: this.count,
      p50: percentile(sorted, 0.5),
      p90: percentile(sorted, 0.9),
      p99: percentile(sorted, 0.99),
      max: sorted[sorted.length - 1] ?? 0,
    };
  }
}

/** Averages the rounds of the same target and concurrency (the A B A B runs). */
export function combine(rounds: RunResult[]): RunResult {
  const first = rounds[0];
  if (first === undefined) throw new Error('no rounds');
  const mean = (pick: (run: RunResult) => number) => rounds.reduce((sum, run) => sum + pick(run), 0) / rounds.length;
  const sum = (pick: (run: RunResult) => number) => rounds.reduce((total, run) => total + pick(run), 0);
  return {
    ...first,
    requests: sum((run) => run.requests),
    seconds: sum((run) => run.seconds),
    rps: mean((run) => run.rps),
    p50: mean((run) => run.p50),
    p99: mean((run) => run.p99),
    max: Math.max(...rounds.map((run) => run.max)),
    errors: sum((run) => run.errors),
    non2xx: sum((run) => run.non2xx),
    cpuMsPerRequest: mean((run) => run.cpuMsPerRequest),
    ...(first.connections !== undefined && { connections: Math.max(...rounds.map((run) => run.connections ?? 0)) }),
    ...(first.peakRssMb !== undefined && { peakRssMb: Math.max(...rounds.map((run) => run.peakRssMb ?? 0)) }),
    ...(first.rssRiseMb !== undefined && { rssRiseMb: Math.max(...rounds.map((run) => run.rssRiseMb ?? 0)) }),
  };
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  if (sorted.length % 2 === 1) return sorted[middle] ?? 0;
  return ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
}

/**
 * Like combine, but each rate, latency and CPU figure is the median of the rounds: on a machine that
 * other work shares, one round can be several times off, and a mean would carry that into the table.
 */
export function combineByMedian(rounds: RunResult[]): RunResult {
  const summed = combine(rounds);
  const of = (pick: (run: RunResult) => number) => median(rounds.map(pick));
  return {
    ...summed,
    rps: of((run) => run.rps),
    p50: of((run) => run.p50),
    p99: of((run) => run.p99),
    cpuMsPerRequest: of((run) => run.cpuMsPerRequest),
  };
}
