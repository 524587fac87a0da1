// Ferry dashboard: a single-page app over Ferry's public HTTP API (openapi.yaml). No build step,
// no libraries, nothing from other origins. The server sends a strict Content-Security-Policy
// (script-src 'self', style-src 'self'), so the page is built with DOM calls only: no HTML
// strings, no inline styles or handlers — which also means nothing a handler wrote (a progress
// message, a result, a log line) can ever be interpreted as markup.
//
// This is the entry module (index.html loads it alone; it imports the rest): the router, the
// views' lifecycle and start-up. It draws no view itself (beyond "not found") and makes no
// request: views do their own work through api.js. Modules, each importing only from those
// before it: dom · status · api · sse, tus · widgets, charts · view-key, view-jobs, view-job,
// view-upload, view-queue · app.

import { h, renderTime } from './dom.js';
import { setUnauthorizedHandler } from './api.js';
import { main } from './widgets.js';
import { keyView, updateKeyButton, wireForgetKey } from './view-key.js';
import { jobsView } from './view-jobs.js';
import { jobView } from './view-job.js';
import { uploadView } from './view-upload.js';
import { queueView } from './view-queue.js';

// ───────────────────────────── Router and views' lifecycle ─────────────────────────────
// Hash routes: #/jobs (default; filters in the query), #/jobs/{id}, #/upload, #/queue. Each
// view gets a ViewContext whose close() aborts its requests and stops its timers and streams.

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

// A request answered 401 (api.js calls this): the key form takes the current view's place,
// once per route — the view's other requests fail the same way meanwhile.
function askForKey(message) {
  if (keyPromptShown) return;
  keyPromptShown = true;
  current?.ctx.close();
  current = null;
  keyView(message, () => route(true));
}

// ───────────────────────────── Start-up ─────────────────────────────

setUnauthorizedHandler(askForKey); // before the first request
wireForgetKey(() => route(true));
document.querySelector('.skip-link').addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});
window.addEventListener('hashchange', () => route());
// Relative ages ("2 min ago") age: refresh them in place.
setInterval(() => { for (const t of document.querySelectorAll('time[data-rel]')) renderTime(t); }, 15000);
updateKeyButton();
route();
