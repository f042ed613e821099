import { describe, expect, it } from 'vitest';
import { loginNamesOf, RefusalBudget } from '../../src/http/refusal-budget.js';

const target = (exchange: string, routingKey: string) => ({ exchange, routingKey, label: `${exchange}:${routingKey}` });

describe('loginNamesOf', () => {
  it('reads the vhost and user as amqplib does: / and guest when absent, percent-decoded', () => {
    expect(loginNamesOf('amqp://localhost')).toEqual({ vhost: '/', user: 'guest' });
    expect(loginNamesOf('amqp://bridge:secret@localhost:5672/')).toEqual({ vhost: '/', user: 'bridge' });
    expect(loginNamesOf('amqps://j%C3%BCrgen:pw@host/%2Fprod%20eu')).toEqual({ vhost: '/prod eu', user: 'jürgen' });
    // A stray % is taken as it is, not a start-up crash.
    expect(loginNamesOf('amqp://u:p@host/50%zz')).toEqual({ vhost: '50%zz', user: 'u' });
  });
});

describe('RefusalBudget', () => {
  it('leaves 255 bytes less the longest refusal text (88), the vhost and the user to an exchange and its key', () => {
    expect(new RefusalBudget(['amqp://guest:guest@localhost']).bytesFor()).toBe(255 - 88 - 1 - 5);
    // Of several URLs, the longest vhost and the longest user count.
    const budget = new RefusalBudget(['amqp://a:p@one/orders', 'amqp://longer-user:p@two/']);
    expect(budget.bytesFor()).toBe(255 - 88 - 6 - 11);
    // A caller's own broker user counts instead of the URLs'.
    expect(budget.bytesFor('x'.repeat(40))).toBe(255 - 88 - 6 - 40);
  });

  it('refuses an exchange target one byte past it with 400, counting bytes not characters; queues are never refused', () => {
    const budget = new RefusalBudget(['amqp://guest:guest@localhost']);
    const fits = budget.bytesFor();
    expect(fits).toBe(161);
    // 80 characters of two bytes each and a one-byte key: exactly the budget, in bytes.
    expect(() => budget.check(target('é'.repeat(80), 'k'))).not.toThrow();
    expect(() => budget.check(target('', 'q'.repeat(255)))).not.toThrow();
    // A queue's refusal quotes 'amq.default' and the user: a caller's own user of 150 bytes still fits, 160 not.
    expect(() => budget.check(target('', 'q'), 'ü'.repeat(75))).not.toThrow();
    expect(() => budget.check(target('', 'q'), 'ü'.repeat(80))).toThrow(
      /the user name may have at most 155 bytes here/,
    );
    let refusal: unknown;
    try {
      budget.check(target('é'.repeat(80), 'kk'));
    } catch (err) {
      refusal = err;
    }
    expect(refusal).toMatchObject({
      status: 400,
      code: 'invalid-request',
      detail: expect.stringContaining(`at most ${fits} bytes of UTF-8 here (these are ${fits + 1})`),
    });
  });
});
