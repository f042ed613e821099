import type { ChannelModel } from 'amqplib';

/** What is needed of amqplib's socket: Node's cork/uncork. */
interface Corkable {
  cork(): void;
  uncork(): void;
}

/**
 * amqplib writes every frame to its socket as a write of its own: a message past 2 KiB is two
 * writes (method and header, then the body), and the publishes of one turn of the event loop are as
 * many writes again, each a system call that on loopback also runs the broker's side of TCP. Held
 * (corked) from a publish until the loop's next check phase, they go out as one writev.
 *
 * amqplib moves a channel's frames to the socket in a setImmediate that it schedules from a
 * process.nextTick after the publish; the uncork is scheduled from a later nextTick, so it runs after
 * that write in the same check phase. Were that order ever different, the uncork would only come
 * first and the frames go out unbatched, as before: nothing waits longer than one turn of the loop.
 *
 * The socket is amqplib's own (`connection.stream`, not in its types): without it, or without
 * cork, this does nothing.
 */
export type HoldWrites = () => void;

const byModel = new WeakMap<ChannelModel, HoldWrites>();

/** The hold for this connection (one per connection, shared by its channels). */
export function holdWritesOf(model: ChannelModel): HoldWrites {
  let hold = byModel.get(model);
  if (hold === undefined) {
    hold = makeHold(socketOf(model));
    byModel.set(model, hold);
  }
  return hold;
}

function socketOf(model: ChannelModel): Corkable | undefined {
  const stream = (model.connection as unknown as { stream?: Partial<Corkable> }).stream;
  return typeof stream?.cork === 'function' && typeof stream.uncork === 'function' ? (stream as Corkable) : undefined;
}

function makeHold(socket: Corkable | undefined): HoldWrites {
  if (socket === undefined) return () => {};
  let held = false;
  const release = (): void => {
    held = false;
    socket.uncork();
  };
  const releaseAfterAmqplib = (): void => {
    setImmediate(release);
  };
  return () => {
    if (held) return;
    held = true;
    socket.cork();
    process.nextTick(releaseAfterAmqplib);
  };
}
