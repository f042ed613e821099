/** Everything the bridge sends for one request, already validated at the HTTP edge. */
export interface RpcRequest {
  /** '' is the default exchange, where the routing key is the queue name. */
  readonly exchange: string;
  readonly routingKey: string;
  /** Passed to the broker as is; the client does not copy it. */
  readonly body: Buffer;
  readonly timeoutMs: number;
  /** Epoch ms when the HTTP request arrived: the one deadline is receivedAt + timeoutMs. */
  readonly receivedAt: number;
  readonly requestId: string;
  readonly contentType: string | undefined;
  readonly contentEncoding: string | undefined;
  /**
   * Message headers from the client. The call owns this table: the client adds its own header
   * (x-deadline) to it rather than copying it.
   */
  readonly headers: Record<string, string | number>;
  readonly priority: number | undefined;
  readonly type: string | undefined;
  readonly messageId: string | undefined;
}
