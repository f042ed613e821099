import { isUtf8 } from 'node:buffer';
import type { Metrics, RpcOutcomeLabel, StreamEndLabel } from '../../observability/metrics.js';
import type { Reply, RpcOutcome } from '../../rpc/outcome.js';
import type { RpcCall } from '../../rpc/rpc-call.js';
import type { HttpExchange } from '../exchange.js';
import { HttpProblem, PROBLEM_TYPE_PREFIX, problemDocument } from '../problems.js';
import { outcomeProblem, replyToHttp, STATUS_HEADER } from '../response-mapping.js';
import { OUTCOME_LABELS } from './render.js';

const EVENT_STREAM = 'text/event-stream';

export interface StreamSettings {
  /** Unread bytes past which the next reply ends the stream (STREAM_MAX_BUFFER_BYTES). */
  readonly maxBufferBytes: number;
  /** Silence after which a comment line goes out (STREAM_KEEPALIVE_MS). */
  readonly keepAliveMs: number;
  /** Streams open at once (STREAM_MAX_OPEN): with the buffer bound, what all streams may hold. */
  readonly gate: StreamGate;
}

/**
 * Streams open at once, at most `limit`: each may hold STREAM_MAX_BUFFER_BYTES of a slow caller's
 * unread events, so this is what bounds them all together (503 before the 200, past it).
 */
export class StreamGate {
  private open = 0;

  constructor(readonly limit: number) {}

  tryEnter(): boolean {
    if (this.open >= this.limit) return false;
    this.open += 1;
    return true;
  }

  leave(): void {
    this.open -= 1;
  }
}

/** Any list that names the stream has this in it, in some case: the rest need not be split. */
const MENTIONS_EVENT_STREAM = /text\/event-stream/i;

/**
 * Whether the caller asked for a stream. The plain path pays one string compare or one search that
 * allocates nothing: an exact `text/event-stream` (what EventSource and most clients send) answers at
 * once, a list that does not mention it (`application/json, text/plain` and any wildcard) too; only one
 * that does is split.
 */
export function acceptsEventStream(accept: string | undefined): boolean {
  if (accept === EVENT_STREAM) return true;
  if (accept === undefined || !MENTIONS_EVENT_STREAM.test(accept)) return false;
  // Media ranges are case-insensitive, and `q=0` refuses one (RFC 9110 §12.5.1).
  for (const range of accept.split(',')) {
    const [type = '', ...parameters] = range.split(';');
    if (type.trim().toLowerCase() !== EVENT_STREAM) continue;
    const refused = parameters.some((parameter) => /^\s*q\s*=\s*0(?:\.0{0,3})?\s*$/i.test(parameter));
    if (!refused) return true;
  }
  return false;
}

/** Reply headers that are the stream's own business: the event's name says whether more will come. */
const NOT_RELAYED = 'Amqp-Header-x-stream';
/** How long a caller whose stream overflowed has to read its last event before the connection is cut. */
const OVERFLOW_GRACE_MS = 10_000;

/**
 * The render stage for a caller who sent `Accept: text/event-stream`: every reply of the call as one
 * server-sent event, as it arrives. 200 and the headers go out as soon as the call is under way; a
 * call that ends before that (refused at once: 503, 504) is answered as any other, with its status.
 *
 *   event: part | final          (x-stream: more, or the last reply)
 *   id: 1, 2, ...                (the reply's sequence number)
 *   status: 201                  (when the worker set http-status)
 *   content-type: text/plain     (and content-encoding, amqp-header-<name>: as a plain answer's headers)
 *   encoding: base64             (when the body is not UTF-8 text without CR: then data is its base64)
 *   data: the body, one data line per line
 *
 * A `problem` event (data: an RFC 9457 document) ends a stream that ends otherwise: timeout, lost
 * channel, overflow, a reply that cannot be mapped. Fields other than event, id and data are ignored by
 * EventSource and read by any parser of its own (a POST needs one: EventSource only does GET).
 */
export class EventStream {
  /** Replies relayed as events so far: the last event's id. */
  private sequence = 0;
  private call: RpcCall | undefined;
  private keepAlive: NodeJS.Timeout | undefined;
  /** When anything was last written: a keep-alive goes out after keepAliveMs of silence. */
  private lastWriteAt = Date.now();
  /** Ended by the bridge before the call settled: the caller read too slowly, or a part was unusable. */
  private givenUp: 'overflow' | 'bad_reply' | undefined;
  private opened = false;
  private corked = false;
  /** Their bodies' bytes, beside the events (`sequence`): what the request's log line and metrics report. */
  private relayedBytes = 0;

  constructor(
    private readonly exchange: HttpExchange,
    private readonly settings: StreamSettings,
    private readonly metrics: Metrics,
    private readonly target: string,
  ) {
    // Its place in STREAM_MAX_OPEN (taken by the pipeline) is held until the response closes, however it ends.
    exchange.res.once('close', () => settings.gate.leave());
  }

  /** True once 200 and the headers are out: from then on the call ends in an event, not a status. */
  get isOpen(): boolean {
    return this.opened;
  }

  get events(): number {
    return this.sequence;
  }

  get bytesOut(): number {
    return this.relayedBytes;
  }

  /** The call is started. Outcomes known at once are delivered in a microtask queued before this one. */
  begin(call: RpcCall): void {
    this.call = call;
    queueMicrotask(() => {
      if (!call.isSettled) this.open();
    });
  }

  /** A partial reply (`x-stream: more`); runs in amqplib's consumer callback, so it never throws. */
  readonly part = (reply: Reply): void => {
    try {
      if (!this.opened) this.open();
      const { res } = this.exchange;
      if (res.writableLength > this.settings.maxBufferBytes) {
        this.overflow();
        return;
      }
      if (!this.relay(reply, 'part')) {
        this.givenUp = 'bad_reply';
        this.call?.cancel();
      }
    } catch {
      this.exchange.res.destroy();
    }
  };

  /** The call ended: the last event, then the end of the response. Returns the outcome to record. */
  end(outcome: RpcOutcome): RpcOutcomeLabel {
    clearInterval(this.keepAlive);
    const { res } = this.exchange;
    let label: RpcOutcomeLabel;
    let ended: StreamEndLabel;
    if (this.givenUp !== undefined) {
      label = this.givenUp === 'overflow' ? 'cancelled' : 'bad_reply';
      ended = this.givenUp;
    } else if (outcome.kind === 'reply') {
      const relayed = this.relay(outcome.reply, 'final');
      label = relayed ? 'ok' : 'bad_reply';
      ended = relayed ? 'final' : 'bad_reply';
    } else if (outcome.kind === 'cancelled') {
      // The caller left (or a part could not be mapped, already told): nobody to write to.
      label = 'cancelled';
      ended = 'cancelled';
    } else if (outcome.kind === 'accepted') {
      // Only publishes are accepted, and they never stream.
      label = 'ok';
      ended = 'final';
    } else {
      label = OUTCOME_LABELS[outcome.kind];
      ended = label;
      this.writeProblem(problemDocument(outcomeProblem(outcome, this.target), this.exchange.id));
    }
    if (!res.writableEnded) res.end();
    this.metrics.streams.labels(ended).inc();
    return label;
  }

  private open(): void {
    if (this.opened) return;
    this.opened = true;
    const { res } = this.exchange;
    res.statusCode = 200;
    res.setHeader('Content-Type', EVENT_STREAM);
    // no-transform: no proxy may compress or rewrite it (either would hold events back).
    res.setHeader('Cache-Control', 'no-cache, no-transform');
    // nginx buffers proxied responses unless told not to.
    res.setHeader('X-Accel-Buffering', 'no');
    res.flushHeaders();
    // Checked four times an interval: no silence lasts longer than 1.25 x STREAM_KEEPALIVE_MS.
    this.keepAlive = setInterval(keepAlive, Math.max(25, this.settings.keepAliveMs / 4), this);
  }

  /** Comment lines while nothing else is written: a proxy sees traffic, EventSource ignores them. */
  tick(): void {
    const { res } = this.exchange;
    const now = Date.now();
    if (now - this.lastWriteAt < this.settings.keepAliveMs) return;
    if (!res.writableEnded && res.writableLength <= this.settings.maxBufferBytes) res.write(': keep-alive\n\n');
    this.lastWriteAt = now;
  }

  /** Writes one reply as an event; false (after a problem event) when it cannot be mapped. */
  private relay(reply: Reply, name: 'part' | 'final'): boolean {
    let mapped: ReturnType<typeof replyToHttp>;
    try {
      mapped = replyToHttp(reply, this.target);
    } catch (err) {
      if (!(err instanceof HttpProblem)) throw err;
      this.writeProblem(problemDocument(err, this.exchange.id));
      return false;
    }
    this.sequence += 1;
    // Header values come mapped as a plain answer's, UTF-8 bytes one per character: written as latin1,
    // they are those bytes again.
    let head = `event: ${name}\nid: ${this.sequence}\n`;
    if (reply.headers[STATUS_HEADER] !== undefined) head += `status: ${mapped.status}\n`;
    for (const [field, value] of mapped.headers) {
      if (field !== NOT_RELAYED) head += `${field.toLowerCase()}: ${value}\n`;
    }
    const { body } = reply;
    let data: string;
    // A CR would end a line for the client's parser and come back as LF: such text goes as base64.
    if (body.indexOf(CR) === -1 && isUtf8(body)) {
      data = `data: ${body.toString('utf8').replaceAll('\n', '\ndata: ')}\n\n`;
    } else {
      head += 'encoding: base64\n';
      data = `data: ${body.toString('base64')}\n\n`;
    }
    this.writeCorked(head, data);
    this.lastWriteAt = Date.now();
    this.relayedBytes += body.length;
    this.metrics.streamEvents.inc();
    return true;
  }

  /**
   * Writes held until the end of this tick: replies that arrive together (one socket read of the
   * broker's) leave in one write, and none waits longer than the tick it arrived in.
   */
  private writeCorked(head: string, data: string): void {
    const { res } = this.exchange;
    if (!this.corked) {
      this.corked = true;
      res.cork();
      process.nextTick(uncork, this);
    }
    res.write(head, 'latin1');
    res.write(data, 'utf8');
  }

  uncork(): void {
    this.corked = false;
    this.exchange.res.uncork();
  }

  /** The caller reads more slowly than the worker writes: one last event, and the call is given up. */
  private overflow(): void {
    this.givenUp = 'overflow';
    this.writeProblem({
      type: `${PROBLEM_TYPE_PREFIX}stream-overflow`,
      title: 'Stream read too slowly',
      detail: `More than ${this.settings.maxBufferBytes} bytes of this stream were unread (STREAM_MAX_BUFFER_BYTES); the call was given up`,
      requestId: this.exchange.id,
      target: this.target,
    });
    const { res } = this.exchange;
    res.end();
    // A caller that never reads again would hold the buffer (and the socket) for good.
    setTimeout(() => res.destroy(), OVERFLOW_GRACE_MS).unref();
    this.call?.cancel();
  }

  private writeProblem(document: object): void {
    const { res } = this.exchange;
    if (res.writableEnded) return;
    res.write(`event: problem\ndata: ${JSON.stringify(document)}\n\n`);
  }
}

const CR = 0x0d;

function uncork(stream: EventStream): void {
  stream.uncork();
}

function keepAlive(stream: EventStream): void {
  stream.tick();
}
