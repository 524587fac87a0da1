// tus uploader: sends one File with the tus 1.0 protocol and reports its progress. Talks to
// the server only through api.js's request() (never fetch directly) and builds no page: the
// upload view draws the progress it reports.
//
// Resumable upload (tus 1.0, /v1/tus): POST creates it, PATCHes of TUS_CHUNK bytes fill it, and
// after a failed PATCH a HEAD says where the server's durable offset is. With `ferry-kind` in
// the metadata the request that completes the upload creates the job (Ferry-Job-Location).

import { sleep } from './dom.js';
import { announce } from './status.js';
import { ApiError, describe, isQuiet, request } from './api.js';

const TUS_CHUNK = 8 * 1024 * 1024; // one PATCH; the server's default write unit is 8 MiB too

function tusMetadata(meta) {
  const b64 = (s) => {
    let bin = '';
    for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
    return btoa(bin);
  };
  return Object.entries(meta).filter(([, v]) => v != null && v !== '').map(([k, v]) => `${k} ${b64(v)}`).join(',');
}

export async function tusUpload(file, { metadata, signal, onProgress, onCreated }) {
  const tus = { 'Tus-Resumable': '1.0.0' };
  const created = await request('/v1/tus', {
    method: 'POST', signal,
    headers: { ...tus, 'Upload-Length': String(file.size), 'Upload-Metadata': tusMetadata(metadata) },
  });
  await created.arrayBuffer(); // empty, but read: an unread body stays pending in the browser
  const url = new URL(created.headers.get('Location'), location.href).pathname;
  onCreated?.(url); // so that a stopped upload can be deleted even mid-transfer
  let offset = Number(created.headers.get('Upload-Offset') ?? 0);
  let jobLocation = created.headers.get('Ferry-Job-Location');
  let jobProblem = created.headers.get('Ferry-Job-Problem');
  // Where the server says the upload stands (after a failure, and at the end for the job).
  const askWhere = async () => {
    const head = await request(url, { method: 'HEAD', signal, headers: tus });
    offset = Number(head.headers.get('Upload-Offset'));
    jobLocation = head.headers.get('Ferry-Job-Location') ?? jobLocation;
    jobProblem = head.headers.get('Ferry-Job-Problem') ?? jobProblem;
  };
  let failures = 0;
  let lost = false; // a request failed: ask where the upload stands before the next PATCH
  onProgress(offset, file.size);
  while (offset < file.size) {
    try {
      if (lost) {
        await askWhere();
        lost = false;
      } else {
        const res = await request(url, {
          method: 'PATCH', signal, body: file.slice(offset, offset + TUS_CHUNK),
          headers: { ...tus, 'Content-Type': 'application/offset+octet-stream', 'Upload-Offset': String(offset) },
        });
        offset = Number(res.headers.get('Upload-Offset'));
        jobLocation = res.headers.get('Ferry-Job-Location') ?? jobLocation;
        jobProblem = res.headers.get('Ferry-Job-Problem') ?? jobProblem;
        failures = 0;
      }
    } catch (err) {
      if (signal.aborted || isQuiet(err)) throw err;
      // Network trouble, a stale offset (409), a locked upload (423), throttling or a 5xx
      // (of the PATCH or of the HEAD after it): wait, ask where the upload stands, resume
      // from there. Anything else is final.
      const transient = err instanceof ApiError && (err.status === 0 || [408, 409, 423, 429].includes(err.status) || (err.status >= 500 && err.status !== 501));
      failures += 1;
      if (!transient || failures > 8) throw err;
      announce(`Upload interrupted (${describe(err)}); resuming…`);
      await sleep(Math.min(15000, 500 * 2 ** failures), signal);
      lost = true;
    }
    onProgress(offset, file.size);
  }
  if (!jobLocation && !jobProblem && metadata['ferry-kind']) await askWhere();
  return { url, uploadId: url.split('/').pop(), jobLocation, jobProblem };
}
