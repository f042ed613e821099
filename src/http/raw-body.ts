import type { IncomingMessage } from 'node:http';
import { HttpProblem } from './problems.js';

const EMPTY = Buffer.alloc(0);

/** The client went away while sending its body; there is nobody to answer. */
export class ClientClosedError extends Error {
  override name = 'ClientClosedError';
}

/**
 * Reads the request body as raw bytes, refusing (413) anything over `limit` bytes: up front when
 * Content-Length says so, else as soon as the stream passes it. No decoding, no decompression: the
 * bytes go to the broker exactly as they came. A single-chunk body is returned without a copy.
 */
export function readRawBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  let expected = -1;
  if (declared !== undefined) {
    const length = Number(declared);
    if (length > limit) return Promise.reject(tooLarge(limit));
    if (length === 0) return Promise.resolve(EMPTY);
    // Node has checked the header: an integer, and the body is cut off at it.
    expected = length;
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    /**
     * With Content-Length past one chunk, each chunk is copied into the body as it arrives: the
     * 64 KiB chunks then die young instead of being held (and outliving scavenges) until the end.
     */
    let whole: Buffer | undefined;
    let size = 0;
    let done = false;
    const finish = (error: Error | undefined): void => {
      if (done) return;
      done = true;
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      req.off('error', onError);
      if (error) reject(error);
      else if (whole !== undefined) resolve(size === whole.length ? whole : whole.subarray(0, size));
      else resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size));
    };
    const onData = (chunk: Buffer): void => {
      const at = size;
      size += chunk.length;
      if (size > limit) {
        // Stop buffering; whatever else arrives is discarded by Node with the connection.
        req.pause();
        finish(tooLarge(limit));
        return;
      }
      if (whole !== undefined) {
        chunk.copy(whole, at);
      } else if (at === 0 && size < expected) {
        whole = Buffer.allocUnsafe(expected);
        chunk.copy(whole, 0);
      } else {
        chunks.push(chunk);
      }
    };
    const onEnd = (): void => finish(undefined);
    const onClose = (): void => finish(new ClientClosedError('client closed the connection while sending the body'));
    const onError = (): void => finish(new ClientClosedError('request stream failed while reading the body'));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
    req.on('error', onError);
  });
}

function tooLarge(limit: number): HttpProblem {
  return new HttpProblem('payload-too-large', `The request body exceeds the limit of ${limit} bytes (MAX_BODY_BYTES)`);
}
