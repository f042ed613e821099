import { randomBytes } from 'node:crypto';

/** The largest body the bench sends (its memory row): the targets with a body limit are given room for it. */
export const LARGEST_BODY_BYTES = 16 * 1024 * 1024;

/** `bytes`: opaque octets, as the bridge carries them. `json`: for peers that only carry JSON (micromq). */
export type BodyKind = 'bytes' | 'json';

export interface RequestBody {
  readonly body: Buffer;
  readonly contentType: string;
}

/** A request body of exactly `bytes` bytes, of the kind the target under test can echo. */
export function makeBody(bytes: number, kind: BodyKind): RequestBody {
  if (kind === 'bytes') return { body: randomBytes(bytes), contentType: 'application/octet-stream' };
  // {"pad":"xxx"}: 10 bytes of JSON around the padding. JSON.stringify gives it back byte for byte.
  const pad = 'x'.repeat(Math.max(0, bytes - 10));
  return { body: Buffer.from(JSON.stringify({ pad })), contentType: 'application/json' };
}
