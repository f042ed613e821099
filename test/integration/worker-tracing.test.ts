import type { ConsumeMessage } from 'amqplib';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Child, startChild } from '../../bench/lib/processes.js';
import { startEchoWorker } from '../../examples/echo-worker.js';
import { AMQP_URL, connectTestBroker, type TestBroker, uniqueName } from '../helpers/broker.js';
import { closeAll } from '../helpers/fixture.js';
import {
  attributes,
  CONSUMER,
  OtlpReceiver,
  type OtlpSpan,
  onlyOfKind,
  PRODUCER,
  SERVER,
  STATUS_ERROR,
} from '../helpers/otlp-receiver.js';
import { startTracedBridge, type TracedBridge } from '../helpers/traced-bridge.js';

const CALLER_SPAN = '00f067aa0ba902b7';
const WORKER_SERVICE = 'echo-worker-under-test';

const receiver = new OtlpReceiver();
const queue = uniqueName('traced-worker');
let traced: TracedBridge | undefined;
let worker: Child | undefined;
let broker: TestBroker | undefined;

beforeAll(async () => {
  const endpoint = await receiver.start();
  broker = await connectTestBroker();
  traced = await startTracedBridge(endpoint);
  // The sample worker as it is run (`tsx examples/echo-worker.ts`), with nothing but OTEL_* to trace.
  worker = startChild(process.execPath, ['--import', 'tsx', 'examples/echo-worker.ts'], {
    AMQP_URL,
    RPC_QUEUE: queue,
    QUEUE_DURABLE: 'false',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_BSP_SCHEDULE_DELAY: '20',
    OTEL_SERVICE_NAME: WORKER_SERVICE,
  });
  await worker.waitForLine(/consuming/, 30_000);
});

afterAll(async () => {
  await closeAll([traced, { close: async () => worker?.stop() }, broker, receiver]);
});

function bridgeOf(): TracedBridge {
  if (traced === undefined) throw new Error('the bridge is used before beforeAll has started it');
  return traced;
}

/** A span's id and its parent's, for the printed trace. */
const ids = (span: OtlpSpan) => `span ${span.spanId}  parent ${span.parentSpanId}`;

/**
 * Asks the worker directly, as the bridge would (direct reply-to), so that the test sees the reply's
 * own headers: the bridge does not pass a reply's `traceparent` on to its HTTP caller.
 */
async function askWorker(to: string, headers: Record<string, string>): Promise<ConsumeMessage> {
  if (broker === undefined) throw new Error('no broker connection');
  const channel = await broker.connection.createChannel();
  try {
    const reply = new Promise<ConsumeMessage>((resolve) => {
      void channel.consume(
        'amq.rabbitmq.reply-to',
        (message) => {
          if (message !== null) resolve(message);
        },
        { noAck: true },
      );
    });
    // Consuming before publishing: direct reply-to refuses a publish without a consumer.
    await new Promise((resolve) => setTimeout(resolve, 50));
    channel.sendToQueue(to, Buffer.from('direct'), {
      replyTo: 'amq.rabbitmq.reply-to',
      correlationId: 'direct-1',
      headers,
    });
    return await reply;
  } finally {
    await channel.close().catch(() => undefined);
  }
}

describe('one trace from the HTTP caller to the sample worker', () => {
  it('caller → bridge server span → producer span → the worker’s consumer span, exported by both processes', async () => {
    const trace = '5ca1ab1e'.repeat(4);
    const res = await request(bridgeOf().baseUrl)
      .post(`/rpc/${queue}`)
      .set('traceparent', `00-${trace}-${CALLER_SPAN}-01`)
      .set('Amqp-Message-Id', 'traced-1')
      .set('Content-Type', 'text/plain')
      .send('hello');
    expect(res.status).toBe(200);
    expect(res.text).toBe('hello');

    const spans = await receiver.waitForSpans(trace, 3);
    expect(spans).toHaveLength(3);
    const server = onlyOfKind(spans, SERVER);
    const producer = onlyOfKind(spans, PRODUCER);
    const consumer = onlyOfKind(spans, CONSUMER);
    expect(server).toMatchObject({ name: 'POST /rpc/:queue', traceId: trace, parentSpanId: CALLER_SPAN });
    expect(producer).toMatchObject({ name: `send ${queue}`, traceId: trace, parentSpanId: server.spanId });
    // The worker continues the trace as the producer span's child, in a process and service of its own.
    expect(consumer).toMatchObject({
      name: `process ${queue}`,
      kind: CONSUMER,
      traceId: trace,
      parentSpanId: producer.spanId,
      service: WORKER_SERVICE,
    });
    expect(server.service).not.toBe(WORKER_SERVICE);
    expect(attributes(consumer)).toMatchObject({
      'messaging.system': 'rabbitmq',
      'messaging.operation.type': 'process',
      'messaging.operation.name': 'process',
      'messaging.destination.name': queue,
      'messaging.rabbitmq.destination.routing_key': queue,
      // The same correlation id the bridge's producer span names: one conversation.
      'messaging.message.conversation_id': attributes(producer)['messaging.message.conversation_id'],
      'messaging.message.id': 'traced-1',
      'messaging.message.body.size': 5,
      'amqp_rpc_bridge.outcome': 'replied',
    });
    expect(attributes(consumer)['messaging.message.conversation_id']).toMatch(/\S/);
    expect(consumer.status?.code ?? 0).not.toBe(STATUS_ERROR);
    const started = (span: OtlpSpan) => BigInt(span.startTimeUnixNano ?? 0);
    expect(started(consumer)).toBeGreaterThanOrEqual(started(producer));

    const rows: Array<[string, string, string]> = [
      ['caller', '', `span ${CALLER_SPAN}`],
      ['└ SERVER', server.name, `${ids(server)}  status ${res.status}  service ${server.service}`],
      ['  └ PRODUCER', producer.name, `${ids(producer)}  outcome ${attributes(producer)['amqp_rpc_bridge.outcome']}`],
      [
        '    └ CONSUMER',
        consumer.name,
        `${ids(consumer)}  outcome ${attributes(consumer)['amqp_rpc_bridge.outcome']}  service ${consumer.service}`,
      ],
    ];
    const width = Math.max(...rows.map(([kind, name]) => `${kind} ${name}`.length));
    const lines = rows.map(([kind, name, rest]) => `  ${`${kind} ${name}`.padEnd(width)}  ${rest}`);
    console.log([`trace ${trace}`, ...lines].join('\n'));
  });

  it('puts its own span’s traceparent on the reply, sampled or not as the request was', async () => {
    const sampledTrace = 'feed'.repeat(8);
    const reply = await askWorker(queue, {
      traceparent: `00-${sampledTrace}-${CALLER_SPAN}-01`,
      tracestate: 'vendor=1',
    });
    const [consumer] = await receiver.waitForSpans(sampledTrace, 1);
    expect(consumer).toMatchObject({ kind: CONSUMER, parentSpanId: CALLER_SPAN });
    expect(reply.properties.headers?.traceparent).toBe(`00-${sampledTrace}-${consumer?.spanId}-01`);
    expect(reply.properties.headers?.tracestate).toBe('vendor=1');
    expect(reply.properties.correlationId).toBe('direct-1');

    // Not sampled upstream: the trace goes on (a fresh span id, flag 00), but nothing is exported.
    const unsampledTrace = 'deaf'.repeat(8);
    const unsampled = await askWorker(queue, { traceparent: `00-${unsampledTrace}-${CALLER_SPAN}-00` });
    expect(unsampled.properties.headers?.traceparent).toMatch(new RegExp(`^00-${unsampledTrace}-[0-9a-f]{16}-00$`));
    expect(unsampled.properties.headers?.traceparent).not.toContain(CALLER_SPAN);
    // A sampled request after it is exported, so the unsampled one had its chance to be.
    await askWorker(queue, { traceparent: `00-${'beef'.repeat(8)}-${CALLER_SPAN}-01` });
    await receiver.waitForSpans('beef'.repeat(8), 1);
    expect(receiver.inTrace(unsampledTrace)).toEqual([]);
  });
});

describe('the sample worker without OTEL_*', () => {
  it('puts no trace context on its reply and exports nothing', async () => {
    const untracedQueue = uniqueName('untraced-worker');
    const untraced = await startEchoWorker({ url: AMQP_URL, queue: untracedQueue, durable: false });
    try {
      const trace = 'cafe'.repeat(8);
      const res = await request(bridgeOf().baseUrl)
        .post(`/rpc/${untracedQueue}`)
        .set('traceparent', `00-${trace}-${CALLER_SPAN}-01`)
        .send('x');
      expect(res.status).toBe(200);
      const reply = await askWorker(untracedQueue, { traceparent: `00-${trace}-${CALLER_SPAN}-01` });
      expect(reply.properties.headers?.worker).toBeDefined();
      expect(reply.properties.headers?.traceparent).toBeUndefined();
      // The bridge's two spans only: the untraced worker adds none.
      await receiver.waitForSpans(trace, 2);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(
        receiver
          .inTrace(trace)
          .map((span) => span.kind)
          .sort(),
      ).toEqual([SERVER, PRODUCER].sort());
    } finally {
      await untraced.close();
    }
  });
});
