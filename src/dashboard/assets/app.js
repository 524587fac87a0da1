// Ferry dashboard: a single-page app over Ferry's public HTTP API (openapi.yaml). No build step,
// no libraries, nothing from other origins. The server sends a strict Content-Security-Policy
// (script-src 'self', style-src 'self'), so the page is built with DOM calls only: no HTML
// strings, no inline styles or handlers — which also means nothing a handler wrote (a progress
// message, a result, a log line) can ever be interpreted as markup.
//
// Sections: 1 utilities · 2 status messages · 3 API client · 4 SSE reader · 5 tus uploader ·
// 6 router and views' lifecycle · 7 views (API key, jobs, job, upload, queue) · 8 SVG charts ·
// 9 start-up.

// ───────────────────────────── 1. Utilities ─────────────────────────────

const KEY_STORAGE = 'ferry.apiKey';
const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'canceled'];
const FINISHED = new Set(['succeeded', 'failed', 'canceled']);
const TUS_CHUNK = 8 * 1024 * 1024; // one PATCH; the server's default write unit is 8 MiB too
const TEXT_PREVIEW_BYTES = 64 * 1024;
const QUEUE_JOB_CAP = 2000;

/** Builds an element: h('a', {href: '#/jobs', class: 'x'}, 'text', child, [more children]). */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  el.append(...flat(children));
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

/** Replaces el's children, skipping null/false ones (the native replaceChildren prints "null"). */
function fill(el, ...children) {
  el.replaceChildren(...flat(children));
  return el;
}

function flat(children) {
  return children.flat(Infinity).filter((c) => c != null && c !== false).map((c) => (c instanceof Node ? c : String(c)));
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
}

/** Resolves after ms, or at once when the signal aborts (loops then see signal.aborted). */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/** Runs fn at most once per `ms`: calls within the window fold into one run at its end. */
function throttle(ms, fn) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

function bytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '—';
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto', style: 'short' });
function relative(date) {
  const s = (date.getTime() - Date.now()) / 1000;
  const a = Math.abs(s);
  if (a < 45) return rtf.format(Math.round(s), 'second');
  if (a < 45 * 60) return rtf.format(Math.round(s / 60), 'minute');
  if (a < 22 * 3600) return rtf.format(Math.round(s / 3600), 'hour');
  return rtf.format(Math.round(s / 86400), 'day');
}

/** A <time> in local time with its relative age; the ticker in section 9 keeps ages fresh. */
function timeEl(iso, { clock = false } = {}) {
  if (!iso) return h('span', { class: 'muted', text: '—' });
  const d = new Date(iso);
  // clock: the time of day alone, for dense lists (the full date is in the tooltip).
  if (clock) return h('time', { datetime: iso, title: d.toLocaleString(), text: d.toLocaleTimeString() });
  const t = h('time', { datetime: iso, title: iso, 'data-rel': '' });
  renderTime(t);
  return t;
}
function renderTime(t) {
  const d = new Date(t.dateTime);
  t.textContent = `${d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' })} (${relative(d)})`;
}

/** `YYYY-MM-DDTHH:MM` in local time, the value format of <input type="datetime-local">. */
function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

function hhmm(ms) {
  return new Date(ms).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function pct(p) { return `${Math.round(p * 10) / 10}%`; }
function kindLabel(job) { return job.version ? `${job.kind}@${job.version}` : job.kind; }
function badge(status) { return h('span', { class: `badge ${status}`, text: status }); }
function clip(s, n) { return s && s.length > n ? `${s.slice(0, n - 1)}…` : s; }

/** What a <progress> shows for a job: its last report; done is 100 %. */
function progressValue(job) {
  if (job.status === 'succeeded') return 100;
  return job.progress?.percent ?? (job.status === 'running' ? null : 0);
}
function progressText(job) {
  const p = job.progress;
  if (!p) return job.status === 'queued' ? (job.waiting_for ?? 'waiting') : '';
  return [p.percent != null ? pct(p.percent) : null, p.stage, p.message && `— ${clip(p.message, 140)}`]
    .filter(Boolean).join(' ');
}
function setProgress(el, value) {
  if (value == null) el.removeAttribute('value'); // indeterminate: running, no report yet
  else el.value = value;
}

// ───────────────────────────── 2. Status messages ─────────────────────────────
// One aria-live region under the header: screen readers announce what lands there.

const statusEl = document.getElementById('status');
let statusTimer = null;

function announce(text, kind = 'info') {
  clearTimeout(statusTimer);
  statusEl.textContent = text;
  statusEl.className = `status ${kind}`;
  if (kind === 'info') statusTimer = setTimeout(() => { statusEl.textContent = ''; }, 8000);
}

/** Shows an error (a problem's title, detail and code). Aborts and key prompts stay silent. */
function report(err) {
  if (isQuiet(err)) return;
  announce(describe(err), 'error');
}
function isQuiet(err) { return err?.name === 'AbortError' || err instanceof AuthNeeded; }
function describe(err) {
  if (err instanceof ApiError) return `${err.title}${err.detail ? `: ${err.detail}` : ''} (${err.code})`;
  return String(err?.message ?? err);
}

// ───────────────────────────── 3. API client ─────────────────────────────
// Every call carries the key from sessionStorage (if any) as a bearer token. Errors come back as
// RFC 9457 problems (title, detail, code); a 401 swaps the page for the key form.

class ApiError extends Error {
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

function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }

async function request(path, { method = 'GET', headers = {}, json, body, signal, accept = 'application/json' } = {}) {
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
    askForKey(key ? `The server refused this key: ${err.detail} (${err.code}).` : null);
    throw new AuthNeeded(err.message);
  }
  if (!res.ok && res.status !== 304) throw await toApiError(res);
  return res;
}

async function getJson(path, opts) {
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
function loadKinds() {
  if (!kindsCache || Date.now() - kindsCache.at > 30000) {
    const promise = getJson('/v1/kinds');
    kindsCache = { at: Date.now(), promise };
    promise.catch(() => { kindsCache = null; });
  }
  return kindsCache.promise;
}

// ───────────────────────────── 4. SSE reader ─────────────────────────────
// EventSource cannot send an Authorization header, so streams are read with fetch() and parsed
// here, per WHATWG HTML's event-stream format: `field: value` lines, a blank line ends a frame,
// `:` lines are comments (Ferry's keep-alives).

async function* sseFrames(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let frame = { event: 'message', data: [], id: null, retry: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      for (;;) {
        const m = /\r\n|\n|\r/.exec(buf);
        // A lone \r at the end may be the first half of \r\n: wait for more.
        if (!m || (m[0] === '\r' && m.index === buf.length - 1)) break;
        const line = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        if (line === '') {
          if (frame.data.length || frame.id != null) yield { ...frame, data: frame.data.join('\n') };
          frame = { event: 'message', data: [], id: null, retry: null };
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') frame.data.push(val);
          else if (field === 'event') frame.event = val;
          else if (field === 'id' && !val.includes('\0')) frame.id = val;
          else if (field === 'retry' && /^\d+$/.test(val)) frame.retry = Number(val);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Follows an SSE endpoint until the signal aborts: reconnects after the stream ends or fails
 * (backing off on failures), resuming with Last-Event-ID from the last frame's id. A 204 means
 * "nothing will follow" (a finished job's stream) and ends it. onState('live' | 'down') lets a
 * view fall back to polling while the stream is down.
 */
function followStream(path, { signal, onEvent, onState, onEnd, onId }) {
  let lastId = null;
  let retry = 2000;
  let failures = 0;
  (async () => {
    while (!signal.aborted) {
      try {
        const headers = lastId != null ? { 'Last-Event-ID': lastId } : {};
        const res = await request(path, { headers, signal, accept: 'text/event-stream' });
        if (res.status === 204) { onEnd?.(); return; }
        if (!(res.headers.get('Content-Type') ?? '').startsWith('text/event-stream')) {
          res.body?.cancel().catch(() => {});
          throw new ApiError(res.status, { title: 'Not an event stream', code: 'not_event_stream' });
        }
        failures = 0;
        onState?.('live');
        for await (const frame of sseFrames(res)) {
          if (frame.retry != null) retry = frame.retry;
          if (frame.id != null) { lastId = frame.id; onId?.(lastId); }
          if (frame.data) {
            let data;
            try { data = JSON.parse(frame.data); } catch { continue; }
            onEvent(data, frame.event);
          }
        }
      } catch (err) {
        if (signal.aborted || isQuiet(err)) return;
        failures += 1;
        onState?.('down', err);
        // A 4xx other than 408/429 will not heal by retrying (a bad cursor, a deleted job).
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && ![408, 429].includes(err.status)) return;
      }
      await sleep(failures ? Math.min(30000, retry * 2 ** Math.min(failures - 1, 4)) : retry, signal);
    }
  })();
}

/**
 * Where the server-wide feed ends now: `after=now` answers an empty page whose `next` is the
 * feed's end, so the table follows what happens from here on without reading the history.
 * After the first time, the stream resumes from the last event id it saw (nothing missed while
 * the page was elsewhere).
 */
let feedCursor = null;
async function feedTip(signal) {
  if (!feedCursor) {
    const page = await getJson(`/v1/events${qs({ after: 'now', limit: 1 })}`, { signal });
    feedCursor = page.next;
  }
  return feedCursor;
}

// ───────────────────────────── 5. tus uploader ─────────────────────────────
// Resumable upload (tus 1.0, /v1/tus): POST creates it, PATCHes of TUS_CHUNK bytes fill it, and
// after a failed PATCH a HEAD says where the server's durable offset is. With `ferry-kind` in
// the metadata the request that completes the upload creates the job (Ferry-Job-Location).

function tusMetadata(meta) {
  const b64 = (s) => {
    let bin = '';
    for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
    return btoa(bin);
  };
  return Object.entries(meta).filter(([, v]) => v != null && v !== '').map(([k, v]) => `${k} ${b64(v)}`).join(',');
}

async function tusUpload(file, { metadata, signal, onProgress }) {
  const tus = { 'Tus-Resumable': '1.0.0' };
  const created = await request('/v1/tus', {
    method: 'POST', signal,
    headers: { ...tus, 'Upload-Length': String(file.size), 'Upload-Metadata': tusMetadata(metadata) },
  });
  await created.arrayBuffer(); // empty, but read: an unread body stays pending in the browser
  const url = new URL(created.headers.get('Location'), location.href).pathname;
  let offset = Number(created.headers.get('Upload-Offset') ?? 0);
  let jobLocation = created.headers.get('Ferry-Job-Location');
  let jobProblem = created.headers.get('Ferry-Job-Problem');
  let failures = 0;
  onProgress(offset, file.size);
  while (offset < file.size) {
    try {
      const res = await request(url, {
        method: 'PATCH', signal, body: file.slice(offset, offset + TUS_CHUNK),
        headers: { ...tus, 'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': String(offset) },
      });
      offset = Number(res.headers.get('Upload-Offset'));
      jobLocation = res.headers.get('Ferry-Job-Location') ?? jobLocation;
      jobProblem = res.headers.get('Ferry-Job-Problem') ?? jobProblem;
      failures = 0;
    } catch (err) {
      if (signal.aborted || isQuiet(err)) throw err;
      // Network trouble, a stale offset (409), a locked upload (423), throttling or a 5xx:
      // wait, ask where the upload stands, resume from there. Anything else is final.
      const transient = err instanceof ApiError && (err.status === 0 || [408, 409, 423, 429].includes(err.status) || (err.status >= 500 && err.status !== 501));
      failures += 1;
      if (!transient || failures > 8) throw err;
      announce(`Upload interrupted (${describe(err)}); resuming…`);
      await sleep(Math.min(15000, 500 * 2 ** failures), signal);
      const head = await request(url, { method: 'HEAD', signal, headers: tus });
      offset = Number(head.headers.get('Upload-Offset'));
      jobLocation = head.headers.get('Ferry-Job-Location') ?? jobLocation;
    }
    onProgress(offset, file.size);
  }
  if (!jobLocation && !jobProblem && metadata['ferry-kind']) {
    const head = await request(url, { method: 'HEAD', signal, headers: tus });
    jobLocation = head.headers.get('Ferry-Job-Location');
  }
  return { url, uploadId: url.split('/').pop(), jobLocation, jobProblem };
}

// ───────────────────────────── 6. Router and views' lifecycle ─────────────────────────────
// Hash routes: #/jobs (default; filters in the query), #/jobs/{id}, #/upload, #/queue. Each
// view gets a ViewContext whose close() aborts its requests and stops its timers and streams.

const main = document.getElementById('main');
const forgetKeyButton = document.getElementById('forget-key');

class ViewContext {
  constructor() {
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.cleanups = [];
  }
  every(ms, fn) { const t = setInterval(fn, ms); this.cleanups.push(() => clearInterval(t)); }
  onClose(fn) { this.cleanups.push(fn); }
  close() { this.controller.abort(); for (const fn of this.cleanups) fn(); }
}

let current = null; // { name, id, ctx, update }
let keyPromptShown = false;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/jobs';
  const [path, query = ''] = raw.split('?');
  const params = new URLSearchParams(query);
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'jobs' && parts[1]) return { name: 'job', id: decodeURIComponent(parts[1]), params };
  if (['jobs', 'upload', 'queue'].includes(parts[0] ?? 'jobs')) return { name: parts[0] ?? 'jobs', params };
  return { name: 'notfound', params };
}

function route(force = false) {
  if (location.hash && !location.hash.startsWith('#/')) return; // e.g. the skip link's #main
  const r = parseHash();
  keyPromptShown = false;
  // A change of filters re-queries the same view instead of rebuilding it, so focus stays put.
  if (!force && current && current.name === r.name && current.id === r.id && current.update) {
    current.update(r);
    return;
  }
  const moving = current != null;
  current?.ctx.close();
  const ctx = new ViewContext();
  main.replaceChildren();
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === (r.name === 'job' ? 'jobs' : r.name)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const view = { jobs: jobsView, job: jobView, upload: uploadView, queue: queueView }[r.name] ?? notFoundView;
  current = { name: r.name, id: r.id, ctx, update: null };
  current.update = view(ctx, r) ?? null;
  if (moving) { // after a navigation, start reading (and looking) at the new content
    window.scrollTo(0, 0);
    main.focus({ preventScroll: true });
  }
}

function notFoundView() {
  document.title = 'Not found · Ferry';
  main.append(h('h1', { text: 'Page not found' }), h('p', {}, h('a', { href: '#/jobs', text: 'Go to the jobs' })));
}

// ───────────────────────────── 7. Views ─────────────────────────────

// 7.1 API key form — shown in place of the page whenever a request answers 401.

function askForKey(message) {
  if (keyPromptShown) return;
  keyPromptShown = true;
  if (apiKey()) sessionStorage.removeItem(KEY_STORAGE);
  updateKeyButton();
  current?.ctx.close();
  current = null;
  document.title = 'API key · Ferry';
  const input = h('input', { id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const form = h('form', { class: 'key-form', 'aria-labelledby': 'key-title' },
    h('h1', { id: 'key-title', text: 'API key needed' }),
    h('p', { text: message ?? 'This server needs an API key. It is kept for this browser tab only and sent as a bearer token.' }),
    h('div', { class: 'field' }, h('label', { for: 'api-key', text: 'API key' }), input,
      h('span', { class: 'hint', text: 'fk_ followed by 40 hex digits (ferry keys create)' })),
    h('button', { type: 'submit', text: 'Use key' }));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    updateKeyButton();
    announce('Key saved for this tab.');
    route(true);
  });
  main.replaceChildren(form);
  if (message) announce(message, 'error');
  input.focus();
}

function updateKeyButton() { forgetKeyButton.hidden = !apiKey(); }

// 7.2 Jobs — the table, its filters and paging, updated live from the event feed.

function jobsView(ctx, route0) {
  document.title = 'Jobs · Ferry';
  const status = h('select', { id: 'f-status' }, h('option', { value: '', text: 'any' }), STATUSES.map((s) => h('option', { value: s, text: s })));
  const kind = h('select', { id: 'f-kind' }, h('option', { value: '', text: 'any' }));
  const after = h('input', { id: 'f-after', type: 'datetime-local' });
  const liveEl = h('span', { class: 'live off', text: 'connecting…' });
  const tbody = h('tbody');
  const pager = h('div', { class: 'pager' });
  const field = (id, label, input) => h('div', { class: 'field' }, h('label', { for: id, text: label }), input);
  main.append(
    h('div', { class: 'job-head' }, h('h1', { text: 'Jobs' }), liveEl),
    h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs', onsubmit: (e) => e.preventDefault() },
      field('f-status', 'Status', status), field('f-kind', 'Kind', kind), field('f-after', 'Created after', after),
      h('a', { class: 'button secondary', href: '#/jobs', text: 'Clear filters' })),
    h('div', { class: 'table-wrap' }, h('table', { 'data-testid': 'jobs-table' },
      h('caption', { class: 'muted small', text: 'Newest first; updates live.' }),
      h('thead', {}, h('tr', {}, ['ID', 'Kind', 'Status', 'Progress', 'Created', 'Updated'].map((c) =>
        h('th', { scope: 'col', class: c === 'Created' ? 'created' : null, text: c })))),
      tbody)),
    pager);

  const rows = new Map(); // job id → { tr, job, cells }
  const emptyRow = h('tr', {}, h('td', { colspan: 6, class: 'muted', text: 'No jobs match.' }));
  let filters = {};
  let cursor = null;
  let feedLive = false;
  let loadSeq = 0;

  // Filters live in the hash (#/jobs?status=…), so the back button and links keep them.
  function pushFilters() {
    const when = after.value ? new Date(after.value) : null;
    location.hash = `#/jobs${qs({ status: status.value, kind: kind.value, created_after: when && !Number.isNaN(when.getTime()) ? when.toISOString() : '' })}`;
  }
  status.addEventListener('change', pushFilters);
  kind.addEventListener('change', pushFilters);
  after.addEventListener('change', pushFilters);

  function ensureKindOption(name) {
    if (name && ![...kind.options].some((o) => o.value === name)) kind.append(h('option', { value: name, text: name }));
  }
  loadKinds().then((list) => {
    for (const k of list.items) ensureKindOption(k.kind);
    kind.value = filters.kind ?? '';
  }).catch(report);

  function applyRoute(r) {
    filters = { status: r.params.get('status') ?? '', kind: r.params.get('kind') ?? '', created_after: r.params.get('created_after') ?? '' };
    cursor = r.params.get('next');
    status.value = filters.status;
    ensureKindOption(filters.kind);
    kind.value = filters.kind;
    after.value = filters.created_after ? toLocalInput(filters.created_after) : '';
    load();
  }

  async function load() {
    const seq = ++loadSeq;
    try {
      const page = await getJson(`/v1/jobs${qs({ ...filters, limit: 50, next: cursor })}`, { signal: ctx.signal });
      if (seq !== loadSeq) return; // a newer load started meanwhile
      render(page.items);
      fill(pager,
        cursor ? h('a', { href: `#/jobs${qs(filters)}`, text: '← First page' }) : null,
        page.next ? h('a', { href: `#/jobs${qs({ ...filters, next: page.next })}`, rel: 'next', text: 'Next page →' }) : null);
    } catch (err) { report(err); }
  }

  // Reconciles rows by job id, updating in place and moving nodes only when the order
  // changed: a re-render must not steal keyboard focus from a link in the table.
  function render(items) {
    emptyRow.remove();
    const seen = new Set();
    items.forEach((job, i) => {
      let row = rows.get(job.id);
      if (row) updateRow(row, job);
      else rows.set(job.id, (row = makeRow(job)));
      seen.add(job.id);
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] ?? null);
    });
    for (const [id, row] of rows) if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    if (!items.length) tbody.append(emptyRow);
  }

  function makeRow(job) {
    const cells = {
      kind: h('td'), status: h('td'), updated: h('td'), progressText: h('div', { class: 'progress-text' }),
      progress: h('progress', { max: 100, 'aria-label': `Progress of ${job.id}`, 'data-testid': 'row-progress' }),
    };
    const tr = h('tr', { 'data-job-id': job.id },
      h('td', { class: 'id' }, h('a', { href: `#/jobs/${job.id}`, text: job.id })),
      cells.kind, cells.status,
      h('td', { class: 'progress-cell' }, cells.progress, cells.progressText),
      h('td', { class: 'created' }, timeEl(job.created_at)), cells.updated);
    const row = { tr, cells, job: null };
    updateRow(row, job);
    return row;
  }

  function updateRow(row, job) {
    const sig = [job.status, job.updated_at, job.cancel_requested, job.progress?.percent, job.progress?.updated_at, job.waiting_for].join('|');
    row.job = job;
    if (row.sig === sig) return; // unchanged: leave the DOM alone
    row.sig = sig;
    const c = row.cells;
    c.kind.textContent = kindLabel(job);
    fill(c.status, badge(job.status), job.cancel_requested && !FINISHED.has(job.status) ? h('div', { class: 'small muted', text: 'cancel requested' }) : null);
    setProgress(c.progress, progressValue(job));
    c.progressText.textContent = progressText(job);
    c.updated.replaceChildren(timeEl(job.updated_at));
  }

  // Live: a feed event re-reads its job's row (at most every 0.5 s per burst); a new job, or a
  // status change under a status filter, reloads the page.
  const changed = new Set();
  const flushChanged = throttle(500, () => {
    const ids = [...changed];
    changed.clear();
    if (ids.length > 10) { load(); return; }
    for (const id of ids) {
      getJson(`/v1/jobs/${id}`, { signal: ctx.signal }).then((job) => {
        const row = rows.get(id);
        if (row) updateRow(row, job);
      }).catch((err) => { if (err.code !== 'job_not_found') report(err); });
    }
  });
  const reloadSoon = throttle(1000, load);
  function onFeedEvent(ev) {
    if (rows.has(ev.job_id)) {
      changed.add(ev.job_id);
      flushChanged();
      if (filters.status && ev.data?.status) reloadSoon();
    } else if (ev.kind === 'queued' && !cursor) {
      reloadSoon();
    }
  }
  function setLive(on) {
    feedLive = on;
    liveEl.className = `live ${on ? 'on' : 'off'}`;
    liveEl.textContent = on ? 'live' : 'polling every 2 s';
  }
  feedTip(ctx.signal).then((tip) => {
    followStream(`/v1/events${qs({ after: tip })}`, {
      signal: ctx.signal, onEvent: onFeedEvent, onState: (s) => setLive(s === 'live'),
      onId: (id) => { feedCursor = id; },
    });
  }).catch((err) => {
    if (isQuiet(err)) return;
    feedCursor = null; // e.g. a cursor from before the server's data was reset
    setLive(false);
  });
  // Without the stream: poll. With it, still re-read the page every 2 s while a job on it runs,
  // because the feed coalesces progress events (limits.progress_event_interval, 5 s by
  // default) while a job always shows its latest progress.
  ctx.every(2000, () => {
    if (!feedLive || [...rows.values()].some((r) => r.job.status === 'running')) load();
  });

  applyRoute(route0);
  return applyRoute;
}

// 7.3 One job — summary, progress, actions, timeline, attempts, logs and results, live.

function jobView(ctx, r) {
  const id = r.id;
  document.title = `${id} · Ferry`;
  // Live updates have their own controller: Delete stops them before the job disappears, so
  // they do not chase it into 404s.
  const live = new AbortController();
  ctx.onClose(() => live.abort());
  const objectUrls = new Set();
  ctx.onClose(() => { for (const u of objectUrls) URL.revokeObjectURL(u); });

  const statusSlot = h('span', { 'data-testid': 'job-status' });
  const progress = h('progress', { max: 100, 'aria-label': 'Job progress', 'data-testid': 'job-progress' });
  const progressLabel = h('span', { class: 'progress-text', 'data-testid': 'job-progress-text' });
  const cancelBtn = h('button', { type: 'button', class: 'secondary', text: 'Cancel', disabled: true });
  const rerunBtn = h('button', { type: 'button', class: 'secondary', text: 'Re-run', disabled: true });
  const deleteBtn = h('button', { type: 'button', class: 'danger', text: 'Delete', disabled: true });
  const errorBox = h('div', { class: 'error-box', role: 'group', 'aria-label': 'Error', hidden: true });
  const summary = h('dl', { class: 'summary' });
  const timeline = h('ol', { class: 'timeline', 'aria-label': 'Event timeline', tabindex: 0 });
  const attemptsBody = h('tbody');
  const resultsEl = h('div', { class: 'results', 'data-testid': 'results' });
  const logs = h('pre', { class: 'logs', 'aria-label': 'Log tail', tabindex: 0, 'data-testid': 'logs', text: '…' });
  main.append(
    h('div', { class: 'job-head' }, h('h1', {}, 'Job ', h('span', { class: 'id', text: id })), statusSlot),
    h('div', { class: 'actions' }, cancelBtn, rerunBtn, deleteBtn),
    h('div', { class: 'job-progress' }, progress, progressLabel),
    errorBox,
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'h-summary' }, h('h2', { id: 'h-summary', text: 'Summary' }), summary),
      h('section', { 'aria-labelledby': 'h-attempts' }, h('h2', { id: 'h-attempts', text: 'Attempts' }),
        h('div', { class: 'table-wrap' }, h('table', {},
          h('thead', {}, h('tr', {}, ['#', 'Started', 'Outcome', 'Error'].map((c) => h('th', { scope: 'col', text: c })))),
          attemptsBody)))),
    h('section', { 'aria-labelledby': 'h-results' }, h('h2', { id: 'h-results', text: 'Results' }), resultsEl),
    h('div', { class: 'columns' },
      h('section', { 'aria-labelledby': 'h-events' }, h('h2', { id: 'h-events', text: 'Events' }), timeline),
      h('section', { 'aria-labelledby': 'h-logs' }, h('h2', { id: 'h-logs', text: 'Log (last 200 lines)' }), logs)));

  let job = null;
  let etag = null;
  const events = [];
  let lastSeq = 0;

  function render(j) {
    job = j;
    statusSlot.replaceChildren(badge(j.status));
    setProgress(progress, progressValue(j));
    progressLabel.textContent = progressText(j) || (FINISHED.has(j.status) ? j.status : '');
    cancelBtn.disabled = FINISHED.has(j.status) || j.cancel_requested;
    cancelBtn.textContent = j.cancel_requested && !FINISHED.has(j.status) ? 'Cancel requested' : 'Cancel';
    rerunBtn.disabled = j.inputs_deleted_at != null;
    deleteBtn.disabled = false;
    errorBox.hidden = !j.error;
    if (j.error) {
      errorBox.replaceChildren(
        h('strong', { text: `${j.error.title} (${j.error.code})` }),
        h('span', { class: 'small muted', text: ` attempt ${j.error.attempt}${j.error.retryable ? ', retryable' : ''}` }),
        h('pre', { text: j.error.detail }));
    }
    const rows = [
      ['Status', badge(j.status)],
      ['Kind', j.kind], ['Version', j.version ?? '—'], ['Tag', j.tag ?? '—'],
      ['Attempts', `${j.attempt} of ${j.max_attempts}`], ['Priority', String(j.priority)],
      ['Created', timeEl(j.created_at)], ['Started', timeEl(j.started_at)], ['Finished', timeEl(j.finished_at)],
      j.retry_at && ['Retry at', timeEl(j.retry_at)],
      j.waiting_for && ['Waiting for', j.waiting_for],
      j.cancel_requested && !FINISHED.has(j.status) && ['Cancel', 'requested'],
      j.rerun_of && ['Re-run of', h('a', { href: `#/jobs/${j.rerun_of}`, text: j.rerun_of })],
      j.latest_rerun && ['Latest re-run', h('a', { href: `#/jobs/${j.latest_rerun}`, text: j.latest_rerun })],
      ['Inputs', j.inputs.map((i) => h('div', { class: 'small', text: `${i.file} — ${bytes(i.size)}, sha256 ${i.sha256.slice(0, 12)}…` }))],
      ['Params', h('pre', { text: JSON.stringify(j.params, null, 2) })],
      j.expires_at && ['Expires', timeEl(j.expires_at)],
    ].filter(Boolean);
    summary.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
  }

  // Events: the timeline (oldest first) and the attempts derived from it.
  function addEvents(list, { live: isLive = true } = {}) {
    const nearBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 40;
    let fresh = false;
    for (const ev of list) {
      if (ev.seq <= lastSeq) continue;
      lastSeq = ev.seq;
      events.push(ev);
      fresh = true;
      timeline.append(h('li', { 'data-kind': ev.kind },
        h('span', { class: 'muted', text: `#${ev.seq}` }), timeEl(ev.created_at, { clock: true }),
        h('span', { class: 'kind', text: ev.kind }), h('span', { text: eventDetail(ev) })));
      if (ev.kind === 'result' && isLive) refreshResults();
    }
    if (fresh) renderAttempts();
    if (fresh && nearBottom) timeline.scrollTop = timeline.scrollHeight;
  }

  function renderAttempts() {
    const byN = new Map();
    for (const ev of events) {
      const n = ev.data?.attempt;
      if (!n || ev.kind === 'progress' || ev.kind === 'result') continue;
      const a = byN.get(n) ?? { n, started: null, outcome: '', error: null };
      byN.set(n, a);
      if (ev.kind === 'started') { a.started = ev.created_at; a.outcome = 'running'; }
      else if (ev.kind === 'retry_scheduled') { a.outcome = 'failed, retry scheduled'; a.error = ev.data.error; }
      else if (ev.kind === 'requeued') a.outcome = `requeued (${ev.data.reason ?? 'worker stopped'})`;
      else a.outcome = ev.kind;
      if (ev.data.error) a.error = ev.data.error;
    }
    attemptsBody.replaceChildren(...[...byN.values()].map((a) => h('tr', {},
      h('td', { text: String(a.n) }), h('td', {}, timeEl(a.started, { clock: true })), h('td', { text: a.outcome }),
      h('td', { title: a.error?.detail ?? null, text: a.error ? `${a.error.code}: ${clip(a.error.detail, 120)}` : '—' }))));
    if (!byN.size) attemptsBody.append(h('tr', {}, h('td', { colspan: 4, class: 'muted', text: 'No attempt has started yet.' })));
  }

  async function loadEvents(signal, { initial = false } = {}) {
    for (;;) {
      const page = await getJson(`/v1/jobs/${id}/events${qs({ after: lastSeq, limit: 1000 })}`, { signal });
      addEvents(page.items, { live: !initial });
      if (page.items.length < 1000) return;
    }
  }

  async function loadLogs() {
    try {
      const page = await getJson(`/v1/jobs/${id}/logs?tail=200`, { signal: live.signal });
      const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 40;
      logs.textContent = page.items.length
        ? page.items.map((l) => `${new Date(l.created_at).toLocaleTimeString()} [${l.attempt}] ${l.line}`).join('\n')
        : 'No log lines yet.';
      if (atBottom) logs.scrollTop = logs.scrollHeight;
    } catch (err) { report(err); }
  }
  const refreshLogs = throttle(2000, loadLogs);

  // Results: one card each, re-rendered only when its bytes (sha256) changed.
  const cards = new Map(); // name → { sha256, final, el, url }
  async function loadResults() {
    try {
      const list = await getJson(`/v1/jobs/${id}/results`, { signal: live.signal });
      const names = new Set(list.items.map((x) => x.name));
      for (const [name, card] of cards) if (!names.has(name)) { card.el.remove(); cards.delete(name); }
      for (const res of list.items) {
        const old = cards.get(res.name);
        if (old && old.sha256 === res.sha256 && old.final === res.final) continue;
        const card = resultCard(res);
        if (old) old.el.replaceWith(card.el); else resultsEl.append(card.el);
        cards.set(res.name, card);
      }
      if (!list.items.length) resultsEl.replaceChildren(h('p', { class: 'muted', text: 'No results yet.' }));
      else resultsEl.querySelector(':scope > p')?.remove();
    } catch (err) { report(err); }
  }
  const refreshResults = throttle(300, loadResults);

  function resultCard(res) {
    const preview = h('div');
    const card = { sha256: res.sha256, final: res.final, url: null, el: null };
    const download = h('button', { type: 'button', class: 'secondary', text: 'Download' });
    download.addEventListener('click', () => saveResult(res).catch(report));
    card.el = h('article', { class: 'result', 'data-result': res.name },
      h('h3', { text: res.name }),
      h('p', { class: 'small' }, h('span', { class: `badge ${res.final ? 'final' : 'intermediate'}`, text: res.final ? 'final' : 'intermediate' }),
        ` ${res.content_type} · ${bytes(res.size)} · attempt ${res.attempt}`, res.version ? ` · ${res.version}` : ''),
      preview, download);
    showPreview(res, preview).catch((err) => {
      if (!isQuiet(err)) preview.replaceChildren(h('p', { class: 'small muted', text: `No preview: ${describe(err)}` }));
    });
    return card;
  }

  async function fetchResult(res, range) {
    const headers = range ? { Range: `bytes=0-${range - 1}` } : {};
    return request(res.url, { headers, accept: '*/*', signal: live.signal });
  }

  async function showPreview(res, slot) {
    const type = res.content_type.split(';')[0].trim().toLowerCase();
    if (type.startsWith('image/')) {
      const url = URL.createObjectURL(await (await fetchResult(res)).blob());
      objectUrls.add(url);
      slot.replaceChildren(h('img', { src: url, alt: `${res.final ? 'Result' : 'Intermediate result'} ${res.name}`, 'data-testid': 'result-image' }));
    } else if (type === 'application/json' || type.endsWith('+json') || type.startsWith('text/')) {
      const cut = res.size > TEXT_PREVIEW_BYTES;
      let text = await (await fetchResult(res, cut ? TEXT_PREVIEW_BYTES : 0)).text();
      if (!cut && type.includes('json')) {
        try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* shown as sent */ }
      }
      fill(slot, h('pre', { text }), cut ? h('p', { class: 'small muted', text: `First ${bytes(TEXT_PREVIEW_BYTES)} of ${bytes(res.size)}.` }) : null);
    }
  }

  // Downloads go through fetch (the key is a header, which a plain link cannot send), then an
  // object URL and a temporary <a download>.
  async function saveResult(res) {
    const url = URL.createObjectURL(await (await fetchResult(res)).blob());
    const a = h('a', { href: url, download: res.name.split('/').pop(), hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // Actions, each behind the confirmation dialog.
  cancelBtn.addEventListener('click', async () => {
    if (!(await confirmAction(`Cancel job ${id}? A running handler is stopped; results so far are kept.`))) return;
    try {
      const j = await getJson(`/v1/jobs/${id}/cancel`, { method: 'POST', signal: ctx.signal });
      render(j);
      announce(j.status === 'canceled' ? 'Job canceled.' : 'Cancel requested; the worker stops the job shortly.');
    } catch (err) { report(err); }
  });
  rerunBtn.addEventListener('click', async () => {
    if (!(await confirmAction(`Re-run job ${id} as a new job with the same inputs and params?`))) return;
    try {
      const j = await getJson(`/v1/jobs/${id}/rerun`, { method: 'POST', json: {}, signal: ctx.signal });
      announce(`Re-run created: ${j.id}.`);
      location.hash = `#/jobs/${j.id}`;
    } catch (err) { report(err); }
  });
  deleteBtn.addEventListener('click', async () => {
    if (!(await confirmAction(`Delete job ${id} with its results, logs, events and inputs? This cannot be undone.`))) return;
    live.abort();
    try {
      await request(`/v1/jobs/${id}`, { method: 'DELETE', signal: ctx.signal });
      announce(`Job ${id} deleted.`);
      location.hash = '#/jobs';
    } catch (err) { report(err); }
  });

  // Live: long-poll the job (Prefer: wait with its ETag: answered as soon as anything in it
  // changes, progress included) and follow its event stream for the timeline.
  async function watchJob() {
    let failures = 0;
    while (!live.signal.aborted && job && !FINISHED.has(job.status)) {
      try {
        const asked = Date.now();
        const res = await request(`/v1/jobs/${id}`, { headers: etag ? { 'If-None-Match': etag, Prefer: 'wait=30' } : {}, signal: live.signal });
        failures = 0;
        if (res.status === 304) {
          if (Date.now() - asked < 1000) await sleep(1000, live.signal); // the wait was not honoured
          continue;
        }
        etag = res.headers.get('ETag');
        const prev = job;
        render(await res.json());
        if (job.result_count !== prev.result_count || job.status !== prev.status) refreshResults();
        refreshLogs();
        if (!etag) await sleep(2000, live.signal);
      } catch (err) {
        if (live.signal.aborted || isQuiet(err)) return;
        failures += 1;
        if (err.code === 'job_not_found') { announce('This job no longer exists.', 'error'); live.abort(); return; }
        if (failures === 3) report(err);
        await sleep(Math.min(20000, 1000 * 2 ** failures), live.signal);
      }
    }
    if (job && FINISHED.has(job.status) && !live.signal.aborted) { loadResults(); loadLogs(); }
  }

  function followEvents() {
    let poller = null;
    const stopPolling = () => { clearInterval(poller); poller = null; };
    live.signal.addEventListener('abort', stopPolling);
    followStream(`/v1/jobs/${id}/events${qs({ after: lastSeq })}`, {
      signal: live.signal,
      onEvent: (ev) => addEvents([ev]),
      onEnd: stopPolling,
      onState: (s) => {
        if (s === 'live') stopPolling();
        else if (!poller) {
          poller = setInterval(() => loadEvents(live.signal).catch((err) => {
            if (err.code === 'job_not_found') live.abort(); else report(err);
          }), 2000);
        }
      },
    });
  }

  (async () => {
    try {
      const res = await request(`/v1/jobs/${id}`, { signal: ctx.signal });
      etag = res.headers.get('ETag');
      render(await res.json());
      await Promise.all([loadEvents(ctx.signal, { initial: true }), loadResults(), loadLogs()]);
      renderAttempts();
      if (!FINISHED.has(job.status)) { followEvents(); watchJob(); }
    } catch (err) {
      if (err.code === 'job_not_found') main.replaceChildren(h('h1', { text: 'Job not found' }), h('p', { text: `There is no job ${id} (or it was deleted).` }), h('a', { href: '#/jobs', text: 'Back to the jobs' }));
      report(err);
    }
  })();
}

function eventDetail(ev) {
  const d = ev.data ?? {};
  switch (ev.kind) {
    case 'progress': return [d.percent != null ? pct(d.percent) : null, d.stage, d.message && `— ${d.message}`].filter(Boolean).join(' ');
    case 'result': return `${d.name} (${d.final ? 'final' : 'intermediate'}, ${bytes(d.size)}, ${d.content_type})`;
    case 'started': return `attempt ${d.attempt}`;
    case 'queued': return d.version ? `version ${d.version}${d.tag ? ` (tag ${d.tag})` : ''}` : '';
    case 'retry_scheduled': return `${d.error?.code}: ${clip(d.error?.detail, 200)}; retry ${d.retry_at ? relative(new Date(d.retry_at)) : ''}`;
    case 'failed': return d.error ? `${d.error.code}: ${clip(d.error.detail, 200)}` : '';
    case 'requeued': return d.reason ?? '';
    default: return d.attempt ? `attempt ${d.attempt}` : '';
  }
}

/** The shared <dialog>: resolves true for Confirm, false for Back or Escape. */
function confirmAction(text) {
  const dialog = document.getElementById('confirm-dialog');
  document.getElementById('confirm-text').textContent = text;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), { once: true });
    dialog.showModal();
  });
}

// 7.4 Upload — a file (dropped or chosen), a kind, params; sent with tus, then the job's page.

function uploadView(ctx) {
  document.title = 'Upload · Ferry';
  const file = h('input', { id: 'upload-file', type: 'file', required: true });
  const chosen = h('p', { class: 'small muted', 'aria-live': 'polite', text: 'No file chosen.' });
  const kind = h('input', { id: 'upload-kind', list: 'kind-options', required: true, autocomplete: 'off', 'aria-describedby': 'kind-hint' });
  const kindOptions = h('datalist', { id: 'kind-options' });
  const kindHint = h('span', { id: 'kind-hint', class: 'hint', text: 'A kind, kind@version or kind@tag.' });
  const inputName = h('input', { id: 'upload-input', placeholder: 'input', 'aria-describedby': 'input-hint' });
  const params = h('textarea', { id: 'upload-params', spellcheck: 'false', placeholder: '{"threshold": 0.5}', 'aria-describedby': 'params-error' });
  const paramsError = h('span', { id: 'params-error', class: 'error' });
  const priority = h('input', { id: 'upload-priority', type: 'number', min: 0, max: 100, step: 1, placeholder: '0' });
  const submit = h('button', { type: 'submit', text: 'Upload and create job' });
  const abort = h('button', { type: 'button', class: 'secondary', text: 'Stop upload', hidden: true });
  const bar = h('progress', { max: 100, value: 0, 'aria-label': 'Upload progress', 'data-testid': 'upload-progress' });
  const barText = h('span', { class: 'progress-text' });
  const progressRow = h('div', { class: 'upload-progress', hidden: true }, bar, barText);
  const drop = h('div', { class: 'drop-zone', 'data-testid': 'drop-zone' },
    h('p', { text: 'Drop a file here, or choose one:' }),
    h('div', { class: 'field' }, h('label', { for: 'upload-file', text: 'File' }), file), chosen);
  const field = (id, label, input, ...extra) => h('div', { class: 'field' }, h('label', { for: id, text: label }), input, ...extra);
  const form = h('form', { class: 'upload-form', 'aria-labelledby': 'h-upload', novalidate: true },
    drop,
    field('upload-kind', 'Kind', kind, kindOptions, kindHint),
    field('upload-input', 'Input name (optional)', inputName, h('span', { id: 'input-hint', class: 'hint', text: 'The file name the handler sees; "input" by default.' })),
    field('upload-params', 'Params (JSON object, optional)', params, paramsError),
    field('upload-priority', 'Priority (0–100, optional)', priority),
    h('div', { class: 'actions' }, submit, abort), progressRow);
  main.append(h('h1', { id: 'h-upload', text: 'Upload a file and create a job' }), form);

  loadKinds().then((list) => {
    for (const k of list.items) {
      kindOptions.append(h('option', { value: k.kind }));
      for (const v of k.versions) kindOptions.append(h('option', { value: `${k.kind}@${v.name}` }));
      for (const t of k.tags) kindOptions.append(h('option', { value: `${k.kind}@${t.tag}` }));
    }
    kindHint.textContent = `A kind, kind@version or kind@tag. Served here: ${list.items.map((k) => k.kind).join(', ') || 'none'}.`;
    if (!kind.value && list.items.length === 1) kind.value = list.items[0].kind;
  }).catch(report);

  const showChosen = () => {
    const f = file.files[0];
    chosen.textContent = f ? `${f.name} — ${bytes(f.size)}` : 'No file chosen.';
  };
  file.addEventListener('change', showChosen);
  // Drag and drop: the dropped files become the input's, so there is one source of truth.
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer?.files.length) { file.files = e.dataTransfer.files; showChosen(); }
  });
  // A file dropped next to the zone must not make the browser navigate away to it.
  const swallow = (e) => e.preventDefault();
  window.addEventListener('dragover', swallow);
  window.addEventListener('drop', swallow);
  ctx.onClose(() => { window.removeEventListener('dragover', swallow); window.removeEventListener('drop', swallow); });

  function parseParams() {
    paramsError.textContent = '';
    params.removeAttribute('aria-invalid');
    if (!params.value.trim()) return {};
    try {
      const v = JSON.parse(params.value);
      if (v && typeof v === 'object' && !Array.isArray(v)) return v;
      throw new Error('params must be a JSON object, e.g. {"steps": 10}');
    } catch (err) {
      paramsError.textContent = `Not valid: ${err.message}`;
      params.setAttribute('aria-invalid', 'true');
      params.focus();
      return null;
    }
  }

  let uploading = null;
  abort.addEventListener('click', () => uploading?.abort());
  ctx.onClose(() => uploading?.abort());

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) { announce('Choose a file to upload.', 'error'); file.focus(); return; }
    if (!kind.value.trim()) { announce('Choose the kind of job.', 'error'); kind.focus(); return; }
    const p = parseParams();
    if (!p) return;
    const prio = priority.value === '' ? null : Number(priority.value);
    if (prio != null && !(Number.isInteger(prio) && prio >= 0 && prio <= 100)) { announce('Priority is a whole number from 0 to 100.', 'error'); priority.focus(); return; }
    const input = inputName.value.trim() || 'input';
    // tus metadata can ask for the job (ferry-kind, ferry-params, ferry-input), created the
    // moment the upload completes; it has no priority, so with one the job is made after.
    const viaMetadata = prio == null;
    const metadata = { filename: f.name, filetype: f.type || 'application/octet-stream' };
    if (viaMetadata) Object.assign(metadata, { 'ferry-kind': kind.value.trim(), 'ferry-params': JSON.stringify(p), 'ferry-input': input });
    uploading = new AbortController();
    const signal = uploading.signal;
    submit.disabled = true;
    abort.hidden = false;
    progressRow.hidden = false;
    const started = Date.now();
    let tusUrl = null;
    try {
      const up = await tusUpload(f, {
        metadata, signal,
        onProgress: (done, total) => {
          bar.value = total ? (done / total) * 100 : 100;
          const rate = done / Math.max(0.001, (Date.now() - started) / 1000);
          barText.textContent = `${bytes(done)} of ${bytes(total)} (${bytes(rate)}/s)`;
        },
      });
      tusUrl = up.url;
      let jobId = up.jobLocation?.split('/').pop();
      if (!jobId) {
        // No metadata job (a priority was given), or it could not be made when the upload
        // completed (Ferry-Job-Problem): create it now, which also explains any refusal.
        const job = await getJson('/v1/jobs', { method: 'POST', signal, json: { kind: kind.value.trim(), inputs: { [input]: up.uploadId }, params: p, priority: prio } });
        jobId = job.id;
      }
      announce(`Uploaded ${f.name}; job ${jobId} created.`);
      location.hash = `#/jobs/${jobId}`;
    } catch (err) {
      if (signal.aborted) {
        announce('Upload stopped.');
        if (tusUrl) request(tusUrl, { method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0' } }).catch(() => {});
      } else report(err);
    } finally {
      submit.disabled = false;
      abort.hidden = true;
      uploading = null;
    }
  });
}

// 7.5 Queue — counts per kind and version, and the last hour drawn as three charts.

function queueView(ctx) {
  document.title = 'Queue · Ferry';
  const note = h('p', { class: 'small muted', 'data-testid': 'queue-note', text: 'Loading…' });
  const tbody = h('tbody');
  const charts = h('div', { class: 'charts', 'data-testid': 'charts' });
  main.append(h('h1', { text: 'Queue' }), note,
    h('div', { class: 'table-wrap' }, h('table', { 'data-testid': 'queue-table' },
      h('caption', { class: 'muted small', text: 'Now, per kind and version. Refreshed every 10 s.' }),
      h('thead', {}, h('tr', {}, ['Kind', 'Queued', 'Running', 'Oldest queued', 'Live workers'].map((c, i) =>
        h('th', { scope: 'col', class: i ? 'num' : null, text: c })))),
      tbody)),
    h('h2', { text: 'The last hour' }), charts);

  // Pages through GET /v1/jobs (newest first) up to `cap` jobs.
  async function listAll(filters, cap) {
    const items = [];
    let next = null;
    do {
      const page = await getJson(`/v1/jobs${qs({ ...filters, limit: 200, next })}`, { signal: ctx.signal });
      items.push(...page.items);
      next = page.next;
    } while (next && items.length < cap);
    return { items: items.slice(0, cap), capped: Boolean(next) || items.length > cap };
  }

  async function refresh() {
    const now = Date.now();
    const from = now - 3600 * 1000;
    try {
      const [kinds, queued, running, recent] = await Promise.all([
        loadKinds(), listAll({ status: 'queued' }, QUEUE_JOB_CAP), listAll({ status: 'running' }, QUEUE_JOB_CAP),
        listAll({ created_after: new Date(from).toISOString() }, QUEUE_JOB_CAP)]);
      renderCounts(kinds, queued, running, now);
      renderCharts(recent.items, from, now);
      const capped = [queued.capped && 'queued', running.capped && 'running', recent.capped && 'last hour'].filter(Boolean);
      note.textContent = `Updated ${new Date(now).toLocaleTimeString()}. ` +
        (capped.length ? `Capped at ${QUEUE_JOB_CAP} jobs (${capped.join(', ')}): counts are lower bounds and charts cover the newest ${QUEUE_JOB_CAP} jobs only.` : 'Charts count the jobs created in the last hour.');
    } catch (err) { report(err); }
  }

  function renderCounts(kinds, queued, running, now) {
    const groups = new Map();
    const group = (kind, version) => {
      const key = version ? `${kind}@${version}` : kind;
      if (!groups.has(key)) groups.set(key, { key, queued: 0, running: 0, oldest: null, workers: null });
      return groups.get(key);
    };
    for (const k of kinds.items) {
      if (!k.versions.length) group(k.kind, null).workers = k.served_by.length;
      for (const v of k.versions) group(k.kind, v.name).workers = v.served_by.length;
    }
    for (const j of queued.items) {
      const g = group(j.kind, j.version);
      g.queued += 1;
      if (!g.oldest || j.created_at < g.oldest) g.oldest = j.created_at;
    }
    for (const j of running.items) group(j.kind, j.version).running += 1;
    const more = (capped) => (capped ? '+' : '');
    tbody.replaceChildren(...[...groups.values()].sort((a, b) => a.key.localeCompare(b.key)).map((g) => h('tr', {},
      h('th', { scope: 'row', text: g.key }),
      h('td', { class: 'num', text: `${g.queued}${more(queued.capped)}` }),
      h('td', { class: 'num', text: `${g.running}${more(running.capped)}` }),
      h('td', { class: 'num', text: g.oldest ? duration((now - Date.parse(g.oldest)) / 1000) : '—' }),
      h('td', { class: 'num', text: g.workers ?? '—' }))));
    if (!groups.size) tbody.append(h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'No kinds served.' })));
  }

  function renderCharts(jobs, from, now) {
    const minutes = 60;
    const slot = (t) => Math.floor((t - from) / 60000);
    // Depth at t: jobs created by t that had not started (or, never started, finished) by t.
    const spans = jobs.map((j) => [Date.parse(j.created_at), Date.parse(j.started_at ?? j.finished_at ?? '') || Infinity]);
    const depth = [];
    for (let t = from; t <= now; t += 30000) depth.push({ t, v: spans.filter(([c, s]) => c <= t && t < s).length });
    // Throughput: finishes per minute; latency: submit → start, per minute of starting.
    const finished = Array.from({ length: minutes }, (_, i) => ({ t: from + i * 60000, v: 0 }));
    const waits = Array.from({ length: minutes }, () => []);
    for (const j of jobs) {
      if (j.finished_at) { const i = slot(Date.parse(j.finished_at)); if (i >= 0 && i < minutes) finished[i].v += 1; }
      if (j.started_at) {
        const i = slot(Date.parse(j.started_at));
        if (i >= 0 && i < minutes) waits[i].push((Date.parse(j.started_at) - Date.parse(j.created_at)) / 1000);
      }
    }
    const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
    const latMedian = waits.map((xs, i) => ({ t: from + i * 60000 + 30000, v: xs.length ? median(xs) : null }));
    const latMax = waits.map((xs, i) => ({ t: from + i * 60000 + 30000, v: xs.length ? Math.max(...xs) : null }));
    const total = finished.reduce((a, b) => a + b.v, 0);
    charts.replaceChildren(
      chart({ id: 'chart-depth', title: 'Queue depth', desc: `Jobs waiting to start; now ${depth.at(-1).v}, peak ${Math.max(...depth.map((d) => d.v))}.`, yLabel: 'jobs queued', from, to: now, series: [{ name: 'queued', type: 'line', points: depth }] }),
      chart({ id: 'chart-throughput', title: 'Throughput', desc: `Jobs finished per minute; ${total} in the hour.`, yLabel: 'jobs finished / min', from, to: now, series: [{ name: 'finished', type: 'bar', points: finished }] }),
      chart({ id: 'chart-latency', title: 'Latency, submit to start', desc: 'Seconds from creation to start, per minute of starting: median and maximum.', yLabel: 'seconds', from, to: now, series: [{ name: 'median', type: 'line', points: latMedian }, { name: 'max', type: 'line', points: latMax }] }));
  }

  refresh();
  ctx.every(10000, refresh);
}

// ───────────────────────────── 8. SVG charts ─────────────────────────────
// A small time-series chart: lines (null values leave gaps) or one-minute bars, with y grid,
// axis labels, a <title> and <desc> for assistive technology.

const SVG_NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
  el.append(...flat(children));
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v);
}

function chart({ id, title, desc, yLabel, from, to, series }) {
  const W = 600, H = 230, L = 56, R = 14, T = 12, B = 44;
  const pw = W - L - R, ph = H - T - B;
  const values = series.flatMap((se) => se.points.map((p) => p.v)).filter((v) => v != null);
  const ymax = niceMax(Math.max(0, ...values));
  const x = (t) => L + ((t - from) / (to - from)) * pw;
  const y = (v) => T + ph - (v / ymax) * ph;
  const fmt = (v) => String(Number(v.toPrecision(3)));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': `${title}. ${desc}`, 'data-testid': id },
    s('title', {}, title), s('desc', {}, desc));
  for (const v of [0, ymax / 2, ymax]) {
    svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmt(v)));
  }
  const step = 15 * 60000;
  for (let t = Math.ceil(from / step) * step; t <= to; t += step) {
    svg.append(s('line', { class: 'axis', x1: x(t), x2: x(t), y1: T + ph, y2: T + ph + 4 }),
      s('text', { x: x(t), y: T + ph + 16, 'text-anchor': 'middle' }, hhmm(t)));
  }
  svg.append(
    s('line', { class: 'axis', x1: L, x2: L, y1: T, y2: T + ph }),
    s('line', { class: 'axis', x1: L, x2: W - R, y1: T + ph, y2: T + ph }),
    s('text', { class: 'label', x: L + pw / 2, y: H - 6, 'text-anchor': 'middle' }, 'time (local)'),
    s('text', { class: 'label', x: -(T + ph / 2), y: 14, transform: 'rotate(-90)', 'text-anchor': 'middle' }, yLabel));
  series.forEach((se, i) => {
    if (se.type === 'bar') {
      const w = (pw / 60) * 0.8;
      for (const p of se.points) {
        if (!p.v) continue;
        svg.append(s('rect', { class: 'bar', x: x(p.t) + w * 0.1, y: y(p.v), width: w, height: T + ph - y(p.v) },
          s('title', {}, `${hhmm(p.t)}: ${p.v} ${se.name}`)));
      }
      return;
    }
    let d = '';
    let pen = false;
    for (const p of se.points) {
      if (p.v == null) { pen = false; continue; }
      d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)} `;
      pen = true;
      if (se.points.length <= 60) svg.append(s('circle', { class: `s${i}`, cx: x(p.t), cy: y(p.v), r: 2.5 }, s('title', {}, `${hhmm(p.t)}: ${fmt(p.v)} (${se.name})`)));
    }
    if (d) svg.append(s('path', { class: `line s${i}`, d }));
  });
  const legend = series.length > 1
    ? h('div', { class: 'legend' }, series.map((se, i) => h('span', {}, h('span', { class: `swatch s${i}` }), se.name)))
    : null;
  return h('figure', {}, h('figcaption', { text: title }), svg, legend);
}

// ───────────────────────────── 9. Start-up ─────────────────────────────

forgetKeyButton.addEventListener('click', () => {
  sessionStorage.removeItem(KEY_STORAGE);
  updateKeyButton();
  announce('Key forgotten.');
  route(true);
});
document.querySelector('.skip-link').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});
window.addEventListener('hashchange', () => route());
// Relative ages ("2 min ago") age: refresh them in place.
setInterval(() => { for (const t of document.querySelectorAll('time[data-rel]')) renderTime(t); }, 15000);
updateKeyButton();
route();
