#!/usr/bin/env python3
"""A model with versions, for the tests of versions, tags and re-runs.

Its version is FERRY_VERSION (set by Ferry for a kind with versions); what it does comes from
the environment each version's configuration gives it:
  MODEL_BROKEN=1  print to stderr and exit 3, as a model with a bug would;
  otherwise       write version.json: {"version": FERRY_VERSION, "inputs": {file: sha256},
                  "args": its command's arguments} (a version may have a command of its own).
params.gate: wait for this file to exist before writing.
"""
import hashlib, json, os, pathlib, sys, time

params = json.loads(os.environ["FERRY_PARAMS"])
version = os.environ.get("FERRY_VERSION", "")
if os.environ.get("MODEL_BROKEN") == "1":
    print(f"model {version} is broken", file=sys.stderr, flush=True)
    sys.exit(3)
inputs = pathlib.Path(os.environ["FERRY_INPUT_DIR"])
digests = {
    str(f.relative_to(inputs)): hashlib.sha256(f.read_bytes()).hexdigest()
    for f in sorted(p for p in inputs.rglob("*") if p.is_file())
}
gate = params.get("gate")
while gate and not os.path.exists(gate):
    time.sleep(0.05)
out = pathlib.Path(os.environ["FERRY_OUTPUT_DIR"]) / "version.json"
out.write_text(json.dumps({"version": version, "inputs": digests, "args": sys.argv[1:]}))
