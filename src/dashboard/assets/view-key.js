// The API key form — shown in place of the page whenever a request answers 401 — and the
// header's "Forget key" button. Stores and drops the key through api.js (which owns
// sessionStorage); does not route: app.js decides when the form shows and what follows it.

import { h } from './dom.js';
import { announce } from './status.js';
import { apiKey, forgetApiKey, setApiKey } from './api.js';
import { main } from './widgets.js';

const forgetKeyButton = document.getElementById('forget-key');

export function updateKeyButton() { forgetKeyButton.hidden = !apiKey(); }

/** Wires the header's Forget key button; then() shows the page again (the router's re-render). */
export function wireForgetKey(then) {
  forgetKeyButton.addEventListener('click', () => {
    forgetApiKey();
    updateKeyButton();
    announce('Key forgotten.');
    then();
  });
}

/**
 * Drops the refused key (if any) and fills <main> with the key form; `message` says why (null:
 * no key was sent). onSaved runs once a key is stored. The caller has closed the current view.
 */
export function keyView(message, onSaved) {
  if (apiKey()) forgetApiKey();
  updateKeyButton();
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
    setApiKey(key);
    updateKeyButton();
    announce('Key saved for this tab.');
    onSaved();
  });
  main.replaceChildren(form);
  if (message) announce(message, 'error');
  input.focus();
}
