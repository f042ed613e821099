/**
 * The layers, bottom-up: config (environment -> settings) at the bottom; observability (metrics,
 * logger, tracing) and the RPC core (src/rpc, which declares the ports it needs in rpc/ports.ts and
 * rpc/outcome.ts) above it; the broker side (src/amqp) implements the core's ports; the HTTP edge
 * (src/http) calls the core. bridge.ts wires them and main.ts runs the process. No module imports from
 * a layer above its own, and every file of src/ is in a layer. Checked by `npm run lint`.
 */
const LAYERS = '^src/(config|observability|rpc|amqp|http)/';
const ROOTS = '^src/(main|bridge|errors)\\.ts$';

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'A cycle makes two modules one; split what they share into a third.',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'every-file-in-a-layer',
      severity: 'error',
      comment: 'Every module of src/ lives in a layer folder; only main.ts, bridge.ts and errors.ts stand at the top.',
      from: { path: '^src/', pathNot: [LAYERS, ROOTS] },
      to: {},
    },
    {
      name: 'errors-is-a-leaf',
      severity: 'error',
      comment: 'toError() is used by every layer, so it imports none of them.',
      from: { path: '^src/errors\\.ts$' },
      to: { path: '^src/' },
    },
    {
      name: 'config-is-the-bottom',
      severity: 'error',
      comment: 'Reading the environment loads nothing of the bridge: config/ imports only config/ (and errors.ts).',
      from: { path: '^src/config/' },
      to: { path: '^src/', pathNot: ['^src/config/', '^src/errors\\.ts$'] },
    },
    {
      name: 'observability-is-a-leaf',
      severity: 'error',
      comment: 'Metrics, the logger and tracing are handed to the layers; they import none of them (only config).',
      from: { path: '^src/observability/' },
      to: { path: '^src/(http|rpc|amqp)/' },
    },
    {
      name: 'rpc-core-knows-only-itself',
      severity: 'error',
      comment:
        'The RPC core knows calls, outcomes and the ports it needs: not HTTP, not the broker side, not metrics or config (it is handed callbacks and options).',
      from: { path: '^src/rpc/' },
      to: { path: '^src/(http|amqp|observability|config)/' },
    },
    {
      name: 'broker-side-implements-the-core-ports',
      severity: 'error',
      comment:
        'src/amqp implements the ports the core declares (rpc/ports.ts, rpc/outcome.ts) and reports transport events; it knows nothing else of the core, and nothing of HTTP or metrics.',
      from: { path: '^src/amqp/' },
      to: { path: '^src/(http|observability)/|^src/rpc/(?!ports\\.ts$|outcome\\.ts$)' },
    },
    {
      name: 'http-edge-does-not-reach-past-the-core',
      severity: 'error',
      comment: "The edge talks to the RPC core; amqplib and the broker side are the core's business.",
      from: { path: '^src/http/' },
      to: { path: '^src/amqp/|^node_modules/amqplib/' },
    },
    {
      name: 'only-main-wires-the-bridge',
      severity: 'error',
      comment: 'bridge.ts is the composition root and main.ts the process: nothing in a layer imports them.',
      from: { path: LAYERS },
      to: { path: '^src/(bridge|main)\\.ts$' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
  },
};
