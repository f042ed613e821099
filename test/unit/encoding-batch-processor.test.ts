import { type ExportResult, ExportResultCode } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, SamplingDecision } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type BatchLimits,
  type EncodedSpans,
  EncodingBatchSpanProcessor,
} from '../../src/observability/otlp/encoding-batch-processor.js';
import { waitFor } from '../helpers/bridge.js';
import { decodeTraceRequest } from '../helpers/otlp-protobuf.js';

/** An exporter that keeps what it is sent and answers when the test says so (or at once). */
class HeldExporter {
  readonly sent: string[][] = [];
  readonly pending: Array<(result: ExportResult) => void> = [];
  answerAtOnce = true;
  shutDown = false;

  export(request: EncodedSpans, done: (result: ExportResult) => void): void {
    const names = decodeTraceRequest(Buffer.from(request.bytes)).resourceSpans.flatMap((resource) =>
      resource.scopeSpans.flatMap((scope) => scope.spans.map((span) => span.name)),
    );
    expect(names.length).toBe(request.spanCount);
    this.sent.push(names);
    if (this.answerAtOnce) done({ code: ExportResultCode.SUCCESS });
    else this.pending.push(done);
  }

  async shutdown(): Promise<void> {
    this.shutDown = true;
  }
}

const LIMITS: BatchLimits = {
  maxExportBatchSize: 3,
  maxQueueSize: 5,
  scheduledDelayMillis: 40,
  exportTimeoutMillis: 200,
};
const providers: BasicTracerProvider[] = [];
afterEach(async () => {
  await Promise.all(providers.splice(0).map((provider) => provider.shutdown()));
});

function setUp(
  limits: BatchLimits = LIMITS,
  decide: (name: string) => SamplingDecision = () => SamplingDecision.RECORD_AND_SAMPLED,
) {
  const exporter = new HeldExporter();
  const processor = new EncodingBatchSpanProcessor(exporter, limits);
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'processor-test' }),
    sampler: { shouldSample: (_context, _traceId, name) => ({ decision: decide(name) }), toString: () => 'by name' },
    spanProcessors: [processor],
  });
  providers.push(provider);
  const tracer = provider.getTracer('test');
  const end = (...names: string[]) => {
    for (const name of names) tracer.startSpan(name).end();
  };
  return { exporter, processor, end, tracer };
}

describe('encoding batch span processor', () => {
  it('exports a batch as soon as it is full, and the rest when the schedule comes', async () => {
    const { exporter, end } = setUp();
    end('a', 'b', 'c', 'd');
    expect(exporter.sent).toEqual([['a', 'b', 'c']]);
    await waitFor(() => exporter.sent.length === 2, 1_000, 'the scheduled export');
    expect(exporter.sent[1]).toEqual(['d']);
  });

  it('exports one batch at a time; spans that end meanwhile wait, and beyond the queue they are dropped', async () => {
    const { exporter, end } = setUp();
    exporter.answerAtOnce = false;
    end('a', 'b', 'c'); // exported, not answered: out of the queue, as in the SDK
    end('d', 'e', 'f', 'g', 'h'); // the queue's five: a full batch waiting, and two
    end('i'); // over maxQueueSize: dropped
    expect(exporter.sent).toEqual([['a', 'b', 'c']]);
    exporter.pending.shift()?.({ code: ExportResultCode.SUCCESS });
    expect(exporter.sent[1]).toEqual(['d', 'e', 'f']);
    exporter.pending.shift()?.({ code: ExportResultCode.SUCCESS });
    await waitFor(() => exporter.sent.length === 3, 1_000, 'the scheduled export');
    expect(exporter.sent[2]).toEqual(['g', 'h']);
  });

  it('resolves forceFlush once what had ended is exported, while more spans keep ending', async () => {
    const { exporter, processor, end } = setUp({ ...LIMITS, maxQueueSize: 1_000 });
    exporter.answerAtOnce = false;
    const answering = setInterval(() => exporter.pending.shift()?.({ code: ExportResultCode.SUCCESS }), 5);
    let next = 0;
    const ending = setInterval(() => end(`s${next++}`, `s${next++}`, `s${next++}`), 2);
    try {
      await new Promise((resolve) => setTimeout(resolve, 20));
      const endedBefore = next;
      await processor.forceFlush();
      const exported = new Set(exporter.sent.flat());
      for (let i = 0; i < endedBefore; i++) expect(exported.has(`s${i}`)).toBe(true);
    } finally {
      clearInterval(ending);
      clearInterval(answering);
    }
  });

  it('gives up an export that does not answer within its timeout, and goes on with the next', async () => {
    const { exporter, end } = setUp();
    exporter.answerAtOnce = false;
    end('a', 'b', 'c', 'd');
    expect(exporter.sent).toEqual([['a', 'b', 'c']]);
    await waitFor(() => exporter.sent.length === 2, 1_000, 'the export after the timeout');
    expect(exporter.sent[1]).toEqual(['d']);
    // The late answer to the first export changes nothing.
    exporter.pending.shift()?.({ code: ExportResultCode.SUCCESS });
    exporter.pending.shift()?.({ code: ExportResultCode.SUCCESS });
    end('e', 'f', 'g');
    expect(exporter.sent[2]).toEqual(['e', 'f', 'g']);
  });

  it('exports only sampled spans, not those recorded without being sampled', () => {
    const { exporter, end, tracer } = setUp(LIMITS, (name) =>
      name === 'recorded only' ? SamplingDecision.RECORD : SamplingDecision.RECORD_AND_SAMPLED,
    );
    const recorded = tracer.startSpan('recorded only');
    expect(recorded.isRecording()).toBe(true);
    recorded.end();
    end('a', 'b', 'c');
    expect(exporter.sent).toEqual([['a', 'b', 'c']]);
  });

  it('flushes what it holds on forceFlush, and on shutdown, after which it takes nothing more', async () => {
    const { exporter, processor, end } = setUp({ ...LIMITS, scheduledDelayMillis: 60_000 });
    end('a');
    await processor.forceFlush();
    expect(exporter.sent).toEqual([['a']]);
    end('b', 'c');
    await processor.shutdown();
    expect(exporter.sent[1]).toEqual(['b', 'c']);
    expect(exporter.shutDown).toBe(true);
    end('d', 'e', 'f');
    expect(exporter.sent.length).toBe(2);
  });

  it('waits on forceFlush for an export under way', async () => {
    const { exporter, processor, end } = setUp();
    exporter.answerAtOnce = false;
    end('a', 'b', 'c', 'd');
    let flushed = false;
    const flushing = processor.forceFlush().then(() => {
      flushed = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(flushed).toBe(false);
    exporter.pending.shift()?.({ code: ExportResultCode.SUCCESS });
    await waitFor(() => exporter.sent.length === 2, 1_000, 'the flushed batch');
    exporter.pending.shift()?.({ code: ExportResultCode.SUCCESS });
    await flushing;
    expect(exporter.sent).toEqual([['a', 'b', 'c'], ['d']]);
  });
});
