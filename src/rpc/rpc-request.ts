/** Everything the bridge sends for one request, already validated at the HTTP edge. */
export interface RpcRequest {
  /**
   * `rpc`: published with reply_to, answered by the worker's reply. `publish`: fire-and-forget,
   * no reply_to, answered once the broker has confirmed (or returned, or refused) the message.
   */
  readonly mode: 'rpc' | 'publish';
  /** 1 non-persistent, 2 persistent. RPCs are always 1: a request outliving its caller is no use. */
  readonly deliveryMode: 1 | 2;
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
  /**
   * An RPC whose reply goes elsewhere (a deferred call's own queue) instead of to this channel: the
   * call ends once the broker has taken the request, as a publish does.
   */
  readonly replyTo?: string | undefined;
}
