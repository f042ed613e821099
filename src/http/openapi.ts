import { readFileSync } from 'node:fs';

/**
 * The contract served at /openapi.yaml. It sits at the package root, two levels above src/http/ when run
 * from source and three above dist/src/http/ when built, so both places are tried.
 */
export function loadOpenApiYaml(): string {
  for (const relative of ['../../openapi.yaml', '../../../openapi.yaml']) {
    try {
      return readFileSync(new URL(relative, import.meta.url), 'utf8');
    } catch {
      // try the next place
    }
  }
  throw new Error('openapi.yaml not found next to the package');
}
