/** Thrown at start-up; the message always names the offending variable. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
