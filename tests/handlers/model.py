#!/usr/bin/env python3
"""A stand-in model for Ferry's integration tests, speaking the command protocol.

FERRY_PARAMS chooses what it does:
  mode = "ok"       read every input, report progress, publish an intermediate result, wait for
                    params.gate (a file path) to exist if given, then write the final output
                    (plus params.big_output_mb MiB in big.bin, if given).
  mode = "fail"     print to stderr and exit 3 (a retryable failure).
  mode = "declare"  declare a permanent error on stdout, then exit 0.
  mode = "sleep"    write its pid to params.pid_file and sleep for a long time.
  mode = "stubborn" like sleep, but ignore SIGTERM (so only SIGKILL stops it).
  mode = "quiet"    wait for params.gate (a file path) to exist, then exit 0 having written
                    nothing (no output, so the attempt's outcome is its only write after it).
  mode = "manifest" write manifest.json: for each input, in $FERRY_INPUT_MANIFEST's order, the
                    file (or, for a list input, each file) with its SHA-256, and what each list
                    folder holds; then exit 0.
With params.steps, "ok" also reports progress that many times, params.step_seconds apart (0.3 s),
after reading its inputs. With params.echo_env, "ok" also writes env.json: its FERRY_* variables
(and TRACEPARENT, when traces are on) and working directory.
"""
import hashlib, json, os, pathlib, signal, sys, time

params = json.loads(os.environ["FERRY_PARAMS"])
inputs = pathlib.Path(os.environ["FERRY_INPUT_DIR"])
outputs = pathlib.Path(os.environ["FERRY_OUTPUT_DIR"])
mode = params.get("mode", "ok")

def say(**msg):
    print(json.dumps(msg), flush=True)

print(f"model starting: job {os.environ['FERRY_JOB_ID']} attempt {os.environ['FERRY_ATTEMPT']}", flush=True)
if params.get("pid_file"):
    pathlib.Path(params["pid_file"]).write_text(str(os.getpid()))

if mode == "fail":
    print("something went wrong in the model", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "declare":
    say(error="the scan is not a CT study", retryable=False)
    sys.exit(0)
if mode == "quiet":
    while not os.path.exists(params["gate"]):
        time.sleep(0.05)
    sys.exit(0)
if mode in ("sleep", "stubborn"):
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    say(progress=1, stage="sleeping")
    time.sleep(3600)

if mode == "manifest":
    manifest = json.loads(pathlib.Path(os.environ["FERRY_INPUT_MANIFEST"]).read_text())
    def seen(path):
        return {"file": path, "sha256": hashlib.sha256((inputs / path).read_bytes()).hexdigest()}
    out = {
        "inputs": {
            name: [seen(p) for p in files] if isinstance(files, list) else seen(files)
            for name, files in manifest.items()
        },
        "folders": {
            d.name: sorted(f.name for f in d.iterdir()) for d in inputs.iterdir() if d.is_dir()
        },
    }
    (outputs / "manifest.json").write_text(json.dumps(out))
    sys.exit(0)

digests = {}
for i, f in enumerate(sorted(p for p in inputs.rglob("*") if p.is_file())):
    digests[str(f.relative_to(inputs))] = hashlib.sha256(f.read_bytes()).hexdigest()
    say(progress=10 + i, stage="reading", message=f"read {f.name}")
for k in range(params.get("steps", 0)):
    say(progress=20 + k, stage="stepping", message=f"step {k}")
    time.sleep(params.get("step_seconds", 0.3))
(outputs / "preview.txt").write_text("intermediate\n")
say(result="preview.txt", content_type="text/plain")
say(progress=50, stage="thinking")
gate = params.get("gate")
while gate and not os.path.exists(gate):
    time.sleep(0.05)
if params.get("echo_env"):
    env = {k: v for k, v in os.environ.items() if k.startswith("FERRY_") or k == "TRACEPARENT"}
    (outputs / "env.json").write_text(json.dumps({"env": env, "cwd": os.getcwd()}))
if params.get("big_output_mb"):
    # A large leftover output, published after the process exits.
    with open(outputs / "big.bin", "wb") as f:
        for _ in range(int(params["big_output_mb"])):
            f.write(b"\x5a" * (1 << 20))
(outputs / "masks").mkdir(exist_ok=True)
(outputs / "masks" / "mask.json").write_text(json.dumps({"inputs": digests, "attempt": os.environ["FERRY_ATTEMPT"]}))
say(progress=100, stage="done")
