// The tus peer of scripts/bench_tus.py: @tus/server with @tus/file-store, as their README sets
// them up, at http://127.0.0.1:PORT/files (PORT 0 picks a free one).
//
// Usage: node server.mjs DIRECTORY [PORT]
//
// Prints `listening on http://127.0.0.1:PORT` on stdout once it accepts connections. The file store
// writes each PATCH through an fs.WriteStream and never calls fsync: what it acknowledges may still
// be in the page cache only (Ferry fsyncs before it moves Upload-Offset).
import { FileStore } from '@tus/file-store'
import { Server } from '@tus/server'

const [directory, port = '0'] = process.argv.slice(2)
if (!directory) {
  console.error('usage: node server.mjs DIRECTORY [PORT]')
  process.exit(2)
}
const tus = new Server({ path: '/files', datastore: new FileStore({ directory }) })
const http = tus.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${http.address().port}`)
})
process.on('SIGTERM', () => process.exit(0))
