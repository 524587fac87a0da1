// The upload view (#/upload): a file (dropped or chosen), a kind, params; sent with tus, then
// the job's page. Sends through tus.js and api.js (views never call fetch directly) and draws
// into <main> only; window-wide drag listeners are removed when its ViewContext closes.

import { bytes, h } from './dom.js';
import { announce } from './status.js';
import { getJson, loadKinds, report, request } from './api.js';
import { tusUpload } from './tus.js';
import { field, main } from './widgets.js';

export function uploadView(ctx) {
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
        onCreated: (url) => { tusUrl = url; },
        onProgress: (done, total) => {
          bar.value = total ? (done / total) * 100 : 100;
          const rate = done / Math.max(0.001, (Date.now() - started) / 1000);
          barText.textContent = `${bytes(done)} of ${bytes(total)} (${bytes(rate)}/s)`;
        },
      });
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
