import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { HttpProblem } from './problems.js';
import type { RpcTarget } from './request-mapping.js';

export interface AccessOptions {
  readonly tokens: readonly string[];
  readonly allowedQueues: readonly string[] | undefined;
  readonly allowedExchanges: readonly string[] | undefined;
}

/** Who may call the bridge (bearer tokens) and what they may address (queue and exchange globs). */
export interface AccessPolicy {
  readonly requiresToken: boolean;
  /** Throws 401 unless the request carries one of the configured tokens (or none are configured). */
  authenticate(headers: IncomingHttpHeaders): void;
  /**
   * Throws 403 unless the target is on its route's allowlist. With neither list set, anything goes;
   * once one is set, the other route is closed unless its own list is set too: an exchange can route
   * to any queue, and the default exchange reaches every queue, so either route left open would
   * step around the other's list.
   */
  authorize(target: RpcTarget): void;
}

const CHALLENGE = 'Bearer realm="amqp-rpc-bridge"';

export function createAccessPolicy(options: AccessOptions): AccessPolicy {
  // Compare digests, not tokens: equal lengths for timingSafeEqual, and nothing about a token's
  // length or content leaks through how long a comparison takes.
  const digests = options.tokens.map(digest);
  const queues = options.allowedQueues?.map(globToRegExp);
  const exchanges = options.allowedExchanges?.map(globToRegExp);
  return {
    requiresToken: digests.length > 0,
    authenticate(headers) {
      if (digests.length === 0) return;
      const header = headers.authorization;
      const match = typeof header === 'string' ? /^Bearer ([^\s]+)$/i.exec(header) : null;
      if (match === null) {
        throw new HttpProblem('unauthorized', 'This bridge needs Authorization: Bearer <token>', {
          challenge: CHALLENGE,
        });
      }
      const offered = digest(match[1] as string);
      let accepted = false;
      // Every configured token is compared, whichever matches: the time taken says nothing.
      for (const known of digests) accepted = timingSafeEqual(known, offered) || accepted;
      if (!accepted) {
        throw new HttpProblem('unauthorized', 'The bearer token is not valid', {
          challenge: `${CHALLENGE}, error="invalid_token"`,
        });
      }
    },
    authorize(target) {
      if (queues === undefined && exchanges === undefined) return;
      const byQueue = target.exchange === '';
      const [patterns, name, what] = byQueue
        ? [queues, target.routingKey, 'queue']
        : [exchanges, target.exchange, 'exchange'];
      if (patterns === undefined) {
        const [setting, unset] = byQueue
          ? ['ALLOWED_EXCHANGES', 'ALLOWED_QUEUES']
          : ['ALLOWED_QUEUES', 'ALLOWED_EXCHANGES'];
        throw new HttpProblem(
          'forbidden',
          `This bridge allows only the targets on ${setting}; the ${byQueue ? 'queue' : 'exchange'} route is closed while ${unset} is unset`,
          { target: target.label },
        );
      }
      if (patterns.some((pattern) => pattern.test(name))) return;
      throw new HttpProblem('forbidden', `This bridge does not allow calls to ${what} "${name}"`, {
        target: target.label,
      });
    },
  };
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

/** `*` matches any run of characters, `?` one character; everything else is literal. */
export function globToRegExp(glob: string): RegExp {
  const source = glob
    .split('')
    .map((char) => (char === '*' ? '.*' : char === '?' ? '.' : char.replace(/[\\^$.|+()[\]{}]/g, '\\$&')))
    .join('');
  return new RegExp(`^${source}$`, 's');
}
