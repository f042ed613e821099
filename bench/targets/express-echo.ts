/**
 * Baseline (a): the HTTP half alone. A plain express 5 server that echoes the body, with the
 * body parser a typical express service would use. Prints its port on stdout when listening.
 */
import express from 'express';

const app = express();
app.disable('x-powered-by');
app.set('etag', false);
app.post(
  '/echo',
  express.raw({ type: () => true, limit: Number(process.env.BODY_LIMIT ?? 2 * 1024 * 1024) }),
  (req, res) => {
    res.type(req.headers['content-type'] ?? 'application/octet-stream').send(req.body);
  },
);
const server = app.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const address = server.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
