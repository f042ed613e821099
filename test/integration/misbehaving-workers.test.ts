import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { connectTestBroker, startRawWorker, uniqueName } from '../helpers/broker.js';
import { useEchoBridge } from '../helpers/fixture.js';

const fixture = useEchoBridge();
const { echoQueue } = fixture;

describe('misbehaving workers never disturb other requests', () => {
  it('survives replies without a correlation id, with a forged one, huge ones, and a worker that dies', async () => {
    const rude = uniqueName('rude');
    await startRawWorker(fixture.broker, rude, (message, reply) => {
      const mode = String(message.properties.headers?.mode);
      if (mode === 'no-correlation-id') {
        reply(Buffer.from('who am I'), {}, 'without-correlation-id');
      } else if (mode === 'forged-correlation-id') {
        reply(Buffer.from('not yours'), { correlationId: 'forged-not-a-pending-id' });
      } else if (mode === 'huge') {
        reply(Buffer.alloc(8 * 1024 * 1024, 7), {});
      }
    });
    const dying = uniqueName('dying');
    const doomed = await connectTestBroker();
    await startRawWorker(doomed, dying, () => {
      // Takes the request and dies before answering.
      void doomed.close();
    });

    const late = await fixture.bridge.metric('rpc_late_replies_total');
    const results = await Promise.all([
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${rude}`)
        .set('Amqp-Header-Mode', 'no-correlation-id')
        .set('Amqp-Timeout', '800')
        .send('x'),
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${rude}`)
        .set('Amqp-Header-Mode', 'forged-correlation-id')
        .set('Amqp-Timeout', '800')
        .send('x'),
      request(fixture.bridge.baseUrl)
        .post(`/rpc/${rude}`)
        .set('Amqp-Header-Mode', 'huge')
        .responseType('blob')
        .send('x'),
      request(fixture.bridge.baseUrl).post(`/rpc/${dying}`).set('Amqp-Timeout', '800').send('x'),
      ...Array.from({ length: 20 }, (_, i) =>
        request(fixture.bridge.baseUrl).post(`/rpc/${echoQueue}`).set('Content-Type', 'text/plain').send(`fine-${i}`),
      ),
    ]);
    const [noId, forgedId, huge, died, ...fine] = results;
    expect(noId?.status).toBe(504);
    expect(forgedId?.status).toBe(504);
    expect(huge?.status).toBe(200);
    expect((huge?.body as Buffer | undefined)?.length).toBe(8 * 1024 * 1024);
    expect(died?.status).toBe(504);
    fine.forEach((res, i) => {
      expect(res.status).toBe(200);
      expect(res.text).toBe(`fine-${i}`);
    });
    expect(await fixture.bridge.metric('rpc_late_replies_total')).toBe(late + 2);
    expect(await fixture.bridge.metric('amqp_channel_closes_total')).toBe(0);
    expect(fixture.bridge.bridge.pool.isFull).toBe(true);
    expect(fixture.bridge.bridge.rpc.inFlightCount).toBe(0);
  });
});
