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

With --timeline, it also prints where the median job's time went: every statement and every
Ferry log line from its POST to its finish, in order, at its offset from the POST (in ms, by
the log's wall clock; a statement is logged when it ends, with how long it took), beside the
job's own created/started/finished times. The jobs are 100 ms apart, so that window holds only
that job's work and whatever runs on a timer.
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
from datetime import datetime

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
    ap.add_argument("--timeline", action="store_true",
                    help="also print the median job's statements and log lines, in time order")
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
                                         "ferry::storage::inline_reads=debug"
                                         + (",ferry=debug" if args.timeline else "")})
        server.wait_ready()
        time.sleep(3)  # start-up's own statements
        with open(server.log_path) as log:
            skip = sum(1 for _ in log)
        client = Client(server)
        sent = {}  # job id → wall time its POST was sent
        for _ in range(args.jobs):
            t0 = time.time()
            _, body = client.call("POST", "/v1/kinds/noop/jobs", b"x")
            sent[json.loads(body)["id"]] = t0
            time.sleep(0.1)
        with open(server.log_path) as log:
            end = sum(1 for _ in log)
        done = client.get(f"/v1/jobs?status=succeeded&limit={args.jobs}")["items"]
        if len(done) != args.jobs:
            raise SystemExit(f"only {len(done)} of {args.jobs} jobs succeeded")
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
    if args.timeline:
        print_timeline(server.log_path, done, sent)


def wall(stamp: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (the API's, or the log's)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def print_timeline(log_path: str, jobs: list[dict], sent: dict[str, float]) -> None:
    """The median job (by started_at - created_at): its times, then every log line from its POST
    to its finish."""
    jobs = sorted(jobs, key=lambda j: wall(j["started_at"]) - wall(j["created_at"]))
    job = jobs[len(jobs) // 2]
    t0 = sent[job["id"]]
    print(f"\nthe median job by dispatch (started_at - created_at, the API's millisecond "
          f"times), {job['id']}, ms after its POST was sent:")
    for k in ("created", "started", "finished"):
        print(f"  {(wall(job[k + '_at']) - t0) * 1000:8.2f}  job {k}_at")
    until = wall(job["finished_at"]) + 0.005
    with open(log_path) as log:
        for line in log:
            try:
                event = json.loads(line)
                at = wall(event["timestamp"])
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
            if t0 - 0.001 <= at <= until:
                text = " ".join((event.get("db.statement") or event.get("summary")
                                 or event.get("message") or "").split())
                took = event.get("elapsed_secs")
                took = f"{float(took) * 1000:6.2f}" if took is not None else " " * 6
                print(f"  {(at - t0) * 1000:8.2f}  {took}  {event.get('target', '')[:28]:28}  "
                      f"{text[:110]}")


if __name__ == "__main__":
    main()
