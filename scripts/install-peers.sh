#!/usr/bin/env bash
# Installs the peer job queues that scripts/bench_peers.py measures, outside the clone, in
# ${PEERS_DIR:-/var/tmp/ferry-bench-peers}:
#   venv/   Celery (+ redis-py) and procrastinate (+ Psycopg 3): scripts/peers/requirements.txt
#   node/   package.json + package-lock.json from scripts/peers/, `npm ci`: BullMQ, ioredis
#
#   bash scripts/install-peers.sh
#
# Idempotent: each part is rebuilt only when its pins changed (a stamp of their sha256 sits beside
# it) or it is missing. Needs python3 (3.10+), node and npm; redis-server and a PostgreSQL server
# are the benchmark's business, not this script's.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pins="$repo/scripts/peers"
peers_dir="${PEERS_DIR:-/var/tmp/ferry-bench-peers}"
venv="$peers_dir/venv"
node_dir="$peers_dir/node"
mkdir -p "$peers_dir"

# Prints the stamp of the given pin files; `current STAMP FILE` says whether FILE holds it.
stamp() { cat "$@" | sha256sum | cut -c1-16; }
current() { [[ "$(cat "$2" 2>/dev/null)" == "$1" ]]; }

py_stamp="$(stamp "$pins/requirements.txt")"
if [[ -x "$venv/bin/python" ]] && current "$py_stamp" "$venv/.ferry-stamp"; then
  echo "install-peers: $venv is up to date"
else
  echo "install-peers: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins/requirements.txt"
  echo "$py_stamp" >"$venv/.ferry-stamp"
fi

node_stamp="$(stamp "$pins/package.json" "$pins/package-lock.json")"
if [[ -d "$node_dir/node_modules/bullmq" ]] && current "$node_stamp" "$node_dir/.ferry-stamp"; then
  echo "install-peers: $node_dir is up to date"
else
  echo "install-peers: npm ci in $node_dir"
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$pins/package.json" "$pins/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$node_stamp" >"$node_dir/.ferry-stamp"
fi

py_versions='from importlib.metadata import version as v
print(", ".join(f"{p} {v(p)}" for p in ("celery", "kombu", "redis", "procrastinate", "psycopg")))'
node_versions='["bullmq", "ioredis"].map(p => `${p} ${require(`${p}/package.json`).version}`)'
echo "install-peers: $("$venv/bin/python" -c "$py_versions"),"\
  "$(cd "$node_dir" && node -p "$node_versions.join(', ')")"
