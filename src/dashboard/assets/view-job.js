// The job view (#/jobs/{id}): summary, progress, actions, timeline, attempts, logs and results,
// live. Reads and acts through api.js and sse.js (views never call fetch directly) and draws
// into <main> only; every request, timer and object URL ends with its ViewContext.

import { bytes, clip, fill, h, pct, qs, relative, sleep, throttle, timeEl } from './dom.js';
import { announce } from './status.js';
import { describe, getJson, isQuiet, report, request } from './api.js';
import { followStream } from './sse.js';
import { badge, confirmAction, FINISHED, main, progressText, progressValue, setProgress } from './widgets.js';

const TEXT_PREVIEW_BYTES = 64 * 1024;

export function jobView(ctx, r) {
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
