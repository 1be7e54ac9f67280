#!/usr/bin/env bash
# Black-box tests of `slimlm serve` with the official `openai` Python client.
# Needs target/release/slimlm already built (this script does not build it), python3 (>= 3.9) with
# venv and pip, PyPI for openai and pytest, and ../shared (or $SLIMLM_SHARED) with models/ref-gpt2.
# Usage: bash tests/server/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=target/release/slimlm
if [ ! -x "$bin" ]; then
  echo "tests/server: $bin is missing; build it first: cargo build --release" >&2
  exit 1
fi
if ! "$bin" serve --help >/dev/null 2>&1; then
  echo "tests/server: $bin has no 'serve' subcommand (stale build, or built without the server feature)" >&2
  exit 1
fi
shared="${SLIMLM_SHARED:-../shared}"
if [ ! -d "$shared/models/ref-gpt2" ]; then
  echo "tests/server: $shared/models/ref-gpt2 is missing (set SLIMLM_SHARED)" >&2
  exit 1
fi

venv=target/server-venv
py="${SLIMLM_PYTHON:-python3}"
if ! "$venv/bin/python" -c 'import openai, pytest' >/dev/null 2>&1; then
  echo "== tests/server: venv $venv ($("$py" --version 2>&1)), pip install openai pytest"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check openai pytest
fi

echo "== tests/server: pytest (openai $("$venv/bin/python" -c 'import openai; print(openai.__version__)'))"
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the work tree
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/server "$@"
rc=$?
set -e
exit $rc
