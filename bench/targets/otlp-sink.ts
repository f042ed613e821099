/**
 * Where a traced bridge sends its spans during the bench: an OTLP/HTTP endpoint that takes every
 * export and answers 200, so the bridge pays for building and exporting spans and nothing else.
 * Prints its port on stdout when listening.
 */
import { createServer } from 'node:http';

let exports = 0;
let bytes = 0;
const server = createServer((req, res) => {
  exports++;
  req.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    res.writeHead(200, { 'Content-Type': 'application/x-protobuf' });
    res.end();
  });
});
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const address = server.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 })}\n`);
});
process.on('SIGTERM', () => {
  process.stderr.write(`otlp sink: ${exports} exports, ${bytes} bytes\n`);
  server.close(() => process.exit(0));
});
