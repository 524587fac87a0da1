#!/usr/bin/env python3
"""A hostile handler for Ferry's tests: it tries to reach outside its work folder, or to outlive
its attempt. FERRY_PARAMS chooses the trick:

  mode = "link_file"    link outputs/leak.txt to params.target (a host file) and publish it.
  mode = "link_dir"     link outputs/linked to params.target_dir (a host folder) and publish
                        linked/<params.name>.
  mode = "hard_link"    hard-link params.target as outputs/leak.txt and publish it.
  mode = "swap_output"  replace the output folder itself with a link to params.target_dir, exit 0.
  mode = "plant_next"   attempt 1 pre-creates attempt 2's work folder the way Ferry named it,
                        <work_dir>/<job uuid>-2, with inputs/scan linked to params.target, and
                        fails; later attempts write outputs/ok.txt and succeed.
  mode = "sleep"        write its pid to <params.pid_dir>/attempt-<N>.pid and sleep; with
                        params.succeed_from = N, attempts from N on succeed instead.
  mode = "daemon"       start a detached grandchild in a new session (its pid goes to
                        params.pid_file), then exit 0.
"""
import json, os, pathlib, subprocess, sys, time

params = json.loads(os.environ["FERRY_PARAMS"])
inputs = pathlib.Path(os.environ["FERRY_INPUT_DIR"])
outputs = pathlib.Path(os.environ["FERRY_OUTPUT_DIR"])
attempt = int(os.environ["FERRY_ATTEMPT"])
mode = params["mode"]


def say(**msg):
    print(json.dumps(msg), flush=True)


def succeed():
    (outputs / "ok.txt").write_text(f"attempt {attempt} read {len((inputs / 'scan').read_bytes())} bytes\n")
    sys.exit(0)


if mode == "link_file":
    os.symlink(params["target"], outputs / "leak.txt")
    say(result="leak.txt")
elif mode == "link_dir":
    os.symlink(params["target_dir"], outputs / "linked")
    say(result=f"linked/{params['name']}")
elif mode == "hard_link":
    os.link(params["target"], outputs / "leak.txt")
    say(result="leak.txt")
elif mode == "swap_output":
    outputs.rmdir()
    os.symlink(params["target_dir"], outputs)
elif mode == "plant_next":
    if attempt > 1:
        succeed()
    job_hex = os.environ["FERRY_JOB_ID"].removeprefix("job_")
    work_root = inputs.parent.parent
    planted = work_root / f"{job_hex}-{attempt + 1}" / "inputs"
    planted.mkdir(parents=True, exist_ok=True)
    os.symlink(params["target"], planted / "scan")
    print(f"planted {planted / 'scan'} -> {params['target']}", file=sys.stderr, flush=True)
    sys.exit(3)
elif mode == "sleep":
    if attempt >= params.get("succeed_from", 1_000_000):
        succeed()
    pid_file = pathlib.Path(params["pid_dir"]) / f"attempt-{attempt}.pid"
    pid_file.write_text(str(os.getpid()))
    say(progress=1, stage="sleeping")
    time.sleep(3600)
elif mode == "daemon":
    pid_file = pathlib.Path(params["pid_file"])
    subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
         "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(3600)",
         str(pid_file)],
        start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while not pid_file.exists():
        time.sleep(0.02)
    succeed()
else:
    sys.exit(f"unknown mode {mode!r}")
