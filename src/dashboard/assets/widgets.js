// Shared view helpers: the page's <main>, form fields, status badges, job progress bars and their text, and
// the confirmation dialog — pieces more than one view draws the same way. Pure presentation: no
// requests (views load data through api.js), no routing, no view state.

import { clip, h, pct } from './dom.js';

/** The page's <main>: the current view renders into it (app.js empties it between views). */
export const main = document.getElementById('main');

export const FINISHED = new Set(['succeeded', 'failed', 'canceled']);

export function kindLabel(job) { return job.version ? `${job.kind}@${job.version}` : job.kind; }
/** A labelled form field: `input` (with id `id`) and anything shown after it. */
export function field(id, label, input, ...extra) {
  return h('div', { class: 'field' }, h('label', { for: id, text: label }), input, ...extra);
}

export function badge(status) { return h('span', { class: `badge ${status}`, text: status }); }

/** What a <progress> shows for a job: its last report; done is 100 %. */
export function progressValue(job) {
  if (job.status === 'succeeded') return 100;
  return job.progress?.percent ?? (job.status === 'running' ? null : 0);
}
export function progressText(job) {
  const p = job.progress;
  if (!p) return job.status === 'queued' ? (job.waiting_for ?? 'waiting') : '';
  return [p.percent != null ? pct(p.percent) : null, p.stage, p.message && `— ${clip(p.message, 140)}`]
    .filter(Boolean).join(' ');
}
export function setProgress(el, value) {
  if (value == null) el.removeAttribute('value'); // indeterminate: running, no report yet
  else el.value = value;
}

/** The shared <dialog>: resolves true for Confirm, false for Back or Escape. */
export function confirmAction(text) {
  const dialog = document.getElementById('confirm-dialog');
  document.getElementById('confirm-text').textContent = text;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), { once: true });
    dialog.showModal();
  });
}
