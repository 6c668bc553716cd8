#!/usr/bin/env bash
# The GPU check, one prepared script (at most 8 minutes): on a machine with a pip torch (CUDA),
# nvcc, CMake, ninja and pybind11 but no Debian packages, build specopt's CUDA variant against
# that torch with the dependencies of scripts/gpu-pack.sh, run the CUDA-tensor tests
# (tests/test_device.cpp: the transform, both optimizers, a short training), a CUDA smoke test
# of the Python extension, and the transform benchmark on the GPU; JSON and logs go to $OUT.
#
#   scripts/gpu-pack.sh                      (here: fills third_party-pack/, carry it along)
#   OUT=/some/dir scripts/gpu-check.sh       (there)
#   SPECOPT_GPU_CHECK_DEVICE=cpu scripts/torch2.sh run scripts/gpu-check.sh
#                                            (the CPU dry run inside the LibTorch-2 root)
#
# Environment: OUT (default runs/gpu-check), SPECOPT_DEPS_DIR (default third_party-pack),
# SPECOPT_GPU_BUILD (default build-gpu), SPECOPT_GPU_CHECK_DEVICE (cuda, or cpu for the dry
# run), PYTHON (default python3: the interpreter whose torch is built against).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/runs/gpu-check}
PACK=$(realpath "${SPECOPT_DEPS_DIR:-third_party-pack}")
BUILD=${SPECOPT_GPU_BUILD:-build-gpu}
DEVICE=${SPECOPT_GPU_CHECK_DEVICE:-cuda}
PY=$(command -v "${PYTHON:-python3}")
mkdir -p "$OUT"
: > "$OUT/gpu-check.log"
T0=$SECONDS
log() { echo "[gpu-check $((SECONDS - T0)) s] $*" | tee -a "$OUT/gpu-check.log"; }
fail() { log "FAILED: $*"; exit 1; }

[[ -f $PACK/include/fmt/format.h ]] || fail "no dependency pack at $PACK: run scripts/gpu-pack.sh and carry it"
"$PY" - <<'EOF' | tee "$OUT/torch.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print("device", i, torch.cuda.get_device_name(i))
EOF
if [[ $DEVICE == cuda* ]]; then
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    fail "this torch sees no CUDA device (for the CPU dry run: SPECOPT_GPU_CHECK_DEVICE=cpu)"
fi

# Configure: LibTorch from the Python's torch; everything header-only from the pack.
args=(-DSPECOPT_DEPS_DIR="$PACK" -DPython3_EXECUTABLE="$PY")
prefix=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
[[ -d $prefix ]] && args+=(-DCMAKE_PREFIX_PATH="$prefix")  # Debian's torch: found on the default path
targets=(specopt_cli test_device bench_transform)
if pybind=$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())' 2>/dev/null); then
  args+=(-DSPECOPT_PYTHON=ON -Dpybind11_DIR="$pybind")
  targets+=(specopt_python)
else
  log "no pybind11 for $PY: the Python extension is not built"
fi
if command -v nvcc >/dev/null; then export CUDACXX=${CUDACXX:-$(command -v nvcc)}; fi
log "configure $BUILD (${args[*]})"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${args[@]}" > "$OUT/configure.log" 2>&1 ||
  { tail -40 "$OUT/configure.log"; fail "configure (see configure.log)"; }
grep -E '^-- specopt' "$OUT/configure.log" | tee -a "$OUT/gpu-check.log"
log "build ${targets[*]}"
cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]}" > "$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; fail "build (see build.log)"; }

# The pack must be sufficient: no header of the packed libraries may come from the system
# (zlib's are used only where the system has none).
if ninja -C "$BUILD" -t deps | grep -E '^ +/usr(/local)?/include/(CLI|toml\+\+|nlohmann|fmt|gtest|gmock)/' |
     sort -u > "$OUT/system-headers.txt" && [[ -s $OUT/system-headers.txt ]]; then
  head "$OUT/system-headers.txt"; fail "headers taken from the system instead of $PACK"
fi
log "every packed header came from $PACK"

log "tests/test_device.cpp on $DEVICE"
SPECOPT_TEST_DEVICE=$DEVICE OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} timeout 240 "$BUILD/test_device" \
  --gtest_output=json:"$OUT/test_device.json" 2>&1 | tee "$OUT/test_device.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "test_device"
grep -q '\[  SKIPPED \]' "$OUT/test_device.log" && fail "test_device skipped tests on $DEVICE"

if [[ " ${targets[*]} " == *" specopt_python "* ]]; then
  log "Python extension on $DEVICE"
  SPECOPT_TEST_DEVICE=$DEVICE PYTHONPATH="$PWD/$BUILD/python" timeout 120 "$PY" - <<'EOF' 2>&1 | tee "$OUT/python.log"
import os, torch, specopt
dev = torch.device(os.environ["SPECOPT_TEST_DEVICE"])
torch.manual_seed(0)
O = torch.randn(256, 128, device=dev)
P = specopt.spectral_power(O, 0.0, "newton")
U, _, Vh = torch.linalg.svd(O.double().cpu(), full_matrices=False)
err = ((P.double().cpu() - U @ Vh).norm() / (U @ Vh).norm()).item()
assert P.device == O.device and err < 1e-2, (P.device, err)
model = torch.nn.Linear(64, 8).to(dev)
opt = specopt.make_optimizer(model, "AdamZ", lr_matrix=1e-2, lr_vector=1e-2)
X, y = torch.randn(256, 64, device=dev), torch.randint(0, 8, (256,), device=dev)
first = None
for _ in range(20):
    loss = torch.nn.functional.cross_entropy(model(X), y)
    first = first or loss.item()
    opt.zero_grad(); loss.backward(); opt.step()
assert loss.item() < first, (first, loss.item())
print(f"python on {dev}: polar error {err:.2e}, AdamZ loss {first:.3f} -> {loss.item():.3f}")
EOF
  [[ ${PIPESTATUS[0]} -eq 0 ]] || fail "Python extension"
fi

bench_args=()
[[ $DEVICE == cpu ]] && bench_args=(--quick)  # the dry run only shows that it runs
log "bench_transform --device $DEVICE ${bench_args[*]}"
timeout 200 "$BUILD/bench_transform" --device "$DEVICE" "${bench_args[@]}" \
  --out "$OUT/bench_transform_${DEVICE%%:*}.json" 2>&1 | tee "$OUT/bench_transform.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "bench_transform"
log "done: $OUT"
