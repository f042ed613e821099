import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Closes, from the broker's side, every connection whose client properties contain `marker`
 * (the bridge's connection_name carries its APP_ID). Returns how many it closed.
 */
export async function closeConnectionsNamed(marker: string, reason: string): Promise<number> {
  // Tab-separated lines: the pid as close_connection takes it, then the client properties.
  const { stdout } = await run('rabbitmqctl', [
    'list_connections',
    'pid',
    'client_properties',
    '--no-table-headers',
    '-q',
  ]);
  const pids = stdout
    .split('\n')
    .filter((line) => line.includes(`"${marker}`))
    .map((line) => line.split('\t')[0] ?? '');
  for (const pid of pids) await run('rabbitmqctl', ['close_connection', pid, reason]);
  return pids.length;
}

export async function rabbitmqctl(...args: string[]): Promise<string> {
  const { stdout } = await run('rabbitmqctl', args, { timeout: 60_000 });
  return stdout;
}

/** The broker's memory high watermark as configured now (a fraction of RAM). */
export async function memoryWatermark(): Promise<string> {
  const environment = await rabbitmqctl('environment');
  const match = /\{vm_memory_high_watermark,([0-9.]+)\}/.exec(environment);
  return match?.[1] ?? '0.4';
}
