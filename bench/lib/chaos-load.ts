import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';

/** One kind of request in the mix, and what a healthy bridge answers it. */
export interface RequestKind {
  readonly name: string;
  readonly path: string;
  /** Sent as Amqp-Timeout; undefined sends none, so the bridge's RPC_TIMEOUT_MS applies. */
  readonly timeoutHeaderMs: number | undefined;
  /** The timeout the bridge applies (the header's, or its default). */
  readonly timeoutMs: number;
  readonly headers: Readonly<Record<string, string>>;
  /** What it gets while nothing is wrong: the worker's status (body echoed), or a problem's. */
  readonly healthy: { readonly status: number; readonly type?: string };
}

/** The bridge's default RPC_TIMEOUT_MS (README, Configuration). */
const DEFAULT_TIMEOUT_MS = 30_000;

/** Twenty requests, in this order, over and over: ~90 % answered by the worker, the rest failing on purpose. */
export function requestMix(queues: { echo: string; noConsumer: string; unroutable: string }): RequestKind[] {
  const echo = (name: string, status: number, headers: Record<string, string> = {}): RequestKind => ({
    name,
    path: `/rpc/${queues.echo}`,
    timeoutHeaderMs: 5_000,
    timeoutMs: 5_000,
    headers,
    healthy: { status },
  });
  const kinds: RequestKind[] = [];
  for (let i = 0; i < 13; i++) kinds.push(echo('echo', 200));
  kinds.push(
    { ...echo('echo, default timeout', 200), timeoutHeaderMs: undefined, timeoutMs: DEFAULT_TIMEOUT_MS },
    echo('worker answers 201', 201, { 'Amqp-Header-Reply-Status': '201' }),
    echo('worker answers 422', 422, { 'Amqp-Header-Reply-Status': '422' }),
    echo('worker answers 422', 422, { 'Amqp-Header-Reply-Status': '422' }),
    {
      name: 'unroutable',
      path: `/rpc/${queues.unroutable}`,
      timeoutHeaderMs: 1_000,
      timeoutMs: 1_000,
      headers: {},
      healthy: { status: 404, type: 'unroutable' },
    },
    {
      name: 'no consumer',
      path: `/rpc/${queues.noConsumer}`,
      timeoutHeaderMs: 300,
      timeoutMs: 300,
      headers: {},
      healthy: { status: 504, type: 'timeout' },
    },
    {
      ...echo('slow worker', 504, { 'Amqp-Header-Delay-Ms': '1500' }),
      timeoutHeaderMs: 500,
      timeoutMs: 500,
      healthy: { status: 504, type: 'timeout' },
    },
  );
  return kinds;
}

/**
 * The problem answers the README's error table gives for an RPC while the broker, the worker or the
 * path between them fails. The table's other rows cannot arise here (no auth, no allow-list, valid
 * requests, no exchange route, no shutdown, a worker that only sends valid statuses): one of those
 * would be a bug, so it fails the soak too.
 */
export const ALLOWED_PROBLEMS: ReadonlySet<string> = new Set([
  '404 unroutable',
  '502 request-lost',
  '503 broker-unavailable',
  '503 broker-rejected',
  '503 overloaded',
  '504 timeout',
]);

/** Requests sent while one window (a fault, a recovery, steady load) lasted, and how they ended. */
/** A window with nothing counted yet. */
export function emptyTally(label: string, index: number, startS: number, endS = 0): WindowTally {
  return {
    label,
    index,
    startS,
    endS,
    requests: 0,
    statuses: {},
    problems: {},
    byKind: {},
    unhealthy: 0,
    longestMs: 0,
    worstOverrunMs: Number.NEGATIVE_INFINITY,
    failures: 0,
  };
}

export interface WindowTally {
  readonly label: string;
  /** Which occurrence of its label (1, 2, ...); in a sum, how many were summed. */
  index: number;
  /** Seconds since the start of the load. */
  startS: number;
  endS: number;
  requests: number;
  /** By status code ('error': no HTTP answer; 'hang': none within timeout + margin + 10 s). */
  readonly statuses: Record<string, number>;
  /** By status and problem type code, e.g. "503 broker-unavailable". */
  readonly problems: Record<string, number>;
  /** By kind of request, then status. */
  readonly byKind: Record<string, Record<string, number>>;
  /** Requests that did not get what a healthy bridge answers their kind. */
  unhealthy: number;
  longestMs: number;
  /** The most an answer came after its request's timeout (negative: all came before). */
  worstOverrunMs: number;
  failures: number;
}

export interface Failure {
  readonly n: number;
  readonly kind: string;
  readonly window: string;
  readonly sentAtS: number;
  readonly status: string;
  readonly ms: number;
  readonly reason: string;
  readonly detail?: string;
  /** The bridge's own time for it (its access log's responseTime), when the line was seen. */
  readonly bridgeMs?: number;
  /** The request's timeout. */
  readonly timeoutMs: number;
  /**
   * Client-side milestones, ms after the request was created: a socket assigned, a new one connected
   * (absent when a kept-alive socket was reused), the response's headers read.
   */
  readonly phases?: Readonly<Record<string, number>>;
}

interface Answer {
  readonly status: string;
  readonly type?: string;
  /** The problem document's detail. */
  readonly detail?: string;
  readonly retryAfter?: string;
  readonly body?: string;
  readonly error?: string;
  readonly phases?: Readonly<Record<string, number>>;
}

/**
 * An open-loop load at a fixed rate (requests go out on schedule whatever the answers do, as callers
 * behind a load balancer would), each judged the moment it ends.
 */
export class ChaosLoad {
  readonly windows: WindowTally[] = [];
  readonly failures: Failure[] = [];
  /** Answers in steady windows (and the warm-up) that a healthy bridge would not give; at most 10,000 kept. */
  readonly unhealthySteady: Failure[] = [];
  failureCount = 0;
  sent = 0;
  answered = 0;
  outstanding = 0;
  private current: WindowTally;
  private readonly agent = new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY, maxFreeSockets: 32 });
  private ticker: NodeJS.Timeout | undefined;
  private startedAt = 0;
  /** Date.now() when the load started, to place the bridge's log timestamps on the load's clock. */
  startedAtEpochMs = 0;
  private drainWaiters: Array<() => void> = [];
  /** Request number -> the bridge's responseTime, from its access log. */
  private readonly bridgeTimes = new Map<number, number>();

  constructor(
    private readonly port: number,
    private readonly kinds: readonly RequestKind[],
    private readonly rps: number,
    /**
     * How far past its timeout the bridge may answer (its own time, arrival to answer written). The
     * caller may see one more margin on top: the client's own connect and scheduling on a busy machine.
     */
    private readonly marginMs: number,
    private readonly runId: string,
  ) {
    this.current = this.newWindow('warm-up');
  }

  /** The X-Request-Id each request carries: `chaos-<run>-<n>`, so that the bridge's log line can be matched. */
  get requestIdPrefix(): string {
    return `chaos-${this.runId}-`;
  }

  /** The bridge's access log said request `n` took `ms` from its arrival to its answer. */
  noteBridgeTime(n: number, ms: number): void {
    this.bridgeTimes.set(n, ms);
  }

  /**
   * Requests the bridge itself answered later than their timeout + margin (its access log's
   * responseTime), and how many requests its log told us about at all.
   */
  bridgeLate(): { late: Array<{ n: number; kind: string; timeoutMs: number; bridgeMs: number }>; logged: number } {
    const late: Array<{ n: number; kind: string; timeoutMs: number; bridgeMs: number }> = [];
    for (const [n, bridgeMs] of this.bridgeTimes) {
      const kind = this.kinds[n % this.kinds.length] as RequestKind;
      if (bridgeMs > kind.timeoutMs + this.marginMs)
        late.push({ n, kind: kind.name, timeoutMs: kind.timeoutMs, bridgeMs });
    }
    return { late, logged: this.bridgeTimes.size };
  }

  /** The failures and unhealthy answers recorded, with the bridge's own time added where it is known. */
  withBridgeTimes(records: readonly Failure[]): Failure[] {
    return records.map((record) => {
      const bridgeMs = this.bridgeTimes.get(record.n);
      return bridgeMs === undefined ? record : { ...record, bridgeMs };
    });
  }

  /** Seconds since start(). */
  get nowS(): number {
    return (performance.now() - this.startedAt) / 1000;
  }

  get windowLabel(): string {
    return this.current.label;
  }

  /**
   * Ramps up over `rampS` seconds (a freshly started bridge compiles its hot paths under the first
   * requests, as a load balancer's slow start allows for), then holds the rate.
   */
  start(rampS: number): void {
    this.startedAt = performance.now();
    this.startedAtEpochMs = Date.now();
    this.current.startS = 0;
    // Requests due by t: the integral of a rate rising linearly to rps over rampS, then flat.
    const dueBy = (t: number) => (t < rampS ? (this.rps * t * t) / (2 * rampS) : this.rps * (t - rampS / 2));
    // 10 ms ticks: what is due by now goes out, so the rate holds even when a tick comes late.
    this.ticker = setInterval(() => {
      const due = Math.floor(dueBy(this.nowS)) - this.sent;
      for (let i = 0; i < due; i++) this.fire();
    }, 10);
  }

  /** From now on, requests count towards a new window called `label`. */
  enter(label: string): void {
    this.current.endS = this.nowS;
    this.current = this.newWindow(label);
  }

  /** Stops sending; resolves once every request sent has ended (each is bounded by its hang guard). */
  async stop(): Promise<void> {
    clearInterval(this.ticker);
    this.current.endS = this.nowS;
    if (this.outstanding > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    this.agent.destroy();
  }

  private newWindow(label: string): WindowTally {
    const tally = emptyTally(
      label,
      this.windows.filter((window) => window.label === label).length + 1,
      this.startedAt === 0 ? 0 : this.nowS,
    );
    this.windows.push(tally);
    return tally;
  }

  private fire(): void {
    const n = this.sent++;
    const kind = this.kinds[n % this.kinds.length] as RequestKind;
    const window = this.current;
    const sentAtS = this.nowS;
    const body = `chaos ${this.runId} ${n}`;
    const started = performance.now();
    window.requests += 1;
    this.outstanding += 1;
    let ended = false;
    const end = (answer: Answer) => {
      if (ended) return;
      ended = true;
      clearTimeout(guard);
      this.judge(n, kind, window, sentAtS, performance.now() - started, body, answer);
      this.outstanding -= 1;
      if (this.outstanding === 0) for (const resolve of this.drainWaiters.splice(0)) resolve();
    };
    const phases: Record<string, number> = {};
    const mark = (phase: string) => {
      phases[phase] = Math.round(performance.now() - started);
    };
    const headers: Record<string, string | number> = {
      ...kind.headers,
      'Content-Type': 'text/plain',
      'Content-Length': Buffer.byteLength(body),
      'X-Request-Id': `${this.requestIdPrefix}${n}`,
    };
    if (kind.timeoutHeaderMs !== undefined) headers['Amqp-Timeout'] = kind.timeoutHeaderMs;
    const req = request(
      { host: '127.0.0.1', port: this.port, path: kind.path, method: 'POST', agent: this.agent, headers },
      (res) => {
        mark('response');
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', (err) => end({ status: 'error', error: err.message }));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let type: string | undefined;
          let detail: string | undefined;
          if (String(res.headers['content-type']).includes('problem+json')) {
            try {
              const problem = JSON.parse(text) as { type?: unknown; detail?: unknown };
              type = String(problem.type).replace(/^.*problem\//, '');
              detail = String(problem.detail);
            } catch {
              type = 'unparseable';
            }
          }
          const retryAfter = res.headers['retry-after'];
          end({
            status: String(res.statusCode),
            body: text,
            phases,
            ...(type === undefined ? {} : { type }),
            ...(detail === undefined ? {} : { detail }),
            ...(retryAfter === undefined ? {} : { retryAfter }),
          });
        });
      },
    );
    req.on('socket', (socket) => {
      mark('socket');
      if (socket.connecting) socket.once('connect', () => mark('connected'));
    });
    req.on('error', (err) => end({ status: 'error', error: err.message, phases }));
    const guard = setTimeout(
      () => {
        end({ status: 'hang' });
        req.destroy();
      },
      kind.timeoutMs + this.marginMs + 10_000,
    );
    req.end(body);
  }

  private judge(
    n: number,
    kind: RequestKind,
    window: WindowTally,
    sentAtS: number,
    ms: number,
    body: string,
    answer: Answer,
  ): void {
    this.answered += answer.status === 'error' || answer.status === 'hang' ? 0 : 1;
    window.statuses[answer.status] = (window.statuses[answer.status] ?? 0) + 1;
    const ofKind = window.byKind[kind.name] ?? {};
    ofKind[answer.status] = (ofKind[answer.status] ?? 0) + 1;
    window.byKind[kind.name] = ofKind;
    if (answer.type !== undefined) {
      const key = `${answer.status} ${answer.type}`;
      window.problems[key] = (window.problems[key] ?? 0) + 1;
    }
    window.longestMs = Math.max(window.longestMs, ms);
    window.worstOverrunMs = Math.max(window.worstOverrunMs, ms - kind.timeoutMs);
    const healthy =
      answer.status === String(kind.healthy.status) &&
      (kind.healthy.type === undefined
        ? answer.type === undefined && answer.body === body
        : answer.type === kind.healthy.type);
    if (!healthy) {
      window.unhealthy += 1;
      if ((window.label === 'steady' || window.label === 'warm-up') && this.unhealthySteady.length < 10_000) {
        this.unhealthySteady.push(this.record(n, kind, window, sentAtS, ms, answer, `not ${kind.healthy.status}`));
      }
    }

    const reasons: string[] = [];
    const workerAnswer = answer.type === undefined && /^[2-5]\d\d$/.test(answer.status);
    if (answer.status === 'error') reasons.push(`no HTTP answer (${answer.error})`);
    else if (answer.status === 'hang') reasons.push('no answer at all (hangs)');
    else if (workerAnswer) {
      // A worker's answer: only a request that asked for this status may get it, with its own body.
      if (kind.healthy.type !== undefined || answer.status !== String(kind.healthy.status)) {
        reasons.push(`a worker's ${answer.status} to a "${kind.name}" request`);
      } else if (answer.body !== body) reasons.push("another request's body");
    } else if (!ALLOWED_PROBLEMS.has(`${answer.status} ${answer.type}`)) {
      reasons.push(`undocumented answer ${answer.status} ${answer.type}`);
    } else if (answer.status === '503' && !(Number(answer.retryAfter) >= 1)) {
      reasons.push(`503 without Retry-After (${answer.retryAfter})`);
    }
    if (ms > kind.timeoutMs + 2 * this.marginMs) {
      reasons.push(
        `${ms.toFixed(0)} ms at the caller, over its ${kind.timeoutMs} ms timeout + 2 × ${this.marginMs} ms`,
      );
    }
    if (reasons.length === 0) return;
    window.failures += 1;
    this.failureCount += 1;
    // The first hundred are kept in full; the rest are counted in their window.
    if (this.failures.length < 100) {
      this.failures.push(this.record(n, kind, window, sentAtS, ms, answer, reasons.join('; ')));
    }
  }

  private record(
    n: number,
    kind: RequestKind,
    window: WindowTally,
    sentAtS: number,
    ms: number,
    answer: Answer,
    reason: string,
  ): Failure {
    return {
      n,
      kind: kind.name,
      window: `${window.label} #${window.index}`,
      sentAtS: Math.round(sentAtS * 10) / 10,
      status: answer.type === undefined ? answer.status : `${answer.status} ${answer.type}`,
      ms: Math.round(ms),
      reason,
      timeoutMs: kind.timeoutMs,
      ...(answer.detail === undefined ? {} : { detail: answer.detail }),
      ...(answer.phases === undefined ? {} : { phases: answer.phases }),
    };
  }
}
