/**
 * Peer (micromq, the service half): a micromq MicroService named NAME that answers POST /echo with
 * the JSON body it was sent, as its README's examples answer. micromq carries JSON only. Prints
 * `{"ready":true}` on stdout once it consumes.
 */
import MicroService from 'micromq';

const app = new MicroService({ name: process.env.NAME ?? 'echo', rabbit: { url: process.env.RABBIT_URL ?? '' } });
app.post('/echo', (req, res) => res.json(req.body));
await app.start();
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
process.on('SIGTERM', () => process.exit(0));
