/**
 * npm run bench:tracing-alone: what tracing costs per request with nothing else around it: the
 * bridge's span code and the SDK behind it (two spans, their attributes, the batch processor, the
 * encoding and the OTLP/HTTP export to a local sink) driven as rpc-route.ts drives them, without HTTP
 * or a broker. CPU of this whole process per request; steadier than the bridge under load, so it
 * shows what a change to the tracing code is worth. REQUESTS (200,000), OTEL_EXPORTER_OTLP_TRACES_PROTOCOL.
 */
import { startTracingSink } from './lib/side-by-side.js';

const REQUESTS = Number(process.env.REQUESTS ?? 200_000);
const PROTOCOL = process.env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? 'http/protobuf';

// The SDK reads its OTEL_* variables from the process, as the bridge's does.
const sink = await startTracingSink();
Object.assign(process.env, sink.env);

const { createOtelTracing } = await import('../src/observability/otel-tracing.js');
const tracing = await createOtelTracing({
  exporter: 'otlp',
  protocol: PROTOCOL as 'http/protobuf',
  serviceName: 'tracing-cost',
});

async function run(count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const span = tracing.startRequest({ route: '/rpc/:queue', parent: undefined });
    span.startPublish({
      operation: 'rpc',
      exchange: '',
      routingKey: 'bench.echo',
      label: 'bench.echo',
      bodyBytes: 100,
      messageId: undefined,
    });
    span.conversation('6f1c2a9e-0d4b-4c36-9a57-1f2e3d4c5b6a');
    span.endPublish('reply');
    span.end(200, 'ok', undefined);
    // Let the batch processor's exports run as they would between requests.
    if (i % 64 === 63) await new Promise((resolve) => setImmediate(resolve));
  }
}

await run(20_000);
const before = process.cpuUsage();
const started = process.hrtime.bigint();
await run(REQUESTS);
await tracing.shutdown();
const cpu = process.cpuUsage(before);
const wall = Number(process.hrtime.bigint() - started) / 1e6;
const perRequest = (cpu.user + cpu.system) / REQUESTS;
console.log(
  `${PROTOCOL}: ${REQUESTS} requests, ${perRequest.toFixed(1)} µs CPU per request (user ${(cpu.user / REQUESTS).toFixed(1)}, system ${(cpu.system / REQUESTS).toFixed(1)}), wall ${wall.toFixed(0)} ms`,
);
await sink.child.stop();
