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
  if (declared !== undefined) {
    const length = Number(declared);
    if (length > limit) return Promise.reject(tooLarge(limit));
    if (length === 0) return Promise.resolve(EMPTY);
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
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
      else resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size));
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        // Stop buffering; whatever else arrives is discarded by Node with the connection.
        req.pause();
        finish(tooLarge(limit));
        return;
      }
      chunks.push(chunk);
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
