import type { IncomingHttpHeaders } from 'node:http';
import { HttpProblem } from './problems.js';

/** What a request asks of its call's life: to be answered asynchronously, and/or sent once per key. */
export interface Deferral {
  /** `Prefer: respond-async`: the reply if it comes within `waitMs`, else 202 and a call id. */
  readonly async: { readonly waitMs: number } | undefined;
  /** `Idempotency-Key`. */
  readonly key: string | undefined;
}

/** What `Prefer` asks for (RFC 7240): the preferences this bridge honours; the rest are ignored. */
export interface Preferences {
  readonly respondAsync: boolean;
  /** `wait=N`, in milliseconds; undefined when absent or not a number of seconds. */
  readonly waitMs: number | undefined;
}

const NO_PREFERENCES: Preferences = Object.freeze({ respondAsync: false, waitMs: undefined });
const DELTA_SECONDS = /^\d{1,9}$/;

/**
 * Reads `Prefer` (RFC 7240 §2): comma-separated preferences, each `token [= value]` with `;`
 * parameters (ignored here). Tokens are case-insensitive; a value may be quoted. Preferences this
 * bridge does not know, and a `wait` that is not delta-seconds, are ignored, as the RFC asks.
 */
export function readPreferences(header: string | string[] | undefined): Preferences {
  if (header === undefined) return NO_PREFERENCES;
  let respondAsync = false;
  let waitMs: number | undefined;
  for (const preference of (Array.isArray(header) ? header.join(',') : header).split(',')) {
    const [nameValue = ''] = preference.split(';', 1);
    const equals = nameValue.indexOf('=');
    const name = (equals === -1 ? nameValue : nameValue.slice(0, equals)).trim().toLowerCase();
    const value = equals === -1 ? '' : unquote(nameValue.slice(equals + 1).trim());
    // The first occurrence of a preference wins (RFC 7240 §2).
    if (name === 'respond-async') respondAsync = true;
    else if (name === 'wait' && waitMs === undefined && DELTA_SECONDS.test(value)) waitMs = Number(value) * 1000;
  }
  return { respondAsync, waitMs };
}

function unquote(value: string): string {
  return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value;
}

/** Printable ASCII, no comma (two keys joined by a proxy) and no quote (a broken quoted key), 1-255 characters. */
const BARE_KEY = /^[\x21\x23-\x2b\x2d-\x7e]{1,255}$/;
/** An RFC 8941 sf-string, as the IETF draft writes the header: `"..."` with `\"` and `\\` escapes. */
const QUOTED_KEY = /^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){1,255})"$/;

/**
 * `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): a quoted string as the draft writes
 * it, or a bare token as most clients send it. Anything else is refused (400): a retry would not be
 * recognised as one.
 */
export function readIdempotencyKey(header: string | string[] | undefined, target: string): string | undefined {
  if (header === undefined) return undefined;
  const value = Array.isArray(header) ? undefined : header.trim();
  const quoted = value === undefined ? null : QUOTED_KEY.exec(value);
  if (quoted !== null) return (quoted[1] as string).replace(/\\(["\\])/g, '$1');
  if (value !== undefined && BARE_KEY.test(value)) return value;
  throw new HttpProblem(
    'invalid-request',
    'Idempotency-Key must be one key of 1-255 printable ASCII characters (a quoted string, or without commas and spaces)',
    { target },
  );
}

/**
 * What the request asks for, or undefined for a plain call (the hot path: two header reads). An RPC
 * may ask for both; a publish only for a key (its answer is asynchronous already).
 */
export function readDeferral(
  headers: IncomingHttpHeaders,
  operation: 'rpc' | 'publish',
  target: string,
): Deferral | undefined {
  const { prefer } = headers;
  const keyHeader = headers['idempotency-key'];
  if (prefer === undefined && keyHeader === undefined) return undefined;
  const preferences = readPreferences(prefer);
  const respondAsync = operation === 'rpc' && preferences.respondAsync;
  const key = readIdempotencyKey(keyHeader, target);
  if (!respondAsync && key === undefined) return undefined;
  return { async: respondAsync ? { waitMs: preferences.waitMs ?? 0 } : undefined, key };
}
