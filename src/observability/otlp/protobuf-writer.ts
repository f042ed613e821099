/**
 * Protocol Buffers wire format, as much as OTLP needs, into one growing buffer that is reused from
 * one export to the next: the copy handed out by `take()` is the only allocation per export.
 */

export const WIRE = { varint: 0, fixed64: 1, lengthDelimited: 2, fixed32: 5 } as const;

const TWO_POW_32 = 0x1_0000_0000;
/** UTF-16 code units are at most 3 UTF-8 bytes: below this many, a string's length fits one byte. */
const ONE_BYTE_LENGTH_CHARS = 42;

export function varintSize(value: number): number {
  if (value < 0x80) return 1;
  if (value < 0x4000) return 2;
  if (value < 0x20_0000) return 3;
  if (value < 0x1000_0000) return 4;
  return 5;
}

export class ProtobufWriter {
  private buffer: Buffer;
  pos = 0;

  constructor(initialBytes = 64 * 1024) {
    this.buffer = Buffer.allocUnsafe(initialBytes);
  }

  /** The bytes written since `reset()`, copied out: the writer goes on to the next export. */
  take(): Uint8Array {
    return new Uint8Array(this.buffer.subarray(0, this.pos));
  }

  /** The bytes written since `reset()`, not copied: valid until the next write. */
  written(): Uint8Array {
    return this.buffer.subarray(0, this.pos);
  }

  reset(): void {
    this.pos = 0;
  }

  tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }

  /** A non-negative integer below 2^53, or a negative one as int64 (ten bytes, two's complement). */
  varint(value: number): void {
    this.reserve(10);
    const buffer = this.buffer;
    if (value >= 0 && value < TWO_POW_32) {
      let v = value >>> 0;
      while (v > 0x7f) {
        buffer[this.pos++] = (v & 0x7f) | 0x80;
        v >>>= 7;
      }
      buffer[this.pos++] = v;
      return;
    }
    let low: number;
    let high: number;
    if (value >= 0) {
      low = value >>> 0;
      high = Math.floor(value / TWO_POW_32) >>> 0;
    } else {
      const magnitude = -value;
      low = ~(magnitude >>> 0) >>> 0;
      high = ~(Math.floor(magnitude / TWO_POW_32) >>> 0) >>> 0;
      low = (low + 1) >>> 0;
      if (low === 0) high = (high + 1) >>> 0;
    }
    while (high > 0 || low > 0x7f) {
      buffer[this.pos++] = (low & 0x7f) | 0x80;
      low = ((low >>> 7) | (high << 25)) >>> 0;
      high >>>= 7;
    }
    buffer[this.pos++] = low;
  }

  fixed32(value: number): void {
    this.reserve(4);
    this.buffer.writeUInt32LE(value >>> 0, this.pos);
    this.pos += 4;
  }

  fixed64(low: number, high: number): void {
    this.reserve(8);
    this.buffer.writeUInt32LE(low >>> 0, this.pos);
    this.buffer.writeUInt32LE(high >>> 0, this.pos + 4);
    this.pos += 8;
  }

  double(value: number): void {
    this.reserve(8);
    this.buffer.writeDoubleLE(value, this.pos);
    this.pos += 8;
  }

  /** A length-delimited UTF-8 string (without its tag). */
  string(value: string): void {
    const length = value.length;
    if (length <= ONE_BYTE_LENGTH_CHARS) {
      this.reserve(1 + length * 3);
      const start = this.pos + 1;
      let ascii = true;
      for (let i = 0; i < length; i++) {
        const code = value.charCodeAt(i);
        if (code > 0x7f) {
          ascii = false;
          break;
        }
        this.buffer[start + i] = code;
      }
      const written = ascii ? length : this.buffer.write(value, start, 'utf8');
      this.buffer[this.pos] = written;
      this.pos = start + written;
      return;
    }
    const bytes = Buffer.byteLength(value, 'utf8');
    this.varint(bytes);
    this.reserve(bytes);
    this.pos += this.buffer.write(value, this.pos, bytes, 'utf8');
  }

  /**
   * A length-delimited byte string from its hex spelling (trace and span ids). What is not hex (the
   * SDK does not check a link's ids) is written as zero bytes: the length always holds.
   */
  hexBytes(hex: string): void {
    const bytes = hex.length >>> 1;
    this.varint(bytes);
    this.reserve(bytes);
    const written = this.buffer.write(hex, this.pos, bytes, 'hex');
    if (written < bytes) this.buffer.fill(0, this.pos + written, this.pos + bytes);
    this.pos += bytes;
  }

  bytes(value: Uint8Array): void {
    this.varint(value.length);
    this.reserve(value.length);
    this.buffer.set(value, this.pos);
    this.pos += value.length;
  }

  /** Bytes encoded once (a cached key): copied as they are. */
  raw(value: Uint8Array): void {
    this.reserve(value.length);
    this.buffer.set(value, this.pos);
    this.pos += value.length;
  }

  /**
   * Opens a length-delimited message, leaving `reserved` bytes for its length: a guess, as the length
   * is known only at `end`, which moves the message when it needs another number of bytes.
   * Returns where the length goes.
   */
  begin(reserved: number): number {
    this.reserve(reserved);
    const start = this.pos;
    this.pos += reserved;
    return start;
  }

  end(start: number, reserved: number): void {
    const contentStart = start + reserved;
    const length = this.pos - contentStart;
    const needed = varintSize(length);
    if (needed !== reserved) {
      this.reserve(needed - reserved);
      this.buffer.copyWithin(start + needed, contentStart, this.pos);
      this.pos += needed - reserved;
    }
    let at = start;
    let v = length;
    while (v > 0x7f) {
      this.buffer[at++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buffer[at] = v;
  }

  private reserve(bytes: number): void {
    if (this.pos + bytes <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.pos + bytes) size *= 2;
    const grown = Buffer.allocUnsafe(size);
    this.buffer.copy(grown, 0, 0, this.pos);
    this.buffer = grown;
  }
}
