#!/usr/bin/env python3
"""Shared inputs: creating N jobs on one upload costs the same whatever the upload's size, as
jobs hold uploads and never copy them.

    python3 scripts/bench_shared_inputs.py --bin target/release/ferry [--sizes 1K,1G] [--jobs 50]
                                           [--rounds 3] [--dir DIR]

Standard library only, Python 3.10+, Linux. Sizes take K, M, G suffixes (powers of 1024). One
`ferry serve` runs with a fresh data folder (SQLite) in a temporary folder in --dir ($TMPDIR or
/tmp by default). For each size, a payload of that many bytes (a random 16 MiB block, repeated)
is uploaded once with a streamed POST /v1/uploads. Then each round, for each size in turn (the
sizes interleave), --jobs `noop` jobs naming that upload are created one after another
(POST /v1/jobs, each answered 202) on one keep-alive connection, and timed from the first
request to the last answer. Afterwards each upload's job_count (GET /v1/uploads/ID) must equal
rounds * jobs, and the bytes under <data>/blobs must come to about the sum of the sizes: one
copy per upload, whatever the number of jobs. The server's peak RSS (VmHWM in
/proc/PID/status) is read just before it is stopped by its PID. Progress goes to stderr, the
table (markdown) to stdout.
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

# The server, HTTP and payload helpers are bench_tus.py's (same folder).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_tus  # noqa: E402
from bench_tus import MIB, BenchError, Server, parse_size, print_tail, request  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench_shared_inputs {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def human(size: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            return f"{size / (1 << shift):g} {unit}"
    return f"{size} B"


def start_ferry(ferry_bin: str, root: str) -> Server:
    data = os.path.join(root, "data")
    config = os.path.join(root, "ferry.toml")
    with open(config, "w") as f:  # as bench_tus.py's ferry_cmd writes it
        f.write(f'data_dir = "{data}"\ndatabase_url = "sqlite://{data}/ferry.db"\n')
    return Server([ferry_bin, "--config", config, "serve", "--listen", "127.0.0.1:0"],
                  os.path.join(root, "ferry.log"), root)


def make_payload(tmp: str, size: int) -> str:
    path, block = os.path.join(tmp, f"payload-{size}.bin"), os.urandom(16 * MIB)
    with open(path, "wb") as f:
        for offset in range(0, size, len(block)):
            f.write(block[:size - offset])
    return path


def upload(server: Server, payload: str, size: int) -> str:
    with contextlib.closing(server.connection()) as conn, open(payload, "rb") as f:
        resp = request(conn, "POST", "/v1/uploads", body=f, expect=201,  # streamed, 1 MiB reads
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Length": str(size)})
    stored = json.loads(resp.data)
    if stored.get("size") != size or not str(stored.get("id", "")).startswith("upl_"):
        raise BenchError(f"POST /v1/uploads answered {stored}")
    return stored["id"]


def create_jobs(server: Server, upload_id: str, jobs: int) -> float:
    """Seconds to create `jobs` noop jobs on `upload_id`, one after another, one connection."""
    body = json.dumps({"kind": "noop", "inputs": {"scan": upload_id}}).encode()
    headers = {"Content-Type": "application/json"}
    with contextlib.closing(server.connection()) as conn:
        conn.connect()
        t0 = time.monotonic()
        for _ in range(jobs):
            request(conn, "POST", "/v1/jobs", body=body, headers=headers, expect=202)
        return time.monotonic() - t0


def disk_bytes(folder: str) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the ferry binary to measure")
    ap.add_argument("--sizes", default="1K,1G",
                    type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()],
                    help="upload sizes, comma-separated (default 1K,1G)")
    ap.add_argument("--jobs", type=int, default=50, help="jobs created per upload per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary folder goes")
    args = ap.parse_args()
    ferry_bin, sizes = os.path.abspath(args.bin), args.sizes
    if not sizes or args.jobs < 1 or args.rounds < 1:
        ap.error("need at least one size, one job and one round")
    if len(set(sizes)) != len(sizes):
        ap.error("sizes must differ")

    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    counts: dict[int, int] = {}
    tmp = tempfile.mkdtemp(prefix="ferry-bench-shared-", dir=args.dir)
    server = None
    try:
        log(f"starting {ferry_bin} in {tmp}")
        server = start_ferry(ferry_bin, tmp)
        try:
            ids: dict[int, str] = {}
            for size in sizes:
                log(f"writing and uploading {human(size)}")
                payload = make_payload(tmp, size)
                ids[size] = upload(server, payload, size)
                os.unlink(payload)
            for rnd in range(1, args.rounds + 1):
                for size in sizes:
                    log(f"round {rnd}/{args.rounds}: {args.jobs} jobs on {human(size)}")
                    seconds[size].append(create_jobs(server, ids[size], args.jobs))
            expected = args.rounds * args.jobs
            with contextlib.closing(server.connection()) as conn:
                for size in sizes:
                    got = json.loads(request(conn, "GET", f"/v1/uploads/{ids[size]}").data)
                    counts[size] = got.get("job_count")
                    if counts[size] != expected:
                        raise BenchError(f"upload {ids[size]} ({human(size)}) has job_count "
                                         f"{counts[size]}, not {expected}")
            blobs = disk_bytes(os.path.join(tmp, "data", "blobs"))
            peak = server.peak_rss()
        except Exception:
            print_tail(server.log_path)
            raise
    finally:
        if server is not None:
            server.stop()  # SIGTERM to its PID
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.jobs} jobs per upload per round, {args.rounds} interleaved round(s), one "
          f"keep-alive connection; {len(os.sched_getaffinity(0))} CPUs; "
          f"{bench_tus.version([ferry_bin, '--version'])} ({ferry_bin})\n")
    print("| upload size | jobs | median total s | median ms per job | each round's total s "
          "| job_count checked |")
    print("|---|---:|---:|---:|---|---:|")
    for size in sizes:
        med = statistics.median(seconds[size])
        print(f"| {human(size)} ({size:,} B) | {args.jobs} | {med:.3f} | "
              f"{med / args.jobs * 1000:.2f} | {', '.join(f'{s:.3f}' for s in seconds[size])} "
              f"| {counts[size]} ✓ |")
    total = sum(sizes)
    print(f"\nBlob bytes on disk: {blobs:,} ({blobs / total:.3f}× the sum of upload sizes, "
          f"{total:,}; {args.rounds * args.jobs * len(sizes)} jobs in all). "
          f"Server peak RSS: {peak / MIB:.1f} MiB.")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"bench_shared_inputs: {e}")
