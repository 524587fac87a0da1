// The jobs view (#/jobs): the table, its filters and paging, updated live from the event feed.
// Reads through api.js and sse.js (views never call fetch directly) and draws into <main>
// only; the router (app.js) creates it, hands it a ViewContext and calls it back on a filter
// change.

import { fill, h, qs, throttle, timeEl, toLocalInput } from './dom.js';
import { getJson, isQuiet, loadKinds, report } from './api.js';
import { feedTip, followStream, setFeedCursor, wontHeal } from './sse.js';
import { badge, field, FINISHED, kindLabel, main, progressText, progressValue, setProgress } from './widgets.js';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'canceled'];

export function jobsView(ctx, route0) {
  document.title = 'Jobs · Ferry';
  const status = h('select', { id: 'f-status' }, h('option', { value: '', text: 'any' }), STATUSES.map((s) => h('option', { value: s, text: s })));
  const kind = h('select', { id: 'f-kind' }, h('option', { value: '', text: 'any' }));
  const after = h('input', { id: 'f-after', type: 'datetime-local' });
  const liveEl = h('span', { class: 'live off', text: 'connecting…' });
  const tbody = h('tbody');
  const pager = h('div', { class: 'pager' });
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
      signal: ctx.signal, onEvent: onFeedEvent, onId: (id) => { setFeedCursor(id); },
      onState: (s, err) => {
        setLive(s === 'live');
        // The stream gave up (e.g. a cursor from before the server's data was reset): the
        // next view asks for the feed's end again instead of the same cursor.
        if (wontHeal(err)) setFeedCursor(null);
      },
    });
  }).catch((err) => {
    if (!isQuiet(err)) setLive(false);
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
