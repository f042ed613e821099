import { cpus, loadavg, release } from 'node:os';
import amqp from 'amqplib';

/** Where a run was measured: enough to tell two runs' machines, runtimes and brokers apart. */
export interface HostInfo {
  readonly cpuModel: string;
  readonly cores: number;
  readonly kernel: string;
  readonly node: string;
  /** Broker product and version as each broker announces itself on connect (e.g. "RabbitMQ 3.10.8"). */
  readonly brokers: Record<string, string>;
  /** 1-minute load average when the run began: above the core count, other work shared the machine. */
  readonly loadAverageAtStart: number;
}

export async function describeHost(brokerUrls: Record<string, string>): Promise<HostInfo> {
  const brokers: Record<string, string> = {};
  for (const [name, url] of Object.entries(brokerUrls)) brokers[name] = await brokerVersion(url);
  return {
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown CPU',
    cores: cpus().length,
    kernel: release(),
    node: process.version,
    brokers,
    loadAverageAtStart: loadavg()[0] ?? 0,
  };
}

async function brokerVersion(url: string): Promise<string> {
  try {
    const connection = await amqp.connect(url);
    const properties = connection.connection.serverProperties as { product?: string; version?: string };
    await connection.close();
    return `${properties.product ?? 'unknown broker'} ${properties.version ?? ''}`.trim();
  } catch (err) {
    return `unreachable (${err instanceof Error ? err.message : String(err)})`;
  }
}
