#!/usr/bin/env python3
"""A demo "scan" model for the dashboard's browser test (tests/dashboard/dashboard.mjs).

It speaks Ferry's command protocol (see the README, "Writing a handler"): it reads every input,
then takes params.steps steps (40 by default), params.step_seconds apart (0.5 s), reporting
progress that rises from 5 to 95. After the second step it writes preview.png — a real 64x64
grey gradient, made with zlib and struct only — and publishes it as an intermediate result
(image/png), so a dashboard can show it while the job still runs. At the end it writes
result.json (a summary of what it read), which Ferry publishes as the final result, and exits 0.
SIGTERM (cancel) stops it at once: Python's default action for the signal is to exit.
"""
import hashlib
import json
import os
import pathlib
import struct
import time
import zlib

params = json.loads(os.environ.get("FERRY_PARAMS") or "{}")
inputs = pathlib.Path(os.environ["FERRY_INPUT_DIR"])
outputs = pathlib.Path(os.environ["FERRY_OUTPUT_DIR"])
steps = max(1, int(params.get("steps", 40)))
step_seconds = float(params.get("step_seconds", 0.5))


def say(**msg):
    """One protocol message: a JSON object on its own stdout line."""
    print(json.dumps(msg), flush=True)


def png_gradient(width=64, height=64):
    """A greyscale PNG (colour type 0, 8 bits): a diagonal gradient from black to white."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type "None" for this scanline
        rows.extend((x + y) * 255 // (width + height - 2) for x in range(width))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


print(f"scan starting: job {os.environ.get('FERRY_JOB_ID')} attempt {os.environ.get('FERRY_ATTEMPT')}",
      flush=True)

# Read the inputs (a list input is a folder of files).
summary = {}
for f in sorted(p for p in inputs.rglob("*") if p.is_file()):
    digest = hashlib.sha256()
    size = 0
    with open(f, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    summary[str(f.relative_to(inputs))] = {"size": size, "sha256": digest.hexdigest()}
    print(f"read {f.name}: {size} bytes", flush=True)
say(progress=5, stage="reading", message=f"read {len(summary)} input(s)")

for k in range(steps):
    time.sleep(step_seconds)
    percent = 5 + 90 * (k + 1) / steps
    say(progress=round(percent, 1), stage="scanning", message=f"step {k + 1} of {steps}")
    print(f"step {k + 1} of {steps}", flush=True)
    if k == 1:
        (outputs / "preview.png").write_bytes(png_gradient())
        say(result="preview.png", content_type="image/png")

(outputs / "result.json").write_text(json.dumps({
    "inputs": summary,
    "steps": steps,
    "step_seconds": step_seconds,
    "finding": "nothing unusual",
}, indent=2))
say(progress=100, stage="done", message="scan complete")
print("scan done", flush=True)
