#!/usr/bin/env bash
# Gather what a GPU machine without Debian packages needs to build specopt against its pip
# torch (scripts/gpu-check.sh): the header-only dependencies (CLI11, toml++, nlohmann-json,
# fmt, used header-only), zlib's two headers, and GoogleTest's sources, from this machine's
# Debian packages (scripts/setup.sh installs them). LibTorch, Gloo and NCCL come with the pip
# torch; CMake, ninja, a C++ compiler and pybind11 are expected there.
# Usage: scripts/gpu-pack.sh [folder]      (default third_party-pack; 6.6 MB, gitignored)
# Then build with -DSPECOPT_DEPS_DIR=<folder> (gpu-check.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${1:-third_party-pack}
rm -rf "$PACK"
mkdir -p "$PACK/include"
for d in CLI toml++ nlohmann fmt; do
  [[ -d /usr/include/$d ]] || { echo "gpu-pack.sh: /usr/include/$d missing (run scripts/setup.sh)" >&2; exit 1; }
  cp -r "/usr/include/$d" "$PACK/include/"
done
cp /usr/include/zlib.h /usr/include/zconf.h "$PACK/include/"
[[ -f /usr/src/googletest/CMakeLists.txt ]] || { echo "gpu-pack.sh: /usr/src/googletest missing (libgtest-dev)" >&2; exit 1; }
cp -r /usr/src/googletest "$PACK/googletest"
{
  echo "# made by scripts/gpu-pack.sh on $(date -u +%F) from these Debian packages"
  dpkg-query -W -f='${Package} ${Version}\n' libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libfmt-dev \
    zlib1g-dev googletest 2>/dev/null || true
} > "$PACK/MANIFEST"
echo "gpu-pack.sh: $PACK ($(du -sh "$PACK" | cut -f1)):"
cat "$PACK/MANIFEST"
