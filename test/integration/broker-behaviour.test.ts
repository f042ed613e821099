/**
 * What RabbitMQ 4.2 changed for an RPC bridge (direct reply-to became a "volatile queue" inside the
 * broker, and `mandatory` publishes to reply addresses route differently), checked on whichever broker
 * answers at AMQP_URL. Each test prints one `behaviour` line: docs/broker-portability.md tabulates them
 * per broker version. Where brokers differ, the test states what each one does, so that a broker that
 * changes fails it instead of leaving the table wrong.
 */
import { randomBytes } from 'node:crypto';
import amqp, { type Channel, type ChannelModel, type ConfirmChannel, type Message } from 'amqplib';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningWorker, startEchoWorker } from '../../examples/echo-worker.js';
import { PROBLEM_TYPE_PREFIX } from '../../src/http/problems.js';
import { REPLY_MODE, startTestBridge, waitFor } from '../helpers/bridge.js';
import { AMQP_URL, startRawWorker, uniqueName } from '../helpers/broker.js';
import { brokerAdmin, brokerVersion, drillIt, versionAtLeast } from '../helpers/broker-admin.js';
import { useEchoBridge } from '../helpers/fixture.js';

const admin = await brokerAdmin();
const version = await brokerVersion();
const broker = `${admin.product === 'lavinmq' ? 'LavinMQ' : 'RabbitMQ'} ${version}`;
/** RabbitMQ from 4.2 on: direct reply-to is a volatile queue inside the broker. */
const volatileReplyTo = admin.product === 'rabbitmq' && versionAtLeast(version, '4.2');

function behaviour(what: string, observed: string): void {
  console.info(`behaviour on ${broker} (${REPLY_MODE} mode): ${what}: ${observed}`);
}

const fixture = useEchoBridge();

/** One connection playing a requester on direct reply-to, one playing a worker replying in confirm mode. */
interface ReplyScene {
  readonly requester: ChannelModel;
  readonly requesterChannel: Channel;
  /** Replies the requester received. */
  readonly received: string[];
  readonly worker: ChannelModel;
  readonly workerChannel: ConfirmChannel;
  /** Replies the broker returned to the worker (`basic.return`), as `body:code`. */
  readonly returned: string[];
  /** Set when the broker closed the worker's connection or channel, with its reason. */
  readonly lost: string | undefined;
  /** The reply address the broker gave the worker for a request of the requester. */
  readonly replyTo: string;
  close(): Promise<void>;
}

async function replyScene(): Promise<ReplyScene> {
  const queue = uniqueName('scene');
  const requester = await amqp.connect(AMQP_URL);
  requester.on('error', () => undefined);
  const worker = await amqp.connect(AMQP_URL);
  const close = async () => {
    await requester.close().catch(() => undefined);
    await worker.close().catch(() => undefined);
  };
  try {
    const requesterChannel = await requester.createChannel();
    requesterChannel.on('error', () => undefined);
    const received: string[] = [];
    await requesterChannel.consume('amq.rabbitmq.reply-to', (message) => received.push(String(message?.content)), {
      noAck: true,
    });
    const workerChannel = await worker.createConfirmChannel();
    const seen: { lost: string | undefined; returned: string[] } = { lost: undefined, returned: [] };
    worker.on('error', (err: Error) => {
      seen.lost ??= err.message;
    });
    workerChannel.on('error', (err: Error) => {
      seen.lost ??= err.message;
    });
    workerChannel.on('close', () => {
      seen.lost ??= 'channel closed';
    });
    workerChannel.on('return', (message: Message) =>
      seen.returned.push(`${message.content}:${(message.fields as { replyCode?: number }).replyCode}`),
    );
    await workerChannel.assertQueue(queue, { exclusive: true });
    requesterChannel.sendToQueue(queue, Buffer.from('request'), { replyTo: 'amq.rabbitmq.reply-to' });
    const got: { request: Message | undefined } = { request: undefined };
    await waitFor(
      async () => {
        got.request = (await workerChannel.get(queue, { noAck: true })) || undefined;
        return got.request !== undefined;
      },
      5_000,
      'the request to reach the worker',
    );
    return {
      requester,
      requesterChannel,
      received,
      worker,
      workerChannel,
      returned: seen.returned,
      get lost() {
        return seen.lost;
      },
      replyTo: String(got.request?.properties.replyTo),
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Publishes one reply and resolves with the broker's confirm: `ack`, `nack`, or `lost` (the channel went). */
function reply(scene: ReplyScene, to: string, body: string, mandatory: boolean): Promise<'ack' | 'nack' | 'lost'> {
  return new Promise((settle) => {
    try {
      scene.workerChannel.publish('', to, Buffer.from(body), { mandatory }, (err: unknown) => {
        if (err === null || err === undefined) settle('ack');
        else settle(scene.lost === undefined ? 'nack' : 'lost');
      });
    } catch {
      settle('lost');
    }
  });
}

/** True when the worker's connection and channel still work: a message goes through its own queue. */
async function workerStillWorks(scene: ReplyScene): Promise<boolean> {
  if (scene.lost !== undefined) return false;
  const queue = uniqueName('still');
  await scene.workerChannel.assertQueue(queue, { exclusive: true });
  await new Promise((done) => scene.workerChannel.sendToQueue(queue, Buffer.from('ping'), {}, done));
  const back = await scene.workerChannel.get(queue, { noAck: true });
  return back !== false && String(back.content) === 'ping';
}

/** A short pause for a `basic.return`, which the broker sends before the confirm, to be seen by amqplib. */
const settleReturns = () => new Promise((resolve) => setTimeout(resolve, 100));

describe('direct reply-to', () => {
  it('carries many requests in flight on one reply channel, each reply to its own request', async () => {
    const inFlight = 300;
    const queue = uniqueName('held');
    // Holds every request until all of them are in flight, then answers them last first.
    const held: Array<() => void> = [];
    await startRawWorker(fixture.broker, queue, (message, send) => {
      held.push(() => send(message.content, { contentType: 'text/plain' }));
      if (held.length === inFlight) for (const answer of held.reverse()) answer();
    });
    const one = await startTestBridge({ AMQP_CHANNELS: '1' });
    try {
      const started = Date.now();
      const bodies = Array.from({ length: inFlight }, (_, i) => `request ${i} ${randomBytes(4).toString('hex')}`);
      const responses = await Promise.all(
        bodies.map((body) =>
          request(one.baseUrl)
            .post(`/rpc/${queue}`)
            .set('Content-Type', 'text/plain')
            .set('Amqp-Timeout', '15000')
            .send(body),
        ),
      );
      expect(responses.map((res) => res.status)).toEqual(bodies.map(() => 200));
      expect(responses.map((res) => res.text)).toEqual(bodies);
      expect(one.bridge.rpc.inFlightCount).toBe(0);
      expect(await one.metric('amqp_channel_closes_total', {}, { absentIsZero: true })).toBe(0);
      behaviour(
        `${inFlight} requests in flight on one reply channel`,
        `all ${inFlight} answered 200 with their own body in ${Date.now() - started} ms`,
      );
    } finally {
      await one.close();
    }
  });

  it('delivers a reply published with mandatory to a live address (RabbitMQ 3.x also returns it: 312 NO_ROUTE)', async () => {
    const scene = await replyScene();
    try {
      expect(await reply(scene, scene.replyTo, 'live', true)).toBe('ack');
      await waitFor(() => scene.received.includes('live'), 5_000, 'the reply to arrive');
      await settleReturns();
      // Before 4.2, RabbitMQ routed a reply to no queue, so `mandatory` returned it although it was delivered.
      const spuriousReturn = admin.product === 'rabbitmq' && !volatileReplyTo;
      expect(scene.returned).toEqual(spuriousReturn ? ['live:312'] : []);
      expect(await workerStillWorks(scene)).toBe(true);
      behaviour(
        'mandatory reply to a live address',
        `delivered; ${scene.returned.length > 0 ? 'also returned 312 NO_ROUTE' : 'not returned'}`,
      );
    } finally {
      await scene.close();
    }
  });

  it('costs the replying worker nothing when the requester’s channel, then its connection, are gone', async () => {
    const scene = await replyScene();
    try {
      await scene.requesterChannel.close();
      const afterChannel = {
        plain: await reply(scene, scene.replyTo, 'channel gone', false),
        mandatory: await reply(scene, scene.replyTo, 'channel gone, mandatory', true),
      };
      await settleReturns();
      const returnedAfterChannel = scene.returned.splice(0);
      await scene.requester.close();
      const afterConnection = await reply(scene, scene.replyTo, 'connection gone, mandatory', true);
      await settleReturns();
      const returnedAfterConnection = scene.returned.splice(0);

      // Never a lost connection or channel, never a nack: the reply is dropped, and returned if
      // mandatory, except on RabbitMQ 4.2+, which drops it without a return.
      expect(afterChannel).toEqual({ plain: 'ack', mandatory: 'ack' });
      expect(afterConnection).toBe('ack');
      expect(returnedAfterChannel).toEqual(volatileReplyTo ? [] : ['channel gone, mandatory:312']);
      expect(returnedAfterConnection).toEqual(volatileReplyTo ? [] : ['connection gone, mandatory:312']);
      expect(await workerStillWorks(scene)).toBe(true);
      expect(scene.received).toEqual([]);
      behaviour(
        'reply to an address whose channel is gone',
        `worker keeps its connection and channel; confirmed (ack), dropped; mandatory: ${
          returnedAfterChannel.length > 0 ? 'returned 312 NO_ROUTE' : 'not returned'
        }`,
      );
    } finally {
      await scene.close();
    }
  });

  drillIt(
    admin,
    'reply to an address of a node the broker does not know',
    admin.product === 'rabbitmq' ? undefined : "LavinMQ's reply addresses name a consumer tag, not a node",
  )(
    'on an address of a node the broker does not know: RabbitMQ 3.10 closes the worker’s connection (541), 4.2+ does not',
    async () => {
      const scene = await replyScene();
      try {
        // A stopped cluster node's requester had such an address: the same one, naming another node.
        const elsewhere = addressOnAnotherNode(scene.replyTo);
        const confirm = await reply(scene, elsewhere, 'to a node that is gone', true);
        await settleReturns();
        if (volatileReplyTo) {
          expect(confirm).toBe('ack');
          expect(scene.returned).toEqual(['to a node that is gone:312']);
          expect(await workerStillWorks(scene)).toBe(true);
        } else {
          // RabbitMQ 3.10: {case_clause,error} in rabbit_channel:deliver_reply; the broker closes the
          // whole connection. Why the sample worker replies on connections of its own (reply-publisher.ts).
          await waitFor(() => scene.lost !== undefined, 5_000, 'the broker to close the worker connection');
          expect(confirm).toBe('lost');
          expect(scene.lost).toContain('541');
        }
        behaviour(
          'reply to an address of a node that is gone',
          scene.lost === undefined
            ? `worker keeps its connection; mandatory: ${scene.returned.length > 0 ? 'returned 312 NO_ROUTE' : 'not returned'}`
            : `the broker closes the worker's connection (${scene.lost})`,
        );
      } finally {
        await scene.close();
      }
    },
  );

  drillIt(
    admin,
    'the sample worker on a dead address',
    admin.product === 'rabbitmq' ? undefined : "LavinMQ's reply addresses name a consumer tag, not a node",
  )('the sample worker answers everyone else after a request whose address names a node that is gone', async () => {
    const scene = await replyScene();
    const queue = uniqueName('sample');
    let worker: RunningWorker | undefined;
    try {
      worker = await startEchoWorker({ url: AMQP_URL, queue, durable: false });
      scene.requesterChannel.sendToQueue(queue, Buffer.from('doomed'), {
        replyTo: addressOnAnotherNode(scene.replyTo),
        correlationId: 'doomed',
      });
      const running = worker;
      await waitFor(() => running.stats.received === 1, 5_000, 'the sample worker to take the request');
      const res = await request(fixture.bridge.baseUrl)
        .post(`/rpc/${queue}`)
        .set('Content-Type', 'text/plain')
        .send('next');
      expect(res.status).toBe(200);
      expect(res.text).toBe('next');
      // 3.10 takes a reply connection down on the dead address, and the worker drops that reply; 4.2+ takes it.
      expect(running.stats.repliesDropped).toBe(volatileReplyTo ? 0 : 1);
      expect(running.stats.replyConnectionsLost).toBe(volatileReplyTo ? 0 : 1);
      behaviour(
        'the sample worker (reply-publisher.ts) on that address',
        `answers the next request; reply connections lost ${running.stats.replyConnectionsLost}, replies dropped ${running.stats.repliesDropped}`,
      );
    } finally {
      await worker?.close();
      await scene.close();
    }
  });
});

/**
 * A RabbitMQ direct reply-to address, made to name another node: `amq.rabbitmq.reply-to.<pid>.<key>`,
 * where <pid> is the base64 of an Erlang pid whose node is `reply@<digits>` (a hash of the node name).
 */
function addressOnAnotherNode(address: string): string {
  const prefix = 'amq.rabbitmq.reply-to.';
  const [pid = '', key = ''] = address.startsWith(prefix) ? address.slice(prefix.length).split('.') : [];
  const term = Buffer.from(pid, 'base64').toString('latin1');
  const node = /reply@(\d+)/.exec(term)?.[1];
  if (node === undefined || key === '')
    throw new Error(`a reply address of a form this test does not know: ${address}`);
  const otherNode = node.replace(/\d/g, (digit) => String((Number(digit) + 1) % 10));
  return `${prefix}${Buffer.from(term.replace(`reply@${node}`, `reply@${otherNode}`), 'latin1').toString('base64')}.${key}`;
}

describe('a quorum request queue', () => {
  const queue = uniqueName('quorum');
  let worker: RunningWorker | undefined;
  beforeAll(async () => {
    // Durable, replicated; declared by the test, not the worker, so that requests can wait in it first.
    await fixture.broker.channel.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  });
  afterAll(async () => {
    await worker?.close();
    await fixture.broker.channel.deleteQueue(queue).catch(() => undefined);
  });

  it('serves RPCs, and drops a request that expired in it before any worker took it', async () => {
    const expired = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).set('Amqp-Timeout', '300').send('late');
    expect(expired.status).toBe(504);
    await new Promise((resolve) => setTimeout(resolve, 200));
    worker = await startEchoWorker({ url: AMQP_URL, queue, queueType: 'quorum' });
    const res = await request(fixture.bridge.baseUrl).post(`/rpc/${queue}`).set('Content-Type', 'text/plain').send('q');
    expect(res.status).toBe(200);
    expect(res.text).toBe('q');
    // The expired request never reached the worker: the broker honoured its `expiration`.
    expect(worker.stats.received).toBe(1);
    behaviour('quorum request queue', 'RPCs answered; a request past its expiration is dropped, never delivered');
  });
});

describe('a full queue with x-overflow: reject-publish', () => {
  for (const type of ['classic', 'quorum'] as const) {
    it(`answers 503 broker-rejected at once for a ${type} queue, once it is full`, async () => {
      const full = uniqueName(`full-${type}`);
      const { channel } = fixture.broker;
      await channel.assertQueue(full, {
        durable: type === 'quorum',
        arguments: {
          'x-max-length': 1,
          'x-overflow': 'reject-publish',
          ...(type === 'quorum' ? { 'x-queue-type': 'quorum' } : {}),
        },
      });
      try {
        // Nobody consumes: one request after another either waits in the queue (until its timeout)
        // or is refused at once, until the first refusal.
        const queued: Array<Promise<number>> = [];
        let refused: request.Response | undefined;
        for (let sent = 0; sent < 4 && refused === undefined; sent++) {
          let answered: request.Response | undefined;
          const answer = request(fixture.bridge.baseUrl)
            .post(`/rpc/${full}`)
            .set('Amqp-Timeout', '3000')
            .send(`${sent}`);
          const started = Date.now();
          const done = answer.then((res) => {
            answered = res;
            return res.status;
          });
          const inQueue = queued.length + 1;
          await waitFor(
            async () => answered !== undefined || (await channel.checkQueue(full)).messageCount === inQueue,
            2_500,
            'the request to be queued or refused',
          );
          if (answered === undefined) queued.push(done);
          else {
            refused = answered;
            expect(Date.now() - started).toBeLessThan(1_000);
          }
        }
        expect(refused?.status).toBe(503);
        expect(refused?.body.type).toBe(`${PROBLEM_TYPE_PREFIX}broker-rejected`);
        // A classic queue refuses the second message; RabbitMQ's quorum queue (3.10 and 4.3 alike) takes
        // one past x-max-length first: it refuses only once it is over the limit.
        const takes = type === 'quorum' && admin.product === 'rabbitmq' ? 2 : 1;
        expect(queued.length).toBe(takes);
        expect(await Promise.all(queued)).toEqual(queued.map(() => 504));
        behaviour(
          `x-overflow reject-publish, ${type} queue, x-max-length 1`,
          `${queued.length} request(s) queued, the next answered 503 broker-rejected at once`,
        );
      } finally {
        await channel.deleteQueue(full).catch(() => undefined);
      }
    });
  }
});
