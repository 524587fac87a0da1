#!/usr/bin/env python3
"""Tus upload throughput: Ferry's tus endpoint beside one plain Ferry upload, a peer tus server
(@tus/server + @tus/file-store) and the machine's limits.

    python3 scripts/bench_tus.py --bin target/release/ferry [--size 1G] [--rounds 3] [--chunk 8M]
                                 [--dir DIR]

Standard library only, Python 3.10+, Linux; node and npm for the peer, pinned in scripts/tus-peer/
(package-lock.json; `npm ci` runs there when its node_modules is missing). Sizes take K, M, G
suffixes (powers of 1024). One payload of --size bytes (a random 16 MiB block, repeated) is
written to a temporary folder in --dir ($TMPDIR or /tmp by default); then each round measures,
in this order:

  ferry upload  one streamed POST /v1/uploads of the file (http.client, 1 MiB writes), from its
                first byte to the 201; checked against the size and sha256 Ferry answers;
  ferry tus     the file as a tus upload, as a tus client sends it: POST /v1/tus (Upload-Length),
                then PATCHes of --chunk bytes on the same connection, each sent when the one
                before was answered, until the last one's answer; checked with GET /v1/uploads/ID;
  tus-node      the same client against @tus/server + @tus/file-store (scripts/tus-peer/
                server.mjs); checked by the size of the file it wrote. That store never fsyncs:
                what it acknowledged may be in the page cache only, where Ferry's is on disk;
  dd            `dd if=/dev/zero bs=1M conv=fsync` of --size bytes in the same folder: the disk;
  sha256        SHA-256 of the file (hashlib, from the page cache): the hash Ferry computes as the
                bytes arrive.

Each server measurement gets a fresh server (its own data folder; SQLite for Ferry) whose peak RSS
(VmHWM in /proc/PID/status) is read just before it is stopped by its PID; its folder is deleted
then. The table gives per row the median MB/s (10^6 bytes/s) over the rounds, each round's
figure, the median seconds and the highest peak RSS. Client and servers share the machine's CPUs.
Progress goes to stderr, the table (markdown) to stdout.
"""

import argparse
import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

MIB, MB = 1 << 20, 1_000_000
PEER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tus-peer")
TUS = {"Tus-Resumable": "1.0.0"}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench_tus {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)(?:i?B)?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200M, 1G)")
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]


def print_tail(path: str) -> None:
    with open(path, "rb") as f:
        tail = f.read().decode(errors="replace").splitlines()[-30:]
    print(f"--- tail of {path} ---", *tail, "---", sep="\n", file=sys.stderr)


class Server:
    """A server process, stdout and stderr to `log_path`, SIGTERM should this script die; ready
    once it printed `listening on http://HOST:PORT`."""

    def __init__(self, cmd: list[str], log_path: str, cwd: str) -> None:
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env={**env, "NO_COLOR": "1"}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=lambda: ctypes.CDLL(None).prctl(1, signal.SIGTERM))  # PR_SET_PDEATHSIG
        deadline = time.monotonic() + 60
        while not (m := re.search(rb"listening on http://([\d.]+):(\d+)", self.log_bytes())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                print_tail(log_path)
                raise BenchError(f"{cmd[0]} did not start (exit code {self.proc.returncode})")
            time.sleep(0.05)
        self.host, self.port = m[1].decode(), int(m[2])

    def log_bytes(self) -> bytes:
        with open(self.log_path, "rb") as f:
            return f.read()

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=600, blocksize=MIB)

    def peak_rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM to its PID
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def serving(name: str, tmp: str, cmd_for_root):
    """A fresh server in the folder tmp/name (removed after it stopped); prints its log's tail
    when the measurement fails."""
    root = os.path.join(tmp, name)
    os.makedirs(root)
    server = Server(cmd_for_root(root), os.path.join(tmp, f"{name}.log"), root)
    try:
        yield server
    except Exception:
        print_tail(server.log_path)
        raise
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def ferry_cmd(ferry_bin: str):
    def cmd(root: str) -> list[str]:
        data = os.path.join(root, "data")
        with open(os.path.join(root, "ferry.toml"), "w") as f:
            f.write(f'data_dir = "{data}"\ndatabase_url = "sqlite://{data}/ferry.db"\n'
                    'listen = "127.0.0.1:0"\n')
        return [ferry_bin, "serve", "--config", os.path.join(root, "ferry.toml")]
    return cmd


def peer_cmd(root: str) -> list[str]:  # its uploads go to root/files/ID
    return ["node", os.path.join(PEER_DIR, "server.mjs"), os.path.join(root, "files")]


def request(conn: http.client.HTTPConnection, method: str, path: str, body=None,
            headers: dict[str, str] | None = None, expect: int = 200) -> http.client.HTTPResponse:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.data = resp.read()
    if resp.status != expect:
        raise BenchError(f"{method} {path} answered {resp.status}, not {expect}: "
                         f"{resp.data[:300].decode(errors='replace')}")
    return resp


def plain_upload(server: Server, payload: str, size: int, sha256: str) -> None:
    with contextlib.closing(server.connection()) as conn, open(payload, "rb") as f:
        resp = request(conn, "POST", "/v1/uploads", body=f, expect=201,  # streamed, 1 MiB reads
                       headers={"Content-Type": "application/octet-stream",
                                "Content-Length": str(size)})
    stored = json.loads(resp.data)
    if (stored["size"], stored["sha256"]) != (size, sha256):
        raise BenchError(f"Ferry stored {stored['size']} bytes, sha256 {stored['sha256']}")


def tus_upload(server: Server, endpoint: str, payload: str, size: int, chunk: int) -> str:
    """Creates the upload, then PATCHes `chunk` bytes at a time; returns the upload's path."""
    with contextlib.closing(server.connection()) as conn, open(payload, "rb", buffering=0) as f:
        resp = request(conn, "POST", endpoint, expect=201,
                       headers={**TUS, "Upload-Length": str(size)})
        location = urllib.parse.urljoin(endpoint, resp.getheader("Location"))
        path = urllib.parse.urlsplit(location).path
        buf, offset = bytearray(chunk), 0
        while offset < size:
            n = f.readinto(buf)
            resp = request(conn, "PATCH", path, body=memoryview(buf)[:n], expect=204, headers={
                **TUS, "Upload-Offset": str(offset), "Content-Length": str(n),
                "Content-Type": "application/offset+octet-stream"})
            if int(resp.getheader("Upload-Offset")) != offset + n:
                raise BenchError(f"PATCH at {offset} answered Upload-Offset "
                                 f"{resp.getheader('Upload-Offset')}, not {offset + n}")
            offset += n
    return path


def ferry_tus(server: Server, payload: str, size: int, sha256: str, chunk: int) -> None:
    upload_id = tus_upload(server, "/v1/tus", payload, size, chunk).rsplit("/", 1)[1]
    with contextlib.closing(server.connection()) as conn:
        stored = json.loads(request(conn, "GET", f"/v1/uploads/{upload_id}").data)
    if (stored["size"], stored["sha256"]) != (size, sha256):
        raise BenchError(f"Ferry stored {stored['size']} bytes, sha256 {stored['sha256']}")


def peer_tus(server: Server, payload: str, size: int, chunk: int) -> None:
    upload_id = tus_upload(server, "/files", payload, size, chunk).rsplit("/", 1)[1]
    stored = os.path.join(server.proc.args[-1], upload_id)  # peer_cmd's folder
    if os.path.getsize(stored) != size:
        raise BenchError(f"@tus/file-store wrote {os.path.getsize(stored)} bytes, not {size}")


def dd(tmp: str, size: int) -> None:
    path = os.path.join(tmp, "dd.bin")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size}",
                        "iflag=count_bytes", "conv=fsync", "status=none"], check=True)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def sha256_of(path: str) -> str:
    h, buf = hashlib.sha256(), bytearray(MIB)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def make_payload(tmp: str, size: int) -> tuple[str, str]:
    path, block, h = os.path.join(tmp, "payload.bin"), os.urandom(16 * MIB), hashlib.sha256()
    with open(path, "wb") as f:
        for offset in range(0, size, len(block)):
            f.write(piece := block[:size - offset])
            h.update(piece)
    return path, h.hexdigest()


def prepare_peer() -> str:
    """'' when the peer can run, else why not; `npm ci` in scripts/tus-peer/ if need be."""
    if not os.path.isdir(os.path.join(PEER_DIR, "node_modules")):
        log(f"npm ci in {PEER_DIR}")
        try:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                           cwd=PEER_DIR, check=True, stdout=sys.stderr)
        except (OSError, subprocess.CalledProcessError) as e:
            return f"not measured: npm ci failed ({e})"
    return ""


def package_version(name: str) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError):
        with open(os.path.join(PEER_DIR, "node_modules", name, "package.json")) as f:
            return json.load(f)["version"]
    return "?"


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def measure(key: str, name: str, tmp: str, ferry_bin: str, payload: str, size: int,
            sha256: str, chunk: int) -> tuple[float, int | None]:
    """One measurement: (seconds, the server's peak RSS or None)."""
    t0 = time.monotonic()
    if key == "dd":
        dd(tmp, size)
        return time.monotonic() - t0, None
    if key == "sha256":
        if sha256_of(payload) != sha256:
            raise BenchError("hashlib disagrees with itself")
        return time.monotonic() - t0, None
    with serving(name, tmp, peer_cmd if key == "tus-node" else ferry_cmd(ferry_bin)) as server:
        t0 = time.monotonic()
        if key == "ferry upload":
            plain_upload(server, payload, size, sha256)
        elif key == "ferry tus":
            ferry_tus(server, payload, size, sha256, chunk)
        else:
            peer_tus(server, payload, size, chunk)
        return time.monotonic() - t0, server.peak_rss()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the ferry binary to measure")
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="payload size (default 1G)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=parse_size, default=8 * MIB, help="tus PATCH size (default 8M)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary folder goes")
    args = ap.parse_args()
    ferry_bin, size, chunk = os.path.abspath(args.bin), args.size, args.chunk

    peer_problem = prepare_peer()
    peer_versions = " + ".join(f"@tus/{p} {package_version(f'@tus/{p}')}"
                               for p in ("server", "file-store"))
    labels = {
        "ferry upload": "Ferry: one streamed POST /v1/uploads",
        "ferry tus": f"Ferry: tus, POST + {chunk / MIB:g} MiB PATCHes",
        "tus-node": f"{peer_versions}: tus, same client (no fsync)",
        "dd": "disk: dd conv=fsync, same folder",
        "sha256": "SHA-256 of the payload (hashlib)",
    }
    seconds: dict[str, list[float]] = {k: [] for k in labels}
    rss: dict[str, list[int]] = {k: [] for k in labels}

    tmp = tempfile.mkdtemp(prefix="ferry-bench-tus-", dir=args.dir)
    try:
        log(f"writing the {size / MIB:g} MiB payload in {tmp}")
        payload, sha256 = make_payload(tmp, size)
        for rnd in range(1, args.rounds + 1):
            for key in labels:
                if key == "tus-node" and peer_problem:
                    continue
                log(f"round {rnd}/{args.rounds}: {key}")
                try:
                    took, peak = measure(key, f"{key.replace(' ', '-')}-{rnd}", tmp, ferry_bin,
                                         payload, size, sha256, chunk)
                except (BenchError, OSError) as e:
                    if key != "tus-node":
                        raise
                    peer_problem = f"not measured: {e}"
                    log(peer_problem)
                    continue
                seconds[key].append(took)
                if peak is not None:
                    rss[key].append(peak)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    df = version(["df", "-PT", args.dir]).splitlines()[-1].split() + ["?", "?"]
    print(f"\n{size:,} bytes ({size / MIB:g} MiB), {args.rounds} interleaved round(s), medians; "
          f"{len(os.sched_getaffinity(0))} CPUs; {version([ferry_bin, '--version'])} "
          f"({ferry_bin}); node {version(['node', '--version'])}; temp folder in {args.dir} "
          f"({df[0]}, {df[1]})\n")
    print("| measurement | MB/s | MB/s each round | seconds | server peak RSS |")
    print("|---|---:|---|---:|---:|")
    for key, label in labels.items():
        if not seconds[key]:
            print(f"| {label} | {peer_problem or 'not measured'} | | | |")
            continue
        rates = [size / s / MB for s in seconds[key]]
        peak = f"{max(rss[key]) / MIB:.1f} MiB" if rss[key] else "—"
        print(f"| {label} | {statistics.median(rates):,.0f} | "
              f"{', '.join(f'{r:,.0f}' for r in rates)} | {statistics.median(seconds[key]):.2f} "
              f"| {peak} |")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"bench_tus: {e}")
