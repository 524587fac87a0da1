#!/usr/bin/env python3
"""What a Prometheus scrape of GET /metrics costs as the queue deepens: the queue's gauges are
read from the database at each scrape (queued jobs counted by kind and version), so the cost
grows with the number of queued jobs.

    python3 scripts/bench_metrics_scrape.py --bin target/release/ferry [--queued 1,100000]
                                            [--scrapes 20] [--dir DIR]

Standard library only, Python 3.10+, Linux, SQLite. For each queue depth: a fresh `ferry serve`
without workers (so jobs stay queued; `bench.Server`, as the benchmark starts its servers) in a
temporary data folder makes one `digest` job; the server is stopped (by its PID), the job's row is
copied into `ferry_jobs` until that many jobs are queued (new ids, the same everything else: the
queue a burst of uploads would leave), the server starts again, and GET /metrics is timed --scrapes
times after 5 warm-up scrapes, on one connection after another. The scrape must report the depth it
was given. Progress goes to stderr, the table (markdown) to stdout.
"""

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid

from bench import Client, Server

WARM_UP = 5


def fill_queue(database: str, queued: int) -> None:
    """Copies the one job's row until `queued` jobs wait."""
    db = sqlite3.connect(database)
    columns = [row[1] for row in db.execute("PRAGMA table_info(ferry_jobs)")]
    template = db.execute(f"SELECT {','.join(columns)} FROM ferry_jobs").fetchone()
    as_bytes = isinstance(template[0], bytes)
    rows = []
    for _ in range(queued - 1):
        row = list(template)
        new_id = uuid.uuid4()
        row[0] = new_id.bytes if as_bytes else str(new_id)
        rows.append(row)
    marks = ",".join("?" * len(columns))
    db.executemany(f"INSERT INTO ferry_jobs ({','.join(columns)}) VALUES ({marks})", rows)
    db.commit()
    db.close()


def measure(binary: str, root: str, queued: int, scrapes: int) -> list[float]:
    server = Server(binary, root, f"queued-{queued}", "workers = false\n")
    try:
        server.wait_ready()
        status, body = Client(server).call("POST", "/v1/kinds/digest/jobs", b"x" * 100)
        if status != 202:
            raise SystemExit(f"creating the job answered {status}: {body[:300]!r}")
        server.stop()
        fill_queue(os.path.join(server.data_dir, "ferry.db"), queued)
        server.start()
        server.wait_ready()
        times = []
        for n in range(WARM_UP + scrapes):
            began = time.perf_counter()
            conn = server.connection()  # one connection after another
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
            if n >= WARM_UP:
                times.append((time.perf_counter() - began) * 1000)
        depth = f'ferry_queue_depth{{kind="digest",version=""}} {queued}'
        if depth not in text.splitlines():
            raise SystemExit(f"the scrape does not report {queued} queued jobs")
        return times
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="the ferry binary")
    parser.add_argument("--queued", default="1,100000", help="queue depths, comma-separated")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--dir", default=None, help="where the temporary data folders go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-scrape-", dir=args.dir) as root:
        rows = []
        for queued in [int(q) for q in args.queued.split(",")]:
            print(f"{queued} queued jobs…", file=sys.stderr)
            times = measure(args.bin, root, queued, args.scrapes)
            rows.append((queued, statistics.median(times), max(times)))
    print("| queued jobs | scrape, median | max |")
    print("|---:|---:|---:|")
    for queued, median, worst in rows:
        print(f"| {queued:,} | {median:.1f} ms | {worst:.1f} ms |")


if __name__ == "__main__":
    main()
