/**
 * The layers, top-down: the HTTP edge (src/http) calls the RPC core (src/rpc), which drives the broker
 * side (src/amqp). No module imports from a layer above its own; bridge.ts wires them and main.ts
 * runs the process. Checked by `npm run lint`.
 */
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
      name: 'broker-side-knows-no-rpc-or-http',
      severity: 'error',
      comment: 'src/amqp reports transport events; what they mean for an RPC or a response is decided above.',
      from: { path: '^src/amqp/' },
      to: { path: '^src/(rpc|http|observability)/' },
    },
    {
      name: 'rpc-core-knows-no-http',
      severity: 'error',
      comment: 'The RPC core knows calls and outcomes, not requests, responses or status codes.',
      from: { path: '^src/rpc/' },
      to: { path: '^src/(http|observability)/' },
    },
    {
      name: 'http-edge-does-not-reach-past-the-core',
      severity: 'error',
      comment: "The edge talks to the RPC core; amqplib and the broker side are the core's business.",
      from: { path: '^src/http/' },
      to: { path: '^src/amqp/|^node_modules/amqplib/' },
    },
    {
      name: 'observability-is-a-leaf',
      severity: 'error',
      comment: 'Metrics and the logger are handed to the layers; they import none of them.',
      from: { path: '^src/observability/' },
      to: { path: '^src/(http|rpc|amqp)/' },
    },
    {
      name: 'only-main-wires-the-bridge',
      severity: 'error',
      comment: 'bridge.ts is the composition root and main.ts the process: nothing in a layer imports them.',
      from: { path: '^src/(http|rpc|amqp|observability)/' },
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
