import type { ConsumeMessage } from 'amqplib';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectTestBroker, startRawWorker, type TestBroker, uniqueName } from '../helpers/broker.js';
import { attributes, OtlpReceiver, PRODUCER, SERVER, STATUS_ERROR } from '../helpers/otlp-receiver.js';
import { startTracedBridge, type TracedBridge } from '../helpers/traced-bridge.js';

const CALLER_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const CALLER_SPAN = '00f067aa0ba902b7';

const receiver = new OtlpReceiver();
let endpoint = '';
let broker: TestBroker;
let traced: TracedBridge;
const worked = new Map<string, ConsumeMessage>();
const echo = uniqueName('traced-echo');
const silent = uniqueName('traced-silent');
// A queue of its own: its series has no exemplar yet, so the first sampled request gets one at once.
const exemplarEcho = uniqueName('traced-exemplars');

beforeAll(async () => {
  endpoint = await receiver.start();
  broker = await connectTestBroker();
  await startRawWorker(broker, echo, (message, reply) => {
    worked.set(String(message.properties.messageId), message);
    reply(message.content, {});
  });
  await startRawWorker(broker, exemplarEcho, (message, reply) => reply(message.content, {}));
  await broker.channel.assertQueue(silent, { durable: false, expires: 60_000 });
  traced = await startTracedBridge(endpoint, undefined);
});

afterAll(async () => {
  await traced?.close();
  await broker?.channel.deleteQueue(silent).catch(() => undefined);
  await broker?.close();
  await receiver.close();
});

const traceparentOf = (messageId: string) => String(worked.get(messageId)?.properties.headers?.traceparent);

describe('spans exported over OTLP', () => {
  it('a reply: a server span, child of the caller, and a producer span, parent of the worker', async () => {
    const res = await request(traced.baseUrl)
      .post(`/rpc/${echo}`)
      .set('traceparent', `00-${CALLER_TRACE}-${CALLER_SPAN}-01`)
      .set('tracestate', 'vendor=1')
      .set('Amqp-Message-Id', 'reply-1')
      .send('hello');
    expect(res.status).toBe(200);
    const { server, producer } = await receiver.waitForTrace(CALLER_TRACE, 2);
    expect(receiver.services.size).toBeGreaterThan(0);
    // OTLP's default encoding (http/protobuf), written by the SDK's exporter.
    expect([...receiver.encodings]).toEqual(['application/x-protobuf']);

    expect(server).toMatchObject({ name: 'POST /rpc/:queue', kind: SERVER, parentSpanId: CALLER_SPAN });
    // Sampled, with a remote parent; the caller's tracestate carried on.
    expect(server).toMatchObject({ flags: 0x301, traceState: 'vendor=1' });
    expect(producer).toMatchObject({ flags: 0x101 });
    expect(attributes(server)).toMatchObject({
      'http.request.method': 'POST',
      'http.route': '/rpc/:queue',
      'http.response.status_code': 200,
      'amqp_rpc_bridge.outcome': 'ok',
    });
    expect(server.status?.code ?? 0).not.toBe(STATUS_ERROR);

    expect(producer).toMatchObject({ name: `send ${echo}`, kind: PRODUCER, parentSpanId: server.spanId });
    expect(attributes(producer)).toMatchObject({
      'messaging.system': 'rabbitmq',
      'messaging.operation.type': 'send',
      'messaging.operation.name': 'publish',
      'messaging.destination.name': '',
      'messaging.rabbitmq.destination.routing_key': echo,
      'messaging.message.conversation_id': worked.get('reply-1')?.properties.correlationId,
      'messaging.message.id': 'reply-1',
      'messaging.message.body.size': 5,
      'amqp_rpc_bridge.outcome': 'reply',
    });
    expect(producer.status?.code ?? 0).not.toBe(STATUS_ERROR);
    // The worker continues the trace as the producer span's child, with the caller's tracestate.
    expect(traceparentOf('reply-1')).toBe(`00-${CALLER_TRACE}-${producer.spanId}-01`);
    expect(worked.get('reply-1')?.properties.headers?.tracestate).toBe('vendor=1');
    console.log(
      [
        `trace ${CALLER_TRACE}`,
        `  caller                ${CALLER_SPAN}`,
        `  └ SERVER   ${server.spanId}  ${server.name}  status=${res.status}  parent=${server.parentSpanId}`,
        `    └ PRODUCER ${producer.spanId}  ${producer.name}  outcome=reply  parent=${producer.parentSpanId}`,
        `      └ worker received traceparent ${traceparentOf('reply-1')}`,
      ].join('\n'),
    );
  });

  it('a timeout: both spans end in error, the producer span saying why', async () => {
    const trace = 'a1'.repeat(16);
    const res = await request(traced.baseUrl)
      .post(`/rpc/${silent}?timeout=100`)
      .set('traceparent', `00-${trace}-${CALLER_SPAN}-01`)
      .send('x');
    expect(res.status).toBe(504);
    const { server, producer } = await receiver.waitForTrace(trace, 2);
    expect(producer.status).toMatchObject({ code: STATUS_ERROR, message: 'timeout' });
    expect(attributes(producer)).toMatchObject({ 'error.type': 'timeout', 'amqp_rpc_bridge.outcome': 'timeout' });
    expect(server.status?.code).toBe(STATUS_ERROR);
    expect(attributes(server)).toMatchObject({
      'http.response.status_code': 504,
      'amqp_rpc_bridge.outcome': 'timeout',
    });
    expect(producer.parentSpanId).toBe(server.spanId);
  });

  it('an unroutable request: the producer span in error; the 404 is the caller’s, not the server’s', async () => {
    const trace = 'b2'.repeat(16);
    const nobody = uniqueName('traced-nobody');
    const res = await request(traced.baseUrl)
      .post(`/rpc/${nobody}`)
      .set('traceparent', `00-${trace}-${CALLER_SPAN}-01`)
      .send('x');
    expect(res.status).toBe(404);
    const { server, producer } = await receiver.waitForTrace(trace, 2);
    expect(producer.status).toMatchObject({ code: STATUS_ERROR, message: 'unroutable' });
    expect(attributes(producer)).toMatchObject({
      'error.type': 'unroutable',
      'messaging.rabbitmq.destination.routing_key': nobody,
    });
    expect(server.status?.code ?? 0).not.toBe(STATUS_ERROR);
    expect(attributes(server)).toMatchObject({
      'http.response.status_code': 404,
      'amqp_rpc_bridge.outcome': 'unroutable',
    });
  });

  it('a publish: the producer span ends when the broker confirms it', async () => {
    const trace = 'c3'.repeat(16);
    const res = await request(traced.baseUrl)
      .post(`/publish/${silent}`)
      .set('traceparent', `00-${trace}-${CALLER_SPAN}-01`)
      .send('queued');
    expect(res.status).toBe(202);
    const { server, producer } = await receiver.waitForTrace(trace, 2);
    expect(server.name).toBe('POST /publish/:queue');
    expect(attributes(producer)).toMatchObject({
      'amqp_rpc_bridge.outcome': 'accepted',
      'messaging.message.body.size': 6,
    });
  });
});

describe('sampling', () => {
  it('follows a caller that does not sample: nothing exported, the worker told not to sample either', async () => {
    const trace = 'd4'.repeat(16);
    const res = await request(traced.baseUrl)
      .post(`/rpc/${echo}`)
      .set('traceparent', `00-${trace}-${CALLER_SPAN}-00`)
      .set('Amqp-Message-Id', 'unsampled-1')
      .send('x');
    expect(res.status).toBe(200);
    const sent = traceparentOf('unsampled-1');
    expect(sent).toMatch(new RegExp(`^00-${trace}-[0-9a-f]{16}-00$`));
    expect(sent).not.toContain(CALLER_SPAN);
    // A sampled request sent after it is exported, so the unsampled one had its chance to be.
    await request(traced.baseUrl)
      .post(`/rpc/${echo}`)
      .set('traceparent', `00-${'d5'.repeat(16)}-${CALLER_SPAN}-01`)
      .send('x');
    await receiver.waitForTrace('d5'.repeat(16), 2);
    expect(receiver.inTrace(trace)).toEqual([]);
  });

  it('starts a sampled trace for a caller without one under the default sampler (parentbased_always_on)', async () => {
    const res = await request(traced.baseUrl).post(`/rpc/${echo}`).set('Amqp-Message-Id', 'root-1').send('x');
    expect(res.status).toBe(200);
    const sent = traceparentOf('root-1');
    expect(sent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    const trace = sent.slice(3, 35);
    const { server, producer } = await receiver.waitForTrace(trace, 2);
    expect(server.parentSpanId ?? '').toBe('');
    expect(sent).toBe(`00-${trace}-${producer.spanId}-01`);
  });

  it('leaves a trace it starts unsampled when the sampler says so, and still follows a sampled caller', async () => {
    const off = await startTracedBridge(endpoint, 'parentbased_always_off');
    try {
      const root = await request(off.baseUrl).post(`/rpc/${echo}`).set('Amqp-Message-Id', 'root-off').send('x');
      expect(root.status).toBe(200);
      expect(traceparentOf('root-off')).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
      const trace = 'e5'.repeat(16);
      await request(off.baseUrl)
        .post(`/rpc/${echo}`)
        .set('traceparent', `00-${trace}-${CALLER_SPAN}-01`)
        .set('Amqp-Message-Id', 'child-off')
        .send('x');
      const { producer } = await receiver.waitForTrace(trace, 2);
      expect(traceparentOf('child-off')).toBe(`00-${trace}-${producer.spanId}-01`);
      expect(receiver.inTrace(traceparentOf('root-off').slice(3, 35))).toEqual([]);
    } finally {
      await off.close();
    }
  });
});

describe('exemplars', () => {
  it('link request-duration buckets to sampled traces for an OpenMetrics scraper, and only for it', async () => {
    const sampled = 'f6'.repeat(16);
    const unsampled = 'f7'.repeat(16);
    for (const flags of ['01', '00']) {
      const trace = flags === '01' ? sampled : unsampled;
      await request(traced.baseUrl)
        .post(`/rpc/${exemplarEcho}`)
        .set('traceparent', `00-${trace}-${CALLER_SPAN}-${flags}`)
        .send('x');
    }
    const open = await request(traced.baseUrl)
      .get('/metrics')
      .set('Accept', 'application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5');
    expect(open.headers['content-type']).toContain('application/openmetrics-text');
    const exemplars = open.text.split('\n').filter((line) => line.includes(' # {trace_id='));
    console.log(exemplars.filter((line) => line.includes(exemplarEcho)).join('\n'));
    expect(
      exemplars.some((line) =>
        new RegExp(
          `^rpc_request_duration_seconds_bucket\\{[^}]*queue="${exemplarEcho}"[^}]*outcome="ok"[^}]*\\} \\d+ # \\{trace_id="[0-9a-f]{32}"\\}`,
        ).test(line),
      ),
    ).toBe(true);
    expect(open.text).toContain(`trace_id="${sampled}"`);
    expect(open.text).not.toContain(`trace_id="${unsampled}"`);
    expect(open.text.trimEnd().endsWith('# EOF')).toBe(true);

    // A scraper that does not ask for OpenMetrics gets the Prometheus text format, unchanged by the one before.
    const plain = await request(traced.baseUrl).get('/metrics');
    expect(plain.headers['content-type']).toContain('text/plain');
    expect(plain.text).not.toContain('# {trace_id=');
    expect(plain.text).toMatch(/^rpc_late_replies_total \d+$/m);
    expect(plain.text).toMatch(
      new RegExp(`^rpc_request_duration_seconds_count\\{queue="${exemplarEcho}",outcome="ok"\\} \\d+$`, 'm'),
    );
  });
});
