"""Deep-queue soak on SQLite: does a queue of 100,000 waiting tasks slow starting other jobs, or
stall them, over minutes?

    python3 scripts/soak_deep_queue.py --bin target/release/ferry [--seconds 300] [--backlog 100000]

One `ferry serve` (SQLite + local folder, its own temporary folder). It is started once to create
its database and stopped; BACKLOG tasks are then written pending into apalis' table for a queue
no worker serves (as tests/api/query_plans.rs does: creating them through the API would take
minutes), and the server started again. Then a no-op job is sent every 20 ms for SECONDS; each is
read back at the end. Prints submit → start (the job's `started_at - created_at`) per minute,
the jobs left unfinished, and how many warnings or errors the server logged. Figures, no
verdict: a person judges. Stops its server by PID.
"""

import argparse
import http.client
import json
import os
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
from datetime import datetime


def start(binary: str, config: str, log_path: str) -> tuple[subprocess.Popen, int]:
    with open(log_path, "a") as log:
        proc = subprocess.Popen([binary, "serve", "--config", config, "--listen", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, stderr=log)
    for line in proc.stdout:  # type: ignore[union-attr]
        if m := re.search(rb"listening on http://\S+:(\d+)", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit(f"the server reported no address (exit code {proc.wait()})")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", required=True, help="the ferry binary (a release build)")
    ap.add_argument("--seconds", type=int, default=300, help="how long to send jobs (default 300)")
    ap.add_argument("--backlog", type=int, default=100_000, help="tasks waiting (default 100000)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="ferry-soak-")
    config, log_path = os.path.join(tmp, "ferry.toml"), os.path.join(tmp, "server.log")
    with open(config, "w") as f:
        f.write(f'data_dir = "{tmp}/data"\n[queue]\npoll_interval = "50ms"\n')
    proc, _ = start(args.bin, config, log_path)
    stop(proc)
    db = sqlite3.connect(os.path.join(tmp, "data", "ferry.db"))
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO Jobs (job, id, job_type, status, run_at) "
        "SELECT X'7b7d', printf('%026d', i), 'ferry.jobs.parked', 'Pending', 0 FROM n",
        (args.backlog,))
    db.commit()
    db.close()

    proc, port = start(args.bin, config, log_path)
    try:
        db = sqlite3.connect(os.path.join(tmp, "data", "ferry.db"))
        analyzed = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
        stats = db.execute("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'Jobs'").fetchall() \
            if analyzed.fetchone()[0] else []
        db.close()
        print(f"server pid {proc.pid}, folder {tmp}; statistics of Jobs: {stats or 'none'}")
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        sent: list[tuple[float, str]] = []
        began = time.monotonic()
        while (elapsed := time.monotonic() - began) < args.seconds:
            if (wait := began + len(sent) * 0.02 - time.monotonic()) > 0:
                time.sleep(wait)
            client.request("POST", "/v1/kinds/noop/jobs", body=b"x")
            reply = client.getresponse()
            sent.append((elapsed, json.loads(reply.read())["id"]))
        time.sleep(3)
        per_minute: dict[int, list[float]] = {}
        unfinished = 0
        for at, job_id in sent:
            client.request("GET", f"/v1/jobs/{job_id}")
            job = json.loads(client.getresponse().read())
            if job["status"] != "succeeded":
                unfinished += 1
                continue
            delay = timestamp(job["started_at"]) - timestamp(job["created_at"])
            per_minute.setdefault(int(at // 60), []).append(delay.total_seconds() * 1000)
    finally:
        stop(proc)
    for minute, delays in sorted(per_minute.items()):
        delays.sort()
        print(f"minute {minute}: {len(delays):5} jobs, submit → start p50 "
              f"{delays[len(delays) // 2]:.0f}  p90 {delays[int(len(delays) * 0.9)]:.0f}  "
              f"max {delays[-1]:.0f} ms")
    with open(log_path) as log:
        warnings = sum(1 for line in log if " WARN " in line or " ERROR " in line)
    print(f"unfinished: {unfinished} of {len(sent)}; warnings and errors logged: {warnings} "
          f"({log_path})")


if __name__ == "__main__":
    main()
