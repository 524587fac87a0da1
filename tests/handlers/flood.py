#!/usr/bin/env python3
"""A hostile handler for Ferry's bounded-storage tests: it tries to make Ferry store as much as
it can through the command protocol.

FERRY_PARAMS chooses how:
  mode = "lines"          one 100 kB line on each of stderr and stdout, and exit 0.
  mode = "huge_lines"     one 2 MiB line on each of stderr and stdout, then a short line on each
                          ("... after the huge lines"), and exit 0.
  mode = "logs"           params.count stderr lines of params.size bytes, then the stderr line
                          "flood done", then wait for params.gate (a file) to exist; exit 0.
  mode = "progress_text"  one progress report with a 5 kB stage and a 100 kB message; exit 0.
  mode = "progress"       progress reports (stage "steady", message "tick N") every 2 ms until
                          params.gate exists, then one with stage "done"; exit 0.
  mode = "crash"          30 stderr lines of 50 kB, then "the last words", and exit 3.
  mode = "declare"        declare an error with a 100 kB message, and exit 0.
  mode = "chatter"        write its pid to params.pid_file, ignore SIGTERM, and log a stderr line
                          every 5 ms until killed.
"""
import json, os, pathlib, signal, sys, time

params = json.loads(os.environ["FERRY_PARAMS"])
mode = params["mode"]


def say(**msg):
    print(json.dumps(msg), flush=True)


def wait_for_gate():
    while not os.path.exists(params["gate"]):
        time.sleep(0.02)


if mode == "lines":
    sys.stderr.write("e" * 100_000 + "\n")
    sys.stderr.flush()
    print("o" * 100_000, flush=True)
elif mode == "huge_lines":
    sys.stderr.write("E" * (2 << 20) + "\n")
    sys.stderr.write("stderr after the huge lines\n")
    sys.stderr.flush()
    print("O" * (2 << 20))
    print("stdout after the huge lines", flush=True)
elif mode == "logs":
    filler = "x" * params["size"]
    for i in range(params["count"]):
        sys.stderr.write(f"{i:06d} {filler}\n")
    sys.stderr.write("flood done\n")
    sys.stderr.flush()
    wait_for_gate()
elif mode == "progress_text":
    say(progress=50, stage="s" * 5_000, message="m" * 100_000)
elif mode == "progress":
    i = 0
    while not os.path.exists(params["gate"]):
        say(progress=i % 100, stage="steady", message=f"tick {i}")
        i += 1
        time.sleep(0.002)
    say(progress=100, stage="done", message=f"after {i} ticks")
elif mode == "crash":
    for i in range(30):
        sys.stderr.write(f"line {i} " + "c" * 50_000 + "\n")
    sys.stderr.write("the last words\n")
    sys.stderr.flush()
    sys.exit(3)
elif mode == "declare":
    say(error="d" * 100_000, retryable=False)
elif mode == "chatter":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path(params["pid_file"]).write_text(str(os.getpid()))
    i = 0
    while True:
        sys.stderr.write(f"chatter {i}\n")
        sys.stderr.flush()
        i += 1
        time.sleep(0.005)
else:
    sys.exit(f"unknown mode {mode!r}")
