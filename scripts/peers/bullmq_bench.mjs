// BullMQ's side of scripts/bench_peers.py: a worker and a producer of no-op jobs on queue
// `ferry-bench`, each a separate Node process against the Redis that bench_peers.py started.
//
//   node bullmq_bench.mjs worker  --port P --concurrency N
//   node bullmq_bench.mjs produce --port P --jobs N --clients C [--rate R] [--first I]
//
// BullMQ and ioredis are resolved from $FERRY_PEERS_NODE/node_modules (scripts/install-peers.sh
// installs them there, outside the clone), not from beside this file. The worker writes its
// records in the folder $FERRY_PEER_RECORDS.
//
// Times are wall-clock seconds, performance.timeOrigin + performance.now(): Date.now() has only
// millisecond resolution, too coarse for dispatch latencies of a millisecond or two.
import { createRequire } from 'node:module';
import { writeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const require = createRequire(join(process.env.FERRY_PEERS_NODE, 'package.json'));
const { Queue, Worker } = require('bullmq');

const QUEUE = 'ferry-bench';
const now = () => (performance.timeOrigin + performance.now()) / 1000;
const sleep = (seconds) => new Promise((r) => setTimeout(r, Math.max(0, seconds * 1000)));

const { positionals: [command], values: opts } = parseArgs({
  allowPositionals: true,
  options: {
    port: { type: 'string' }, concurrency: { type: 'string' },
    jobs: { type: 'string' }, clients: { type: 'string' }, rate: { type: 'string', default: '0' },
    first: { type: 'string', default: '0' },
  },
});
const connection = { host: '127.0.0.1', port: Number(opts.port) };

// One worker (one connection for commands, one blocking) with a local concurrency factor. Each
// job's handler start and its completion (the `completed` event, emitted once the job was moved
// to the completed set in Redis) go to the records file as `start|done INDEX SECONDS` lines, one
// write(2) each, so that nothing is lost when the process is stopped.
async function worker() {
  const fd = openSync(join(process.env.FERRY_PEER_RECORDS, `bullmq-${process.pid}.records`), 'a');
  const record = (kind, job, t) => writeSync(fd, `${kind} ${job.data.i} ${t}\n`);
  const w = new Worker(QUEUE, async (job) => { record('start', job, now()); },
    { connection: { ...connection, maxRetriesPerRequest: null },
      concurrency: Number(opts.concurrency) });
  w.on('completed', (job) => record('done', job, now()));
  w.on('error', (err) => console.error(`worker error: ${err}`));
  process.on('SIGTERM', async () => { await w.close(); process.exit(0); });
  await w.waitUntilReady();
}

// C clients, each a Queue with its own connection, add jobs {i: INDEX} as fast as they can or,
// with --rate, job k no earlier than k / rate seconds after the start. Prints JSON on stdout:
// {submits: [[INDEX, SECONDS just before queue.add]], seconds, errors}.
async function produce() {
  const [n, first, rate] = [Number(opts.jobs), Number(opts.first), Number(opts.rate)];
  const queues = Array.from({ length: Number(opts.clients) },
    () => new Queue(QUEUE, { connection }));
  await Promise.all(queues.map((q) => q.waitUntilReady()));
  const submits = [], errors = [];
  let next = 0;
  const start = now();
  await Promise.all(queues.map(async (queue) => {
    for (let k = next++; k < n; k = next++) {
      if (rate) await sleep(start + k / rate - now());
      const t = now();
      try {
        await queue.add('noop', { i: first + k });
        submits.push([first + k, t]);
      } catch (err) {
        errors.push(`job ${first + k}: ${err}`);
      }
    }
  }));
  const seconds = now() - start;
  await Promise.all(queues.map((q) => q.close()));
  process.stdout.write(JSON.stringify({ submits, seconds, errors }));
}

await { worker, produce }[command]();
