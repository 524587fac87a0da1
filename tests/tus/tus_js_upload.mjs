// Uploads a file with tus-js-client (the tus client of Uppy and most web apps), as a Node user's
// script would.
//
// Usage: node tus_js_upload.mjs ENDPOINT FILE CHUNK_BYTES [PROTOCOL]
//
// PROTOCOL is tus-js-client's `protocol` option: tus-v1 (the default), ietf-draft-03 or
// ietf-draft-05. The file goes in as an fs.ReadStream, which tus-js-client 4 reads one chunk at a
// time from disk; FERRY_TUS_JS_SOURCE=buffer passes it as a Buffer (read whole into memory)
// instead. The two differ under the IETF drafts: with a ReadStream, tus-js-client 4.3.1 sends
// `Upload-Complete: ?0` on every PATCH, the last one too, unless one chunk holds the whole file;
// with a Buffer the last PATCH says `?1`.
//
// Each failed request is retried up to 200 times, 200 ms apart (tus-js-client then asks the server
// for the offset with HEAD and resumes from it; it gives up at once on a 4xx other than 409 and
// 423). Prints the upload's URL on its last stdout line; on failure, the error on stderr and exit
// status 1. FERRY_API_KEY, when set, is sent as a bearer token; FERRY_TUS_JS_TRACE=1 writes each
// request and response (method, URL, headers, status) to stderr; FERRY_TUS_JS_PARALLEL=N sends the
// file as N partial uploads at once, joined by a final one (tus' concatenation; tus-v1 only).
//
// tus-js-client comes from tools/node_modules (tools/package.json pins it; scripts/install-tools.sh
// installs it), or from $FERRY_TOOLS_NODE_MODULES. An ES module ignores NODE_PATH, so the package
// is loaded with require() from there; NODE_PATH is still searched after it.
import { createReadStream, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const nodeModules =
  process.env.FERRY_TOOLS_NODE_MODULES || path.resolve(here, '../../tools/node_modules')
const require = createRequire(import.meta.url)
const tus = require(require.resolve('tus-js-client', { paths: [nodeModules] }))

const [endpoint, file, chunkArg, protocol = 'tus-v1'] = process.argv.slice(2)
const chunkSize = Number(chunkArg)
if (!endpoint || !file || !(chunkSize > 0)) {
  console.error('usage: node tus_js_upload.mjs ENDPOINT FILE CHUNK_BYTES [PROTOCOL]')
  process.exit(2)
}

const trace = process.env.FERRY_TUS_JS_TRACE === '1'
const apiKey = process.env.FERRY_API_KEY
const source =
  process.env.FERRY_TUS_JS_SOURCE === 'buffer' ? readFileSync(file) : createReadStream(file)
const upload = new tus.Upload(source, {
  endpoint,
  protocol,
  chunkSize,
  parallelUploads: Number(process.env.FERRY_TUS_JS_PARALLEL || 1),
  retryDelays: Array(200).fill(200),
  metadata: { filename: path.basename(file), filetype: 'application/octet-stream' },
  headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {},
  onAfterResponse(req, res) {
    if (!trace) return
    const sent = req.getUnderlyingObject().getHeaders()
    const got = res.getUnderlyingObject().headers
    console.error(`> ${req.getMethod()} ${req.getURL()} ${JSON.stringify(sent)}`)
    console.error(`< ${res.getStatus()} ${JSON.stringify(got)}`)
  },
  onError(err) {
    console.error(`tus-js-client: ${err.message ?? err}`)
    process.exit(1)
  },
  onSuccess() {
    console.log(upload.url)
  },
})
upload.start()
