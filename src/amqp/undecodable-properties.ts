import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * Set on a message's properties when amqplib could not decode them; the reason, as amqplib threw it.
 * The message still arrives, so the one call it answers fails and nothing else does.
 */
export const UNDECODABLE = Symbol('undecodable message properties');

/** Why a delivered message's properties could not be read, or undefined when they could. */
export function undecodableReason(properties: object): string | undefined {
  return (properties as { [UNDECODABLE]?: string })[UNDECODABLE];
}

interface Frame {
  readonly type: number;
  readonly channel: number;
  readonly payload: Buffer;
}
interface AmqplibConnection {
  rest: Buffer;
  maxFrameSize: number;
  recvFrame(): unknown;
}

const FRAME_HEADER = 2;
/** Basic properties: the flag of the headers table, the first property that is not a short string. */
const HEADERS_FLAG = 1 << 13;
const SHORT_STRING_FLAGS = [1 << 15, 1 << 14];

/**
 * amqplib decodes a message's header table as one recursive descent inside its frame reader, and a
 * throw there ends the whole connection: a reply whose table nests a few thousand deep (valid AMQP,
 * delivered by every broker) overflows the stack, and LavinMQ delivers tables whose lengths do not add
 * up. Either would let one worker, or anyone who can publish to the reply address, drop every call on
 * the connection. So the frame reader is wrapped: a content header that does not decode arrives with
 * its other properties (the correlation id, to answer the right call) and the reason, not the table.
 * Installed once, on amqplib's Connection (the package exports no way in: its file is loaded by path).
 */
export function guardPropertyDecoding(): void {
  const amqplibDir = dirname(createRequire(import.meta.url).resolve('amqplib'));
  const load = createRequire(join(amqplibDir, 'lib', 'connection.js'));
  const { Connection } = load('./connection.js') as { Connection: { prototype: AmqplibConnection } };
  const { parseFrame } = load('./frame.js') as { parseFrame(bytes: Buffer, max: number): Frame | false };
  const { decode } = load('./defs.js') as { decode(id: number, bytes: Buffer): Record<string | symbol, unknown> };
  const prototype = Connection.prototype;
  if ((prototype.recvFrame as { guarded?: boolean }).guarded) return;
  const recvFrame = prototype.recvFrame;

  const guarded = function (this: AmqplibConnection): unknown {
    const unread = this.rest;
    try {
      return recvFrame.call(this);
    } catch (err) {
      // Only a content header decodes a table a peer wrote; anything else fails as it did.
      const frame = parseFrame(unread, this.maxFrameSize);
      if (frame === false || frame.type !== FRAME_HEADER || frame.channel === 0) throw err;
      return contentHeaderWithoutTable(frame, err, decode);
    }
  };
  guarded.guarded = true;
  prototype.recvFrame = guarded;
}

/** The frame as amqplib's reader returns it, its properties decoded without the headers table. */
function contentHeaderWithoutTable(
  frame: Frame,
  err: unknown,
  decode: (id: number, bytes: Buffer) => Record<string | symbol, unknown>,
): unknown {
  const { payload } = frame;
  const id = payload.readUInt16BE(0);
  const size = Number(payload.readBigUInt64BE(4));
  const flagsAndFields = payload.subarray(12);
  let fields: Record<string | symbol, unknown>;
  try {
    fields = decode(id, withoutHeadersTable(flagsAndFields));
  } catch {
    // Not even the rest reads: a message nobody can be answered with (it is stray).
    fields = {};
  }
  fields.headers = {};
  fields[UNDECODABLE] = err instanceof Error ? err.message : String(err);
  return { id, channel: frame.channel, size, fields };
}

/** The properties with the headers table cut out and its flag cleared (the fields are positional). */
function withoutHeadersTable(flagsAndFields: Buffer): Buffer {
  const flags = flagsAndFields.readUInt16BE(0);
  if ((flags & HEADERS_FLAG) === 0) return flagsAndFields;
  let offset = 2;
  for (const flag of SHORT_STRING_FLAGS) if (flags & flag) offset += 1 + (flagsAndFields[offset] ?? 0);
  const tableEnd = offset + 4 + flagsAndFields.readUInt32BE(offset);
  const rebuilt = Buffer.concat([
    Buffer.alloc(2),
    flagsAndFields.subarray(2, offset),
    flagsAndFields.subarray(tableEnd),
  ]);
  rebuilt.writeUInt16BE(flags & ~HEADERS_FLAG, 0);
  return rebuilt;
}
