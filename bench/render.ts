/**
 * npm run bench:render -- bench/results/<run>.json: rewrites the benchmark block in docs/performance.md
 * from a saved run, without measuring again (default: bench/results/latest.json). Prints the table too.
 */
import { readFileSync } from 'node:fs';
import { type BenchRun, buildReport, updateReadme } from './lib/report.js';

const path = process.argv[2] ?? 'bench/results/latest.json';
const run = JSON.parse(readFileSync(path, 'utf8')) as BenchRun;
if (run.host === undefined) {
  throw new Error(
    `${path} was written by the benchmark before it recorded its machine and brokers; it cannot be rendered`,
  );
}
const report = buildReport(run);
console.log(report.table);
if (!updateReadme(report.markdown))
  throw new Error('docs/performance.md has no <!-- bench:start --> / <!-- bench:end --> markers');
console.error(`docs/performance.md benchmark block rewritten from ${path}`);
