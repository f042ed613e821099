/** How a test reads one value out of a Prometheus (or OpenMetrics) exposition. */
export interface ReadMetricOptions {
  /**
   * The family must still be exposed, but no series with these labels yet reads as 0: for a labelled
   * counter or histogram that has simply not been touched (prom-client shows a labelled series only
   * once it is first incremented). Without it, a missing series throws like a missing family.
   */
  readonly absentIsZero?: boolean;
}

interface Sample {
  readonly name: string;
  readonly labels: ReadonlyMap<string, string>;
  readonly value: number;
}

/** Sample names a family of each type exposes, as suffixes to the family name. */
const SUFFIXES: Record<string, readonly string[]> = {
  counter: ['', '_total', '_created'],
  gauge: [''],
  histogram: ['_bucket', '_count', '_sum', '_created'],
  summary: ['', '_count', '_sum', '_created'],
  untyped: [''],
  unknown: [''],
};

/**
 * The value of `name` (a sample name: `x_total`, `x_count`, `x_bucket`...) whose labels include
 * `labels`, summed over every series that does (so `amqp_channel_closes_total` with no labels is all
 * closes, whatever their reason). Throws when no `# TYPE` line declares a family that exposes `name`
 * (a renamed metric fails the test instead of reading 0), and when no series matches, unless
 * `absentIsZero`; then it still throws if the family's other series do not know a label asked for.
 */
export function readMetric(
  text: string,
  name: string,
  labels: Record<string, string> = {},
  { absentIsZero = false }: ReadMetricOptions = {},
): number {
  const family = familyOf(text, name);
  if (family === undefined) {
    throw new Error(`metric ${name} is not exposed: no "# TYPE" line declares a family with that sample name`);
  }
  const wanted = Object.entries(labels);
  const series = samples(text).filter((sample) => sample.name === name);
  const matching = series.filter((sample) => wanted.every(([key, value]) => sample.labels.get(key) === value));
  if (matching.length > 0) return matching.reduce((sum, sample) => sum + sample.value, 0);
  const asked = `${name}${JSON.stringify(labels)}`;
  if (!absentIsZero) {
    throw new Error(
      `no series ${asked} in family ${family} (${series.length} series of it exposed); ` +
        'pass { absentIsZero: true } if it may not have been touched yet',
    );
  }
  const unknown = wanted.map(([key]) => key).filter((key) => !series.some((sample) => sample.labels.has(key)));
  if (series.length > 0 && unknown.length > 0) {
    throw new Error(`no series of ${name} has the label(s) ${unknown.join(', ')} that ${asked} asks for`);
  }
  return 0;
}

/** The family a `# TYPE` line declares that exposes samples called `name`, if any. */
function familyOf(text: string, name: string): string | undefined {
  for (const match of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, family = '', type = ''] = match;
    if ((SUFFIXES[type] ?? ['']).some((suffix) => family + suffix === name)) return family;
  }
  return undefined;
}

/** Every sample line: `name{label="value",...} value [timestamp] [# exemplar]`. */
function samples(text: string): Sample[] {
  const found: Sample[] = [];
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)/.exec(line);
    if (match === null) continue;
    const labels = new Map<string, string>();
    for (const [, key = '', value = ''] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels.set(
        key,
        value.replace(/\\(.)/g, (_, char: string) => (char === 'n' ? '\n' : char)),
      );
    }
    found.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return found;
}
