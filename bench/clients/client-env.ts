/**
 * What a load client child is told, through its environment (set by lib/load.ts). A client prints
 * one line `{"measuring":true}` when its warm-up is over (the parent starts counting the target's
 * CPU then) and one JSON line with its ClientResult at the end; nothing else goes to stdout.
 */
import type { BodyKind } from '../lib/bodies.js';

export interface ClientEnv {
  readonly url: URL;
  readonly bodyBytes: number;
  readonly bodyKind: BodyKind;
  readonly concurrency: number;
  readonly warmupSeconds: number;
  readonly seconds: number;
}

export interface ClientResult {
  readonly requests: number;
  readonly seconds: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly errors: number;
  /** Answers other than 2xx, and (serial client only) 2xx answers whose body is not the one sent. */
  readonly non2xx: number;
  /** TCP connections the client opened while measuring (serial client: 1 means keep-alive held). */
  readonly connections?: number;
}

export function readClientEnv(env: NodeJS.ProcessEnv): ClientEnv {
  const number = (name: string, fallback: number) => {
    const value = Number(env[name] ?? fallback);
    if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a number >= 0`);
    return value;
  };
  if (env.TARGET_URL === undefined) throw new Error('TARGET_URL is required');
  return {
    url: new URL(env.TARGET_URL),
    bodyBytes: number('BODY_BYTES', 100),
    bodyKind: env.BODY_KIND === 'json' ? 'json' : 'bytes',
    concurrency: number('CONCURRENCY', 1),
    warmupSeconds: number('WARMUP_SECONDS', 1),
    seconds: number('SECONDS', 3),
  };
}

export function report(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}
