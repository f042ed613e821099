import { type IncomingMessage, request } from 'node:http';

/** One server-sent event as a client parses it, with when it arrived. */
export interface ReceivedEvent {
  readonly event: string;
  readonly id: string | undefined;
  readonly data: string;
  /** Every other field (content-type, status, amqp-header-*, encoding): what EventSource ignores. */
  readonly fields: Readonly<Record<string, string>>;
  /** performance.now() when its blank line arrived. */
  readonly at: number;
}

export interface OpenedStream {
  readonly status: number;
  readonly headers: IncomingMessage['headers'];
  readonly response: IncomingMessage;
  /** When the response's headers arrived (performance.now()). */
  readonly openedAt: number;
  /** Events so far (filled as they arrive). */
  readonly events: ReceivedEvent[];
  /** Comment lines so far (`: keep-alive`). */
  readonly comments: string[];
  /** Resolves with every event once the response has ended (or the connection broke). */
  readonly ended: Promise<ReceivedEvent[]>;
  /** Resolves once `count` events have arrived. */
  eventCount(count: number, timeoutMs?: number): Promise<ReceivedEvent[]>;
  /** Goes away, as a caller who closes the tab. */
  abort(): void;
}

/**
 * POSTs with `Accept: text/event-stream` and parses the answer as a browser would (SSE's rules: fields
 * up to the first colon, one optional space after it, `data` lines joined with LF, a blank line ends an
 * event). The raw text of a non-stream answer is in `ended`'s first event's data (event `body`).
 */
export function openStream(
  url: string,
  body: string | Buffer,
  headers: Record<string, string> = {},
): Promise<OpenedStream> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: 'POST',
      headers: { Accept: 'text/event-stream', 'Content-Type': 'text/plain', ...headers },
    });
    req.on('error', reject);
    req.on('response', (response) => {
      const openedAt = performance.now();
      const events: ReceivedEvent[] = [];
      const comments: string[] = [];
      const waiters: Array<{ count: number; resolve: () => void }> = [];
      let pending = '';
      let current: { event: string; id: string | undefined; data: string[]; fields: Record<string, string> } = fresh();
      const streaming = String(response.headers['content-type']).startsWith('text/event-stream');
      response.setEncoding('utf8');
      const ended = new Promise<ReceivedEvent[]>((done) => {
        response.on('data', (chunk: string) => {
          pending += chunk;
          if (!streaming) return;
          let newline = pending.indexOf('\n');
          while (newline !== -1) {
            const line = pending.slice(0, newline);
            pending = pending.slice(newline + 1);
            if (line === '') {
              // As EventSource: a block without data (e.g. after a comment line) is no event.
              if (current.data.length === 0) {
                current = fresh();
                newline = pending.indexOf('\n');
                continue;
              }
              events.push({ ...current, data: current.data.join('\n'), at: performance.now() });
              current = fresh();
              for (const waiter of waiters.filter((w) => events.length >= w.count)) waiter.resolve();
            } else if (line.startsWith(':')) {
              comments.push(line);
            } else {
              const colon = line.indexOf(':');
              const field = colon === -1 ? line : line.slice(0, colon);
              let value = colon === -1 ? '' : line.slice(colon + 1);
              if (value.startsWith(' ')) value = value.slice(1);
              if (field === 'event') current.event = value;
              else if (field === 'id') current.id = value;
              else if (field === 'data') current.data.push(value);
              else current.fields[field] = value;
            }
            newline = pending.indexOf('\n');
          }
        });
        const finish = () => {
          if (!streaming)
            events.push({ event: 'body', id: undefined, data: pending, fields: {}, at: performance.now() });
          done(events);
        };
        response.on('end', finish);
        response.on('error', finish);
        response.on('aborted', finish);
      });
      resolve({
        status: response.statusCode ?? 0,
        headers: response.headers,
        response,
        openedAt,
        events,
        comments,
        ended,
        eventCount(count, timeoutMs = 5_000) {
          if (events.length >= count) return Promise.resolve(events);
          return new Promise((done, fail) => {
            const timer = setTimeout(
              () => fail(new Error(`${events.length} events after ${timeoutMs} ms, waiting for ${count}`)),
              timeoutMs,
            );
            waiters.push({
              count,
              resolve: () => {
                clearTimeout(timer);
                done(events);
              },
            });
          });
        },
        abort() {
          req.destroy();
        },
      });
    });
    req.end(body);
  });
}

function fresh() {
  return {
    event: 'message',
    id: undefined as string | undefined,
    data: [] as string[],
    fields: {} as Record<string, string>,
  };
}
