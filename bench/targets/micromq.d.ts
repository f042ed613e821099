/** The little of micromq 3 (a CommonJS package without types) that the peer targets use. */
declare module 'micromq' {
  interface MicroRequest {
    readonly body: unknown;
  }
  interface MicroResponse {
    json(body: unknown): void;
  }
  export default class MicroService {
    constructor(options: { name: string; rabbit: { url: string } });
    post(path: string, handler: (req: MicroRequest, res: MicroResponse) => void): void;
    start(): Promise<void>;
  }
}

declare module 'micromq/gateway.js' {
  import type { IncomingMessage, ServerResponse } from 'node:http';

  interface GatewayResponse extends ServerResponse {
    delegate(service: string): Promise<void>;
  }
  export default class Gateway {
    constructor(options: { microservices: string[]; rabbit: { url: string }; requests?: { timeout: number } });
    post(path: string, handler: (req: IncomingMessage, res: GatewayResponse) => Promise<void>): void;
    listen(port: number): Promise<void>;
  }
}
