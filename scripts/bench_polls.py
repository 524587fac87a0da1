"""Status polls, for scripts/bench.py: `wrk` against `GET /v1/jobs/{id}` of a finished job, plain
(200 with the job) and conditional (`If-None-Match` with its ETag: 304, no body), next to a static
nginx serving a file of the same size on the same machine: the ceiling of an HTTP server here.

Needs `wrk` and `nginx` on PATH (Debian: `apt-get install wrk nginx-light`); without them the
section says so and is skipped. wrk runs on the same cores as the server, as a client would in
these measurements; every figure is the median of `rounds` runs, interleaved between the targets.
`measure` returns the runs; `medians` gives a target's figures, `rows` the report's lines.
"""

import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
from typing import Iterator

WRK_THREADS, WRK_CONNECTIONS = 2, 32


def missing_tools() -> list[str]:
    return [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def static_nginx(tmp: str, body: bytes) -> Iterator[str]:
    """nginx in the foreground, as this user, serving `body` at /job.json; yields its URL."""
    root = os.path.join(tmp, "nginx")
    os.makedirs(os.path.join(root, "html"), exist_ok=True)
    with open(os.path.join(root, "html", "job.json"), "wb") as f:
        f.write(body)
    port = free_port()
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        # Started as root, nginx's workers would run as `nobody` and could not read the files.
        user = "user root;\n" if os.geteuid() == 0 else ""
        f.write(f"""{user}worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}/html; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", root, "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start (exit code {proc.poll()}); see {root}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/job.json"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def wrk(url: str, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 in ms, and the count of non-2xx/3xx answers."""
    cmd = ["wrk", "-t", str(WRK_THREADS), "-c", str(WRK_CONNECTIONS), "-d", f"{seconds}s",
           "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"no {pct}% latency in wrk's output:\n{out}")
        return float(m.group(1)) * units[m.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if not rate:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return {"rps": float(rate.group(1)), "p50": latency("50"), "p99": latency("99"),
            "bad": float(bad.group(1)) if bad else 0.0}


Runs = list[dict[str, float]]  # one target's wrk runs, as `wrk` returns them


def medians(runs: Runs) -> dict[str, float]:
    """The median of each figure over the runs: req/s (`rps`), `p50`, `p99` (ms), `bad`."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def median_row(runs: Runs) -> str:
    med = medians(runs)
    spread = f"{min(r['rps'] for r in runs):,.0f}–{max(r['rps'] for r in runs):,.0f}"
    bad = f", {med['bad']:.0f} errors" if med["bad"] else ""
    return (f"{med['rps']:>9,.0f} req/s  (runs {spread})  p50 {med['p50']:.2f} ms  "
            f"p99 {med['p99']:.2f} ms{bad}")


def measure(targets: dict[str, tuple[str, dict[str, str]]], seconds: int,
            rounds: int) -> dict[str, Runs]:
    """Interleaved rounds over the targets (name → (url, headers)): each target's runs, for
    `medians` (figures) and `rows` (the report)."""
    runs: dict[str, Runs] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, headers) in targets.items():
            runs[name].append(wrk(url, seconds, headers))
    return runs


def rows(runs: dict[str, Runs]) -> list[tuple[str, str]]:
    """A row of medians per target."""
    return [(name, median_row(results)) for name, results in runs.items()]
