#!/usr/bin/env bash
# The quality-speed figure of the bundled model: generative perplexity and unigram entropy against the
# number of function evaluations (NFE), the paper's sample-quality measures (Arriola et al., ICLR 2025,
# Suppl. C.5), for
#   first-hitting; DDPM with T = 4, 8, 16 steps per block; confidence decoding with K = 1, 2, 4
# tokens per model call. Every sampler draws the same SAMPLES sequences (seeds SEED0, SEED0+1, ...,
# BATCH sequences per seed), each run is written by `sample --out` and scored by
# `gen-ppl --scorer SCORER` (the AR model trained on the same corpus and tokenizer, models/fortunes-ar).
# Writes $DOCS/quality-speed.md (table, commands, scorer) and $DOCS/quality-speed.svg (drawn by
# `bd3-wgpu plot`), and keeps the sample files and the raw table under $OUT.
# NFE is counted per sequence (`sample --out` records the model calls that changed that sequence), so
# the batch does not change it; a batch only shares the calls.
#   scripts/quality-speed.sh                      # 64 samples per sampler, in one batch of 64
#   SAMPLES=128 BATCH=16 scripts/quality-speed.sh  # 128 samples, seeds SEED0..SEED0+7
#   ONLY='first-hitting|DDPM' scripts/quality-speed.sh   # only these series
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/bd3-wgpu}
MODEL=${MODEL:-models/fortunes-bd3lm}
SCORER=${SCORER:-models/fortunes-ar}
SAMPLES=${SAMPLES:-64}; BATCH=${BATCH:-64}; SEED0=${SEED0:-1}
OUT=${OUT:-target/quality-speed}; DOCS=${DOCS:-docs}
[ -x "$BIN" ] || cargo build --release -p bd3-wgpu
if (( SAMPLES < 1 || BATCH < 1 || SAMPLES % BATCH != 0 )); then
  echo "SAMPLES ($SAMPLES) must be a positive multiple of BATCH ($BATCH)" >&2; exit 2
fi
mkdir -p "$OUT" "$DOCS"

# series | point label | sample flags
runs=(
  "first-hitting||--sampler first-hitting"
  "DDPM|T=4|--sampler ddpm --steps 4"
  "DDPM|T=8|--sampler ddpm --steps 8"
  "DDPM|T=16|--sampler ddpm --steps 16"
  "confidence|K=1|--sampler confidence --tokens-per-call 1"
  "confidence|K=2|--sampler confidence --tokens-per-call 2"
  "confidence|K=4|--sampler confidence --tokens-per-call 4"
)
# The value after KEY on a `key value  key value` line.
kv() { awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit }}'; }

tsv="$OUT/quality-speed.tsv"
printf '# series\tpoint\tnfe\tgen_ppl\tgen_ppl_se\tentropy\tentropy_se\n' > "$tsv"
rows=()
for r in "${runs[@]}"; do
  IFS='|' read -r series point flags <<< "$r"
  if [ -n "${ONLY:-}" ] && ! [[ "$series" =~ ^($ONLY)$ ]]; then continue; fi
  name=$(echo "$series${point:+-$point}" | tr 'A-Z=' 'a-z-')
  file="$OUT/$name.jsonl"
  : > "$file"
  started=$SECONDS
  for (( i = 0; i < SAMPLES / BATCH; i++ )); do
    # shellcheck disable=SC2086
    "$BIN" sample --model "$MODEL" --batch "$BATCH" --seed $((SEED0 + i)) $flags --out "$OUT/$name.part.jsonl" > /dev/null 2> "$OUT/$name.log"
    cat "$OUT/$name.part.jsonl" >> "$file"
  done
  rm -f "$OUT/$name.part.jsonl"
  secs=$((SECONDS - started))
  res=$("$BIN" gen-ppl --scorer "$SCORER" "$file")
  last=$(tail -n 1 <<< "$res"); prev=$(tail -n 2 <<< "$res" | head -n 1)
  nfe=$(kv nfe <<< "$prev"); ppl=$(kv gen_ppl <<< "$last"); ppl_se=$(kv gen_ppl_se <<< "$prev")
  ent=$(kv entropy <<< "$last"); ent_se=$(kv entropy_se <<< "$prev"); n=$(kv samples <<< "$last"); tok=$(kv tokens <<< "$last")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$series" "$point" "$nfe" "$ppl" "$ppl_se" "$ent" "$ent_se" >> "$tsv"
  label="$series${point:+ ($point)}"
  rows+=("| $label | \`$flags\` | $nfe | $ppl ± $ppl_se | $ent ± $ent_se | $n | $tok | $secs |")
  echo "$label: NFE $nfe, Gen PPL $ppl ± $ppl_se, entropy $ent ± $ent_se ($n samples, $tok tokens, ${secs} s)"
done

"$BIN" plot --table "$tsv" --out "$DOCS/quality-speed.svg"
adapter=$("$BIN" info 2>/dev/null | head -n 1 | sed 's/^adapter: //')
{
  echo "# Quality against speed: the bundled model's samplers"
  echo
  echo "Generative perplexity (Gen PPL, lower is better) under \`$SCORER\` and unigram entropy per sample"
  echo "(nats; low values flag repetition), against NFE (model calls that changed the sample), for"
  echo "\`$MODEL\`: $SAMPLES samples per sampler, the same seeds ($SEED0 to $((SEED0 + SAMPLES / BATCH - 1)), batch $BATCH) for every"
  echo "sampler, ± one standard error over samples. Gen PPL is the mean over samples of exp(mean NLL per"
  echo "token), as the paper reports it (Arriola et al., ICLR 2025, Suppl. C.5); \`bd3-wgpu gen-ppl\` says"
  echo "where its scoring follows the official code and where it differs."
  echo
  echo "![Gen PPL and entropy against NFE](quality-speed.svg)"
  echo
  echo "| sampler | \`sample\` flags | NFE | Gen PPL ± s.e. | entropy ± s.e. | samples | tokens scored | wall time (s) |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Produced by \`${ONLY:+ONLY='$ONLY' }SAMPLES=$SAMPLES BATCH=$BATCH SEED0=$SEED0 scripts/quality-speed.sh\` on $adapter ($(date -u +%Y-%m-%d)):"
  echo "for each sampler and seed \`bd3-wgpu sample --model $MODEL --batch $BATCH --seed S FLAGS --out FILE\`,"
  echo "then \`bd3-wgpu gen-ppl --scorer $SCORER FILE\` on the concatenated file, then"
  echo "\`bd3-wgpu plot --table $tsv --out $DOCS/quality-speed.svg\`."
} > "$DOCS/quality-speed.md"
echo "wrote $DOCS/quality-speed.md and $DOCS/quality-speed.svg"
