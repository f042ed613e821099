/**
 * How the sample worker publishes its replies: on connections of their own, in confirm mode, so that
 * a reply to a dead address cannot take the worker down. Needed on RabbitMQ 3.10 only, of the brokers
 * tested: RabbitMQ 4.3 (which reimplemented direct reply-to in 4.2) and LavinMQ 2.9 drop such a reply,
 * or return it when it is mandatory, and the worker keeps its connection (test/integration/
 * broker-behaviour.test.ts and, on a real cluster, test/cluster/dead-reply-address.test.ts). It stays
 * because the sample runs on 3.10 too; a worker for 4.x or LavinMQ alone may reply on the channel it
 * consumes on.
 *
 * On RabbitMQ 3.10 a reply to a direct reply-to address whose requester was connected to a node that
 * has since stopped crashes the publishing channel (`{case_clause,error}` in
 * rabbit_channel:deliver_reply), and the broker closes that channel's whole connection (541
 * INTERNAL_ERROR). Nothing tells a worker beforehand that an address is dead (it must treat addresses
 * as opaque), so the publish itself is the test. On the consuming connection that would hand every
 * unacked request back to the queue, to crash the next worker in turn.
 *
 * Here a crash costs one reply connection, and never the one carrying everybody's replies:
 * - `main` carries replies pipelined, but only to addresses that have proven themselves: one reply
 *   went through alone on a spare. A bridge channel's address is stable, so that is one reply per
 *   channel and worker.
 * - Two spares stand by and try unproven addresses, one reply alone on each, freshest request first
 *   (a live bridge keeps sending; a dead one's requests are older, or redelivered). A reply that brings its spare
 *   down alone has a dead address: it, and any later reply to that address, is dropped unpublished.
 *   Its caller was answered 502 when its node went.
 * - When main goes down anyway (an address it trusted died with its node), an idle spare takes over
 *   at once, since right after a node loss opening a connection can take the broker seconds; every
 *   address must prove itself again; lost connections are replaced in the background.
 */
import { hostname } from 'node:os';
import amqp, { type ChannelModel, type ConfirmChannel, type Options } from 'amqplib';

export interface ReplyStats {
  /** Times a reply connection was lost (and replaced). */
  replyConnectionsLost: number;
  /** Replies dropped because their address is dead. */
  repliesDropped: number;
}

/**
 * What became of a reply: `published` (the broker confirmed it), `nacked` (the broker refused it;
 * nothing to retry), or `dropped` unpublished because its address is dead.
 */
export type ReplyFate = 'published' | 'nacked' | 'dropped';

interface Reply {
  readonly to: string;
  /** When its request arrived (0 if redelivered): the freshest request's address is tried first. */
  readonly receivedAt: number;
  readonly content: Buffer;
  readonly options: Options.Publish;
  readonly settle: (fate: ReplyFate) => void;
  readonly abandon: (err: Error) => void;
}

interface Link {
  readonly model: ChannelModel;
  readonly channel: ConfirmChannel;
  readonly unconfirmed: Set<Reply>;
  closed: boolean;
}

const SPARES = 2;
/** A request older than this (or redelivered) is likelier to come from a requester that is gone. */
const STALE_MS = 1_000;
/** How long a dead address is remembered: past it, every request that named it has expired. */
const DEAD_FOR_MS = 10 * 60_000;
/** Addresses remembered, dead or proven, at most (the oldest are forgotten first). */
const MAX_REMEMBERED = 10_000;

export class ReplyPublisher {
  private main: Link | undefined;
  private readonly spares: Link[] = [];
  private opening = 0;
  /** Replies waiting for a link, or for their address to prove itself; in arrival order. */
  private readonly waiting: Reply[] = [];
  /** Addresses a reply went through alone to since main was last lost. */
  private readonly proven = new Map<string, number>();
  private readonly dead = new Map<string, number>();
  /** Replies out alone on a spare to try their addresses, by spare. */
  private readonly trials = new Map<Link, Reply>();
  private stopped = false;

  private constructor(
    private readonly url: string,
    private readonly stats: ReplyStats,
    /** Called when no reply connection can be opened: the worker gives up and is restarted. */
    private readonly onFatal: () => void,
  ) {}

  static async open(url: string, stats: ReplyStats, onFatal: () => void): Promise<ReplyPublisher> {
    const publisher = new ReplyPublisher(url, stats, onFatal);
    publisher.main = await publisher.openLink();
    publisher.replenish();
    return publisher;
  }

  /**
   * Resolves once the broker has taken the reply (or refused it), or it was dropped as undeliverable.
   * `receivedAt`: when its request arrived, or 0 for a redelivered one (whose requester is likelier
   * to be gone).
   */
  send(to: string, content: Buffer, options: Options.Publish, receivedAt = Date.now()): Promise<ReplyFate> {
    if (this.stopped) return Promise.reject(new Error('the worker is closing'));
    return new Promise((settle, abandon) => {
      this.waiting.push({ to, receivedAt, content, options, settle, abandon });
      this.flush();
    });
  }

  /** Waits (at most `timeoutMs`) until every reply handed over is confirmed or dropped. */
  async drain(timeoutMs: number): Promise<void> {
    const links = () => [this.main, ...this.spares];
    const busy = () => this.waiting.length + links().reduce((sum, link) => sum + (link?.unconfirmed.size ?? 0), 0);
    const deadline = Date.now() + timeoutMs;
    while (busy() > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  }

  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const reply of this.waiting.splice(0)) {
      reply.abandon(new Error('the worker closed before this reply went out'));
    }
    const links = [this.main, ...this.spares.splice(0)];
    this.main = undefined;
    // Closing a link fails what it has not confirmed (amqplib calls back with an error).
    await Promise.all(links.map((link) => link?.model.close().catch(() => undefined)));
  }

  private flush(): void {
    if (this.main === undefined) {
      // An idle spare takes over from a lost main at once.
      const idle = this.spares.findIndex((link) => !this.trials.has(link));
      if (idle >= 0) [this.main] = this.spares.splice(idle, 1);
    }
    let unproven = false;
    for (let index = 0; index < this.waiting.length; ) {
      const reply = this.waiting[index] as Reply;
      if (this.isDead(reply.to)) {
        this.waiting.splice(index, 1);
        this.drop(reply);
      } else if (this.main !== undefined && this.proven.has(reply.to)) {
        this.waiting.splice(index, 1);
        this.publish(this.main, reply);
      } else {
        unproven ||= !this.proven.has(reply.to);
        index += 1;
      }
    }
    if (unproven) this.tryAddresses();
  }

  private tryAddresses(): void {
    // An unproven address is tried with one reply, alone on a spare, so that if the connection goes
    // down it can only be that reply's doing. The freshest request's address first; one whose
    // freshest request is stale only while another spare stays free for the live bridges' addresses.
    for (const spare of this.spares) {
      if (this.trials.has(spare) || spare.unconfirmed.size > 0) continue;
      const trying = new Set([...this.trials.values()].map((reply) => reply.to));
      let freshest: Reply | undefined;
      for (const reply of this.waiting) {
        if (this.proven.has(reply.to) || trying.has(reply.to)) continue;
        if (freshest !== undefined && reply.receivedAt <= freshest.receivedAt) continue;
        freshest = reply;
      }
      if (freshest === undefined) return;
      const idle = this.spares.filter((link) => !this.trials.has(link) && link.unconfirmed.size === 0).length;
      if (freshest.receivedAt < Date.now() - STALE_MS && idle < 2) return;
      this.waiting.splice(this.waiting.indexOf(freshest), 1);
      this.trials.set(spare, freshest);
      this.publish(spare, freshest);
    }
  }

  private publish(link: Link, reply: Reply): void {
    link.unconfirmed.add(reply);
    try {
      link.channel.sendToQueue(reply.to, reply.content, reply.options, (err: unknown) =>
        this.confirmed(link, reply, err),
      );
    } catch {
      // The channel closed under us and never took it: it waits for another link.
      link.unconfirmed.delete(reply);
      if (this.trials.get(link) === reply) this.trials.delete(link);
      this.waiting.unshift(reply);
    }
  }

  private confirmed(link: Link, reply: Reply, err: unknown): void {
    if (!link.unconfirmed.delete(reply)) return;
    const wasTrial = this.trials.get(link) === reply;
    if (wasTrial) this.trials.delete(link);
    const lost = err instanceof Error && err.message === 'channel closed';
    if (!lost) {
      // Confirmed (or nacked, which leaves nothing to retry): the address takes replies.
      if (wasTrial) this.remember(this.proven, reply.to);
      reply.settle(err instanceof Error ? 'nacked' : 'published');
      this.flush();
    } else if (this.stopped) {
      reply.abandon(err);
    } else if (wasTrial) {
      // Out alone, and the connection went down on it: a dead address. Its caller has its 502.
      this.remember(this.dead, reply.to);
      this.drop(reply);
    } else {
      // Unconfirmed when main went: it goes out again once its address has proven itself.
      this.waiting.unshift(reply);
    }
  }

  private linkLost(link: Link, reason: string): void {
    if (link.closed) return;
    link.closed = true;
    // amqplib has called back every unconfirmed publish by now; anything left waits for another link.
    for (const reply of link.unconfirmed) this.confirmed(link, reply, new Error('channel closed'));
    if (this.stopped) return;
    this.stats.replyConnectionsLost += 1;
    console.error(`echo worker: reply connection lost (${reason}); replacing it`);
    if (link === this.main) {
      // An address main trusted has died (its requester's node is gone): each must prove itself again.
      this.main = undefined;
      this.proven.clear();
    }
    const spare = this.spares.indexOf(link);
    if (spare >= 0) this.spares.splice(spare, 1);
    this.replenish();
    this.flush();
  }

  /** Opens links until there are main and its spares; gives the worker up if main cannot be had. */
  private replenish(attempt = 1): void {
    const missing = 1 + SPARES - ((this.main === undefined ? 0 : 1) + this.spares.length + this.opening);
    for (let i = 0; i < missing && !this.stopped; i++) {
      this.opening += 1;
      this.openLink().then(
        (link) => {
          this.opening -= 1;
          if (this.stopped) void link.model.close().catch(() => undefined);
          else if (this.main === undefined) this.main = link;
          else this.spares.push(link);
          this.flush();
        },
        (err: unknown) => {
          this.opening -= 1;
          if (this.main === undefined && this.spares.length === 0 && attempt >= 3) {
            console.error('echo worker: cannot open a reply connection:', err instanceof Error ? err.message : err);
            this.onFatal();
            return;
          }
          setTimeout(() => this.replenish(attempt + 1), 200 * attempt);
        },
      );
    }
  }

  private async openLink(): Promise<Link> {
    // noDelay: replies are small writes; without it each one after the first waits for a delayed ACK.
    const model = await amqp.connect(this.url, {
      noDelay: true,
      clientProperties: { connection_name: `echo-worker-replies@${hostname()}` },
    });
    let reason = 'closed';
    model.on('error', (err: Error) => {
      reason = err.message;
    });
    const channel = await model.createConfirmChannel().catch(async (err: unknown) => {
      await model.close().catch(() => undefined);
      throw err;
    });
    const link: Link = { model, channel, unconfirmed: new Set(), closed: false };
    channel.on('error', (err: Error) => {
      reason = err.message;
    });
    // A channel closed on its own (its connection still up) is treated like a lost connection.
    channel.on('close', () => {
      void model.close().catch(() => undefined);
      this.linkLost(link, reason);
    });
    model.on('close', () => this.linkLost(link, reason));
    return link;
  }

  private isDead(address: string): boolean {
    const since = this.dead.get(address);
    return since !== undefined && Date.now() - since < DEAD_FOR_MS;
  }

  private remember(addresses: Map<string, number>, address: string): void {
    addresses.delete(address);
    addresses.set(address, Date.now());
    for (const [oldest] of addresses) {
      if (addresses.size <= MAX_REMEMBERED) break;
      addresses.delete(oldest);
    }
  }

  private drop(reply: Reply): void {
    this.stats.repliesDropped += 1;
    reply.settle('dropped');
  }
}
