#!/usr/bin/env bash
# Builds the release binary, then runs the benchmark (scripts/bench.py) against it.
#
#   bash scripts/bench.sh [bench.py options...]   e.g. --jobs 5000 --clients 16 --skip-uploads
#
# That measures the embedded configuration (SQLite + local folder). Given a running PostgreSQL and
# S3-compatible server (moto), as the test suite and CI take them, it measures the scale-out
# configuration (PostgreSQL + S3) as well, with a new database and bucket per server under test:
#
#   python3 -m moto.server -H 127.0.0.1 -p 9000 &    # bench.py starts no service itself
#   bash scripts/bench.sh --postgres postgres://postgres@127.0.0.1:5432 --s3-endpoint http://127.0.0.1:9000
#   TEST_PG_URL=postgres://postgres@127.0.0.1:5432 TEST_S3_ENDPOINT=http://127.0.0.1:9000 bash scripts/bench.sh
#
# Uses Cargo's target folder (target/ by default, or $CARGO_TARGET_DIR / build.target-dir).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

cargo build --release

# Ask Cargo where it put the binary, so CARGO_TARGET_DIR and .cargo/config.toml are honoured.
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/release/ferry"
if [[ ! -x "$bin" ]]; then
    echo "bench.sh: no release binary at $bin" >&2
    exit 1
fi

exec python3 "$repo/scripts/bench.py" --bin "$bin" "$@"
