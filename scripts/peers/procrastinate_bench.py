"""procrastinate's side of scripts/bench_peers.py: an async no-op task, and the commands

    python procrastinate_bench.py schema
    python procrastinate_bench.py worker --concurrency N
    python procrastinate_bench.py produce --jobs N --clients C [--rate R] [--first I]

Runs with the venv that scripts/install-peers.sh made; bench_peers.py sets the environment:
FERRY_PEER_DATABASE (a postgresql:// URL of a fresh database) and FERRY_PEER_RECORDS (a folder
for the records). The worker keeps finished jobs (procrastinate's default), so their `succeeded`
events stay in procrastinate_events, where bench_peers.py reads the completion times.
"""

import argparse
import asyncio
import json
import os
import time

import procrastinate

_records = None  # this process's records file, opened at its first job


def record_start(index: int, t: float) -> None:
    """A `start INDEX SECONDS` line, one write(2), so nothing is lost when stopped."""
    global _records
    if _records is None:
        name = f"procrastinate-{os.getpid()}.records"
        path = os.path.join(os.environ["FERRY_PEER_RECORDS"], name)
        _records = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(_records, f"start {index} {t}\n".encode())


async def noop(i: int) -> None:
    record_start(i, time.time())


def make_app(pool_size: int) -> procrastinate.App:
    """The app with its `noop` task, on a Psycopg 3 pool of `pool_size` connections, all opened
    up front (so that the first jobs do not pay for connecting)."""
    connector = procrastinate.PsycopgConnector(conninfo=os.environ["FERRY_PEER_DATABASE"],
                                               min_size=pool_size, max_size=pool_size)
    app = procrastinate.App(connector=connector)
    app.task(name="noop")(noop)
    return app


async def apply_schema() -> None:
    async with make_app(1).open_async() as app:
        await app.schema_manager.apply_schema_async()


def run_worker(concurrency: int) -> None:
    """One worker with `concurrency` sub-workers and a pool of concurrency + 1 connections, as
    procrastinate's docs advise for short jobs (LISTEN/NOTIFY has a connection of its own).
    Stops gracefully on SIGTERM."""
    make_app(concurrency + 1).run_worker(concurrency=concurrency)


async def produce(n_jobs: int, n_clients: int, rate: float, first: int) -> dict:
    """C clients, asyncio tasks each holding a pool connection in turn, call
    `noop.defer_async` as fast as they can or, with `rate`, job k no earlier than k / rate seconds
    after the start. Returns {submits: [[INDEX, SECONDS just before defer_async]], seconds,
    errors}."""
    counter, submits, errors = iter(range(n_jobs)), [], []
    async with make_app(n_clients).open_async() as app:
        task = app.tasks["noop"]
        start = time.time()

        async def client() -> None:
            for k in counter:  # shared: each index goes to one client
                if rate:
                    await asyncio.sleep(max(0.0, start + k / rate - time.time()))
                t = time.time()
                try:
                    await task.defer_async(i=first + k)
                except Exception as e:  # noqa: BLE001 - counted, reported by bench_peers.py
                    errors.append(f"job {first + k}: {e!r}")
                    continue
                submits.append((first + k, t))

        await asyncio.gather(*(client() for _ in range(n_clients)))
        return {"submits": submits, "seconds": time.time() - start, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["schema", "worker", "produce"])
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--first", type=int, default=0)
    args = ap.parse_args()
    if args.command == "schema":
        asyncio.run(apply_schema())
    elif args.command == "worker":
        run_worker(args.concurrency)
    else:
        print(json.dumps(asyncio.run(produce(args.jobs, args.clients, args.rate, args.first))))


if __name__ == "__main__":
    main()
