#!/usr/bin/env bash
# The Python package's CI: a venv (target/py-venv), the abi3 wheel built with maturin and installed in
# it, then pytest. Needs a Rust toolchain, python3 (>= 3.9) with venv and pip, and PyPI for maturin,
# pytest and numpy. Usage: bash python/ci.sh [pytest args]   (SLIMLM_PYTHON picks the interpreter.)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
venv="$CARGO_TARGET_DIR/py-venv"
py="${SLIMLM_PYTHON:-python3}"

echo "== python: venv $venv ($("$py" --version 2>&1))"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
"$vpy" -m pip install --quiet --disable-pip-version-check "maturin>=1.9,<2" "pytest>=7" "numpy>=1.21"

echo "== python: cargo fmt --check, clippy (python/)"
(cd "$here" && cargo fmt --check && cargo clippy --quiet --all-targets -- -D warnings)

# The command line, which the tests compare with (already built when .ci/run ran cargo test --release).
echo "== python: cargo build --release --bin slimlm"
cargo build --quiet --release --bin slimlm

echo "== python: maturin build --release (abi3 wheel), pip install"
wheels="$CARGO_TARGET_DIR/wheels"
rm -f "$wheels"/slimlm-*.whl
(cd "$here" && "$venv/bin/maturin" build --quiet --release --interpreter "$vpy" --out "$wheels")
"$vpy" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/slimlm-*.whl

echo "== python: pytest"
cd "$here/tests"  # not python/: the installed wheel is tested, never the source tree
SLIMLM_CLI="$CARGO_TARGET_DIR/release/slimlm" SLIMLM_REQUIRE_CLI=1 "$vpy" -m pytest -q -p no:cacheprovider "$@" .
