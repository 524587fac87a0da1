"""Deep-queue soak on SQLite: does a queue of 100,000 waiting tasks slow starting other jobs, or
stall them, over minutes?

    python3 scripts/soak_deep_queue.py --bin target/release/ferry [--seconds 300] [--backlog 100000]

One `ferry serve` (SQLite + local folder, its own temporary folder). It is started once to create
its database and stopped; BACKLOG tasks are then written pending into apalis' table for a queue
no worker serves (as tests/api/query_plans.rs does: creating them through the API would take
minutes), and the server started again. Then a no-op job is sent every 20 ms for SECONDS; each is
read back at the end. Prints submit → start (the job's `started_at - created_at`) per minute,
the jobs left unfinished, and how many warnings or errors the server logged. Figures, no
verdict: a person judges. The server is scripts/bench.py's `Server`, stopped by PID.
"""

import argparse
import json
import os
import sqlite3
import tempfile
import time
from datetime import datetime

from bench import Client, Server


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", required=True, help="the ferry binary (a release build)")
    ap.add_argument("--seconds", type=int, default=300, help="how long to send jobs (default 300)")
    ap.add_argument("--backlog", type=int, default=100_000, help="tasks waiting (default 100000)")
    args = ap.parse_args()

    server = Server(args.bin, tempfile.mkdtemp(prefix="ferry-soak-"), "soak", "")
    server.wait_ready()
    server.stop()
    db = sqlite3.connect(os.path.join(server.data_dir, "ferry.db"))
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO Jobs (job, id, job_type, status, run_at) "
        "SELECT X'7b7d', printf('%026d', i), 'ferry.jobs.parked', 'Pending', 0 FROM n",
        (args.backlog,))
    db.commit()
    db.close()

    server.start()
    try:
        server.wait_ready()
        db = sqlite3.connect(os.path.join(server.data_dir, "ferry.db"))
        stats = db.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'Jobs'").fetchall()
        db.close()
        print(f"server pid {server.pid}, folder {server.root}; statistics of Jobs: {stats}")
        client = Client(server)
        sent: list[tuple[float, str]] = []
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < args.seconds:
            if (wait := began + len(sent) * 0.02 - time.monotonic()) > 0:
                time.sleep(wait)
            _, reply = client.call("POST", "/v1/kinds/noop/jobs", b"x")
            sent.append((elapsed, json.loads(reply)["id"]))
        time.sleep(3)
        per_minute: dict[int, list[float]] = {}
        unfinished = 0
        for at, job_id in sent:
            job = client.get(f"/v1/jobs/{job_id}")
            if job["status"] != "succeeded":
                unfinished += 1
                continue
            delay = timestamp(job["started_at"]) - timestamp(job["created_at"])
            per_minute.setdefault(int(at // 60), []).append(delay.total_seconds() * 1000)
    finally:
        server.stop()
    for minute, delays in sorted(per_minute.items()):
        delays.sort()
        print(f"minute {minute}: {len(delays):5} jobs, submit → start p50 "
              f"{delays[len(delays) // 2]:.0f}  p90 {delays[int(len(delays) * 0.9)]:.0f}  "
              f"max {delays[-1]:.0f} ms")
    with open(server.log_path) as log:
        warnings = sum(1 for line in log if " WARN " in line or " ERROR " in line)
    print(f"unfinished: {unfinished} of {len(sent)}; warnings and errors logged by the second "
          f"start: {warnings} ({server.log_path})")


if __name__ == "__main__":
    main()
