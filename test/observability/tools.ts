import { spawnSync } from 'node:child_process';

/** Where the binaries come from; CI installs it, and a missing binary fails the run with this. */
export const INSTALL_HINT =
  "promtool and prometheus come with Debian's `prometheus` package: " +
  '`apt-get install -y --no-install-recommends prometheus` (as root), or put both binaries from a ' +
  'Prometheus release on PATH';

export interface ToolRun {
  readonly status: number | null;
  /** stdout then stderr, as a person would read them. */
  readonly output: string;
}

/** Runs a Prometheus binary to completion; throws, naming the package to install, when it is missing. */
export function run(binary: 'promtool' | 'prometheus', args: readonly string[]): ToolRun {
  const result = spawnSync(binary, args, { encoding: 'utf8', timeout: 60_000 });
  if (result.error !== undefined) {
    const missing = (result.error as NodeJS.ErrnoException).code === 'ENOENT';
    throw new Error(
      missing ? `\`${binary}\` is not installed (not on PATH). ${INSTALL_HINT}.` : `${binary} failed to run`,
      { cause: result.error },
    );
  }
  return { status: result.status, output: `${result.stdout}${result.stderr}`.trimEnd() };
}

/** Throws, naming the package to install, unless `binary --version` runs. */
export function requireBinary(binary: 'promtool' | 'prometheus'): void {
  const { status, output } = run(binary, ['--version']);
  if (status !== 0) throw new Error(`\`${binary} --version\` exited with ${status}: ${output}. ${INSTALL_HINT}.`);
}
