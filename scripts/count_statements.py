"""Statements a ferry server runs per no-op job, counted from its statement log.

    python3 scripts/count_statements.py --bin target/release/ferry [--jobs 50] [--postgres URL]

One `ferry serve` (SQLite + local folder by default; with --postgres, a new database on that
server, named after the temporary folder, and a local folder for blobs) logging every statement
(`RUST_LOG=sqlx::query=debug,ferry::storage::inline_reads=debug`, JSON). After start-up settles,
JOBS no-op jobs are sent one at a time (`POST /v1/kinds/noop/jobs`), 100 ms apart so that each has
finished before the next (checked at the end with one list request); they are not polled, so
that the count does not depend on how long a job took. Prints the statements logged meanwhile
per job, by first keyword, apalis' (on its tables `Jobs`/`Workers`/`apalis.*`) apart from
Ferry's. What runs on a timer (heartbeats, the reconciler, the queue's polling) is in the count
too, spread over the jobs. Transaction control (BEGIN, COMMIT) is counted only where sqlx logs it
(PostgreSQL). A figure that moves little between runs, next to the noisy timings of
scripts/bench.py.
The server is scripts/bench.py's `Server`, stopped by PID; the PostgreSQL database is dropped.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
import time

from bench import Client, Server


def statement_kind(event: dict) -> str | None:
    if event.get("target") == "ferry::storage::inline_reads":
        return "inline read"
    if event.get("target") != "sqlx::query":
        return None
    text = (event.get("db.statement") or event.get("summary") or "").strip()
    if not text:
        return None
    word = text.split()[0].upper()
    return f"apalis {word}" if re.search(r"\bJobs\b|\bWorkers\b|apalis\.", text) else word


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", required=True, help="the ferry binary")
    ap.add_argument("--jobs", type=int, default=50, help="no-op jobs to send (default 50)")
    ap.add_argument("--postgres", metavar="URL", help="e.g. postgres://postgres@127.0.0.1:5432")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ferry-count-")
    database, storage = None, ""
    if args.postgres:
        database = "count_" + os.path.basename(tmp).replace("-", "_").lower()
        subprocess.run(["psql", args.postgres, "-qc", f"CREATE DATABASE {database}"], check=True)
        storage = f'database_url = "{args.postgres.rstrip("/")}/{database}"\n'
    server = None
    try:
        server = Server(args.bin, tmp, "count", storage, args=["--log-format", "json"],
                        env={"RUST_LOG": "warn,sqlx::query=debug,"
                                         "ferry::storage::inline_reads=debug"})
        server.wait_ready()
        time.sleep(3)  # start-up's own statements
        with open(server.log_path) as log:
            skip = sum(1 for _ in log)
        client = Client(server)
        for _ in range(args.jobs):
            client.call("POST", "/v1/kinds/noop/jobs", b"x")
            time.sleep(0.1)
        with open(server.log_path) as log:
            end = sum(1 for _ in log)
        done = len(client.get(f"/v1/jobs?status=succeeded&limit={args.jobs}")["items"])
        if done != args.jobs:
            raise SystemExit(f"only {done} of {args.jobs} jobs succeeded")
    finally:
        if server is not None:
            server.stop()
        if database:
            subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE {database}"], check=False)
    counts: collections.Counter[str] = collections.Counter()
    with open(server.log_path) as log:
        for n, line in enumerate(log):
            if n < skip or n >= end:
                continue
            try:
                kind = statement_kind(json.loads(line))
            except json.JSONDecodeError:
                continue
            if kind:
                counts[kind] += 1
    backend = "PostgreSQL" if database else "SQLite"
    print(f"{args.bin} on {backend}: statements per no-op job ({args.jobs} jobs, one at a time)")
    for kind, count in sorted(counts.items()):
        print(f"  {kind:16} {count / args.jobs:6.2f}")
    print(f"  {'all':16} {sum(counts.values()) / args.jobs:6.2f}")


if __name__ == "__main__":
    main()
