#!/usr/bin/env bash
# One command for a synthesized toy dataset, end to end, with the bundled models: the toy language model writes
# (instruction, edited caption) for held-out toy captions (stage 1), the toy base model renders each pair with
# Prompt-to-Prompt and the toy CLIP filters them (stage 2). Rerun the same command to resume after an interruption.
#
#   scripts/toy_dataset.sh                              # 12,000 captions -> runs/toy-dataset/{triplets.jsonl,pairs}
#   OUT=data/toy CAPTIONS=2000 PRESET=toy scripts/toy_dataset.sh
#
# On this 2-core CPU the defaults (preset toy-fast, bf16, two single-threaded workers with the candidates of
# 32 triplets in each UNet call) made docs/results.md's figures. bf16 is chosen where the CPU computes it
# natively (AVX-512 BF16 or AMX; scripts/cpu_precision.sh); elsewhere fp32, which is faster there.
# DTYPE=fp32|bf16 overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
IP2P=${IP2P:-.venv/bin/ip2p}
OUT=${OUT:-runs/toy-dataset}
CAPTIONS=${CAPTIONS:-12000}
PRESET=${PRESET:-toy-fast}
WORKERS=${WORKERS:-2}
BATCH=${BATCH:-64}          # candidates per UNet call (toy-fast: 2 a triplet, so 32 triplets)
SHARD=${SHARD:-32}          # triplets per output shard, the unit of resumption
# the edited caption's temperature once the instruction is sampled (at the paper's 0.7): 0 copies it greedily,
# which makes more of the toy language model's triplets valid (docs/results.md); "" samples it at 0.7 too, as
# the paper
CAPTION_T=${CAPTION_T-0}
if [[ -z "${DTYPE:-}" ]]; then
  source scripts/cpu_precision.sh
  DTYPE=$PRECISION
fi
case "$DTYPE" in fp32|bf16|fp16|auto) ;; *) echo "DTYPE must be fp32, bf16, fp16 or auto, not '$DTYPE'" >&2; exit 2 ;; esac
mkdir -p "$OUT"
start=$(date +%s)
echo "== stage 1: $CAPTIONS held-out toy captions through the bundled toy language model ($(date +%H:%M:%S))"
$IP2P gen-text "toy:$CAPTIONS" -o "$OUT/triplets.jsonl" --backend hf --model toy --batch-size 64 \
  ${CAPTION_T:+--caption-temperature "$CAPTION_T"}
echo "== stage 2: preset $PRESET, $DTYPE, $WORKERS single-threaded workers ($(date +%H:%M:%S))"
for ((w = 0; w < WORKERS; w++)); do
  OMP_NUM_THREADS=1 $IP2P gen-pairs "$OUT/triplets.jsonl" -o "$OUT/pairs" --preset "$PRESET" --model toy \
    --clip toy --dtype "$DTYPE" --batch-size "$BATCH" --shard-size "$SHARD" --shard "$w" --num-shards "$WORKERS" \
    --no-progress --no-report &
done
wait
# a last pass over every shard writes the manifest and the report (and does any shard a failed worker left undone)
$IP2P gen-pairs "$OUT/triplets.jsonl" -o "$OUT/pairs" --preset "$PRESET" --model toy --clip toy --dtype "$DTYPE" \
  --batch-size "$BATCH" --shard-size "$SHARD"
echo "== done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s; pairs in $OUT/pairs/data"
