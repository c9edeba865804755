#!/usr/bin/env bash
# The check to run on a real GPU, in one go: the fixture checks against the official code, then
# training, the forward and sampling timed at the official size (170M parameters, L = 1024), printed
# beside the official PyTorch code's figures on an NVIDIA H200 (wgpu over Vulkan there).
#
# Builds nothing: it runs a release binary built elsewhere (BIN, default target/release/bd3-wgpu),
# so a lent GPU machine spends its minutes measuring. Usage (from the repository root):
#   scripts/bench-gpu.sh                 # --size small, batch 8
#   SIZE=tiny BATCH=2 scripts/bench-gpu.sh   # a quick dry run on any adapter
# Full outputs go to $LOG_DIR (default target/bench-gpu); the summary table is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/bd3-wgpu}
SIZE=${SIZE:-small}
BATCH=${BATCH:-8}
LOG_DIR=${LOG_DIR:-target/bench-gpu}
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
# A bare CUDA machine has NVIDIA's Vulkan driver but may not point the loader at it.
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ]; then
  export VK_DRIVER_FILES=$nvidia_icd
fi
[ -x "$BIN" ] || { echo "error: no binary at $BIN (build it first: cargo build --release -p bd3-wgpu)" >&2; exit 2; }
mkdir -p "$LOG_DIR"

run() { # name, command...: run, keep the whole output, show it
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$LOG_DIR/$name.txt"
}

run info "$BIN" info
run verify "$BIN" verify tests/fixtures/tiny-a
run verify-split "$BIN" verify --split-threshold 4096 tests/fixtures/tiny-a
# Sized for one unit, the fixture's weight gradients take the large-tile product (matmul_large.wgsl).
run verify-large "$BIN" verify --units 1 tests/fixtures/tiny-a
run train "$BIN" bench train --size "$SIZE" --batch "$BATCH" --iters 3
run forward "$BIN" bench forward --size "$SIZE" --batch "$BATCH" --iters 3
run sample "$BIN" bench sample --size "$SIZE"
run sample-f16 "$BIN" bench sample --size "$SIZE" --weights auto
run sample-per-call "$BIN" bench sample --size "$SIZE" --submit call
run plan-train "$BIN" bench train --size "$SIZE" --batch "$BATCH" --plan
run plan-sample "$BIN" bench sample --size "$SIZE" --plan
# Mixed precision (tensor cores through cooperative matrices) only where `info` reports them.
coop=$(grep -m1 '^cooperative matrices:' "$LOG_DIR/info.txt" | cut -d' ' -f3- || true)
if [ -n "$coop" ] && [ "$coop" != none ]; then
  run train-mixed "$BIN" bench train --size "$SIZE" --batch "$BATCH" --iters 3 --precision mixed
  run forward-mixed "$BIN" bench forward --size "$SIZE" --batch "$BATCH" --iters 3 --precision mixed
fi

# The figures, from the benches' tables (see crates/bd3-wgpu/src/bench.rs for the columns).
verify_line=$(tail -n 1 "$LOG_DIR/verify.txt")
train_row=$(awk -v b="$BATCH" '$1 == b && $2 ~ /^[0-9.]+$/ { print; exit }' "$LOG_DIR/train.txt")
forward_row=$(awk -v b="$BATCH" '$1 == b && $2 ~ /^[0-9.]+$/ { print; exit }' "$LOG_DIR/forward.txt")
sample_row=$(awk '/^ *ms\/model call/ { getline; print; exit }' "$LOG_DIR/sample.txt")
sample_f16_row=$(awk '/^ *ms\/model call/ { getline; print; exit }' "$LOG_DIR/sample-f16.txt")
sample_call_row=$(awk '/^ *ms\/model call/ { getline; print; exit }' "$LOG_DIR/sample-per-call.txt")
f16_weights=$(grep -m1 '^weights:' "$LOG_DIR/sample-f16.txt" | cut -d' ' -f2-)
field() { echo "$1" | awk -v i="$2" '{ print $i }'; }
adapter=$(grep -m1 '^adapter:' "$LOG_DIR/train.txt" | cut -d' ' -f2-)

echo
echo "## bd3-wgpu on ${adapter:-the adapter} (--size $SIZE, batch $BATCH)"
echo
echo "| what | bd3-wgpu (f32) | official PyTorch on an H200 |"
echo "|---|---|---|"
echo "| verify tests/fixtures/tiny-a | $verify_line | — |"
echo "| the same, --split-threshold 4096 / --units 1 (large tiles) | $(tail -n 1 "$LOG_DIR/verify-split.txt") / $(tail -n 1 "$LOG_DIR/verify-large.txt") | — |"
echo "| training step, tokens/s | $(field "$train_row" 6) ($(field "$train_row" 2) ms/step) | 17,454 f32; 65,082 bf16 autocast |"
echo "| forward (x_t ⊕ x_0), ms | $(field "$forward_row" 2) | — |"
echo "| sampling, ms per model call (L tokens, block 16, batch 1) | $(field "$sample_row" 1) | 17.09 |"
echo "| the same with --weights auto ($f16_weights) | $(field "$sample_f16_row" 1) | 17.09 |"
echo "| the same, f32, one submission per call (--submit call) | $(field "$sample_call_row" 1) | 17.09 |"
if [ -f "$LOG_DIR/train-mixed.txt" ] && [ -n "$coop" ] && [ "$coop" != none ]; then
  mixed_train_row=$(awk -v b="$BATCH" '$1 == b && $2 ~ /^[0-9.]+$/ { print; exit }' "$LOG_DIR/train-mixed.txt")
  mixed_forward_row=$(awk -v b="$BATCH" '$1 == b && $2 ~ /^[0-9.]+$/ { print; exit }' "$LOG_DIR/forward-mixed.txt")
  echo "| training step, tokens/s, --precision mixed ($coop) | $(field "$mixed_train_row" 6) ($(field "$mixed_train_row" 2) ms/step) | 65,082 bf16 autocast |"
  echo "| forward, ms (GEMM GFLOP/s), --precision mixed | $(field "$mixed_forward_row" 2) ($(field "$mixed_forward_row" 9)) | — |"
else
  echo "| --precision mixed | not run: no cooperative matrices on this adapter | |"
fi
echo "| plan: training step | $(tail -n 1 "$LOG_DIR/plan-train.txt") | |"
echo "| plan: per sampling call | $(tail -n 1 "$LOG_DIR/plan-sample.txt") | |"
for mode in verify verify-split verify-large; do
  case "$(tail -n 1 "$LOG_DIR/$mode.txt")" in
    *" 0 failed") ;;
    *) echo "error: the fixture checks failed on this adapter ($LOG_DIR/$mode.txt)" >&2; exit 1 ;;
  esac
done
