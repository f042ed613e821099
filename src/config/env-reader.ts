import { readFileSync } from 'node:fs';
import { ConfigError } from './config-error.js';

export type Env = Readonly<Record<string, string | undefined>>;

/**
 * The smallest frame a broker connection may use: a message's properties travel in one content header
 * frame, and a request's may take this much (32 KiB of Amqp-Header-*, the other properties, the
 * bridge's own headers). A larger header frame than the connection's frame_max ends the connection.
 */
export const MIN_FRAME_MAX_BYTES = 40 * 1024;

/** Reads variables, each checked with an error (ConfigError) that names it and never echoes a secret. */
export class EnvReader {
  constructor(private readonly env: Env) {}

  private raw(name: string): string | undefined {
    const value = this.env[name]?.trim();
    return value === undefined || value === '' ? undefined : value;
  }

  optionalString(name: string): string | undefined {
    return this.raw(name);
  }

  string(name: string, fallback: string): string {
    return this.raw(name) ?? fallback;
  }

  integer(name: string, fallback: number, min: number, max: number): number {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    if (!/^\d+$/.test(value)) {
      throw new ConfigError(`${name} must be a whole number, got ${JSON.stringify(value)}`);
    }
    const parsed = Number(value);
    if (parsed < min || parsed > max) {
      throw new ConfigError(`${name} must be between ${min} and ${max}, got ${value}`);
    }
    return parsed;
  }

  /** Comma-separated values; undefined when the variable is unset or empty. */
  list(name: string): readonly string[] | undefined {
    const value = this.raw(name);
    if (value === undefined) return undefined;
    const items = value
      .split(',')
      .map((item) => item.trim())
      .filter((item) => item !== '');
    if (items.length === 0) throw new ConfigError(`${name} lists nothing`);
    return Object.freeze(items);
  }

  /** Secrets from a comma-separated variable or a file with one per line (for mounted secrets). */
  tokens(name: string, fileName: string): readonly string[] {
    const inline = this.list(name) ?? [];
    const file = this.raw(fileName);
    let fromFile: string[] = [];
    if (file !== undefined) {
      try {
        fromFile = readFileSync(file, 'utf8')
          .split(/\r?\n/)
          .map((line) => line.trim())
          .filter((line) => line !== '' && !line.startsWith('#'));
      } catch (err) {
        throw new ConfigError(`${fileName} cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
      }
      if (fromFile.length === 0) throw new ConfigError(`${fileName} holds no token`);
    }
    const tokens = [...inline, ...fromFile];
    // Never echo a token: say only which variable is wrong.
    if (tokens.some((token) => token.length < 16)) {
      throw new ConfigError(`${name}/${fileName}: every token must be at least 16 characters`);
    }
    return Object.freeze(tokens);
  }

  boolean(name: string, fallback: boolean): boolean {
    const value = this.raw(name)?.toLowerCase();
    if (value === undefined) return fallback;
    if (value === 'true' || value === '1') return true;
    if (value === 'false' || value === '0') return false;
    throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(value)}`);
  }

  oneOf<const T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    const match = allowed.find((candidate) => candidate === value);
    if (match === undefined) {
      throw new ConfigError(`${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
    }
    return match;
  }

  /** AMQP_URLS, else AMQP_URL, each a comma-separated list of amqp:// or amqps:// URLs. */
  amqpUrls(listName: string, name: string, fallback: string): readonly string[] {
    const used = this.raw(listName) !== undefined ? listName : name;
    const urls = (this.raw(used) ?? fallback)
      .split(',')
      .map((url) => url.trim())
      .filter((url) => url !== '');
    if (urls.length === 0) throw new ConfigError(`${used} lists no URL`);
    urls.forEach((url, index) => {
      const which = urls.length > 1 ? `${used} (URL ${index + 1})` : used;
      let parsed: URL;
      try {
        parsed = new URL(url);
      } catch {
        // Never echo the value: it may hold a password.
        throw new ConfigError(`${which} is not a valid URL`);
      }
      if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
        throw new ConfigError(`${which} must start with amqp:// or amqps://, got ${parsed.protocol}//`);
      }
      const frameMax = parsed.searchParams.get('frameMax');
      // 0 leaves the frame size to the broker.
      if (frameMax !== null && Number(frameMax) !== 0 && !(Number(frameMax) >= MIN_FRAME_MAX_BYTES)) {
        throw new ConfigError(
          `${which} asks for frameMax=${frameMax}: a message's properties go in one frame (32 KiB of ` +
            `Amqp-Header-* and the rest), so ask for at least ${MIN_FRAME_MAX_BYTES}, or 0 for the broker's`,
        );
      }
    });
    return Object.freeze(urls);
  }
}
