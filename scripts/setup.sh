#!/usr/bin/env bash
# Install every Debian package specopt needs and build it (Release, Ninja).
# Usage: scripts/setup.sh [build-dir]     (default: build)
# Environment: SPECOPT_SKIP_APT=1 skips apt-get (packages already there).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}

source scripts/packages.sh

if [[ "${SPECOPT_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${SPECOPT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# Debian's python3-torch ships the same LibTorch; /usr/bin/python3 is the
# interpreter that has it (another python3 first on PATH may not).
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSPECOPT_PYTHON=ON -DPython3_EXECUTABLE=/usr/bin/python3 ${SPECOPT_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)"
