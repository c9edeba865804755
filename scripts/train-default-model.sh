#!/usr/bin/env bash
# The recipe for the default model (issue 6), at small scale, on Debian's `fortunes` corpus
# (apt-get install fortunes; public-domain and freely redistributable quotations, see
# /usr/share/doc/fortunes/copyright): a BPE tokenizer, MDLM-style pretraining at L' = L, fine-tuning
# at L' = 4, 8, 16 with the clip search, an MDLM trained on the same total budget, and the
# validation perplexities of all four with `bd3-wgpu eval`. Sizes and steps come from the
# environment, so a GPU run can scale them up:
#   SIZE=256,4,6 LEN=128 BATCH=32 PRE=4000 FT=2000 scripts/train-default-model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/default-model}
SIZE=${SIZE:-128,4,4}; LEN=${LEN:-64}; BATCH=${BATCH:-16}; PRE=${PRE:-1000}; FT=${FT:-500}; VOCAB=${VOCAB:-4096}
DATA=${DATA:-/usr/share/games/fortunes}
BIN=${BIN:-target/release/bd3-wgpu}
[ -x "$BIN" ] || cargo build --release -p bd3-wgpu
mkdir -p "$OUT"
common=(--data "$DATA" --size "$SIZE" --length "$LEN" --batch "$BATCH" --lr 1e-3 --warmup 200 --ema 0.999 --val-every 500 --val-batches 16 --save-every 500 --log-every 50)
[ -f "$OUT/tokenizer.json" ] || "$BIN" tokenizer train --data "$DATA" --vocab-size "$VOCAB" --out "$OUT/tokenizer.json"
# Stage 1: MDLM-style pretraining (one block of L tokens).
"$BIN" train "${common[@]}" --tokenizer "$OUT/tokenizer.json" --out "$OUT/pretrain" --kind mdlm --steps "$PRE"
# Stage 2: block diffusion at each block size, from the pretrained weights, with the clip search.
for L in 4 8 16; do
  "$BIN" train "${common[@]}" --init "$OUT/pretrain" --out "$OUT/bd3lm-l$L" --kind bd3lm --block-size "$L" --clip-search --steps "$FT"
done
# The MDLM baseline on the same total budget.
"$BIN" train "${common[@]}" --tokenizer "$OUT/tokenizer.json" --out "$OUT/mdlm" --kind mdlm --steps $((PRE + FT))
for m in bd3lm-l4 bd3lm-l8 bd3lm-l16 mdlm; do
  echo "$m: $("$BIN" eval --model "$OUT/$m" --data "$DATA" --split valid 2>/dev/null)"
done
