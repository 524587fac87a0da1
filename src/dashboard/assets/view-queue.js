// The queue view (#/queue): counts per kind and version, and the last hour drawn as three
// charts. Reads through api.js (views never call fetch directly), computes the series and
// leaves the drawing to charts.js; refreshes on its ViewContext's timer.

import { duration, h, qs } from './dom.js';
import { getJson, loadKinds, report } from './api.js';
import { chart } from './charts.js';
import { main } from './widgets.js';

const QUEUE_JOB_CAP = 2000;

export function queueView(ctx) {
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
