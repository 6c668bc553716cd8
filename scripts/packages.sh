# The Debian packages specopt needs: one list for scripts/setup.sh (Debian 12)
# and scripts/torch2.sh (the Debian sid root with LibTorch 2.x). Sourced, not run.
# shellcheck disable=SC2034
SPECOPT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libgloo-dev libopenblas0-pthread libopenblas-pthread-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev librapidcheck-dev
  libcli11-dev libtomlplusplus-dev libfmt-dev nlohmann-json3-dev
  python3-dev python3-torch python3-pybind11 pybind11-dev python3-matplotlib python3-numpy python3-pytest
  python3-pip python3-venv python3-setuptools
  bible-kjv dataset-fashion-mnist
)
