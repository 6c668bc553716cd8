#!/usr/bin/env bash
# Run every test: the C++ suites (ctest) and the Python suite (pytest).
# Usage: scripts/test.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
# ctest runs suites in parallel (-j nproc): one thread each avoids oversubscription.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" --timeout 900
if [[ -d python/tests ]] && ls python/tests/test_*.py >/dev/null 2>&1; then
  PYTHONPATH="$PWD/$BUILD_DIR/python:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" \
    /usr/bin/python3 -m pytest -q python/tests
fi
