#!/usr/bin/env bash
# The recipe of the bundled model (models/fortunes-bd3lm) on Debian's `fortunes` corpus
# (apt-get install fortunes; BSD licence, see /usr/share/doc/fortunes/copyright):
#   1. a byte-level BPE tokenizer (VOCAB tokens, the last one <|endoftext|>);
#   2. MDLM-style pretraining: one block of L tokens (L' = L), full attention;
#   3. fine-tuning from those weights at L' = 4, 8 and 16 with the clip search (paper §5), and, as the
#      baseline, the same fine-tuning budget spent on more MDLM training;
#   4. F16 copies of the four and their `bd3-wgpu eval` on the held-out split (every 20th document).
# Sizes, steps and time limits come from the environment, so the same script runs at toy scale on
# lavapipe and at full scale on a GPU. The bundled model came from two runs (see its README.md):
#   pretraining on an H200:  SIZE=256,4,6 LEN=128 BATCH=64 PRE=100000 PRE_TIME=185 ...
#   the rest on lavapipe:    PRE=0 FT=30 BATCH=8 VAL_BATCHES=1 LOG_EVERY=5 FT_WARMUP=10 EVAL_BATCH=16
# then `bd3-wgpu export --model $OUT/bd3lm-l4 --out models/fortunes-bd3lm --dtype f16`.
# With a GPU for the whole recipe:
#   SIZE=256,4,6 LEN=128 BATCH=64 PRE=100000 PRE_TIME=180 FT=auto FT_TIME=170 PARALLEL=1 scripts/train-default-model.sh
# PRE_TIME / FT_TIME (seconds) stop a stage early, like Ctrl-C (checkpoint, validation and clip search
# included). FT=auto sizes the fine-tuning from the pretraining rate so that the four runs, started
# together with PARALLEL=1, all finish the same number of steps within FT_TIME.
# One command on a GPU, with a wall-clock budget in seconds for the whole recipe:
#   TIME_BUDGET=600 scripts/train-default-model.sh
# uses the GPU sizes above (unless set) and splits the budget: 40 % pretraining, 35 % fine-tuning (the
# four runs in parallel, FT=auto), 15 % an AR scorer for `gen-ppl` on the same tokenizer (AR_TIME;
# SIZE_AR, default 256,4,4), the rest export and evaluation. AR_TIME also works without TIME_BUDGET.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${TIME_BUDGET:-}" ]; then
  [[ "$TIME_BUDGET" =~ ^[0-9]+$ ]] && (( TIME_BUDGET >= 60 )) || { echo "TIME_BUDGET must be a whole number of seconds, at least 60" >&2; exit 2; }
  SIZE=${SIZE:-256,4,6}; LEN=${LEN:-128}; BATCH=${BATCH:-64}; PRE=${PRE:-100000}; FT=${FT:-auto}; PARALLEL=${PARALLEL:-1}
  PRE_TIME=${PRE_TIME:-$((TIME_BUDGET * 40 / 100))}; FT_TIME=${FT_TIME:-$((TIME_BUDGET * 35 / 100))}
  AR_TIME=${AR_TIME:-$((TIME_BUDGET * 15 / 100))}; EVAL_BATCH=${EVAL_BATCH:-64}
fi
OUT=${OUT:-target/default-model}
SIZE=${SIZE:-128,4,4}; LEN=${LEN:-64}; BATCH=${BATCH:-16}; PRE=${PRE:-1000}; FT=${FT:-500}; VOCAB=${VOCAB:-4096}
PRE_TIME=${PRE_TIME:-}; FT_TIME=${FT_TIME:-}; PARALLEL=${PARALLEL:-0}
LR=${LR:-1e-3}; FT_LR=${FT_LR:-5e-4}
DATA=${DATA:-/usr/share/games/fortunes}
BIN=${BIN:-target/release/bd3-wgpu}
AR_TIME=${AR_TIME:-}
if [ "$DATA" = /usr/share/games/fortunes ] && [ ! -f /usr/share/games/fortunes/art ]; then
  # fortunes-min alone holds 3 of the 43 files (about 1/25 of the corpus the bundled model saw).
  echo "only fortunes-min is installed; the recipe trains on Debian's full 'fortunes' package: apt-get install fortunes" >&2; exit 2
fi
[ -x "$BIN" ] || cargo build --release -p bd3-wgpu
mkdir -p "$OUT"
limit() { [ -n "$1" ] && echo "--time-limit $1" || true; }
common=(--data "$DATA" --batch "$BATCH" --ema 0.999 --val-batches "${VAL_BATCHES:-2}" --log-every "${LOG_EVERY:-50}")

[ -f "$OUT/tokenizer.json" ] || "$BIN" tokenizer train --data "$DATA" --vocab-size "$VOCAB" --out "$OUT/tokenizer.json"

if [ "$PRE" = 0 ]; then
  echo "== pretraining skipped (PRE=0): fine-tuning $OUT/pretrain"
else
  echo "== pretraining (MDLM, L' = L = $LEN), up to $PRE steps $(limit "$PRE_TIME")"
  # shellcheck disable=SC2046
  "$BIN" train "${common[@]}" --tokenizer "$OUT/tokenizer.json" --out "$OUT/pretrain" --kind mdlm --size "$SIZE" --length "$LEN" \
    --lr "$LR" --warmup 100 --steps "$PRE" --val-every "$PRE" --save-every 1000 $(limit "$PRE_TIME") | tee "$OUT/pretrain.log"
fi

if [ "$FT" = auto ]; then
  # steps/s of pretraining (one MDLM step); a BD3-LM step processes x_t and x_0 (2L tokens), about
  # twice the work, so the four parallel runs cost about 3·2 + 1 = 7 pretraining steps per step.
  rate=$(awk '/^step /{for(i=1;i<NF;i++) if($(i+1)=="tok/s") r=$i} END{print r+0}' "$OUT/pretrain.log")
  FT=$(awk -v r="$rate" -v b="$BATCH" -v l="$LEN" -v t="$FT_TIME" 'BEGIN{s=int(0.85*t*r/(b*l)/7); print (s<10?10:s)}')
  echo "fine-tuning steps: $FT (pretraining ran at $rate tok/s)"
fi

finetune() { # name, extra flags...
  local name=$1; shift
  # shellcheck disable=SC2046
  "$BIN" train "${common[@]}" --init "$OUT/pretrain" --out "$OUT/$name" --lr "$FT_LR" --warmup "${FT_WARMUP:-50}" --steps "$FT" --val-every "$FT" \
    --save-every 1000 $(limit "$FT_TIME") "$@" > "$OUT/$name.log" 2>&1
}
echo "== fine-tuning: BD3-LM at L' = 4, 8, 16 and the MDLM baseline, $FT steps each"
runs=("bd3lm-l4 --kind bd3lm --block-size 4 --clip-search" "bd3lm-l8 --kind bd3lm --block-size 8 --clip-search"
      "bd3lm-l16 --kind bd3lm --block-size 16 --clip-search" "mdlm --kind mdlm")
pids=()
for r in "${runs[@]}"; do
  # shellcheck disable=SC2086
  if [ "$PARALLEL" = 1 ]; then finetune $r & pids+=($!); else finetune $r; fi
done
for p in "${pids[@]}"; do wait "$p" || echo "a fine-tuning run failed (see its log)"; done
for r in "${runs[@]}"; do n=${r%% *}; echo "-- $n"; grep -E "^(val|clip|stopped)" "$OUT/$n.log" | tail -3; done

echo "== validation perplexity of the F16 copies (bd3-wgpu eval --split valid, ${EVAL_PASSES:-3} passes)"
for r in "${runs[@]}"; do
  n=${r%% *}
  steps=$(awk '/^val step/{s=$3} END{print s}' "$OUT/$n.log")
  "$BIN" export --model "$OUT/$n" --out "$OUT/$n-f16" --dtype f16 >/dev/null || echo "export of $n failed"
  printf '%-10s ft_steps %-6s %s\n' "$n" "$steps" "$("$BIN" eval --model "$OUT/$n-f16" --data "$DATA" --split valid --batch "${EVAL_BATCH:-64}" --passes "${EVAL_PASSES:-3}" 2>/dev/null)" | tee -a "$OUT/results.txt"
done

if [ -n "$AR_TIME" ]; then
  # The scorer of `bd3-wgpu gen-ppl` for these models: an AR model on the same tokenizer and split.
  echo "== AR scorer (${SIZE_AR:-256,4,4}, L = $LEN), ${AR_TIME} s"
  "$BIN" train "${common[@]}" --tokenizer "$OUT/tokenizer.json" --out "$OUT/ar" --kind ar --size "${SIZE_AR:-256,4,4}" --length "$LEN" \
    --lr "$LR" --warmup 100 --dropout 0 --steps 1000000 --val-every 1000000 --save-every 1000 --time-limit "$AR_TIME" --overwrite > "$OUT/ar.log" 2>&1 || echo "the AR run failed (see $OUT/ar.log)"
  "$BIN" export --model "$OUT/ar" --out "$OUT/ar-f16" --dtype f16 >/dev/null && \
    printf '%-10s %s\n' ar "$("$BIN" eval --model "$OUT/ar-f16" --data "$DATA" --split valid --batch "${EVAL_BATCH:-64}" 2>/dev/null)" | tee -a "$OUT/results.txt"
fi
