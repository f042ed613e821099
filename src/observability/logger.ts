import pino, { type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from '../config/config.js';

/**
 * Log lines are buffered and written in batches off the request path: a synchronous write per
 * request costs a syscall each. The buffer is flushed at least every FLUSH_INTERVAL_MS, and on exit.
 */
const BUFFER_BYTES = 4096;
const FLUSH_INTERVAL_MS = 250;

/** Log bytes dropped because stdout did not keep up (for the log_bytes_dropped_total metric). */
let droppedBytes = 0;
export function logBytesDropped(): number {
  return droppedBytes;
}

/**
 * `maxBufferBytes` bounds what is held for a stdout that stops reading (a stuck log collector):
 * past it, lines are dropped and counted rather than kept until memory runs out.
 */
export function createLogger(
  level: LogLevel,
  destination?: DestinationStream,
  maxBufferBytes = 16 * 1024 * 1024,
): Logger {
  const options = { level, base: { service: 'amqp-rpc-bridge' } };
  if (destination) return pino(options, destination);
  const stdout = pino.destination({ dest: 1, sync: false, minLength: BUFFER_BYTES, maxLength: maxBufferBytes });
  stdout.on('drop', (data: string) => {
    droppedBytes += Buffer.byteLength(data);
  });
  setInterval(() => {
    // flush() throws while a previous asynchronous write is still under way; the next tick will do.
    try {
      stdout.flush();
    } catch {}
  }, FLUSH_INTERVAL_MS).unref();
  return pino(options, stdout);
}
