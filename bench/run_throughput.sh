#!/usr/bin/env bash
# Training throughput: `specopt train` (C++, LibTorch) against a plain PyTorch loop of the same
# GPT, batch, thread count and optimizer (bench/train_throughput.py, torch.optim.AdamW), plus the
# share of the training step spent in the optimizer step (spectral transform included) for every
# variant on the same model.
#
# Usage: bench/run_throughput.sh [--threads N] [--steps S] [--build DIR] [--out FILE] [--no-variants]
#                                [--variants V1,V2] [--batch B]
#   --variants: Adam plus these variants (default: all eight); --batch: sequences per step
#   (default 16, kjv-gpt's) -- the transform's share falls as the tokens per step grow.
#   The model and batch are those of configs/study/kjv-gpt.toml (4 layers, d 128, context 128,
#   batch 16, byte-level KJV). Prints one JSON object (also written to --out, default
#   runs/bench/throughput.json). Targets: C++ / PyTorch tokens/s ≥ 1.1; spectral share ≤ 5 %.
#
# C++ tokens/s is the median over steps of metrics.jsonl's per-step tokens_per_s (log_every 1)
# after WARMUP steps, PyTorch's the median step time after the same warm-up: both time the
# training step only (no validation, no checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=2
STEPS=40
WARMUP=5
BUILD=build
OUT=runs/bench/throughput.json
VARIANTS=1
EXTRA_VARIANTS=""
BATCH=16
while (($#)); do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-variants) VARIANTS=0; shift ;;
    --variants) EXTRA_VARIANTS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${SPECOPT_PYTHON:-/usr/bin/python3}
SPECOPT="$BUILD/specopt"
[[ -x "$SPECOPT" ]] || { echo "no $SPECOPT: build first (scripts/setup.sh)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/specopt_throughput.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/train.toml" <<EOF
[run]
threads = $THREADS
[model]
kind = "gpt"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
[data]
kind = "kjv"
[optim]
variant = "Adam"
lr_matrix = 2e-3
lr_vector = 3e-4
split_rows = ["c_attn"]
[train]
steps = $STEPS
batch_size = $BATCH
warmup_steps = 5
eval_every = 100000
eval_batches = 1
log_every = 1
EOF

# One C++ run per variant (Adam first: the one compared with torch.optim.AdamW).
variants=(Adam)
((VARIANTS)) && variants=(Adam AdamS AdamQ AdamZ mSGD mSGDS mSGDQ mSGDZ)
[[ -n $EXTRA_VARIANTS ]] && IFS=, read -r -a extra <<< "$EXTRA_VARIANTS" && variants=(Adam "${extra[@]}")
for v in "${variants[@]}"; do
  lr=2e-3
  [[ $v == mSGD* ]] && lr=0.1
  OMP_NUM_THREADS=$THREADS "$SPECOPT" train "$WORK/train.toml" --set optim.variant="$v" \
    --set optim.lr_matrix=$lr --run-dir "$WORK/run_$v" --quiet
done

# The PyTorch loop twice: as a user would run it (torch.set_num_threads(THREADS), OpenBLAS at
# THREADS), and with the thread pools the C++ run used (its summary's cpu_threads: with
# Debian's pthreads OpenBLAS, set_cpu_threads gives LibTorch's OpenMP pool 1 thread, see
# include/specopt/core/threads.h). The headline speedup is against the matched run.
INTRA=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["cpu_threads"]["intra_op"])' \
  "$WORK/run_Adam/summary.json")
OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS "$PY" bench/train_throughput.py \
  --config "$WORK/run_Adam/config.toml" --steps "$STEPS" --warmup "$WARMUP" > "$WORK/pytorch_default.json"
OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS "$PY" bench/train_throughput.py \
  --config "$WORK/run_Adam/config.toml" --steps "$STEPS" --warmup "$WARMUP" \
  --intra-op-threads "$INTRA" > "$WORK/pytorch.json"

mkdir -p "$(dirname "$OUT")"
"$PY" - "$WORK" "$WARMUP" "$OUT" "${variants[@]}" <<'EOF'
import json, statistics, sys
work, warmup, out, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def median_rate(run):
    rows = [json.loads(l) for l in open(f"{work}/run_{run}/metrics.jsonl") if l.strip()]
    rates = [r["tokens_per_s"] for r in rows if r.get("step", 0) > warmup and "tokens_per_s" in r]
    return statistics.median(rates)

py = json.load(open(f"{work}/pytorch.json"))
py_default = json.load(open(f"{work}/pytorch_default.json"))
summaries = {v: json.load(open(f"{work}/run_{v}/summary.json")) for v in variants}
cpp = median_rate("Adam")
result = {
    "model": {k: py[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size")},
    "threads": py["threads"], "steps": py["steps"], "warmup_steps": warmup,
    "cpp_tokens_per_s": cpp,
    "cpp_tokens_per_s_whole_run": summaries["Adam"]["tokens_per_s"],
    "cpu_threads": summaries["Adam"].get("cpu_threads", {}),
    "pytorch_tokens_per_s": py["tokens_per_s"],
    "pytorch_intra_op_threads": py["threads"],
    "speedup": cpp / py["tokens_per_s"], "speedup_target": 1.1,
    "pytorch_default_tokens_per_s": py_default["tokens_per_s"],
    "pytorch_default_intra_op_threads": py_default["threads"],
    "speedup_vs_default_pytorch": cpp / py_default["tokens_per_s"],
    "spectral_share": {v: s["spectral_share"] for v, s in summaries.items()},
    "spectral_share_source": summaries["Adam"].get("spectral_share_source", ""),
    "spectral_share_target": 0.05,
    "tokens_per_s": {v: median_rate(v) for v in variants},
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
EOF
