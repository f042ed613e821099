import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { run } from './tools.js';

const CONFIG = 'observability/prometheus/prometheus.yml';
const RULES = 'observability/prometheus/alerts.yml';
const RULE_TESTS = 'observability/prometheus/alerts.test.yml';

/** Runs promtool, shows what it said, and expects it to be satisfied. */
function promtool(...args: string[]): string {
  const { status, output } = run('promtool', args);
  console.info(`$ promtool ${args.join(' ')}\n${output}`);
  expect(status, `promtool ${args.join(' ')} said:\n${output}`).toBe(0);
  return output;
}

describe('promtool', () => {
  it("accepts the compose stack's scrape config, and the rule file it loads", () => {
    // The rule file is found relative to the config, where the compose stack mounts both.
    expect(promtool('check', 'config', CONFIG)).toContain(`Checking ${RULES}`);
  });

  it('accepts the alert rules', () => {
    const alerts = (parse(readFileSync(RULES, 'utf8')) as RuleFile).groups.flatMap((group) => group.rules);
    expect(promtool('check', 'rules', RULES)).toContain(`SUCCESS: ${alerts.length} rules found`);
  });

  it("passes the alert rules' unit tests", () => {
    expect(promtool('test', 'rules', RULE_TESTS)).toContain('SUCCESS');
  });
});

interface RuleFile {
  groups: Array<{ rules: Array<{ alert: string }> }>;
}
interface RuleTests {
  tests: Array<{ name: string; alert_rule_test?: Array<{ alertname: string; exp_alerts?: unknown[] }> }>;
}

describe('the alert rule unit tests', () => {
  it('show every alert firing once, and quiet at least once', () => {
    const alerts = (parse(readFileSync(RULES, 'utf8')) as RuleFile).groups.flatMap((group) =>
      group.rules.map((rule) => rule.alert),
    );
    const cases = (parse(readFileSync(RULE_TESTS, 'utf8')) as RuleTests).tests.flatMap(
      (test) => test.alert_rule_test ?? [],
    );
    expect(alerts.length).toBeGreaterThan(0);
    for (const alert of alerts) {
      const mine = cases.filter((c) => c.alertname === alert);
      expect(
        mine.some((c) => (c.exp_alerts ?? []).length > 0),
        `${RULE_TESTS} has no case where ${alert} fires`,
      ).toBe(true);
      expect(
        mine.some((c) => (c.exp_alerts ?? []).length === 0),
        `${RULE_TESTS} has no case where ${alert} stays quiet`,
      ).toBe(true);
    }
    for (const { alertname } of cases) expect(alerts, `${RULE_TESTS} tests an unknown alert`).toContain(alertname);
  });
});
