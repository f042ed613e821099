import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // A test that asserts nothing fails (expect.hasAssertions() for every test of every project).
    expect: { requireAssertions: true },
    pool: 'forks',
    // Two test files at once, though the machine CI runs on has two cores (vitest's default would be
    // one): the integration files mostly wait on the broker and on timers, and one at a time took
    // npm test past five minutes. The fault, cluster and container suites stay one file at a time.
    maxWorkers: 2,
    // The JSON report is what .ci/run counts; the default reporter is for people.
    // (npm run test:faults writes its own file, so that CI can count both runs.)
    reporters: ['default', ['json', { outputFile: process.env.VITEST_JSON_FILE ?? 'test-results/vitest.json' }]],
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      {
        extends: true,
        test: {
          // npm run test:container: builds the image and runs the compose stack (needs a Docker engine).
          name: 'container',
          include: ['test/container/**/*.test.ts'],
          fileParallelism: false,
          testTimeout: 600_000,
          hookTimeout: 600_000,
        },
      },
      {
        extends: true,
        test: {
          // npm run test:observability: promtool on the alert rules, a real Prometheus scraping the bridge.
          name: 'observability',
          include: ['test/observability/**/*.test.ts'],
          globalSetup: ['test/helpers/require-broker.ts'],
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 120_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'faults',
          include: ['test/faults/**/*.test.ts'],
          globalSetup: ['test/helpers/require-broker.ts'],
          // They stop the broker and close every connection on it: one file at a time, nothing beside.
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 60_000,
          execArgv: ['--expose-gc'],
        },
      },
      {
        extends: true,
        test: {
          // npm run test:cluster: a real three-node RabbitMQ cluster of its own (ports 5781-5783), nodes
          // stopped under load. One file at a time: they share the cluster and stop its nodes.
          name: 'cluster',
          include: ['test/cluster/**/*.test.ts'],
          globalSetup: ['test/helpers/rabbitmq-cluster-setup.ts'],
          fileParallelism: false,
          testTimeout: 300_000,
          hookTimeout: 120_000,
        },
      },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // Fails the run at once, with what to do, when no broker answers.
          globalSetup: ['test/helpers/require-broker.ts'],
          env: { RPC_REPLY_MODE: 'direct' },
        },
      },
      {
        extends: true,
        test: {
          // The same integration suite, with callback queues instead of direct reply-to.
          name: 'integration-queue-mode',
          include: ['test/integration/**/*.test.ts'],
          globalSetup: ['test/helpers/require-broker.ts'],
          env: { RPC_REPLY_MODE: 'queue' },
        },
      },
    ],
  },
});
