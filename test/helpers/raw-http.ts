import { connect } from 'node:net';

/** One HTTP/1.1 response as it came over the wire. */
export interface WireResponse {
  /** E.g. `HTTP/1.1 400 Bad Request`. */
  readonly statusLine: string;
  readonly status: number;
  /** Header names in lower case. */
  readonly headers: Readonly<Record<string, string>>;
  /** The body (de-chunked), as UTF-8. */
  readonly body: string;
}

export interface RawExchange {
  /** Everything the server sent, as UTF-8. */
  readonly text: string;
  /** `text` split into responses; what cannot be parsed as one is left out. */
  readonly responses: readonly WireResponse[];
  /** From the first byte sent until the server closed the connection (or the wait ended). */
  readonly afterMs: number;
}

export interface RawOptions {
  /** Sent after `data`, one character every `everyMs`, while the connection is open. */
  readonly trickle?: { readonly text: string; readonly everyMs: number };
  /** How long to wait for the server to close the connection before giving up on it. */
  readonly timeoutMs?: number;
}

/**
 * Sends exactly these bytes on a new connection, without ending our side, and collects what comes
 * back until the server closes it: for what HTTP client libraries will not send (malformed or
 * pipelined requests, raw UTF-8 header bytes, a request that trickles in).
 */
export function rawHttp(port: number, data: string | Buffer, options: RawOptions = {}): Promise<RawExchange> {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    const trickle = options.trickle;
    let sent = 0;
    const timer =
      trickle &&
      setInterval(() => {
        if (sent < trickle.text.length && socket.writable) socket.write(trickle.text[sent++] ?? '');
      }, trickle.everyMs);
    const giveUp = setTimeout(() => socket.destroy(), options.timeoutMs ?? 10_000);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearInterval(timer);
      clearTimeout(giveUp);
      const wire = Buffer.concat(chunks);
      resolve({ text: wire.toString('utf8'), responses: parseResponses(wire), afterMs: Date.now() - started });
    });
    socket.write(data);
  });
}

/** Splits bytes from the wire into responses, by Content-Length or chunked framing. */
export function parseResponses(wire: Buffer): WireResponse[] {
  const responses: WireResponse[] = [];
  let at = 0;
  while (at < wire.length) {
    const headEnd = wire.indexOf('\r\n\r\n', at);
    if (headEnd === -1) break;
    const [statusLine = '', ...fields] = wire.toString('latin1', at, headEnd).split('\r\n');
    const headers: Record<string, string> = {};
    for (const field of fields) {
      const colon = field.indexOf(':');
      headers[field.slice(0, colon).toLowerCase()] = field.slice(colon + 1).trim();
    }
    let body: Buffer;
    at = headEnd + 4;
    if (headers['transfer-encoding'] === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        const lineEnd = wire.indexOf('\r\n', at);
        if (lineEnd === -1) return responses;
        const size = Number.parseInt(wire.toString('latin1', at, lineEnd), 16);
        at = lineEnd + 2;
        if (!(size > 0)) break;
        parts.push(wire.subarray(at, at + size));
        at += size + 2;
      }
      at += 2;
      body = Buffer.concat(parts);
    } else {
      const length = Number(headers['content-length'] ?? 0);
      body = wire.subarray(at, at + length);
      at += length;
    }
    const status = Number(statusLine.split(' ')[1]);
    responses.push({ statusLine, status, headers, body: body.toString('utf8') });
  }
  return responses;
}
