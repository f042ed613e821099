import type { Config } from './config.js';

/** The configuration as it may appear in a log line: credentials replaced. */
export function loggableConfig(config: Config): Record<string, unknown> {
  return {
    ...config,
    amqpUrls: config.amqpUrls.map(redactUrl),
    authTokens: `${config.authTokens.length} configured`,
  };
}

export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '<unparseable url>';
  }
}
