// DOM and formatting utilities: building elements (h, fill), query strings, timers, and turning
// numbers and dates into text. Knows nothing about Ferry's API, the status region or the views;
// imports nothing. Elements are built with DOM calls only (never HTML strings): the page's
// Content-Security-Policy forbids inline script and style, and text a handler wrote (a progress
// message, a result, a log line) must never be interpreted as markup.

/** Builds an element: h('a', {href: '#/jobs', class: 'x'}, 'text', child, [more children]). */
export function h(tag, props, ...children) {
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
export function fill(el, ...children) {
  el.replaceChildren(...flat(children));
  return el;
}

export function flat(children) {
  return children.flat(Infinity).filter((c) => c != null && c !== false).map((c) => (c instanceof Node ? c : String(c)));
}

export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
}

/** Resolves after ms, or at once when the signal aborts (loops then see signal.aborted). */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/** Runs fn at most once per `ms`: calls within the window fold into one run at its end. */
export function throttle(ms, fn) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

export function bytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '—';
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto', style: 'short' });
export function relative(date) {
  const s = (date.getTime() - Date.now()) / 1000;
  const a = Math.abs(s);
  if (a < 45) return rtf.format(Math.round(s), 'second');
  if (a < 45 * 60) return rtf.format(Math.round(s / 60), 'minute');
  if (a < 22 * 3600) return rtf.format(Math.round(s / 3600), 'hour');
  return rtf.format(Math.round(s / 86400), 'day');
}

/** A <time> in local time with its relative age; the ticker in app.js keeps ages fresh. */
export function timeEl(iso, { clock = false } = {}) {
  if (!iso) return h('span', { class: 'muted', text: '—' });
  const d = new Date(iso);
  // clock: the time of day alone, for dense lists (the full date is in the tooltip).
  if (clock) return h('time', { datetime: iso, title: d.toLocaleString(), text: d.toLocaleTimeString() });
  const t = h('time', { datetime: iso, title: iso, 'data-rel': '' });
  renderTime(t);
  return t;
}
export function renderTime(t) {
  const d = new Date(t.dateTime);
  t.textContent = `${d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' })} (${relative(d)})`;
}

/** `YYYY-MM-DDTHH:MM` in local time, the value format of <input type="datetime-local">. */
export function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

export function hhmm(ms) {
  return new Date(ms).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

export function pct(p) { return `${Math.round(p * 10) / 10}%`; }
export function clip(s, n) { return s && s.length > n ? `${s.slice(0, n - 1)}…` : s; }
