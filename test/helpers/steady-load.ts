import { Agent, request } from 'node:http';

/** A bridge the load goes through, under the name the drill tables print. */
export interface LoadTarget {
  readonly name: string;
  readonly baseUrl: string;
}

/** One request of the load and how it ended. Times are epoch ms (the bridges' log clock). */
export interface Outcome {
  readonly target: string;
  readonly queue: string;
  readonly sentAt: number;
  readonly doneAt: number;
  /** The HTTP status, or `error` when no HTTP answer came (connection refused or reset, client timeout). */
  readonly status: number | 'error';
  /** How long the request asked the worker to wait before answering (Amqp-Header-Delay-Ms). */
  readonly delayMs: number;
  /** For a 200: the body came back unchanged. */
  readonly echoed: boolean;
  /** For a 200: the worker that answered (Amqp-Header-worker). */
  readonly worker: string | undefined;
}

export interface SteadyLoadOptions {
  readonly targets: readonly LoadTarget[];
  readonly queue: string;
  /** Requests per second sent through each target, whatever happens to the answers (an open loop). */
  readonly ratePerTarget: number;
  /** Amqp-Timeout of every request, ms. */
  readonly timeoutMs: number;
  /** Every `slowEvery`-th request asks the worker to wait a random 0..slowMaxDelayMs first. */
  readonly slowEvery: number;
  readonly slowMaxDelayMs: number;
}

export interface SteadyLoad {
  /** Every finished request so far. */
  readonly outcomes: readonly Outcome[];
  /** Requests sent and not answered yet. */
  readonly outstanding: number;
  /** Stops sending and resolves, with every request's outcome, once each has its answer. */
  stop(): Promise<readonly Outcome[]>;
}

/**
 * An open-loop load: a fixed rate per target regardless of how fast answers come, so that a fault
 * shows as requests that wait or fail instead of as a lower rate. Each body is unique and must come
 * back unchanged; every request sent ends in `outcomes`, none is lost track of.
 */
export function startSteadyLoad(options: SteadyLoadOptions): SteadyLoad {
  const agent = new Agent({ keepAlive: true, maxSockets: 1_000 });
  const outcomes: Outcome[] = [];
  const started = Date.now();
  const sent = new Map<string, number>(options.targets.map((target) => [target.name, 0]));
  let outstanding = 0;
  let sequence = 0;
  let allAnswered: (() => void) | undefined;

  const send = (target: LoadTarget): void => {
    sequence += 1;
    const delayMs = sequence % options.slowEvery === 0 ? Math.floor(Math.random() * options.slowMaxDelayMs) : 0;
    outstanding += 1;
    void rpcCall(target, options.queue, `${target.name}-${sequence}-${Date.now()}`, {
      timeoutMs: options.timeoutMs,
      delayMs,
      agent,
    }).then((outcome) => {
      outstanding -= 1;
      outcomes.push(outcome);
      if (outstanding === 0) allAnswered?.();
    });
  };

  const tick = setInterval(() => {
    const due = Math.floor(((Date.now() - started) * options.ratePerTarget) / 1_000);
    for (const target of options.targets) {
      const already = sent.get(target.name) ?? 0;
      for (let i = already; i < due; i++) send(target);
      sent.set(target.name, Math.max(already, due));
    }
  }, 10);

  return {
    outcomes,
    get outstanding() {
      return outstanding;
    },
    async stop() {
      clearInterval(tick);
      if (outstanding > 0) await new Promise<void>((resolve) => (allAnswered = resolve));
      agent.destroy();
      const total = [...sent.values()].reduce((sum, count) => sum + count, 0);
      if (outcomes.length !== total) throw new Error(`sent ${total} requests but accounted for ${outcomes.length}`);
      return outcomes;
    },
  };
}

/** How long a request took beyond the delay it asked the worker for. */
export function waitedMs(outcome: Outcome): number {
  return outcome.doneAt - outcome.sentAt - outcome.delayMs;
}

/** Counts of each status, as `{ "200": 950, "502": 3 }`. */
export function statusCounts(outcomes: readonly Outcome[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const { status } of outcomes) counts[String(status)] = (counts[String(status)] ?? 0) + 1;
  return counts;
}

/**
 * One POST /rpc/<queue> with a unique body; never rejects. Past the request's timeout plus a margin
 * the client gives up by itself (status `error`), so that a drill never hangs.
 */
export function rpcCall(
  target: LoadTarget,
  queue: string,
  body: string,
  { timeoutMs, delayMs = 0, agent }: { timeoutMs: number; delayMs?: number; agent?: Agent },
): Promise<Outcome> {
  const headers: Record<string, string> = { 'Content-Type': 'text/plain', 'Amqp-Timeout': String(timeoutMs) };
  if (delayMs > 0) headers['Amqp-Header-Delay-Ms'] = String(delayMs);
  const sentAt = Date.now();
  return new Promise((resolve) => {
    let settled = false;
    const settle = (status: Outcome['status'], text: string, worker: string | undefined): void => {
      if (settled) return;
      settled = true;
      const echoed = status === 200 && text === body;
      resolve({ target: target.name, queue, sentAt, doneAt: Date.now(), status, delayMs, echoed, worker });
    };
    const req = request(
      `${target.baseUrl}/rpc/${queue}`,
      { method: 'POST', headers, timeout: timeoutMs + 5_000, ...(agent === undefined ? {} : { agent }) },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const worker = res.headers['amqp-header-worker'];
          settle(
            res.statusCode ?? 0,
            Buffer.concat(chunks).toString('utf8'),
            typeof worker === 'string' ? worker : undefined,
          );
        });
        res.on('error', () => settle('error', '', undefined));
      },
    );
    req.on('timeout', () => req.destroy(new Error('client timeout')));
    req.on('error', () => settle('error', '', undefined));
    req.end(body);
  });
}
