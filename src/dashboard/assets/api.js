// API client: the only module that calls fetch(). Every call carries the key from
// sessionStorage (if any) as a bearer token; this module owns that storage. Errors come back as
// RFC 9457 problems (title, detail, code) and are thrown as ApiError; a 401 calls the handler
// app.js registers (which swaps the page for the key form) and throws a quiet AuthNeeded.
// Must not import views or the router: it only calls back through setUnauthorizedHandler.

import { announce } from './status.js';

const KEY_STORAGE = 'ferry.apiKey';

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title);
    this.status = status;
    this.title = problem.title;
    this.detail = problem.detail;
    this.code = problem.code;
    this.errors = problem.errors ?? [];
  }
}
class AuthNeeded extends Error {}

export function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }
export function setApiKey(key) { sessionStorage.setItem(KEY_STORAGE, key); }
export function forgetApiKey() { sessionStorage.removeItem(KEY_STORAGE); }

/** Shows an error (a problem's title, detail and code). Aborts and key prompts stay silent. */
export function report(err) {
  if (isQuiet(err)) return;
  announce(describe(err), 'error');
}
export function isQuiet(err) { return err?.name === 'AbortError' || err instanceof AuthNeeded; }
export function describe(err) {
  if (err instanceof ApiError) return `${err.title}${err.detail ? `: ${err.detail}` : ''} (${err.code})`;
  return String(err?.message ?? err);
}

// Called on a 401 with the message to show (null when no key was sent). app.js sets it before
// the first request; api.js cannot import the key form itself (views import api.js).
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export async function request(path, { method = 'GET', headers = {}, json, body, signal, accept = 'application/json' } = {}) {
  const hdrs = new Headers(headers);
  if (!hdrs.has('Accept')) hdrs.set('Accept', accept);
  const key = apiKey();
  if (key) hdrs.set('Authorization', `Bearer ${key}`);
  if (json !== undefined) {
    hdrs.set('Content-Type', 'application/json');
    body = JSON.stringify(json);
  }
  let res;
  try {
    // no-store: our conditional requests (If-None-Match) must reach the server as sent, and
    // job states must never come from the browser's cache.
    res = await fetch(path, { method, headers: hdrs, body, signal, cache: 'no-store' });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { title: 'Network error', detail: `the server could not be reached (${err.message})`, code: 'network' });
  }
  if (res.status === 401) {
    const err = await toApiError(res);
    onUnauthorized(key ? `The server refused this key: ${err.detail} (${err.code}).` : null);
    throw new AuthNeeded(err.message);
  }
  if (!res.ok && res.status !== 304) throw await toApiError(res);
  return res;
}

export async function getJson(path, opts) {
  return (await request(path, opts)).json();
}

async function toApiError(res) {
  let p = {};
  if (/json/.test(res.headers.get('Content-Type') ?? '')) p = await res.json().catch(() => ({}));
  return new ApiError(res.status, {
    title: p.title ?? (res.statusText || `HTTP ${res.status}`),
    detail: p.detail ?? '',
    code: p.code ?? `http_${res.status}`,
    errors: p.errors,
  });
}

/**
 * The kinds the server serves (for selects); refetched at most every 30 s. Shared by views, so
 * it is not tied to one view's abort signal (a view closing must not fail the next one's).
 */
let kindsCache = null;
export function loadKinds() {
  if (!kindsCache || Date.now() - kindsCache.at > 30000) {
    const promise = getJson('/v1/kinds');
    kindsCache = { at: Date.now(), promise };
    promise.catch(() => { kindsCache = null; });
  }
  return kindsCache.promise;
}
