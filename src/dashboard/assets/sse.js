// SSE reader: follows Ferry's event streams (a job's events, the server-wide feed) and keeps the
// feed's cursor. Reads through api.js's request() (never fetch directly) and renders nothing:
// views get parsed events through callbacks.
//
// EventSource cannot send an Authorization header, so streams are read with fetch() and parsed
// here, per WHATWG HTML's event-stream format: `field: value` lines, a blank line ends a frame,
// `:` lines are comments (Ferry's keep-alives).

import { qs, sleep } from './dom.js';
import { ApiError, getJson, isQuiet, request } from './api.js';

async function* sseFrames(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let frame = { event: 'message', data: [], id: null, retry: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      for (;;) {
        const m = /\r\n|\n|\r/.exec(buf);
        // A lone \r at the end may be the first half of \r\n: wait for more.
        if (!m || (m[0] === '\r' && m.index === buf.length - 1)) break;
        const line = buf.slice(0, m.index);
        buf = buf.slice(m.index + m[0].length);
        if (line === '') {
          if (frame.data.length || frame.id != null) yield { ...frame, data: frame.data.join('\n') };
          frame = { event: 'message', data: [], id: null, retry: null };
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') frame.data.push(val);
          else if (field === 'event') frame.event = val;
          else if (field === 'id' && !val.includes('\0')) frame.id = val;
          else if (field === 'retry' && /^\d+$/.test(val)) frame.retry = Number(val);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Whether retrying cannot help: a 4xx other than 408/429 (a bad cursor, a deleted job). */
export function wontHeal(err) {
  return err instanceof ApiError && err.status >= 400 && err.status < 500 && ![408, 429].includes(err.status);
}

/**
 * Follows an SSE endpoint until the signal aborts: reconnects after the stream ends or fails
 * (backing off on failures), resuming with Last-Event-ID from the last frame's id. A 204 means
 * "nothing will follow" (a finished job's stream) and ends it. onState('live' | 'down') lets a
 * view fall back to polling while the stream is down.
 */
export function followStream(path, { signal, onEvent, onState, onEnd, onId }) {
  let lastId = null;
  let retry = 2000;
  let failures = 0;
  (async () => {
    while (!signal.aborted) {
      try {
        const headers = lastId != null ? { 'Last-Event-ID': lastId } : {};
        const res = await request(path, { headers, signal, accept: 'text/event-stream' });
        if (res.status === 204) { onEnd?.(); return; }
        if (!(res.headers.get('Content-Type') ?? '').startsWith('text/event-stream')) {
          res.body?.cancel().catch(() => {});
          throw new ApiError(res.status, { title: 'Not an event stream', code: 'not_event_stream' });
        }
        failures = 0;
        onState?.('live');
        for await (const frame of sseFrames(res)) {
          if (frame.retry != null) retry = frame.retry;
          if (frame.id != null) { lastId = frame.id; onId?.(lastId); }
          if (frame.data) {
            let data;
            try { data = JSON.parse(frame.data); } catch { continue; }
            onEvent(data, frame.event);
          }
        }
      } catch (err) {
        if (signal.aborted || isQuiet(err)) return;
        failures += 1;
        onState?.('down', err);
        if (wontHeal(err)) return;
      }
      await sleep(failures ? Math.min(30000, retry * 2 ** Math.min(failures - 1, 4)) : retry, signal);
    }
  })();
}

/**
 * Where the server-wide feed ends now: `after=now` answers an empty page whose `next` is the
 * feed's end, so the table follows what happens from here on without reading the history.
 * After the first time, the stream resumes from the last event id it saw (nothing missed while
 * the page was elsewhere).
 */
let feedCursor = null;
export async function feedTip(signal) {
  if (!feedCursor) {
    const page = await getJson(`/v1/events${qs({ after: 'now', limit: 1 })}`, { signal });
    feedCursor = page.next;
  }
  return feedCursor;
}
/** Records the last feed event id seen (null forgets it: the next feedTip asks for the end). */
export function setFeedCursor(id) { feedCursor = id; }
