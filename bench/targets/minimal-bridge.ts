/**
 * The floor: the least an HTTP-to-AMQP bridge can do on this machine. node:http and one amqplib
 * channel with direct reply-to; no validation, no header mapping, no timeouts, no logs, no metrics.
 * Not a product (it never answers a lost request): it shows how much of the bridge's cost is the
 * two protocols themselves. Prints its port on stdout when listening.
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import amqp, { type ConsumeMessage } from 'amqplib';

const REPLY_TO = 'amq.rabbitmq.reply-to';
const queue = process.env.QUEUE ?? 'echo';
const connection = await amqp.connect(process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672', { noDelay: true });
const channel = await connection.createChannel();
const waiting = new Map<string, (reply: ConsumeMessage) => void>();
await channel.consume(
  REPLY_TO,
  (reply) => {
    const id = reply?.properties.correlationId as string | undefined;
    const answer = id === undefined ? undefined : waiting.get(id);
    if (answer !== undefined && reply !== null) {
      waiting.delete(id as string);
      answer(reply);
    }
  },
  { noAck: true },
);

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    const correlationId = randomUUID();
    waiting.set(correlationId, (reply) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(reply.content);
    });
    channel.publish('', queue, Buffer.concat(chunks), { correlationId, replyTo: REPLY_TO, mandatory: true });
  });
});
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const address = server.address();
  process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 })}\n`);
});
process.on('SIGTERM', () => {
  server.close();
  void connection.close().finally(() => process.exit(0));
});
