#!/usr/bin/env bash
# Installs the pinned contract and client tools (tools/requirements.txt, tools/package.json)
# and exports where they are, for the tests that use them:
#   TEST_TOOLS_PYTHON   a python with openapi-python-client, schemathesis, openapi-spec-validator
#   TEST_TOOLS_NPM_BIN  node_modules/.bin with redocly, openapi-typescript, tsc
# Source it (`source scripts/install-tools.sh`); .ci/run does. The Python venv lives outside
# the clone (TEST_TOOLS_DIR, /var/tmp/ferry-tools by default) and is rebuilt only when the
# requirements change; npm installs from its lock file into tools/node_modules.
# No `set -e` here: this file is sourced, and must not change the caller's shell options.
_ferry_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_tools_dir="${TEST_TOOLS_DIR:-/var/tmp/ferry-tools}"
_venv="$_tools_dir/venv"
_stamp="$(sha256sum "$_ferry_root/tools/requirements.txt" | cut -c1-16)"
mkdir -p "$_tools_dir"
if [[ ! -x "$_venv/bin/python" || "$(cat "$_venv/.ferry-stamp" 2>/dev/null)" != "$_stamp" ]]; then
  rm -rf "$_venv"
  python3 -m venv "$_venv" &&
    "$_venv/bin/pip" install --quiet --disable-pip-version-check \
      -r "$_ferry_root/tools/requirements.txt" &&
    echo "$_stamp" >"$_venv/.ferry-stamp" || return 1
fi
(cd "$_ferry_root/tools" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error) ||
  return 1
export TEST_TOOLS_PYTHON="$_venv/bin/python"
export TEST_TOOLS_NPM_BIN="$_ferry_root/tools/node_modules/.bin"
export REDOCLY_TELEMETRY=off
echo "tools: $("$_venv/bin/schemathesis" --version | head -1)," \
  "openapi-python-client $("$_venv/bin/openapi-python-client" --version | awk '{print $NF}')," \
  "tsc $("$TEST_TOOLS_NPM_BIN/tsc" --version | awk '{print $NF}')"
