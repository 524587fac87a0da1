// Status messages: the one aria-live region under the header (#status), which screen readers
// announce. Owns that element alone; knows nothing about the API — api.js turns errors into
// text (describe, report) and hands it to announce().

const statusEl = document.getElementById('status');
let statusTimer = null;

export function announce(text, kind = 'info') {
  clearTimeout(statusTimer);
  statusEl.textContent = text;
  statusEl.className = `status ${kind}`;
  if (kind === 'info') statusTimer = setTimeout(() => { statusEl.textContent = ''; }, 8000);
}
