import { createHash, randomBytes } from 'node:crypto';

/**
 * Names of the queues the bridge keeps its callers' deferred calls in. Callers may not address them
 * (the edge refuses targets under this prefix), and the bridge's broker user needs to configure,
 * write and read them.
 */
export const BRIDGE_QUEUE_PREFIX = 'rpc-bridge.';

const RANDOM_BYTES = 16;
const TIME_BYTES = 6;
const ID_BYTES = RANDOM_BYTES + 2 * TIME_BYTES;
/** base64url of 28 bytes, unpadded. */
const ID_PATTERN = /^[A-Za-z0-9_-]{38}$/;

/** What a call id says of its call: when its timeout ends and until when its result is kept. */
export interface CallId {
  readonly id: string;
  /** Epoch ms: no reply after this (the request expired in the worker's queue). */
  readonly deadline: number;
  /** Epoch ms: after this the call is forgotten (404), reply or not. */
  readonly keptUntil: number;
}

/**
 * A new call id: 128 random bits (it cannot be guessed) and the two times every replica needs to
 * answer for it without asking anyone. Nobody can change the times: the id is hashed into the name of
 * the call's queue, so an altered id names a queue that does not exist.
 */
export function newCallId(deadline: number, keptUntil: number): CallId {
  const bytes = Buffer.allocUnsafe(ID_BYTES);
  randomBytes(RANDOM_BYTES).copy(bytes);
  bytes.writeUIntBE(deadline, RANDOM_BYTES, TIME_BYTES);
  bytes.writeUIntBE(keptUntil, RANDOM_BYTES + TIME_BYTES, TIME_BYTES);
  return { id: bytes.toString('base64url'), deadline, keptUntil };
}

/** The id's times, or undefined for anything that is not a call id. */
export function parseCallId(id: string): CallId | undefined {
  if (!ID_PATTERN.test(id)) return undefined;
  const bytes = Buffer.from(id, 'base64url');
  if (bytes.length !== ID_BYTES) return undefined;
  return {
    id,
    deadline: bytes.readUIntBE(RANDOM_BYTES, TIME_BYTES),
    keptUntil: bytes.readUIntBE(RANDOM_BYTES + TIME_BYTES, TIME_BYTES),
  };
}

/**
 * The queue a call's reply waits in, for this caller only: another caller's request for the same id
 * names another queue (which does not exist), so it learns nothing, not even that the id is in use.
 */
export function callQueueName(owner: string, callId: string): string {
  return `${BRIDGE_QUEUE_PREFIX}call.${digest(owner, callId)}`;
}

/**
 * The one-message queue whose first message claims this caller's idempotency key. The key's window is
 * part of the name: replicas configured with another IDEMPOTENCY_TTL_MS use other queues instead of
 * failing on the broker's check that a queue is declared again with the same arguments.
 */
export function keyQueueName(owner: string, key: string, ttlMs: number): string {
  return `${BRIDGE_QUEUE_PREFIX}key.${digest(owner, `claim:${ttlMs}:${key}`)}`;
}

/** The queue holding the record of the call a claimed key made (its id), for retries to find it. */
export function recordQueueName(owner: string, key: string, ttlMs: number): string {
  return `${BRIDGE_QUEUE_PREFIX}record.${digest(owner, `record:${ttlMs}:${key}`)}`;
}

/**
 * A request's fingerprint for an idempotency key: a retry must send the same request. `parts` are what
 * the message is made of besides its body (operation, target, properties, headers), in a fixed order.
 */
export function requestFingerprint(parts: readonly string[], body: Buffer): string {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(`${part.length}:${part}\n`);
  return hash.update(body).digest('base64url');
}

function digest(owner: string, name: string): string {
  // The owner's length first: no owner/name pair can be written as another's.
  return createHash('sha256').update(`${owner.length}:${owner}\n${name}`).digest('base64url');
}
