// SVG charts: draws one time-series chart from the points it is given. Fetches nothing and
// computes no statistics (the queue view does): data in, <figure> out.
//
// A small time-series chart: lines (null values leave gaps) or one-minute bars, with y grid,
// axis labels, a <title> and <desc> for assistive technology.

import { flat, h, hhmm } from './dom.js';

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

export function chart({ id, title, desc, yLabel, from, to, series }) {
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
