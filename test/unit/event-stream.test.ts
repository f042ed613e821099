import { describe, expect, it } from 'vitest';
import { acceptsEventStream } from '../../src/http/pipeline/event-stream.js';

describe('Accept: text/event-stream', () => {
  it.each([
    ['text/event-stream', true],
    ['TEXT/Event-Stream', true],
    ['application/json, text/event-stream;q=0.5', true],
    [' text/event-stream ; charset=utf-8', true],
    ['text/event-stream;q=0', false],
    ['application/json;q=1, text/event-stream; q=0.000', false],
    ['x-text/event-stream-not', false],
    ['*/*', false],
    ['application/json', false],
    [undefined, false],
  ])('%j asks for a stream: %s', (accept, expected) => {
    expect(acceptsEventStream(accept)).toBe(expected);
  });
});
