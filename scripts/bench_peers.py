#!/usr/bin/env python3
"""Peer job queues — BullMQ, Celery + Redis, procrastinate — measured as scripts/bench.py measures
Ferry's no-op jobs, for a side-by-side table.

    bash scripts/install-peers.sh      # once: the peers, pinned, in $PEERS_DIR
    python3 scripts/bench_peers.py [--jobs N] [--clients C] [--paced-jobs M] [--pace R]
                                   [--postgres URL] [--keep-tmp]

Standard library only, Python 3.11+, Linux; bench.py can import it: `measure_peers(...)` returns
the rows (each peer's cells and the figures behind them), `format_table(rows)` prints them. The
peers themselves run from what scripts/install-peers.sh put in
${PEERS_DIR:-/var/tmp/ferry-bench-peers}: Celery and procrastinate with its venv's python, BullMQ
with its node_modules; their sides of the benchmark (worker, task, producer) are in
scripts/peers/.

Each measurement gets a fresh deployment: its own store and its worker, started before the jobs
are submitted, as in a deployment, and shown ready by a warm-up job. The store is a redis-server
started here on a free port of 127.0.0.1, `--appendonly yes --appendfsync always --save ''`
(every write on disk before Redis answers, as a Ferry 2xx means; both Redis peers are measured
with `everysec` too, Redis' usual setting, which risks a second or so of jobs), or a new database
on the PostgreSQL server given, dropped after.

1. throughput: N no-op jobs submitted by C concurrent clients as fast as they can, through the
   peer's own client API (no HTTP, unlike Ferry's figures): the client-side submit rate (jobs
   accepted / first enqueue call → last one returned) and throughput, N / (first submit → last
   job completed);
2. dispatch latency below saturation: M more, on a fresh deployment, sent at an even R jobs/s
   by the same C clients: the handler's start (its first line, wall clock) minus the submit time
   (wall clock just before the enqueue call, same machine), p50 / p90 / p99.

"Completed" is each peer's own end of a job: BullMQ, the worker's `completed` event (the job moved
to the completed set in Redis); Celery, the task_postrun signal (the task returned; the ack
follows); procrastinate, the job's `succeeded` event in procrastinate_events (PostgreSQL's now()
in the transaction that finishes the job).

The worker settings are what each peer's docs suggest for I/O-light jobs on this machine; the
output states them (see the constants below). A run in which a job does not complete (no
progress for STALL_TIMEOUT seconds) says so instead of a rate; a peer that cannot be set up
(not installed, no redis-server, no PostgreSQL) is reported as "not measured: why". Every
process started here is stopped by its PID (and any child it left, by PID too), and the
temporary folder is removed. Progress goes to stderr, the table to stdout.
"""

import argparse
import contextlib
import ctypes
import dataclasses
import glob
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Callable, Iterator

PEERS_DIR = os.environ.get("PEERS_DIR", "/var/tmp/ferry-bench-peers")
VENV_PYTHON = os.path.join(PEERS_DIR, "venv", "bin", "python")
NODE_DIR = os.path.join(PEERS_DIR, "node")
PEER_SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")
STALL_TIMEOUT = 60  # seconds without a job completing before a run counts the rest as lost
READY_TIMEOUT = 60  # seconds for a new worker to run its warm-up job
WARM_UP_INDEX = -1  # the warm-up job's index; measured jobs are 0..N-1
COLUMNS = ("submitted jobs/s", "throughput jobs/s", "dispatch p50/p90/p99 ms")
Times = dict[int, float]  # job index → wall-clock seconds

# Worker settings, from each peer's docs for I/O-light jobs on a 2-core machine:
# BullMQ's "Concurrency" guide shows one worker with a concurrency factor of 50 for async jobs;
# Celery's prefork pool defaults to one process per CPU (its docs send I/O-bound work to
# eventlet/gevent, which a no-op does not need); procrastinate's "concurrency" how-to shows 30
# sub-workers for async tasks, with a pool of concurrency + 1 connections for short jobs.
BULLMQ_CONCURRENCY = 50
CELERY_PROCESSES = len(os.sched_getaffinity(0))
PROCRASTINATE_CONCURRENCY = 30


@dataclasses.dataclass
class Row:
    """A peer's line of the table: its cells (the keys of COLUMNS, and "setup": how it was
    deployed) and the figures behind them, for bench.py's goals table and chart (None: not
    measured, or the run lost jobs)."""
    name: str
    cells: dict[str, str]
    throughput: float | None = None  # jobs/s, first submit → last job completed
    dispatch_p50: float | None = None  # ms, submit → handler start at the paced rate
    dispatch_p99: float | None = None


def bullmq_name(fsync: str) -> str:
    """BullMQ's row name with Redis' `appendfsync` setting `fsync` (bench.py looks rows up)."""
    return f"BullMQ + Redis AOF {fsync}"


def log(msg: str) -> None:
    print(f"[bench-peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class PeerError(Exception):
    pass


def spawn(cmd: list[str], log_path: str, env: dict[str, str]) -> subprocess.Popen:
    """A process with stdout and stderr to `log_path`, and SIGTERM should this script die
    (prctl PR_SET_PDEATHSIG)."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=PEER_SCRIPTS, env={**os.environ, **env},
                                preexec_fn=lambda: ctypes.CDLL(None).prctl(1, signal.SIGTERM))


def started_at(pid: int) -> str | None:
    """A process's start time (clock ticks after boot): with its PID, what names it uniquely."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """(PID, start time) of every live process under `pid` (this kernel has no
    /proc/PID/task/TID/children, so from every process's parent in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if start := started_at(child):
                found.append((child, start))
                todo.append(child)
    return found


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (a graceful stop), SIGKILL after 20 s; then SIGKILL to any process it had started
    that outlived it (Celery's pool processes), each by PID, if it is still that process."""
    left = descendants(proc.pid) if proc.poll() is None else []
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:  # ignored SIGTERM
        proc.kill()
        proc.wait()
    for pid, start in left:
        if started_at(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def print_log_tail(path: str, what: str) -> None:
    with open(path, "rb") as f:
        tail = f.read().decode(errors="replace").splitlines()[-30:]
    print(f"--- tail of {path} ({what}) ---", *tail, "--- end of log ---", sep="\n",
          file=sys.stderr)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(folder: str, fsync: str) -> Iterator[int]:
    """A redis-server of our own on a free port, AOF on with `appendfsync` `fsync`, its files in
    `folder`; yields its port once it answers PING."""
    port = free_port()
    log_path = os.path.join(folder, "redis.log")
    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
                  "--appendonly", "yes", "--appendfsync", fsync, "--save", "",
                  "--daemonize", "no"], log_path, {})
    try:
        deadline = time.monotonic() + 10
        while not redis_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                print_log_tail(log_path, f"redis-server, pid {proc.pid}")
                raise PeerError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        log(f"redis-server: pid {proc.pid}, port {port}, appendfsync {fsync}")
        yield port
    finally:
        stop_process(proc)


def read_records(folder: str) -> dict[str, dict[int, list[float]]]:
    """What the workers wrote: kind (`start`, `done`) → job index → times, from every
    `*.records` file (lines `KIND INDEX SECONDS`; a line being written is skipped)."""
    records: dict[str, dict[int, list[float]]] = {"start": {}, "done": {}}
    for path in glob.glob(os.path.join(folder, "*.records")):
        with open(path) as f:
            for line in f:
                with contextlib.suppress(ValueError, KeyError):
                    kind, index, t = line.split()
                    records[kind].setdefault(int(index), []).append(float(t))
    return records


def first_times(by_index: dict[int, list[float]]) -> Times:
    return {i: min(ts) for i, ts in by_index.items()}


@dataclasses.dataclass
class Deployment:
    """A peer's store and worker, running: how to submit jobs, and where to see them run."""
    produce: list[str]  # the producer command; --jobs, --clients, --rate, --first are added
    env: dict[str, str]
    records: str  # the folder of the workers' records files
    worker: subprocess.Popen
    worker_log: str
    completions: Callable[[], Times]  # job index → completed


@dataclasses.dataclass
class Peer:
    name: str
    missing: Callable[[], str]  # why it cannot be measured here; "" when it can
    setup: Callable[[], str]  # how it is deployed, for the output
    deploy: Callable[[str], contextlib.AbstractContextManager[Deployment]]  # folder → running


@contextlib.contextmanager
def running_worker(cmd: list[str], folder: str, env: dict[str, str],
                   produce: list[str], completions: Callable[[], Times] | None = None
                   ) -> Iterator[Deployment]:
    """Starts a peer's worker; the deployment's completions are the workers' `done` records
    unless `completions` reads them elsewhere."""
    records = os.path.join(folder, "records")
    os.makedirs(records)
    env = {**env, "FERRY_PEER_RECORDS": records}
    log_path = os.path.join(folder, "worker.log")
    worker = spawn(cmd, log_path, env)
    log(f"worker: pid {worker.pid}, log {log_path}")
    try:
        yield Deployment(produce, env, records, worker, log_path, completions
                         or (lambda: first_times(read_records(records)["done"])))
    finally:
        stop_process(worker)


def bullmq_peer(fsync: str) -> Peer:
    script = os.path.join(PEER_SCRIPTS, "bullmq_bench.mjs")

    @contextlib.contextmanager
    def deploy(folder: str) -> Iterator[Deployment]:
        with redis_server(folder, fsync) as port:
            env = {"FERRY_PEERS_NODE": NODE_DIR}
            with running_worker(["node", script, "worker", "--port", str(port),
                                 "--concurrency", str(BULLMQ_CONCURRENCY)],
                                folder, env, ["node", script, "produce", "--port", str(port)]) as d:
                yield d

    def missing() -> str:
        return (missing_tools("node", "redis-server")
                or ("" if os.path.isdir(os.path.join(NODE_DIR, "node_modules", "bullmq"))
                    else f"no BullMQ in {NODE_DIR} (run scripts/install-peers.sh)"))

    def setup() -> str:
        node = subprocess_output(["node", "--version"])
        return (f"{node_versions('bullmq', 'ioredis')}, Node {node}; one worker process, "
                f"concurrency {BULLMQ_CONCURRENCY}; clients: one Queue (own connection) each, in "
                f"one Node process, `queue.add`; completed jobs kept (BullMQ's default); "
                f"{redis_version()}, AOF appendfsync {fsync}")

    return Peer(bullmq_name(fsync), missing, setup, deploy)


def celery_peer(fsync: str) -> Peer:
    @contextlib.contextmanager
    def deploy(folder: str) -> Iterator[Deployment]:
        with redis_server(folder, fsync) as port:
            env = {"FERRY_PEER_BROKER": f"redis://127.0.0.1:{port}/0"}
            with running_worker([VENV_PYTHON, "-m", "celery", "-A", "celery_bench", "worker",
                                 "--pool", "prefork", "--concurrency", str(CELERY_PROCESSES),
                                 "--loglevel", "WARNING"], folder, env,
                                [VENV_PYTHON, "celery_bench.py", "produce"]) as d:
                yield d

    def setup() -> str:
        return (f"{venv_versions('celery', 'kombu', 'redis')}; one worker, prefork pool of "
                f"{CELERY_PROCESSES} processes; task_acks_late, no result backend; clients: "
                f"threads, a producer (own connection) each, `apply_async`; {redis_version()}, "
                f"AOF appendfsync {fsync}")

    return Peer(f"Celery + Redis AOF {fsync}", lambda: missing_venv("celery", "redis-server"),
                setup, deploy)


class Postgres:
    """The PostgreSQL server given: a new database per deployment, dropped after."""

    def __init__(self, url: str) -> None:
        self.url = urllib.parse.urlsplit(url)
        self.run_id = os.urandom(4).hex()

    def database_url(self, db: str) -> str:
        return urllib.parse.urlunsplit(self.url._replace(path=f"/{db}"))

    def psql(self, sql: str, db: str | None = None) -> str:
        url = self.database_url(db or self.url.path.strip("/") or "postgres")
        res = subprocess.run(["psql", url, "-XqAt", "-F", " ", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise PeerError(f"psql {sql[:60]!r}… failed: {res.stderr.strip()}")
        return res.stdout.strip()

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        db = f"ferry_peers_{self.run_id}_{name}"
        self.psql(f'CREATE DATABASE "{db}"')
        try:
            yield db
        finally:
            try:
                self.psql(f'DROP DATABASE "{db}" WITH (FORCE)')
            except (PeerError, OSError, subprocess.SubprocessError) as e:
                log(f"clean-up failed, database {db} left behind: {e}")


def procrastinate_peer(postgres_url: str | None) -> Peer:
    pg = Postgres(postgres_url) if postgres_url else None
    script = "procrastinate_bench.py"

    @contextlib.contextmanager
    def deploy(folder: str) -> Iterator[Deployment]:
        assert pg
        with pg.database(os.path.basename(folder).replace("-", "_")) as db:
            env = {"FERRY_PEER_DATABASE": pg.database_url(db)}
            res = subprocess.run([VENV_PYTHON, script, "schema"], cwd=PEER_SCRIPTS, timeout=120,
                                 env={**os.environ, **env}, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                raise PeerError("applying procrastinate's schema failed (its stderr is above)")

            def succeeded() -> Times:
                rows = pg.psql("SELECT j.args->>'i', extract(epoch FROM e.at) "
                               "FROM procrastinate_events e JOIN procrastinate_jobs j "
                               "ON j.id = e.job_id WHERE e.type = 'succeeded'", db)
                return {int(i): float(t) for i, t in (r.split() for r in rows.splitlines())}

            with running_worker([VENV_PYTHON, script, "worker", "--concurrency",
                                 str(PROCRASTINATE_CONCURRENCY)], folder, env,
                                [VENV_PYTHON, script, "produce"], succeeded) as d:
                yield d

    def missing() -> str:
        return missing_venv("procrastinate", "psql") or (
            "" if pg else "no PostgreSQL server given (--postgres URL or TEST_PG_URL)")

    def setup() -> str:
        assert pg
        settings = pg.psql("SELECT current_setting('server_version') || ', fsync ' || "
                           "current_setting('fsync') || ', synchronous_commit ' || "
                           "current_setting('synchronous_commit')")
        return (f"{venv_versions('procrastinate', 'psycopg')}; one worker process, async task, "
                f"concurrency {PROCRASTINATE_CONCURRENCY}, pool of "
                f"{PROCRASTINATE_CONCURRENCY + 1} connections; clients: asyncio tasks on a pool "
                f"of one connection each, `defer_async`; finished jobs kept (procrastinate's "
                f"default); PostgreSQL {settings}, a new database per run")

    return Peer("procrastinate + PostgreSQL", missing, setup, deploy)


def missing_tools(*tools: str) -> str:
    absent = [t for t in tools if shutil.which(t) is None]
    return f"not installed: {', '.join(absent)}" if absent else ""


def missing_venv(package: str, *tools: str) -> str:
    if not os.access(VENV_PYTHON, os.X_OK) or package not in venv_packages():
        return f"no {package} in {PEERS_DIR}/venv (run scripts/install-peers.sh)"
    return missing_tools(*tools)


def venv_packages() -> dict[str, str]:
    """Name → version, from the venv's site-packages (this script does not run in the venv)."""
    path = glob.glob(os.path.join(PEERS_DIR, "venv", "lib", "python3*", "site-packages"))
    return {d.metadata["Name"].lower(): d.version
            for d in importlib.metadata.distributions(path=path)}


def venv_versions(*packages: str) -> str:
    versions = venv_packages()
    return ", ".join(f"{p} {versions.get(p, '?')}" for p in packages)


def node_versions(*packages: str) -> str:
    def version(p: str) -> str:
        try:
            with open(os.path.join(NODE_DIR, "node_modules", p, "package.json")) as f:
                return json.load(f)["version"]
        except (OSError, ValueError, KeyError):
            return "?"
    return ", ".join(f"{p} {version(p)}" for p in packages)


def subprocess_output(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def redis_version() -> str:
    out = subprocess_output(["redis-server", "--version"]).split()  # Redis server v=7.0.15 sha=…
    return f"Redis {out[2].removeprefix('v=')}" if len(out) > 2 else "Redis ?"


def peers(postgres_url: str | None) -> list[Peer]:
    """`always` is what compares with Ferry; `everysec` (Redis' usual AOF setting) shows what
    the fsync per write costs."""
    return [bullmq_peer("always"), bullmq_peer("everysec"), celery_peer("always"),
            celery_peer("everysec"), procrastinate_peer(postgres_url)]


@dataclasses.dataclass
class Run:
    """One measurement: jobs submitted, then waited for."""
    submits: Times  # accepted jobs: index → just before the enqueue call
    client_seconds: float  # first enqueue call → last one returned
    errors: list[str]  # refused submissions
    starts: Times  # index → the handler's first line (the first run, if it ran twice)
    ran_twice: int
    completions: Times  # index → completed; the jobs missing here were lost


def submit(d: Deployment, n_jobs: int, n_clients: int, rate: float, first: int
           ) -> tuple[Times, float, list[str]]:
    """Runs the peer's producer: (submit times of the accepted jobs, client seconds, errors)."""
    # --first=-1, not --first -1: Node's parseArgs takes a lone -1 for an option.
    cmd = d.produce + [f"--jobs={n_jobs}", f"--clients={n_clients}", f"--rate={rate}",
                       f"--first={first}"]
    timeout = 120 + (n_jobs / rate if rate else 0)
    res = subprocess.run(cmd, cwd=PEER_SCRIPTS, env={**os.environ, **d.env}, timeout=timeout,
                         capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr, file=sys.stderr)
        raise PeerError(f"the producer failed (exit code {res.returncode}; its stderr is above)")
    out = json.loads(res.stdout)
    if not out["submits"]:
        raise PeerError(f"no job was accepted; first error: {out['errors'][:1]}")
    return {i: t for i, t in out["submits"]}, out["seconds"], out["errors"]


def wait_for(d: Deployment, indices: set[int], stall_timeout: float) -> Times:
    """Polls the completions until every job in `indices` completed, none did for
    `stall_timeout` seconds, or the worker exited; returns those that completed."""
    last_count, last_progress = -1, time.monotonic()
    while True:
        done = {i: t for i, t in d.completions().items() if i in indices}
        if len(done) == len(indices):
            return done
        if len(done) > last_count:
            last_count, last_progress = len(done), time.monotonic()
        if d.worker.poll() is not None:
            print_log_tail(d.worker_log, f"worker, exit code {d.worker.returncode}")
            raise PeerError(f"the worker exited (code {d.worker.returncode}) with "
                            f"{len(indices) - len(done)} jobs not completed")
        if time.monotonic() - last_progress > stall_timeout:
            return done
        time.sleep(0.5)


def measure(peer: Peer, tmp: str, n_jobs: int, n_clients: int, rate: float = 0) -> Run:
    """A fresh deployment, a warm-up job, then `n_jobs` no-op jobs from `n_clients` clients
    (at `rate` jobs/s if given), waited for."""
    folder = tempfile.mkdtemp(prefix="run-", dir=tmp)
    with peer.deploy(folder) as d:
        submit(d, 1, 1, 0, WARM_UP_INDEX)
        if not wait_for(d, {WARM_UP_INDEX}, READY_TIMEOUT):
            print_log_tail(d.worker_log, f"worker, pid {d.worker.pid}")
            raise PeerError(f"the worker did not run a warm-up job within {READY_TIMEOUT} s")
        pace = f" at {rate:g}/s" if rate else ""
        log(f"{peer.name}: {n_jobs} no-op jobs from {n_clients} clients{pace}")
        submits, seconds, errors = submit(d, n_jobs, n_clients, rate, 0)
        completions = wait_for(d, set(submits), STALL_TIMEOUT)
        starts = read_records(d.records)["start"]
    log(f"{peer.name}: {len(submits)} accepted in {seconds:.2f} s, {len(errors)} refused, "
        f"{len(completions)} completed")
    return Run(submits, seconds, errors, first_times(starts),
               sum(len(starts[i]) > 1 for i in submits if i in starts), completions)


def nearest_rank(values: list[float], q: int) -> float:
    """The q-th percentile (nearest rank)."""
    v = sorted(values)
    return v[max(1, -(-len(v) * q // 100)) - 1]


def percentiles(values: list[float]) -> str:
    """p50 / p90 / p99, nearest rank."""
    return " / ".join(f"{nearest_rank(values, q):.1f}" for q in (50, 90, 99))


def lost(run: Run) -> str:
    """What a run lost, '' if nothing."""
    if len(run.completions) == len(run.submits):
        return ""
    return (f"LOST {len(run.submits) - len(run.completions)} of {len(run.submits)} jobs (none "
            f"completed for {STALL_TIMEOUT} s)")


def throughput(run: Run) -> float | None:
    """Jobs/s, first submit → last job completed; None if the run lost jobs."""
    if lost(run):
        return None
    return len(run.completions) / (max(run.completions.values()) - min(run.submits.values()))


def throughput_cells(run: Run, jobs_s: float | None) -> dict[str, str]:
    refused = f" ({len(run.errors)} refused: {run.errors[0][:80]})" if run.errors else ""
    twice = f" ({run.ran_twice} ran twice)" if run.ran_twice else ""
    return {COLUMNS[0]: f"{len(run.submits) / run.client_seconds:.0f}{refused}",
            COLUMNS[1]: lost(run) or f"{jobs_s:.0f}{twice}"}


def dispatch_ms(run: Run) -> list[float]:
    """Submit → handler start of every job, ms."""
    return [(run.starts[i] - t) * 1000 for i, t in run.submits.items()]


def measure_peer(peer: Peer, tmp: str, n_jobs: int, n_clients: int, paced_jobs: int,
                 pace: float) -> Row:
    if reason := peer.missing():
        raise PeerError(reason)
    row = Row(peer.name, {"setup": peer.setup()})
    run = measure(peer, tmp, n_jobs, n_clients)
    row.throughput = throughput(run)
    row.cells |= throughput_cells(run, row.throughput)
    if not paced_jobs:
        row.cells[COLUMNS[2]] = "not measured (--paced-jobs 0)"
        return row
    paced = measure(peer, tmp, paced_jobs, n_clients, pace)
    if missing := lost(paced):
        row.cells[COLUMNS[2]] = missing
        return row
    ms = dispatch_ms(paced)
    row.dispatch_p50, row.dispatch_p99 = nearest_rank(ms, 50), nearest_rank(ms, 99)
    row.cells[COLUMNS[2]] = f"{percentiles(ms)} at {pace:g}/s"
    return row


def measure_peers(tmp: str, n_jobs: int, n_clients: int, paced_jobs: int, pace: float,
                  postgres_url: str | None) -> list[Row]:
    """Every peer, measured in folders under `tmp`: one row each; a peer that could not be
    measured has "not measured: why" in its first column. `format_table` prints them."""
    rows: list[Row] = []
    for peer in peers(postgres_url):
        try:
            rows.append(measure_peer(peer, tmp, n_jobs, n_clients, paced_jobs, pace))
        except (PeerError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            reason = " ".join(str(e).split())[:300]  # one line, for a table cell
            log(f"{peer.name}: not measured: {reason}")
            rows.append(Row(peer.name, {COLUMNS[0]: f"not measured: {reason}",
                                        **{c: "—" for c in COLUMNS[1:]}, "setup": ""}))
    return rows


def format_table(rows: list[Row]) -> str:
    """A Markdown table of the figures, then each peer's setup."""
    lines = ["| peer | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {r.name} | " + " | ".join(r.cells[c] for c in COLUMNS) + " |" for r in rows]
    if setups := [f"- {r.name}: {r.cells['setup']}" for r in rows if r.cells["setup"]]:
        lines += ["", "Setup:", *setups]
    return "\n".join(lines)


def fsync_ms(folder: str, n: int = 100) -> float:
    """Median time of appending 100 bytes to a file and fdatasync-ing it: what bounds Redis with
    `appendfsync always` and PostgreSQL's commits (one flush per batch of writes) on this disk."""
    path, times = os.path.join(folder, "fsync.probe"), []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return sorted(times)[n // 2] * 1000


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000,
                    help="no-op jobs for throughput (default 1000)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--paced-jobs", type=int, default=500,
                    help="no-op jobs sent at an even --pace, for dispatch latency below "
                         "saturation (default 500; 0: skip)")
    ap.add_argument("--pace", type=float, default=50, help="jobs/s of the paced run (default 50)")
    ap.add_argument("--postgres", metavar="URL", default=os.environ.get("TEST_PG_URL"),
                    help="PostgreSQL server for procrastinate, e.g. "
                         "postgres://postgres@127.0.0.1:5432 (default: $TEST_PG_URL)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (logs)")
    args = ap.parse_args()
    if min(args.jobs, args.clients) < 1 or args.paced_jobs < 0 or args.pace <= 0:
        ap.error("--jobs, --clients and --pace must be positive, --paced-jobs not negative")
    return args


def main() -> int:
    args = parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # exit through the clean-up below
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    tmp = tempfile.mkdtemp(prefix="ferry-bench-peers-")  # in $TMPDIR or /tmp
    load = os.getloadavg()
    try:
        fsync = fsync_ms(tmp)
        rows = measure_peers(tmp, args.jobs, args.clients, args.paced_jobs, args.pace,
                             args.postgres)
    finally:
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nPeer job queues — {args.jobs} no-op jobs from {args.clients} clients, then "
          f"{args.paced_jobs} at {args.pace:g}/s — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
          f"{len(os.sched_getaffinity(0))} CPUs, load average at the start "
          f"{' '.join(f'{x:.2f}' for x in load)}, fdatasync {fsync:.1f} ms (median, temp "
          "folder)\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
