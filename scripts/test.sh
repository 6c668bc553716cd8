#!/usr/bin/env bash
# Run every test: the C++ suites (ctest) and the Python suite (pytest), against this
# machine's LibTorch (Debian 12: 1.13), then the same set-up and test commands inside the
# LibTorch-2 root (scripts/torch2.sh test: Debian sid, LibTorch 2.14, build-torch2/, and
# the pip install smoke test).
# Usage: scripts/test.sh [build-dir]
# Environment: SPECOPT_TORCH2=0 skips the LibTorch-2 leg (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
t0=$SECONDS
# ctest runs suites in parallel (-j nproc): one thread each avoids oversubscription.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" --timeout 900
if [[ -d python/tests ]] && ls python/tests/test_*.py >/dev/null 2>&1; then
  PYTHONPATH="$PWD/$BUILD_DIR/python:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" \
    /usr/bin/python3 -m pytest -q python/tests
fi
torch=$(/usr/bin/python3 -c 'import torch; print(torch.__version__)')
echo "test.sh: tests against torch $torch ($BUILD_DIR/) took $((SECONDS - t0)) s"

# Inside the root this script is the leg itself; it does not start another.
[[ ${SPECOPT_TORCH2_INSIDE:-0} == 1 ]] && exit 0
if [[ ${SPECOPT_TORCH2:-1} == 0 ]]; then
  echo "test.sh: the LibTorch-2 leg is skipped (SPECOPT_TORCH2=0)"
  exit 0
fi
t1=$SECONDS
scripts/torch2.sh test
echo "test.sh: the LibTorch-2 leg (scripts/torch2.sh test: set-up, build, tests, pip) took $((SECONDS - t1)) s"
