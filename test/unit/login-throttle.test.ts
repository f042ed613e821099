import { describe, expect, it } from 'vitest';
import { addressKey, LoginThrottle } from '../../src/rpc/login-throttle.js';

const WINDOW = 60_000;

describe('LoginThrottle', () => {
  it('throttles a key after 5 refusals within the window, until the oldest leaves it', () => {
    const throttle = new LoginThrottle({ limit: 5, windowMs: WINDOW, maxKeys: 100 });
    for (let n = 0; n < 5; n++) {
      expect(throttle.check('bob', 1_000 * n).verdict).toBe('allowed');
      throttle.refused('bob', 1_000 * n);
    }
    expect(throttle.check('bob', 5_000)).toEqual({ verdict: 'throttled', retryAfterMs: 55_000 });
    expect(throttle.check('alice', 5_000).verdict).toBe('allowed');
    // The first refusal (at 0) leaves the window at 60 s: one more try, then throttled again.
    expect(throttle.check('bob', WINDOW).verdict).toBe('allowed');
    throttle.refused('bob', WINDOW);
    expect(throttle.check('bob', WINDOW)).toEqual({ verdict: 'throttled', retryAfterMs: 1_000 });
  });

  it('counts logins under way against the limit, so that a burst cannot outrun the refusals', () => {
    const throttle = new LoginThrottle({ limit: 5, windowMs: WINDOW, maxKeys: 100 });
    throttle.refused('10.0.0.1', 0);
    for (let n = 0; n < 4; n++) throttle.started('10.0.0.1');
    expect(throttle.check('10.0.0.1', 1).verdict).toBe('busy');
    throttle.settled('10.0.0.1');
    expect(throttle.check('10.0.0.1', 1).verdict).toBe('allowed');
  });

  it('remembers at most maxKeys keys, forgetting the one refused longest ago, and sweeps the expired', () => {
    const throttle = new LoginThrottle({ limit: 1, windowMs: WINDOW, maxKeys: 2 });
    throttle.refused('a', 0);
    throttle.refused('b', 10);
    throttle.refused('a', 20);
    throttle.refused('c', 30);
    expect(['a', 'b', 'c'].map((key) => throttle.check(key, 40).verdict)).toEqual([
      'throttled',
      'allowed',
      'throttled',
    ]);
    expect(throttle.rememberedKeys).toBe(2);
    // At 60.025 s, a's refusal (at 20 ms) has left the window, c's (at 30 ms) has not.
    throttle.sweep(WINDOW + 25);
    expect(throttle.rememberedKeys).toBe(1);
    expect(throttle.check('c', WINDOW + 25).verdict).toBe('throttled');
    throttle.sweep(WINDOW + 30);
    expect(throttle.rememberedKeys).toBe(0);
  });
});

describe('addressKey', () => {
  it('keeps IPv4 addresses (mapped or not) as they are, and takes IPv6 addresses by their /64', () => {
    expect(addressKey('10.0.0.1')).toBe('10.0.0.1');
    expect(addressKey('::ffff:10.0.0.1')).toBe('10.0.0.1');
    expect(addressKey('2001:db8:0:1:aaaa:bbbb:cccc:1')).toBe('2001:db8:0:1::/64');
    expect(addressKey('2001:0DB8:0000:0001::2')).toBe('2001:db8:0:1::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey(undefined)).toBe('unknown');
  });
});
