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
Stops its server by PID; the PostgreSQL database is dropped.
"""

import argparse
import collections
import http.client
import json
import os
import re
import subprocess
import tempfile
import threading
import time


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
    config, log_path = os.path.join(tmp, "ferry.toml"), os.path.join(tmp, "server.log")
    with open(config, "w") as f:
        f.write(f'data_dir = "{tmp}/data"\n{storage}[queue]\npoll_interval = "50ms"\n')
    env = dict(os.environ, RUST_LOG="warn,sqlx::query=debug,ferry::storage::inline_reads=debug")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([args.bin, "serve", "--config", config, "--listen", "127.0.0.1:0",
                                 "--log-format", "json"], stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        port = 0
        for line in proc.stdout:  # type: ignore[union-attr]
            if m := re.search(rb"listening on http://\S+:(\d+)", line):
                port = int(m.group(1))
                break
        if not port:
            raise SystemExit(f"the server reported no address (exit code {proc.wait()})")
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        time.sleep(3)  # start-up's own statements
        with open(log_path) as log:
            skip = sum(1 for _ in log)
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(args.jobs):
            client.request("POST", "/v1/kinds/noop/jobs", body=b"x")
            client.getresponse().read()
            time.sleep(0.1)
        with open(log_path) as log:
            end = sum(1 for _ in log)
        client.request("GET", f"/v1/jobs?status=succeeded&limit={args.jobs}")
        done = len(json.loads(client.getresponse().read())["items"])
        if done != args.jobs:
            raise SystemExit(f"only {done} of {args.jobs} jobs succeeded")
    finally:
        proc.terminate()
        proc.wait(30)
        if database:
            subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE {database}"], check=False)
    counts: collections.Counter[str] = collections.Counter()
    with open(log_path) as log:
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
