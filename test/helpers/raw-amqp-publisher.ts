/**
 * An AMQP 0-9-1 publisher written frame by frame, for messages no client library would encode: a
 * header table nested thousands deep, or one whose lengths do not add up. Enough of the protocol to
 * log in (PLAIN), open one channel and publish; it reads back only the methods it waits for.
 */
import { connect, type Socket } from 'node:net';

const FRAME_METHOD = 1;
const FRAME_HEADER = 2;
const FRAME_BODY = 3;
const FRAME_END = 0xce;
/** Basic properties' flag bits (AMQP 0-9-1, 4.2.6.1), in the order the properties are written. */
const HEADERS_FLAG = 1 << 13;
const CORRELATION_ID_FLAG = 1 << 10;

const u16 = (value: number) => Buffer.from([value >> 8, value & 0xff]);
const u32 = (value: number) => {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
};
const shortString = (text: string) => Buffer.concat([Buffer.from([Buffer.byteLength(text)]), Buffer.from(text)]);
const longString = (text: string) => Buffer.concat([u32(Buffer.byteLength(text)), Buffer.from(text)]);
const frame = (type: number, channel: number, payload: Buffer) =>
  Buffer.concat([Buffer.from([type]), u16(channel), u32(payload.length), payload, Buffer.from([FRAME_END])]);
const method = (classId: number, methodId: number, args: Buffer) =>
  frame(FRAME_METHOD, 1, Buffer.concat([u16(classId), u16(methodId), args]));

/** Message properties with a correlation id and `table` as the raw bytes of the headers table. */
export function propertiesWithRawHeaders(table: Buffer, correlationId: string): Buffer {
  return Buffer.concat([u16(HEADERS_FLAG | CORRELATION_ID_FLAG), u32(table.length), table, shortString(correlationId)]);
}

/** A table of one field, `a`, holding a table that holds one ... `depth` deep. */
export function nestedTable(depth: number): Buffer {
  let inner = Buffer.alloc(0);
  for (let level = 0; level < depth; level++)
    inner = Buffer.concat([Buffer.from('\x01aF', 'latin1'), u32(inner.length), inner]);
  return inner;
}

export class RawAmqpPublisher {
  private received = Buffer.alloc(0);
  private readonly waiting: Array<{ classId: number; methodId: number; found: () => void }> = [];

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.read(chunk));
    socket.on('error', () => undefined);
  }

  static async open(url: string): Promise<RawAmqpPublisher> {
    const { hostname, port, username, password, pathname } = new URL(url);
    const socket = connect(Number(port || 5672), hostname);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const publisher = new RawAmqpPublisher(socket);
    const user = decodeURIComponent(username || 'guest');
    const secret = decodeURIComponent(password || 'guest');
    const vhost = pathname.length > 1 ? decodeURIComponent(pathname.slice(1)) : '/';
    socket.write('AMQP\x00\x00\x09\x01', 'latin1');
    await publisher.expect(10, 10); // connection.start
    socket.write(
      frame(
        FRAME_METHOD,
        0,
        Buffer.concat([
          u16(10),
          u16(11),
          u32(0),
          shortString('PLAIN'),
          longString(`\0${user}\0${secret}`),
          shortString('en_US'),
        ]),
      ),
    );
    await publisher.expect(10, 30); // connection.tune
    socket.write(frame(FRAME_METHOD, 0, Buffer.concat([u16(10), u16(31), u16(1), u32(131_072), u16(0)])));
    socket.write(
      frame(FRAME_METHOD, 0, Buffer.concat([u16(10), u16(40), shortString(vhost), shortString(''), Buffer.from([0])])),
    );
    await publisher.expect(10, 41); // connection.open-ok
    socket.write(method(20, 10, shortString('')));
    await publisher.expect(20, 11); // channel.open-ok
    return publisher;
  }

  /** basic.publish to `exchange` with `properties` as they are (flags first), then the body. */
  publish(exchange: string, routingKey: string, properties: Buffer, body: Buffer): void {
    this.socket.write(
      method(60, 40, Buffer.concat([u16(0), shortString(exchange), shortString(routingKey), Buffer.from([0])])),
    );
    const size = Buffer.alloc(8);
    size.writeBigUInt64BE(BigInt(body.length));
    this.socket.write(frame(FRAME_HEADER, 1, Buffer.concat([u16(60), u16(0), size, properties])));
    if (body.length > 0) this.socket.write(frame(FRAME_BODY, 1, body));
  }

  close(): void {
    this.socket.destroy();
  }

  private expect(classId: number, methodId: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${classId}.${methodId} from the broker`)), 5_000);
      this.waiting.push({
        classId,
        methodId,
        found: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }

  private read(chunk: Buffer): void {
    this.received = Buffer.concat([this.received, chunk]);
    while (this.received.length >= 8) {
      const size = this.received.readUInt32BE(3);
      if (this.received.length < size + 8) return;
      const type = this.received[0];
      const payload = this.received.subarray(7, 7 + size);
      this.received = this.received.subarray(size + 8);
      if (type !== FRAME_METHOD) continue;
      const at = this.waiting.findIndex(
        (wait) => wait.classId === payload.readUInt16BE(0) && wait.methodId === payload.readUInt16BE(2),
      );
      if (at !== -1) this.waiting.splice(at, 1)[0]?.found();
    }
  }
}
