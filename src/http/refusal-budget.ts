import { unescape as percentDecoded } from 'node:querystring';
import { HttpProblem } from './problems.js';
import { type RpcTarget, SHORT_STRING_BYTES } from './request-mapping.js';

/**
 * The text of a channel.close is an AMQP short string too (SHORT_STRING_BYTES). The longest refusal of a
 * publish a broker writes, less the names it quotes: RabbitMQ's for topic
 * permissions, which quotes the routing key, the exchange, the vhost and the user.
 */
const LONGEST_REFUSAL_TEXT_BYTES = Buffer.byteLength(
  "ACCESS_REFUSED - write access to topic '' in exchange '' in vhost '' refused for user ''",
);

const DEFAULT_EXCHANGE_BYTES = Buffer.byteLength('amq.default');

/**
 * A broker that refuses a publish to an exchange (missing, internal, not writable) names the exchange in
 * the channel.close that refuses it. RabbitMQ 3 cuts a text over 255 bytes to fit; RabbitMQ 4 cuts it by
 * characters, so a non-ASCII one still does not fit, and LavinMQ does not cut it: either way the broker
 * closes the whole connection (541 INTERNAL_ERROR), and every call on it, instead of one channel. So a
 * request whose refusal could not fit is refused at the edge, whatever the broker would have answered.
 */
export class RefusalBudget {
  private readonly vhostBytes: number;
  private readonly userBytes: number;

  /** `urls` are the broker URLs the bridge logs in with: the longest vhost and user among them count. */
  constructor(urls: readonly string[]) {
    const logins = urls.map(loginNamesOf);
    this.vhostBytes = Math.max(...logins.map((login) => Buffer.byteLength(login.vhost)));
    this.userBytes = Math.max(...logins.map((login) => Buffer.byteLength(login.user)));
  }

  /** Bytes an exchange name and routing key may take together, publishing as `user` (default: the URLs'). */
  bytesFor(user?: string): number {
    const userBytes = user === undefined ? this.userBytes : Buffer.byteLength(user);
    return SHORT_STRING_BYTES - LONGEST_REFUSAL_TEXT_BYTES - this.vhostBytes - userBytes;
  }

  /** Throws 400 for a target whose refusal could not be written (for a queue, only with a very long user name). */
  check(target: RpcTarget, user?: string): void {
    // A refused publish to a queue quotes the default exchange by RabbitMQ's name for it, never the queue.
    const used =
      target.exchange === ''
        ? DEFAULT_EXCHANGE_BYTES
        : Buffer.byteLength(target.exchange) + Buffer.byteLength(target.routingKey);
    const budget = this.bytesFor(user);
    if (used <= budget) return;
    if (budget < DEFAULT_EXCHANGE_BYTES) {
      throw new HttpProblem(
        'invalid-request',
        `The broker user's name is too long for a broker to refuse a publish of this caller's in the ${SHORT_STRING_BYTES} ` +
          'bytes it has (with the vhost and the names it quotes; past that RabbitMQ 4 and LavinMQ drop the whole ' +
          `connection): the user name may have at most ${this.bytesFor('') - DEFAULT_EXCHANGE_BYTES} bytes here`,
        { target: target.label },
      );
    }
    throw new HttpProblem(
      'invalid-request',
      `The exchange name and routing key must together be at most ${budget} bytes of UTF-8 here (these are ` +
        `${used}): a broker refusing the publish quotes them with the vhost and the broker user in at most ${SHORT_STRING_BYTES} bytes, and past ` +
        'that RabbitMQ 4 and LavinMQ drop the whole connection',
      { target: target.label },
    );
  }
}

/** The vhost and user a broker URL logs in as, read as amqplib reads them (`/` and `guest` when absent). */
export function loginNamesOf(url: string): { readonly vhost: string; readonly user: string } {
  const parsed = new URL(url);
  const vhost = parsed.pathname.slice(1);
  return {
    vhost: vhost === '' ? '/' : percentDecoded(vhost),
    user: parsed.username === '' ? 'guest' : percentDecoded(parsed.username),
  };
}
