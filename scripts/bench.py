#!/usr/bin/env python3
"""Ferry benchmark: disk baseline, streamed uploads, server memory, no-op job throughput, webhook
deliveries, long-poll wake-ups, status polls, and issue 10's goals against what the same run
measured.

    python3 scripts/bench.py --bin target/release/ferry [--upload-gib G] [--jobs N] [--clients C]
                             [--webhook-jobs N] [--long-polls M] [--skip-uploads] [--skip-jobs]
                             [--skip-webhooks] [--skip-long-poll] [--skip-polls]
                             [--poll-seconds S] [--poll-rounds R] [--backlog N] [--peers]
                             [--paced-jobs N] [--pace R] [--job-rounds R]
                             [--postgres URL --s3-endpoint URL]
                             [--chart PATH.png]

(scripts/bench.sh builds the release binary and runs this.) Standard library only, Python 3.11+,
Linux; only --chart needs more: matplotlib (`python3 -m pip install -r
scripts/bench-requirements.txt`; without it the run says so and draws no chart). Per
configuration, each measurement gets a fresh `ferry serve`:

1. the limits an upload works within: disk write speed (`dd if=/dev/zero bs=1M count=1024
   conv=fsync` in the temporary folder, $TMPDIR or /tmp, before and after the uploads, as a VM's
   disk is noisy: their mean), SHA-256 of the payload (hashlib) and one loopback TCP stream;
2. one streamed upload of --upload-gib GiB to POST /v1/uploads, timed from its first byte to the
   201 (sent once the blob is stored and its row committed); every upload is checked against
   the size and sha256 the API reports;
3. 4 such uploads at once: aggregate throughput and the server's peak RSS (VmHWM);
4. N no-op jobs (`POST /v1/kinds/noop/jobs`, raw body) from C keep-alive client threads, then
   light polling until all succeeded: throughput from server timestamps (N / (last finished_at -
   first created_at)), dispatch latency (started_at - created_at) and other percentiles; then
   --paced-jobs more sent at an even --pace (default 50/s): dispatch latency below saturation;
   each run --job-rounds times (default 1) on fresh servers, reporting every round, the medians
   and the server's CPU per job (steadier than jobs/s within a run; see `job_rounds`);
5. webhooks, one job at a time: a receiver in this process (127.0.0.1, answering 204 at once),
   one server-wide endpoint for every event type, 100 no-op jobs each submitted once the one
   before was delivered: event → delivery latency (arrival - the payload's `timestamp`) with
   nothing queued; every measurement waits for every delivery in the endpoint's log and counts
   duplicates;
6. webhooks, live: the same with --webhook-jobs no-op jobs submitted as in 4: deliveries/s
   (first → last arrival), and the latency under that load;
7. webhooks, backlog: the same jobs on a server that sends no webhooks, then a `ferry worker`
   that does drains the backlog: the deliverer's rate with nothing else to do;
8. long-poll: --long-polls jobs of a command handler that sleeps 0.2 s, one at a time; each is
   long-polled with its running state's ETag and `Prefer: wait=30`; the wake-up latency is the
   200's arrival - the job's `updated_at` (see SLEEP_SECONDS for why a sleeping job);
9. status polls: wrk (2 threads, 32 connections, --poll-seconds per run) against GET /v1/jobs/{id}
   of a finished no-op job, plain and with If-None-Match (304), next to a static nginx serving
   the same bytes; medians of --poll-rounds interleaved runs (scripts/bench_polls.py); then both
   again with an API key (made with `ferry keys create`), as a server that requires keys is polled;
10. with --backlog N: a deep queue (see `backlog_section`): dispatch latency of paced no-op jobs
   before and after N jobs were queued, creation rate per 10,000, list pages and a poll with
   the backlog queued, the idle server's CPU;
11. with --peers: BullMQ, Celery + Redis and procrastinate, no-op jobs as in 4, in the same run
   (scripts/bench_peers.py; scripts/install-peers.sh installs them).

The report ends with one Markdown table, "Goals (issue 10), measured in this run"
(scripts/bench_goals.py), a row per goal of the issue: status polls (req/s and p99, plain and with
If-None-Match) next to nginx; no-op job throughput against BullMQ with AOF `everysec` (and
`always`); dispatch p50 and p99 at --pace against the best peer; one upload against 80 % of the
lowest limit its bytes go through, min(dd, SHA-256, loopback) (without dd on S3, as in 2); four at
once against 90 % of dd. Each row shows the target, Ferry's figure per configuration, the figure
it is compared with from this run, the ratio, and whether the target is met. The sections hand
their figures to it (nothing is parsed back from the printed rows); a section skipped or not
reached reads "skipped (…)" or "not measured". --chart PATH.png draws the no-op job throughput of
Ferry and of each peer, and their submit → start p50 and p99 at --pace (scripts/bench_chart.py).

The embedded configuration (SQLite + local folder) always; the scale-out one (PostgreSQL + S3)
too when given, like the test suite, a PostgreSQL server URL (--postgres or TEST_PG_URL) and an
S3 endpoint (--s3-endpoint or TEST_S3_ENDPOINT). It starts no service. Each server under test
gets a new database (`psql URL -c 'CREATE DATABASE …'`; the URL's database, default `postgres`,
serves only for that) and bucket (`PUT <endpoint>/<bucket>` with a dummy signature, which moto
accepts), both dropped when it stops. E.g.:

    python3 -m moto.server -H 127.0.0.1 -p 9000 &
    python3 scripts/bench.py --bin target/release/ferry \\
        --postgres postgres://postgres@127.0.0.1:5432 --s3-endpoint http://127.0.0.1:9000

MB = 10^6 bytes (as dd prints), MiB = 2^20 bytes. Progress goes to stderr, the report to stdout;
when something fails, so does the tail of the log of the server in use.
"""

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import hashlib
import http.client
import http.server
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any, Callable, Iterator

import bench_goals
import bench_peers
import bench_polls

MIB, GIB, MB = 1 << 20, 1 << 30, 1_000_000
CONCURRENT_UPLOADS = 4
FINAL = ("succeeded", "failed", "canceled")
STALL_TIMEOUT = 120  # seconds without any job finishing before the job measurement gives up
Rows = list[tuple[str, str]]
Arrivals = dict[str, tuple[float, str, float]]  # webhook id → (first arrival, type, event time)
# For the bench's own S3 requests: moto checks no signature, but refuses anonymous deletes.
DUMMY_SIGNATURE = ("AWS4-HMAC-SHA256 Credential=ferry-bench/20000101/us-east-1/s3/aws4_request, "
                   "SignedHeaders=host, Signature=0")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def output(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine_facts(tmp: str, ferry_bin: str) -> Rows:
    def proc(path: str, key: str) -> str:
        with open(path) as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith(key)), "?")

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    df = output(["df", "-PT", tmp]).splitlines()[-1].split()
    return [
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("CPU model", proc("/proc/cpuinfo", "model name")),
        ("memory", f"{int(proc('/proc/meminfo', 'MemTotal:').split()[0]) / MIB:.1f} GiB"),
        ("kernel, python",
         f"{platform.system()} {platform.release()}, {platform.python_version()}"),
        ("temp folder", f"{tmp} on {df[0]} ({df[1]}), {int(df[4]) // MIB} GiB free"
                        if len(df) > 6 else tmp),
        ("ferry", f"{output([ferry_bin, '--version'])} ({ferry_bin})"),
        ("source tree", output(["git", "-C", repo, "describe", "--always", "--dirty"])),
    ]


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM… of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, _, v in (l.partition(":") for l in f)
                if k.startswith("Vm") and v.strip().endswith("kB")}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_threads(target: Callable[..., None], args: list[tuple]) -> None:
    threads = [threading.Thread(target=target, args=a, daemon=True) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def spawn(cmd: list[str], log_path: str, cwd: str, stdout: int,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """A ferry process with stderr to `log_path`, no FERRY_* variables but `env`'s, and
    SIGTERM should this script die (prctl PR_SET_PDEATHSIG)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    with open(log_path, "wb") as stderr:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                cwd=cwd, env={**clean, "NO_COLOR": "1", **(env or {})},
                                preexec_fn=lambda: ctypes.CDLL(None).prctl(1, signal.SIGTERM))


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:  # ignored SIGTERM
        proc.kill()
        proc.wait()


def print_log_tail(path: str, what: str) -> None:
    with open(path, "rb") as f:
        tail = f.read().decode(errors="replace").splitlines()[-40:]
    print(f"--- tail of {path} ({what}) ---", *tail, "--- end of log ---", sep="\n",
          file=sys.stderr)


class Server:
    """One `ferry serve` process with its own data folder, config file and stderr log;
    `extra_toml` adds tables to the config file (e.g. `[webhooks]`, `[handlers.x]`), `args` to
    the command line, `env` to the environment. `stop()` and `start()` restart it on the same
    data (its log starts over)."""

    def __init__(self, ferry_bin: str, tmp: str, name: str, storage_toml: str,
                 extra_toml: str = "", args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.root = name, os.path.join(tmp, name)
        self.log_path = os.path.join(tmp, f"{name}.stderr.log")
        self.data_dir = os.path.join(self.root, "data")
        self.config = os.path.join(self.root, "ferry.toml")
        os.makedirs(self.data_dir)
        with open(self.config, "w") as f:  # top-level keys first, then tables
            f.write(f'data_dir = "{self.data_dir}"\n{storage_toml}[queue]\n'
                    f'poll_interval = "50ms"\n{extra_toml}')
        self.cmd = [ferry_bin, "serve", "--config", self.config, "--listen", "127.0.0.1:0",
                    *(args or [])]
        self.env = env
        self.start()

    def start(self) -> None:
        self.proc = spawn(self.cmd, self.log_path, self.root, subprocess.PIPE, self.env)
        self.pid, self.host, self.port = self.proc.pid, "", 0

    def wait_ready(self) -> None:
        """Waits for `listening on http://ADDR` on stdout (printed once the database is migrated),
        then checks GET /readyz (database and blob store reachable)."""
        found = threading.Event()

        def read_stdout() -> None:  # and keep the pipe drained
            for line in self.proc.stdout:  # type: ignore[union-attr]
                if (m := re.search(rb"listening on http://(\S+):(\d+)", line)) and not self.port:
                    self.host, self.port = m.group(1).decode(), int(m.group(2))
                    found.set()
            found.set()  # EOF: it exited

        threading.Thread(target=read_stdout, daemon=True).start()
        if not found.wait(60) or not self.port:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)  # for its exit code
            raise BenchError(f"server {self.name} reported no address "
                             f"(exit code {self.proc.poll()})")
        with contextlib.closing(Client(self)) as client:
            client.get("/readyz")
        log(f"server {self.name}: pid {self.pid}, http://{self.host}:{self.port}")

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout, blocksize=MIB)

    def stop(self) -> None:
        stop_process(self.proc)


class Client:
    """One keep-alive connection to a server, re-opened (once per call) if it dropped."""

    def __init__(self, server: Server) -> None:
        self.server, self.conn, self.reconnects = server, None, 0

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, _, data = self.request(method, path, body, headers)
        return status, data

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None
                ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Like `call`, with the response's headers."""
        for retry in (False, True):
            try:
                self.conn = self.conn or self.server.connection()
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, resp.headers, resp.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if retry:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        status, data = self.call("GET", path)
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {data[:500]!r}")
        return json.loads(data)

    def close(self) -> None:
        if self.conn:
            self.conn.close()
            self.conn = None


class ScaleOut:
    """PostgreSQL + S3, both already running: a new database and bucket per server under test."""

    def __init__(self, pg_url: str, s3_endpoint: str) -> None:
        self.pg = urllib.parse.urlsplit(pg_url)
        if self.pg.scheme not in ("postgres", "postgresql"):
            raise BenchError(f"the PostgreSQL URL must be postgres://…, not {pg_url!r}")
        self.admin_url = self.database_url(self.pg.path.strip("/") or "postgres")
        self.s3_endpoint, self.run_id = s3_endpoint.rstrip("/"), os.urandom(4).hex()
        version = self.psql("SHOW server_version")
        try:
            self.s3("GET", "/")
        except OSError as e:
            raise BenchError(f"no S3 server at {self.s3_endpoint}: {e}") from None
        self.facts = [("PostgreSQL", f"{version} at {self.pg.hostname}:{self.pg.port or 5432}"),
                      ("S3 endpoint", self.s3_endpoint)]

    def database_url(self, db: str) -> str:
        return urllib.parse.urlunsplit(self.pg._replace(path=f"/{db}"))

    def psql(self, sql: str) -> str:
        res = subprocess.run(["psql", self.admin_url, "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise BenchError(f"psql {sql!r} failed: {res.stderr.strip()}")
        return res.stdout.strip()

    def s3(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(self.s3_endpoint + path, method=method,
                                     data=b"" if method == "PUT" else None,
                                     headers={"Authorization": DUMMY_SIGNATURE})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise BenchError(f"S3 {method} {path} answered {e.code}: {e.read()[:300]!r}") from None

    def provision(self, name: str) -> tuple[str, Callable[[], None]]:
        """A new database and bucket: (their ferry.toml settings, what drops them)."""
        db = f"ferry_bench_{self.run_id}_{name.replace('-', '_')}"
        bucket = f"ferry-bench-{self.run_id}-{name}"
        drop_db = f'DROP DATABASE "{db}" WITH (FORCE)'

        def release() -> None:
            try:
                self.psql(drop_db)
                self.delete_bucket(bucket)
            except (BenchError, OSError, ET.ParseError, subprocess.SubprocessError) as e:
                log(f"{name}: clean-up failed, database {db} or bucket {bucket} left behind: {e}")

        self.psql(f'CREATE DATABASE "{db}"')
        try:
            self.s3("PUT", f"/{bucket}")
        except BaseException:
            self.psql(drop_db)
            raise
        log(f"{name}: database {db}, bucket {bucket}")
        return (f'database_url = "{self.database_url(db)}"\nblob_store = "s3://{bucket}/bench"\n'
                f'[blob_options]\naws_endpoint = "{self.s3_endpoint}"\naws_region = "us-east-1"\n'
                'aws_access_key_id = "ferry-bench"\naws_secret_access_key = "ferry-bench"\n'
                "[limits]\nupload_part_bytes = 8388608\n"), release

    def delete_bucket(self, bucket: str) -> None:
        """Its objects, a listing (up to 1000) at a time, then the bucket itself."""
        listing = f"/{bucket}?list-type=2"
        while keys := ET.fromstring(self.s3("GET", listing)).findall("{*}Contents/{*}Key"):
            for key in keys:
                self.s3("DELETE", f"/{bucket}/{urllib.parse.quote(key.text or '')}")
        self.s3("DELETE", f"/{bucket}")


def label(cfg: ScaleOut | None) -> str:
    return "PostgreSQL + S3" if cfg else "SQLite + local disk"


def config_name(cfg: ScaleOut | None) -> str:
    """The configuration's name in the goals table and the chart."""
    return bench_goals.CONFIGS[cfg is not None]


@contextlib.contextmanager
def serving(cfg: ScaleOut | None, ferry_bin: str, tmp: str, name: str,
            extra_toml: str = "") -> Iterator[Server]:
    """A fresh, ready server; on failure prints its log's tail; then stops it and cleans up."""
    storage_toml, release = cfg.provision(name) if cfg else ("", lambda: None)
    server = None
    try:
        server = Server(ferry_bin, tmp, name, storage_toml, extra_toml)
        server.wait_ready()
        yield server
    except Exception:
        if server is not None:
            print_log_tail(server.log_path, f"server {name}, pid {server.pid}, exit code "
                                            f"{server.proc.poll()}")
        raise
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)  # its log stays
        release()


def measure_dd(tmp: str) -> dict[str, float]:
    log("dd: writing 1 GiB with conv=fsync")
    path = os.path.join(tmp, "dd.bin")
    res = subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1024", "conv=fsync"],
                         capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    with contextlib.suppress(OSError):
        os.unlink(path)
    # e.g. "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.34 s, 459 MB/s"
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.]+) s", res.stderr, re.M)
    if res.returncode != 0 or not m:
        raise BenchError(f"dd failed ({res.returncode}): {res.stderr.strip()}")
    return {"seconds": float(m.group(2)), "mb_s": int(m.group(1)) / float(m.group(2)) / MB}


def measure_sha256(path: str) -> float:
    """MB/s of hashing the payload with SHA-256 (hashlib: OpenSSL, SHA-NI where the CPU has it),
    read from the page cache in 1 MiB pieces as the server receives them."""
    h, buf, total = hashlib.sha256(), bytearray(MIB), 0
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
            total += n
    return total / (time.monotonic() - t0) / MB


def measure_loopback(path: str) -> float:
    """MB/s of one TCP stream over loopback: the payload sent with sendfile, received into a
    1 MiB buffer and discarded (no HTTP, no hashing, no disk)."""
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as listener:
        received = [0]

        def drain() -> None:
            conn, _ = listener.accept()
            with conn:
                buf = bytearray(MIB)
                while n := conn.recv_into(buf):
                    received[0] += n

        reader = threading.Thread(target=drain)
        reader.start()
        t0 = time.monotonic()
        with socket.create_connection(listener.getsockname()) as out, open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            sent = 0
            while sent < size:
                sent += os.sendfile(out.fileno(), f.fileno(), sent, size - sent)
        reader.join()
        return received[0] / (time.monotonic() - t0) / MB


def make_payload(tmp: str, size: int) -> tuple[str, str]:
    """`size` bytes (one random 16 MiB block, repeated) in a file; returns (path, sha256)."""
    log(f"writing the {size / GIB:.2f} GiB upload payload")
    path, block, h = os.path.join(tmp, "payload.bin"), os.urandom(16 * MIB), hashlib.sha256()
    with open(path, "wb") as f:
        for offset in range(0, size, len(block)):
            f.write(piece := block[:size - offset])
            h.update(piece)
        os.fsync(f.fileno())
    return path, h.hexdigest()


def upload_once(server: Server, path: str, size: int, sha256: str) -> tuple[float, float]:
    """Streams the file to POST /v1/uploads and checks the reported size and sha256; returns
    (first byte sent, response received) on the monotonic clock."""
    with contextlib.closing(server.connection(timeout=600)) as conn, open(path, "rb") as f:
        conn.connect()
        t0 = time.monotonic()
        conn.request("POST", "/v1/uploads", body=f,  # http.client streams it in 1 MiB reads
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(size)})
        resp = conn.getresponse()
        data = resp.read()
        t1 = time.monotonic()
    if resp.status != 201:
        raise BenchError(f"upload answered {resp.status}: {data[:500].decode(errors='replace')}")
    body = json.loads(data)
    if (body.get("size"), body.get("sha256")) != (size, sha256):
        raise BenchError(f"upload stored size={body.get('size')} sha256={body.get('sha256')}, "
                         f"expected size={size} sha256={sha256}")
    return t0, t1


def concurrent_uploads(server: Server, path: str, size: int, sha256: str) -> dict[str, Any]:
    idle = vm_status(server.pid)["VmRSS"]
    log(f"uploads: {CONCURRENT_UPLOADS} x {size / GIB:.2f} GiB at once "
        f"(idle RSS {idle / MIB:.1f} MiB)")
    barrier, times, errors = threading.Barrier(CONCURRENT_UPLOADS), [], []

    def one() -> None:
        barrier.wait()
        try:
            times.append(upload_once(server, path, size, sha256))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    cpu0 = cpu_seconds(server.pid)
    run_threads(one, [()] * CONCURRENT_UPLOADS)
    if errors:
        raise BenchError(f"{len(errors)} of {CONCURRENT_UPLOADS} uploads failed; "
                         f"first: {errors[0]!r}")
    st, wall = vm_status(server.pid), max(t[1] for t in times) - min(t[0] for t in times)
    return {"wall": wall, "mb_s": CONCURRENT_UPLOADS * size / wall / MB, "idle_rss": idle,
            "each": sorted(t1 - t0 for t0, t1 in times), "cpu": cpu_seconds(server.pid) - cpu0,
            "hwm": st["VmHWM"], "rss_after": st["VmRSS"]}


def upload_section(cfg: ScaleOut | None, ferry_bin: str, tmp: str, payload: str, sha256: str,
                   size: int) -> tuple[str, Rows, bench_goals.UploadFigures]:
    dd1 = measure_dd(tmp)
    with serving(cfg, ferry_bin, tmp, "upload-1") as s:
        log(f"upload: 1 x {size / GIB:.2f} GiB")
        cpu0 = cpu_seconds(s.pid)
        t0, t1 = upload_once(s, payload, size, sha256)
        one = {"s": t1 - t0, "mb_s": size / (t1 - t0) / MB, "cpu": cpu_seconds(s.pid) - cpu0,
               "hwm": vm_status(s.pid)["VmHWM"]}
    with serving(cfg, ferry_bin, tmp, "upload-4") as s:
        four = concurrent_uploads(s, payload, size, sha256)
    dd2 = measure_dd(tmp)  # again after the uploads, to bracket them
    dd = (dd1["mb_s"] + dd2["mb_s"]) / 2
    sha, loop = measure_sha256(payload), measure_loopback(payload)
    # What one upload cannot beat: it is received, hashed and (embedded) written to disk.
    figures = bench_goals.UploadFigures(dd, sha, loop, not cfg, one["mb_s"], four["mb_s"])
    limit = figures.limit()

    def of_dd(mb_s: float) -> str:  # only in the embedded configuration do the bytes go to disk
        return "" if cfg else f", {mb_s / dd * 100:.0f}% of dd"

    gib = f"{size / GIB:g} GiB"
    return f"Disk and uploads — {label(cfg)} (MB = 10^6 bytes)", [
        ("dd 1 GiB, conv=fsync", f"{dd:8.1f} MB/s   (mean of before the uploads: {dd1['mb_s']:.1f} "
                                 f"MB/s in {dd1['seconds']:.2f} s, after: {dd2['mb_s']:.1f} MB/s "
                                 f"in {dd2['seconds']:.2f} s)"),
        ("SHA-256 of the payload", f"{sha:8.1f} MB/s   (hashlib, one thread)"),
        ("loopback TCP, one stream", f"{loop:8.1f} MB/s   (sendfile → recv, no HTTP)"),
        (f"1 x {gib} upload", f"{one['mb_s']:8.1f} MB/s   ({one['s']:.2f} s{of_dd(one['mb_s'])}; "
                              f"{one['mb_s'] / limit * 100:.0f}% of the lowest limit above; "
                              f"server CPU {one['cpu']:.1f} s)"),
        ("  server VmHWM after it", f"{one['hwm'] / MIB:8.1f} MiB"),
        (f"{CONCURRENT_UPLOADS} x {gib} uploads at once",
         f"{four['mb_s']:8.1f} MB/s aggregate   ({four['wall']:.2f} s wall{of_dd(four['mb_s'])}; "
         f"each {', '.join(f'{x:.1f}' for x in four['each'])} s; server CPU {four['cpu']:.1f} s)"),
        ("  server idle RSS (fresh)", f"{four['idle_rss'] / MIB:8.1f} MiB"),
        ("  server peak RSS (VmHWM)", f"{four['hwm'] / MIB:8.1f} MiB"),
        ("  RSS after the uploads", f"{four['rss_after'] / MIB:8.1f} MiB"),
        ("upload verification", f"size and sha256 reported by the API match the payload "
                                f"({1 + CONCURRENT_UPLOADS} uploads)"),
    ], figures


def wait_for_jobs(server: Server, ids: list[str]) -> list[dict[str, Any]]:
    """Polls lightly, as it shares the CPU and database with the workers measured: once a second,
    follows the jobs in submission order (at most 20 GETs, to see progress) and asks whether any
    job is queued or running; when none is, lists the finished jobs (all pages) once."""
    client, wanted, pointer, last_progress = Client(server), set(ids), 0, time.monotonic()

    def listing(status: str) -> list[dict[str, Any]]:
        items, cursor = [], ""
        while True:
            page = client.get(f"/v1/jobs?status={status}&limit=200{cursor}")
            items += [j for j in page["items"] if j["id"] in wanted]
            if not page.get("next"):
                return items
            cursor = f"&next={page['next']}"

    with contextlib.closing(client):
        while True:
            for _ in range(20):
                if (pointer == len(ids)
                        or client.get(f"/v1/jobs/{ids[pointer]}")["status"] not in FINAL):
                    break
                pointer, last_progress = pointer + 1, time.monotonic()
            if not any(client.get(f"/v1/jobs?status={s}&limit=1")["items"]
                       for s in ("queued", "running")):
                if bad := listing("failed") + listing("canceled"):
                    raise BenchError(f"{len(bad)} job(s) failed or were canceled, e.g. "
                                     f"{json.dumps(bad[0])[:1500]}")
                if len(done := listing("succeeded")) == len(ids):
                    return done
            if time.monotonic() - last_progress > STALL_TIMEOUT:
                oldest = client.get(f"/v1/jobs/{ids[pointer]}") if pointer < len(ids) else None
                raise BenchError(f"no job finished for {STALL_TIMEOUT} s; oldest unfinished: "
                                 f"{json.dumps(oldest)[:800]}")
            if server.proc.poll() is not None:
                raise BenchError(f"server exited with code {server.proc.returncode}")
            time.sleep(1.0)


def pcts(values: list[float]) -> str:
    """Nearest-rank percentiles."""
    return "  ".join(f"{name} {bench_peers.nearest_rank(values, q):7.1f}"
                     for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)))


@dataclasses.dataclass
class Submission:
    """What submitting jobs from keep-alive client threads came to."""
    ids: list[str]
    failures: list[str]
    round_trip_ms: list[float]
    codes: collections.Counter
    seconds: float  # from the first request to the last answer
    reconnects: int


def submit_jobs(server: Server, n_jobs: int, n_clients: int, rate: float = 0,
                kind: str = "noop") -> Submission:
    """N jobs of `kind` (`POST /v1/kinds/KIND/jobs`, a tiny raw body each) from C keep-alive
    client threads, which start together; with `rate`, job i is sent no earlier than i / rate
    seconds after the start (an even pace, to measure below saturation). Fails only when none
    was accepted."""
    lock, indices, start = threading.Lock(), iter(range(n_jobs)), []
    barrier = threading.Barrier(n_clients, action=lambda: start.append(time.monotonic()))
    ids, failures, round_trip_ms, codes = [], [], [], collections.Counter()

    def take() -> int | None:
        with lock:
            return next(indices, None)

    def submit(client: Client) -> None:  # one keep-alive client thread
        barrier.wait()
        for i in iter(take, None):
            if rate:
                time.sleep(max(0.0, start[0] + i / rate - time.monotonic()))
            t0 = time.monotonic()
            try:
                status, data = client.call("POST", f"/v1/kinds/{kind}/jobs",
                                           f"{kind} {i}\n".encode(),
                                           {"Content-Type": "application/octet-stream"})
            except (http.client.HTTPException, OSError) as e:
                status, data = 0, repr(e).encode()
            with lock:
                codes[status] += 1
                round_trip_ms.append((time.monotonic() - t0) * 1000)
                if status == 202:
                    ids.append(json.loads(data)["id"])
                else:
                    failures.append(f"job {i}: HTTP {status} {data[:300]!r}")
        client.close()

    log(f"submitting {n_jobs} {kind} jobs from {n_clients} keep-alive clients")
    clients = [Client(server) for _ in range(n_clients)]
    run_threads(submit, [(c,) for c in clients])
    sub = Submission(ids, failures, round_trip_ms, codes, time.monotonic() - start[0],
                     sum(c.reconnects for c in clients))
    log(f"{len(ids)} accepted in {sub.seconds:.2f} s, {len(failures)} failed")
    if not ids:
        raise BenchError(f"no job was accepted; first failure: {failures[:1]}")
    return sub


def jobs_section(cfg: ScaleOut | None, ferry_bin: str, tmp: str, n_jobs: int,
                 n_clients: int, rate: float = 0) -> tuple[str, Rows, bench_goals.JobFigures]:
    with serving(cfg, ferry_bin, tmp, "jobs") as server:
        cpu0 = cpu_seconds(server.pid)
        sub = submit_jobs(server, n_jobs, n_clients, rate)
        jobs = wait_for_jobs(server, sub.ids)
        server_cpu = cpu_seconds(server.pid) - cpu0
    created, started, finished = ([datetime.fromisoformat(j[f"{k}_at"]).timestamp() for j in jobs]
                                  for k in ("created", "started", "finished"))
    first, span = min(created), max(finished) - min(created)
    dispatch = [(s - c) * 1000 for s, c in zip(started, created)]
    figures = bench_goals.JobFigures(len(jobs) / span, bench_peers.nearest_rank(dispatch, 50),
                                     bench_peers.nearest_rank(dispatch, 99),
                                     server_cpu * 1000 / len(jobs))
    attempts = collections.Counter(j.get("attempt") for j in jobs)
    pace = f", paced at {rate:g} jobs/s" if rate else ""
    title = (f"No-op jobs — {label(cfg)}: {n_jobs} x POST /v1/kinds/noop/jobs, "
             f"{n_clients} keep-alive clients{pace}")
    return title, [
        ("accepted (HTTP codes)", f"{len(sub.ids)} of {n_jobs}   ("
                                  + ", ".join(f"{k}: {v}" for k, v in sorted(sub.codes.items()))
                                  + f"; reconnects {sub.reconnects})"),
        ("client submit rate", f"{len(sub.ids) / sub.seconds:8.1f} jobs/s   "
                               f"({sub.seconds:.2f} s to submit all)"),
        ("client POST round trip ms", pcts(sub.round_trip_ms)),
        ("throughput (server clock)", f"{figures.throughput:8.1f} jobs/s   (first created_at → "
                                      f"last finished_at: {span:.2f} s; created over "
                                      f"{max(created) - first:.2f} s)"),
        ("dispatch ms (started-created)", pcts(dispatch)),
        ("run ms (finished-started)", pcts([(f - s) * 1000 for f, s in zip(finished, started)])),
        ("end-to-end ms (finished-created)",
         pcts([(f - c) * 1000 for f, c in zip(finished, created)])),
        ("attempts", ", ".join(f"attempt {k}: {v}" for k, v in sorted(attempts.items()))),
        *([("first submit failure", sub.failures[0][:200])] if sub.failures else []),
        ("server CPU", f"{server_cpu:8.1f} s   ({figures.cpu_ms_per_job:.2f} ms per job; "
                       "submitting and polling)"),
    ], figures


def job_rounds(cfg: ScaleOut | None, ferry_bin: str, tmp: str, n_jobs: int, n_clients: int,
               rounds: int, rate: float = 0) -> tuple[str, Rows, bench_goals.JobFigures]:
    """`jobs_section` `rounds` times, each on a fresh server: the rows of the round with the
    median throughput, then every round's figures and their medians, which the goals table
    takes. One round of a few seconds varies by a third between runs on these machines. The
    server's CPU per job varied less within a run, but the medians of two runs a few minutes
    apart still differed by a fifth (README, Benchmarks): alternate the rounds of two builds."""
    measured = [jobs_section(cfg, ferry_bin, tmp, n_jobs, n_clients, rate)
                for _ in range(rounds)]
    if rounds == 1:
        return measured[0]
    title, rows, _ = sorted(measured, key=lambda m: m[2].throughput)[rounds // 2]
    each = [m[2] for m in measured]
    median = bench_goals.JobFigures(*(statistics.median(getattr(f, field.name) for f in each)
                                      for field in dataclasses.fields(bench_goals.JobFigures)))

    def row(what: str, name: str, fmt: str) -> tuple[str, str]:
        values = ", ".join(format(getattr(f, name), fmt) for f in each)
        return (f"{what}, each round", f"{values}   (median {getattr(median, name):{fmt}})")

    return f"{title}, {rounds} rounds (above: the median round)", rows + [
        row("throughput jobs/s", "throughput", ".1f"),
        row("dispatch p50 ms", "dispatch_p50", ".1f"),
        row("dispatch p99 ms", "dispatch_p99", ".1f"),
        row("server CPU ms per job", "cpu_ms_per_job", ".2f"),
    ], median


# A kind whose one worker slot is taken by a job that sleeps, so the backlog stays queued.
# The backlog is bigger than a tenant's default queue bound (10,000): no bound here.
PARKED_TOML = ('[handlers.parked]\ncommand = ["sleep", "3600"]\nconcurrency = 1\n'
               'timeout = "2h"\n[tenant_defaults]\nmax_queued_jobs = 0\n')
BACKLOG_BATCH = 10_000


def wait_each(server: Server, ids: list[str]) -> list[dict[str, Any]]:
    """Each job once it has finished, by polling it (`wait_for_jobs` waits for an empty queue,
    which a backlog never is)."""
    done = []
    with contextlib.closing(Client(server)) as client:
        for id_ in ids:
            deadline = time.monotonic() + STALL_TIMEOUT
            while (job := client.get(f"/v1/jobs/{id_}"))["status"] not in FINAL:
                if time.monotonic() > deadline:
                    raise BenchError(f"job {id_} did not finish in {STALL_TIMEOUT} s: {job}")
                time.sleep(0.05)
            if job["status"] != "succeeded":
                raise BenchError(f"job {id_} ended {job['status']}: {json.dumps(job)[:800]}")
            done.append(job)
    return done


def median_ms(client: Client, path: str, times: int = 21) -> float:
    """Median wall time of `times` GETs of `path` on one keep-alive connection."""
    spent = []
    for _ in range(times):
        t0 = time.monotonic()
        client.get(path)
        spent.append((time.monotonic() - t0) * 1000)
    return statistics.median(spent)


def backlog_section(cfg: ScaleOut | None, ferry_bin: str, tmp: str, backlog: int,
                    n_clients: int, paced: int, pace: float) -> tuple[str, Rows]:
    """Does a deep queue slow the paths users wait on? One server; no-op jobs paced as in 4
    with an empty queue; then `backlog` jobs of a kind whose one worker slot is busy (so they
    stay queued), created in batches of 10,000 (creation rate per batch); then the paced no-op
    jobs again (claiming and dispatch with the backlog queued), list pages, a status poll, and
    the idle server's CPU (what the reconciler's rounds cost over the backlog)."""
    rows: Rows = []
    with serving(cfg, ferry_bin, tmp, "backlog", PARKED_TOML) as server:
        def dispatch_ms() -> str:
            jobs = wait_each(server, submit_jobs(server, paced, n_clients, pace).ids)
            return pcts([(datetime.fromisoformat(j["started_at"]).timestamp()
                          - datetime.fromisoformat(j["created_at"]).timestamp()) * 1000
                         for j in jobs])

        rows.append(("dispatch ms, empty queue", dispatch_ms()))
        rates = []
        for done in range(0, backlog, BACKLOG_BATCH):
            batch = min(BACKLOG_BATCH, backlog - done)
            sub = submit_jobs(server, batch, n_clients, kind="parked")
            if sub.failures:
                raise BenchError(f"backlog job refused: {sub.failures[0]}")
            rates.append(len(sub.ids) / sub.seconds)
        rows.append(("creation jobs/s per 10,000", "  ".join(f"{r:.0f}" for r in rates)))
        with contextlib.closing(Client(server)) as client:
            queued = client.get("/v1/jobs?status=queued&limit=1")["items"]
            if not queued:
                raise BenchError("the backlog is not queued")
            rows.append((f"dispatch ms, {backlog} queued", dispatch_ms()))
            page = client.get("/v1/jobs?status=queued&limit=50")
            for what, path in [
                ("newest 50 queued", "/v1/jobs?status=queued&limit=50"),
                ("next 50 queued", f"/v1/jobs?status=queued&limit=50&next={page['next']}"),
                ("newest 50, kind=noop", "/v1/jobs?kind=noop&limit=50"),
                ("newest 50, any", "/v1/jobs?limit=50"),
                ("one queued job (status poll)", f"/v1/jobs/{queued[0]['id']}"),
            ]:
                rows.append((f"GET {what}, median ms", f"{median_ms(client, path):8.2f}"))
        cpu0 = cpu_seconds(server.pid)
        time.sleep(10)
        rows.append(("idle server CPU over 10 s", f"{cpu_seconds(server.pid) - cpu0:8.2f} s"))
    title = (f"A deep queue — {label(cfg)}: {backlog} queued jobs; {paced} no-op jobs at "
             f"{pace:g} jobs/s before and after")
    return title, rows


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 in this process: answers 204 at once and records, per
    request, its arrival time (wall clock, comparable with the server's timestamps on this
    machine) and the payload's `id`, `type` and `timestamp`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HookHandler)
        self.lock = threading.Condition()  # notified at every arrival
        self.arrivals: list[tuple[float, str, str, float]] = []  # arrival, id, type, event time
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hook"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def record(self, arrival: float, body: bytes) -> None:
        try:
            p = json.loads(body)
            entry = (arrival, str(p["id"]), str(p["type"]),
                     datetime.fromisoformat(p["timestamp"]).timestamp())
        except (ValueError, KeyError, TypeError):
            entry = (arrival, f"unparseable: {body[:100]!r}", "?", arrival)
        with self.lock:
            self.arrivals.append(entry)
            self.lock.notify_all()

    def wait_for_type(self, type_: str, count: int, timeout: float) -> bool:
        """Until `count` requests with payloads of type `type_` arrived (duplicates count)."""
        with self.lock:
            return self.lock.wait_for(
                lambda: sum(t == type_ for _, _, t, _ in self.arrivals) >= count, timeout)

    def first_arrivals(self) -> Arrivals:
        """id → (first arrival, type, event timestamp); later arrivals of an id are duplicates."""
        with self.lock:
            arrivals = list(self.arrivals)
        first: Arrivals = {}
        for arrival, id_, type_, ts in arrivals:
            first.setdefault(id_, (arrival, type_, ts))
        return first

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class HookHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Ferry's HTTP client reuses connections
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        arrival = time.time()
        self.send_response(204)
        self.end_headers()
        self.server.record(arrival, body)  # after answering: parsing is not the sender's wait

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


WEBHOOK_TOML = "[webhooks]\nallow_loopback = true\n"  # the receiver is on 127.0.0.1
SEQUENTIAL_WEBHOOK_JOBS = 100  # no-op jobs sent one at a time, for latency with nothing queued


def create_endpoint(server: Server, url: str) -> str:
    """A server-wide endpoint for every event type (absent `events`: all); returns its id."""
    with contextlib.closing(Client(server)) as client:
        status, data = client.call("POST", "/v1/webhooks", json.dumps({"url": url}).encode(),
                                   {"Content-Type": "application/json"})
    if status != 201:
        raise BenchError(f"POST /v1/webhooks answered {status}: {data[:500]!r}")
    return json.loads(data)["id"]


def owed_deliveries(server: Server, endpoint: str) -> set[str]:
    """The `webhook-id`s of every delivery the endpoint's log holds (all pages)."""
    owed, cursor = set(), ""
    with contextlib.closing(Client(server)) as client:
        while True:
            page = client.get(f"/v1/webhooks/{endpoint}/deliveries?limit=200{cursor}")
            owed |= {d["webhook_id"] for d in page["items"]}
            if not page.get("next"):
                return owed
            cursor = f"&next={page['next']}"


def wait_for_deliveries(receiver: Receiver, owed: set[str],
                        procs: list[subprocess.Popen]) -> Arrivals:
    """Until every owed delivery arrived; gives up after STALL_TIMEOUT without a new one."""
    count, last_progress = 0, time.monotonic()
    log(f"webhooks: waiting for {len(owed)} deliveries")
    while True:
        first = receiver.first_arrivals()
        if owed <= first.keys():
            return first
        if len(first) > count:
            count, last_progress = len(first), time.monotonic()
        if time.monotonic() - last_progress > STALL_TIMEOUT:
            missing = owed - first.keys()
            raise BenchError(f"{len(missing)} of {len(owed)} webhook deliveries did not arrive "
                             f"within {STALL_TIMEOUT} s of the last one, "
                             f"e.g. {sorted(missing)[:3]}")
        if any(p.poll() is not None for p in procs):
            raise BenchError("a ferry process exited while deliveries were owed")
        time.sleep(0.2)


def jobs_with_deliveries(server: Server, receiver: Receiver, n_jobs: int,
                         n_clients: int) -> tuple[list[str], set[str]]:
    """An endpoint for the receiver, then no-op jobs, run to the end: (job ids, the webhook ids
    of the deliveries their events owe the endpoint)."""
    endpoint = create_endpoint(server, receiver.url)
    ids = submit_jobs(server, n_jobs, n_clients).ids
    wait_for_jobs(server, ids)
    return ids, owed_deliveries(server, endpoint)


def rate_row(first: Arrivals) -> tuple[str, str]:
    arrivals = sorted(a for a, _, _ in first.values())
    return ("deliveries/s (first → last arrival)",
            f"{len(first) / (arrivals[-1] - arrivals[0]):8.1f}   ({len(first)} deliveries in "
            f"{arrivals[-1] - arrivals[0]:.2f} s)")


def received_row(receiver: Receiver, owed: set[str], first: Arrivals) -> tuple[str, str]:
    with receiver.lock:
        received = len(receiver.arrivals)
    return ("requests received", f"{received:8d}   ({received - len(first)} duplicates, "
                                 f"{len(first.keys() - owed)} not in the delivery log)")


def owed_row(owed: set[str], n_jobs: int, first: Arrivals) -> tuple[str, str]:
    types = collections.Counter(t for _, t, _ in first.values())
    return ("deliveries owed", f"{len(owed):8d}   ({len(owed) / n_jobs:.1f} per job: "
                               + ", ".join(f"{t} {n}" for t, n in types.items()) + ")")


def latency_rows(first: Arrivals) -> Rows:
    """Event → delivery latency, overall and per event type."""
    by_type: dict[str, list[float]] = collections.defaultdict(list)
    for arrival, type_, ts in first.values():
        by_type[type_].append((arrival - ts) * 1000)
    return [("event → delivery ms", pcts([ms for v in by_type.values() for ms in v])),
            *((f"  {t} events", pcts(v)) for t, v in by_type.items())]


def webhook_live(cfg: ScaleOut | None, ferry_bin: str, tmp: str, n_jobs: int,
                 n_clients: int) -> tuple[str, Rows]:
    """Deliveries while the jobs run, as in production: rate and event → delivery latency."""
    receiver = Receiver()
    try:
        with serving(cfg, ferry_bin, tmp, "webhooks", WEBHOOK_TOML) as server:
            ids, owed = jobs_with_deliveries(server, receiver, n_jobs, n_clients)
            first = wait_for_deliveries(receiver, owed, [server.proc])
    finally:
        receiver.close()
    events, arrivals = [ts for _, _, ts in first.values()], [a for a, _, _ in first.values()]
    title = (f"Webhooks, live — {label(cfg)}: {n_jobs} no-op jobs from {n_clients} clients, "
             "every event to a local receiver")
    return title, [
        rate_row(first),
        ("events/s (first → last timestamp)",
         f"{len(events) / (max(events) - min(events)):8.1f}   (what the deliveries followed)"),
        owed_row(owed, len(ids), first),
        received_row(receiver, owed, first),
        *latency_rows(first),
        ("last event → last delivery", f"{(max(arrivals) - max(events)) * 1000:8.1f} ms"),
    ]


def webhook_sequential(cfg: ScaleOut | None, ferry_bin: str, tmp: str,
                       n_jobs: int) -> tuple[str, Rows]:
    """Event → delivery latency with nothing queued: one no-op job at a time, the next submitted
    once the previous one's `succeeded` delivery, its last (a job's deliveries go out in event
    order), arrived."""
    receiver = Receiver()
    try:
        with serving(cfg, ferry_bin, tmp, "webhooks-sequential", WEBHOOK_TOML) as server:
            endpoint = create_endpoint(server, receiver.url)
            log(f"webhooks: {n_jobs} no-op jobs, one at a time")
            with contextlib.closing(Client(server)) as client:
                for i in range(n_jobs):
                    submit_one(client, "noop")
                    if not receiver.wait_for_type("succeeded", i + 1, STALL_TIMEOUT):
                        raise BenchError(f"job {i + 1}'s succeeded delivery did not arrive "
                                         f"within {STALL_TIMEOUT} s")
            owed = owed_deliveries(server, endpoint)
            first = wait_for_deliveries(receiver, owed, [server.proc])
    finally:
        receiver.close()
    title = (f"Webhooks, one job at a time — {label(cfg)}: {n_jobs} no-op jobs, each submitted "
             "once the previous one's deliveries arrived")
    return title, [owed_row(owed, n_jobs, first), received_row(receiver, owed, first),
                   *latency_rows(first)]


def webhook_backlog(cfg: ScaleOut | None, ferry_bin: str, tmp: str, n_jobs: int,
                    n_clients: int) -> tuple[str, Rows]:
    """The deliverer's own rate: the jobs run on a server that sends nothing
    (`webhooks.deliver = false`), then a `ferry worker` on the same database, sending, drains
    the backlog: no job competes with it, so this is what one process sends at most."""
    receiver = Receiver()
    try:
        with serving(cfg, ferry_bin, tmp, "webhook-backlog",
                     WEBHOOK_TOML + "deliver = false\n") as server:
            _, owed = jobs_with_deliveries(server, receiver, n_jobs, n_clients)
            if receiver.arrivals:
                raise BenchError("a delivery arrived from a server configured not to send")
            first, worker_cpu = drain(server, ferry_bin, tmp, receiver, owed)
    finally:
        receiver.close()
    title = (f"Webhooks, backlog — {label(cfg)}: the deliveries of {n_jobs} no-op jobs, sent by "
             "a `ferry worker` after they ran")
    return title, [
        rate_row(first),
        owed_row(owed, n_jobs, first),
        received_row(receiver, owed, first),
        ("worker CPU", f"{worker_cpu:8.1f} s   ({worker_cpu / len(first) * 1e6:.0f} µs per "
                       "delivery, its start included)"),
    ]


def drain(server: Server, ferry_bin: str, tmp: str, receiver: Receiver,
          owed: set[str]) -> tuple[Arrivals, float]:
    """Starts a `ferry worker` that sends webhooks, on the server's config, until every owed
    delivery arrived; returns the arrivals and the worker's CPU seconds."""
    log_path = os.path.join(tmp, "webhook-backlog-worker.stderr.log")
    worker = spawn([ferry_bin, "worker", "--config", server.config], log_path, server.root,
                   subprocess.DEVNULL, {"FERRY_WEBHOOKS__DELIVER": "true"})
    try:
        first = wait_for_deliveries(receiver, owed, [server.proc, worker])
        return first, cpu_seconds(worker.pid)
    except Exception:
        print_log_tail(log_path, f"ferry worker, pid {worker.pid}")
        raise
    finally:
        stop_process(worker)


# Long-poll wake-ups need a change that comes while the request already waits. A no-op job goes
# queued → running → succeeded within milliseconds, usually before a long-poll sent after
# reading it arrives, so it would measure a request answered at once, not a wake-up. A command
# that sleeps instead holds the job running for SLEEP_SECONDS: the client follows the job until
# it runs, then long-polls with that ETag; the next change (the job succeeding, written by the
# worker) wakes the request. The wake-up latency is the answer's arrival minus the job's
# `updated_at`, the server's time of that change (both wall clocks of this machine): commit,
# notification (in-process on SQLite, NOTIFY through PostgreSQL), re-reading the job, and the
# HTTP answer.
SLEEP_SECONDS = 0.2
LONGPOLL_TOML = f'[handlers.sleep]\ncommand = ["sleep", "{SLEEP_SECONDS}"]\n'
LONGPOLL_WAIT = 30  # Prefer: wait=N, seconds; far longer than the change takes


def follow_until_running(client: Client, job: str) -> str:
    """Long-polls a new job until it runs; returns that state's ETag."""
    etag, status = "", "queued"
    while status == "queued":
        headers = {"If-None-Match": etag, "Prefer": f"wait={LONGPOLL_WAIT}"} if etag else {}
        code, resp, data = client.request("GET", f"/v1/jobs/{job}", headers=headers)
        if code == 200:
            etag, status = resp["ETag"], json.loads(data)["status"]
        elif code != 304:
            raise BenchError(f"GET /v1/jobs/{job} answered {code}: {data[:300]!r}")
    if status != "running":
        raise BenchError(f"job {job} went from queued to {status}, not running")
    return etag


def submit_one(client: Client, kind: str) -> str:
    """One job of `kind` (a tiny raw body); its id."""
    code, data = client.call("POST", f"/v1/kinds/{kind}/jobs", b"x\n",
                             {"Content-Type": "application/octet-stream"})
    if code != 202:
        raise BenchError(f"POST /v1/kinds/{kind}/jobs answered {code}: {data[:300]!r}")
    return json.loads(data)["id"]


def one_wakeup(client: Client) -> tuple[float, float, float, str]:
    """One sleeping job: (long-poll sent, the job's change, answer arrived), wall clock, and the
    status the answer shows."""
    job = submit_one(client, "sleep")
    etag = follow_until_running(client, job)
    sent = time.time()
    code, _, data = client.request("GET", f"/v1/jobs/{job}", headers={
        "If-None-Match": etag, "Prefer": f"wait={LONGPOLL_WAIT}"})
    arrived = time.time()
    if code != 200:
        raise BenchError(f"the long-poll on running job {job} answered {code} after "
                         f"{arrived - sent:.1f} s, not the change")
    body = json.loads(data)
    return sent, datetime.fromisoformat(body["updated_at"]).timestamp(), arrived, body["status"]


def longpoll_section(cfg: ScaleOut | None, ferry_bin: str, tmp: str,
                     n_polls: int) -> tuple[str, Rows]:
    with serving(cfg, ferry_bin, tmp, "long-poll", LONGPOLL_TOML) as server:
        log(f"long-poll: {n_polls} jobs running `sleep {SLEEP_SECONDS}`, one at a time")
        with contextlib.closing(Client(server)) as client:
            samples = [one_wakeup(client) for _ in range(n_polls)]
    # A change stamped before the request was sent was not a wake-up (it cannot happen with
    # the sleep above, but would skew the figures unseen).
    woken = [(sent, changed, arrived) for sent, changed, arrived, _ in samples if changed > sent]
    if not woken:
        raise BenchError("every job changed before its long-poll was sent: no wake-up measured")
    statuses = collections.Counter(status for *_, status in samples)
    title = (f"Long-poll — {label(cfg)}: {n_polls} x GET /v1/jobs/{{id}} with If-None-Match "
             f"and Prefer: wait={LONGPOLL_WAIT}, one at a time")
    return title, [
        ("answers 200 with a change", f"{len(samples):8d}   (job then "
                                      + ", ".join(f"{k}: {v}" for k, v in statuses.items())
                                      + f"; {len(samples) - len(woken)} changed before the "
                                        "request was sent, left out)"),
        ("waited before the change ms", pcts([(c - s) * 1000 for s, c, _ in woken])),
        ("wake-up ms (answer - updated_at)", pcts([(a - c) * 1000 for _, c, a in woken])),
    ]


def polls_section(cfg: ScaleOut | None, ferry_bin: str, tmp: str, seconds: int,
                  rounds: int) -> tuple[str, Rows, bench_goals.PollFigures | str]:
    """wrk against a finished job's status and a static nginx; the figures are those of the
    server without keys."""
    title = f"Status polls — {label(cfg)}: wrk, {bench_polls.WRK_THREADS} threads, " \
            f"{bench_polls.WRK_CONNECTIONS} connections, {seconds} s per run, median of {rounds}"
    if missing := bench_polls.missing_tools():
        why = f"not installed: {', '.join(missing)}"
        return title, [("skipped", why)], f"skipped ({why})"
    with serving(cfg, ferry_bin, tmp, "polls") as server:
        with contextlib.closing(Client(server)) as client:
            job = submit_one(client, "noop")
            wait_for_jobs(server, [job])
            status, headers, body = client.request("GET", f"/v1/jobs/{job}")
        if status != 200 or not headers.get("ETag"):
            raise BenchError(f"GET /v1/jobs/{job} answered {status} without an ETag")
        url = f"http://{server.host}:{server.port}/v1/jobs/{job}"
        plain = "Ferry GET /v1/jobs/{id} → 200 (open: no key exists)"
        conditional = "Ferry, If-None-Match → 304 (open)"
        nginx = f"nginx, static file of {len(body)} bytes"
        try:
            with bench_polls.static_nginx(tmp, body) as static_url:
                runs = bench_polls.measure({
                    plain: (url, {}),
                    conditional: (url, {"If-None-Match": headers["ETag"]}),
                    nginx: (static_url, {}),
                }, seconds, rounds)
            # Then with an API key, as a server that requires keys is polled: each request's key
            # is checked (against the process's one-second cache of what the database said).
            key = create_key(ferry_bin, server)
            auth = {"Authorization": f"Bearer {key}"}
            time.sleep(1.5)  # the server notices keys exist within a second
            runs |= bench_polls.measure({
                "Ferry GET /v1/jobs/{id} → 200 (with a key)": (url, auth),
                "Ferry, If-None-Match → 304 (with a key)": (
                    url, {**auth, "If-None-Match": headers["ETag"]}),
            }, seconds, rounds)
        except (RuntimeError, subprocess.SubprocessError) as e:
            raise BenchError(f"status polls: {e}") from None
    figures = bench_goals.PollFigures(*(bench_polls.medians(runs[name])
                                        for name in (plain, conditional, nginx)))
    return title, bench_polls.rows(runs), figures


def create_key(ferry_bin: str, server: Server) -> str:
    """A key of the default tenant with every scope, made with `ferry keys create` on the
    server's database."""
    res = subprocess.run([ferry_bin, "keys", "create", "--config", server.config, "--name", "bench",
                          "--scope", "jobs:read", "--scope", "jobs:write", "--scope",
                          "results:read"], capture_output=True, text=True, cwd=server.root)
    if res.returncode != 0:
        raise BenchError(f"ferry keys create failed: {res.stderr.strip()}")
    return res.stdout.strip()


def peers_section(tmp: str, args: argparse.Namespace
                  ) -> tuple[str, Rows, list[bench_peers.Row]]:
    """The peers' no-op jobs, measured as Ferry's in 4 (same job counts, clients and pace), in
    this run: see scripts/bench_peers.py for how."""
    peers = bench_peers.measure_peers(tmp, args.jobs, args.clients, args.paced_jobs or 500,
                                      args.pace, args.postgres)
    title = (f"Peer job queues, same run: {args.jobs} no-op jobs from {args.clients} clients "
             f"(their own client APIs, no HTTP), then {args.paced_jobs or 500} at "
             f"{args.pace:g} jobs/s")
    return title, [(p.name, "   ".join(f"{c}: {p.cells[c]}" for c in bench_peers.COLUMNS))
                   for p in peers] + [
        (f"{p.name} setup", p.cells["setup"]) for p in peers if p.cells["setup"]], peers


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the ferry binary (a release build)")
    ap.add_argument("--upload-gib", type=float, default=1.0,
                    help="size of each upload in GiB (default 1)")
    ap.add_argument("--jobs", type=int, default=1000, help="number of no-op jobs (default 1000)")
    ap.add_argument("--clients", type=int, default=8, help="threads submitting jobs (default 8)")
    ap.add_argument("--job-rounds", type=int, default=1,
                    help="rounds of the no-op job runs, each on a fresh server; the goals "
                    "table takes their medians (default 1)")
    ap.add_argument("--skip-uploads", action="store_true", help="skip dd and the uploads")
    ap.add_argument("--skip-jobs", action="store_true", help="skip the no-op jobs")
    ap.add_argument("--paced-jobs", type=int, default=500,
                    help="then this many no-op jobs sent at an even --pace, for dispatch latency "
                         "below saturation (default 500; 0: skip)")
    ap.add_argument("--pace", type=float, default=50, help="jobs/s of the paced run (default 50)")
    ap.add_argument("--webhook-jobs", type=int, default=500,
                    help="no-op jobs whose events go to the webhook receiver (default 500)")
    ap.add_argument("--skip-webhooks", action="store_true", help="skip the webhook deliveries")
    ap.add_argument("--long-polls", type=int, default=100,
                    help="long-poll wake-ups measured (default 100)")
    ap.add_argument("--skip-long-poll", action="store_true", help="skip the long-poll wake-ups")
    ap.add_argument("--skip-polls", action="store_true", help="skip the status polls (wrk)")
    ap.add_argument("--peers", action="store_true",
                    help="also measure BullMQ, Celery and procrastinate the same way "
                         "(scripts/bench_peers.py; install them with scripts/install-peers.sh)")
    ap.add_argument("--backlog", type=int, default=0,
                    help="also measure with this many jobs queued (e.g. 100000; default: skip)")
    ap.add_argument("--poll-seconds", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--poll-rounds", type=int, default=3,
                    help="interleaved wrk rounds; medians are shown (default 3)")
    ap.add_argument("--postgres", metavar="URL", default=os.environ.get("TEST_PG_URL"),
                    help="scale-out: PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432 "
                         "(default: $TEST_PG_URL)")
    ap.add_argument("--s3-endpoint", metavar="URL", default=os.environ.get("TEST_S3_ENDPOINT"),
                    help="scale-out: S3 endpoint, e.g. http://127.0.0.1:9000 "
                         "(default: $TEST_S3_ENDPOINT)")
    ap.add_argument("--keep-tmp", action="store_true",
                    help="keep the temporary folder (server logs)")
    ap.add_argument("--chart", metavar="PATH.png",
                    help="also draw throughput and dispatch latency, Ferry next to the peers, "
                         "as a PNG (needs matplotlib: scripts/bench-requirements.txt)")
    args = ap.parse_args()
    if min(args.jobs, args.clients, args.webhook_jobs, args.long_polls, args.poll_seconds,
           args.poll_rounds, args.job_rounds) < 1 or args.upload_gib <= 0 or args.pace <= 0 \
            or args.paced_jobs < 0:
        ap.error("--jobs, --clients, --webhook-jobs, --long-polls, --poll-seconds, --poll-rounds, "
                 "--job-rounds and --upload-gib must be positive")
    if bool(args.postgres) != bool(args.s3_endpoint):
        ap.error("the scale-out configuration needs both --postgres (or TEST_PG_URL) and "
                 "--s3-endpoint (or TEST_S3_ENDPOINT); only one is set")
    if not os.access(args.bin, os.X_OK):
        ap.error(f"{args.bin} is not an executable")
    args.bin = os.path.abspath(args.bin)
    return args


def planned(args: argparse.Namespace) -> dict[str, bench_goals.Measured]:
    """The configurations to measure (the scale-out one given --postgres), by name, before they
    are: no figures yet, and for what the options skip, why."""
    def why(skip: bool, option: str) -> str:
        return f"skipped ({option})" if skip else bench_goals.NOT_MEASURED

    def measured() -> bench_goals.Measured:
        return bench_goals.Measured(
            uploads=why(args.skip_uploads, "--skip-uploads"),
            jobs=why(args.skip_jobs, "--skip-jobs"),
            paced=why(args.skip_jobs or not args.paced_jobs,
                      "--skip-jobs" if args.skip_jobs else "--paced-jobs 0"),
            polls=why(args.skip_polls, "--skip-polls"))

    sqlite, scale_out = bench_goals.CONFIGS
    return {sqlite: measured(), **({scale_out: measured()} if args.postgres else {})}


def peers_planned(args: argparse.Namespace) -> str:
    """Why the peers have no figures yet."""
    if not args.peers:
        return "not measured (--peers)"
    return "skipped (--skip-jobs)" if args.skip_jobs else bench_goals.NOT_MEASURED


def measure_all(args: argparse.Namespace, tmp: str, configs: list[ScaleOut | None],
                sections: list[tuple[str, Rows]], results: bench_goals.Results) -> None:
    """Every section the options ask for, in order: its title and rows go to `sections`, its
    figures (those the goals table and the chart read) to `results`, as they are measured."""
    def add(section: tuple[str, Rows, Any]) -> Any:
        """Keeps a section's title and rows; returns its figures."""
        sections.append(section[:2])
        return section[2]

    if not args.skip_uploads:
        size = int(args.upload_gib * GIB)
        payload, sha256 = make_payload(tmp, size)
    for cfg in configs:
        figures = results.configs[config_name(cfg)]
        if not args.skip_uploads:
            figures.uploads = add(upload_section(cfg, args.bin, tmp, payload, sha256, size))
        if not args.skip_jobs:
            figures.jobs = add(job_rounds(cfg, args.bin, tmp, args.jobs, args.clients,
                                          args.job_rounds))
            if args.paced_jobs:
                figures.paced = add(job_rounds(cfg, args.bin, tmp, args.paced_jobs,
                                               args.clients, args.job_rounds, args.pace))
        if args.backlog:
            sections.append(backlog_section(cfg, args.bin, tmp, args.backlog, args.clients,
                                            args.paced_jobs or 200, args.pace))
        if not args.skip_webhooks:
            sections.append(webhook_sequential(cfg, args.bin, tmp, SEQUENTIAL_WEBHOOK_JOBS))
            for measure in (webhook_live, webhook_backlog):
                sections.append(measure(cfg, args.bin, tmp, args.webhook_jobs, args.clients))
        if not args.skip_long_poll:
            sections.append(longpoll_section(cfg, args.bin, tmp, args.long_polls))
        if not args.skip_polls:
            figures.polls = add(polls_section(cfg, args.bin, tmp, args.poll_seconds,
                                              args.poll_rounds))
    if args.peers and not args.skip_jobs:
        results.peers = add(peers_section(tmp, args))


def print_report(heading: str, sections: list[tuple[str, Rows]],
                 results: bench_goals.Results, error: str) -> None:
    print(f"\n{heading}")
    for title, rows in sections:
        width = max(len(k) for k, _ in rows)
        print(f"\n{title}\n" + "-" * max(len(title), width + 40))
        print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"\nGoals (issue 10), measured in this run\n\n{bench_goals.goals_table(results)}")
    print(f"\nINCOMPLETE: {error}\n" if error else "")


def write_chart(results: bench_goals.Results, path: str, title: str) -> None:
    """The PNG of --chart; without matplotlib, says so on stderr and draws nothing."""
    try:
        import bench_chart  # imports matplotlib
    except ImportError as e:
        log(f"no chart: {e} (python3 -m pip install -r scripts/bench-requirements.txt)")
        return
    if not bench_chart.measured_any(results):
        log("no chart: the run measured no job throughput or dispatch latency")
        return
    bench_chart.write_chart(results, path, title)
    log(f"chart: {path}")


def main() -> int:
    args = parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # exit through the clean-up below
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    tmp = tempfile.mkdtemp(prefix="ferry-bench-")  # in $TMPDIR or /tmp
    configs: list[ScaleOut | None] = [None]
    sections: list[tuple[str, Rows]] = []
    results = bench_goals.Results(args.pace, args.upload_gib, planned(args), peers_planned(args))
    error = "interrupted (or a bug: see the traceback)"
    try:
        if args.postgres:
            configs.append(ScaleOut(args.postgres, args.s3_endpoint))
        facts = machine_facts(tmp, args.bin) + [r for c in configs if c for r in c.facts]
        sections.append(("Machine", facts))
        measure_all(args, tmp, configs, sections, results)
        error = ""
    except (BenchError, OSError) as e:  # OSError: e.g. no psql, or the disk is full
        error = str(e)
        log(f"FAILED: {e}")
    finally:
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        heading = (f"Ferry benchmark — {' and '.join(map(label, configs))} — "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        print_report(heading, sections, results, error)
        if args.chart:
            write_chart(results, args.chart, heading)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
