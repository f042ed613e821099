/**
 * Peer (micromq, the HTTP half): a micromq Gateway that hands POST /echo to the service NAME over
 * RabbitMQ (`res.delegate`), as its README's gateway example does. Prints its port on stdout once it
 * listens.
 */
import Gateway from 'micromq/gateway.js';

const port = Number(process.env.PORT);
const gateway = new Gateway({
  microservices: [process.env.NAME ?? 'echo'],
  rabbit: { url: process.env.RABBIT_URL ?? '' },
});
gateway.post('/echo', (_req, res) => res.delegate(process.env.NAME ?? 'echo'));
await gateway.listen(port);
process.stdout.write(`${JSON.stringify({ port })}\n`);
process.on('SIGTERM', () => process.exit(0));
