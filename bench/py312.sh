#!/usr/bin/env bash
# The test suite under another Python (default 3.12): a fresh venv, `pip install .[test]` from a
# clean export of HEAD (not the working tree), then the README's test command.
#   bench/py312.sh [PYTHON]      e.g. bench/py312.sh ~/.pyenv/versions/3.12.1/bin/python
# CI runs the suite on the machine's 3.11 (.ci/run); this is the 3.12 check, results in
# bench/README.md. It downloads torch for that Python from the registry (~0.6 GB, more with its
# CUDA libraries) unless pip finds it locally.
set -euo pipefail
PY="${1:-python3.12}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src"
git -C "$ROOT" archive HEAD | tar -x -C "$WORK/src"
# the tests look for the real videos beside the checkout (../shared/data)
[ -d "$ROOT/../shared" ] && ln -s "$ROOT/../shared" "$WORK/shared"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
(cd "$WORK/src" && "$WORK/venv/bin/python" -m pip install -q ".[test]")
"$WORK/venv/bin/python" --version
cd "$WORK/src" && HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider
