#!/usr/bin/env python3
"""Ferry benchmark: disk baseline, streamed uploads, server memory, no-op job throughput.

Standard library only (Python 3.11+). Usually run through scripts/bench.sh, which builds the
release binary first:

    python3 scripts/bench.py --bin target/release/ferry [--jobs N] [--clients C]
                             [--upload-gib G] [--skip-uploads] [--skip-jobs]
                             [--postgres URL (--s3-endpoint URL | --start-moto)]

What it measures, all in one temporary folder (so on one filesystem):

1. raw disk write speed: `dd if=/dev/zero bs=1M count=1024 conv=fsync`, before and after the
   uploads (a VM's disk is noisy), reported as their mean;
2. one streamed upload of --upload-gib GiB to POST /v1/uploads, timed from the first byte sent
   to the 201 response (Ferry fsyncs the blob and commits its row before answering);
3. on a fresh server (VmHWM is a lifetime high-water mark), 4 such uploads at once: aggregate
   throughput and the server's peak RSS (VmHWM, plus a sampled VmRSS as a cross-check);
4. on a fresh server, N `POST /v1/jobs?kind=noop` one-request jobs from C keep-alive client
   threads, then polling until every job has succeeded: throughput from server timestamps
   (N / (last finished_at - first created_at)), dispatch latency (started_at - created_at)
   percentiles, and the client-side submit rate.

Units: MB = 10^6 bytes (as dd prints), MiB = 2^20 bytes.

The server's stderr goes to a log file in the temporary folder; its tail is printed when
something fails, and WARN/ERROR lines are summarised at the end. The temporary folder and the
servers are removed/stopped at the end, also on errors (--keep-tmp keeps the folder).

Scale-out mode (PostgreSQL + S3) — the same measurements on the other configuration:

    python3 scripts/bench.py --bin … --postgres postgres://postgres@127.0.0.1:5432 \
                             --s3-endpoint http://127.0.0.1:9000
    python3 scripts/bench.py --bin … --postgres postgres://postgres@127.0.0.1:5432 --start-moto

--postgres is a server URL without a database (if it names one, that one is used only to run
CREATE/DROP DATABASE; default `postgres`). Every fresh server gets its own new database
(`psql … -c 'CREATE DATABASE ferry_bench_…'`, so `psql` must be on PATH; dropped WITH (FORCE) when
that server is retired, or at the end) and its own new bucket (an unsigned `PUT <endpoint>/<bucket>`,
which moto accepts; emptied and deleted when the server is retired). Its ferry.toml sets
`database_url`, `blob_store = "s3://<bucket>/bench"`, `[blob_options]` (aws_endpoint,
aws_region = us-east-1, dummy credentials) and `[limits] upload_part_bytes = 8388608`.
--s3-endpoint names a running S3-compatible server; --start-moto instead starts a fresh
`moto_server -H 127.0.0.1 -p <free port>` for each server under test (its access log goes to the
temporary folder) and stops it when that server is retired, so moto's memory and VmHWM cover one
measurement only (and all moto_servers are stopped at the end, also on errors). Uploads are verified against the API's reported size and sha256; in the
report, the bucket's objects are listed before deletion (count, bytes, unfinished multipart
uploads). The S3 server shares the machine: when its pid is known (started by --start-moto, or
found as the local listener on the endpoint's port) its CPU time and RSS are reported too —
moto spools objects over ~5 MiB to (unlinked) temporary files, but assembles a completed
multipart upload in memory.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
MB = 1_000_000
BLOCK = 16 * MIB
CONCURRENT_UPLOADS = 4


def log(msg: str) -> None:
    """Progress messages go to stderr so stdout carries only the results."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Machine facts


def machine_facts(tmp: str, ferry_bin: str) -> list[tuple[str, str]]:
    cpu_model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                    break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(len(os.sched_getaffinity(0)))
    fs = "?"
    try:
        out = subprocess.run(
            ["df", "-PT", tmp], capture_output=True, text=True, check=True
        ).stdout.splitlines()[-1].split()
        fs = f"{out[0]} ({out[1]}), mounted on {out[-1]}, {int(out[4]) * 1024 / GIB:.0f} GiB free"
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        pass
    try:
        version = subprocess.run(
            [ferry_bin, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = "?"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        source = f"{rev}" + (f" + {len(dirty)} modified file(s)" if dirty else " (clean)")
    except (OSError, subprocess.CalledProcessError):
        source = "?"
    return [
        ("nproc", nproc),
        ("CPU model", cpu_model),
        ("memory", mem_total),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("temp folder", tmp),
        ("filesystem", fs),
        ("python", platform.python_version()),
        ("ferry", f"{version} ({ferry_bin})"),
        ("source tree", source),
    ]


# --------------------------------------------------------------------------------------------
# Processes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM… from /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0]) * 1024
    return out


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; [1:] after the ")" starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP `port` (via /proc/net/tcp* socket inodes)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except (OSError, IndexError, ValueError, StopIteration):
            pass
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    return int(entry)
        except OSError:
            continue
    return None


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------
# The server under test


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark itself dies (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort only
        pass


class Server:
    """One `ferry serve` process with its own data folder and config file."""

    def __init__(self, ferry_bin: str, tmp: str, name: str, storage_toml: str = "") -> None:
        """`storage_toml`: extra settings (top-level keys first, then tables) for scale-out mode."""
        self.name = name
        self.root = os.path.join(tmp, name)
        self.data_dir = os.path.join(self.root, "data")
        self.config = os.path.join(self.root, "ferry.toml")
        self.log_path = os.path.join(tmp, f"{name}.stderr.log")
        self.resources: dict[str, str] = {}  # scale-out mode: its database and bucket
        os.makedirs(self.data_dir)
        with open(self.config, "w") as f:
            f.write(f'data_dir = "{self.data_dir}"\n')
            f.write('listen = "127.0.0.1:0"\n')
            f.write(storage_toml)
            f.write("\n[queue]\npoll_interval = \"50ms\"\n")
        self.stdout_lines: list[str] = []
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.pop("FERRY_CONFIG", None)
        env["NO_COLOR"] = "1"  # plain log lines (tracing-subscriber honours NO_COLOR)
        self.proc = subprocess.Popen(
            [ferry_bin, "serve", "--listen", "127.0.0.1:0", "--config", self.config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.root,
            env=env,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid
        self.host = ""
        self.port = 0

    def wait_ready(self) -> None:
        """Waits for the `listening on` line on stdout, then for GET /readyz to answer 200."""
        name = self.name
        ready = threading.Event()

        def read_stdout() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.stdout_lines.append(line)
                m = re.search(r"listening on http://([^\s]+):(\d+)", line)
                if m:
                    self.host, self.port = m.group(1), int(m.group(2))
                    ready.set()
            ready.set()  # EOF: the process ended

        threading.Thread(target=read_stdout, daemon=True, name=f"{name}-stdout").start()
        if not ready.wait(60) or not self.port:
            raise BenchError(
                f"server {name} did not report its address "
                f"(exit code {self.proc.poll()}, stdout {self.stdout_lines!r})"
            )
        # Wait until it really answers (and the database is reachable).
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError(f"server {name} never became ready")
            time.sleep(0.05)
        log(f"server {name}: pid {self.pid}, http://{self.host}:{self.port}")

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout, blocksize=MIB)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = self.connection(timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            data = resp.read()
            try:
                return resp.status, json.loads(data) if data else None
            except ValueError:
                return resp.status, data.decode(errors="replace")
        finally:
            conn.close()

    def proc_status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                log(f"server {self.name} ignored SIGTERM for 20 s; killing it")
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return "\n".join(text.splitlines()[-lines:])

    def log_summary(self) -> tuple[collections.Counter, collections.Counter]:
        """Counts of log levels, and of distinct WARN/ERROR messages (ids and numbers blurred)."""
        levels: collections.Counter = collections.Counter()
        problems: collections.Counter = collections.Counter()
        slow_elapsed: dict[str, list[str]] = collections.defaultdict(list)
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return levels, problems
        ansi = re.compile(r"\x1b\[[0-9;]*m")
        for line in text.splitlines():
            line = ansi.sub("", line)
            m = re.search(r"\b(TRACE|DEBUG|INFO|WARN|ERROR)\b", line)
            if not m:
                continue
            levels[m.group(1)] += 1
            if m.group(1) in ("WARN", "ERROR"):
                msg = line[m.end():].strip()
                slow = re.search(
                    r'slow statement.*?summary="((?:[^"\\]|\\.)*)".*?elapsed=([0-9.]+m?s)', msg
                )
                if slow:
                    # sqlx: one line per slow statement, with the whole SQL text; keep it short.
                    summary = slow.group(1).replace('\\"', '"')
                    problems[f"{m.group(1)} sqlx slow statement (> 1 s): {summary}"] += 1
                    elapsed = slow.group(2)
                    if elapsed.endswith("ms"):
                        elapsed = f"{float(elapsed[:-2]) / 1000:.2f}s"
                    else:
                        elapsed = f"{float(elapsed[:-1]):.2f}s"
                    slow_elapsed[summary].append(elapsed)
                    continue
                msg = re.sub(r"\b(job|upl)_[0-9A-Za-z]+", r"\1_…", msg)
                msg = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27,}", "<uuid>", msg)
                msg = re.sub(r"\b[0-9A-HJKMNP-TV-Z]{26}\b", "<ulid>", msg)
                msg = re.sub(r"\d+(\.\d+)?", "N", msg)
                problems[f"{m.group(1)} {msg[:300]}"] += 1
        # HTTP status classes from the access log ("METHOD PATH HTTP/1.1 STATUS BYTES Nms").
        for m in re.finditer(r'HTTP/1\.[01] (\d)\d\d ', ansi.sub("", text)):
            levels[f"http {m.group(1)}xx"] += 1
        # Put the slow statements' durations back (the key has its numbers blurred).
        for summary, elapsed in slow_elapsed.items():
            key = f"WARN sqlx slow statement (> 1 s): {summary}"
            if key in problems:
                problems[f"{key} — took {', '.join(elapsed[:10])}"] = problems.pop(key)
        return levels, problems


# --------------------------------------------------------------------------------------------
# Scale-out mode: PostgreSQL databases and S3 buckets, one of each per server


S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class ScaleOut:
    """Creates and removes each server's own PostgreSQL database and S3 bucket; runs moto."""

    def __init__(self, pg_url: str, s3_endpoint: str | None, start_moto: bool, tmp: str) -> None:
        self.tmp = tmp
        parts = urllib.parse.urlsplit(pg_url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise BenchError(f"--postgres must be a postgres:// URL, not {pg_url!r}")
        self.pg_parts = parts
        admin_db = parts.path.strip("/") or "postgres"
        self.admin_url = urllib.parse.urlunsplit(parts._replace(path=f"/{admin_db}"))
        self.s3_endpoint = s3_endpoint.rstrip("/") if s3_endpoint else None
        self.start_moto = start_moto  # a fresh moto_server for every server under test
        self.moto: subprocess.Popen | None = None
        self.moto_log_path = ""
        self.moto_logs: list[tuple[str, str]] = []  # (server name, moto log path)
        self.s3_pid: int | None = None  # the S3 server serving the current server under test
        self.s3_label = "S3 (moto)" if start_moto else "S3"
        self.moto_version = "?"
        self.run_id = uuid.uuid4().hex[:10]
        self.databases: list[str] = []  # created and not yet dropped
        self.buckets: list[str] = []    # created and not yet deleted
        self.notes: list[tuple[str, str]] = []  # rows for the report

    # ---- PostgreSQL

    def psql(self, sql: str, url: str | None = None) -> str:
        res = subprocess.run(
            ["psql", url or self.admin_url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, timeout=120,
        )
        if res.returncode != 0:
            raise BenchError(f"psql {sql!r} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout.strip()

    def database_url(self, name: str) -> str:
        return urllib.parse.urlunsplit(self.pg_parts._replace(path=f"/{name}"))

    # ---- S3 (unsigned requests: fine for moto, which does not check signatures)

    def s3(self, method: str, path: str, ok: tuple[int, ...] = (200, 204)) -> bytes:
        assert self.s3_endpoint
        req = urllib.request.Request(f"{self.s3_endpoint}{path}", method=method,
                                     data=b"" if method in ("PUT", "POST") else None)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status, data = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        if status not in ok:
            raise BenchError(f"S3 {method} {path} answered {status}: {data[:300]!r}")
        return data

    def _start_moto(self, name: str) -> None:
        exe = shutil.which("moto_server")
        if not exe:
            raise BenchError("--start-moto: moto_server is not on PATH (pip install 'moto[server]')")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.moto_log_path = os.path.join(self.tmp, f"moto-{name}.stderr.log")
        self.moto_logs.append((name, self.moto_log_path))
        self._moto_log = open(self.moto_log_path, "wb")
        self.moto = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=self._moto_log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.s3("GET", "/")
                break
            except (OSError, BenchError):
                if self.moto.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"moto_server did not start (exit code {self.moto.poll()}); "
                                     f"log: {self.moto_log_tail()}")
                time.sleep(0.2)
        # The pyenv shim execs, so this is normally the same pid; look it up to be sure.
        self.s3_pid = listener_pid(port) or self.moto.pid
        log(f"moto_server for {name}: pid {self.s3_pid}, {self.s3_endpoint}")

    def _stop_moto(self) -> None:
        if self.moto is None:
            return
        if self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(20)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait()
        else:
            self.notes.append(("moto_server", f"pid {self.moto.pid} had EXITED by itself with code "
                                              f"{self.moto.returncode}"))
        self._moto_log.close()
        self.moto = None

    def moto_log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.moto_log_path, "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def setup(self) -> None:
        if shutil.which("psql") is None:
            raise BenchError("scale-out mode needs psql on PATH")
        version = self.psql("SHOW server_version")
        netloc = self.pg_parts.netloc
        if "@" in netloc:  # hide a password
            user, _, hostport = netloc.rpartition("@")
            netloc = f"{user.split(':', 1)[0]}{':***' if ':' in user else ''}@{hostport}"
        safe_pg = urllib.parse.urlunsplit(self.pg_parts._replace(netloc=netloc, path=""))
        self.notes.append(("PostgreSQL", f"{version} at {safe_pg} (a new database per server)"))
        try:
            import importlib.metadata
            self.moto_version = importlib.metadata.version("moto")
        except Exception:  # noqa: BLE001 - informational only
            pass
        if self.start_moto:
            self.notes.append(("S3 server", f"a fresh moto_server {self.moto_version} (127.0.0.1, free "
                                             "port) per server under test, started by this run"))
            return
        self.s3("GET", "/")  # reachable?
        ep = urllib.parse.urlsplit(self.s3_endpoint)
        pid = listener_pid(ep.port or 80) if ep.hostname in ("127.0.0.1", "localhost", "::1") else None
        self.s3_pid = pid
        cmd = proc_cmdline(pid) if pid else "?"
        if "moto" in cmd:
            self.s3_label = "S3 (moto)"
        self.notes += [
            ("S3 endpoint", f"{self.s3_endpoint} (a new bucket per server)"),
            ("S3 server process", f"pid {pid}: {cmd[:120]}" + (f"; moto {self.moto_version}"
                                                               if "moto" in cmd else "")
             if pid else "not found on this machine (its CPU and RSS are not reported)"),
        ]

    def label(self) -> str:
        return f"PostgreSQL + {self.s3_label}"

    def provision(self, name: str) -> tuple[str, dict[str, str]]:
        """A new database and bucket for server `name`; returns (ferry.toml text, resources)."""
        if self.start_moto:
            self._stop_moto()
            self._start_moto(name)
        suffix = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        db = f"ferry_bench_{self.run_id}_{suffix.replace('-', '_')}"
        bucket = f"ferry-bench-{self.run_id}-{suffix}"[:63]
        self.psql(f'CREATE DATABASE "{db}"')
        self.databases.append(db)
        self.s3("PUT", f"/{bucket}")
        self.buckets.append(bucket)
        log(f"{name}: database {db}, bucket {bucket}")
        toml = (
            f'database_url = "{self.database_url(db)}"\n'
            f'blob_store = "s3://{bucket}/bench"\n'
            "\n[blob_options]\n"
            f'aws_endpoint = "{self.s3_endpoint}"\n'
            'aws_region = "us-east-1"\n'
            'aws_access_key_id = "ferry-bench"\n'
            'aws_secret_access_key = "ferry-bench-secret"\n'
            "\n[limits]\n"
            "upload_part_bytes = 8388608\n"
        )
        return toml, {"database": db, "bucket": bucket}

    def bucket_contents(self, bucket: str) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
        """(objects as (key, size), unfinished multipart uploads as (key, upload id))."""
        objects: list[tuple[str, int]] = []
        token = None
        while True:
            q = "list-type=2&max-keys=1000"
            if token:
                q += "&continuation-token=" + urllib.parse.quote(token, safe="")
            root = ET.fromstring(self.s3("GET", f"/{bucket}?{q}"))
            for c in root.iter(f"{S3_NS}Contents"):
                objects.append((c.findtext(f"{S3_NS}Key") or "", int(c.findtext(f"{S3_NS}Size") or 0)))
            token = root.findtext(f"{S3_NS}NextContinuationToken")
            if root.findtext(f"{S3_NS}IsTruncated") != "true" or not token:
                break
        uploads = []
        root = ET.fromstring(self.s3("GET", f"/{bucket}?uploads"))
        for u in root.iter(f"{S3_NS}Upload"):
            uploads.append((u.findtext(f"{S3_NS}Key") or "", u.findtext(f"{S3_NS}UploadId") or ""))
        return objects, uploads

    def release(self, name: str, resources: dict[str, str]) -> None:
        """After the server stopped: note what it left, then drop its database and bucket."""
        db, bucket = resources.get("database"), resources.get("bucket")
        if db and db in self.databases:
            try:
                stats = self.psql(
                    "SELECT xact_commit, xact_rollback, deadlocks, conflicts "
                    f"FROM pg_stat_database WHERE datname = '{db}'"
                ).split("|")
                if len(stats) == 4:
                    self.notes.append((f"{name}: database", f"{stats[0]} commits, {stats[1]} rollbacks, "
                                                            f"{stats[2]} deadlocks, {stats[3]} conflicts"))
            except BenchError as e:
                log(f"{name}: pg_stat_database: {e}")
            try:  # to compare with the bucket's objects below
                n = self.psql("SELECT count(*), coalesce(sum(size), 0) FROM ferry_uploads",
                              self.database_url(db)).split("|")
                self.notes.append((f"{name}: ferry_uploads", f"{n[0]} rows, {int(n[1]) / MIB:.1f} MiB"))
            except (BenchError, ValueError, IndexError) as e:
                log(f"{name}: counting ferry_uploads: {e}")
            try:
                self.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                self.databases.remove(db)
            except BenchError as e:
                log(f"{name}: {e}")
                self.notes.append((f"{name}: database", f"NOT dropped: {e}"))
        if bucket and bucket in self.buckets:
            try:
                objects, uploads = self.bucket_contents(bucket)
                total = sum(size for _, size in objects)
                self.notes.append((f"{name}: bucket", f"{len(objects)} objects, {total / MIB:.1f} MiB, "
                                                      f"{len(uploads)} unfinished multipart uploads"))
                if self.start_moto:
                    self.buckets.remove(bucket)  # its moto_server is stopped just below
                else:
                    for key, upload_id in uploads:
                        self.s3("DELETE", f"/{bucket}/{urllib.parse.quote(key)}?uploadId="
                                          + urllib.parse.quote(upload_id, safe=""))
                    for key, _ in objects:
                        self.s3("DELETE", f"/{bucket}/{urllib.parse.quote(key)}")
                    self.s3("DELETE", f"/{bucket}")
                    self.buckets.remove(bucket)
            except (BenchError, OSError, ET.ParseError) as e:
                log(f"{name}: removing bucket {bucket}: {e}")
                self.notes.append((f"{name}: bucket", f"NOT removed: {e}"))
        if self.start_moto:
            self._stop_moto()
            self.buckets.clear()  # moto keeps nothing once stopped

    def close(self) -> None:
        """Drops what is left (after errors) and stops moto."""
        for db in list(self.databases):
            try:
                self.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                self.databases.remove(db)
            except BenchError as e:
                log(f"dropping {db}: {e}")
        if self.start_moto:
            self._stop_moto()
            self.buckets.clear()
        for bucket in list(self.buckets):
            self.release(bucket, {"bucket": bucket})

    def moto_log_summary(self) -> list[tuple[str, str]]:
        """HTTP status counts and error lines from the access logs of the moto_servers we ran."""
        rows = []
        for name, path in self.moto_logs:
            try:
                with open(path, "rb") as f:
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            codes: collections.Counter = collections.Counter()
            odd: collections.Counter = collections.Counter()
            for line in text.splitlines():
                m = re.search(r'"([A-Z]+) [^"]*" (\d{3}) ', line)
                if m:
                    codes[f"{m.group(1)} {m.group(2)}"] += 1
                    if not m.group(2).startswith("2"):
                        p = re.sub(r'.*"[A-Z]+ (\S+).*', r"\1", line)
                        p = re.sub(r"[?].*", "?…", p)
                        p = re.sub(r"ferry-bench-[0-9a-f]+-", "ferry-bench-…-", p)
                        p = re.sub(r"/bench/.*", "/bench/…", p)
                        odd[f"{m.group(1)} {m.group(2)} {p}"] += 1
                elif re.search(r"Traceback|Error|Exception", line):
                    odd[line.strip()[:200]] += 1
            rows.append((f"moto for {name} (access log)",
                         ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())) or "(empty log)"))
            for msg, count in odd.most_common(8):
                rows.append((f"  {count} x", msg))
        return rows


# --------------------------------------------------------------------------------------------
# Measurements


def measure_dd(tmp: str) -> dict[str, float]:
    path = os.path.join(tmp, "dd.bin")
    log("dd: writing 1 GiB with conv=fsync")
    t0 = time.monotonic()
    res = subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1024", "conv=fsync"],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    wall = time.monotonic() - t0
    try:
        os.unlink(path)
    except OSError:
        pass
    if res.returncode != 0:
        raise BenchError(f"dd failed ({res.returncode}): {res.stderr.strip()}")
    # e.g. "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.34 s, 459 MB/s"
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.]+) s", res.stderr, re.M)
    if m:
        nbytes, secs = int(m.group(1)), float(m.group(2))
    else:
        nbytes, secs = GIB, wall
    return {"bytes": nbytes, "seconds": secs, "wall": wall, "mb_s": nbytes / secs / MB}


def make_payload(tmp: str, size: int) -> tuple[str, str]:
    """A file of `size` random-ish bytes (one 16 MiB random block, repeated); returns (path, sha256)."""
    path = os.path.join(tmp, "payload.bin")
    log(f"writing the {size / GIB:.2f} GiB upload payload")
    block = os.urandom(BLOCK)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            piece = block if left >= BLOCK else block[:left]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
        f.flush()
        os.fsync(f.fileno())
    return path, h.hexdigest()


def upload_once(server: Server, path: str, size: int) -> dict[str, Any]:
    """Streams `path` to POST /v1/uploads; times first byte sent → response received."""
    conn = server.connection(timeout=600)
    try:
        conn.connect()
        with open(path, "rb") as f:
            t0 = time.monotonic()
            conn.request(
                "POST",
                "/v1/uploads",
                body=f,  # http.client streams a file object in `blocksize` (1 MiB) reads
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
            )
            resp = conn.getresponse()
            data = resp.read()
            t1 = time.monotonic()
    finally:
        conn.close()
    if resp.status != 201:
        raise BenchError(
            f"upload answered {resp.status}: {data[:500].decode(errors='replace')}"
        )
    body = json.loads(data)
    return {"t0": t0, "t1": t1, "seconds": t1 - t0, "body": body}


def check_upload(result: dict[str, Any], size: int, sha256: str) -> None:
    body = result["body"]
    if body.get("size") != size or body.get("sha256") != sha256:
        raise BenchError(
            f"upload stored size={body.get('size')} sha256={body.get('sha256')}, "
            f"expected size={size} sha256={sha256}"
        )


class RssSampler:
    """Samples VmRSS every 20 ms in a thread (VmHWM is read from the kernel at the end)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"rss-sampler-{pid}")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = proc_status(self.pid).get("VmRSS", 0)
                self.peak_rss = max(self.peak_rss, rss)
            except OSError:
                return
            self._stop.wait(0.02)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class SideProcess:
    """CPU time and RSS of another process on the machine (the S3 server), best effort."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu0 = 0.0
        self.sampler: RssSampler | None = None

    def start(self) -> None:
        if self.pid is None:
            return
        try:
            self.cpu0 = proc_cpu_seconds(self.pid)
            self.idle_rss = proc_status(self.pid).get("VmRSS", 0)
        except OSError:
            self.pid = None
            return
        self.sampler = RssSampler(self.pid)
        self.sampler.__enter__()

    def finish(self) -> dict[str, Any] | None:
        if self.pid is None:
            return None
        if self.sampler is not None:
            self.sampler.__exit__()
        try:
            st = proc_status(self.pid)
            cpu = proc_cpu_seconds(self.pid) - self.cpu0
        except OSError:
            return None
        return {
            "cpu": cpu,
            "idle_rss": self.idle_rss,
            "sampled_peak": self.sampler.peak_rss if self.sampler else 0,
            "rss_after": st.get("VmRSS", 0),
            "hwm": st.get("VmHWM", 0),
        }


def measure_single_upload(
    server: Server, path: str, size: int, sha256: str, side_pid: int | None = None
) -> dict[str, Any]:
    log(f"upload: 1 x {size / GIB:.2f} GiB")
    side = SideProcess(side_pid)
    side.start()
    cpu0 = server.cpu_seconds()
    res = upload_once(server, path, size)
    cpu1 = server.cpu_seconds()
    side_stats = side.finish()
    check_upload(res, size, sha256)
    st = server.proc_status()
    return {
        "seconds": res["seconds"],
        "mb_s": size / res["seconds"] / MB,
        "hwm": st.get("VmHWM", 0),
        "cpu": cpu1 - cpu0,
        "side": side_stats,
        "upload_id": res["body"].get("id"),
    }


def measure_concurrent_uploads(
    server: Server, path: str, size: int, sha256: str, side_pid: int | None = None
) -> dict[str, Any]:
    idle = server.proc_status()
    log(f"uploads: {CONCURRENT_UPLOADS} x {size / GIB:.2f} GiB at once "
        f"(fresh server, idle RSS {idle.get('VmRSS', 0) / MIB:.1f} MiB)")
    results: list[dict[str, Any] | None] = [None] * CONCURRENT_UPLOADS
    errors: list[BaseException] = []
    outcomes: list[str] = [""] * CONCURRENT_UPLOADS  # for the report when some fail
    barrier = threading.Barrier(CONCURRENT_UPLOADS)

    def run(i: int) -> None:
        t0 = time.monotonic()
        try:
            barrier.wait()
            t0 = time.monotonic()
            results[i] = upload_once(server, path, size)
            outcomes[i] = f"201 after {results[i]['seconds']:.1f} s"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            outcomes[i] = f"failed after {time.monotonic() - t0:.1f} s: {str(e)[:120]}"

    side = SideProcess(side_pid)
    side.start()
    cpu0 = server.cpu_seconds()
    with RssSampler(server.pid) as sampler:
        threads = [threading.Thread(target=run, args=(i,), daemon=True)
                   for i in range(CONCURRENT_UPLOADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    cpu1 = server.cpu_seconds()
    side_stats = side.finish()
    if errors:
        err = BenchError(f"{len(errors)} concurrent upload(s) failed: {errors[0]!r}")
        # What was measured anyway, for the report.
        st = server.proc_status()
        err.partial = {  # type: ignore[attr-defined]
            "outcomes": outcomes,
            "idle_rss": idle.get("VmRSS", 0),
            "hwm": st.get("VmHWM", 0),
            "sampled_peak": sampler.peak_rss,
            "cpu": cpu1 - cpu0,
            "side": side_stats,
        }
        raise err
    done = [r for r in results if r is not None]
    for r in done:
        check_upload(r, size, sha256)
    t0 = min(r["t0"] for r in done)
    t1 = max(r["t1"] for r in done)
    st = server.proc_status()
    return {
        "idle_rss": idle.get("VmRSS", 0),
        "idle_hwm": idle.get("VmHWM", 0),
        "hwm": st.get("VmHWM", 0),
        "sampled_peak": sampler.peak_rss,
        "rss_after": st.get("VmRSS", 0),
        "wall": t1 - t0,
        "agg_mb_s": CONCURRENT_UPLOADS * size / (t1 - t0) / MB,
        "per_upload_s": sorted(r["seconds"] for r in done),
        "cpu": cpu1 - cpu0,
        "side": side_stats,
    }


def parse_ts(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def get_json(server: Server, conn_holder: list, path: str) -> tuple[int, Any]:
    """GET on one keep-alive connection (re-opened once if the server closed it)."""
    for attempt in range(2):
        try:
            if conn_holder[0] is None:
                conn_holder[0] = server.connection(timeout=60)
            conn_holder[0].request("GET", path)
            resp = conn_holder[0].getresponse()
            data = resp.read()
            break
        except (http.client.HTTPException, OSError):
            if conn_holder[0] is not None:
                conn_holder[0].close()
            conn_holder[0] = None
            if attempt == 1:
                raise
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError:
        return resp.status, data.decode(errors="replace")


def list_jobs(
    server: Server, conn_holder: list, status: str, limit: int = 200, all_pages: bool = True
) -> list[dict[str, Any]]:
    """Jobs with `status` (newest first), following the `next` cursor unless `all_pages` is off."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        path = f"/v1/jobs?status={status}&limit={limit}"
        if cursor:
            path += f"&next={cursor}"
        code, page = get_json(server, conn_holder, path)
        if code != 200:
            raise BenchError(f"GET {path} answered {code}: {str(page)[:500]}")
        items.extend(page["items"])
        cursor = page.get("next")
        if not cursor or not all_pages:
            return items


def measure_jobs(
    server: Server, n_jobs: int, n_clients: int, stall_timeout: float, side_pid: int | None = None
) -> dict[str, Any]:
    log(f"jobs: submitting {n_jobs} noop jobs from {n_clients} keep-alive clients")
    side = SideProcess(side_pid)
    side.start()
    server_cpu0 = server.cpu_seconds()
    next_index = iter(range(n_jobs))
    index_lock = threading.Lock()
    submitted: dict[str, dict[str, Any]] = {}
    submit_lock = threading.Lock()
    failures: list[str] = []
    client_latency: list[float] = []
    reconnects = [0]
    status_counts: collections.Counter = collections.Counter()
    barrier = threading.Barrier(n_clients + 1)

    def client() -> None:
        conn = server.connection(timeout=120)
        barrier.wait()
        try:
            while True:
                with index_lock:
                    i = next(next_index, None)
                if i is None:
                    return
                body = f"noop {i}\n".encode()
                for attempt in range(3):
                    try:
                        t0 = time.monotonic()
                        conn.request(
                            "POST",
                            "/v1/jobs?kind=noop",
                            body=body,
                            headers={"Content-Type": "application/octet-stream"},
                        )
                        resp = conn.getresponse()
                        data = resp.read()
                        t1 = time.monotonic()
                        break
                    except (http.client.HTTPException, OSError) as e:
                        # A keep-alive connection the server closed: reconnect and resend.
                        conn.close()
                        conn = server.connection(timeout=120)
                        with submit_lock:
                            reconnects[0] += 1
                        if attempt == 2:
                            with submit_lock:
                                failures.append(f"job {i}: {e!r}")
                            data, resp = b"", None
                if resp is None:
                    continue
                with submit_lock:
                    status_counts[resp.status] += 1
                    client_latency.append(t1 - t0)
                    if resp.status == 202:
                        job = json.loads(data)
                        submitted[job["id"]] = job
                    else:
                        failures.append(
                            f"job {i}: HTTP {resp.status} {data[:300].decode(errors='replace')}"
                        )
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"client-{c}", daemon=True)
               for c in range(n_clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t_submit0 = time.monotonic()
    for t in threads:
        t.join()
    t_submit1 = time.monotonic()
    submit_s = t_submit1 - t_submit0
    log(f"jobs: {len(submitted)} accepted in {submit_s:.2f} s "
        f"({len(submitted) / submit_s:.1f}/s), {len(failures)} failed")
    if failures:
        log("first submit failures:\n  " + "\n  ".join(failures[:10]))
    if not server.alive():
        raise BenchError(f"server exited with code {server.proc.poll()} while jobs were submitted")
    if not submitted:
        raise BenchError(f"no job was accepted; first failure: {failures[0] if failures else '?'}")

    # Wait until every accepted job has finished. The poll must stay light, since it shares the
    # 2 cores and the database with the workers being measured: once a second, ask whether any
    # job is still queued or running (limit=1), and follow a cursor through the submitted jobs in
    # creation order (GET /v1/jobs/{id}, at most 20 a round) to see progress and spot a stuck job.
    # Only when nothing is queued or running, list every finished job once for its timestamps.
    conn_holder: list = [None]
    order = list(submitted)  # insertion order ≈ creation order
    pointer = 0
    last_progress = time.monotonic()
    t_poll0 = time.monotonic()
    done: dict[str, dict[str, Any]] = {}
    try:
        while True:
            advanced = False
            for _ in range(20):
                if pointer >= len(order):
                    break
                code, job = get_json(server, conn_holder, f"/v1/jobs/{order[pointer]}")
                if code != 200:
                    raise BenchError(f"GET /v1/jobs/{order[pointer]} answered {code}: {str(job)[:500]}")
                if job["status"] in ("succeeded", "failed", "canceled"):
                    pointer += 1
                    advanced = True
                else:
                    break
            busy = any(
                list_jobs(server, conn_holder, s, limit=1, all_pages=False)
                for s in ("queued", "running")
            )
            now = time.monotonic()
            if advanced:
                last_progress = now
            if not busy:
                bad = [
                    j for s in ("failed", "canceled")
                    for j in list_jobs(server, conn_holder, s) if j["id"] in submitted
                ]
                if bad:
                    sample = json.dumps(bad[0], indent=1)[:1500]
                    raise BenchError(f"{len(bad)} job(s) ended failed/canceled; e.g.\n{sample}")
                done = {
                    j["id"]: j for j in list_jobs(server, conn_holder, "succeeded")
                    if j["id"] in submitted
                }
                if len(done) >= len(submitted):
                    break
                log(f"jobs: nothing queued or running, yet only {len(done)} of "
                    f"{len(submitted)} succeeded; polling on")
            if now - last_progress > stall_timeout:
                queued = [j for j in list_jobs(server, conn_holder, "queued") if j["id"] in submitted]
                running = [j for j in list_jobs(server, conn_holder, "running") if j["id"] in submitted]
                stuck_id = order[pointer] if pointer < len(order) else None
                detail = ""
                if stuck_id:
                    _, job = get_json(server, conn_holder, f"/v1/jobs/{stuck_id}")
                    _, events = get_json(server, conn_holder, f"/v1/jobs/{stuck_id}/events")
                    detail = (f"\noldest unfinished job: {json.dumps(job)[:800]}"
                              f"\nits events: {json.dumps(events)[:800]}")
                raise BenchError(
                    f"no job finished for {stall_timeout:.0f} s: {len(queued)} queued, "
                    f"{len(running)} running of {len(submitted)}{detail}"
                )
            if not server.alive():
                raise BenchError(f"server exited with code {server.proc.poll()}")
            time.sleep(1.0)
    finally:
        if conn_holder[0] is not None:
            conn_holder[0].close()
    poll_s = time.monotonic() - t_poll0
    server_cpu = server.cpu_seconds() - server_cpu0
    side_stats = side.finish()

    created = [parse_ts(j["created_at"]) for j in done.values()]
    started = [parse_ts(j["started_at"]) for j in done.values()]
    finished = [parse_ts(j["finished_at"]) for j in done.values()]
    span = max(finished) - min(created)
    dispatch_ms = sorted((s - c) * 1000 for s, c in zip(started, created))
    run_ms = sorted((f - s) * 1000 for f, s in zip(finished, started))
    e2e_ms = sorted((f - c) * 1000 for f, c in zip(finished, created))
    attempts = collections.Counter(j.get("attempt") for j in done.values())
    # Throughput per one-second bucket of finished_at, to spot stalls.
    buckets = collections.Counter(int(f - min(created)) for f in finished)
    return {
        "accepted": len(submitted),
        "failed_submits": failures,
        "status_counts": status_counts,
        "reconnects": reconnects[0],
        "submit_s": submit_s,
        "submit_rate": len(submitted) / submit_s,
        "client_ms": sorted(x * 1000 for x in client_latency),
        "poll_s": poll_s,
        "span": span,
        "created_span": max(created) - min(created),
        "throughput": len(done) / span if span > 0 else float("inf"),
        "dispatch_ms": dispatch_ms,
        "run_ms": run_ms,
        "e2e_ms": e2e_ms,
        "attempts": attempts,
        "per_second": [buckets.get(s, 0) for s in range(int(span) + 1)],
        "jobs": list(done.values()),
        "server_cpu": server_cpu,
        "side": side_stats,
    }


# --------------------------------------------------------------------------------------------
# Report


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max([len(k) for k, _ in rows] + [10])
    print(f"\n{title}")
    print("-" * max(len(title), width + 40))
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def fmt_pcts(values: list[float]) -> str:
    return "  ".join(
        f"{name} {percentile(values, q):7.1f}"
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="path to the ferry binary (release build)")
    ap.add_argument("--jobs", type=int, default=1000, help="number of noop jobs (default 1000)")
    ap.add_argument("--clients", type=int, default=8, help="client threads submitting jobs (default 8)")
    ap.add_argument("--upload-gib", type=float, default=1.0, help="size of each upload in GiB (default 1)")
    ap.add_argument("--skip-uploads", action="store_true", help="skip dd and the upload measurements")
    ap.add_argument("--skip-jobs", action="store_true", help="skip the job throughput measurement")
    ap.add_argument("--tmpdir", default=None, help="parent of the temporary folder (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (logs, databases)")
    ap.add_argument("--stall-timeout", type=float, default=120,
                    help="fail when no job finishes for this many seconds (default 120)")
    ap.add_argument("--postgres", metavar="URL", default=None,
                    help="scale-out mode: PostgreSQL server URL without a database, e.g. "
                         "postgres://postgres@127.0.0.1:5432 (each server gets a new database)")
    ap.add_argument("--s3-endpoint", metavar="URL", default=None,
                    help="scale-out mode: a running S3-compatible server (moto), e.g. "
                         "http://127.0.0.1:9000 (each server gets a new bucket)")
    ap.add_argument("--start-moto", action="store_true",
                    help="scale-out mode: instead of --s3-endpoint, start a fresh moto_server on a "
                         "free port for each server under test, stopped with that server")
    args = ap.parse_args()
    if args.jobs < 1 or args.clients < 1 or args.upload_gib <= 0:
        ap.error("--jobs, --clients and --upload-gib must be positive")
    if args.s3_endpoint and args.start_moto:
        ap.error("give either --s3-endpoint or --start-moto, not both")
    if bool(args.postgres) != bool(args.s3_endpoint or args.start_moto):
        ap.error("scale-out mode needs both --postgres and --s3-endpoint (or --start-moto)")
    ferry_bin = os.path.abspath(args.bin)
    if not os.access(ferry_bin, os.X_OK):
        ap.error(f"{ferry_bin} is not an executable")

    # SIGTERM/SIGHUP → SystemExit, so the finally block below still stops servers and cleans up.
    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = tempfile.mkdtemp(prefix="ferry-bench-", dir=args.tmpdir)
    servers: list[Server] = []
    released: set[str] = set()
    ok = False
    scale = ScaleOut(args.postgres, args.s3_endpoint, args.start_moto, tmp) if args.postgres else None
    config_label = "SQLite + local disk"

    def start_server(name: str) -> Server:
        storage_toml, resources = scale.provision(name) if scale else ("", {})
        s = Server(ferry_bin, tmp, name, storage_toml)
        s.resources = resources
        servers.append(s)
        s.wait_ready()
        return s

    def release(s: Server) -> None:
        if scale and s.name not in released:
            released.add(s.name)
            scale.release(s.name, s.resources)

    def retire(s: Server) -> None:
        """Stops a server and frees its data folder (keeps its log for the summary)."""
        s.stop()
        release(s)
        if not args.keep_tmp:
            shutil.rmtree(s.root, ignore_errors=True)

    def side_pid() -> int | None:
        """The S3 server's pid (for the current server under test), if known."""
        return scale.s3_pid if scale else None

    sections: list[tuple[str, list[tuple[str, str]]]] = []
    try:
        if scale:
            scale.setup()
            config_label = scale.label()
        sections.append(("Machine", machine_facts(tmp, ferry_bin)
                         + [("configuration", config_label)]))

        if not args.skip_uploads:
            # The bytes go to the S3 server on this machine, not straight to the disk: dd is
            # only context, and the S3 server's own CPU and memory are shown next to Ferry's.
            def side_rows(st: dict[str, Any] | None, concurrent: bool) -> list[tuple[str, str]]:
                if st is None:
                    return [("  S3 server process", "not found (not measured)")]
                hwm_note = ("fresh moto_server for this server" if scale.start_moto
                            else "lifetime of that process, not only this run")
                rows = [("  S3 server CPU", f"{st['cpu']:8.1f} s")]
                if concurrent:
                    rows += [
                        ("  S3 server RSS before", f"{st['idle_rss'] / MIB:8.1f} MiB"),
                        ("  S3 server sampled peak VmRSS", f"{st['sampled_peak'] / MIB:8.1f} MiB"),
                        ("  S3 server RSS after", f"{st['rss_after'] / MIB:8.1f} MiB"),
                    ]
                else:
                    rows.append(("  S3 server sampled peak VmRSS",
                                 f"{st['sampled_peak'] / MIB:8.1f} MiB   (RSS before "
                                 f"{st['idle_rss'] / MIB:.1f} MiB)"))
                rows.append(("  S3 server peak RSS (VmHWM)", f"{st['hwm'] / MIB:8.1f} MiB   ({hwm_note})"))
                return rows

            size = int(args.upload_gib * GIB)
            dd = measure_dd(tmp)
            payload, sha = make_payload(tmp, size)

            s1 = start_server("upload-1")
            single = measure_single_upload(s1, payload, size, sha, side_pid())
            retire(s1)

            s4 = start_server("upload-4")
            try:
                conc = measure_concurrent_uploads(s4, payload, size, sha, side_pid())
            except BenchError as e:
                partial = getattr(e, "partial", None)
                if partial is not None:  # report what was measured before failing
                    gib = f"{size / GIB:g} GiB"
                    sections.append((f"Disk and uploads — {config_label} — INCOMPLETE (MB = 10^6 bytes)", [
                        ("dd 1 GiB, conv=fsync (before)", f"{dd['mb_s']:8.1f} MB/s   ({dd['seconds']:.2f} s)"),
                        (f"1 x {gib} upload", f"{single['mb_s']:8.1f} MB/s   ({single['seconds']:.2f} s; "
                                              f"server CPU {single['cpu']:.1f} s)"),
                        ("  server VmHWM after it", f"{single['hwm'] / MIB:8.1f} MiB"),
                        *(side_rows(single["side"], False) if scale else []),
                        (f"{CONCURRENT_UPLOADS} x {gib} uploads at once", "FAILED"),
                        *[(f"  upload {i + 1}", o) for i, o in enumerate(partial["outcomes"])],
                        ("  server CPU", f"{partial['cpu']:8.1f} s"),
                        ("  server idle RSS (fresh)", f"{partial['idle_rss'] / MIB:8.1f} MiB"),
                        ("  server peak RSS (VmHWM)", f"{partial['hwm'] / MIB:8.1f} MiB"),
                        ("  sampled peak VmRSS (20 ms)", f"{partial['sampled_peak'] / MIB:8.1f} MiB"),
                        *(side_rows(partial["side"], True) if scale else []),
                    ]))
                raise
            retire(s4)
            os.unlink(payload)
            # The disk of a VM is noisy: measure it again after the uploads to bracket them.
            dd2 = measure_dd(tmp)
            dd_mean = (dd["mb_s"] + dd2["mb_s"]) / 2

            gib = f"{size / GIB:g} GiB"
            if scale is None:
                upload_rows = [
                    ("dd 1 GiB, conv=fsync", f"{dd_mean:8.1f} MB/s   (mean of before the uploads: "
                                             f"{dd['mb_s']:.1f} MB/s in {dd['seconds']:.2f} s, after: "
                                             f"{dd2['mb_s']:.1f} MB/s in {dd2['seconds']:.2f} s)"),
                    (f"1 x {gib} upload", f"{single['mb_s']:8.1f} MB/s   ({single['seconds']:.2f} s, "
                                          f"{single['mb_s'] / dd_mean * 100:.0f}% of dd; "
                                          f"server CPU {single['cpu']:.1f} s)"),
                    (f"  server VmHWM after it", f"{single['hwm'] / MIB:8.1f} MiB"),
                    (f"{CONCURRENT_UPLOADS} x {gib} uploads at once",
                     f"{conc['agg_mb_s']:8.1f} MB/s aggregate   ({conc['agg_mb_s'] / dd_mean * 100:.0f}% "
                     f"of dd; {conc['wall']:.2f} s wall; "
                     f"each {', '.join(f'{x:.1f}' for x in conc['per_upload_s'])} s; "
                     f"server CPU {conc['cpu']:.1f} s)"),
                    ("  server idle RSS (fresh)", f"{conc['idle_rss'] / MIB:8.1f} MiB"),
                    ("  server peak RSS (VmHWM)", f"{conc['hwm'] / MIB:8.1f} MiB"),
                    ("  sampled peak VmRSS (20 ms)", f"{conc['sampled_peak'] / MIB:8.1f} MiB"),
                    ("  RSS after the uploads", f"{conc['rss_after'] / MIB:8.1f} MiB"),
                ]
            else:
                upload_rows = [
                    ("dd 1 GiB, conv=fsync (context)",
                     f"{dd_mean:8.1f} MB/s   (before the uploads: {dd['mb_s']:.1f} MB/s in "
                     f"{dd['seconds']:.2f} s, after: {dd2['mb_s']:.1f} MB/s in {dd2['seconds']:.2f} s)"),
                    (f"1 x {gib} upload to S3", f"{single['mb_s']:8.1f} MB/s   ({single['seconds']:.2f} s; "
                                                f"Ferry CPU {single['cpu']:.1f} s)"),
                    ("  Ferry VmHWM after it", f"{single['hwm'] / MIB:8.1f} MiB"),
                    *side_rows(single["side"], False),
                    (f"{CONCURRENT_UPLOADS} x {gib} uploads to S3 at once",
                     f"{conc['agg_mb_s']:8.1f} MB/s aggregate   ({conc['wall']:.2f} s wall; "
                     f"each {', '.join(f'{x:.1f}' for x in conc['per_upload_s'])} s; "
                     f"Ferry CPU {conc['cpu']:.1f} s)"),
                    ("  Ferry idle RSS (fresh)", f"{conc['idle_rss'] / MIB:8.1f} MiB"),
                    ("  Ferry peak RSS (VmHWM)", f"{conc['hwm'] / MIB:8.1f} MiB"),
                    ("  Ferry sampled peak VmRSS (20 ms)", f"{conc['sampled_peak'] / MIB:8.1f} MiB"),
                    ("  Ferry RSS after the uploads", f"{conc['rss_after'] / MIB:8.1f} MiB"),
                    *side_rows(conc["side"], True),
                    ("upload verification", "size and sha256 reported by the API match the local "
                                            "payload (bucket contents: see Services)"),
                ]
            sections.append((f"Disk and uploads — {config_label} (MB = 10^6 bytes)", upload_rows))

        if not args.skip_jobs:
            sj = start_server("jobs")
            jobs = measure_jobs(sj, args.jobs, args.clients, args.stall_timeout, side_pid())
            with open(os.path.join(tmp, "jobs.json"), "w") as f:
                json.dump(jobs.pop("jobs"), f)
            retire(sj)
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(jobs["status_counts"].items()))
            attempts = ", ".join(f"attempt {k}: {v}" for k, v in sorted(jobs["attempts"].items()))
            per_sec = jobs["per_second"]
            cpu_rows = []
            if scale is not None:
                side = jobs["side"]
                cpu_rows = [("CPU during submit + polling", f"Ferry {jobs['server_cpu']:.1f} s, S3 server "
                             + (f"{side['cpu']:.1f} s (its RSS {side['idle_rss'] / MIB:.1f} → "
                                f"{side['rss_after'] / MIB:.1f} MiB)" if side else "not measured"))]
            sections.append((
                f"No-op jobs — {config_label}: {args.jobs} x POST /v1/jobs?kind=noop, "
                f"{args.clients} keep-alive clients",
                [
                    ("accepted (HTTP codes)", f"{jobs['accepted']} of {args.jobs}   ({codes}; "
                                              f"reconnects {jobs['reconnects']})"),
                    ("client submit rate", f"{jobs['submit_rate']:8.1f} jobs/s   "
                                           f"({jobs['submit_s']:.2f} s to submit all)"),
                    ("client POST round trip ms", fmt_pcts(jobs["client_ms"])),
                    ("throughput (server clock)", f"{jobs['throughput']:8.1f} jobs/s   "
                                                  f"(first created_at → last finished_at: "
                                                  f"{jobs['span']:.2f} s; created over "
                                                  f"{jobs['created_span']:.2f} s)"),
                    ("dispatch ms (started-created)", fmt_pcts(jobs["dispatch_ms"])),
                    ("run ms (finished-started)", fmt_pcts(jobs["run_ms"])),
                    ("end-to-end ms (finished-created)", fmt_pcts(jobs["e2e_ms"])),
                    ("attempts", attempts),
                    *([("first submit failure", jobs["failed_submits"][0][:200])]
                      if jobs["failed_submits"] else []),
                    ("finished per second", " ".join(str(x) for x in per_sec[:60])
                                            + (" …" if len(per_sec) > 60 else "")),
                    *cpu_rows,
                ],
            ))

        ok = True
    except BaseException as e:
        log(f"FAILED: {e!r}" if not isinstance(e, BenchError) else f"FAILED: {e}")
        if servers:  # the server in use when it failed
            s = servers[-1]
            print(f"\n--- tail of {s.log_path} (server {s.name}, pid {s.pid}, "
                  f"exit code {s.proc.poll()}) ---", file=sys.stderr)
            print(s.log_tail(), file=sys.stderr)
            print("--- end of log ---", file=sys.stderr)
        if scale is not None and scale.moto is not None:
            print(f"\n--- tail of {scale.moto_log_path} ---", file=sys.stderr)
            print(scale.moto_log_tail(), file=sys.stderr)
            print("--- end of log ---", file=sys.stderr)
        if not isinstance(e, BenchError):
            raise
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping server {s.name}: {e!r}")
        if scale is not None:
            for s in servers:
                try:
                    release(s)
                except Exception as e:  # noqa: BLE001
                    log(f"releasing the database/bucket of {s.name}: {e!r}")
            try:
                scale.close()
            except Exception as e:  # noqa: BLE001
                log(f"cleaning up scale-out resources: {e!r}")
            service_rows = scale.notes + scale.moto_log_summary()
            if scale.databases or scale.buckets:
                service_rows.append(("LEFT BEHIND", f"databases {scale.databases}, buckets {scale.buckets}"))
            sections.append(("Services (scale-out mode)", service_rows))
        # Server logs: what went wrong, if anything, even in a successful run.
        log_rows = []
        for s in servers:
            levels, problems = s.log_summary()
            log_rows.append((f"server {s.name}", ", ".join(f"{k} {v}" for k, v in sorted(levels.items()))
                             or "(empty log)"))
            for msg, count in problems.most_common(8):
                log_rows.append((f"  {count} x", msg))
        if log_rows:
            sections.append(("Server logs (level counts; WARN/ERROR messages, numbers blurred)", log_rows))
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if sections:
            print(f"\nFerry benchmark — {config_label} — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
            for title, rows in sections:
                print_table(title, rows)
            print()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
